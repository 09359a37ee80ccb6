"""Padded batches made exact: per-utterance padding and a batch norm over valid frames.

A padded batch holds utterances of different lengths in one tensor.  For every
utterance to give the same frames alone and in any batch, two things must hold at
every conv layer (see :mod:`speechconv.shapes` for the length arithmetic):

1. each conv reads, for each utterance, its own frames at its own offset and zeros
   everywhere else: TF SAME padding *before* depends on the utterance's length
   (``L mod stride``), so every utterance is placed by its own amount and whatever the
   batch holds past its length is never read (:func:`pad_per_utterance`);
2. batch-norm statistics in training are taken over valid frames only
   (:class:`MaskedBatchNorm`), so padding changes nothing.

Both are plain PyTorch ops with no Python control flow on tensor values, so they run
under autograd, on every device, and trace into ``torch.export`` and ONNX graphs.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import nn


def conv_layout(rows: torch.Tensor) -> torch.Tensor:
    """``(B, T, F, C)`` contiguous -> ``(B, C, T, F)`` view for a conv, channels_last strides.

    With ``C == 1`` both layouts hold the same bytes, and the view gets the ordinary
    contiguous strides instead: on torch 2.14.1 (oneDNN) a conv whose one input channel
    has stride 1 and whose output has one frequency row returns wrong values for B > 1
    (tests/test_masking.py::test_conv_layout_avoids_onednn_single_channel_bug).
    """
    if rows.shape[3] == 1:
        return rows.squeeze(3).unsqueeze(1)  # (B, T, F, 1) -> (B, 1, T, F), contiguous strides
    return rows.permute(0, 3, 1, 2)  # (B, T, F, C) -> (B, C, T, F)


def pad_per_utterance(
    x: torch.Tensor,
    lengths: torch.Tensor,
    pad_before: torch.Tensor,
    span: int,
    freq_before: int = 0,
    freq_after: int = 0,
) -> torch.Tensor:
    """Each utterance's valid frames, placed at its own time offset in a zero buffer.

    Frame ``t`` of utterance ``b`` goes to buffer frame ``pad_before[b] + t`` for every
    ``t < lengths[b]`` that lands inside ``[0, span)``, and along frequency between
    ``freq_before`` and ``freq_after`` zero rows; everything else is zero.  A negative
    ``pad_before`` drops that many frames from the front (the streams use it to let go
    of frames they no longer need).

    One gather of ``C``-channel rows (each buffer position reads its source, clamped into
    range) times a 0/1 mask in place (six times faster than ``masked_fill_`` here); the
    backward is one ``index_add``.  So ``x`` must be finite: positions with no source
    read some frame of ``x`` and multiply it by 0 (the encoder and its streams zero
    whatever lies past each length with ``torch.where`` first).

    Args:
        x: ``(B, C, T, F)``.
        lengths: ``(B,)`` valid frames, each ``<= T``.
        pad_before: ``(B,)`` int offsets (SAME per utterance, or a constant).
        span: time size of the buffer.
        freq_before, freq_after: zero rows before and after along frequency.

    Returns:
        ``(B, C, span, freq_before + F + freq_after)`` laid out by :func:`conv_layout`
        (channels_last strides; contiguous ones for a single channel).
    """
    b_size, c_size, t_size, f_size = x.shape
    f_pad = freq_before + f_size + freq_after
    if t_size == 0:
        return conv_layout(x.new_zeros(b_size, span, f_pad, c_size))
    rows = x.permute(0, 2, 3, 1).reshape(b_size * t_size * f_size, c_size)  # (B, C, T, F) -> (B * T * F, C)
    src_t = torch.arange(span, device=x.device)[None, :] - pad_before[:, None]  # (B, span) frame read
    src_f = torch.arange(f_pad, device=x.device) - freq_before  # (F_pad,) row read
    empty = ((src_t < 0) | (src_t >= lengths[:, None]))[:, :, None] | ((src_f < 0) | (src_f >= f_size))  # (B, span, F_pad)
    frame = src_t.clamp(0, t_size - 1) + torch.arange(b_size, device=x.device)[:, None] * t_size  # (B, span)
    index = frame[:, :, None] * f_size + src_f.clamp(0, f_size - 1)  # (B, span, F_pad) row of `rows`
    buf = rows.index_select(0, index.flatten()).mul_((~empty).flatten()[:, None].to(x.dtype))  # (B * span * F_pad, C)
    return conv_layout(buf.view(b_size, span, f_pad, c_size))  # -> (B, span, F_pad, C) -> (B, C, span, F_pad)


def _all_reduce(values: torch.Tensor) -> torch.Tensor:
    """``values`` summed over the ranks of the default process group, in place."""
    dist.all_reduce(values)
    return values


def _per_frame(frames: torch.Tensor, values: torch.Tensor, dims: int) -> torch.Tensor:
    """``frames`` ``(B, T)`` (1 on valid frames) times ``values`` ``(C,)``, shaped to
    broadcast against ``(B, C, T)`` (``dims=3``) or ``(B, C, T, F)`` (``dims=4``), with the
    channels innermost in memory like a channels_last ``x``: an elementwise op on both then
    writes channels_last too (and the next conv reads it without a reorder)."""
    coefficient = (frames[:, :, None] * values).permute(0, 2, 1)  # (B, T, C) -> (B, C, T)
    return coefficient if dims == 3 else coefficient[..., None]  # (B, C, T[, 1])


def _valid_sums(grads: list[torch.Tensor], xs: list[torch.Tensor], mean: torch.Tensor,
                invstd: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sum g * (x - mean) * invstd, sum g)`` per channel over paired ``(1, C, t, ...)``
    views (the valid frames of each utterance), in float64.  Each pair is one fused pass
    of ``native_batch_norm_backward``, whose weight and bias gradients are these sums."""
    total = torch.zeros(2, mean.shape[0], dtype=torch.float64, device=mean.device)
    for g, x in zip(grads, xs, strict=True):
        sums = torch.ops.aten.native_batch_norm_backward(g, x, None, None, None, mean, invstd, True, 0.0,
                                                         [False, True, True])[1:]
        total += torch.stack(sums).double()
    return total[0], total[1]


