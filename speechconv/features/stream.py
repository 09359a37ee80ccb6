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
* the last chunk (``final``) makes the statics of the last ``center`` frames from zeros
  after the end, replicates the real last frame for the deltas and emits the rest.

Concatenating every ``accept`` output and the ``finish`` output gives
``LogMelDeltas()(whole_waveform)[0]`` exactly (``torch.equal``).  After ``n`` samples
``stream_frames_ready(n)`` frames are out (:mod:`speechconv.shapes`): each frame
waits :attr:`FeatureStream.look_ahead_samples` samples past its time ``t*hop``.

The state of ``B`` streams is a :class:`FeatureState` of tensors and
:meth:`FeatureStream.step` maps (state, chunk) to (frames, state) with tensor ops
only: one code path for one stream, a batch whose streams start and end
independently, and a fixed-size step exported to ONNX
(:class:`speechconv.streaming.step.FeatureStep`), whose buffers then take the sizes
:func:`speechconv.shapes.batch_bound` gives them.

Settings that cannot stream raise: utterance normalisation (its statistics need the
whole utterance; use global statistics from :func:`speechconv.compute_global_stats`)
and dither (random: no two runs agree; set ``dither=0``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import torch

from speechconv import shapes
from speechconv.features import deltas
from speechconv.features.pipeline import features_from_statics, static_log_mel

if TYPE_CHECKING:
    from speechconv.features.module import LogMelDeltas


class FeatureState(NamedTuple):
    """The state of ``B`` feature streams, every field a tensor.

    Attributes:
        samples: ``(B, win)`` float: the samples from the start of frame ``made``'s
            window on, ``held`` of them, in its last ``held`` places (``center`` framing:
            the lead zeros included; the places before them are never read).
        held: ``(B,)`` int64 (negative: samples still to skip, when ``hop > win``).
        statics: ``(B, 2P, F)``: the statics of frames ``made - 2P .. made - 1``, those
            before frame 0 unspecified (never read).
        made: ``(B,)`` int64 frames whose statics exist; ``max(made - P, 0)`` of them are out.
        received: ``(B,)`` int64 samples accepted since the utterance began.
    """

    samples: torch.Tensor
    held: torch.Tensor
    statics: torch.Tensor
    made: torch.Tensor
    received: torch.Tensor


def _rows(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``x`` ``(B, T, ...)`` at rows ``(B, T')`` of its ``(B * T, ...)`` view (stream ``b``'s
    position ``u`` is row ``b*T + u``) -> ``(B, T', ...)``, by whole rows (index_select:
    faster than an element-wise gather)."""
    B, T = x.shape[:2]
    return x.reshape(B * T, *x.shape[2:]).index_select(0, rows.reshape(-1)).view(B, rows.shape[1], *x.shape[2:])


class FeatureStream:
    """Features of ``batch_size`` independent streams of audio, chunk by chunk.

    Made by :meth:`speechconv.LogMelDeltas.streaming` (it reads that module's settings
    and buffers).  One stream (``batch_size=None``)::

        stream = LogMelDeltas(config).streaming()
        for chunk in chunks:                 # (S,) float in [-1, 1], any length, 0 included
            frames = stream.accept(chunk)    # (t, F, C): the frames final with this chunk
        frames = stream.finish()             # (t, F, C): the rest; the stream starts afresh

    A batch of streams for a server: ``accept(chunks (B, S), lengths (B,))`` takes
    ``lengths[b]`` samples of stream ``b`` and returns a list of ``B`` tensors
    ``(t_b, F, C)``; ``finish(b)`` ends stream ``b`` alone (returning its last frames)
    and ``reset(b)`` drops it, so streams start and end independently.  Each stream's
    frames equal its own offline features.  :meth:`step` is the same on an explicit
    :class:`FeatureState`, with padded outputs.

    Attributes:
        look_ahead_samples: samples past frame ``t``'s time ``t*hop`` (its start for
            ``kaldi`` framing, its centre for ``center``) that a stream must have read
            before frame ``t`` is final, deltas included
            (:func:`speechconv.shapes.stream_look_ahead`).
        look_ahead_ms: the same in milliseconds.
        context_frames: frames of statics on each side that the deltas read: a stream
            holds back at most this many frames whose windows it has already seen.
    """

    def __init__(self, module: LogMelDeltas, batch_size: int | None = None) -> None:
        cfg = module.config
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
        self.config, self.module = cfg, module
        self.batch_size = batch_size
        self.context_frames = deltas.context_frames(cfg.delta_window, cfg.channels)
        self._lead = shapes.window_lead(cfg.win_length, cfg.n_fft, cfg.framing)
        # center framing: the last windows reach this many samples past the end (zeros, as torch.stft pads)
        self._tail = max(cfg.win_length - self._lead, 0) if cfg.framing == "center" else 0
        self.look_ahead_samples = shapes.stream_look_ahead(cfg.win_length, cfg.hop_length, cfg.n_fft,
                                                           cfg.framing, self.context_frames)
        self.look_ahead_ms = 1000.0 * self.look_ahead_samples / cfg.sample_rate
        self.state = self.initial_state(batch_size or 1)

    def initial_state(self, batch: int) -> FeatureState:
        """The state of ``batch`` streams before their first sample."""
        cfg, like = self.config, self.module.mel_matrix
        counts = torch.zeros(batch, dtype=torch.int64, device=like.device)
        # made and received: two tensors, never one aliased (an exporter would make them one input)
        return FeatureState(like.new_zeros(batch, cfg.win_length), counts + self._lead,
                            like.new_zeros(batch, 2 * self.context_frames, cfg.n_mels), counts, counts.clone())

    # ------------------------------------------------------------------ queries
    def samples_accepted(self, index: int = 0) -> int:
        """Samples stream ``index`` has accepted since it (re)started."""
        return int(self.state.received[index])

    def frames_emitted(self, index: int = 0) -> int:
        """Frames stream ``index`` has emitted since it (re)started
        (:func:`speechconv.shapes.stream_frames_ready` of :meth:`samples_accepted`)."""
        return max(int(self.state.made[index]) - self.context_frames, 0)

    def frames_held(self, index: int = 0) -> int:
        """Frames of stream ``index`` whose windows are complete but that wait for their
        look-ahead (at most :attr:`context_frames`)."""
        return int(self.state.made[index]) - self.frames_emitted(index)

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
        frames, counts = self.advance(samples[None] if single else samples,  # (S,) -> (1, S)
                                      None if single else lengths)
        out = [frames[b, :n] for b, n in enumerate(counts.tolist())]
        return out[0] if single else out

    def advance(self, chunk: torch.Tensor, lengths: torch.Tensor | None = None,
                final: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`step` on this stream's own state, with the input checked: the batched
        form that a front-end stream chains to the encoder's.

        Args:
            chunk: ``(B, S)`` float; ``lengths``: ``(B,)`` samples of each row to take
                (``None``: all ``S``); ``final``: ``(B,)`` bool, the streams that end
                after them (``None``: none).

        Returns:
            ``(frames (B, E, F, C), counts (B,))``: stream ``b``'s new frames are
            ``frames[b, :counts[b]]``.
        """
        B = self.state.made.shape[0]
        device = self.state.made.device
        S = chunk.shape[-1]
        if lengths is None:  # all S of every row: nothing to check
            lens, bad = torch.full((B,), S, dtype=torch.int64, device=device), False
        else:
            lens = torch.as_tensor(lengths, device=device).reshape(-1).to(torch.int64)
            bad = lens.shape != (B,) or bool(((lens < 0) | (lens > S)).any())
        if chunk.dim() != 2 or chunk.shape[0] != B or bad:
            raise ValueError(f"expected {B} rows with lengths in [0, {S}], got samples "
                             f"{tuple(chunk.shape)} and lengths {lengths!r}")
        if final is not None:
            final = final.to(device, torch.bool)
        frames, counts, self.state = self.step(self.state, chunk.to(device=device, dtype=self.state.samples.dtype),
                                               lens, final)
        return frames, counts

    def finish(self, index: int | None = None) -> torch.Tensor | list[torch.Tensor]:
        """End stream ``index`` (``None``: every stream) and return its last frames.

        The stream then starts afresh: its next ``accept`` begins a new utterance.

        Returns:
            ``(t, F, C)``, or for ``index=None`` on a batch a list of ``B`` of them.
        """
        B, device = self.state.made.shape[0], self.state.made.device
        final = torch.ones(B, dtype=torch.bool, device=device) if index is None else \
            torch.arange(B, device=device) == index
        frames, counts = self.advance(self.state.samples.new_zeros(B, 0), None, final)
        out = [frames[b, :n] for b, n in enumerate(counts.tolist())]
        return out if index is None and self.batch_size is not None else out[0 if index is None else index]

    def reset(self, index: int | None = None) -> None:
        """Drop stream ``index`` (``None``: every stream) without output; it starts afresh."""
        B, device = self.state.made.shape[0], self.state.made.device
        drop = torch.ones(B, dtype=torch.bool, device=device) if index is None else \
            torch.arange(B, device=device) == index
        self.state = self._restart(self.state, drop)

    def _restart(self, state: FeatureState, which: torch.Tensor) -> FeatureState:
        """``state`` with the streams in ``which`` ``(B,)`` bool back at their start."""
        if not torch.compiler.is_compiling() and not bool(which.any()):
            return state
        fresh = self.initial_state(which.shape[0])
        return FeatureState(*(torch.where(which.view(-1, *[1] * (new.dim() - 1)), new, old)  # (B,) -> (B, 1, ...)
                              for new, old in zip(fresh, state, strict=True)))

    # ------------------------------------------------------------------ the step
    def step(self, state: FeatureState, chunk: torch.Tensor, lengths: torch.Tensor,
             final: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, FeatureState]:
        """The next samples of ``B`` streams: their new final frames and the next state.

        Args:
            state: the streams' :class:`FeatureState`.
            chunk: ``(B, S)`` float; stream ``b``'s samples are the first ``lengths[b]``
                (what lies past them is never read, NaN included).
            lengths: ``(B,)`` int64 in ``[0, S]``.
            final: ``(B,)`` bool: the streams whose utterance ends with this chunk; they
                emit every frame left and start afresh in the returned state.  ``None``
                (eager only): no stream ends, the same as all False.

        Returns:
            ``(frames (B, E, F, C), counts (B,), state)``: stream ``b``'s new frames are
            ``frames[b, :counts[b]]``, in order; past them ``frames`` holds anything.
            ``E`` is the largest count, or in a traced graph its bound for ``S``.
        """
        cfg, m = self.config, self.module
        win, hop, P = cfg.win_length, cfg.hop_length, self.context_frames
        K = 2 * P
        B, S = chunk.shape
        H = state.samples.shape[1]
        device = chunk.device
        # The samples from frame `made`'s window on: the held ones, the chunk's, then zeros.
        # Held and new samples are consecutive columns of `joined` (the held ones last in
        # `state.samples`): position p is column p + H - held while p < available, else the
        # zero column.
        width = H + S + self._tail
        p = torch.arange(width, device=device)[None, :]  # (1, W)
        available = state.held + lengths
        source = torch.where(p < available[:, None], p + (H - state.held)[:, None], H + S)  # (B, W)
        joined = torch.cat([state.samples, chunk.to(state.samples.dtype), chunk.new_zeros(B, 1)], dim=1)  # (B, H+S+1)
        buffer = joined.gather(1, source)  # (B, W)
        received = state.received + lengths
        new = shapes.frames_from_samples_tensor(available, win, hop, "kaldi")  # (B,) new statics
        if final is not None:  # an utterance that ends: every frame of its length, center's last ones included
            new = torch.where(final, shapes.frames_from_samples_tensor(received, win, hop, cfg.framing) - state.made,
                              new)
        N = shapes.batch_bound(new, shapes.frames_from_samples(width, win, hop, "kaldi"))
        statics = static_log_mel(buffer, N, cfg, m.window, m.mel_matrix, m.dft_basis) if N > 0 \
            else buffer.new_zeros(B, 0, cfg.n_mels)  # (B, N, F)
        made = state.made + new
        start = (state.made - P).clamp(min=0)  # frames out so far
        end = (made - P).clamp(min=0) if final is None else torch.where(final, made, (made - P).clamp(min=0))
        counts = end - start
        if K + N == 0:  # statics alone, and no new frame
            frames = buffer.new_zeros(B, 0, cfg.n_mels, cfg.n_channels)
            kept = state.statics
        else:
            # Position q of `history` holds frame made - K + q; those before frame 0 (the first
            # `skip`) are left out, so that a stream's first frame is the deltas' left edge, as
            # offline (the cascade rule replicates d_0, not c_0: padding with c_0 would differ).
            history = torch.cat([state.statics, statics], dim=1)  # (B, K + N, F)
            skip = (K - state.made).clamp(min=0)  # (B,)
            row0 = torch.arange(B, device=device) * (K + N)  # (B,) row of each stream's position 0 (_rows)
            u = torch.arange(K + N, device=device)[None, :]  # (1, K + N)
            aligned = _rows(history, (u + skip[:, None]).clamp(max=K + N - 1) + row0[:, None])  # (B, K + N, F)
            features = features_from_statics(aligned, K + new - skip, cfg, m.global_stats)  # (B, K + N, F, C)
            E = shapes.batch_bound(counts, N + P)
            # row of frame `start` in `aligned` (its position is at most P: the E <= N + P frames fit)
            first = start - (state.made - K).clamp(min=0) + row0
            frames = _rows(features, first[:, None] + torch.arange(E, device=device))  # (B, E, F, C)
            kept = _rows(history, (new + row0)[:, None] + torch.arange(K, device=device))  # (B, K, F): new <= N
        # The held samples: positions shift .. available - 1, so place h of H is position
        # available - H + h, column lengths + h of `joined` (before them: samples never read).
        shift = new * hop
        ahead = lengths[:, None] + torch.arange(H, device=device)  # (B, H)
        following = FeatureState(joined.gather(1, ahead), available - shift, kept, made, received)
        return frames, counts, following if final is None else self._restart(following, final)
