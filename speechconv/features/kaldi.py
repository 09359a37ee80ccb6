"""The ``kaldi`` backend: Kaldi's ``compute-fbank-feats``, batched.

Per frame, in Kaldi's order (``FeatureWindowFunction`` / ``ProcessWindow`` in
feature-window.cc, and kaldi-native-fbank, which the tests compare against):

1. int16 scale: [-1, 1] waveforms are multiplied by 32768, because Kaldi reads WAV
   samples as int16 values (``FeatureConfig.kaldi_int16_scale``).  With the power
   spectrum this adds ``2 ln 32768 = 20.79`` to every log energy above the floor.
   The product is taken with the window in step 5: a power of two commutes exactly
   with steps 2-5, so the samples are never copied to be scaled.
2. dither (off by default: ``dither=0`` keeps features deterministic),
3. DC removal: subtract the frame's mean (summed in float64, rounded to float32),
4. pre-emphasis within the frame: ``x[i] -= 0.97 x[i-1]`` for ``i >= 1`` and
   ``x[0] -= 0.97 x[0]`` (Kaldi's rule for the first sample), each product rounded
   before its difference as Kaldi rounds them,
5. window (in float64: the DFT's input, :data:`speechconv.features.fbank.SPECTRUM_DTYPE`): ``povey`` = ``(0.5 - 0.5 cos(2 pi i / (N-1)))^0.85`` (or Kaldi's symmetric
   ``hann``/``hamming``),
6. zero-pad to ``n_fft`` (Kaldi rounds 400 up to 512), real FFT, power spectrum,
7. Kaldi's mel banks (:func:`kaldi_mel_banks`), then ``log(max(x, FLT_EPSILON))``.

Steps 1-5 are here (:func:`kaldi_windowed`); 6-7 are :func:`speechconv.features.fbank.log_mel`.

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

from speechconv.features import fbank

INT16_SCALE = 32768.0
"""Kaldi's waveform scale: a [-1, 1] float sample times 32768 is its int16 value."""


def kaldi_window(name: str, win_length: int, int16_scale: bool = False) -> torch.Tensor:
    """Kaldi's window functions ``(win,)`` float64, times :data:`INT16_SCALE` with
    ``int16_scale`` (step 1 of the module docstring).  Float64, where Kaldi's are float32:
    the product with it is the float64 frame the DFT takes
    (:data:`speechconv.features.fbank.SPECTRUM_DTYPE`)."""
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
    # A power of two: scaling commutes exactly with every step before the window.
    assert math.frexp(INT16_SCALE)[0] == 0.5, "the int16 scale must be a power of two"
    return w * (INT16_SCALE if int16_scale else 1.0)


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
    mel_low = kaldi_mel(torch.tensor(low_freq, dtype=torch.float64))
    mel_high = kaldi_mel(torch.tensor(high_freq, dtype=torch.float64))
    delta = (mel_high - mel_low) / (n_mels + 1)
    m = torch.arange(n_mels, dtype=torch.float64)[None, :]
    left, centre, right = mel_low + m * delta, mel_low + (m + 1) * delta, mel_low + (m + 2) * delta
    mel = kaldi_mel(torch.arange(n_fft // 2, dtype=torch.float64) * (sample_rate / n_fft))[:, None]
    up, down = (mel - left) / (centre - left), (right - mel) / (right - centre)
    weights = torch.where(mel <= centre, up, down)
    weights = torch.where((mel > left) & (mel < right), weights, torch.zeros_like(weights))
    return torch.cat([weights, weights.new_zeros(1, n_mels)]).float()  # (n_fft/2, F) + Nyquist row


def kaldi_windowed(frames: torch.Tensor, window: torch.Tensor, preemphasis: float, remove_dc: bool,
                   out: torch.Tensor | None) -> torch.Tensor:
    """Kaldi's steps 3-5 of every frame, in Kaldi's order: 3 and 4 in float32, the window
    in float64.

    The products and differences are separate operations (no fused multiply-add), so
    the rounding follows Kaldi's up to the window, and a frame gives the same bits
    wherever it stands.

    Args:
        frames: ``(B, T, win)`` samples (a strided view is fine).
        window: ``(win,)`` from :func:`kaldi_window` (the int16 scale included).
        preemphasis: ``c`` of ``x[i] - c x[i-1]``.
        remove_dc: subtract each frame's mean first.
        out: ``(B, T, win)`` where the windowed frames are written
            (float64: :func:`speechconv.features.fbank.log_mel` takes it), or ``None``
            for a new tensor.

    Returns:
        ``out``, or the new ``(B, T, win)`` float64 tensor.
    """
    if remove_dc:
        # The mean summed in float64 and rounded once: a float32 sum's rounding depends on
        # its order (torch's and onnxruntime's differ), and pre-emphasis turns a DC offset's
        # last bit into 1e-3 of the lowest bins' energy.  Summed from a float64 copy in
        # ``out`` (3x faster than summing the strided float32 frames with dtype=float64);
        # without ``out`` (a traced graph) with dtype=float64: executorch's sum of a
        # float64 tensor is off by a float32 sum's error (measured).
        if out is None:
            total = frames.sum(-1, keepdim=True, dtype=torch.float64)  # (B, T, 1)
        else:
            total = out.copy_(frames).sum(-1, keepdim=True)  # (B, T, 1)
        mean = total.div_(frames.shape[-1]).to(frames.dtype)  # (B, T, 1)
        x = frames - mean  # (B, T, win)
    else:
        x = frames
    if preemphasis:
        previous = torch.cat([x[..., :1], x[..., :-1]], dim=-1)  # x[i-1], and x[0] at 0: a new (B, T, win)
        x = previous.mul_(-preemphasis).add_(x)  # -(c x[i-1]) + x[i] rounds as x[i] - c x[i-1]
    return fbank.apply_window(x, window, out)  # float32 -> float64, then the window
