"""The training loop of ``mode=train``: one plain function, read top to bottom.

Per step: wait for the next batch (timed as *data*), forward + backward + clip +
AdamW + schedule (timed as *compute*), log.  Every ``val_every`` steps and at the
end: validation loss, greedy WER/CER on the fixed validation set, a checkpoint
(``last.pt``) and the curves.  The validation batches are computed once and kept,
since the set never changes.

Determinism: torch, numpy and python are seeded from ``trainer.seed``; the data
depend only on (seed, epoch, index) (see :mod:`speechconv.data`), so the same config
and seed give the same losses on CPU.  The checkpoint holds the optimiser, schedule,
random states and the sampler position (epoch, batches consumed), so a run can resume
where it stopped (``trainer.resume=true`` or a path).
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from speechconv.config import Config, ConfigError, TrainerConfig, config_to_dict
from speechconv.data import Batch
from speechconv.models import build_model
from speechconv.text import CharVocabulary
from speechconv.training.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from speechconv.training.data import build_train_data, loader
from speechconv.training.evaluate import evaluate
from speechconv.training.logging import MetricsLogger
from speechconv.training.plots import plot_curves


@dataclass
class TrainResult:
    """What a run produced: losses per step, validation history, files, timings."""

    losses: list[float] = field(default_factory=list)
    valid: list[dict] = field(default_factory=list)
    checkpoint: Path | None = None
    plots: list[Path] = field(default_factory=list)
    wall_s: float = 0.0
    data_s: float = 0.0
    compute_s: float = 0.0
    steps: int = 0


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def lr_lambda(step: int, trainer: TrainerConfig) -> float:
    """Learning-rate factor at ``step`` (multiplies ``trainer.lr``).

    ``onecycle``: linear warm-up from 4 % to 100 % over ``warmup_frac * max_steps``,
    then cosine down to 0.4 % at ``max_steps`` (the shape of torch's OneCycleLR);
    ``cosine``: linear warm-up from 0 then cosine to 0; ``constant``: 1.
    """
    if trainer.schedule == "constant":
        return 1.0
    warmup = int(trainer.warmup_frac * trainer.max_steps)
    start, end = (0.04, 0.004) if trainer.schedule == "onecycle" else (0.0, 0.0)
    if step < warmup:
        return start + (1 - start) * step / warmup
    progress = (step - warmup) / max(trainer.max_steps - warmup, 1)
    return end + (1 - end) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def resolve_device(name: str) -> torch.device:
    """``trainer.device`` as a torch device; CUDA asked for but absent is a user error."""
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"trainer.device={name!r} is invalid: no CUDA device here; use trainer.device=cpu")
    return torch.device(name)


def resume_path(resume: bool | str, out_dir: Path) -> Path | None:
    """``trainer.resume``: false -> None, true -> ``out_dir/last.pt``, a string -> that path."""
    if resume is False or resume in ("false", "False", ""):
        return None
    path = out_dir / "last.pt" if resume is True or resume in ("true", "True") else Path(str(resume))
    if not path.is_file():
        raise ConfigError(f"trainer.resume={resume!r}: no checkpoint at {path}; pass an existing last.pt")
    return path


def train_step(model: nn.Module, batch: Batch, optimizer: torch.optim.Optimizer,
               scheduler: torch.optim.lr_scheduler.LRScheduler, grad_clip: float) -> float:
    """One optimiser step on ``batch`` (features ``(B, T, F, C)``); returns the loss."""
    model.train()
    optimizer.zero_grad(set_to_none=True)
    loss = model(batch.features, batch.lengths, batch.targets, batch.target_lengths)
    loss.backward()
    if grad_clip > 0:
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    scheduler.step()
    return float(loss.detach())


def plot_validation_features(batch: Batch, path: Path, hop_ms: float) -> Path | None:
    """The first utterance of a validation batch as a PNG (one panel per channel)."""
    try:
        from speechconv.plot import plot_features
    except ImportError:  # plots of features land with speechconv.plot; training does not depend on them
        return None
    n = int(batch.lengths[0])
    return plot_features(batch.features[0, :n].cpu(), path, hop_ms=hop_ms, title=batch.texts[0])  # (T, F, C)


def train(cfg: Config, out_dir: str | Path) -> TrainResult:
    """Train ``cfg`` into ``out_dir`` (checkpoint, metrics.csv, tensorboard/, PNGs)."""
    out_dir = Path(out_dir)
    trainer = cfg.trainer
    if trainer.num_threads:
        torch.set_num_threads(trainer.num_threads)
    device = resolve_device(trainer.device)
    seed_everything(trainer.seed)
    vocab = CharVocabulary()
    data = build_train_data(cfg.data, cfg.features, vocab, trainer.seed)
    model = build_model(cfg.model, cfg.encoder, cfg.features, vocab).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=trainer.lr, weight_decay=trainer.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_lambda(s, trainer))
    step, epoch, rows = 0, 0, []
    resume_from = resume_path(trainer.resume, out_dir)
    if resume_from is not None:
        state = load_checkpoint(resume_from, map_location=device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        data.sampler.load_state_dict(state["sampler"])
        set_rng_state(state["rng"])
        step, epoch, rows = state["step"], state["sampler"]["epoch"], state["metrics"]["rows"]
        print(f"resumed from {resume_from} at step {step} (epoch {epoch}, "
              f"{state['sampler']['batches_consumed']} batches into it)")
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {cfg.model.type} on a {cfg.encoder.type} encoder, {n_params:,} parameters; "
          f"{len(data.train)} training / {len(data.valid)} validation utterances; device {device}")

    logger = MetricsLogger(out_dir, rows=rows)
    result = TrainResult()
    valid_batches: list[Batch] | None = None
    max_len = cfg.model.max_decode_len
    bar = tqdm(total=trainer.max_steps, initial=step, disable=not trainer.progress, dynamic_ncols=True, unit="step")
    start = time.perf_counter()
    while step < trainer.max_steps:
        data.train.set_epoch(epoch)
        data.sampler.set_epoch(epoch)
        consumed = data.sampler.batches_consumed  # > 0 only when resuming mid-epoch
        batches = loader(data.train, cfg.data, vocab, data.sampler)
        wait = time.perf_counter()
        for batch in batches:
            got = time.perf_counter()
            loss = train_step(model, batch.to(device), optimizer, scheduler, trainer.grad_clip)
            done = time.perf_counter()
            step, consumed = step + 1, consumed + 1
            result.losses.append(loss)
            result.data_s += got - wait
            result.compute_s += done - got
            lr = scheduler.get_last_lr()[0]
            bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}", refresh=False)
            bar.update(1)
            if not math.isfinite(loss):
                raise FloatingPointError(f"loss is {loss} at step {step}; lower trainer.lr or raise trainer.grad_clip")
            if step % trainer.log_every == 0:
                logger.log(step, "train", epoch=epoch, loss=loss, lr=lr, data_ms=1000 * (got - wait),
                           compute_ms=1000 * (done - got), elapsed_s=done - start)
            if step % trainer.val_every == 0 or step == trainer.max_steps:
                if valid_batches is None:
                    valid_batches = list(loader(data.valid, cfg.data, vocab))
                    plot = plot_validation_features(valid_batches[0], out_dir / "features.png", cfg.features.hop_ms)
                    result.plots += [plot] if plot else []
                ev = evaluate(model, valid_batches, vocab, max_len, device)
                result.valid.append({"step": step, "loss": ev.loss, "wer": ev.wer, "cer": ev.cer})
                logger.log(step, "valid", epoch=epoch, loss=ev.loss, wer=ev.wer, cer=ev.cer,
                           elapsed_s=time.perf_counter() - start)
                bar.write(f"step {step}: valid loss {ev.loss:.4f}  WER {100 * ev.wer:.2f}%  CER {100 * ev.cer:.2f}%"
                          f"  e.g. '{ev.rows[0]['hypothesis']}' for '{ev.rows[0]['reference']}'")
                logger.flush()
                result.checkpoint = save_checkpoint(out_dir / "last.pt", {
                    "model": model.state_dict(),
                    "config": config_to_dict(cfg),
                    "vocab": vocab.to_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "rng": rng_state(),
                    "sampler": data.sampler.state_dict(batches_consumed=consumed),
                    "step": step,
                    "metrics": {"rows": logger.rows, "valid": result.valid},
                })
            if step >= trainer.max_steps:
                break
            wait = time.perf_counter()
        else:
            epoch += 1
    bar.close()
    result.wall_s = time.perf_counter() - start
    result.steps = len(result.losses)
    logger.close()
    result.plots += plot_curves(logger.rows, out_dir)
    _print_summary(result, out_dir)
    return result


def _print_summary(result: TrainResult, out_dir: Path) -> None:
    steps = max(result.steps, 1)
    last = result.valid[-1] if result.valid else {}
    loop_s = result.data_s + result.compute_s
    print(f"done: {result.steps} steps in {result.wall_s:.1f} s wall ({result.steps / max(result.wall_s, 1e-9):.2f} "
          f"steps/s); per step {1000 * loop_s / steps:.0f} ms = {1000 * result.data_s / steps:.0f} ms waiting for "
          f"data ({100 * result.data_s / max(loop_s, 1e-9):.1f}%) + {1000 * result.compute_s / steps:.0f} ms compute")
    if last:
        print(f"final validation: WER {100 * last['wer']:.2f}%  CER {100 * last['cer']:.2f}%  loss {last['loss']:.4f}")
    print(f"checkpoint: {result.checkpoint}")
    print(f"metrics: {out_dir / 'metrics.csv'}  tensorboard: {out_dir / 'tensorboard'}")
    print("plots: " + "  ".join(str(p) for p in result.plots))