class _MaskedNorm(torch.autograd.Function):
    """Batch norm over the valid frames of ``(B, C, T[, F])``, forward and backward.

    Statistics: the sums run over each utterance's valid frames as views (``x[b:b+1, :,
    :length]``), never over padding, in float64 across utterances and, when ``sync``,
    ranks: the mean, then ``sum (x - mean)^2 = sum x (x - mean) - mean (sum x - n mean)``,
    with ``sum x (x - mean)`` from the fused pass the backward uses and ``sum x`` summed in
    float64 (so the correction does not cancel the variance away when the mean is large).
    Output: one ``addcmul`` of ``x`` with a per-frame scale and shift that are zero on
    padding.  The output is the only batch-sized tensor made: on CPU a fresh one costs
    about as much as the pass that fills it (``bench/encoder.py``).

    Backward, for ``g = dL/dout``: with ``xhat = (x - mean) * invstd`` and ``a = weight *
    invstd``, ``dL/dx = a * (g - sum(g) / n - xhat * sum(g * xhat) / n)`` on valid frames
    and 0 on padding, the sums over a channel's ``n`` valid values (per-utterance views
    again); then two ``addcmul`` with per-frame coefficients.
    """

    @staticmethod
    def forward(ctx, x, lengths, frames, weight, bias, eps, sync):  # noqa: ANN001, ANN205
        # x (B, C, T[, F]); lengths: B Python ints; frames (B, T) float, 1 on valid frames
        views = [x[b : b + 1, :, :n] for b, n in enumerate(lengths) if n > 0]  # (1, C, n[, F]) each
        local_count = sum(lengths) * math.prod(x.shape[3:])
        local_sum = sum((view.sum([d for d in range(view.dim()) if d != 1], dtype=torch.float64) for view in views),
                        torch.zeros(x.shape[1], dtype=torch.float64, device=x.device))  # (C,) sum x
        head = torch.cat([local_sum, local_sum.new_full((1,), local_count)])  # (C + 1,): sum x per channel, count
        if sync:
            _all_reduce(head)
        count = float(head[-1])
        if count <= 1:
            raise ValueError(
                f"MaskedBatchNorm needs more than 1 valid value per channel in training, got {int(count)} "
                "(valid frames x frequency rows); use longer utterances or a larger batch"
            )
        mean = (head[:-1] / count).to(x.dtype)
        # sum (x - mean)^2 = sum x (x - mean) - mean sum (x - mean), the last from float64 sums
        sum_xc = _valid_sums(views, views, mean, torch.ones_like(mean))[0]
        square = sum_xc - mean.double() * (local_sum - local_count * mean.double())
        if sync:
            _all_reduce(square)
        var = (square / count).to(x.dtype)
        invstd = torch.rsqrt(var + eps)
        scale = invstd if weight is None else invstd * weight
        shift = -mean * scale if bias is None else bias - mean * scale
        out = torch.addcmul(_per_frame(frames, shift, x.dim()), x, _per_frame(frames, scale, x.dim()))
        ctx.save_for_backward(x, frames, weight, mean, invstd)
        ctx.lengths, ctx.count, ctx.sync = lengths, count, sync
        ctx.mark_non_differentiable(mean, var)
        return out, mean, var, count

    @staticmethod
    def backward(ctx, grad, _grad_mean, _grad_var, _grad_count):  # noqa: ANN001, ANN205
        x, frames, weight, mean, invstd = ctx.saved_tensors
        valid = [(b, n) for b, n in enumerate(ctx.lengths) if n > 0]
        sum_gx, sum_g = _valid_sums([grad[b : b + 1, :, :n] for b, n in valid],
                                    [x[b : b + 1, :, :n] for b, n in valid], mean, invstd)
        # The parameters' gradients are this rank's sums (DDP adds them over ranks); x's
        # gradient needs the sums over every rank's frames, as the statistics did.
        grad_weight, grad_bias = sum_gx.to(x.dtype), sum_g.to(x.dtype)
        if ctx.sync:
            sum_gx, sum_g = _all_reduce(torch.stack([sum_gx, sum_g])).unbind()
        sum_gx, sum_g = sum_gx.to(x.dtype), sum_g.to(x.dtype)
        a = invstd if weight is None else invstd * weight
        k = -a * invstd * sum_gx / ctx.count  # times (x - mean)
        c = -a * sum_g / ctx.count  # constant
        grad_x = torch.addcmul(_per_frame(frames, c - k * mean, x.dim()), x, _per_frame(frames, k, x.dim()))
        grad_x.addcmul_(grad, _per_frame(frames, a, x.dim()))  # zero on padding frames
        need = ctx.needs_input_grad
        return (grad_x if need[0] else None, None, None,
                grad_weight if weight is not None and need[3] else None,
                grad_bias if need[4] else None, None, None)


