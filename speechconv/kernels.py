"""Fused CPU kernels for the feature stage's per-frame passes.

Eager PyTorch ops make one pass over a chunk's frames per step.  Two groups of steps
are fused here, each into one pass per frame:

* :func:`kaldi_window_frames`: Kaldi's DC removal, pre-emphasis and window (the
  ``kaldi`` backend's steps 3-5, five eager passes);
* :func:`power_mel_floor`: power (or magnitude) spectrum, mel product and log floor
  (both backends; three eager passes and six block products).

Each runs as a C++ ATen op where :mod:`speechconv.native` could build them (split over
torch's intra-op threads), else as a serial numba kernel; the two give the same bits
(``tests/test_native.py``).

Measured alone on one 3,992-frame chunk, one thread: 95 against 141 ns a frame for
the first, 186-205 against 292 for the second (numba against eager).  The C++ ops on a
998-frame chunk: 48 and 144 ns at one thread, 26 and 77 at two.  The whole backend, in
the feature benchmark's setting: ``bench/kernels.py`` and the README.

When they run (:func:`usable`): on CPU float32 tensors, unless the environment sets
``SPEECHCONV_KERNELS=0`` (or :data:`ENABLED` is set to ``False``); on other devices the
eager ops run.  Both paths are held to the same parity bounds against librosa and
kaldi-native-fbank, and to each other (``tests/test_kernels.py``).  Their values
differ by float32 rounding only: the kernels sum a frame's mean and each mel band in
their own order.

The numba kernels are serial and release the GIL: no numba thread pool is started.  Its
OpenMP layer would load the system's libgomp beside torch's own, two pools whose idle
workers spin against each other on a small machine (``parallel=True`` was no faster
here at 2 threads), and GNU OpenMP is not fork-safe for DataLoader workers.  Python
threads calling the feature module run the kernels side by side, and at 2 threads the
FFT and the log still use both cores.  numba compiles each kernel on first use (about
4 s for both) and caches it on disk (``cache=True``: in ``__pycache__`` beside this
file, or numba's user cache directory where that is read-only; 0.4 s to load).
"""

from __future__ import annotations

import os
from typing import NamedTuple

import numba
import numpy as np
import torch

from speechconv import native

ENABLED = os.environ.get("SPEECHCONV_KERNELS", "1") != "0"
"""Use the kernels where :func:`usable` allows (``SPEECHCONV_KERNELS=0`` turns them off)."""

MEL_FRAMES = 16
"""Frames whose power spectra :func:`power_mel_floor` holds at once: each mel weight then
multiplies 16 frames in a loop LLVM vectorises (one frame at a time: 486 ns a frame,
against 195)."""


def usable(*tensors: torch.Tensor) -> bool:
    """Whether the kernels may compute on ``tensors``: CPU, float32 (or complex64), nothing
    requiring grad (the kernels write through numpy views, which autograd cannot follow)."""
    if not ENABLED:
        return False
    grad = torch.is_grad_enabled()
    return all(t.device.type == "cpu" and t.dtype in (torch.float32, torch.complex64)
               and not (grad and t.requires_grad) for t in tensors)


class MelBands(NamedTuple):
    """A mel matrix's nonzero weights by band: band ``f`` sums bins ``lo[f] .. hi[f]-1``
    with weights ``weights[start[f] : start[f] + hi[f] - lo[f]]`` (int64 / float32 arrays;
    made by :func:`speechconv.fbank.mel_bands`)."""

    lo: np.ndarray
    hi: np.ndarray
    start: np.ndarray
    weights: np.ndarray


def kaldi_window_frames(frames: torch.Tensor, window: torch.Tensor, preemphasis: float, remove_dc: bool,
                        out: torch.Tensor, offset: int) -> None:
    """Kaldi's steps 3-5 (:mod:`speechconv.kaldi_fbank`) of every frame, one pass each.

    Per frame: the mean (:func:`_float32_sum`), ``z_i = x_i - mean``, pre-emphasis
    ``z_i - c z_{i-1}`` (``z_0 - c z_0`` first), times the window; each element rounded
    in Kaldi's order, as the eager passes round it.

    Args:
        frames: ``(b, t, win)`` float32 view of rows of contiguous samples (stride 1 along
            ``win``, e.g. cut by :func:`speechconv.fbank.window_frames`).
        window: ``(win,)`` float32 (the int16 scale included).
        preemphasis: ``c``.
        remove_dc: subtract each frame's mean first.
        out: ``(b, t, n_fft)`` contiguous float32; ``[..., offset : offset + win]`` is written.
        offset: where the window sits in each ``n_fft`` row.
    """
    ops = native.ops()
    if ops is not None:
        ops.kaldi_window_frames(frames, window, preemphasis, remove_dc, out, offset)
        return
    b, t, win = frames.shape
    assert frames.stride(-1) == 1, f"frames must be rows of contiguous samples, got strides {frames.stride()}"
    assert out.is_contiguous() and out.shape[:2] == (b, t), f"out {tuple(out.shape)} must be a contiguous ({b}, {t}, n_fft)"
    span = frames.untyped_storage().nbytes() // frames.element_size()
    storage = frames.as_strided((span,), (1,), 0).numpy()  # every sample the frames could read, (N,)
    _kaldi_window_frames(storage, frames.stride(0), frames.storage_offset(), frames.stride(1), b, t, win,
                         window.numpy(), np.float32(preemphasis), remove_dc, out.view(b * t, -1).numpy(), offset)


