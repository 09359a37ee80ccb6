"""Streams of the conv encoder: features in, chunk by chunk, and out the frames of the
offline encoder as soon as they are final.

A layer whose time padding has fixed alignment (``valid``, ``causal`` or an int ``p``:
the same zeros before every utterance) computes output ``j`` from frames
``j*s .. j*s + k - 1`` of its input with ``before`` zeros in front and, at the end of
the utterance, ``after`` zeros behind (:func:`speechconv.shapes.padding_amounts`).
Its stream (:class:`LayerStream`) holds those frames, the zeros in front included:
each chunk's frames are appended, every window that is complete goes through the
layer's own :meth:`speechconv.encoder.ConvLayer.transform` (the offline conv, norm
and activation) at once, and the frames no later window reads are dropped.  No input
frame is fed twice; the frames kept are the ``k - s`` or so that the next window shares
with the last.  At the end the ``after`` zeros are appended and the last windows
computed.  A stack streams layer by layer, each layer's new frames the next one's
input, so the frames that come out are the offline ones, in the same number.

TF SAME cannot stream: its padding before depends on the whole utterance's length
(:meth:`speechconv.ConvEncoder.streaming` says so and what to use).

Everything works on ``B`` streams at once (:class:`BatchedEncoderStream`): each chunk
``(B, t, F, C)`` comes with per-stream frame counts, streams start and finish
independently, and a batch runs each layer once per chunk.  :class:`EncoderStream` is
one stream.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from speechconv import masking, shapes

if TYPE_CHECKING:
    from speechconv.encoder import ConvLayer


class LayerStream:
    """One layer's state over ``B`` streams: the input frames later windows still read.

    Shapes:
        ``step(x, counts, started, final)``: ``x`` ``(B, C, t, F)`` of which stream ``b``
        has ``counts[b]`` frames; ``started`` ``(B,)`` bool, the streams that have had a
        frame of features (windows of padding alone come out once a stream has started:
        every layer of an utterance the encoder accepts gets frames); ``final`` ``(B,)``
        bool, the streams whose utterance ends with this chunk -> ``(B, C', t', F')`` new
        output frames and their ``(B,)`` counts.
    """

    def __init__(self, layer: ConvLayer, batch: int, in_channels: int, device: torch.device,
                 dtype: torch.dtype) -> None:
        g = layer.time
        assert g.padding != "same", "SAME padding cannot stream; ConvEncoder.streaming() checks it"
        self.layer, self.kernel, self.stride = layer, g.kernel, g.stride
        self.before, self.after = shapes.padding_amounts(1, g.kernel, g.stride, g.padding)
        # (B, C, T, F): each stream's cached frames from frame 0, `count` of them
        # (a negative count: that many frames to skip before the next window)
        self.cache = torch.zeros(batch, in_channels, self.before, layer.in_freq, device=device, dtype=dtype)
        self.count = torch.full((batch,), self.before, dtype=torch.int64, device=device)

    def step(self, x: torch.Tensor, counts: torch.Tensor, started: torch.Tensor,
             final: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append each stream's new frames (and, for ``final`` streams, the zeros behind),
        compute every complete window, keep what later windows read; final streams start
        over.  ``(B, C, t, F)``, ``(B,)``, ``(B,)``, ``(B,)`` -> ``(B, C', t', F')``, ``(B,)``."""
        layer = self.layer
        # A negative count is a number of frames still to skip (a stride longer than the kernel).
        total = self.count + counts + torch.where(final & started, self.after, 0)
        span = max(int(total.max()), 0)
        zeros = torch.zeros_like(self.count)
        cache = masking.pad_per_utterance(self.cache, self.count.clamp(min=0), zeros, span)  # (B, C, span, F)
        frames = cache + masking.pad_per_utterance(x, counts, self.count, span)
        windows = torch.where(started & (total >= self.kernel),
                              torch.div(total - self.kernel, self.stride, rounding_mode="floor") + 1, 0)
        out_time = int(windows.max())
        if out_time > 0:
            used = shapes.conv_input_span(out_time, self.kernel, self.stride)
            y = layer.transform(frames[:, :, :used], shapes.make_pad_mask(windows, out_time))  # (B, C', t', F')
        else:
            y = frames.new_zeros(frames.shape[0], layer.out_channels, 0, layer.out_freq)
        # Keep the frames from the next window's first on; final streams start over from
        # `before` zeros (the cache is zero wherever no frame is kept).
        keep = torch.where(final, 0, total - windows * self.stride)
        self.cache = masking.pad_per_utterance(frames, total.clamp(min=0), keep - total,
                                               max(int(keep.max()), self.before))
        self.count = torch.where(final, self.before, keep)
        return y, windows

    def reset(self, which: torch.Tensor) -> None:
        """Streams ``which`` (``(B,)`` bool) back at their start: ``before`` zero frames."""
        self.cache = torch.where(which[:, None, None, None], 0.0, self.cache)  # (B,) -> (B, 1, 1, 1)
        self.count = torch.where(which, self.before, self.count)


class BatchedEncoderStream:
    """``B`` independent streams of one encoder branch (see the module docstring).

    Built by ``ConvEncoder.streaming(batch=B)``.  Attributes: ``look_ahead``, the input
    frames past an output frame's own position that it reads
    (:func:`speechconv.shapes.look_ahead`, exact with fixed alignment); ``subsampling``.

    Shapes:
        ``accept(frames, counts)``: ``frames`` ``(B, t, F, C)``, of which stream ``b``'s
        are the first ``counts[b]`` (any number, 0 included) -> ``(B, t', F', C')`` (or
        ``(B, t', D)`` when the encoder flattens) and ``(B,)`` counts of new output
        frames, each stream's frames in order.
        ``finish(which)``: ``which`` ``(B,)`` bool (None: every stream) -> the last frames
        of those streams, which then start over (a new utterance each); the others go on.
    """

    def __init__(self, layers: list[ConvLayer], input_freq: int, input_channels: int, batch: int,
                 min_input_frames: int, too_short: str, flatten: bool) -> None:
        param = layers[0].conv.weight
        channels = [input_channels] + [layer.out_channels for layer in layers[:-1]]
        self.batch, self.input_freq, self.input_channels = batch, input_freq, input_channels
        self.layers = [LayerStream(layer, batch, c, param.device, param.dtype)
                       for layer, c in zip(layers, channels, strict=True)]
        self.min_input_frames, self.too_short, self.flatten = min_input_frames, too_short, flatten
        geometries = [layer.time for layer in layers]
        self.look_ahead = shapes.look_ahead(geometries)
        self.subsampling = shapes.subsampling(geometries)
        self._reach = shapes.receptive_field(geometries) - sum(
            s.before * shapes.subsampling(geometries[:i]) for i, s in enumerate(self.layers))
        self.received = torch.zeros(batch, dtype=torch.int64, device=param.device)
        self.emitted = torch.zeros_like(self.received)

    def accept(self, frames: torch.Tensor, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, t, F, C)``, ``(B,)`` -> ``(B, t', F', C')`` (or ``(B, t', D)``), ``(B,)``."""
        return self.step(frames, counts, torch.zeros(self.batch, dtype=torch.bool, device=self.received.device))

    def finish(self, which: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The last frames of the streams in ``which`` (``(B,)`` bool, None: all), which
        start over (:meth:`step` with no new frames)."""
        final = torch.ones(self.batch, dtype=torch.bool) if which is None else which.to(torch.bool).cpu()
        empty = torch.zeros(self.batch, 0, self.input_freq, self.input_channels, dtype=self.layers[0].cache.dtype,
                            device=self.received.device)
        return self.step(empty, torch.zeros(self.batch, dtype=torch.int64), final)

    def step(self, frames: torch.Tensor, counts: torch.Tensor,
             final: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Take ``counts[b]`` new frames of each stream and end the streams in ``final``.

        Args:
            frames: ``(B, t, F, C)``; stream ``b``'s are the first ``counts[b]`` (what lies
                past them is never read, NaN included).
            counts: ``(B,)`` int in ``[0, t]``.
            final: ``(B,)`` bool: the streams whose utterance ends after these frames; they
                give their last output frames and start over.  One shorter than the
                encoder's minimum input raises under ``too_short="error"`` and is
                zero-padded to it under ``"pad"``, as offline.

        Returns:
            ``(B, t', F', C')`` (or ``(B, t', D)``) and ``(B,)`` counts of new output frames.
        """
        if frames.dim() != 4 or frames.shape[0] != self.batch or frames.shape[2:] != (self.input_freq,
                                                                                      self.input_channels):
            raise ValueError(f"encoder stream expected frames ({self.batch}, t, {self.input_freq}, "
                             f"{self.input_channels}), got {list(frames.shape)}")
        counts = counts.to(device=self.received.device, dtype=torch.int64)
        if counts.shape != (self.batch,) or bool(((counts < 0) | (counts > frames.shape[1])).any()):
            raise ValueError(f"encoder stream expected ({self.batch},) frame counts in [0, {frames.shape[1]}], "
                             f"got {counts.tolist()}")
        final = final.to(device=self.received.device, dtype=torch.bool)
        # Zeros past each stream's count, whatever the chunk holds there (the caches read them as * 0).
        frames = torch.where(shapes.make_pad_mask(counts, frames.shape[1])[:, :, None, None], frames, 0.0)
        short = final & (self.received + counts < self.min_input_frames)
        if bool(short.any()):
            b = int(torch.nonzero(short)[0])
            if self.too_short == "error":
                raise ValueError(
                    f"stream {b} ends after {int(self.received[b] + counts[b])} frames, but this encoder needs at "
                    f"least {self.min_input_frames} frames; feed more frames, or set encoder.too_short=pad"
                )
            counts = torch.where(short, self.min_input_frames - self.received, counts)  # the zeros after
            frames = nn.functional.pad(frames, (0, 0, 0, 0, 0, max(int(counts.max()) - frames.shape[1], 0)))
        return self._step(frames, counts, final)

    def reset(self, which: torch.Tensor | None = None) -> None:
        """Drop the streams in ``which`` (``(B,)`` bool, None: all) without output; they start over."""
        which = torch.ones(self.batch, dtype=torch.bool) if which is None else which.to(torch.bool)
        which = which.to(self.received.device)
        for layer in self.layers:
            layer.reset(which)
        self.received = torch.where(which, 0, self.received)
        self.emitted = torch.where(which, 0, self.emitted)

    def held_back(self) -> torch.Tensor:
        """``(B,)`` input frames each stream has accepted that no output frame it gave has
        read yet (0 right after an output; at most ``subsampling - 1`` past the start)."""
        last_read = (self.emitted - 1) * self.subsampling + self._reach - 1  # last input frame of the last output
        read = torch.where(self.emitted > 0, (last_read + 1).clamp(min=0), 0).minimum(self.received)
        return self.received - read

    def _step(self, frames: torch.Tensor, counts: torch.Tensor,
              final: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`step` on checked input, zero past ``counts``."""
        self.received += counts
        started = self.received > 0
        x = masking.conv_layout(frames)  # (B, t, F, C) -> (B, C, t, F)
        for layer in self.layers:
            x, counts = layer.step(x, counts, started, final)
        self.emitted += counts
        self.received = torch.where(final, 0, self.received)
        self.emitted = torch.where(final, 0, self.emitted)
        y = x.permute(0, 2, 3, 1)  # (B, C', t', F') -> (B, t', F', C')
        if self.flatten:
            y = y.flatten(2)  # (B, t', F', C') -> (B, t', F' * C')
        return y, counts


