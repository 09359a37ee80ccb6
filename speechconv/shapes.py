"""Axis vocabulary and every piece of length arithmetic in speechconv.

Axis letters, used in every docstring and shape comment of the package:

    B  batch                  S  samples (waveform)
    T  frames (time)          F  frequency (mel bins, or their subsampled rows)
    C  channels               D  model dimension (flattened F * C, or a projection)

Fixed layouts at the boundaries:

    waveforms          (B, S)       float32 in [-1, 1]
    features           (B, T, F, C) the paper's T x 80 x 3 layout
    inside the convs   (B, C, T, F)
    encoder output     (B, T', F', C') or flattened (B, T', D)

Lengths always travel with padded tensors as int64 ``(B,)`` tensors. Every module,
mask, the shape inspector and the tests compute lengths with the functions below and
nowhere else.

Conventions for one 1-D convolution along an axis of length ``L`` with kernel ``k``,
stride ``s`` and dilation 1 (the encoder never dilates):

``valid``    no padding.  The last output ``j`` must satisfy ``j*s + k - 1 <= L - 1``,
             so ``L_out = (L - k) // s + 1`` when ``L >= k`` and 0 otherwise.
``same``     TensorFlow's SAME: ``L_out = ceil(L / s)``.  The total padding is whatever
             makes that true, ``P = max((L_out - 1)*s + k - L, 0)``, split as
             ``P // 2`` before and the rest after.  Writing ``L = q*s + r``:
             ``P = k - s`` if ``r == 0`` else ``k - r`` (clamped at 0), so the padding
             before depends on ``L mod s``.  The encoder therefore pads each utterance
             by its own length, never by the padded batch length, so that an utterance
             gives the same frames alone and in a batch.
``int p``    ``p`` zeros on both sides: ``L_out = (L + 2p - k) // s + 1`` when
             ``L + 2p >= k`` and 0 otherwise.
``causal``   ``k - 1`` zeros before, none after: ``L_out = (L - 1) // s + 1 = ceil(L / s)``,
             the length of ``same``, and output ``j`` reads inputs ``j*s - k + 1 .. j*s``:
             no look-ahead.

``valid``, ``int p`` and ``causal`` put the same padding before every utterance (fixed
alignment): the first output frame sits where the first input frame does, whatever
the length, which is what a stream needs (:mod:`speechconv.encoder_stream`).
``same`` does not.

Empty input gives empty output in every mode (padding alone makes no frames).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

Padding = str | int
"""One axis' padding: ``"same"``, ``"valid"`` or a non-negative int of zeros per side."""

FRAMINGS = ("kaldi", "center")


# --------------------------------------------------------------------------- frames


def frames_from_samples(num_samples: int, win_length: int, hop_length: int, framing: str = "kaldi") -> int:
    """Number of feature frames ``T`` for ``S = num_samples`` samples.

    ``kaldi`` (Kaldi's ``--snip-edges=true``): frame ``t`` covers samples
    ``[t*hop, t*hop + win)`` and only whole frames count, so
    ``T = 1 + (S - win) // hop`` when ``S >= win``, else 0.  Audio shorter than one
    window gives zero frames (the documented policy; the encoder then rejects it).

    ``center`` (torch.stft / librosa ``center=True``): frame ``t`` is centred on sample
    ``t*hop`` with zero padding of ``n_fft // 2`` on both sides, so
    ``T = 1 + S // hop`` for ``S >= 1``, and 0 for empty audio.
    """
    if num_samples < 0 or win_length <= 0 or hop_length <= 0:
        raise ValueError(
            f"frames_from_samples needs num_samples >= 0 and positive win/hop; "
            f"got S={num_samples}, win={win_length}, hop={hop_length}"
        )
    if framing == "kaldi":
        return 0 if num_samples < win_length else 1 + (num_samples - win_length) // hop_length
    if framing == "center":
        return 0 if num_samples == 0 else 1 + num_samples // hop_length
    raise ValueError(f"framing must be one of {FRAMINGS}, got {framing!r}")