def power_mel_floor(spec: torch.Tensor, bands: MelBands, power: float, floor: float, out: torch.Tensor) -> None:
    """``max(|X|^power @ mel, floor)`` of every frame, written into ``out``.

    Args:
        spec: ``(b, t, K)`` complex64 contiguous spectra.
        bands: :func:`speechconv.fbank.mel_bands` of the ``(K, F)`` mel matrix.
        power: 2 (power spectrum) or 1 (magnitude).
        floor: the log floor.
        out: ``(b, t, F)`` float32 (may be a strided view with unit stride along ``F``).
    """
    assert power in (1.0, 2.0), f"power must be 1 or 2, got {power}"
    ops = native.ops()
    if ops is not None:
        ops.power_mel_floor(spec, *(torch.from_numpy(a) for a in bands), power == 1.0, floor, out)
        return
    b, t, K = spec.shape
    assert spec.is_contiguous(), f"spec must be contiguous, got strides {spec.stride()}"
    parts = torch.view_as_real(spec).view(b * t, K, 2)  # (b, t, K) complex -> (b*t, K, 2)
    _power_mel_floor(parts.numpy(), bands.lo, bands.hi, bands.start, bands.weights, power == 1.0,
                     np.float32(floor), out.numpy())


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _kaldi_window_frames(storage, row_stride, first, hop, b, t, win, window, c, remove_dc, out, offset):
    """Frame ``(i, j)`` is ``storage[first + i*row_stride + j*hop :][:win]``; row ``i*t + j`` of ``out``."""
    for r in range(b * t):
        begin = first + (r // t) * row_stride + (r % t) * hop
        x = storage[begin : begin + win]
        y = out[r][offset : offset + win]  # a slice: indexing out[r] at offset + k checks for negative indices
        mean = np.float32(0.0)
        if remove_dc:
            mean = _float32_sum(x) / np.float32(win)
        z0 = x[0] - mean
        y[0] = (z0 - c * z0) * window[0]
        for k in range(1, win):
            y[k] = ((x[k] - mean) - c * (x[k - 1] - mean)) * window[k]


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _power_mel_floor(parts, lo, hi, start, weights, magnitude, floor, out):
    """``parts`` ``(n, K, 2)`` real and imaginary parts; ``out`` ``(b, t, F)``, ``n = b*t``."""
    b, t, F = out.shape
    n, K = b * t, parts.shape[1]
    energy = np.zeros((K, MEL_FRAMES), np.float32)  # (K, frames): a weight meets 16 frames at once
    mel = np.empty((F, MEL_FRAMES), np.float32)
    for r0 in range(0, n, MEL_FRAMES):
        m = min(MEL_FRAMES, n - r0)
        for j in range(m):
            for k in range(K):
                re, im = parts[r0 + j, k, 0], parts[r0 + j, k, 1]
                energy[k, j] = re * re + im * im
        if magnitude:
            energy[:] = np.sqrt(energy)
        for f in range(F):
            acc = mel[f]
            acc[:] = 0.0
            base = start[f] - lo[f]
            for k in range(lo[f], hi[f]):
                w = weights[base + k]
                for j in range(MEL_FRAMES):
                    acc[j] += energy[k, j] * w
        for j in range(m):
            row = out[(r0 + j) // t, (r0 + j) % t]  # (F,)
            for f in range(F):
                row[f] = max(mel[f, j], floor)


@numba.njit(cache=True, nogil=True, error_model="numpy")
def _float32_sum(x):
    """Sum of ``x`` (float32) in two levels, as torch's cascade sum does: eight lanes over
    blocks of 64 elements, each block's lanes added as a tree, then the block sums.  A
    frame's mean is then as accurate as torch's (one level of eight lanes over all 400
    samples moved the lowest band of a frame with a large DC offset by 3e-3 in the log,
    and float64 lanes cost 40 ns a frame)."""
    n = x.shape[0]
    whole = n - n % 64
    total = np.float32(0.0)
    for b in range(0, whole, 64):
        a0 = a1 = a2 = a3 = a4 = a5 = a6 = a7 = np.float32(0.0)
        for k in range(b, b + 64, 8):
            a0 += x[k]
            a1 += x[k + 1]
            a2 += x[k + 2]
            a3 += x[k + 3]
            a4 += x[k + 4]
            a5 += x[k + 5]
            a6 += x[k + 6]
            a7 += x[k + 7]
        total += ((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7))
    rest = np.float32(0.0)
    for k in range(whole, n):
        rest += x[k]
    return total + rest
