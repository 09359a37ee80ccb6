"""Batch norm whose training statistics cover every DDP rank's valid frames.

Under DDP each rank sees only its shard of the global batch; batch norm with per-rank
statistics would normalise each shard by its own mean and variance, so the result
would depend on the number of ranks.  ``torch.nn.SyncBatchNorm`` needs a GPU and has
no masking.  :class:`speechconv.masking.MaskedBatchNorm` syncs itself when its
``sync`` flag is set: its per-channel sums are added over ranks with
``torch.distributed.all_reduce`` in the forward pass, and the two sums its gradient
needs in the backward pass, as ``nn.SyncBatchNorm`` does; that is what one process
computes on the concatenated global batch, up to the order of float sums, and the
running statistics stay identical on every rank."""

from __future__ import annotations

import warnings

from torch import nn

from speechconv.masking import MaskedBatchNorm


def sync_batch_norms(model: nn.Module) -> int:
    """Make every :class:`speechconv.masking.MaskedBatchNorm` of ``model`` sync over the
    ranks of the default process group in training, in place; returns how many.  Warns
    about other batch norms (their statistics stay per rank)."""
    synced = 0
    for module in model.modules():
        if isinstance(module, MaskedBatchNorm):
            module.sync = True
            synced += 1
    others = [type(m).__name__ for m in model.modules()
              if isinstance(m, nn.modules.batchnorm._BatchNorm) and not isinstance(m, MaskedBatchNorm)]
    if others:
        warnings.warn(f"{len(others)} batch norm(s) of types {sorted(set(others))} keep per-rank statistics under DDP",
                      stacklevel=2)
    return synced
