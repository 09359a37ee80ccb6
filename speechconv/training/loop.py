"""The training loop of ``mode=train``: one plain function, read top to bottom.

Per step: wait for the next batch (timed as *data*), one guarded optimiser step
(:mod:`speechconv.training.step`: forward, non-finite checks, backward, clip, AdamW,
schedule; timed as *compute*), log.  Every ``val_every`` steps and at the end:
validation loss, WER/CER (the model's ``decode``) on each fixed validation set (the seen speakers'
test takes and, with ``data.holdout_speakers``, the unseen speakers) and a checkpoint
(``last.pt``; also every ``checkpoint_every`` steps); at the end the curves.  The
validation batches are computed once and kept, since the sets never change.

Determinism: torch, numpy and python are seeded from ``trainer.seed``; the data
depend only on (seed, epoch, index) (see :mod:`speechconv.data`), so the same config
and seed give the same losses on CPU.  The checkpoint holds the optimiser, schedule,
random states and the sampler position (epoch, batches consumed), so a run can resume
where it stopped (``trainer.resume=true`` or a path) and continue bit for bit.

Surviving crashes: checkpoints are written atomically and never with non-finite
weights; a non-finite loss or gradient stops the run or skips the batch
(:mod:`speechconv.training.nonfinite`); Ctrl-C or SIGTERM finishes the step, saves and
exits with ``128 + signal`` (:mod:`speechconv.training.signals`); an unwritable folder
or a full disk is one clear error (:mod:`speechconv.training.outputs`).

Scaling out: with ``trainer.ddp=true`` under ``torchrun`` each rank trains on its
shard of every global batch and rank 0 validates, logs and saves
(:mod:`speechconv.training.distributed`).
"""

from __future__ import annotations

import functools
import math
import random
import signal
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from speechconv.checks import ConfigError
from speechconv.config import Config, TrainerConfig
from speechconv.data import Batch
from speechconv.models import build_model
from speechconv.text import CharVocabulary
from speechconv.training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from speechconv.training.data import TrainData, build_train_data, loader
from speechconv.training.distributed import DistContext, dump_rank_state, init_distributed
from speechconv.training.evaluate import evaluate
from speechconv.training.logging import MetricsLogger
from speechconv.training.nonfinite import NonFiniteError, NonFiniteGuard, describe_batch
from speechconv.training.outputs import check_writable, remove_stale_temporaries, writing
from speechconv.training.plots import plot_curves
from speechconv.training.runlog import run_log, say
from speechconv.training.sharding import ShardedBatchSampler, loss_units, shard
from speechconv.training.signals import StopSignals
from speechconv.training.state import Position, nonfinite_tensors, restore, snapshot
from speechconv.training.step import Stepper, StepResult
from speechconv.training.sync_norm import sync_batch_norms


@dataclass
class TrainResult:
    """What a run produced: losses per step, validation history, files, timings; ``skipped``
    batches (``trainer.nonfinite=skip``); ``interrupted``: the signal that stopped it, if any."""

    losses: list[float] = field(default_factory=list)
    valid: list[dict] = field(default_factory=list)
    checkpoint: Path | None = None
    plots: list[Path] = field(default_factory=list)
    wall_s: float = 0.0
    data_s: float = 0.0
    compute_s: float = 0.0
    steps: int = 0
    skipped: int = 0
    interrupted: int | None = None


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


def resume_path(resume: bool | str, out_dir: Path) -> Path | None:
    """``trainer.resume``: false -> None, true -> ``out_dir/last.pt``, a string -> that path."""
    if resume is False or resume in ("false", "False", ""):
        return None
    path = out_dir / "last.pt" if resume is True or resume in ("true", "True") else Path(str(resume))
    if not path.is_file():
        raise ConfigError(f"trainer.resume={resume!r}: no checkpoint at {path}; pass an existing last.pt")
    return path


def plot_validation_features(batch: Batch, path: Path, hop_ms: float) -> Path | None:
    """The first utterance of a validation batch as a PNG (one panel per channel)."""
    try:
        from speechconv.plot import plot_features
    except ImportError:  # plots of features land with speechconv.plot; training does not depend on them
        return None
    n = int(batch.lengths[0])
    return plot_features(batch.features[0, :n].cpu(), path, hop_ms=hop_ms, title=batch.texts[0])  # (T, F, C)