class EncoderStream:
    """One stream: ``accept(frames (t, F, C)) -> (t', F', C')`` (or ``(t', D)``) and
    ``finish()``, whose outputs, concatenated, are ``encoder(features[None], lengths)[0]``.

    After ``finish()`` the stream starts a new utterance.  ``look_ahead`` (input frames
    past an output frame's own position that it reads) and :meth:`held_back` as in
    :class:`BatchedEncoderStream`.
    """

    def __init__(self, batched: BatchedEncoderStream) -> None:
        assert batched.batch == 1, "EncoderStream wraps a one-stream BatchedEncoderStream"
        self.batched = batched
        self.look_ahead, self.subsampling = batched.look_ahead, batched.subsampling

    def accept(self, frames: torch.Tensor) -> torch.Tensor:
        """``(t, F, C)`` -> ``(t', F', C')`` (or ``(t', D)``): the frames that became final."""
        if frames.dim() != 3:
            raise ValueError(f"EncoderStream.accept expected frames (t, F, C), got {list(frames.shape)}")
        y, n = self.batched.accept(frames[None], torch.tensor([frames.shape[0]]))
        return y[0, : int(n[0])]

    def finish(self) -> torch.Tensor:
        """The last frames, ``(t', F', C')`` (or ``(t', D)``); the stream then starts over."""
        y, n = self.batched.finish()
        return y[0, : int(n[0])]

    def held_back(self) -> int:
        """Input frames accepted that no output frame given so far has read."""
        return int(self.batched.held_back()[0])
