"""Masks for padded batches: time masks, per-utterance padding, masked batch norm.

A padded batch holds utterances of different lengths in one ``(B, C, T, F)`` tensor.
For every utterance to give the same frames alone and in a batch, three things must
hold at every conv layer (see :mod:`speechconv.shapes` for the length arithmetic):

1. the conv reads zeros wherever the utterance has no frame (padding frames must not
   leak into valid ones);
2. TF SAME padding *before* the utterance depends on its own length ``L mod stride``,
   so each utterance is shifted by its own amount (:func:`pad_per_utterance`);
3. batch-norm statistics in training are taken over valid frames only
   (:class:`MaskedBatchNorm2d`), so appending padding changes nothing.

Everything public here is TorchScript-scriptable.  In eager mode, training runs
through two ``torch.autograd.Function`` with hand-written backwards
(:class:`_PadPerUtterance`, :class:`_MaskedBatchNormFn`), which allocate fewer
batch-sized tensors than autograd of the same ops; TorchScript cannot call them, so
under ``torch.jit.is_scripting()`` the same values come from autograd-able ops.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from speechconv import shapes


def time_mask(lengths: torch.Tensor, max_length: int) -> torch.Tensor:
    """``(B,)`` lengths -> ``(B, 1, T, 1)`` bool mask of valid frames, ``T = max_length``,
    shaped to broadcast against the conv layout ``(B, C, T, F)``."""
    mask = shapes.make_pad_mask(lengths, max_length)  # (B, T)
    return mask[:, None, :, None]  # (B, T) -> (B, 1, T, 1)


def zero_padding(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Zero every frame past each utterance's length.

    Args:
        x: ``(B, C, T, F)``.
        lengths: ``(B,)`` valid frames per utterance, each ``<= T``.

    Returns:
        ``(B, C, T, F)``, a new tensor (same memory format as ``x``).
    """
    return x * time_mask(lengths, x.shape[2]).to(x.dtype)