def train(cfg: Config, out_dir: str | Path) -> TrainResult:
    """Train ``cfg`` into ``out_dir`` (checkpoint, metrics.csv, tensorboard/, PNGs).

    Under ``trainer.ddp=true`` (one process per device, started by torchrun) every rank
    calls this; rank 0's ``out_dir`` is used by all.
    """
    if cfg.trainer.num_threads:
        torch.set_num_threads(cfg.trainer.num_threads)
    ctx = init_distributed(cfg.trainer)
    try:
        out_dir = Path(ctx.broadcast(str(out_dir)))
        with run_log(out_dir) if ctx.is_main else nullcontext():
            return _train(cfg, out_dir, ctx)
    finally:
        ctx.close()


def _train(cfg: Config, out_dir: Path, ctx: DistContext) -> TrainResult:
    trainer, device = cfg.trainer, ctx.device
    if ctx.is_main:
        check_writable(out_dir)
        remove_stale_temporaries(out_dir)
    seed_everything(trainer.seed)
    vocab = CharVocabulary()
    data = build_train_data(cfg.data, cfg.features, vocab, trainer.seed)
    model = build_model(cfg.model, cfg.encoder, cfg.features, vocab)
    if ctx.active:
        sync_batch_norms(model)
    model = model.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=trainer.lr, weight_decay=trainer.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_lambda(s, trainer))
    at, resume_from = Position(), resume_path(trainer.resume, out_dir)
    if resume_from is not None:
        state = load_checkpoint(resume_from, map_location=device)
        try:
            at = restore(state, model, optimizer, scheduler, data.sampler, ctx)
        except (RuntimeError, ValueError, KeyError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CheckpointError(
                f"checkpoint {resume_from} does not fit this run's model or optimizer ({first}); resume with the "
                f"settings it was written with (its run folder's .hydra/config.yaml) or start a new run folder"
            ) from exc
        _say(ctx, f"resumed from {resume_from} at step {at.step} (epoch {at.epoch}, {at.consumed} batches into it)")
    elif ctx.active:
        torch.manual_seed(trainer.seed + ctx.rank)  # dropout differs per rank; the weights start equal (DDP syncs them)
    ddp_model = model
    if ctx.active:
        ddp_model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                            forward_sync_buffers=False)  # synced batch norms keep the buffers equal
    sampler = ShardedBatchSampler(data.sampler, ctx.rank, ctx.world_size) if ctx.active else data.sampler
    n_params = sum(p.numel() for p in model.parameters())
    sets = " + ".join(f"{len(v)} {k}" for k, v in data.valid.items())
    held = f" (unseen: {', '.join(sorted(set(cfg.data.holdout_speakers)))})" if "unseen" in data.valid else ""
    speakers = getattr(data.train, "speakers", None)
    held += f"; training speakers: {', '.join(speakers)}" if speakers else ""
    _say(ctx, f"model: {cfg.model.type} on a {cfg.encoder.type} encoder, {n_params:,} parameters; "
              f"{len(data.train)} training / {sets} validation utterances{held}; device {device}"
              + (f" x {ctx.world_size} ranks (DDP)" if ctx.active else ""))
    lexicon = getattr(model, "lexicon", None)
    _say(ctx, f"decoding: best CTC path through a loop of {len(lexicon.words)} words (model.lexicon)" if lexicon
         else "decoding: greedy" + (" (model.lexicon is for model.type=ctc)" if cfg.model.lexicon else ""))

    guard = NonFiniteGuard(trainer.nonfinite, trainer.max_skips, verbose=ctx.is_main)
    stepper = Stepper(model, ddp_model, optimizer, scheduler, trainer.grad_clip, guard, ctx)
    logger = MetricsLogger(out_dir, rows=at.rows, purge_step=at.step + 1 if resume_from else None) if ctx.is_main else None
    result = TrainResult(valid=list(at.valid or []))
    valid_batches: dict[str, list[Batch]] | None = None
    max_len = cfg.model.max_decode_len
    step, epoch, saved_step = at.step, at.epoch, at.step if resume_from else -1
    bar = tqdm(total=trainer.max_steps, initial=step, disable=not (trainer.progress and ctx.is_main),
               dynamic_ncols=True, unit="step")
    checkpoint = out_dir / "last.pt"

    def save(consumed: int) -> None:
        """``last.pt`` at this step; never with non-finite weights (a collective under DDP)."""
        nonlocal saved_step
        state = snapshot(cfg, vocab, model, optimizer, scheduler, data.sampler,
                         Position(step, epoch, consumed, logger.rows if logger else [], result.valid), ctx)
        bad = nonfinite_tensors(model)
        if bad:
            raise NonFiniteError(f"the weights {bad[:4]} are not finite at step {step}; {checkpoint} was not "
                                 "overwritten. Lower trainer.lr or trainer.grad_clip and resume from it")
        if logger is not None:
            logger.flush()
            kept = f"{checkpoint} (step {saved_step}) is intact" if saved_step >= 0 else "no checkpoint was written"
            with writing(checkpoint, keep=kept):
                result.checkpoint = save_checkpoint(checkpoint, state)
        saved_step = step

    stopping = False
    start = time.perf_counter()
    with StopSignals(repeat_aborts=not ctx.active) as signals:
        try:
            while step < trainer.max_steps and not stopping:
                data.train.set_epoch(epoch)
                data.sampler.set_epoch(epoch)
                consumed = data.sampler.batches_consumed  # > 0 only when resuming mid-epoch
                batches = loader(data.train, cfg.data, vocab, sampler)
                wait = time.perf_counter()
                for batch in batches:
                    got = time.perf_counter()
                    position, consumed = consumed, consumed + 1
                    where = functools.partial(_describe, data, ctx, batch, epoch, position)
                    units = loss_units(cfg.model.type, batch) if ctx.active else 1
                    out = train_step(stepper, batch.to(device), units, signals.received is not None, step + 1, where)
                    done = time.perf_counter()
                    stopping = out.stop if ctx.active else signals.received is not None  # ranks agree via out.stop
                    result.data_s += got - wait
                    result.compute_s += done - got
                    if out.updated:
                        step += 1
                        result.losses.append(out.loss)
                        lr = scheduler.get_last_lr()[0]
                        bar.set_postfix(loss=f"{out.loss:.3f}", lr=f"{lr:.2e}", refresh=False)
                        bar.update(1)
                        if logger is not None and step % trainer.log_every == 0:
                            logger.log(step, "train", epoch=epoch, loss=out.loss, lr=lr, data_ms=1000 * (got - wait),
                                       compute_ms=1000 * (done - got), elapsed_s=done - start, skipped=guard.skipped)
                        validate = step % trainer.val_every == 0 or step == trainer.max_steps
                        if validate and ctx.is_main:
                            if valid_batches is None:
                                valid_batches = {k: list(loader(v, cfg.data, vocab)) for k, v in data.valid.items()}
                                result.plots += _plot_features(valid_batches["seen"][0], out_dir,
                                                               cfg.features.hop_ms)
                            _validate(model, valid_batches, vocab, max_len, device, step, epoch, start, result,
                                      logger)
                        if validate or (trainer.checkpoint_every and step % trainer.checkpoint_every == 0):
                            save(consumed)
                    if stopping or step >= trainer.max_steps:
                        break
                    wait = time.perf_counter()
                else:
                    epoch += 1
            stopping = stopping and step < trainer.max_steps  # a signal at the last step: the run is complete
            if stopping and saved_step != step:
                save(consumed)
        except BaseException:
            bar.close()
            if logger is not None:
                logger.close(flush=False)
            raise
    bar.close()
    result.wall_s = time.perf_counter() - start
    result.steps = len(result.losses)
    result.skipped = guard.skipped
    dump_rank_state(ctx, model, optimizer)
    if stopping:
        result.interrupted = signals.received or signal.SIGINT
        if logger is not None:
            logger.close()
        _say(ctx, f"{signal.Signals(result.interrupted).name}: stopped at step {step} of {trainer.max_steps}; "
                  f"saved {checkpoint}. To continue, run the same command with trainer.resume=true "
                  f"hydra.run.dir={out_dir}")
        return result
    if logger is not None:
        logger.close()
        with writing(out_dir / "loss.png"):
            result.plots += plot_curves(logger.rows, out_dir)
        _print_summary(result, out_dir)
    return result