class MaskedBatchNorm(nn.modules.batchnorm._BatchNorm):
    """``nn.BatchNorm`` over ``(B, C, T, ...)`` whose statistics cover valid frames only.

    In training, mean and (biased) variance per channel are taken over every valid
    ``(b, t)`` and all positions of the trailing axes (the frequency rows of a conv
    output), so an utterance's output does not depend on how much padding its batch
    carries; the running statistics are updated exactly as ``nn.BatchNorm2d`` does
    (``momentum``, or a cumulative average when ``momentum`` is None; the running
    variance is the unbiased one).  In eval the running statistics are used.
    Parameters and buffers have the names and shapes of ``nn.BatchNorm2d``'s, so a
    state dict loads into either.

    With ``sync = True`` (set by :func:`speechconv.training.sync_norm.sync_batch_norms`)
    and a process group, training statistics cover the valid frames of every rank: the
    per-channel sums are added over ranks in the forward pass, and the two sums of the
    backward pass too, so every rank computes what one process computes on the whole
    batch (as ``nn.SyncBatchNorm`` does).

    Training runs :class:`_MaskedNorm` (plain ops forward, the gradient written out);
    eval is one ``addcmul`` with the running statistics.  Either way the output is
    exactly zero past each length (every activation of the encoder maps 0 to 0, so it
    stays zero after them).

    Shapes:
        ``forward(x, mask)``: ``x`` ``(B, C, T)`` or ``(B, C, T, F)``; ``mask`` ``(B, T)``
        bool, True on each utterance's valid frames, which come first
        (:func:`speechconv.shapes.make_pad_mask`) -> the shape of ``x``, zero where
        ``mask`` is False.
    """

    sync: bool = False

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() not in (3, 4):
            raise ValueError(f"MaskedBatchNorm expected (B, C, T) or (B, C, T, F), got shape {list(x.shape)}")

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``x`` ``(B, C, T[, F])``, ``mask`` ``(B, T)`` bool -> the shape of ``x``."""
        self._check_input_dim(x)
        if mask.shape != x.shape[0:1] + x.shape[2:3]:
            raise ValueError(f"MaskedBatchNorm expected a mask of shape {[x.shape[0], x.shape[2]]} (B, T), "
                             f"got {list(mask.shape)}")
        frames = mask.to(x.dtype)  # (B, T)
        if self.training or not self.track_running_stats:
            syncing = self.sync and self.training and dist.is_available() and dist.is_initialized()
            lengths = mask.sum(1)
            if not torch.equal(mask, torch.arange(mask.shape[1], device=mask.device) < lengths[:, None]):
                raise ValueError("MaskedBatchNorm expected a mask whose valid frames start each utterance "
                                 "(shapes.make_pad_mask(lengths, T)); got one with gaps")
            lengths = lengths.tolist()
            out, mean, var, count = _MaskedNorm.apply(x, lengths, frames, self.weight, self.bias, self.eps, syncing)
            if self.training and self.track_running_stats:
                self._update_running(mean, var, count)
            return out
        scale = torch.rsqrt(self.running_var + self.eps)
        if self.weight is not None:
            scale = scale * self.weight
        shift = -self.running_mean * scale
        if self.bias is not None:
            shift = shift + self.bias
        return torch.addcmul(_per_frame(frames, shift, x.dim()), x, _per_frame(frames, scale, x.dim()))

    def _update_running(self, mean: torch.Tensor, var: torch.Tensor, count: float) -> None:
        """``nn.BatchNorm2d``'s update from ``(C,)`` statistics over ``count`` values per channel."""
        assert self.running_mean is not None and self.running_var is not None and self.num_batches_tracked is not None
        with torch.no_grad():
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
            self.running_mean.lerp_(mean, factor)
            self.running_var.lerp_(var * (count / (count - 1)), factor)

    def fold(self, weight: torch.Tensor, bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """This norm, with its running statistics, folded into the conv before it.

        ``bn(conv(x)) = conv'(x)`` with ``w' = w * s`` and ``b' = (b - mean) * s + beta``,
        ``s = gamma / sqrt(running_var + eps)``.

        Args:
            weight: ``(C_out, C_in, kT, kF)`` conv weight.
            bias: ``(C_out,)`` conv bias or None.

        Returns:
            ``(weight', bias')`` with the shapes of ``weight`` and ``(C_out,)``.
        """
        assert self.running_mean is not None and self.running_var is not None, "folding needs running statistics"
        scale = torch.rsqrt(self.running_var + self.eps)
        if self.weight is not None:
            scale = scale * self.weight
        shift = -self.running_mean * scale
        if bias is not None:
            shift = shift + bias * scale
        if self.bias is not None:
            shift = shift + self.bias
        return weight * scale[:, None, None, None], shift  # (C_out,) -> (C_out, 1, 1, 1)
