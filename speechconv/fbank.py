"""The ``torchaudio`` backend: batched log-mel filterbank energies, plus the shared framing.

One fused pass over a padded batch, no per-utterance loop:

    waveforms (B, S) -> frames (B, T, win) as a strided view (no copy)
    -> x window, written into zero-padded n_fft rows -> rfft
    -> |X|^2 -> @ mel matrix (torchaudio's ``melscale_fbanks``)
    -> log(max(x, log_floor))

On CPU float32 tensors the power spectrum, mel product and floor are one fused kernel
(:func:`speechconv.kernels.power_mel_floor`); the eager ops above are the path for
other devices, held to the same references.

The FFT runs on contiguous ``n_fft`` rows whose zeros beyond the window are written
once per call (:func:`fft_input`), which is 5x faster than ``rfft(x, n=n_fft)`` on
``win``-sample rows.

Framings (``FeatureConfig.framing``; the counts are :func:`speechconv.shapes.frames_from_samples`):

``kaldi``   the window covers samples ``[t*hop, t*hop + win)`` (Kaldi's snip edges).
``center``  frame ``t`` is centred on sample ``t*hop`` exactly as torch.stft/librosa
            with ``center=True`` place it: ``n_fft // 2`` samples of padding in
            front and the window at ``(n_fft - win) // 2`` inside the frame, so it
            covers ``[t*hop - 200, t*hop + 200)`` at the defaults.  The signal is
            padded with **zeros** (librosa's ``pad_mode="constant"``), never
            reflected: in a padded batch a shorter utterance is followed by zeros,
            not by its own reflection, so only zero padding gives an utterance the
            same last frames in a batch and alone.

Long inputs are processed in chunks of at most :data:`CHUNK_FRAMES` frames: the
per-chunk temporaries (frames, spectrum) then stay small enough for glibc's allocator
to reuse them instead of mapping and unmapping tens of megabytes on every op, and an
hour of audio never holds its whole spectrum in memory.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import NamedTuple

import numpy as np
import torch
import torchaudio.functional as AF

from speechconv import kernels, shapes
from speechconv.feature_config import FeatureConfig
from speechconv.workspace import Workspace

CHUNK_FRAMES = 1024
"""Frames per chunk: a 1024 x 512 float32 frame block is 2 MB and its spectrum as much,
so a chunk's temporaries stay in cache (measured: 1024 a few % faster than 512, 2048 slower)."""

DITHER_SCALE = 1.0 / 32768.0
"""``FeatureConfig.dither`` is in int16 units (Kaldi's); [-1, 1] waveforms take it scaled."""


def frame_offset(win_length: int, n_fft: int, framing: str) -> int:
    """Where the window sits inside each ``n_fft`` frame: 0 for ``kaldi``, and
    ``(n_fft - win) // 2`` for ``center`` (torch.stft's placement)."""
    return (n_fft - win_length) // 2 if framing == "center" else 0


def pad_for_framing(waveforms: torch.Tensor, lengths: torch.Tensor, win_length: int, hop_length: int,
                    n_fft: int, framing: str, dither: float = 0.0,
                    generator: torch.Generator | None = None) -> tuple[torch.Tensor, int]:
    """Copy a batch into a zero-padded buffer from which :func:`frames_of` cuts ``T`` frames.

    Frame ``t`` is samples ``[t*hop, t*hop + n_fft)`` of the result, with the window
    at :func:`frame_offset` inside it.  ``center`` puts ``n_fft // 2`` zeros in front
    (frame ``t`` is then centred on input sample ``t*hop``); both framings add zeros
    at the end so that the last frame's columns beyond its window exist.  Samples at
    or beyond each utterance's length are set to zero, so a batch's padding never
    reaches an utterance's frames.  One copy of the waveforms, nothing else.

    Args:
        waveforms: ``(B, S)``.
        lengths: ``(B,)`` valid samples per utterance.
        win_length, hop_length, n_fft: samples.
        framing: ``kaldi`` or ``center``.
        dither: standard deviation of Gaussian noise added to the valid samples (0: none).
            Each sample is dithered once, so overlapping frames share their noise,
            where Kaldi draws new noise for every frame; both are zero-mean noise of
            the same power, and only ``dither=0`` is deterministic.
        generator: random source of the dither.

    Returns:
        ``(padded (B, S'), T)`` with ``T = frames_from_samples(S)``.
    """
    B, S = waveforms.shape
    T = shapes.frames_from_samples(S, win_length, hop_length, framing)
    left = n_fft // 2 if framing == "center" else 0
    right = max((T - 1) * hop_length + n_fft - left - S, 0) if T else 0
    padded = waveforms.new_empty(B, left + S + right)
    padded[:, :left] = 0.0
    body = padded[:, left : left + S]
    body.copy_(waveforms)
    if dither > 0:
        noise = torch.randn(body.shape, generator=generator, dtype=body.dtype, device=body.device)
        body.add_(noise, alpha=dither)
    for b in (lengths < S).nonzero().view(-1).tolist():
        padded[b, left + int(lengths[b]) :] = 0.0
    padded[:, left + S :] = 0.0
    return padded, T


