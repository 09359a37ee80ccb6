"""The feature stream's step as a module with explicit tensor state, for export.

:meth:`speechconv.features.stream.FeatureStream.step` maps ``(state, chunk)`` to
``(frames, state)`` with tensor operations only; :class:`FeatureStep` wraps it as an
``nn.Module`` whose state travels as inputs and outputs, so that a runtime without
Python (onnxruntime) streams with the same code::

    step = FeatureStep(LogMelDeltas())
    state = step.initial_state(batch=1)
    frames, counts, *state = step(chunk, lengths, final, *state)   # every chunk (B, S)

Exported (:func:`export_feature_step`) at a fixed chunk size ``S``, the graph's frame
buffer takes the static bound :func:`speechconv.shapes.batch_bound` gives (the most
frames ``S`` samples can finish); stream ``b``'s new frames are the first ``counts[b]``.
A stream ends with a call whose ``final[b]`` is true (its ``lengths[b]`` may be 0).

Only the feature stage exports this way: the conv encoder's stream
(:mod:`speechconv.encoder_stream`) sizes its buffers from the values of its counts on
the host, which a traced graph cannot do.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from speechconv.features.module import LogMelDeltas
from speechconv.features.stream import FeatureState

STATE_NAMES = tuple(FeatureState._fields)
"""The state tensors, in the order :class:`FeatureStep` takes and returns them."""


class FeatureStep(nn.Module):
    """One step of ``B`` feature streams (module docstring).

    Shapes:
        ``forward(chunk (B, S) float, lengths (B,) int64, final (B,) bool, *state)`` ->
        ``(frames (B, E, F, C), counts (B,) int64, *new_state)``, the state being the
        fields of :class:`speechconv.features.stream.FeatureState`.
    """

    def __init__(self, features: LogMelDeltas) -> None:
        super().__init__()
        self.features = features
        self.stream = features.streaming(batch_size=1)  # raises for settings that cannot stream

    def initial_state(self, batch: int) -> tuple[torch.Tensor, ...]:
        """The state of ``batch`` streams before their first sample."""
        return tuple(self.stream.initial_state(batch))

    def forward(self, chunk: torch.Tensor, lengths: torch.Tensor, final: torch.Tensor,
                *state: torch.Tensor) -> tuple[torch.Tensor, ...]:
        frames, counts, following = self.stream.step(FeatureState(*state), chunk, lengths, final)
        return (frames, counts, *following)


def export_feature_step(features: LogMelDeltas, path: str | Path, chunk_samples: int, batch: int = 1) -> Path:
    """Write the ONNX graph of :class:`FeatureStep` for chunks ``(batch, chunk_samples)``;
    inputs ``chunk``, ``lengths``, ``final`` and the state (:data:`STATE_NAMES`), outputs
    ``frames``, ``counts`` and the next state (``next_`` + its name)."""
    if isinstance(chunk_samples, bool) or not isinstance(chunk_samples, int) or chunk_samples < 1:
        raise ValueError(f"chunk_samples={chunk_samples!r} is invalid: expected an int >= 1")
    step = FeatureStep(features).eval()
    example = (torch.zeros(batch, chunk_samples), torch.full((batch,), chunk_samples, dtype=torch.int64),
               torch.zeros(batch, dtype=torch.bool), *step.initial_state(batch))
    path = Path(path)
    torch.onnx.export(step, example, str(path), dynamo=True,
                      input_names=["chunk", "lengths", "final", *STATE_NAMES],
                      output_names=["frames", "counts", *(f"next_{n}" for n in STATE_NAMES)])
    return path