def train_step(stepper: Stepper, batch: Batch, units: int, stop: bool, step: int,
               where: Callable[[], str]) -> StepResult:
    """One guarded optimiser step (:class:`speechconv.training.step.Stepper`); tests replace it."""
    return stepper(batch, units, stop, step, where)


def _describe(data: TrainData, ctx: DistContext, batch: Batch, epoch: int, position: int) -> str:
    """The batch at ``position`` of ``epoch`` on this rank, for error messages."""
    indices = shard(data.sampler.rank_batches(epoch)[position], ctx.rank, ctx.world_size)
    return describe_batch(data.train, indices, batch, epoch, position)


def _say(ctx: DistContext, text: str) -> None:
    if ctx.is_main:
        say(text)


def _plot_features(batch: Batch, out_dir: Path, hop_ms: float) -> list[Path]:
    with writing(out_dir / "features.png"):
        plot = plot_validation_features(batch, out_dir / "features.png", hop_ms)
    return [plot] if plot else []


VALID_SPLITS = {"seen": "valid", "unseen": "unseen"}
"""metrics.csv ``split`` of each validation set."""


def _validate(model: nn.Module, sets: dict[str, list[Batch]], vocab: CharVocabulary, max_len: int,
              device: torch.device, step: int, epoch: int, start: float, result: TrainResult,
              logger: MetricsLogger) -> None:
    """Validation loss and WER/CER of each set (rank 0 only), logged and printed."""
    entry: dict = {"step": step}
    parts = []
    for name, batches in sets.items():
        ev = evaluate(model, batches, vocab, max_len, device)
        prefix = "" if name == "seen" else f"{name}_"
        entry.update({f"{prefix}loss": ev.loss, f"{prefix}wer": ev.wer, f"{prefix}cer": ev.cer})
        if ev.greedy_wer is not None:
            entry[f"{prefix}greedy_wer"] = ev.greedy_wer
        logger.log(step, VALID_SPLITS[name], epoch=epoch, loss=ev.loss, wer=ev.wer, cer=ev.cer,
                   elapsed_s=time.perf_counter() - start)
        greedy = "" if ev.greedy_wer is None else f"greedy WER {100 * ev.greedy_wer:.2f}%, "
        parts.append(f"{name} WER {100 * ev.wer:.2f}% CER {100 * ev.cer:.2f}% ({greedy}loss {ev.loss:.4f}, "
                     f"e.g. '{ev.rows[0]['hypothesis']}' for '{ev.rows[0]['reference']}')")
    result.valid.append(entry)
    say(f"step {step}: " + "  |  ".join(parts))