def frames_from_samples_tensor(
    num_samples: torch.Tensor, win_length: int, hop_length: int, framing: str = "kaldi"
) -> torch.Tensor:
    """Batched :func:`frames_from_samples`: ``(B,)`` int samples -> ``(B,)`` int64 frames."""
    s = num_samples.to(torch.int64)
    if framing == "kaldi":  # 1 + (S - win) // hop = (S - win + hop) // hop, negative (then 0) below one window
        return (s + (hop_length - win_length)).div(hop_length, rounding_mode="floor").clamp_(min=0)
    if framing == "center":  # 1 + S // hop, and 0 for S = 0
        return s.div(hop_length, rounding_mode="floor") + (s > 0)
    raise ValueError(f"framing must be one of {FRAMINGS}, got {framing!r}")


def min_samples_for_frames(num_frames: int, win_length: int, hop_length: int, framing: str = "kaldi") -> int:
    """Smallest ``S`` with ``frames_from_samples(S) >= num_frames`` (inverse of the above)."""
    if num_frames <= 0:
        return 0
    if framing == "kaldi":
        return win_length + (num_frames - 1) * hop_length
    if framing == "center":
        return max(1, (num_frames - 1) * hop_length)
    raise ValueError(f"framing must be one of {FRAMINGS}, got {framing!r}")


def window_lead(win_length: int, n_fft: int, framing: str) -> int:
    """Samples by which frame ``t``'s window starts before sample ``t*hop``.

    ``kaldi``: 0 (the window covers ``[t*hop, t*hop + win)``).  ``center``: torch.stft
    pads ``n_fft // 2`` samples in front and puts the window ``(n_fft - win) // 2``
    into each ``n_fft`` frame, so the window covers ``[t*hop - lead, t*hop - lead + win)``
    with ``lead = n_fft // 2 - (n_fft - win) // 2`` (200 at 400/512).
    """
    if framing == "kaldi":
        return 0
    if framing == "center":
        return n_fft // 2 - (n_fft - win_length) // 2
    raise ValueError(f"framing must be one of {FRAMINGS}, got {framing!r}")


def stream_look_ahead(win_length: int, hop_length: int, n_fft: int, framing: str, context_frames: int) -> int:
    """Samples past sample ``t*hop`` that a feature stream must have read before frame ``t`` is final.

    Frame ``t``'s deltas read the statics of frames up to ``t + P`` (``P =
    context_frames``: 0 for statics alone, ``N`` for deltas, ``2N`` with
    delta-deltas), and frame ``t + P``'s window ends at sample
    ``(t + P)*hop - lead + win`` (:func:`window_lead`), so the look-ahead is
    ``P*hop + win - lead``: 1040 samples (65 ms) at the defaults with ``kaldi``
    framing and delta-deltas, 840 (52.5 ms) with ``center`` framing.
    """
    return context_frames * hop_length + win_length - window_lead(win_length, n_fft, framing)


def stream_frames_ready(num_samples: int, win_length: int, hop_length: int, n_fft: int, framing: str,
                        context_frames: int) -> int:
    """Frames a feature stream has made final after ``num_samples`` samples (before ``finish``).

    Frame ``t`` is final once ``num_samples >= t*hop + L`` (``L``:
    :func:`stream_look_ahead`), so ``1 + (num_samples - L) // hop`` frames are, or 0
    while ``num_samples < L``.  The frames of the last ``L`` samples come with
    ``finish``, which makes the total :func:`frames_from_samples`.
    """
    look_ahead = stream_look_ahead(win_length, hop_length, n_fft, framing, context_frames)
    return 0 if num_samples < look_ahead else 1 + (num_samples - look_ahead) // hop_length