def zero_padding_(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """In-place :func:`zero_padding` that writes only the padding frames (for tensors
    outside autograd).  ``x`` ``(B, C, T, F)``, ``lengths`` ``(B,)`` -> ``x``."""
    lens = torch.jit.annotate(list[int], lengths.tolist())
    for b in range(x.shape[0]):
        if lens[b] < x.shape[2]:
            x[b, :, lens[b] :].zero_()
    return x


def conv_layout(x: torch.Tensor) -> torch.Tensor:
    """``(B, T, F, C)`` contiguous -> ``(B, C, T, F)`` view for a conv, channels_last strides.

    With ``C == 1`` both layouts hold the same bytes, and the view gets the ordinary
    contiguous strides instead: on torch 2.14.1 (oneDNN) a conv whose one input channel
    has stride 1 and whose output has one frequency row returns wrong values for B > 1
    (tests/test_masking.py::test_conv_layout_avoids_onednn_single_channel_bug).
    """
    if x.shape[3] == 1:
        return x.squeeze(3).unsqueeze(1)  # (B, T, F, 1) -> (B, 1, T, F), contiguous strides
    return x.permute(0, 3, 1, 2)  # (B, T, F, C) -> (B, C, T, F)


def valid_frame_index(lengths: torch.Tensor, max_length: int) -> torch.Tensor:
    """``(B,)`` lengths -> ``(N,)`` int64 flat indices ``b * T + t`` of every valid frame
    (``t < lengths[b]``), batch-major, ``N = sum(lengths)``, ``T = max_length``."""
    return torch.nonzero(shapes.make_pad_mask(lengths, max_length).flatten()).flatten()  # (B, T) -> (B*T,)


def gather_frames(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """The frames of ``x`` at flat indices ``index`` (from :func:`valid_frame_index`).

    Args:
        x: ``(B, C, T, F)``; no copy before the gather when it is channels_last.
        index: ``(N,)`` flat ``b * T + t`` indices.

    Returns:
        ``(N, F, C)``.
    """
    b_size, c_size, t_size, f_size = x.shape
    frames = x.permute(0, 2, 3, 1).reshape(b_size * t_size, f_size, c_size)  # (B, C, T, F) -> (B*T, F, C)
    return frames.index_select(0, index)


def scatter_frames(frames: torch.Tensor, index: torch.Tensor, batch: int, max_length: int) -> torch.Tensor:
    """Inverse of :func:`gather_frames`: frames back at their places, zeros elsewhere.

    Args:
        frames: ``(N, F, C)``.
        index: ``(N,)`` flat ``b * T + t`` indices, ``T = max_length``.
        batch: ``B``.

    Returns:
        ``(B, C, T, F)`` with channels_last strides.
    """
    n_frames, f_size, c_size = frames.shape
    out = frames.new_zeros((batch * max_length, f_size, c_size))
    out.index_add_(0, index, frames)  # into zeros: a copy whose backward needs no self gradient
    return conv_layout(out.view(batch, max_length, f_size, c_size))  # (B*T, F, C) -> (B, C, T, F)


def pad_per_utterance(
    x: torch.Tensor,
    lengths: torch.Tensor,
    pad_before: torch.Tensor,
    out_time: int,
    freq_before: int,
    freq_after: int,
) -> torch.Tensor:
    """Copy each utterance's valid frames into a zero buffer at its own time offset.

    Utterance ``b`` is placed at frames ``[pad_before[b], pad_before[b] + L_b)`` of the
    buffer, and at ``[freq_before, freq_before + F)`` along frequency; everything else
    is zero.  Only valid frames are copied, so whatever lies past ``L_b`` in ``x`` is
    never read: this is the encoder's masking before every conv.  Frames that would fall
    past ``out_time`` are dropped; a conv whose kernel is smaller than its stride never
    reads them.

    Without autograd, one slice copy per utterance (a loop over ``B``) writes each
    element once.  With autograd, in eager mode, the same copies run inside
    :class:`_PadPerUtterance`, whose backward is one slice copy per utterance too.
    Under TorchScript (which cannot call an ``autograd.Function``), per-utterance slices
    would each cost a full-size gradient in backward, so the buffer is one row gather
    from a padded copy instead (backward: one index_add and a slice).

    Args:
        x: ``(B, C, T, F)`` input of one conv.
        lengths: ``(B,)`` valid frames, each ``<= T``.
        pad_before: ``(B,)`` zeros before each utterance (per-utterance SAME, or a
            constant for int padding, 0 for valid).
        out_time: time size of the buffer (the span read by the conv's outputs).
        freq_before, freq_after: zeros before and after along frequency (the same for
            every utterance).

    Returns:
        ``(B, C, out_time, freq_before + F + freq_after)`` laid out by :func:`conv_layout`
        (channels_last strides; contiguous ones for a single channel).
    """
    b_size, c_size, t_size, f_size = x.shape
    f_pad = freq_before + f_size + freq_after
    if torch.is_grad_enabled() and x.requires_grad and not torch.jit.is_scripting():
        return _PadPerUtterance.apply(
            x, lengths.tolist(), pad_before.tolist(), out_time, freq_before, freq_after
        )
    if torch.is_grad_enabled() and x.requires_grad:
        # TorchScript cannot call an autograd.Function.  One padded copy with an extra zero frame per utterance, then one row gather:
        # buffer frame (b, tau) reads frame tau - pad_before[b] when that is a valid
        # frame, and the zero frame otherwise.
        padded = nn.functional.pad(  # (B, T, F, C) -> (B, T + 1, F_pad, C)
            x.permute(0, 2, 3, 1), (0, 0, freq_before, freq_after, 0, 1)  # (B, C, T, F) -> (B, T, F, C)
        )
        src = torch.arange(out_time, device=x.device)[None, :] - pad_before[:, None]  # (B, out_time)
        valid = (src >= 0) & (src < lengths[:, None])
        src = torch.where(valid, src, t_size) + torch.arange(b_size, device=x.device)[:, None] * (t_size + 1)
        rows = padded.reshape(b_size * (t_size + 1), f_pad, c_size)  # (B, T + 1, F_pad, C) -> (B*(T+1), F_pad, C)
        buf = rows.index_select(0, src.flatten())  # (B*out_time, F_pad, C)
        return conv_layout(buf.view(b_size, out_time, f_pad, c_size))  # (B*out_time, ...) -> (B, C, out_time, F_pad)
    lens = torch.jit.annotate(list[int], lengths.tolist())
    offsets = torch.jit.annotate(list[int], pad_before.tolist())
    return place_frames(x, lens, (offsets, out_time, freq_before, freq_after), False)


Placement = tuple[list[int], int, int, int]
"""Where a layer's output goes in the next conv's input buffer, as :func:`pad_per_utterance`
would place it: ``(offsets, out_time, freq_before, freq_after)``, the per-utterance time
offsets (``B`` ints), the buffer's time size and the zero rows before and after along
frequency.  Writing a layer's output straight into that buffer saves the encoder one
batch-sized tensor and two passes per conv (see :mod:`speechconv.encoder`)."""


def placed_buffer(rows: torch.Tensor, lens: list[int], place: Placement) -> tuple[torch.Tensor, list[int]]:
    """An uninitialised buffer for ``rows`` placed by ``place``, its margins zeroed.

    Args:
        rows: ``(B, T, F, C)`` the frames to be placed (only the shape is read).
        lens: ``B`` valid frames per utterance.
        place: the :data:`Placement`.

    Returns:
        ``(buf, counts)``: ``buf`` ``(B, out_time, freq_before + F + freq_after, C)``, zero
        everywhere except utterance ``b``'s rectangle ``[offsets[b], offsets[b] + counts[b])
        x [freq_before, freq_before + F)``, which the caller fills; ``counts`` as
        :func:`zero_margins_` gives them.
    """
    offsets, out_time, fb, fa = place
    b_size, _, f_size, c_size = rows.shape
    buf = rows.new_empty((b_size, out_time, fb + f_size + fa, c_size))
    return buf, zero_margins_(buf, offsets, lens, fb, f_size)


def zero_margins_(buf: torch.Tensor, offsets: list[int], lens: list[int], freq_before: int,
                  freq_size: int, ends: list[int] | None = None) -> list[int]:
    """Zero, in place, everything of ``buf`` outside each utterance's data rectangle.

    Args:
        buf: ``(B, T, F_buf, C)`` (the ``(B, T, F, C)`` view of a conv-layout buffer).
        offsets: ``B`` frames before each utterance's data.
        lens: ``B`` frames of data per utterance.
        freq_before, freq_size: the data's rows along frequency, the same for every
            utterance (rows past ``F_buf`` are dropped).
        ends: optional ``B`` frames: past its data, utterance ``b``'s frames are zeroed
            only up to ``ends[b]``, the end of what its valid conv outputs read (later
            frames are left as they are: only outputs past the lengths read them).

    Returns:
        ``counts``: ``counts[b] = min(lens[b], T - offsets[b])`` (at least 0) frames of
        utterance ``b`` lie in the buffer (later ones would lie past it, where no conv
        output reads them).  The rectangle ``[offsets[b], offsets[b] + counts[b]) x
        [freq_before, freq_before + freq_size)`` is left as it is.
    """
    t_size, f_buf = buf.shape[1], buf.shape[2]
    if freq_before > 0:  # the frequency margins of every frame, one op each for the whole batch
        buf[:, :, :freq_before].zero_()
    if freq_before + freq_size < f_buf:
        buf[:, :, freq_before + freq_size :].zero_()
    counts = placed_counts(offsets, lens, t_size)
    for b, n in enumerate(counts):
        p = offsets[b]
        if p > 0:
            buf[b, :p].zero_()
        end = t_size if ends is None else min(ends[b], t_size)
        if p + n < end:
            buf[b, p + n : end].zero_()
    return counts


def placed_counts(offsets: list[int], lens: list[int], t_size: int) -> list[int]:
    """Frames of each utterance that lie in a ``t_size``-frame buffer when its ``lens[b]``
    frames start at ``offsets[b]``: ``max(min(lens[b], t_size - offsets[b]), 0)`` (later
    ones would lie past the buffer, where no conv output reads them)."""
    counts: list[int] = []
    for b in range(len(lens)):
        counts.append(max(min(lens[b], t_size - offsets[b]), 0))
    return counts


def place_frames(x: torch.Tensor, lens: list[int], place: Placement, relu: bool) -> torch.Tensor:
    """Outside autograd: ``x``'s valid frames, ReLU applied when ``relu``, written into the
    next conv's zero-padded buffer, the same tensor as ``pad_per_utterance(relu(x), ...)``.

    ``x`` ``(B, C, T, F)``, ``lens`` ``B`` ints, ``place`` a :data:`Placement` ->
    ``(B, C, out_time, freq_before + F + freq_after)`` laid out by :func:`conv_layout`."""
    rows = x.permute(0, 2, 3, 1)  # (B, C, T, F) -> (B, T, F, C), a view
    buf, counts = placed_buffer(rows, lens, place)
    offsets, _, fb, _ = place
    f_size = rows.shape[2]
    for b, n in enumerate(counts):
        if n > 0:
            dst = buf[b, offsets[b] : offsets[b] + n, fb : fb + f_size]
            if relu:
                torch.clamp_min(rows[b, :n], 0.0, out=dst)
            else:
                dst.copy_(rows[b, :n])
    return conv_layout(buf)  # (B, T, F, C) -> (B, C, T, F), channels_last strides (C == 1: contiguous)


def pad_to_placement(y: torch.Tensor, lens: list[int], place: Placement) -> torch.Tensor:
    """:func:`pad_per_utterance` of ``y`` ``(B, C, T, F)`` by a :data:`Placement` (any
    norm that cannot write into the buffer itself falls back to this; autograd-safe)."""
    offsets, out_time, fb, fa = place
    lengths = torch.tensor(lens, device=y.device)
    return pad_per_utterance(y, lengths, torch.tensor(offsets, device=y.device), out_time, fb, fa)


class _PadPerUtterance(torch.autograd.Function):
    """:func:`pad_per_utterance` with a hand-written backward: each utterance's gradient
    is one slice copy out of the buffer's gradient, into one new tensor (autograd of the
    slice copies would cost a full-size gradient per utterance, and the index gather of
    the TorchScript path costs a padded copy, a zero fill and a scatter).

    Shapes: ``forward(x, lens, offsets, out_time, freq_before, freq_after)``: ``x``
    ``(B, C, T, F)``, ``lens`` and ``offsets`` ``B`` ints -> ``(B, C, out_time, F_pad)``.
    """

    @staticmethod
    def forward(ctx, x, lens, offsets, out_time, freq_before, freq_after):  # noqa: ANN001, ANN205
        ctx.lens, ctx.offsets, ctx.freq_before = lens, offsets, freq_before
        ctx.x_shape = x.shape
        ctx.x_channels_last = x.permute(0, 2, 3, 1).is_contiguous()  # (B, C, T, F) -> (B, T, F, C)
        return place_frames(x, lens, (offsets, out_time, freq_before, freq_after), False)

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        b_size, c_size, t_size, f_size = ctx.x_shape
        counts = placed_counts(ctx.offsets, ctx.lens, grad.shape[2])
        g = _unplace_gradient(grad, None, (b_size, t_size, f_size, c_size), ctx.offsets, counts, ctx.freq_before,
                              False)  # (B, T, F, C), zero on frames never read by the conv
        grad_x = g.permute(0, 3, 1, 2)  # (B, T, F, C) -> (B, C, T, F), channels_last strides
        return (grad_x if ctx.x_channels_last else grad_x.contiguous()), None, None, None, None, None


def _check_count(count: int) -> None:
    """Batch statistics need more than one value per channel (``count``: valid frames x
    frequency rows), as in ``nn.BatchNorm2d``."""
    if count <= 1:
        raise ValueError(
            f"MaskedBatchNorm2d needs more than 1 valid value per channel in training, got {count} "
            "(valid frames x frequency rows); use longer utterances or a larger batch"
        )


def _channel_sums(
    grad: torch.Tensor, x: torch.Tensor, lens: list[int], mean: torch.Tensor, invstd: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel sums over the valid frames: ``sum g * (x - mean) * invstd`` and ``sum g``.

    Utterance ``b``'s valid frames are the contiguous rows ``[:L_b]`` of ``(B, T, F, C)``
    tensors, so each sum is one reduction per utterance over a ``(L_b * F, C)`` view,
    with no mask and no copy.  The reduction is ATen's batch-norm weight gradient
    (``native_batch_norm_backward`` with only the weight and bias gradients asked for):
    one fused pass over ``g`` and ``x``, where ``(g * x).sum(0)`` would allocate a
    product the size of the batch.

    Args:
        grad, x: ``(B, T, F, C)`` (rows of a channels_last ``(B, C, T, F)``).
        lens: ``B`` valid frames per utterance.
        mean, invstd: ``(C,)``.

    Returns:
        ``(C,)`` and ``(C,)``.
    """
    c_size = x.shape[3]
    dot = torch.zeros_like(mean)
    total = torch.zeros_like(mean)
    for b, n in enumerate(lens):
        if n > 0:
            _, d, t = torch.ops.aten.native_batch_norm_backward(
                grad[b, :n].reshape(-1, c_size), x[b, :n].reshape(-1, c_size),  # (L_b, F, C) -> (L_b * F, C)
                None, None, None, mean, invstd, True, 0.0, [False, True, True],
            )
            dot += d
            total += t
    return dot, total


def _zero_past(rows: torch.Tensor, lens: list[int]) -> torch.Tensor:
    """Zero, in place, frames ``t >= L_b`` of ``(B, T, F, C)`` ``rows`` (only those are written)."""
    for b, n in enumerate(lens):
        if n < rows.shape[1]:
            rows[b, n:].zero_()
    return rows


def _valid_stats(rows: torch.Tensor, lens: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and biased variance per channel over the valid frames of ``(B, T, F, C)``
    ``rows`` (``lens``: ``B`` ints), not differentiated -> ``(C,)``, ``(C,)``.

    Two passes, the variance as ``sum (x - mean)^2`` (from ``sum x (x - mean)``, less the
    rounding left in ``sum (x - mean)``), so a large mean does not cancel the variance."""
    count = sum(lens) * rows.shape[2]
    zero = rows.new_zeros(rows.shape[3])
    _, total = _channel_sums(rows, rows, lens, zero, zero)
    mean = total / count
    sq, _ = _channel_sums(rows, rows, lens, mean, torch.ones_like(mean))  # sum x (x - mean)
    return mean, (sq - mean * (total - count * mean)) / count


def _normalise(
    rows: torch.Tensor,
    mean: torch.Tensor,
    var: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float,
) -> torch.Tensor:
    """``(B, T, F, C)`` rows -> ``(rows - mean) / sqrt(var + eps) * weight + bias`` as one
    ``addcmul`` (one new tensor); ``mean``, ``var``, ``weight``, ``bias`` ``(C,)``.

    Shared by the eager and the TorchScript paths so that both give the same values."""
    scale, shift = _affine(mean, var, weight, bias, eps)
    return torch.addcmul(shift, rows, scale)


def _affine(
    mean: torch.Tensor, var: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch norm as ``x * scale + shift``: ``(C,)`` statistics and parameters -> ``(C,)``, ``(C,)``."""
    scale = torch.rsqrt(var + eps)
    if weight is not None:
        scale = scale * weight
    shift = -mean * scale
    if bias is not None:
        shift = shift + bias
    return scale, shift


class _MaskedBatchNormFn(torch.autograd.Function):
    """Batch norm over valid frames, optionally followed by ReLU, with a hand-written backward.

    Statistics: mean, then biased variance as ``sum (x - mean)^2`` (two passes, as stable
    as the native kernel's), over every valid ``(b, t)`` and all ``f``, by
    :func:`_channel_sums`.  Output, without a placement: the native eval-mode kernel with
    the batch's statistics (one new tensor), ReLU in place, and zeros written on padding
    frames.  With a :data:`Placement`: the same values written per utterance straight into
    the next conv's zero-padded input buffer (:func:`placed_buffer`), so the encoder needs
    neither this output nor the copy :func:`pad_per_utterance` would make of it.

    Backward, with ``N`` valid values per channel, ``xhat = (x - mean) * invstd``,
    ``k = gamma * invstd`` and ``g`` the output gradient (after the ReLU's mask):
    ``dgamma = sum g xhat``, ``dbeta = sum g`` (valid frames only) and, on valid frames,
    ``dx = k g + c2 x + c1`` with per-channel ``c2 = -k invstd dgamma / N``,
    ``c1 = -k dbeta / N - c2 mean``; zero on padding.  Fusing the ReLU lets its masked
    gradient be the one new tensor of the backward (the rest is in place), where autograd
    of ReLU then batch norm allocates two; with a placement that gradient is read out of
    the buffer's gradient per utterance (frames dropped past the buffer get zero).

    Shapes: ``forward(x, weight, bias, lens, eps, relu, place)``: ``x`` ``(B, C, T, F)``,
    ``weight``, ``bias`` ``(C,)`` or None, ``lens`` ``B`` ints, ``place`` a
    :data:`Placement` or None -> ``out`` ``(B, C, T, F)`` (placed:
    ``(B, C, out_time, F_pad)``) channels_last, and ``mean``, ``var`` (biased) ``(C,)``
    (not differentiable).
    """

    @staticmethod
    def forward(ctx, x, weight, bias, lens, eps, relu, place):  # noqa: ANN001, ANN205
        rows = x.permute(0, 2, 3, 1).contiguous()  # (B, C, T, F) -> (B, T, F, C), a view when channels_last
        mean, var = _valid_stats(rows, lens)
        invstd = torch.rsqrt(var + eps)
        if place is None:
            out = _normalise(rows, mean, var, weight, bias, eps)
            if relu:
                out.relu_()
            _zero_past(out, lens)
            counts = lens
        else:
            out, counts = placed_buffer(rows, lens, place)  # (B, out_time, F_pad, C)
            offsets, _, fb, _ = place
            scale, shift = _affine(mean, var, weight, bias, eps)
            for b, n in enumerate(counts):
                if n > 0:
                    dst = out[b, offsets[b] : offsets[b] + n, fb : fb + rows.shape[2]]
                    torch.addcmul(shift, rows[b, :n], scale, out=dst)  # the values of _normalise
                    if relu:
                        dst.relu_()
        # (B, T', F', C) -> (B, C, T', F'): channels_last strides, or contiguous ones for C == 1,
        # where a placed buffer is the next conv's input (see conv_layout).
        result = conv_layout(out)
        ctx.lens, ctx.relu, ctx.count = lens, relu, sum(lens) * rows.shape[2]
        ctx.place, ctx.counts = place, counts
        ctx.save_for_backward(x, weight, mean, invstd, result if relu else None)
        ctx.mark_non_differentiable(mean, var)
        return result, mean, var

    @staticmethod
    def backward(ctx, grad, _grad_mean, _grad_var):  # noqa: ANN001, ANN205
        x, weight, mean, invstd, result = ctx.saved_tensors
        rows = x.permute(0, 2, 3, 1).contiguous()  # (B, C, T, F) -> (B, T, F, C)
        if ctx.place is not None:
            g = _unplace_gradient(grad, result, rows.shape, ctx.place[0], ctx.counts, ctx.place[2], ctx.relu)
        elif ctx.relu:
            # A new tensor (the gradient through the ReLU), updated in place below.
            g = torch.ops.aten.threshold_backward(grad, result, 0).permute(0, 2, 3, 1).contiguous()
        else:
            g = grad.permute(0, 2, 3, 1)  # (B, C, T, F) -> (B, T, F, C); read only
        dgamma, dbeta = _channel_sums(g, rows, ctx.lens, mean, invstd)
        k = invstd if weight is None else invstd * weight
        c2 = -k * invstd * dgamma / ctx.count
        c1 = -k * dbeta / ctx.count - c2 * mean
        if ctx.relu:  # g is a new tensor
            dx = g.mul_(k).addcmul_(rows, c2).add_(c1)
        else:
            dx = torch.addcmul(c1, rows, c2).addcmul_(g, k)
        _zero_past(dx, ctx.lens)
        grad_weight = dgamma if weight is not None and ctx.needs_input_grad[1] else None
        grad_bias = dbeta if ctx.needs_input_grad[2] else None
        return dx.permute(0, 3, 1, 2), grad_weight, grad_bias, None, None, None, None  # (B, T, F, C) -> (B, C, T, F)


def _unplace_gradient(
    grad: torch.Tensor, result: torch.Tensor | None, shape: tuple[int, int, int, int], offsets: list[int],
    counts: list[int], fb: int, relu: bool,
) -> torch.Tensor:
    """The gradient of a placed output (:class:`_MaskedBatchNormFn`, :class:`_PadPerUtterance`)
    back at the frames' own places: ``grad`` and ``result`` ``(B, C, out_time, F_pad)`` -> a
    new contiguous ``(B, T, F, C)`` tensor of ``shape``, through the ReLU's mask when
    ``relu``, zero on frames never placed."""
    g = grad.new_empty(shape)
    grad_rows = grad.permute(0, 2, 3, 1)  # (B, C, out_time, F_pad) -> (B, out_time, F_pad, C)
    f_size = shape[2]
    for b, n in enumerate(counts):
        if n > 0:
            src = grad_rows[b, offsets[b] : offsets[b] + n, fb : fb + f_size]
            if relu:
                assert result is not None
                placed = result.permute(0, 2, 3, 1)[b, offsets[b] : offsets[b] + n, fb : fb + f_size]
                torch.ops.aten.threshold_backward.grad_input(src, placed, 0, grad_input=g[b, :n])
            else:
                g[b, :n].copy_(src)
        if n < g.shape[1]:
            g[b, n:].zero_()
    return g


class MaskedBatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` whose training statistics cover valid frames only.

    In training, mean and (biased) variance per channel are taken over every valid
    ``(b, t)`` position and all ``f``; the running statistics are updated exactly as
    ``nn.BatchNorm2d`` does (``momentum``, or a cumulative average when ``momentum`` is
    None; the running variance is the unbiased one, ``n / (n - 1)`` times the batch's).
    In eval the running statistics are used and the mask is irrelevant.  Parameters and
    buffers (``weight``, ``bias``, ``running_mean``, ``running_var``,
    ``num_batches_tracked``) have the names and shapes of ``nn.BatchNorm2d``, so a
    state dict loads into either.

    Outputs of :meth:`forward` on padding frames are not zero (they are ``bias`` after
    normalising zeros and garbage); callers mask them.  :meth:`forward_lengths` (the
    encoder's training path) takes lengths instead of a mask and writes zeros there.

    Shapes:
        ``forward(x, mask)``: ``x`` ``(B, C, T, F)``; ``mask`` ``(B, 1, T, 1)`` bool
        (True on valid frames) or None for "all valid" -> ``(B, C, T, F)``.
    """

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` ``(B, C, T, F)``, ``mask`` ``(B, 1, T, 1)`` bool or None -> ``(B, C, T, F)``."""
        use_batch_stats = self.training or not self.track_running_stats
        if not use_batch_stats or mask is None:
            return self._native(x)
        count = int(mask.sum()) * x.shape[3]
        if count == x.shape[0] * x.shape[2] * x.shape[3]:
            # No padding: the fused native kernel, identical to nn.BatchNorm2d.
            return self._native(x)
        _check_count(count)
        m = mask.to(x.dtype)
        mean = (x * m).sum(dim=(0, 2, 3)) / count  # (C,)
        centred = (x - mean[None, :, None, None]) * m  # (B, C, T, F), zero on padding
        var = (centred * centred).sum(dim=(0, 2, 3)) / count  # (C,) biased
        if self.training and self.track_running_stats:
            self._update_running(mean.detach(), var.detach(), count)
        out = centred * torch.rsqrt(var + self.eps)[None, :, None, None]  # (C,) -> (1, C, 1, 1)
        weight = self.weight
        bias = self.bias
        if weight is not None and bias is not None:
            out = out * weight[None, :, None, None] + bias[None, :, None, None]  # (C,) -> (1, C, 1, 1)
        return out

    @torch.jit.export
    def forward_lengths(
        self, x: torch.Tensor, lens: list[int], relu: bool = False, place: Placement | None = None
    ) -> torch.Tensor:
        """Training batch norm over valid frames given as lengths, with an optional fused
        ReLU, zero on padding frames (see :class:`_MaskedBatchNormFn`).

        The statistics, outputs on valid frames and running-statistics update are those
        of :meth:`forward` with ``time_mask(lengths, T)``.

        ``x`` ``(B, C, T, F)`` (channels_last avoids a copy), ``lens`` ``B`` ints ``<= T``
        -> ``(B, C, T, F)`` channels_last; with a :data:`Placement` the output is written
        into the next conv's padded buffer, ``pad_to_placement(output, lens, place)``."""
        count = sum(lens) * x.shape[3]
        _check_count(count)
        if not torch.jit.is_scripting():
            out, mean, var = _MaskedBatchNormFn.apply(x, self.weight, self.bias, lens, self.eps, relu, place)
        else:
            out, mean, var = self._forward_lengths_autograd(x, lens, relu)
            if place is not None:
                out = pad_to_placement(out, lens, place)
        if self.training and self.track_running_stats:
            self._update_running(mean, var, count)
        return out

    def _forward_lengths_autograd(
        self, x: torch.Tensor, lens: list[int], relu: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:class:`_MaskedBatchNormFn` for TorchScript, which cannot call it: the same
        values (statistics by :func:`_valid_stats`, output by :func:`_normalise`), with
        gradients from autograd of masked sums.

        ``x`` ``(B, C, T, F)`` -> ``(B, C, T, F)``, and mean and biased variance ``(C,)``."""
        rows = x.permute(0, 2, 3, 1)  # (B, C, T, F) -> (B, T, F, C)
        count = sum(lens) * rows.shape[2]
        with torch.no_grad():
            mean, var = _valid_stats(rows.contiguous(), lens)
        mask = time_mask(torch.tensor(lens, device=x.device), x.shape[2]).to(x.dtype)  # (B, 1, T, 1)
        if x.requires_grad:
            # Statistics whose values are exactly mean, var (d - d.detach() is 0) and
            # whose gradient is that of the masked sums.
            mean_d = (x * mask).sum(dim=(0, 2, 3)) / count
            centred = (x - mean_d[None, :, None, None]) * mask  # (C,) -> (1, C, 1, 1)
            var_d = (centred * centred).sum(dim=(0, 2, 3)) / count
            mean = mean + (mean_d - mean_d.detach())
            var = var + (var_d - var_d.detach())
        out = _normalise(rows, mean, var, self.weight, self.bias, self.eps)
        if relu:
            out = torch.relu(out)
        out = out * mask.permute(0, 2, 3, 1)  # (B, 1, T, 1) -> (B, T, 1, 1)
        return out.permute(0, 3, 1, 2), mean.detach(), var.detach()  # (B, T, F, C) -> (B, C, T, F)

    def forward_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """Batch norm of valid frames only, packed as ``(N, F, C)`` (see
        :func:`gather_frames`) -> ``(N, F, C)``.

        The statistics are those of :meth:`forward` with a mask (every valid ``(b, t)``
        and all ``f``), computed by the native kernel on ``(N * F, C)``; the encoder uses
        this path in training."""
        n_frames, f_size, c_size = frames.shape
        count = n_frames * f_size
        if self.training or not self.track_running_stats:
            _check_count(count)
        out = self._native(frames.reshape(count, c_size))  # (N, F, C) -> (N*F, C)
        return out.view(n_frames, f_size, c_size)  # (N*F, C) -> (N, F, C)

    def _native(self, x: torch.Tensor) -> torch.Tensor:
        """``nn.BatchNorm2d.forward`` (restated: TorchScript cannot call ``super()``).

        ``x`` ``(B, C, T, F)`` or ``(N, C)`` -> the same shape."""
        factor = 0.0 if self.momentum is None else self.momentum
        tracked = self.num_batches_tracked
        if self.training and self.track_running_stats and tracked is not None:
            tracked.add_(1)
            momentum = self.momentum
            factor = 1.0 / float(tracked.item()) if momentum is None else momentum
        use_batch_stats = self.training or (self.running_mean is None and self.running_var is None)
        keep_running = not self.training or self.track_running_stats
        return F.batch_norm(
            x,
            self.running_mean if keep_running else None,
            self.running_var if keep_running else None,
            self.weight,
            self.bias,
            use_batch_stats,
            factor,
            self.eps,
        )

    def _update_running(self, mean: torch.Tensor, var: torch.Tensor, count: int) -> None:
        """Running-statistics update of ``nn.BatchNorm2d``: ``mean``, ``var`` (biased)
        ``(C,)`` over ``count`` values per channel."""
        running_mean = self.running_mean
        running_var = self.running_var
        tracked = self.num_batches_tracked
        assert running_mean is not None and running_var is not None and tracked is not None, (
            "track_running_stats=True must come with running buffers"
        )
        tracked.add_(1)
        momentum = self.momentum
        factor = 1.0 / float(tracked.item()) if momentum is None else momentum
        unbiased = var * (count / (count - 1))
        running_mean.mul_(1.0 - factor).add_(mean, alpha=factor)
        running_var.mul_(1.0 - factor).add_(unbiased, alpha=factor)

    def fold(self, weight: torch.Tensor, bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Fold this batch norm, with its running statistics, into the conv before it.

        ``bn(conv(x)) = conv'(x)`` with ``w' = w * s`` and ``b' = (b - mean) * s + beta``,
        ``s = gamma / sqrt(running_var + eps)``: one pass over the output instead of two.

        Args:
            weight: ``(C_out, C_in, kT, kF)`` conv weight.
            bias: ``(C_out,)`` conv bias or None.

        Returns:
            ``(weight', bias')`` with the shapes of ``weight`` and ``(C_out,)``.
        """
        running_mean = self.running_mean
        running_var = self.running_var
        assert running_mean is not None and running_var is not None, "folding needs running statistics"
        scale = torch.rsqrt(running_var + self.eps)
        gamma = self.weight
        beta = self.bias
        if gamma is not None:
            scale = scale * gamma
        shift = -running_mean * scale
        if bias is not None:
            shift = shift + bias * scale
        if beta is not None:
            shift = shift + beta
        return weight * scale[:, None, None, None], shift  # (C_out,) -> (C_out, 1, 1, 1)
