"""Batch norm whose training statistics cover every DDP rank's valid frames.

Under DDP each rank sees only its shard of the global batch; batch norm with per-rank
statistics would normalise each shard by its own mean and variance, so the result
would depend on the number of ranks.  ``torch.nn.SyncBatchNorm`` needs a GPU and
replaces modules by plain ``SyncBatchNorm``, which lacks the masking of speechconv's
norms (:class:`speechconv.masking.MaskedBatchNorm2d`'s ``forward_lengths`` and
``forward_frames``, :class:`speechconv.layers.MaskedBatchNorm1d`'s frame mask).  The subclasses here keep
their interface, parameters and buffers (checkpoints load into either) and, in
training with a process group, take per channel

    ``N = sum_r n_r``,  ``mean = sum_r sum(x) / N``,  ``var = sum_r sum((x - mean)^2) / N``

over the valid values of all ranks (two all-reduces of ``C + 1`` and ``C`` float64
sums), then normalise and update the running statistics exactly as their parents do
(running variance ``* N / (N - 1)``).  That is what one process computes on the
concatenated global batch, up to the order of float sums, and the running statistics
stay identical on every rank.  Gradients flow back through the all-reduces (the
backward of a sum over ranks is a sum over ranks of the gradients), as in
``SyncBatchNorm``.  In eval mode, or without a process group, they are their parents.
"""

from __future__ import annotations

import warnings

import torch
import torch.distributed as dist
from torch import nn

from speechconv.layers import MaskedBatchNorm1d
from speechconv.masking import MaskedBatchNorm2d, Placement, pad_to_placement, time_mask


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks; backward: the sum over ranks of the gradients."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