def frames_of(padded: torch.Tensor, num_frames: int, hop_length: int, n_fft: int) -> torch.Tensor:
    """``(B, S')`` -> ``(B, T, n_fft)`` overlapping frames as a strided view (no copy)."""
    if num_frames == 0:
        return padded.new_zeros(padded.shape[0], 0, n_fft)
    frames = padded.unfold(-1, n_fft, hop_length)  # (B, S') -> (B, T', n_fft)
    assert frames.shape[1] >= num_frames, f"{frames.shape[1]} frames cut, {num_frames} expected"
    return frames[:, :num_frames]


def window_frames(waveforms: torch.Tensor, lengths: torch.Tensor, win_length: int, hop_length: int, n_fft: int,
                  framing: str, dither: float = 0.0,
                  generator: torch.Generator | None = None) -> tuple[torch.Tensor, int]:
    """The samples under each frame's window, ``(B, S) -> (B, T, win)``, a strided view.

    ``kaldi`` framing without dither reads ``waveforms`` in place, no copy: a snip-edges
    frame of an utterance ends within its length, so the batch's padding is read only
    by frames past the utterance's frame count, whose values the caller never uses
    (they are overwritten, or dropped with ``torch.where``, never multiplied by 0, as
    the padding may be anything).  ``center`` framing needs zeros around each utterance
    and dither adds noise, so those cut the frames from :func:`pad_for_framing`'s copy.

    Args:
        waveforms: ``(B, S)``.
        lengths: ``(B,)`` valid samples per utterance.
        win_length, hop_length, n_fft: samples.
        framing: ``kaldi`` or ``center``.
        dither, generator: as :func:`pad_for_framing`.

    Returns:
        ``(frames (B, T, win), T)`` with ``T = frames_from_samples(S)``.
    """
    if framing == "kaldi" and dither == 0:
        T = shapes.frames_from_samples(waveforms.shape[1], win_length, hop_length, framing)
        return frames_of(waveforms, T, hop_length, win_length), T
    padded, T = pad_for_framing(waveforms, lengths, win_length, hop_length, n_fft, framing, dither, generator)
    offset = frame_offset(win_length, n_fft, framing)
    return frames_of(padded, T, hop_length, n_fft)[..., offset : offset + win_length], T


def fft_input(shape: tuple[int, int], n_fft: int, offset: int, win_length: int, like: torch.Tensor,
              workspace: Workspace) -> torch.Tensor:
    """A ``(b, t, n_fft)`` work buffer for the chunks' FFT input: zero outside the window's
    columns ``[offset, offset + win)``, which each chunk fills.

    The zeros are written once per call, and the FFT runs on contiguous ``n_fft`` rows
    (5x faster than ``rfft(x, n=n_fft)`` on ``win``-sample rows, which copies each row
    into a padded buffer first).  The memory comes from ``workspace``.
    """
    buffer = workspace.take("fft_input", (*shape, n_fft), like)  # (b, t, n_fft)
    buffer[..., :offset] = 0.0
    buffer[..., offset + win_length :] = 0.0
    return buffer


