"""The streams' steps as modules with explicit tensor state, for export.

:meth:`speechconv.features.stream.FeatureStream.step` maps ``(state, chunk)`` to
``(frames, state)`` with tensor operations only, and so does
:meth:`speechconv.encoder_stream.BatchedEncoderStream.step_state` for the conv encoder
(a fixed-size cache per layer); every shape they make depends on the shapes of their
inputs alone.  :class:`FeatureStep` wraps the first and :class:`FrontEndStep` chains
both as an ``nn.Module`` whose state travels as inputs and outputs, so that a runtime
without Python (onnxruntime) streams with the same code::

    step = FrontEndStep(LogMelDeltas(), ConvEncoder().eval())
    state = step.initial_state(batch=1)
    encoded, counts, *state = step(chunk, lengths, final, *state)   # every chunk (B, S)

Exported (:func:`export_feature_step`, :func:`export_front_end_step`; to ONNX, or to
executorch's ``.pte`` with a feature stage made with ``dft="matrix"``) at a fixed chunk
size ``S``, the graph's frame buffers take the static bound
:func:`speechconv.shapes.batch_bound` gives (the most frames ``S`` samples can finish)
and the encoder's the most windows its caches and those frames can hold; stream ``b``'s
new frames are the first ``counts[b]``.  A stream ends with a call whose ``final[b]``
is true (its ``lengths[b]`` may be 0) and starts over in the state returned.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from speechconv.encoder import ConvEncoder
from speechconv.export import ExportError, check_exportable, save_onnx, save_pte
from speechconv.features.module import LogMelDeltas
from speechconv.features.stream import FeatureState

STATE_NAMES = tuple(FeatureState._fields)
"""The feature state tensors, in the order :class:`FeatureStep` takes and returns them."""


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


class FrontEndStep(nn.Module):
    """One step of ``B`` front-end streams: features then the conv encoder (module docstring).

    Args:
        features: the feature stage (settings that stream).
        encoder: an eval-mode :class:`speechconv.ConvEncoder` with fixed alignment along
            time (``ConvEncoder.streaming`` raises otherwise, saying what to use).

    Shapes:
        ``forward(chunk (B, S) float, lengths (B,) int64, final (B,) bool, *state)`` ->
        ``(encoded (B, t', F', C') or (B, t', D), counts (B,) int64, *new_state)``; the
        state is the feature state (:data:`STATE_NAMES`) then the encoder's
        (:meth:`state_names`).  A traced step trusts that every stream that ends has at
        least the encoder's minimum input in feature frames (the eager streams check it).
    """

    def __init__(self, features: LogMelDeltas, encoder: ConvEncoder) -> None:
        super().__init__()
        self.features = FeatureStep(features)
        self.encoder_stream = encoder.streaming(batch=1)
        # registered: the stream's (folded) layers' parameters are the graph's weights
        self.encoder_layers = nn.ModuleList([layer.layer for layer in self.encoder_stream.layers])

    def state_names(self) -> list[str]:
        """A name for each state tensor, in order."""
        return list(STATE_NAMES) + [f"encoder_{n}" for n in self.encoder_stream.state_names()]

    def initial_state(self, batch: int) -> tuple[torch.Tensor, ...]:
        """The state of ``batch`` streams before their first sample."""
        return self.features.initial_state(batch) + self.encoder_stream.initial_state(batch)

    def forward(self, chunk: torch.Tensor, lengths: torch.Tensor, final: torch.Tensor,
                *state: torch.Tensor) -> tuple[torch.Tensor, ...]:
        n = len(STATE_NAMES)
        frames, counts, *feature_state = self.features(chunk, lengths, final, *state[:n])  # (B, E, F, C), (B,)
        encoded, out_counts, encoder_state = self.encoder_stream.step_state(state[n:], frames, counts, final)
        return (encoded, out_counts, *feature_state, *encoder_state)


STEP_FORMATS = ("onnx", "pte")
"""Formats of the exported steps: ONNX (onnxruntime) and executorch's ``.pte`` (its inputs
and outputs in the same order as the ONNX graph's, unnamed)."""


def _check(features: LogMelDeltas, chunk_samples: int, fmt: str) -> None:
    if isinstance(chunk_samples, bool) or not isinstance(chunk_samples, int) or chunk_samples < 1:
        raise ValueError(f"chunk_samples={chunk_samples!r} is invalid: expected an int >= 1")
    if fmt not in STEP_FORMATS:
        raise ExportError(f"fmt={fmt!r} is invalid for a streaming step: expected one of {STEP_FORMATS} (onnx for "
                          f"onnxruntime, pte for executorch)")
    check_exportable(features, fmt=fmt)


def _export(step: FeatureStep | FrontEndStep, names: list[str], first_output: str, path: str | Path,
            chunk_samples: int, batch: int, fmt: str, sample_rate: int) -> Path:
    """Write the graph of ``step`` for chunks ``(batch, chunk_samples)`` as ``fmt`` (ONNX
    atomically, in the opset of :func:`speechconv.export.save_onnx`; ``pte`` with methods
    ``sample_rate``, ``chunk_samples`` and ``batch``)."""
    # contiguous state: a graph takes its inputs in the example's memory layout, and
    # executorch's kernels (cat) refuse to mix layouts
    example = (torch.zeros(batch, chunk_samples), torch.full((batch,), chunk_samples, dtype=torch.int64),
               torch.zeros(batch, dtype=torch.bool), *(s.contiguous() for s in step.initial_state(batch)))
    program = torch.export.export(step, example)
    if fmt == "pte":
        return save_pte(program, path, {"sample_rate": sample_rate, "chunk_samples": chunk_samples, "batch": batch})
    return save_onnx(program, path, [first_output, "counts", *(f"next_{n}" for n in names)],
                     {}, input_names=["chunk", "lengths", "final", *names])


def export_feature_step(features: LogMelDeltas, path: str | Path, chunk_samples: int, batch: int = 1,
                        fmt: str = "onnx") -> Path:
    """Write the graph of :class:`FeatureStep` for chunks ``(batch, chunk_samples)`` as
    ``fmt`` (:data:`STEP_FORMATS`); inputs ``chunk``, ``lengths``, ``final`` and the state
    (:data:`STATE_NAMES`), outputs ``frames``, ``counts`` and the next state (``next_`` +
    its name)."""
    _check(features, chunk_samples, fmt)
    return _export(FeatureStep(features).eval(), list(STATE_NAMES), "frames", path, chunk_samples, batch, fmt,
                   features.config.sample_rate)


def export_front_end_step(features: LogMelDeltas, encoder: ConvEncoder, path: str | Path, chunk_samples: int,
                          batch: int = 1, fmt: str = "onnx") -> Path:
    """Write the graph of :class:`FrontEndStep` (whose encoder stream runs the eval
    form, batch norms folded: :func:`speechconv.encoder.fold_batch_norms`) for chunks ``(batch,
    chunk_samples)`` as ``fmt`` (:data:`STEP_FORMATS`); inputs ``chunk``, ``lengths``,
    ``final`` and the state (:meth:`FrontEndStep.state_names`), outputs ``encoded``,
    ``counts`` and the next state (``next_`` + its name)."""
    _check(features, chunk_samples, fmt)
    step = FrontEndStep(features, encoder).eval()
    return _export(step, step.state_names(), "encoded", path, chunk_samples, batch, fmt, features.config.sample_rate)
