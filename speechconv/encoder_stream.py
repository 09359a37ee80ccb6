"""Streams of the conv encoder: features in, chunk by chunk, and out the frames of the
offline encoder as soon as they are final.

A layer whose time padding has fixed alignment (``valid``, ``causal`` or an int ``p``:
the same zeros before every utterance) computes output ``j`` from frames
``j*s .. j*s + k - 1`` of its input with ``before`` zeros in front and, at the end of
the utterance, ``after`` zeros behind (:func:`speechconv.shapes.padding_amounts`).
Its stream (:class:`LayerStream`) keeps, in a cache of fixed size
(``max(k - 1, before)`` frames), the input frames that later windows still read, the
zeros in front included: each chunk's frames are appended, every window that is
complete goes through the layer's own :meth:`speechconv.encoder.ConvLayer.transform`
(the offline conv, norm and activation) at once, and the frames no later window reads
are dropped.  No input frame is fed twice; the frames kept are the ``k - s`` or so that
the next window shares with the last.  At the end the ``after`` zeros are appended and
the last windows computed.  A stack streams layer by layer, each layer's new frames the
next one's input, so the frames that come out are the offline ones, in the same number.

The state is a tuple of tensors and, in a traced graph, every shape a step makes depends
on the shapes of its inputs alone (each layer computes every window its buffer can hold
and masks those not complete), so the same step runs eagerly and in an exported graph
(:class:`speechconv.streaming.step.FrontEndStep`); eagerly a layer computes only as many
windows as the most any stream completes (:func:`speechconv.shapes.batch_bound`).

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


def _row_table(cache: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Every frame a layer's streams hold, as rows: stream ``b``'s cache ``(B, C, H, F)``,
    its new frames ``(B, C, t, F)`` and a zero frame -> ``(B * (H + t + 1), F*C)``, stream
    ``b``'s from row ``b * (H + t + 1)`` on.  One ``index_select`` of whole frames
    (``F * C`` values each) then lays out any frames of any streams."""
    B, C, H, F = cache.shape
    t = x.shape[2]
    return torch.cat([cache.permute(0, 2, 3, 1).reshape(B, H, F * C),  # (B, C, H, F) -> (B, H, F*C)
                      x.permute(0, 2, 3, 1).reshape(B, t, F * C),  # (B, C, t, F) -> (B, t, F*C)
                      x.new_zeros(B, 1, F * C)], dim=1).view(B * (H + t + 1), F * C)