def front_end_look_ahead(feature_look_ahead: int, encoder_look_ahead: int, hop_length: int) -> int:
    """Samples past an encoder output frame's time that a front-end stream (features, then
    the conv encoder) must have read before that frame is final.

    Encoder output ``j`` reads feature frames up to ``j*J + a`` (``a``: the encoder's
    :func:`look_ahead`, ``J``: its subsampling), and feature frame ``t`` is final once
    ``t*hop + L`` samples are in (``L``: :func:`stream_look_ahead`), so output ``j``, whose
    time is sample ``j*J*hop``, is final ``a*hop + L`` samples past it: 480 + 1040 = 1520
    samples (95 ms) for the default features and encoder.
    """
    return feature_look_ahead + encoder_look_ahead * hop_length


def stack_frames_ready(num_frames: int, layers: Sequence[AxisGeometry]) -> int:
    """Output frames a stream of a fixed-alignment stack (every padding ``valid``,
    ``causal`` or an int) has given after ``num_frames`` input frames, before the end.

    Each layer computes every window whose frames are in: with ``p`` zeros before it
    (:func:`padding_amounts`) and ``n`` input frames, ``(p + n - k) // s + 1`` windows
    when ``p + n >= k``, else 0; the zeros after the end come only with ``finish``.  A
    stream that has had no frame gives nothing (windows of padding alone wait for its
    first frame).
    """
    if num_frames <= 0:
        return 0
    n = num_frames
    for g in layers:
        assert g.padding != "same", "SAME padding has no fixed alignment: it cannot stream"
        before = padding_amounts(1, g.kernel, g.stride, g.padding)[0]
        n = (before + n - g.kernel) // g.stride + 1 if before + n >= g.kernel else 0
    return n


def batch_bound(counts: torch.Tensor, bound: int) -> int:
    """Size of a buffer that holds ``counts`` ``(B,)`` items per stream, at most ``bound``.

    A traced graph (``torch.export``, ONNX) cannot read tensor values, so it gets the
    static ``bound``, which its inputs' shapes fix; eager code gets the largest count (no
    wasted rows: one host read).  Either way each stream's valid items are the same.
    """
    return batch_range(counts, bound)[1]


def batch_range(counts: torch.Tensor, bound: int) -> tuple[int, int]:
    """``(least, size)``: :func:`batch_bound`'s size and the fewest items any stream has
    (one host read for both); a traced graph gets ``(0, bound)``, so that code which
    skips work when every stream fills the buffer (``least == size``) does all of it."""
    if torch.compiler.is_compiling():
        return 0, bound
    if counts.numel() == 0:
        return 0, 0
    least, largest = torch.stack(torch.aminmax(counts)).tolist() if counts.numel() > 1 else [counts.item()] * 2
    assert largest <= bound, f"{largest} items exceed the static bound {bound}"
    return max(least, 0), max(largest, 0)


# -------------------------------------------------------------------- resampling


