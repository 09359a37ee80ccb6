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
    and a process group, training statistics cover the valid frames of every rank:
    the per-channel sums are added over ranks by the functional ``all_reduce``
    (``torch.distributed._functional_collectives``, which torch 2.14 names as the
    replacement of the deprecated ``torch.distributed.nn.functional.all_reduce``), whose
    backward adds the gradients over ranks too, so the result is what one process
    computes on the whole batch.

    The statistics come from per-frame sums of ``x`` and ``x^2`` (the trailing axes
    summed first, then the valid frames), and the output is one ``addcmul`` whose
    per-frame scale and shift are zero on padding frames, so it is exactly zero past
    each length (every activation of the encoder maps 0 to 0, so it stays zero after
    them).  Plain autograd ops: autograd's backward of these sums and of the scale
    costs a few more passes over the batch than ``nn.BatchNorm2d``'s fused kernel
    (``bench/encoder.py``).

    Shapes:
        ``forward(x, mask)``: ``x`` ``(B, C, T)`` or ``(B, C, T, F)``; ``mask`` ``(B, T)``
        bool, True on valid frames -> the shape of ``x``, zero where ``mask`` is False.
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
        if self.training or not self.track_running_stats:
            rows = x.movedim(1, -1).reshape(x.shape[0], x.shape[2], -1, x.shape[1])  # (B, C, T[, F]) -> (B, T, F, C)
            mean, var = self._batch_stats(rows, mask.to(x.dtype)[:, :, None, None])  # (B, T) -> (B, T, 1, 1)
        else:
            mean, var = self.running_mean, self.running_var
        scale = torch.rsqrt(var + self.eps)
        if self.weight is not None:
            scale = scale * self.weight
        shift = -mean * scale
        if self.bias is not None:
            shift = shift + self.bias
        # Per-frame scale and shift, zero on padding frames: (B, T, 1, C), channels
        # innermost like x's channels_last memory, as (B, C, T, 1) (or (B, C, T)).
        m = mask.to(x.dtype)[:, :, None, None]  # (B, T) -> (B, T, 1, 1)
        frame_scale, frame_shift = ((m * v).movedim(-1, 1).reshape(x.shape[:3] + (1,) * (x.dim() - 3))
                                    for v in (scale, shift))
        return torch.addcmul(frame_shift, x, frame_scale)  # a new tensor in x's memory format

    def _batch_stats(self, rows: torch.Tensor, m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and biased variance ``(C,)`` over the valid frames of ``(B, T, F, C)`` rows
        (``m`` ``(B, T, 1, 1)``, 1 on valid frames), summed over ranks when syncing, and
        the running statistics updated.

        One pass: per-frame sums of ``x`` and ``x^2`` (float32, ``F`` values each) are
        added over frames in float64, and the variance is ``E[x^2] - E[x]^2`` there; its
        relative error is within float32's rounding times ``1 + mean^2 / var`` (1.8e-6 at
        a mean of 10 standard deviations, tests/test_masking.py), where two passes would
        need a batch-sized ``x - mean`` and its backward."""
        syncing = self.sync and self.training and dist.is_available() and dist.is_initialized()
        m = m.double()
        count = m.sum() * rows.shape[2]  # valid values per channel (this rank)
        # Per-frame sums of x^2: x * x.detach() has their value and half their gradient (2x),
        # which 2 * s - s.detach() restores: one product in backward, where square() takes three.
        half = (rows * rows.detach()).sum(2, keepdim=True)  # (B, T, 1, C)
        frames = torch.cat([rows.sum(2, keepdim=True), 2 * half - half.detach()], dim=3)  # (B, T, 1, 2C)
        sums = torch.cat([(frames.double() * m).sum((0, 1, 2)), count[None]])  # (2C + 1,)
        if syncing:
            from torch.distributed._functional_collectives import all_reduce  # only where torch.distributed is

            sums = all_reduce(sums, "sum", dist.group.WORLD)
        count = sums[-1].detach()
        if self.training and int(count) <= 1:
            raise ValueError(
                f"MaskedBatchNorm needs more than 1 valid value per channel in training, got {int(count)} "
                "(valid frames x frequency rows); use longer utterances or a larger batch"
            )
        mean, square = (sums[:-1] / count).chunk(2)
        mean, var = mean.to(rows.dtype), (square - mean * mean).clamp(min=0).to(rows.dtype)
        if self.training and self.track_running_stats:
            self._update_running(mean.detach(), var.detach(), count)
        return mean, var

    def _update_running(self, mean: torch.Tensor, var: torch.Tensor, count: torch.Tensor) -> None:
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
