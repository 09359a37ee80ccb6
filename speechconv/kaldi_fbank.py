"""The ``kaldi`` backend: Kaldi's ``compute-fbank-feats``, batched.

Per frame, in Kaldi's order (``FeatureWindowFunction`` / ``ProcessWindow`` in
feature-window.cc, and kaldi-native-fbank, which the tests compare against):

1. int16 scale: [-1, 1] waveforms are multiplied by 32768, because Kaldi reads WAV
   samples as int16 values (``FeatureConfig.kaldi_int16_scale``).  With the power
   spectrum this adds ``2 ln 32768 = 20.79`` to every log energy above the floor.
2. dither (off by default: ``dither=0`` keeps features deterministic),
3. DC removal: subtract the frame's mean,
4. pre-emphasis within the frame: ``x[i] -= 0.97 x[i-1]`` for ``i >= 1`` and
   ``x[0] -= 0.97 x[0]`` (Kaldi's rule for the first sample),
5. window: ``povey`` = ``(0.5 - 0.5 cos(2 pi i / (N-1)))^0.85`` (or Kaldi's symmetric
   ``hann``/``hamming``),
6. zero-pad to ``n_fft`` (Kaldi rounds 400 up to 512), real FFT, power spectrum,
7. Kaldi's mel banks (:func:`kaldi_mel_banks`), then ``log(max(x, FLT_EPSILON))``.

Framing: ``kaldi`` is Kaldi's ``--snip-edges=true``.  ``center`` frames are placed
exactly as in the ``torchaudio`` backend (centred on ``t*hop``, zero padding,
``T = 1 + S // hop``) and then processed by steps 1-7.  This is *not* Kaldi's
``--snip-edges=false``, which reflects the signal at the edges and has
``T = round(S / hop)`` frames; zero padding is what keeps batched == single and one
frame-count formula for both backends.
"""

from __future__ import annotations

import math

import torch

from speechconv.fbank import DITHER_SCALE, frame_waveforms, map_frame_chunks, spectrum_to_log_mel
from speechconv.feature_config import FeatureConfig

INT16_SCALE = 32768.0
"""Kaldi's waveform scale: a [-1, 1] float sample times 32768 is its int16 value."""


def kaldi_window(name: str, win_length: int) -> torch.Tensor:
    """Kaldi's window functions ``(win,)`` float32 (computed in float64, as the formulas)."""
    i = torch.arange(win_length, dtype=torch.float64)
    a = 2 * math.pi / (win_length - 1)
    if name == "povey":
        w = (0.5 - 0.5 * torch.cos(a * i)).pow(0.85)
    elif name == "hann":
        w = 0.5 - 0.5 * torch.cos(a * i)
    elif name == "hamming":
        w = 0.54 - 0.46 * torch.cos(a * i)
    else:
        raise ValueError(f"window {name!r} is invalid: expected one of ('povey', 'hann', 'hamming')")
    return w.float()


def kaldi_mel(freq: torch.Tensor) -> torch.Tensor:
    """Kaldi's ``MelScale``: ``1127 ln(1 + f / 700)``."""
    return 1127.0 * torch.log1p(freq / 700.0)


def kaldi_mel_banks(n_mels: int, n_fft: int, sample_rate: int, low_freq: float, high_freq: float) -> torch.Tensor:
    """Kaldi's ``MelBanks`` as a matrix ``(n_fft//2 + 1, F)`` float32.

    Bin ``m`` is a triangle in the *mel* domain with edges ``mel_low + m*delta``,
    ``+ (m+1)*delta`` (peak 1) and ``+ (m+2)*delta``, ``delta = (mel_high - mel_low) /
    (F + 1)``, evaluated on the mel values of the FFT bin centres ``i * sr / n_fft`` for
    ``i < n_fft / 2``.  Kaldi never uses the Nyquist bin, so its row is zero.
    """
    n_bins = n_fft // 2
    mel_low, mel_high = kaldi_mel(torch.tensor(low_freq, dtype=torch.float64)), kaldi_mel(
        torch.tensor(high_freq, dtype=torch.float64)
    )
    delta = (mel_high - mel_low) / (n_mels + 1)
    m = torch.arange(n_mels, dtype=torch.float64)[None, :]
    left, centre, right = mel_low + m * delta, mel_low + (m + 1) * delta, mel_low + (m + 2) * delta
    mel = kaldi_mel(torch.arange(n_bins, dtype=torch.float64) * (sample_rate / n_fft))[:, None]
    up, down = (mel - left) / (centre - left), (right - mel) / (right - centre)
    weights = torch.where(mel <= centre, up, down)
    weights = torch.where((mel > left) & (mel < right), weights, torch.zeros_like(weights))
    return torch.cat([weights, weights.new_zeros(1, n_mels)]).float()  # (n_fft/2, F) + Nyquist row


def kaldi_log_fbank(waveforms: torch.Tensor, config: FeatureConfig, window: torch.Tensor, mel: torch.Tensor,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """Kaldi log filterbank energies of a zero-padded batch (the ``kaldi`` backend).

    Args:
        waveforms: ``(B, S)`` float32 in [-1, 1], zero beyond each utterance's length.
        config: framing, FFT size, pre-emphasis, DC removal, power, log floor, dither.
        window: ``(win,)`` (:func:`kaldi_window`).
        mel: ``(n_fft//2 + 1, F)`` (:func:`kaldi_mel_banks`).
        generator: random source of the dither (only used when ``config.dither > 0``).

    Returns:
        ``(B, T, F)``, ``T = frames_from_samples(S)``; frames past an utterance's own
        frame count are unspecified (the caller zeroes them).
    """
    scale = INT16_SCALE if config.kaldi_int16_scale else 1.0
    dither = config.dither * (1.0 if config.kaldi_int16_scale else DITHER_SCALE)
    frames = frame_waveforms(waveforms * scale, config.win_length, config.hop_length, config.n_fft, config.framing)
    n_fft, coeff, remove_dc = config.n_fft, config.preemphasis, config.remove_dc_offset
    power, floor = config.power, config.log_floor

    def chunk(x: torch.Tensor) -> torch.Tensor:
        if dither > 0:
            x = x + dither * torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        if remove_dc:
            x = x - x.mean(-1, keepdim=True)
        if coeff:
            y = torch.empty_like(x)
            torch.sub(x[..., 1:], x[..., :-1], alpha=coeff, out=y[..., 1:])
            torch.mul(x[..., :1], 1.0 - coeff, out=y[..., :1])
            x = y.mul_(window)
        else:
            x = x * window
        spec = torch.fft.rfft(x, n=n_fft)  # (b, t, win) -> (b, t, n_fft//2 + 1)
        return spectrum_to_log_mel(spec, mel, power, floor)

    return map_frame_chunks(frames, chunk, mel.shape[1])
