"""Streaming features that equal the offline features bit for bit, chunk by chunk.

A stream holds, per utterance, the samples that no whole window has used yet and the
static frames that deltas of frames still to come will read, and runs the offline
functions on them (:func:`speechconv.features.pipeline.static_log_mel` on its samples,
:func:`speechconv.features.pipeline.features_from_statics` on its statics), so every
frame is computed by the same operations on the same values as offline:

* frame ``t``'s statics are made once its window's samples have arrived (``center``
  framing starts the buffer with the :func:`speechconv.shapes.window_lead` zeros
  torch.stft pads in front);
* it is emitted once the statics of frames ``t - P .. t + P`` exist (``P``:
  :func:`speechconv.features.deltas.context_frames`), the earlier ones clamped at frame
  0 as offline;
* ``finish()`` makes the statics of the last ``center`` frames from zeros after the
  end, replicates the real last frame for the deltas and emits the rest.

Concatenating every ``accept`` output and the ``finish`` output gives
``LogMelDeltas()(whole_waveform)[0]`` exactly (``torch.equal``).  After ``n`` samples
``stream_frames_ready(n)`` frames are out (:mod:`speechconv.shapes`): each frame
waits :attr:`FeatureStream.look_ahead_samples` samples past its time ``t*hop``.

Settings that cannot stream raise: utterance normalisation (its statistics need the
whole utterance; use global statistics from :func:`speechconv.compute_global_stats`)
and dither (random: no two runs agree; set ``dither=0``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from speechconv import shapes
from speechconv.feature_config import FeatureConfig
from speechconv.features import deltas
from speechconv.features.pipeline import features_from_statics, static_log_mel


@dataclass
class _Utterance:
    """One stream's state: ``samples`` ``(s,)`` from the start of frame ``made``'s window on,
    ``statics`` ``(k, F)`` holding frames ``first .. first + k - 1``."""

    samples: torch.Tensor
    statics: torch.Tensor
    first: int = 0
    emitted: int = 0
    received: int = 0

    @property
    def made(self) -> int:
        return self.first + self.statics.shape[0]


class FeatureStream:
    """Features of ``batch_size`` independent streams of audio, chunk by chunk.

    Made by :meth:`speechconv.LogMelDeltas.streaming` (the arguments are its settings
    and buffers).  One stream (``batch_size=None``)::

        stream = LogMelDeltas(config).streaming()
        for chunk in chunks:                 # (S,) float in [-1, 1], any length, 0 included
            frames = stream.accept(chunk)    # (t, F, C): the frames final with this chunk
        frames = stream.finish()             # (t, F, C): the rest; the stream starts afresh

    A batch of streams for a server: ``accept(chunks (B, S), lengths (B,))`` takes
    ``lengths[b]`` samples of stream ``b`` and returns a list of ``B`` tensors
    ``(t_b, F, C)``; ``finish(b)`` ends stream ``b`` alone (returning its last frames)
    and ``reset(b)`` drops it, so streams start and end independently.  Each stream's
    frames equal its own offline features.

    Attributes:
        look_ahead_samples: samples past frame ``t``'s time ``t*hop`` (its start for
            ``kaldi`` framing, its centre for ``center``) that a stream must have read
            before frame ``t`` is final, deltas included
            (:func:`speechconv.shapes.stream_look_ahead`).
        look_ahead_ms: the same in milliseconds.
        context_frames: frames of statics on each side that the deltas read: a stream
            holds back at most this many frames whose windows it has already seen.
    """

    def __init__(self, config: FeatureConfig, window: torch.Tensor, mel: torch.Tensor, basis: torch.Tensor | None,
                 global_stats: tuple[torch.Tensor, torch.Tensor] | None, batch_size: int | None = None) -> None:
        cfg = config
        if cfg.normalization == "utterance":
            raise ValueError("features.normalization='utterance' cannot stream: its statistics need the whole "
                             "utterance; use normalization='global' with statistics from "
                             "speechconv.compute_global_stats")
        if cfg.dither > 0:
            raise ValueError(f"features.dither={cfg.dither} cannot stream: dither is random, so no stream equals "
                             f"the offline features; set dither=0")
        if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int)
                                       or batch_size < 1):
            raise ValueError(f"batch_size={batch_size!r} is invalid: expected None (one stream) or an int >= 1")
        self.config = cfg
        self._window, self._mel, self._basis, self._global_stats = window, mel, basis, global_stats
        self.batch_size = batch_size
        self.context_frames = deltas.context_frames(cfg.delta_window, cfg.channels)
        self._lead = shapes.window_lead(cfg.win_length, cfg.n_fft, cfg.framing)
        self.look_ahead_samples = shapes.stream_look_ahead(cfg.win_length, cfg.hop_length, cfg.n_fft,
                                                           cfg.framing, self.context_frames)
        self.look_ahead_ms = 1000.0 * self.look_ahead_samples / cfg.sample_rate
        self._streams = [self._fresh() for _ in range(batch_size or 1)]

    def _fresh(self) -> _Utterance:
        like = self._mel
        return _Utterance(like.new_zeros(self._lead), like.new_zeros(0, self.config.n_mels))

    # ------------------------------------------------------------------ queries
    def samples_accepted(self, index: int = 0) -> int:
        """Samples stream ``index`` has accepted since it (re)started."""
        return self._streams[index].received

    def frames_emitted(self, index: int = 0) -> int:
        """Frames stream ``index`` has emitted since it (re)started
        (:func:`speechconv.shapes.stream_frames_ready` of :meth:`samples_accepted`)."""
        return self._streams[index].emitted

    def frames_held(self, index: int = 0) -> int:
        """Frames of stream ``index`` whose windows are complete but that wait for their
        look-ahead (at most :attr:`context_frames`)."""
        state = self._streams[index]
        return state.made - state.emitted

    # ------------------------------------------------------------------ input
    def accept(self, samples: torch.Tensor,
               lengths: torch.Tensor | None = None) -> torch.Tensor | list[torch.Tensor]:
        """Take the next samples; return the frames that became final.

        Args:
            samples: ``(S,)`` for one stream, ``(B, S)`` for a batch; float in [-1, 1].
            lengths: batch only: ``(B,)`` samples of each row to take (``None``: all ``S``).

        Returns:
            ``(t, F, C)`` for one stream, else a list of ``B`` tensors ``(t_b, F, C)``,
            in order; ``t`` may be 0.
        """
        single = self.batch_size is None
        if samples.dim() != (1 if single else 2) or not samples.is_floating_point():
            expected = "(S,) for one stream" if single else f"(B, S) with B = {self.batch_size}"
            raise ValueError(f"samples must be float {expected}, got {samples.dtype} {tuple(samples.shape)}")
        batch = samples[None] if single else samples  # (S,) -> (1, S)
        B, S = batch.shape
        lens = [S] * B if lengths is None or single else torch.as_tensor(lengths).reshape(-1).tolist()
        if B != len(self._streams) or len(lens) != B or any(not 0 <= n <= S for n in lens):
            raise ValueError(f"expected {len(self._streams)} rows with lengths in [0, {S}], got samples "
                             f"{tuple(samples.shape)} and lengths {lengths!r}")
        batch = batch.to(device=self._mel.device, dtype=torch.float32)
        for state, row, n in zip(self._streams, batch, lens, strict=True):
            state.samples = torch.cat([state.samples, row[:n]])
            state.received += n
        cfg = self.config
        counts = [shapes.frames_from_samples(s.samples.shape[0], cfg.win_length, cfg.hop_length, "kaldi")
                  for s in self._streams]
        self._make_statics(self._streams, counts)
        ends = [max(s.made - self.context_frames, s.emitted) for s in self._streams]
        out = self._emit(self._streams, ends, [s.made for s in self._streams])
        return out[0] if single else out

    def finish(self, index: int | None = None) -> torch.Tensor | list[torch.Tensor]:
        """End stream ``index`` (``None``: every stream) and return its last frames.

        The stream then starts afresh: its next ``accept`` begins a new utterance.

        Returns:
            ``(t, F, C)``, or for ``index=None`` on a batch a list of ``B`` of them.
        """
        indices = range(len(self._streams)) if index is None else [index]
        states = [self._streams[i] for i in indices]
        cfg = self.config
        totals = [shapes.frames_from_samples(s.received, cfg.win_length, cfg.hop_length, cfg.framing)
                  for s in states]
        for state, total in zip(states, totals, strict=True):
            assert state.made <= total, f"{state.made} frames made of {total}"
            missing = (total - state.made - 1) * cfg.hop_length + cfg.win_length - state.samples.shape[0]
            if total > state.made and missing > 0:  # center framing: the zeros torch.stft pads after the end
                state.samples = torch.cat([state.samples, state.samples.new_zeros(missing)])
        self._make_statics(states, [total - s.made for s, total in zip(states, totals, strict=True)])
        out = self._emit(states, totals, totals)
        for i in indices:
            self._streams[i] = self._fresh()
        return out if index is None and self.batch_size is not None else out[0]

    def reset(self, index: int | None = None) -> None:
        """Drop stream ``index`` (``None``: every stream) without output; it starts afresh."""
        for i in range(len(self._streams)) if index is None else [index]:
            self._streams[i] = self._fresh()

    # ------------------------------------------------------------------ the offline steps
    def _make_statics(self, states: list[_Utterance], counts: list[int]) -> None:
        """Statics of the next ``counts[b]`` frames of each stream (windows from its samples)."""
        M = max(counts, default=0)
        if M == 0:
            return
        cfg = self.config
        width = max(s.samples.shape[0] for s in states)
        padded = torch.stack([torch.nn.functional.pad(s.samples, (0, width - s.samples.shape[0]))
                              for s in states])  # (B, width)
        static = static_log_mel(padded, M, cfg, self._window, self._mel, self._basis)  # (B, M, F)
        for state, frames, m in zip(states, static, counts, strict=True):
            state.statics = torch.cat([state.statics, frames[:m]])
            state.samples = state.samples[m * cfg.hop_length :]

    def _emit(self, states: list[_Utterance], ends: list[int], edges: list[int]) -> list[torch.Tensor]:
        """Frames ``[emitted, ends[b])`` of each stream, with its statics clamped at frame
        ``edges[b] - 1`` (the real last frame at ``finish``; mid-stream no emitted frame
        reads that far); then the statics no later frame reads are dropped."""
        cfg = self.config
        K = max(s.statics.shape[0] for s in states)
        if all(end <= s.emitted for s, end in zip(states, ends, strict=True)) or K == 0:
            return [states[0].statics.new_zeros(0, cfg.n_mels, cfg.n_channels) for _ in states]
        statics = torch.stack([torch.nn.functional.pad(s.statics, (0, 0, 0, K - s.statics.shape[0]))
                               for s in states])  # (B, K, F)
        lengths = torch.tensor([edge - s.first for s, edge in zip(states, edges, strict=True)],
                               device=statics.device)
        features = features_from_statics(statics, lengths, cfg, self._global_stats)  # (B, K, F, C)
        out = []
        for state, frames, end in zip(states, features, ends, strict=True):
            out.append(frames[state.emitted - state.first : end - state.first])
            state.emitted = end
            keep = max(end - self.context_frames, 0)  # the earliest frame a later delta reads
            state.statics = state.statics[keep - state.first :]
            state.first = keep
        return out