def _frames_of(table: torch.Tensor, rows: torch.Tensor, freq: int) -> torch.Tensor:
    """Rows ``(B, T)`` of a :func:`_row_table` -> ``(B, C, T, F)`` frames laid out by
    :func:`speechconv.masking.conv_layout`."""
    B, T = rows.shape
    frames = table.index_select(0, rows.reshape(-1)).view(B, T, freq, table.shape[1] // freq)  # (B, T, F, C)
    return masking.conv_layout(frames)  # (B, T, F, C) -> (B, C, T, F)


class LayerStream:
    """One layer of a stream: how the input frames its later windows still read are kept.

    The state of ``B`` streams is ``(cache, count)``: ``cache`` ``(B, C, H, F)`` holds
    each stream's frames from the next window's first on, ``count[b]`` of them, in its
    last ``count[b]`` places (so that they and the new frames are consecutive rows of
    :func:`_row_table`; the places before them are never read), or with a negative
    count, that many frames still to skip (when the stride is longer than the kernel);
    ``H = max(k - 1, before)`` frames, the most a stream keeps
    (after a window at least ``k - s`` and at most ``k - 1``; before the first ``before``
    zeros and then fewer than ``k`` frames).  Traced, every shape depends on the input's
    shape alone, never on the counts, so one step runs eager and traced (ONNX) alike;
    eagerly the conv runs on as many windows as the most any stream completes.

    Shapes:
        ``step(cache, count, x, counts, started, final)``: ``x`` ``(B, C, t, F)`` of which
        stream ``b`` has ``counts[b]`` frames; ``started`` ``(B,)`` bool, the streams that
        have had a frame of features (windows of padding alone come out once a stream has
        started: every layer of an utterance the encoder accepts gets frames); ``final``
        ``(B,)`` bool, the streams whose utterance ends with this chunk -> ``(B, C', t',
        F')`` output frames (``t'``: the largest count, or traced, ``(H + t + after - k) // s
        + 1``, every window the buffer can hold), their ``(B,)`` counts, and the next
        ``(cache, count)``.
    """

    def __init__(self, layer: ConvLayer, in_channels: int) -> None:
        g = layer.time
        assert g.padding != "same", "SAME padding cannot stream; ConvEncoder.streaming() checks it"
        self.layer, self.kernel, self.stride, self.in_channels = layer, g.kernel, g.stride, in_channels
        self.before, self.after = shapes.padding_amounts(1, g.kernel, g.stride, g.padding)
        self.held = max(g.kernel - 1, self.before)

    def initial_state(self, batch: int, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """``(cache (B, C, H, F), count (B,))`` of streams at their start: ``before`` zeros."""
        cache = masking.conv_layout(torch.zeros(batch, self.held, self.layer.in_freq, self.in_channels, device=device,
                                                dtype=dtype))  # (B, H, F, C) -> (B, C, H, F)
        return cache, torch.full((batch,), self.before, dtype=torch.int64, device=device)

    def step(self, cache: torch.Tensor, count: torch.Tensor, x: torch.Tensor, counts: torch.Tensor,
             started: torch.Tensor, final: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        """Append each stream's new frames (and, for ``final`` streams, the zeros behind),
        compute every complete window, keep what later windows read; final streams start
        over.  ``(B, C, H, F)``, ``(B,)``, ``(B, C, t, F)``, ``(B,)``, ``(B,)``, ``(B,)`` ->
        ``(B, C', t', F')``, ``(B,)``, ``(B, C, H, F)``, ``(B,)``.  ``final=None``: no
        stream ends (eager only; the same as all False)."""
        layer, k, s, H = self.layer, self.kernel, self.stride, self.held
        B, t = x.shape[0], x.shape[2]
        span = H + t + self.after  # the most frames a stream can have: a static size
        have = count + counts  # (B,) frames from the cache's first
        total = have if final is None or not self.after else have + (final & started) * self.after  # + zeros behind
        windows = shapes.conv_out_length_tensor(total, k, s, "valid") * started  # (B,) once a stream has started
        # Keep the frames from the next window's first on (at most H of them); final streams
        # start over from `before` zeros.
        keep = total - windows * s
        # Position p holds cached frame p (p < count) or new frame p - count (a negative count
        # skips frames), zero past the stream's frames (the `after` zeros included): row
        # p + H - count of the stream's rows of the table, or its zero row H + t.
        p = torch.arange(span, device=x.device)[None, :]  # (1, span)
        first = torch.arange(B, device=x.device) * (H + t + 1)  # (B,) each stream's first row
        zero = first + (H + t)  # (B,) each stream's zero row
        rows = torch.where(p < have[:, None], p + (first + H - count)[:, None], zero[:, None])  # (B, span)
        table = _row_table(cache, x)
        # Eager: as many windows as the most any stream completes; traced: every window the
        # buffer can hold (the graph cannot read counts).  32 streams at 100 ms chunks
        # (bench/streaming.py): 1.15x the batched throughput of computing every window.
        least, out_time = shapes.batch_range(windows, shapes.conv_out_length(span, k, s, "valid"))
        if out_time > 0:
            frames = _frames_of(table, rows[:, : shapes.conv_input_span(out_time, k, s)], layer.in_freq)
            # (B, C', t', F'), zero past `windows`; no mask to apply where every stream completes all t'
            y = layer.transform(frames, None if least == out_time else shapes.make_pad_mask(windows, out_time))
        else:
            y = x.new_zeros(B, layer.out_channels, 0, layer.out_freq)
        # the cache's place h takes position total - H + h (those before the kept frames: anything)
        kept = rows.gather(1, ((total - H)[:, None] + torch.arange(H, device=x.device)).clamp_(min=0))  # (B, H)
        if final is not None:
            kept = torch.where(final[:, None], zero[:, None], kept)
            keep = torch.where(final, self.before, keep)
        return y, windows, _frames_of(table, kept, layer.in_freq), keep


class BatchedEncoderStream:
    """``B`` independent streams of one encoder branch (see the module docstring).

    Built by ``ConvEncoder.streaming(batch=B)``.  Attributes: ``look_ahead``, the input
    frames past an output frame's own position that it reads
    (:func:`speechconv.shapes.look_ahead`, exact with fixed alignment); ``subsampling``;
    ``state``, the streams' tensors (:meth:`initial_state`), which :meth:`step_state`
    maps to the next state with shapes that depend on the input's shape alone (what an
    exported step, :mod:`speechconv.streaming.step`, runs).

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
        channels = [input_channels] + [layer.out_channels for layer in layers[:-1]]
        self.batch, self.input_freq, self.input_channels = batch, input_freq, input_channels
        self.layers = [LayerStream(layer, c) for layer, c in zip(layers, channels, strict=True)]
        self.min_input_frames, self.too_short, self.flatten = min_input_frames, too_short, flatten
        geometries = [layer.time for layer in layers]
        self.look_ahead = shapes.look_ahead(geometries)
        self.subsampling = shapes.subsampling(geometries)
        self._reach = shapes.receptive_field(geometries) - sum(
            s.before * shapes.subsampling(geometries[:i]) for i, s in enumerate(self.layers))
        self.state = self.initial_state(batch)
        self.emitted = torch.zeros_like(self.received)

    def initial_state(self, batch: int) -> tuple[torch.Tensor, ...]:
        """The state of ``batch`` streams before their first frame: ``received`` ``(B,)``
        int64 (input frames since the utterance began), then each layer's ``cache``
        ``(B, C, H, F)`` and ``count`` ``(B,)`` (:class:`LayerStream`)."""
        param = self.layers[0].layer.conv.weight
        state = [torch.zeros(batch, dtype=torch.int64, device=param.device)]
        for layer in self.layers:
            state.extend(layer.initial_state(batch, param.device, param.dtype))
        return tuple(state)

    def state_names(self) -> list[str]:
        """A name for each tensor of the state, in order."""
        return ["received"] + [f"{n}_{i}" for i in range(len(self.layers)) for n in ("cache", "count")]

    @property
    def received(self) -> torch.Tensor:
        """``(B,)`` input frames each stream has accepted since it (re)started."""
        return self.state[0]

    def accept(self, frames: torch.Tensor, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, t, F, C)``, ``(B,)`` -> ``(B, t', F', C')`` (or ``(B, t', D)``), ``(B,)``."""
        return self.step(frames, counts)

    def finish(self, which: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The last frames of the streams in ``which`` (``(B,)`` bool, None: all), which
        start over (:meth:`step` with no new frames)."""
        final = torch.ones(self.batch, dtype=torch.bool) if which is None else which.to(torch.bool).cpu()
        empty = torch.zeros(self.batch, 0, self.input_freq, self.input_channels, dtype=self.state[1].dtype,
                            device=self.received.device)
        return self.step(empty, torch.zeros(self.batch, dtype=torch.int64), final)

    def step(self, frames: torch.Tensor, counts: torch.Tensor,
             final: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Take ``counts[b]`` new frames of each stream and end the streams in ``final``.

        Args:
            frames: ``(B, t, F, C)``; stream ``b``'s are the first ``counts[b]`` (what lies
                past them is never read, NaN included).
            counts: ``(B,)`` int in ``[0, t]``.
            final: ``(B,)`` bool (``None``: none): the streams whose utterance ends after
                these frames; they give their last output frames and start over.  One shorter than the
                encoder's minimum input raises under ``too_short="error"`` and is
                zero-padded to it under ``"pad"``, as offline.

        Returns:
            ``(B, t', F', C')`` (or ``(B, t', D)``) and ``(B,)`` counts of new output frames
            (stream ``b``'s are the first ``counts[b]``; ``t'`` is the largest count).
        """
        if frames.dim() != 4 or frames.shape[0] != self.batch or frames.shape[2:] != (self.input_freq,
                                                                                      self.input_channels):
            raise ValueError(f"encoder stream expected frames ({self.batch}, t, {self.input_freq}, "
                             f"{self.input_channels}), got {list(frames.shape)}")
        counts = counts.to(device=self.received.device, dtype=torch.int64)
        listed = counts.tolist()  # one host read for the check
        if counts.shape != (self.batch,) or min(listed) < 0 or max(listed) > frames.shape[1]:
            raise ValueError(f"encoder stream expected ({self.batch},) frame counts in [0, {frames.shape[1]}], "
                             f"got {listed}")
        if final is not None:
            final = final.to(device=self.received.device, dtype=torch.bool)
        short = None if final is None else final & (self.received + counts < self.min_input_frames)
        if short is not None and bool(short.any()):
            b = int(torch.nonzero(short)[0])
            if self.too_short == "error":
                raise ValueError(
                    f"stream {b} ends after {int(self.received[b] + counts[b])} frames, but this encoder needs at "
                    f"least {self.min_input_frames} frames; feed more frames, or set encoder.too_short=pad"
                )
            # the zeros after (whatever lies past the old counts zeroed)
            frames = torch.where(shapes.make_pad_mask(counts, frames.shape[1])[:, :, None, None], frames, 0.0)
            counts = torch.where(short, self.min_input_frames - self.received, counts)
            frames = nn.functional.pad(frames, (0, 0, 0, 0, 0, max(int(counts.max()) - frames.shape[1], 0)))
        y, out_counts, self.state = self.step_state(self.state, frames, counts, final)
        self.emitted = self.emitted + out_counts if final is None else torch.where(final, 0, self.emitted + out_counts)
        return y, out_counts  # (B, t', ...): eager layers make no more windows than the largest count

    def step_state(self, state: tuple[torch.Tensor, ...], frames: torch.Tensor, counts: torch.Tensor,
                   final: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...]]:
        """:meth:`step` on an explicit state, unchecked: tensor ops only, every shape fixed
        by the shapes of ``state`` and ``frames``.  A traced step trusts that every stream
        that ends has at least ``min_input_frames`` frames in all.

        Args:
            state: :meth:`initial_state`'s tensors.
            frames: ``(B, t, F, C)``, stream ``b``'s the first ``counts[b]`` (``(B,)`` int64,
                in ``[0, t]``); ``final``: ``(B,)`` bool (``None``, eager only: none).

        Returns:
            ``(B, t', F', C')`` (or ``(B, t', D)``), ``(B,)`` counts of new output frames,
            and the next state (the ``final`` streams back at their start).
        """
        received = state[0] + counts
        started = received > 0
        x = masking.conv_layout(frames.contiguous())  # (B, t, F, C) -> (B, C, t, F)
        following = [received if final is None else torch.where(final, 0, received)]
        for i, layer in enumerate(self.layers):
            x, counts, cache, count = layer.step(state[1 + 2 * i], state[2 + 2 * i], x, counts, started, final)
            following += [cache, count]
        y = x.permute(0, 2, 3, 1)  # (B, C', t', F') -> (B, t', F', C')
        if self.flatten:
            y = y.flatten(2)  # (B, t', F', C') -> (B, t', F' * C')
        return y, counts, tuple(following)

    def reset(self, which: torch.Tensor | None = None) -> None:
        """Drop the streams in ``which`` (``(B,)`` bool, None: all) without output; they start over."""
        which = torch.ones(self.batch, dtype=torch.bool) if which is None else which.to(torch.bool)
        which = which.to(self.received.device)
        fresh = self.initial_state(self.batch)
        self.state = tuple(torch.where(which.view(-1, *[1] * (new.dim() - 1)), new, old)  # (B,) -> (B, 1, ...)
                           for new, old in zip(fresh, self.state, strict=True))
        self.emitted = torch.where(which, 0, self.emitted)

    def held_back(self) -> torch.Tensor:
        """``(B,)`` input frames each stream has accepted that no output frame it gave has
        read yet (0 right after an output; at most ``subsampling - 1`` past the start)."""
        last_read = (self.emitted - 1) * self.subsampling + self._reach - 1  # last input frame of the last output
        read = torch.where(self.emitted > 0, (last_read + 1).clamp(min=0), 0).minimum(self.received)
        return self.received - read


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
