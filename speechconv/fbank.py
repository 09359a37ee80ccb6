"""The ``torchaudio`` backend: batched log-mel filterbank energies, plus the shared framing.

One fused pass over a padded batch, no per-utterance loop:

    waveforms (B, S) -> frames (B, T, win) as a strided view (no copy)
    -> Hann window -> rfft(n_fft) -> re*re + im*im -> @ mel matrix (torchaudio's
    ``melscale_fbanks``) -> log(max(x, log_floor))

A window of ``win`` samples zero-padded to ``n_fft`` has the same power spectrum
wherever it sits inside the ``n_fft`` frame (a shift only changes the phase), so the
frames hold ``win`` samples, not ``n_fft``: torch.stft's ``win_length < n_fft`` (window
centred in the frame) gives the same numbers with 28% more data to move.

Framings (``FeatureConfig.framing``; the counts are :func:`speechconv.shapes.frames_from_samples`):

``kaldi``   frame ``t`` is samples ``[t*hop, t*hop + win)`` (Kaldi's snip edges).
``center``  frame ``t`` is centred on sample ``t*hop`` exactly as torch.stft/librosa
            with ``center=True`` place it: it starts ``n_fft//2 - (n_fft - win)//2``
            samples earlier (200 at the defaults).  The signal is padded with **zeros**
            (librosa's ``pad_mode="constant"``), never reflected: a reflection would
            read samples beyond an utterance's end from a padded batch's neighbouring
            zeros versus the utterance's own samples alone, so only zero padding keeps
            an utterance's features the same in a batch and alone.

Long inputs are processed in chunks of at most :data:`CHUNK_FRAMES` frames: the
per-chunk temporaries (frames, spectrum) then stay small enough for glibc's allocator
to reuse them instead of mapping and unmapping tens of megabytes on every op, and an
hour of audio never holds its whole spectrum in memory.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
import torchaudio.functional as AF

from speechconv import shapes
from speechconv.feature_config import FeatureConfig

CHUNK_FRAMES = 1024
"""Frames per chunk (a 1024 x 257 complex spectrum is 2 MB)."""

DITHER_SCALE = 1.0 / 32768.0
"""``FeatureConfig.dither`` is in int16 units (Kaldi's); [-1, 1] waveforms take it scaled."""


def center_offset(win_length: int, n_fft: int) -> int:
    """Samples between a ``center`` frame's first sample and its centre sample ``t*hop``.

    torch.stft pads ``n_fft // 2`` and places the window at ``(n_fft - win) // 2``
    inside each ``n_fft`` frame, so the window starts ``n_fft//2 - (n_fft-win)//2``
    samples before ``t*hop`` (200 for win 400, n_fft 512).
    """
    return n_fft // 2 - (n_fft - win_length) // 2


def frame_waveforms(waveforms: torch.Tensor, win_length: int, hop_length: int, n_fft: int,
                    framing: str) -> torch.Tensor:
    """Cut a padded batch into frames of ``win_length`` samples.

    Args:
        waveforms: ``(B, S)``; samples beyond each utterance's length must already be zero.
        win_length, hop_length, n_fft: samples.
        framing: ``kaldi`` or ``center`` (module docstring).

    Returns:
        ``(B, T, win_length)`` with ``T = frames_from_samples(S)``, a strided view of
        ``waveforms`` (``kaldi``) or of a zero-padded copy (``center``).
    """
    B, S = waveforms.shape
    T = shapes.frames_from_samples(S, win_length, hop_length, framing)
    if T == 0:
        return waveforms.new_zeros(B, 0, win_length)
    if framing == "center":
        left = center_offset(win_length, n_fft)
        right = max((T - 1) * hop_length + win_length - left - S, 0)
        waveforms = F.pad(waveforms, (left, right))
    frames = waveforms.unfold(-1, win_length, hop_length)  # (B, S') -> (B, T', win)
    assert frames.shape[1] >= T, f"framing {framing!r} made {frames.shape[1]} frames, expected {T}"
    return frames[:, :T]


def map_frame_chunks(frames: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor], n_out: int,
                     chunk_frames: int = CHUNK_FRAMES) -> torch.Tensor:
    """Apply ``fn`` to chunks of frames and gather the results.

    Args:
        frames: ``(B, T, W)``.
        fn: ``(b, t, W) -> (b, t, n_out)``, independent per frame.
        n_out: last dimension of ``fn``'s output.
        chunk_frames: at most this many frames ``b * t`` per call.

    Returns:
        ``(B, T, n_out)`` float32.
    """
    B, T, _ = frames.shape
    if B * T == 0:
        return frames.new_zeros(B, T, n_out)  # the FFT libraries reject empty input
    if B * T <= chunk_frames:
        return fn(frames)
    out = frames.new_empty(B, T, n_out)
    rows = max(1, chunk_frames // max(T, 1))
    t_step = T if rows > 1 else chunk_frames
    for b0 in range(0, B, rows):
        for t0 in range(0, T, t_step):
            out[b0 : b0 + rows, t0 : t0 + t_step] = fn(frames[b0 : b0 + rows, t0 : t0 + t_step])
    return out


def hann_window(win_length: int) -> torch.Tensor:
    """Periodic Hann window ``(win,)`` float32 (torch.stft's and librosa's ``"hann"``)."""
    return torch.hann_window(win_length, periodic=True, dtype=torch.float64).float()


def mel_matrix(config: FeatureConfig) -> torch.Tensor:
    """torchaudio's mel filterbank ``(n_fft//2 + 1, F)`` float32 for ``config``'s scale and norm."""
    return AF.melscale_fbanks(
        n_freqs=config.n_fft // 2 + 1, f_min=config.f_min, f_max=config.upper_hz, n_mels=config.n_mels,
        sample_rate=config.sample_rate, norm=config.mel_norm, mel_scale=config.mel_scale,
    ).float()


def spectrum_to_log_mel(spec: torch.Tensor, mel: torch.Tensor, power: float, log_floor: float) -> torch.Tensor:
    """Complex spectrum ``(b, t, n_fft//2+1)`` -> log mel energies ``(b, t, F)``.

    ``re*re + im*im`` instead of ``abs()**2``: no square root, and an order of magnitude
    faster than ``view_as_real().square().sum(-1)``.
    """
    re, im = spec.real, spec.imag
    energy = torch.addcmul(re * re, im, im)
    if power == 1.0:
        energy = energy.sqrt_()
    return torch.matmul(energy, mel).clamp_min_(log_floor).log_()


def log_mel(waveforms: torch.Tensor, config: FeatureConfig, window: torch.Tensor, mel: torch.Tensor,
            generator: torch.Generator | None = None) -> torch.Tensor:
    """Log-mel filterbank energies of a zero-padded batch (the ``torchaudio`` backend).

    Args:
        waveforms: ``(B, S)`` float32 in [-1, 1], zero beyond each utterance's length.
        config: framing, FFT size, power, log floor, dither.
        window: ``(win,)`` analysis window (:func:`hann_window`).
        mel: ``(n_fft//2 + 1, F)`` filterbank (:func:`mel_matrix`).
        generator: random source of the dither (only used when ``config.dither > 0``).

    Returns:
        ``(B, T, F)`` natural-log energies, ``T = frames_from_samples(S)``; frames past an
        utterance's own frame count are unspecified (the caller zeroes them).
    """
    frames = frame_waveforms(waveforms, config.win_length, config.hop_length, config.n_fft, config.framing)
    n_fft, power, floor, dither = config.n_fft, config.power, config.log_floor, config.dither * DITHER_SCALE

    def chunk(x: torch.Tensor) -> torch.Tensor:
        if dither > 0:
            x = x + dither * torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        spec = torch.fft.rfft(x * window, n=n_fft)  # (b, t, win) -> (b, t, n_fft//2 + 1)
        return spectrum_to_log_mel(spec, mel, power, floor)

    return map_frame_chunks(frames, chunk, mel.shape[1])
