"""DistributedDataParallel set-up for ``trainer.ddp=true``: one process per device, started by ``torchrun``.

``torchrun`` gives each process ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE`` and the
rendezvous address in its environment; :func:`init_distributed` reads them, joins the
process group (NCCL when ``trainer.device`` is CUDA, each rank on ``cuda:LOCAL_RANK``;
gloo on the CPU) and returns a :class:`DistContext`.  Without ``trainer.ddp`` it returns
the one-process context, whose collectives are no-ops, so the training loop has one
code path.

Who does what under DDP (see :mod:`speechconv.training.loop`):

* every rank trains on its shard of every global batch
  (:mod:`speechconv.training.sharding`), with batch-norm statistics taken over all
  ranks (:mod:`speechconv.training.sync_norm`); DDP averages the gradients;
* rank 0 alone validates, logs, draws the progress bar and plots, and writes
  checkpoints (the others wait for it at their next collective);
* every rank reads the checkpoint on resume.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from speechconv.checks import ConfigError
from speechconv.config import TrainerConfig

TIMEOUT = datetime.timedelta(minutes=30)
"""How long a rank waits at a collective: long enough for rank 0 to validate a large set alone."""

RANK_STATE_ENV = "SPEECHCONV_RANK_STATE_DIR"
"""Test hook: when set, each rank saves its final model and optimizer state to ``rank<R>.pt`` there."""


@dataclass(frozen=True)
class DistContext:
    """This process' place in the run: ``rank`` of ``world_size``, on ``device``."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    active: bool = False  # a process group was started (trainer.ddp=true)

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that validates, logs and writes files."""
        return self.rank == 0

    def all_reduce_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` over ranks in place (a no-op alone); returns it."""
        if self.active:
            dist.all_reduce(tensor)
        return tensor

    def all_gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order (pickled between processes, never from a file)."""
        if not self.active:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if not self.active:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def close(self) -> None:
        if self.active and dist.is_initialized():
            dist.destroy_process_group()


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    return int(value) if value.strip() else default


def init_distributed(trainer: TrainerConfig) -> DistContext:
    """The :class:`DistContext` of this process; joins the process group when ``trainer.ddp``.

    Raises:
        ConfigError: ``trainer.ddp=true`` outside ``torchrun`` (no ``RANK`` /
            ``MASTER_ADDR`` in the environment), or ``torchrun`` with several processes
            but ``trainer.ddp=false`` (each would train alone into the same folder), or
            CUDA asked for with fewer devices than local ranks.
    """
    world = _env_int("WORLD_SIZE", 1)
    if not trainer.ddp:
        if world > 1:
            raise ConfigError(
                f"trainer.ddp=false but this process is rank {_env_int('RANK', 0)} of WORLD_SIZE={world} "
                "(started by torchrun): every rank would train alone into the same folder; add trainer.ddp=true"
            )
        return DistContext(device=_single_device(trainer.device))
    missing = [k for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise ConfigError(
            f"trainer.ddp=true needs the environment torchrun sets ({', '.join(missing)} missing); launch with "
            "`torchrun --nproc_per_node=N train.py trainer.ddp=true` (README: several devices)"
        )
    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    if trainer.device.startswith("cuda"):
        count = torch.cuda.device_count()
        if local_rank >= count:
            raise ConfigError(
                f"trainer.device={trainer.device!r} with trainer.ddp=true puts local rank {local_rank} on "
                f"cuda:{local_rank}, but this machine has {count} CUDA device(s); use --nproc_per_node={count} or fewer"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", timeout=TIMEOUT, device_id=device)
    else:
        device = torch.device("cpu")
        dist.init_process_group("gloo", timeout=TIMEOUT)
    return DistContext(rank, dist.get_world_size(), local_rank, device, active=True)


def _single_device(name: str) -> torch.device:
    """``trainer.device`` as a torch device; CUDA asked for but absent is a user error."""
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"trainer.device={name!r} is invalid: no CUDA device here; use trainer.device=cpu")
    return torch.device(name)


def dump_rank_state(ctx: DistContext, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """The :data:`RANK_STATE_ENV` test hook: this rank's final weights, buffers and optimizer state."""
    folder = os.environ.get(RANK_STATE_ENV)
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()},
                   Path(folder) / f"rank{ctx.rank}.pt")
