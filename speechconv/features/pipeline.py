"""The feature pipeline as functions: waveforms -> ``(B, T, F, C)`` log-mel + deltas.

:func:`log_mel_deltas` computes a padded batch in two steps, which
:class:`speechconv.features.stream.FeatureStream` runs on its buffers too:

1. :func:`static_log_mel`: frames cut from the zero-padded samples
   (:func:`speechconv.features.fbank.pad_for_framing`), the backend's windowing
   (``torchaudio``: x Hann; ``kaldi``: :mod:`speechconv.features.kaldi`), then the
   spectrum, mel product and log (:func:`speechconv.features.fbank.log_mel`);
2. :func:`features_from_statics`: deltas with each utterance's edge frames replicated
   (:mod:`speechconv.features.deltas`), the channels stacked in ``config.channels``
   order, and the normalisation (:mod:`speechconv.features.cmvn`).

Frames at or beyond each utterance's frame count
(:func:`speechconv.shapes.frames_from_samples_tensor`) are exactly zero.  Audio shorter
than one window under ``kaldi`` framing (400 samples at the defaults) gives zero
frames: an empty ``(0, F, C)`` result with length 0, never an error here.

Every frame's features are computed the same way bit for bit whatever else is in the
batch (all but utterance normalisation, whose statistics are sums over the frames), so
an utterance gives the same features alone, in any padded batch and streamed.  Lengths
act through masks and gathers only: no Python control flow depends on their values, so
the pipeline exports (``torch.export``, ONNX).
"""

from __future__ import annotations

import torch

from speechconv import shapes
from speechconv.feature_config import FeatureConfig
from speechconv.features import cmvn, deltas, fbank, kaldi

PIECE_FRAMES = 512
"""Frames (over the whole batch) whose statics are computed at once: each piece's
temporaries then stay within a few MB, which the allocator reuses and the cache holds,
where whole-batch ones are mapped, page-faulted and freed on every call.  Measured
(bench/features.py, 1 thread, 3/10/60 s utterances): 1.6-2.4x the speed of one piece."""


