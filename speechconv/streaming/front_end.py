"""Streams of the whole front end: audio in, chunk by chunk, the offline encoder frames out.

A front-end stream chains the two streams that exist already, each the offline code on
its own buffers: :class:`speechconv.features.stream.FeatureStream` (samples -> the
frames that became final) and :class:`speechconv.encoder_stream.BatchedEncoderStream`
(those frames -> the encoder frames that became final).  So stream ``b``'s output,
concatenated over its chunks and ``finish``, is ``encoder(*features(waveform))`` of its
own waveform: the same frames (in number exactly, in value within float rounding of the
convs, which run on other shapes).

Look-ahead: encoder output ``j`` (its time is sample ``j*J*hop``) reads feature frames up
to ``j*J + a`` (``a``: :func:`speechconv.shapes.look_ahead` of the stack) and feature
frame ``t`` is final once ``t*hop + L`` samples are in (``L``: the features' look-ahead),
so output ``j`` is final :func:`speechconv.shapes.front_end_look_ahead` ``= L + a*hop``
samples after its time: 1520 samples (95 ms) for the default features and conv front.

:class:`FrontEndStream` is one stream (``accept((S,)) -> (t', ...)``);
:class:`BatchedFrontEndStream` holds ``B`` for a server: chunks ``(B, S)`` with
per-stream lengths, streams that start and end independently.
"""

from __future__ import annotations

import torch

from speechconv import shapes
from speechconv.encoder import ConvEncoder
from speechconv.features.module import LogMelDeltas


