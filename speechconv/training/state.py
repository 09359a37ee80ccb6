"""The training state a checkpoint holds, and putting it back for ``trainer.resume``.

Layout: :mod:`speechconv.training.checkpoint`.  Under DDP every rank takes part in
:func:`snapshot` (it gathers each rank's random state), rank 0 writes the file, and
every rank reads it back in :func:`restore`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from speechconv.config import Config, config_to_dict
from speechconv.data import LengthBucketSampler
from speechconv.text import CharVocabulary
from speechconv.training.checkpoint import rng_state, set_rng_state
from speechconv.training.distributed import DistContext


@dataclass
class Position:
    """Where a run stands: optimiser steps, epoch and batches consumed in it, metric rows so far."""

    step: int = 0
    epoch: int = 0
    consumed: int = 0
    rows: list[dict] | None = None
    valid: list[dict] | None = None


def nonfinite_tensors(model: nn.Module) -> list[str]:
    """Names of the parameters and buffers of ``model`` holding a NaN or an infinity."""
    return [name for name, t in (*model.named_parameters(), *model.named_buffers())
            if t.is_floating_point() and not bool(torch.isfinite(t).all())]


def snapshot(cfg: Config, vocab: CharVocabulary, model: nn.Module, optimizer: torch.optim.Optimizer,
             scheduler: torch.optim.lr_scheduler.LRScheduler, sampler: LengthBucketSampler, at: Position,
             ctx: DistContext) -> dict[str, Any]:
    """Everything to continue exactly from ``at`` (a collective under DDP)."""
    rng = rng_state()
    state = {
        "model": model.state_dict(),
        "config": config_to_dict(cfg),
        "vocab": vocab.to_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": rng,
        "sampler": sampler.state_dict(batches_consumed=at.consumed),
        "step": at.step,
        "metrics": {"rows": list(at.rows or []), "valid": list(at.valid or [])},
    }
    if ctx.active:
        state["rank_rng"] = ctx.all_gather(rng)
    return state


def restore(state: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer,
            scheduler: torch.optim.lr_scheduler.LRScheduler, sampler: LengthBucketSampler,
            ctx: DistContext) -> Position:
    """Load a checkpoint's state into the run's objects; returns where it stood.

    The random state is this rank's when the checkpoint has one per rank for the same
    number of ranks; otherwise rank 0's, with a warning that dropout will differ from
    the interrupted run (the batches do not: they depend on the seed and position only).
    """
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    sampler.load_state_dict(state["sampler"])
    ranks = state.get("rank_rng", [state["rng"]])
    if len(ranks) != ctx.world_size:
        warnings.warn(f"resuming a run of {len(ranks)} rank(s) on {ctx.world_size}: every rank takes rank 0's "
                      "random state, so dropout will differ from an uninterrupted run", stacklevel=2)
        ranks = [ranks[0]] * ctx.world_size
    set_rng_state(ranks[ctx.rank])
    return Position(state["step"], state["sampler"]["epoch"], state["sampler"]["batches_consumed"],
                    state["metrics"]["rows"], state["metrics"].get("valid", []))
