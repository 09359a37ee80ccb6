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

Everything here is TorchScript-scriptable.
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
    element once.  With autograd, per-utterance slices would each cost a full-size
    gradient in backward, so the buffer is one row gather from a padded copy instead
    (backward: one index_add and a slice).

    Args:
        x: ``(B, C, T, F)`` input of one conv.
        lengths: ``(B,)`` valid frames, each ``<= T``.
        pad_before: ``(B,)`` zeros before each utterance (per-utterance SAME, or a
            constant for int padding, 0 for valid).
        out_time: time size of the buffer (the span read by the conv's outputs).
        freq_before, freq_after: zeros before and after along frequency (the same for
            every utterance).

    Returns:
        ``(B, C, out_time, freq_before + F + freq_after)`` with channels_last strides.
    """
    b_size, c_size, t_size, f_size = x.shape
    f_pad = freq_before + f_size + freq_after
    if torch.is_grad_enabled() and x.requires_grad:
        # One padded copy with an extra zero frame per utterance, then one row gather:
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
    buf = conv_layout(x.new_zeros((b_size, out_time, f_pad, c_size)))  # (B, C, T, F), channels_last
    lens = torch.jit.annotate(list[int], lengths.tolist())
    offsets = torch.jit.annotate(list[int], pad_before.tolist())
    for b in range(b_size):
        n = min(lens[b], out_time - offsets[b])
        if n > 0:
            p = offsets[b]
            buf[b, :, p : p + n, freq_before : freq_before + f_size].copy_(x[b, :, :n])
    return buf


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

    Outputs on padding frames are not zero (they are ``bias`` after normalising zeros
    and garbage); callers mask them.

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
        if count <= 1:
            raise ValueError(
                f"MaskedBatchNorm2d needs more than 1 valid value per channel in training, got {count} "
                "(valid frames x frequency rows); use longer utterances or a larger batch"
            )
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

    def forward_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """Batch norm of valid frames only, packed as ``(N, F, C)`` (see
        :func:`gather_frames`) -> ``(N, F, C)``.

        The statistics are those of :meth:`forward` with a mask (every valid ``(b, t)``
        and all ``f``), computed by the native kernel on ``(N * F, C)``; the encoder uses
        this path in training."""
        n_frames, f_size, c_size = frames.shape
        count = n_frames * f_size
        if (self.training or not self.track_running_stats) and count <= 1:
            raise ValueError(
                f"MaskedBatchNorm2d needs more than 1 valid value per channel in training, got {count} "
                "(valid frames x frequency rows); use longer utterances or a larger batch"
            )
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