def resampled_samples(num_samples: int, orig_rate: int, new_rate: int) -> int:
    """Samples after resampling ``S`` samples from ``orig_rate`` to ``new_rate`` Hz:
    ``ceil(S * new_rate / orig_rate)`` (``torchaudio.functional.resample``, which keeps
    sample 0 at t = 0 and every output sample whose time lies within the input)."""
    if num_samples < 0 or orig_rate <= 0 or new_rate <= 0:
        raise ValueError(f"resampled_samples needs S >= 0 and positive rates; got S={num_samples}, "
                         f"{orig_rate} -> {new_rate} Hz")
    return -(-num_samples * new_rate // orig_rate)


def speed_samples(num_samples: int, sample_rate: int, factor: float) -> int:
    """Samples after ``torchaudio.functional.speed(wave, sample_rate, factor)``: it resamples
    from ``int(factor * sample_rate)`` to ``sample_rate`` Hz, so the audio plays ``factor``
    times faster at the original rate."""
    return resampled_samples(num_samples, int(factor * sample_rate), sample_rate)


# ------------------------------------------------------------------ one conv axis

PADDINGS = ("same", "valid", "causal")
"""The named paddings; a non-negative int is the fourth kind (zeros on both sides)."""


def _check_padding(padding: Padding) -> None:
    if isinstance(padding, bool) or not (padding in PADDINGS or (isinstance(padding, int) and padding >= 0)):
        raise ValueError(f"padding must be one of {PADDINGS} or an int >= 0, got {padding!r}")


def same_padding(length: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow SAME padding ``(before, after)`` for one axis of length ``L``."""
    out = (length + stride - 1) // stride  # ceil(L / s)
    total = max((out - 1) * stride + kernel - length, 0)
    return total // 2, total - total // 2


def padding_amounts(length: int, kernel: int, stride: int, padding: Padding) -> tuple[int, int]:
    """Zeros ``(before, after)`` one conv axis of length ``L`` gets (see the module docstring)."""
    _check_padding(padding)
    if padding == "same":
        return same_padding(length, kernel, stride)
    if padding == "valid":
        return 0, 0
    if padding == "causal":
        return kernel - 1, 0
    return int(padding), int(padding)


def pad_before_tensor(lengths: torch.Tensor, kernel: int, stride: int, padding: Padding) -> torch.Tensor:
    """Batched zeros before each utterance: ``(B,)`` lengths -> ``(B,)`` int64.

    ``same``: the first element of :func:`same_padding` for each length,
    ``P // 2`` with ``P = max((ceil(L / s) - 1) * s + k - L, 0)`` (0 for empty input);
    the other paddings: the same constant for every length."""
    n = lengths.to(torch.int64)
    if padding != "same":
        return torch.full_like(n, padding_amounts(1, kernel, stride, padding)[0])
    out = torch.div(n + stride - 1, stride, rounding_mode="floor")
    total = torch.clamp((out - 1) * stride + kernel - n, min=0)
    return torch.where(n > 0, torch.div(total, 2, rounding_mode="floor"), 0)


def conv_out_length(length: int, kernel: int, stride: int, padding: Padding) -> int:
    """Output length of one conv axis (see the module docstring for the derivation)."""
    _check_padding(padding)
    if length < 0 or kernel < 1 or stride < 1:
        raise ValueError(f"need length >= 0, kernel >= 1, stride >= 1; got {length}, {kernel}, {stride}")
    if length == 0:
        return 0
    if padding in ("same", "causal"):
        return (length + stride - 1) // stride  # ceil(L / s), as floor of non-negatives (ONNX divides truncating)
    padded = length if padding == "valid" else length + 2 * int(padding)
    return 0 if padded < kernel else (padded - kernel) // stride + 1


def conv_out_length_tensor(lengths: torch.Tensor, kernel: int, stride: int, padding: Padding) -> torch.Tensor:
    """Batched :func:`conv_out_length`: ``(B,)`` int -> ``(B,)`` int64."""
    _check_padding(padding)
    n = lengths.to(torch.int64)
    if padding in ("same", "causal"):
        return torch.div(n + stride - 1, stride, rounding_mode="floor")
    padded = n if padding == "valid" else n + 2 * int(padding)
    # (padded - k) // s + 1 = (padded - k + s) // s, which is <= 0 below one kernel: clamped to 0
    out = (padded + (stride - kernel)).div(stride, rounding_mode="floor").clamp_(min=0)
    return out if padding == "valid" else out * (n > 0)  # padding alone gives no output


def conv_min_input(out_length: int, kernel: int, stride: int, padding: Padding) -> int:
    """Smallest input length whose output has at least ``out_length`` elements."""
    _check_padding(padding)
    if out_length <= 0:
        return 0
    if padding in ("same", "causal"):
        return (out_length - 1) * stride + 1
    pad = 0 if padding == "valid" else 2 * int(padding)
    return max(1, (out_length - 1) * stride + kernel - pad)


def conv_input_span(out_length: int, kernel: int, stride: int) -> int:
    """Input elements (padding included) read by ``out_length`` conv outputs:
    ``(out - 1) * s + k``, and 0 for no output."""
    return 0 if out_length <= 0 else (out_length - 1) * stride + kernel


def min_pad_before(kernel: int, stride: int, padding: Padding) -> int:
    """Smallest padding before the input over all input lengths (for the look-ahead).

    For ``same`` the padding before is ``P // 2`` with ``P = k - s`` (when ``L mod s == 0``)
    or ``k - r`` for ``r = L mod s > 0``; the smallest is ``max(k - s, 0) // 2``.  The
    other paddings put the same amount before every length.
    """
    if padding == "same":
        return max(kernel - stride, 0) // 2
    return padding_amounts(1, kernel, stride, padding)[0]


# ---------------------------------------------------------------- a stack of convs


@dataclass(frozen=True)
class AxisGeometry:
    """Kernel, stride and padding of one layer along one axis."""

    kernel: int
    stride: int
    padding: Padding


def stack_out_length(length: int, layers: Sequence[AxisGeometry]) -> int:
    """Length after every layer of a stack, applied in order."""
    for g in layers:
        length = conv_out_length(length, g.kernel, g.stride, g.padding)
    return length


def stack_out_length_tensor(lengths: torch.Tensor, layers: Sequence[AxisGeometry]) -> torch.Tensor:
    """Batched :func:`stack_out_length`: ``(B,)`` -> ``(B,)`` int64."""
    out = lengths.to(torch.int64)
    for g in layers:
        out = conv_out_length_tensor(out, g.kernel, g.stride, g.padding)
    return out


def stack_min_input(layers: Sequence[AxisGeometry], out_length: int = 1) -> int:
    """Smallest input length that leaves ``out_length`` elements after the whole stack.

    Walks the stack backwards with :func:`conv_min_input`.  Because every output
    length is monotone in the input length this is exact: the result ``m`` gives
    ``stack_out_length(m) >= out_length`` and ``stack_out_length(m - 1) < out_length``.
    Example: two ``valid`` 3x3 stride-2 layers need 3 inputs at the second layer and
    ``(3 - 1)*2 + 3 = 7`` at the first.
    """
    need = out_length
    for g in reversed(layers):
        need = conv_min_input(need, g.kernel, g.stride, g.padding)
    return need


def receptive_field(layers: Sequence[AxisGeometry]) -> int:
    """Input elements seen by one output element: ``r_l = r_{l-1} + (k_l - 1) * j_{l-1}``
    with ``j_l = j_{l-1} * s_l`` the jump (cumulative stride), ``r_0 = j_0 = 1``."""
    r, j = 1, 1
    for g in layers:
        r += (g.kernel - 1) * j
        j *= g.stride
    return r


def subsampling(layers: Sequence[AxisGeometry]) -> int:
    """Cumulative stride: product of the layers' strides."""
    return math.prod(g.stride for g in layers)


def look_ahead(layers: Sequence[AxisGeometry]) -> int:
    """Future input elements seen by an output element, worst case over lengths.

    Output ``t`` of the stack reads inputs ``[t*J - P, t*J - P + R - 1]`` where ``J`` is
    the cumulative stride, ``R`` the receptive field and ``P = sum_l p_l * J_{l-1}``
    the padding before, scaled to the input.  Its own input position is ``t*J``, so
    the look-ahead is ``R - 1 - P``; the smallest ``P`` (:func:`min_pad_before`) gives
    the largest look-ahead.  Clamped at 0 (a ``valid`` stack only looks ahead).
    """
    j, pad = 1, 0
    for g in layers:
        pad += min_pad_before(g.kernel, g.stride, g.padding) * j
        j *= g.stride
    return max(receptive_field(layers) - 1 - pad, 0)


def make_pad_mask(lengths: torch.Tensor, max_length: int) -> torch.Tensor:
    """``(B,)`` lengths -> ``(B, T)`` bool, True on valid frames ``t < lengths[b]``."""
    return torch.arange(max_length, device=lengths.device)[None, :] < lengths[:, None]
