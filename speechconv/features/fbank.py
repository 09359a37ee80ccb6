"""Framing, spectra and log-mel energies: the steps both backends share, and the
``torchaudio`` backend's window and filterbank.

Per frame::

    samples (B, S) -> framing pads (and zeros beyond each length) -> frames (B, T, win), a strided view
    -> backend's windowing (here: x Hann; Kaldi's in speechconv.features.kaldi), as float64
    -> real DFT of n_fft samples (zero-padded) -> |X|^2 (or |X|), rounded to float32 -> @ mel (K, F) -> log(max(x, log_floor))

Framings (``FeatureConfig.framing``; counts and positions in :mod:`speechconv.shapes`):

``kaldi``   the window covers samples ``[t*hop, t*hop + win)`` (Kaldi's snip edges).
``center``  frame ``t`` is centred on sample ``t*hop`` exactly as torch.stft/librosa
            with ``center=True`` place it: ``n_fft // 2`` samples of padding in front
            and the window at ``(n_fft - win) // 2`` inside the ``n_fft`` frame, so it
            covers ``[t*hop - 200, t*hop + 200)`` at the defaults
            (:func:`speechconv.shapes.window_lead`).  The signal is padded with
            **zeros** (librosa's ``pad_mode="constant"``), never reflected: in a padded
            batch a shorter utterance is followed by zeros, not by its own reflection,
            so only zero padding gives an utterance the same last frames in a batch and
            alone.

Every frame is computed the same way bit for bit whatever else is in the batch, chunk
or stream: the FFT, the elementwise steps and the row means are the same per row, and
the mel product gets at least :data:`MIN_ROWS` rows.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchaudio.functional as AF

from speechconv import shapes
from speechconv.feature_config import FeatureConfig

DITHER_SCALE = 1.0 / 32768.0
"""``FeatureConfig.dither`` is in int16 units (Kaldi's); [-1, 1] waveforms take it scaled."""

MIN_ROWS = 16
"""Fewest rows the mel product is given (zero rows are appended below it).  torch's CPU
``(N, 257) @ (257, 80)`` rounds a row differently when ``N`` is below about 12 (another
kernel runs), and the same for every ``N`` from 12 on; with at least 16 rows a frame's
energies are the same bits alone, in any batch and in any chunk of a stream."""


SPECTRUM_DTYPE = torch.float64
"""dtype of the DFT's input and output and of the power spectrum.  A float32 DFT of a
loud frame is off by about ``eps * ||frame||`` in every bin, which is 1e-3 to 1e-2 of
the quietest mel bins of speech (the top of a band-limited recording, the lowest bins
after Kaldi's DC removal and pre-emphasis): two float32 DFTs (torch's FFT, onnxruntime's
DFT, a matrix product) differ there by up to 8e-3 in the log domain, and so do frames
windowed with a window rounded to float32.  The frames are therefore windowed and
transformed in float64 (an error of 1e-11 there), so every implementation of the same
steps gives the same log-mel energies to float32 rounding.  What it costs in speed:
``bench/features.py``'s float32-spectrum row."""


def pad_for_framing(waveforms: torch.Tensor, lengths: torch.Tensor, config: FeatureConfig,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """The samples that :func:`frames_of` cuts ``T = frames_from_samples(S)`` frames from.

    ``kaldi`` framing: the waveforms as they are.  ``center`` framing: a copy with
    :func:`speechconv.shapes.window_lead` zeros in front, zeros after the end until the
    last frame's window fits, and every sample at or beyond an utterance's length set to
    zero (whatever the batch was padded with, NaN included, never reaches a frame).
    Dither (``config.dither > 0``) adds
    Gaussian noise to the valid samples, once per sample, so overlapping frames share
    their noise where Kaldi draws new noise for every frame: zero-mean noise of the
    same power either way, and only ``dither=0`` is deterministic.

    Args:
        waveforms: ``(B, S)`` float32.
        lengths: ``(B,)`` valid samples per utterance.
        config: framing, window and hop, dither.
        generator: random source of the dither.

    Returns:
        ``(B, S')``: frame ``t``'s window is samples ``[t*hop, t*hop + win)``.
    """
    B, S = waveforms.shape
    win, hop = config.win_length, config.hop_length
    if config.dither > 0:
        noise = torch.randn(waveforms.shape, generator=generator, dtype=waveforms.dtype, device=waveforms.device)
        waveforms = waveforms + noise * (config.dither * DITHER_SCALE)
    if config.framing == "kaldi":
        # A whole window of an utterance ends within its length: only frames past its
        # frame count read beyond it, and the caller drops those (with torch.where or
        # masked_fill, never a product with 0: the padding may be NaN).
        return waveforms
    lead = shapes.window_lead(win, config.n_fft, config.framing)
    T = shapes.frames_from_samples(S, win, hop, config.framing)
    # exactly the samples of T frames: zeros added after (or, where hop > win - lead, samples cut)
    padded = F.pad(waveforms, (lead, (T - 1) * hop + win - lead - S))  # (B, S) -> (B, (T-1)*hop + win)
    beyond = ~shapes.make_pad_mask(lengths + lead, padded.shape[1])  # (B, S'): after each utterance's end
    return padded.masked_fill_(beyond, 0.0)


def frames_of(padded: torch.Tensor, num_frames: int, win_length: int, hop_length: int) -> torch.Tensor:
    """``(B, S')`` -> ``(B, T, win)``: frame ``t`` is samples ``[t*hop, t*hop + win)``, a strided view."""
    frames = padded.unfold(-1, win_length, hop_length)  # (B, S') -> (B, T', win)
    assert frames.shape[1] >= num_frames, f"{frames.shape[1]} frames cut, {num_frames} expected"
    return frames[:, :num_frames]


def hann_window(win_length: int) -> torch.Tensor:
    """Periodic Hann window ``(win,)`` float64 (torch.stft's and librosa's ``"hann"``):
    the frames are windowed in float64, with no rounding of the window or the products
    (:data:`SPECTRUM_DTYPE`)."""
    return torch.hann_window(win_length, periodic=True, dtype=torch.float64)


def apply_window(frames: torch.Tensor, window: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """``(..., win)`` float32 frames times the ``(win,)`` float64 window, in float64
    (:data:`SPECTRUM_DTYPE`), written into ``out`` (``(..., win)`` float64) or, with
    ``out=None``, a new tensor.  Copied to float64, then multiplied in place: a float32 x
    float64 product into float64 takes 5x as long."""
    wide = frames.to(SPECTRUM_DTYPE, copy=True) if out is None else out.copy_(frames)
    return wide.mul_(window)


def mel_matrix(config: FeatureConfig) -> torch.Tensor:
    """torchaudio's mel filterbank ``(n_fft//2 + 1, F)`` for ``config``'s scale and norm,
    evaluated in float64 and rounded to float32 once.

    ``torchaudio.functional.melscale_fbanks`` evaluates its formula in the default dtype:
    in float32 a weight near a triangle's edge is off by up to 0.7% of itself, which
    moves the quiet bins' log energies by 1e-4 against librosa's filters (float64, then
    rounded); evaluated in float64 the two agree to 1e-6 in the log domain."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # torchaudio's linspaces and arithmetic follow it
    try:
        mel = AF.melscale_fbanks(
            n_freqs=config.n_fft // 2 + 1, f_min=config.f_min, f_max=config.upper_hz, n_mels=config.n_mels,
            sample_rate=config.sample_rate, norm=config.mel_norm, mel_scale=config.mel_scale,
        )
    finally:
        torch.set_default_dtype(previous)
    assert mel.dtype == torch.float64, f"melscale_fbanks gave {mel.dtype}, expected float64"
    return mel.float()


def dft_basis(n_fft: int) -> torch.Tensor:
    """``(n_fft, 2K)`` float64, ``K = n_fft//2 + 1``: the real DFT as a matrix, ``[cos | -sin]``.

    ``frames @ basis`` gives the real and imaginary parts of ``torch.fft.rfft(frames)``
    (up to rounding) with a matrix product alone: a graph without an FFT operator, for
    runtimes that have none (executorch's portable runtime).  The angles are reduced
    exactly (``k*n mod n_fft``) and evaluated in float64.
    """
    k = torch.arange(n_fft // 2 + 1, dtype=torch.int64)
    n = torch.arange(n_fft, dtype=torch.int64)
    angle = ((n[:, None] * k[None, :]) % n_fft).double() * (2 * torch.pi / n_fft)  # (n_fft, K)
    return torch.cat([torch.cos(angle), -torch.sin(angle)], dim=1)


def log_mel(frames: torch.Tensor, n_fft: int, mel: torch.Tensor, power: float, log_floor: float,
            basis: torch.Tensor | None = None) -> torch.Tensor:
    """Windowed frames -> log mel energies.

    The frames are zero-padded to ``n_fft`` at their end (by the DFT; frames already
    ``n_fft`` wide are taken as they are).  Where the window sits inside
    the ``n_fft`` samples (torch.stft centres it for ``center`` framing) only turns each
    DFT bin's phase, so the power spectrum is the same.  The spectrum and its power are
    computed in float64 (:data:`SPECTRUM_DTYPE`), then rounded to float32 for the mel
    product, which is given at least :data:`MIN_ROWS` rows (zero rows appended; not in a
    graph traced for export, whose runtime picks its own kernels).

    Args:
        frames: ``(R, width)`` float64, ``width <= n_fft``: windowed frames, possibly
            followed by zeros.
        n_fft: DFT size.
        mel: ``(n_fft//2 + 1, F)`` filterbank.
        power: 2 (power spectrum) or 1 (magnitude).
        log_floor: ``log(max(x, log_floor))``.
        basis: ``None`` for ``torch.fft.rfft``, or :func:`dft_basis` for the DFT as a
            matrix product (its first ``width`` rows).

    Returns:
        ``(R, F)`` natural-log mel energies.
    """
    rows, width = frames.shape
    K = n_fft // 2 + 1
    if basis is None:
        # (R, K) complex -> (R, K, 2), squared in place
        squares = torch.view_as_real(torch.fft.rfft(frames, n=n_fft)).square_()
        energy = squares[..., 0] + squares[..., 1]  # (R, K)
    else:
        squares = (frames @ basis[:width]).square_()  # (R, 2K): real parts, then imaginary parts
        energy = squares[:, :K] + squares[:, K:]
    if power == 1.0:
        energy = energy.sqrt_()
    energy = energy.to(mel.dtype)
    if not torch.compiler.is_compiling() and rows < MIN_ROWS:  # eager: torch's kernel choice (a graph has its own)
        energy = F.pad(energy, (0, 0, 0, MIN_ROWS - rows))  # (R, K) -> (MIN_ROWS, K)
    return torch.log(torch.clamp_min((energy @ mel)[:rows], log_floor))  # (R', F) -> (R, F)