def static_log_mel(padded: torch.Tensor, num_frames: int, config: FeatureConfig, window: torch.Tensor,
                   mel: torch.Tensor, basis: torch.Tensor | None = None) -> torch.Tensor:
    """Static log-mel features of the frames of padded samples.

    Args:
        padded: ``(B, S')`` samples where frame ``t``'s window is ``[t*hop, t*hop + win)``
            (:func:`speechconv.features.fbank.pad_for_framing`, or a stream's buffer).
        num_frames: ``T``, with ``(T - 1)*hop + win <= S'``.
        config: the feature settings.
        window: ``(win,)`` of the backend (Kaldi's with its int16 scale).
        mel: ``(n_fft//2 + 1, F)`` of the backend.
        basis: ``None`` (FFT) or :func:`speechconv.features.fbank.dft_basis`.

    Returns:
        ``(B, T, F)``.

    The frames are taken in pieces of :data:`PIECE_FRAMES` along ``T`` (one piece in a
    graph being traced for export); each frame is computed the same way in any piece.
    """
    B, hop = padded.shape[0], config.hop_length
    step = num_frames if torch.compiler.is_compiling() else max(PIECE_FRAMES // max(B, 1), 1)
    if num_frames <= step:
        return _static_piece(padded, num_frames, config, window, mel, basis)
    pieces = [_static_piece(padded[:, t * hop :], min(step, num_frames - t), config, window, mel, basis)
              for t in range(0, num_frames, step)]
    return torch.cat(pieces, dim=1)  # (B, step, F) pieces -> (B, T, F)


def _static_piece(padded: torch.Tensor, num_frames: int, config: FeatureConfig, window: torch.Tensor,
                  mel: torch.Tensor, basis: torch.Tensor | None) -> torch.Tensor:
    """:func:`static_log_mel` of the first ``num_frames`` frames in one go."""
    win = config.win_length
    frames = fbank.frames_of(padded, num_frames, win, config.hop_length)  # (B, T, win)
    B = frames.shape[0]
    # The DFT's input, float64 (fbank.SPECTRUM_DTYPE): eager writes each windowed frame
    # into the first win samples of an n_fft-wide row whose tail is zeroed once, so the
    # DFT pads nothing (1.6-2.2x the speed of padding inside torch.fft.rfft, with the
    # 512-frame pieces).  A traced graph makes the windowed frames as a new tensor and
    # leaves the zero padding to its DFT operator (executorch would fix an empty
    # tensor's sizes to the example's).
    if torch.compiler.is_compiling():
        width = win
        dft_in = _windowed(frames, config, window, out=None)  # (B, T, win)
    else:
        width = config.n_fft
        dft_in = frames.new_empty((B, num_frames, width), dtype=fbank.SPECTRUM_DTYPE)  # (B, T, n_fft)
        if width > win:
            dft_in[..., win:].zero_()
        _windowed(frames, config, window, out=dft_in[..., :win])  # written into (B, T, win)
    rows = dft_in.reshape(B * num_frames, width)  # (B, T, width) -> (B*T, width)
    log_mel = fbank.log_mel(rows, config.n_fft, mel, config.power, config.log_floor, basis)  # (B*T, F)
    return log_mel.view(B, num_frames, mel.shape[1])  # (B*T, F) -> (B, T, F)


def _windowed(frames: torch.Tensor, config: FeatureConfig, window: torch.Tensor,
              out: torch.Tensor | None) -> torch.Tensor:
    """``(B, T, win)`` frames windowed in float64 (:data:`speechconv.features.fbank.SPECTRUM_DTYPE`),
    written into ``out`` (``(B, T, win)`` float64) or, with ``out=None``, a new tensor."""
    if config.backend == "kaldi":
        return kaldi.kaldi_windowed(frames, window, config.preemphasis, config.remove_dc_offset, out=out)
    return fbank.apply_window(frames, window, out)


def features_from_statics(static: torch.Tensor, lengths: torch.Tensor, config: FeatureConfig,
                          global_stats: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Deltas, channels and normalisation of static features.

    Args:
        static: ``(B, T, F)``, ``T >= 1``.
        lengths: ``(B,)`` frames per utterance; its edge frames are the ones replicated.
        config: channels, delta window, second-order rule, normalisation.
        global_stats: ``(mean, std)`` each ``(F, C)``, for ``normalization="global"``.

    Returns:
        ``(B, T, F, C)``; frames at or beyond ``lengths`` are unspecified.
    """
    channels = {"static": static}
    if deltas.context_frames(config.delta_window, config.channels):
        want_dd = "delta_delta" in config.channels
        channels["delta"], channels["delta_delta"] = deltas.deltas(static, lengths, config.delta_window,
                                                                   config.order2, want_dd)
    normalised = []
    for c, name in enumerate(config.channels):
        x = channels[name]  # (B, T, F)
        if config.normalization == "utterance":
            x = cmvn.utterance_cmvn(x, lengths)
        elif config.normalization == "global":
            assert global_stats is not None, "normalization='global' needs the statistics"
            x = cmvn.global_cmvn(x, global_stats[0][:, c], global_stats[1][:, c])
        normalised.append(x)
    if torch.compiler.is_compiling():
        # A traced graph stacks them (ONNX's Concat), where slice writes become scatters.
        return torch.stack(normalised, dim=-1)  # C x (B, T, F) -> (B, T, F, C)
    # Eager: each channel written into its strided slice; torch.stack(dim=-1) interleaves 5x slower.
    features = static.new_empty(*static.shape, config.n_channels)  # (B, T, F, C)
    for c, x in enumerate(normalised):
        features[..., c] = x
    return features


def log_mel_deltas(
    waveforms: torch.Tensor,
    lengths: torch.Tensor,
    config: FeatureConfig,
    window: torch.Tensor,
    mel: torch.Tensor,
    global_stats: tuple[torch.Tensor, torch.Tensor] | None = None,
    basis: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Features of a padded batch (module docstring).

    Args:
        waveforms: ``(B, S)`` float32 in [-1, 1].
        lengths: ``(B,)`` int64 valid samples, each in ``[0, S]``.
        config: the feature settings.
        window: ``(win,)`` analysis window of the backend.
        mel: ``(n_fft//2 + 1, F)`` filterbank of the backend.
        global_stats: ``(mean, std)`` each ``(F, C)``, for ``normalization="global"``.
        basis: ``None`` (FFT) or :func:`speechconv.features.fbank.dft_basis`.
        generator: random source of the dither (``config.dither > 0`` only).

    Returns:
        ``(features (B, T, F, C) float32, frame_lengths (B,) int64)`` with ``T`` the
        frame count of ``S`` samples; frames ``t >= frame_lengths[b]`` are 0.
    """
    B, S = waveforms.shape
    frame_lengths = shapes.frames_from_samples_tensor(lengths, config.win_length, config.hop_length, config.framing)
    T = shapes.frames_from_samples(S, config.win_length, config.hop_length, config.framing)
    if B == 0 or T == 0:
        return waveforms.new_zeros(B, T, config.n_mels, config.n_channels), frame_lengths
    padded = fbank.pad_for_framing(waveforms, lengths, config, generator)  # (B, S')
    static = static_log_mel(padded, T, config, window, mel, basis)  # (B, T, F)
    # Statics past an utterance's frames may be inf or NaN (kaldi framing reads the batch's
    # padding in place): made 0, so that every feature is finite and the product with the
    # mask leaves zeros there (masked_fill and where take 7-10x as long on CPU).
    static.nan_to_num_(0.0, 0.0, 0.0)
    features = features_from_statics(static, frame_lengths, config, global_stats)  # (B, T, F, C)
    valid = shapes.make_pad_mask(frame_lengths, T).to(features.dtype)  # (B, T) 1.0 on valid frames
    return features.mul_(valid[:, :, None, None]), frame_lengths  # (B, T) -> (B, T, 1, 1)