def synced_moments(x: torch.Tensor, mask: torch.Tensor | None, channel: int,
                   local_count: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean and biased variance per channel over the valid values of every rank.

    Args:
        x: any shape with channels ``C`` along dim ``channel``.
        mask: float 0/1 broadcastable to ``x`` (1 on valid values), or None (all valid).
        channel: the channel dim of ``x``.
        local_count: scalar, valid values per channel on this rank.

    Returns:
        ``mean (C,)``, ``var (C,)``, ``centred`` (``x - mean``, zero where masked; the
        shape of ``x``) and ``count`` (scalar float64: valid values per channel, all ranks).
    """
    dims = [d for d in range(x.dim()) if d != channel]
    view = [-1 if d == channel else 1 for d in range(x.dim())]  # (C,) -> broadcastable to x
    valid = x if mask is None else x * mask
    sums = torch.cat([valid.sum(dims).double(), local_count.double().reshape(1)])  # (C + 1,)
    sums = _AllReduceSum.apply(sums)
    count = sums[-1].detach()
    mean = (sums[:-1] / count).to(x.dtype)  # (C,)
    centred = x - mean.view(view)
    if mask is not None:
        centred = centred * mask
    var = (_AllReduceSum.apply((centred * centred).sum(dims).double()) / count).to(x.dtype)  # (C,)
    return mean, var, centred, count


def _syncing(module: nn.Module) -> bool:
    return module.training and dist.is_available() and dist.is_initialized()


class SyncMaskedBatchNorm2d(MaskedBatchNorm2d):
    """:class:`MaskedBatchNorm2d` with statistics over all ranks in training (module docstring).

    Shapes: as the parent: ``forward(x (B, C, T, F), mask (B, 1, T, 1) | None)``,
    ``forward_lengths(x (B, C, T, F), lens)``, ``forward_frames((N, F, C))``; the
    unmasked kernel takes ``(B, C, T, F)`` or ``(N, C)``.
    """

    def forward_lengths(
        self, x: torch.Tensor, lens: list[int], relu: bool = False, place: Placement | None = None
    ) -> torch.Tensor:
        """The encoder's training path: ``x`` ``(B, C, T, F)``, ``lens`` ``B`` valid frames
        -> ``(B, C, T, F)``, ReLU applied when ``relu``, zero on padding frames; with a
        placement, that output copied into the next conv's padded buffer."""
        if not _syncing(self):
            return super().forward_lengths(x, lens, relu, place)
        m = time_mask(torch.tensor(lens, device=x.device), x.shape[2]).to(x.dtype)  # (B, 1, T, 1)
        out = self._normalise(x, m, torch.tensor(sum(lens) * x.shape[3], device=x.device))
        out = (torch.relu(out) if relu else out) * m
        return out if place is None else pad_to_placement(out, lens, place)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` ``(B, C, T, F)``, ``mask`` ``(B, 1, T, 1)`` bool or None -> ``(B, C, T, F)``."""
        if not _syncing(self) or mask is None:
            return super().forward(x, mask)
        m = mask.to(x.dtype)
        return self._normalise(x, m, m.sum() * x.shape[3])

    def _native(self, x: torch.Tensor) -> torch.Tensor:
        """Every value valid: ``(B, C, T, F)`` or ``(N, C)`` -> the same shape."""
        if not _syncing(self):
            return super()._native(x)
        return self._normalise(x, None, torch.tensor(x.numel() // x.shape[1], device=x.device))

    def _normalise(self, x: torch.Tensor, mask: torch.Tensor | None, local_count: torch.Tensor) -> torch.Tensor:
        mean, var, centred, count = synced_moments(x, mask, 1, local_count)
        if self.track_running_stats:
            self._update_running(mean.detach(), var.detach(), count)
        view = [-1 if d == 1 else 1 for d in range(x.dim())]  # (C,) -> (1, C, 1, 1) or (1, C)
        out = centred * torch.rsqrt(var + self.eps).view(view)
        if self.weight is not None and self.bias is not None:
            out = out * self.weight.view(view) + self.bias.view(view)
        return out


class SyncMaskedBatchNorm1d(MaskedBatchNorm1d):
    """:class:`MaskedBatchNorm1d` with statistics over all ranks in training (module docstring).

    Shapes: ``forward(x (B, T, D), mask (B, T) bool)`` -> ``(B, T, D)``, zero on padding.
    """

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``x``: ``(B, T, D)``, ``mask``: ``(B, T)`` -> ``(B, T, D)``."""
        if not _syncing(self):
            return super().forward(x, mask)
        m = mask.unsqueeze(-1).to(x.dtype)  # (B, T) -> (B, T, 1)
        mean, var, centred, count = synced_moments(x, m, 2, m.sum())
        if float(count) < 2:
            raise ValueError(f"masked batch norm needs at least 2 valid frames in a training batch (all ranks), "
                             f"got {int(count)}; use longer utterances or a larger batch")
        with torch.no_grad():
            self.running_mean.mul_(1.0 - self.momentum).add_(self.momentum * mean.detach())
            self.running_var.mul_(1.0 - self.momentum).add_(self.momentum * var.detach() * (count / (count - 1)))
        y = centred * torch.rsqrt(var + self.eps) * self.weight + self.bias
        return y * m


def _synced(module: nn.Module) -> nn.Module | None:
    if type(module) is MaskedBatchNorm2d:
        new: nn.Module = SyncMaskedBatchNorm2d(module.num_features, module.eps, module.momentum, module.affine,
                                               module.track_running_stats)
    elif type(module) is MaskedBatchNorm1d:
        new = SyncMaskedBatchNorm1d(module.dim, module.momentum, module.eps)
    else:
        return None
    new.load_state_dict(module.state_dict())
    return new.to(next(module.buffers()).device).train(module.training)


def sync_batch_norms(model: nn.Module) -> int:
    """Replace every masked batch norm of ``model`` by its synced subclass, in place;
    returns how many.  Warns about other batch norms (their statistics stay per rank)."""
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            new = _synced(child)
            if new is not None:
                setattr(parent, name, new)
                replaced += 1
    others = [type(m).__name__ for m in model.modules()
              if isinstance(m, nn.modules.batchnorm._BatchNorm) and not isinstance(m, SyncMaskedBatchNorm2d)]
    if others:
        warnings.warn(f"{len(others)} batch norm(s) of types {sorted(set(others))} keep per-rank statistics under DDP",
                      stacklevel=2)
    return replaced
