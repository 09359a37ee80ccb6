"""One optimiser step, guarded against non-finite values and agreed on by every DDP rank.

Order within a step (why: :mod:`speechconv.training.nonfinite`)::

    forward -> loss                         (B, T, F, C) features of this rank's shard
    one all-reduce of [loss * units, units, stop]   (DDP only; see sharding)
    loss not finite?  -> stop or skip       (before backward: nothing touched yet)
    backward (DDP averages gradients) -> gradient norm (clipped when grad_clip > 0)
    norm not finite?  -> stop or skip       (before optimizer.step)
    optimizer.step, scheduler.step

Every rank sees the same global loss and the same averaged gradients, so they all
take the same decision; the ``stop`` entry spreads a Ctrl-C received by any rank to
all of them at the same step.  With ``trainer.nonfinite=skip`` the buffers (batch-norm
running statistics, updated by the forward pass) are put back when a batch is skipped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from speechconv.data import Batch
from speechconv.training.distributed import DistContext
from speechconv.training.nonfinite import NonFiniteGuard


@dataclass
class StepResult:
    """``loss``: mean loss of the global batch (all ranks); ``updated``: False when the
    batch was skipped; ``stop``: some rank got SIGINT/SIGTERM (stop after this step)."""

    loss: float
    updated: bool
    stop: bool


class Stepper:
    """Takes training steps of ``model`` (wrapped by ``ddp_model`` under DDP, else the same object).

    Args:
        model: the model whose parameters and buffers are updated.
        ddp_model: what the forward pass calls (``DistributedDataParallel(model)`` or ``model``).
        optimizer, scheduler: stepped once per update.
        grad_clip: gradient-norm clip (0: none; the norm is still checked).
        guard: the non-finite policy.
        ctx: the DDP context.
    """

    def __init__(self, model: nn.Module, ddp_model: nn.Module, optimizer: torch.optim.Optimizer,
                 scheduler: torch.optim.lr_scheduler.LRScheduler, grad_clip: float, guard: NonFiniteGuard,
                 ctx: DistContext) -> None:
        self.model = model
        self.ddp_model = ddp_model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.grad_clip = grad_clip
        self.guard = guard
        self.ctx = ctx
        self.params = [p for p in model.parameters() if p.requires_grad]

    def __call__(self, batch: Batch, units: int, stop: bool, step: int, where: Callable[[], str]) -> StepResult:
        """Train on ``batch`` (features ``(B, T, F, C)`` on the model's device) as step ``step``.

        ``units``: what the loss averages over in this shard (:func:`sharding.loss_units`);
        ``stop``: this process got a stop signal; ``where()`` describes the batch for errors.
        """
        self.ddp_model.train()
        self.optimizer.zero_grad(set_to_none=True)
        saved = [b.detach().clone() for b in self.model.buffers()] if self.guard.policy == "skip" else None
        loss = self.ddp_model(batch.features, batch.lengths, batch.targets, batch.target_lengths)
        if self.ctx.active:
            total = torch.stack([loss.detach().double() * units, loss.new_tensor(units, dtype=torch.float64),
                                 loss.new_tensor(float(stop), dtype=torch.float64)])
            self.ctx.all_reduce_(total)  # (3,): sum of loss * units, sum of units, ranks stopping
            value, stop = float(total[0] / total[1]), bool(total[2] > 0)
            scale = units * self.ctx.world_size / float(total[1])
        else:
            value, scale = float(loss.detach()), 1.0
        if not self.guard.admit("loss", value, step, where):
            return self._skipped(saved, value, stop)
        (loss * scale if scale != 1.0 else loss).backward()
        if self.grad_clip > 0:
            norm = nn.utils.clip_grad_norm_(self.params, self.grad_clip)
        else:
            norm = nn.utils.get_total_norm([p.grad for p in self.params if p.grad is not None])
        if not self.guard.admit("gradient norm", float(norm), step, where):
            return self._skipped(saved, value, stop)
        self.optimizer.step()
        self.scheduler.step()
        self.guard.updated()
        return StepResult(value, True, stop)

    def _skipped(self, saved: list[torch.Tensor] | None, value: float, stop: bool) -> StepResult:
        assert saved is not None, "a batch is skipped only with trainer.nonfinite=skip"
        self.optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            for buffer, old in zip(self.model.buffers(), saved, strict=True):
                buffer.copy_(old)
        return StepResult(value, False, stop)