def _greedy(entry: dict, prefix: str) -> str:
    """``"  (greedy WER x%)"`` when validation also read the log-probabilities greedily."""
    value = entry.get(f"{prefix}greedy_wer")
    return "" if value is None else f"  (greedy WER {100 * value:.2f}%)"


def _print_summary(result: TrainResult, out_dir: Path) -> None:
    steps = max(result.steps, 1)
    last = result.valid[-1] if result.valid else {}
    loop_s = result.data_s + result.compute_s
    say(f"done: {result.steps} steps in {result.wall_s:.1f} s wall ({result.steps / max(result.wall_s, 1e-9):.2f} "
        f"steps/s); per step {1000 * loop_s / steps:.0f} ms = {1000 * result.data_s / steps:.0f} ms waiting for "
        f"data ({100 * result.data_s / max(loop_s, 1e-9):.1f}%) + {1000 * result.compute_s / steps:.0f} ms compute")
    if last:
        say(f"final validation, seen speakers: WER {100 * last['wer']:.2f}%  CER {100 * last['cer']:.2f}%  "
            f"loss {last['loss']:.4f}{_greedy(last, '')}")
    if "unseen_wer" in last:
        say(f"final validation, unseen speakers: WER {100 * last['unseen_wer']:.2f}%  "
            f"CER {100 * last['unseen_cer']:.2f}%  loss {last['unseen_loss']:.4f}{_greedy(last, 'unseen_')}")
    say(f"checkpoint: {result.checkpoint}")
    say(f"metrics: {out_dir / 'metrics.csv'}  tensorboard: {out_dir / 'tensorboard'}")
    say("plots: " + "  ".join(str(p) for p in result.plots))