class BatchedFrontEndStream:
    """``B`` independent streams of ``features`` then ``encoder`` (module docstring).

    Args:
        features: the feature stage (settings that stream: no utterance normalisation,
            no dither).
        encoder: an eval-mode :class:`speechconv.ConvEncoder` with fixed alignment along
            time (``ConvEncoder.streaming`` raises for TF SAME, with what to use).
        batch: ``B``.

    Attributes:
        look_ahead_samples, look_ahead_ms: samples (and ms) past an output frame's time
            that must be in before it is final, features plus encoder.
        subsampling: feature frames per output frame.
        features, encoder: the two streams.

    Shapes:
        ``step(chunk (B, S), lengths (B,), final (B,))`` -> ``(B, t', F', C')`` (or
        ``(B, t', D)`` when the encoder flattens) and ``(B,)`` counts: stream ``b``'s new
        frames are the first ``counts[b]``.
    """

    def __init__(self, features: LogMelDeltas, encoder: ConvEncoder, batch: int) -> None:
        if (features.config.n_mels, features.config.n_channels) != (encoder.input_freq, encoder.input_channels):
            raise ValueError(f"the features give (F, C) = {features.output_size} but the encoder takes "
                             f"({encoder.input_freq}, {encoder.input_channels}); build the encoder for these features")
        self.features = features.streaming(batch_size=batch)
        self.encoder = encoder.streaming(batch=batch)
        self.batch = batch
        cfg = features.config
        self.hop_length, self.sample_rate = cfg.hop_length, cfg.sample_rate
        self.subsampling = self.encoder.subsampling
        self.look_ahead_samples = shapes.front_end_look_ahead(self.features.look_ahead_samples,
                                                              self.encoder.look_ahead, cfg.hop_length)
        self.look_ahead_ms = 1000.0 * self.look_ahead_samples / cfg.sample_rate

    def step(self, chunk: torch.Tensor, lengths: torch.Tensor | None = None,
             final: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The next ``lengths[b]`` samples of each stream (``None``: all ``S``); the streams
        in ``final`` (``(B,)`` bool, ``None``: none) end after them and start over.
        ``(B, S)`` -> ``(B, t', ...)``, ``(B,)`` (class docstring)."""
        if final is not None:
            final = final.to(torch.bool)
            if self.encoder.too_short == "error" and bool(final.any()):
                self._check_long_enough(chunk, lengths, final)
        frames, counts = self.features.advance(chunk, lengths, final)  # (B, E, F, C), (B,)
        return self.encoder.step(frames, counts, final)

    def accept(self, chunk: torch.Tensor, lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`step` with no stream ending."""
        return self.step(chunk, lengths)

    def finish(self, which: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The last frames of the streams in ``which`` (``(B,)`` bool, ``None``: all),
        which start over; the others give nothing and go on."""
        final = torch.ones(self.batch, dtype=torch.bool) if which is None else which
        return self.step(torch.zeros(self.batch, 0), torch.zeros(self.batch, dtype=torch.int64), final)

    def reset(self, which: torch.Tensor | None = None) -> None:
        """Drop the streams in ``which`` (``None``: all) without output; they start over."""
        for b in range(self.batch) if which is None else torch.nonzero(which).flatten().tolist():
            self.features.reset(b)
        self.encoder.reset(which)

    def samples_accepted(self) -> torch.Tensor:
        """``(B,)`` samples each stream has taken since it (re)started."""
        return self.features.state.received.clone()

    def frames_held(self) -> torch.Tensor:
        """``(B,)`` feature frames each stream holds back: those whose windows are in but
        that wait for the deltas' look-ahead, plus those the encoder has taken that no
        output frame given so far has read."""
        held = torch.tensor([self.features.frames_held(b) for b in range(self.batch)])
        return held + self.encoder.held_back().cpu()

    def _check_long_enough(self, chunk: torch.Tensor, lengths: torch.Tensor | None, final: torch.Tensor) -> None:
        """Raise before any state changes if a stream that ends has fewer feature frames
        than the encoder's minimum (``too_short="error"``, as offline)."""
        cfg = self.features.config
        n = torch.full((self.batch,), chunk.shape[-1]) if lengths is None else torch.as_tensor(lengths).reshape(-1)
        total = shapes.frames_from_samples_tensor(self.features.state.received.cpu() + n.cpu(), cfg.win_length,
                                                  cfg.hop_length, cfg.framing)
        short = final.cpu() & (total < self.encoder.min_input_frames)
        if bool(short.any()):
            b = int(torch.nonzero(short)[0])
            samples = shapes.min_samples_for_frames(self.encoder.min_input_frames, cfg.win_length, cfg.hop_length,
                                                    cfg.framing)
            raise ValueError(f"stream {b} ends after {int(total[b])} feature frames, but the encoder needs at least "
                             f"{self.encoder.min_input_frames} ({samples} samples); feed more audio, or set "
                             f"encoder.too_short=pad")


class FrontEndStream:
    """One stream of ``features`` then ``encoder``: ``accept(samples (S,)) -> (t', F', C')``
    (or ``(t', D)``) and ``finish()``, whose outputs, concatenated, are the offline
    ``encoder(*features(waveform[None]))`` frames.  Attributes as
    :class:`BatchedFrontEndStream` (``look_ahead_samples``, ``look_ahead_ms``)."""

    def __init__(self, features: LogMelDeltas, encoder: ConvEncoder) -> None:
        self.batched = BatchedFrontEndStream(features, encoder, 1)
        self.look_ahead_samples = self.batched.look_ahead_samples
        self.look_ahead_ms = self.batched.look_ahead_ms
        self.subsampling = self.batched.subsampling

    def accept(self, samples: torch.Tensor) -> torch.Tensor:
        """``(S,)`` float in [-1, 1], any length (0 included) -> the frames that became final."""
        if samples.dim() != 1 or not samples.is_floating_point():
            raise ValueError(f"samples must be float (S,) for one stream, got {samples.dtype} "
                             f"{tuple(samples.shape)}")
        y, n = self.batched.accept(samples[None])  # (S,) -> (1, S)
        return y[0]  # (1, t', ...) -> (t', ...): the eager encoder stream gives the one stream's count

    def finish(self) -> torch.Tensor:
        """The last frames; the stream then starts a new utterance."""
        y, n = self.batched.finish()
        return y[0, : int(n[0])]

    def samples_accepted(self) -> int:
        """Samples taken since the stream (re)started."""
        return int(self.batched.samples_accepted()[0])

    def frames_held(self) -> int:
        """Feature frames held back (:meth:`BatchedFrontEndStream.frames_held`)."""
        return int(self.batched.frames_held()[0])


def front_end_stream(features: LogMelDeltas, encoder: ConvEncoder,
                     batch: int | None = None) -> FrontEndStream | BatchedFrontEndStream:
    """One front-end stream (``batch=None``) or ``batch`` of them (module docstring)."""
    if batch is not None and (isinstance(batch, bool) or not isinstance(batch, int) or batch < 1):
        raise ValueError(f"batch={batch!r} is invalid: expected None (one stream) or an int >= 1")
    return FrontEndStream(features, encoder) if batch is None else BatchedFrontEndStream(features, encoder, batch)