def chunk_shape(B: int, T: int, chunk_frames: int = CHUNK_FRAMES) -> tuple[int, int]:
    """``(b, t)`` of the largest chunk :func:`map_frame_chunks` cuts from ``(B, T)`` frames:
    whole utterances, as many as fit in ``chunk_frames``, or runs of at most
    ``chunk_frames`` frames of one utterance when a single one does not fit."""
    rows = max(1, chunk_frames // max(T, 1))
    return min(rows, B), (T if rows > 1 else min(chunk_frames, T))


def map_frame_chunks(frames: tuple[torch.Tensor, ...], fn: Callable[..., None], n_out: int,
                     out: torch.Tensor | None = None, chunk_frames: int = CHUNK_FRAMES,
                     scratch: tuple[torch.Tensor, ...] = ()) -> torch.Tensor:
    """Apply ``fn`` to matching chunks of frame-aligned tensors, writing into ``out``.

    Args:
        frames: tensors ``(B, T, ...)`` sliced alike (frames, per-frame statistics).
        fn: ``fn(out_chunk (b, t, n_out), *chunks (b, t, ...), *scratch_chunks (b, t, ...))``
            fills ``out_chunk``; independent per frame.
        n_out: last dimension of the output.
        out: optional ``(B, T, n_out)`` destination (may be a strided view).
        chunk_frames: at most this many frames ``b * t`` per call (:func:`chunk_shape`).
        scratch: work buffers ``(b, t, ...)`` of the largest chunk's shape, allocated once
            by the caller and handed to every call as views of the chunk's shape
            (contiguous: a chunk is a prefix of the largest one).

    Returns:
        ``out`` (allocated when not given).
    """
    B, T = frames[0].shape[:2]
    out = frames[0].new_empty(B, T, n_out) if out is None else out
    if B * T == 0:  # the FFT libraries reject empty input
        return out
    rows, t_step = chunk_shape(B, T, chunk_frames)
    assert all(s.shape[:2] == (rows, t_step) for s in scratch), f"scratch must be ({rows}, {t_step}, ...)"
    for b0 in range(0, B, rows):
        for t0 in range(0, T, t_step):
            chunk = tuple(f[b0 : b0 + rows, t0 : t0 + t_step] for f in (out, *frames))
            b, t = chunk[0].shape[:2]
            fn(*chunk, *(s[:b, :t] for s in scratch))
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


MelBlocks = tuple[tuple[int, int, int, int], ...]
"""Row and column ranges ``(bin_lo, bin_hi, band_lo, band_hi)`` of a mel matrix's nonzero blocks."""

BLOCK_COST = 500
"""Estimated cost of one extra matmul call, in multiply-adds per frame (sets how many
blocks pay off).  Measured on 894- and 1024-frame chunks, both backends' filterbanks,
at 1 thread: six blocks (cost 500) 150-165 ns per frame, four (cost 1500) 170-185;
eight to ten blocks were no faster than six."""


def band_rows(mel: torch.Tensor) -> list[tuple[int, int]]:
    """``[lo, hi)``, the rows (FFT bins) from each band's first to its last nonzero weight,
    for the ``F`` columns of a ``(K, F)`` mel matrix (``(0, 0)`` for an empty band)."""
    nonzero = mel != 0
    rows = []
    for band in range(mel.shape[1]):
        bins = nonzero[:, band].nonzero().view(-1)
        rows.append((int(bins[0]), int(bins[-1]) + 1) if bins.numel() else (0, 0))
    return rows


def mel_bands(mel: torch.Tensor) -> kernels.MelBands:
    """``(K, F)`` mel matrix -> the :class:`speechconv.kernels.MelBands` the CPU kernel
    sums (each band's weights over :func:`band_rows`, zeros inside the range kept)."""
    rows = band_rows(mel)
    sizes = [hi - lo for lo, hi in rows]
    weights = [mel[lo:hi, f].detach().cpu().float().numpy() for f, (lo, hi) in enumerate(rows)]
    lo, hi = (np.asarray(edge, dtype=np.int64) for edge in zip(*rows, strict=True))
    start = np.cumsum([0, *sizes[:-1]], dtype=np.int64)
    return kernels.MelBands(lo, hi, start, np.concatenate(weights).astype(np.float32))


def mel_blocks(mel: torch.Tensor, max_blocks: int = 6) -> MelBlocks:
    """Split a mel matrix ``(K, F)`` into column blocks of consecutive bands, each with
    the rows (FFT bins) its bands touch.

    Each bin feeds at most two neighbouring bands, so the matrix is mostly zeros: a
    dense ``(t, K) @ (K, F)`` does ``K F`` multiply-adds per frame (20,560 at the
    defaults), while six blocks do 3,227 (four: 4,753) and measure 2.5x faster.
    The split points minimise ``sum(rows * bands) + BLOCK_COST * blocks`` by dynamic
    programming over the band boundaries.  Products over the blocks equal the dense
    product up to float rounding (the zeros they skip add nothing).
    """
    F = mel.shape[1]
    first, last = (list(edge) for edge in zip(*band_rows(mel), strict=True))

    def span(a: int, b: int) -> tuple[int, int]:
        lo, hi = min(first[a:b]), max(last[a:b])
        return lo, max(hi, lo)

    # best[g][b]: cheapest cover of bands [0, b) with g blocks; choice[g][b] = start of the last block
    inf = float("inf")
    best = [[inf] * (F + 1) for _ in range(max_blocks + 1)]
    choice = [[0] * (F + 1) for _ in range(max_blocks + 1)]
    best[0][0] = 0.0
    for g in range(1, max_blocks + 1):
        for b in range(1, F + 1):
            for a in range(g - 1, b):
                if best[g - 1][a] == inf:
                    continue
                lo, hi = span(a, b)
                cost = best[g - 1][a] + (hi - lo) * (b - a) + BLOCK_COST
                if cost < best[g][b]:
                    best[g][b], choice[g][b] = cost, a
    g = min(range(1, max_blocks + 1), key=lambda n: best[n][F])
    blocks, b = [], F
    while g:
        a = choice[g][b]
        blocks.append((*span(a, b), a, b))
        b, g = a, g - 1
    return tuple(reversed(blocks))


class MelPlan(NamedTuple):
    """How a mel matrix is applied: :func:`mel_blocks` for the eager block products, and
    its :class:`speechconv.kernels.MelBands` for the CPU kernel."""

    blocks: MelBlocks
    bands: kernels.MelBands


def mel_plan(mel: torch.Tensor) -> MelPlan:
    """Both sparse forms of a ``(K, F)`` mel matrix, made once per module."""
    return MelPlan(mel_blocks(mel), mel_bands(mel))


ROW_PAD = 16
"""Extra floats at the end of each row of :func:`apply_mel`'s ``(F, rows)`` buffer.  At
1024 frames a row is exactly 4 KB, and rows 4 KB apart share cache sets: the blocks'
writes and the transposing copy then miss the cache (measured on 60 s utterances, whose
chunks are 1024 frames: 3-5% slower than the untransposed product without the pad, 3%
faster with it)."""


def apply_mel(energy: torch.Tensor, mel: torch.Tensor, blocks: MelBlocks | None = None,
              out: torch.Tensor | None = None) -> torch.Tensor:
    """Mel energies ``(b, t, K) @ (K, F) -> (b, t, F)``, by blocks when given (:func:`mel_blocks`).

    The blocks are written into a column-major ``(b*t, F)`` buffer (a transposed view
    of ``(F, b*t)``) and copied into ``out``: MKL then computes each narrow block
    (9-21 bands) as ``mel_block^T @ energy_block^T`` with the frames as the long output
    rows, 1.6x faster than into ``(b*t, bands)`` row-major outputs, which pays for the
    copy (measured with four blocks of 14-28 bands; whole pipeline at 1 thread, two
    interleaved A/B runs over 3, 10 and 60 s utterances and both backends: 3-9% faster
    in 11 of the 12 cells, the same values bit for bit).  ``torch.mm`` takes the
    column-major view as ``out`` directly, with fewer view calls per block than
    transposing each operand.  ``out`` (may be a strided view) receives the products;
    without it a new tensor is returned.
    """
    flat = energy.reshape(-1, energy.shape[-1])  # (b, t, K) -> (b*t, K), a view of the contiguous energy
    shape = (*energy.shape[:-1], mel.shape[1])
    out = flat.new_empty(shape) if out is None else out
    if blocks is None:
        try:
            torch.mm(flat, mel, out=out.view(-1, mel.shape[1]))  # (b*t, F), when out's rows are adjacent
        except RuntimeError:
            out.copy_(torch.mm(flat, mel).view(shape))  # rows of a padded batch: compute aside, copy
        return out
    rows = flat.shape[0]
    columns = flat.new_empty(mel.shape[1], rows + ROW_PAD).t()[:rows]  # (b*t, F), column-major, ROW_PAD apart
    with one_blas_thread(flat.device):
        for lo, hi, a, b in blocks:
            torch.mm(flat[:, lo:hi], mel[lo:hi, a:b], out=columns[:, a:b])
    out.copy_(columns.view(shape))  # (b*t, F) -> (b, t, F)
    return out


@contextlib.contextmanager
def one_blas_thread(device: torch.device) -> Iterator[None]:
    """Run the enclosed CPU matmuls on one thread.

    MKL splits even these narrow blocks (9-21 bands x 1,000 frames) over every intra-op
    thread, and on 2 threads they took 286 ns per frame against 156 on one (measured on
    998-frame chunks; the FFT and the elementwise passes do gain from the second thread).
    One thread also makes the sums, and so the features, the same bit for bit at any
    thread count (MKL's split changed them by up to 2e-6).  ``torch.set_num_threads`` is
    the only switch torch offers, so it is set to 1 and back: cheap (159 ns per frame
    with the switch), but for that moment it is process-wide for MKL, so a matmul run
    by another thread at the same time also gets one thread.
    """
    threads = torch.get_num_threads()
    if device.type != "cpu" or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def spectrum_to_log_mel(spec: torch.Tensor, mel: torch.Tensor, power: float, log_floor: float,
                        plan: MelPlan | None, out: torch.Tensor) -> torch.Tensor:
    """Complex spectrum ``(b, t, n_fft//2+1)`` -> log mel energies written into ``out`` ``(b, t, F)``.

    On CPU float32 tensors with a ``plan``, one kernel makes the power spectrum, the mel
    product and the floor (:func:`speechconv.kernels.power_mel_floor`).  Otherwise
    ``spec`` is overwritten (the callers' temporary): the power is squared in place on
    the contiguous ``view_as_real`` and the two halves added, measured 1.35x faster than
    ``re*re + im*im`` on the strided real and imaginary views, no square root as
    ``abs()**2`` would take, and squaring in place rather than into a new tensor made
    the whole pipeline 2-4% faster at 1 thread (interleaved A/B, same values bit for bit).
    """
    if plan is not None and kernels.usable(spec, out):
        kernels.power_mel_floor(spec, plan.bands, power, log_floor, out)
        return out.log_()
    squares = torch.view_as_real(spec).square_()  # (b, t, K) complex -> (b, t, K, 2), in place
    energy = torch.add(squares[..., 0], squares[..., 1])  # (b, t, K)
    if power == 1.0:
        energy = energy.sqrt_()
    blocks = plan.blocks if plan is not None else None
    return apply_mel(energy, mel, blocks, out).clamp_min_(log_floor).log_()


def log_mel(waveforms: torch.Tensor, lengths: torch.Tensor, config: FeatureConfig, window: torch.Tensor,
            mel: torch.Tensor, plan: MelPlan | None = None, generator: torch.Generator | None = None,
            out: torch.Tensor | None = None, workspace: Workspace | None = None) -> torch.Tensor:
    """Log-mel filterbank energies of a padded batch (the ``torchaudio`` backend).

    Args:
        waveforms: ``(B, S)`` float32 in [-1, 1].
        lengths: ``(B,)`` valid samples per utterance (no valid frame reads past them).
        config: framing, FFT size, power, log floor, dither.
        window: ``(win,)`` analysis window (:func:`hann_window`).
        mel: ``(n_fft//2 + 1, F)`` filterbank (:func:`mel_matrix`).
        plan: :func:`mel_plan` of ``mel`` (``None``: one dense matmul, no kernel).
        generator: random source of the dither (only used when ``config.dither > 0``).
        out: optional ``(B, T, F)`` destination (may be a strided view).
        workspace: where the work buffers are kept between calls (``None``: fresh ones).

    Returns:
        ``(B, T, F)`` natural-log energies, ``T = frames_from_samples(S)``; frames past an
        utterance's own frame count are unspecified (the caller zeroes them).
    """
    win, hop, n_fft = config.win_length, config.hop_length, config.n_fft
    frames, T = window_frames(waveforms, lengths, win, hop, n_fft, config.framing, config.dither * DITHER_SCALE,
                              generator)
    power, floor = config.power, config.log_floor
    offset = frame_offset(win, n_fft, config.framing)
    shape = chunk_shape(waveforms.shape[0], T, CHUNK_FRAMES)
    windowed = fft_input(shape, n_fft, offset, win, waveforms, workspace or Workspace())  # (b, t, n_fft), per chunk

    def chunk(dest: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> None:
        torch.mul(x, window, out=y[..., offset : offset + win])  # (b, t, win) into (b, t, n_fft)
        spec = torch.fft.rfft(y)  # (b, t, n_fft) -> (b, t, n_fft//2 + 1)
        spectrum_to_log_mel(spec, mel, power, floor, plan, dest)

    return map_frame_chunks((frames,), chunk, mel.shape[1], out, CHUNK_FRAMES, scratch=(windowed,))
