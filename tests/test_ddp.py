"""``torchrun --nproc_per_node=2 train.py trainer.ddp=true`` on the CPU (gloo), one thread per rank.

One 2-rank run is stopped with Ctrl-C (SIGINT to torchrun and both ranks) after its first
checkpoint and resumed with ``trainer.resume=true`` to the end.  Checked: both ranks end
with identical weights, buffers and optimizer state (the ``SPEECHCONV_RANK_STATE_DIR``
hook saves each rank's); the losses of every step, before and after the resume, equal a
one-process run's on the same global batches (synced batch norm, weighted shard losses)
to float rounding, and the learning rates exactly; rank 0 alone prints and writes.  A
checkpoint moves between world sizes: the 2-rank checkpoint resumed in one process, and a
one-process checkpoint resumed on 2 ranks, end with the one-process run's final weights.
Dropout is off so that the one-process run draws no different random numbers.  (Resuming
bit for bit is checked in one process, tests/test_resume.py.)
"""

from __future__ import annotations

import math
import shutil
import signal
import warnings

import pytest
import torch
from train_helpers import (
    MAX_STEPS,
    RUN,
    assert_same,
    checkpoint_step,
    finish,
    interrupt_after_first_checkpoint,
    metric_rows,
    run,
    shared_once,
    start,
    stop,
    torchrun_cmd,
)

from speechconv import shapes
from speechconv.config import ConfigError, validate
from speechconv.training import loop
from speechconv.training.distributed import RANK_STATE_ENV
from train import compose

DDP = [*RUN, "model.dropout=0.0", "trainer.ddp=true"]
LOSS_RTOL = 1e-5
"""DDP vs one process, per step: the same sums in another order (batch-norm statistics
over two ranks, shard losses weighted and summed, gradients all-reduced), compounded over
16 AdamW steps and a resume; measured: at most 1.5e-7 relative on these runs."""


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory, fsdd):
    """The 2-rank run, Ctrl-C'd then resumed (once per session): (run folder, per-rank
    states, step of the stop, output of the stopped run, output of the resumed one)."""

    def make(folder):
        out = folder / "run"
        args = [*DDP, f"data.fsdd_dir={fsdd}", f"hydra.run.dir={out}"]
        proc = start(torchrun_cmd(2, *args), folder)
        try:
            interrupt_after_first_checkpoint(proc, out / "last.pt", signal.SIGINT)  # torchrun and both ranks
            (folder / "stopped.txt").write_text(finish(proc))
        finally:
            stop(proc)
        (folder / "step.txt").write_text(str(checkpoint_step(out / "last.pt")))
        shutil.copy(out / "last.pt", folder / "stopped.pt")  # the 2-rank checkpoint, resumed in one process below
        resumed = run(torchrun_cmd(2, *args, "trainer.resume=true"), folder, **{RANK_STATE_ENV: str(folder / "ranks")})
        (folder / "resumed.txt").write_text(resumed.stdout)
        assert resumed.returncode == 0, resumed.stdout

    folder = shared_once(tmp_path_factory, "ddp_run", make)
    step = (folder / "step.txt").read_text()
    return (folder / "run", folder / "ranks", int(step) if step != "None" else None,
            (folder / "stopped.txt").read_text(), (folder / "resumed.txt").read_text())


def test_ctrl_c_under_torchrun_saves_and_resume_finishes(ddp_run):
    out, _, step, stopped, resumed = ddp_run
    assert step is not None and 0 < step < MAX_STEPS, stopped
    assert stopped.count(f"SIGINT: stopped at step {step} of {MAX_STEPS}; saved {out / 'last.pt'}") == 1, stopped
    assert resumed.count(f"resumed from {out / 'last.pt'} at step {step}") == 1
    assert checkpoint_step(out / "last.pt") == MAX_STEPS


def test_ranks_end_with_identical_state(ddp_run):
    out, states, *_ = ddp_run
    ranks = [torch.load(states / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert_same(ranks[0], ranks[1], "rank 1 vs rank 0")  # parameters, batch-norm buffers, AdamW moments
    assert_same(torch.load(out / "last.pt", weights_only=True)["model"], ranks[0]["model"], "last.pt vs rank 0")


def _one_process(fsdd, out, *overrides, stop_after=None):
    """The DDP run's config in one process (in-process), into ``out``; with ``stop_after``
    the run is interrupted after that step (its last checkpoint is the one before)."""
    threads, real_step = torch.get_num_threads(), loop.train_step

    def interrupted(*args):
        if args[4] > stop_after:
            raise KeyboardInterrupt
        return real_step(*args)

    loop.train_step = real_step if stop_after is None else interrupted
    try:
        return loop.train(validate(compose([*DDP[:-1], f"data.fsdd_dir={fsdd}", *overrides])), out)
    finally:
        loop.train_step = real_step
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def single_run(tmp_path_factory, fsdd):
    """The one-process run on the same global batches: (its result, its folder)."""
    out = tmp_path_factory.mktemp("single")
    return _one_process(fsdd, out), out


WEIGHT_RTOL = 1e-5
"""Final weights of a run that changed its number of ranks mid-way against the one-process
run, relative to the largest weight: the same sums in another order for part of the run,
which AdamW's normalised steps amplify where a gradient is near zero (measured: 6.1e-7
from 2 ranks to one, 1.0e-7 from one to 2 ranks).  A resume that went wrong (another
batch, a lost optimizer state) moves weights by about the learning rate, 2e-3 a step."""


def _assert_weights_close(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    scale = max(float(w.abs().max()) for w in want.values() if w.is_floating_point())
    worst = max(float((got[k] - want[k]).abs().max()) for k in want if want[k].is_floating_point())
    assert worst <= WEIGHT_RTOL * scale, f"final weights differ by {worst:.2e} (largest weight {scale:.2f})"
    for k in want:
        if not want[k].is_floating_point():
            assert torch.equal(got[k], want[k]), k  # batch-norm step counters


def test_a_two_rank_checkpoint_resumes_in_one_process(ddp_run, single_run, fsdd, tmp_path):
    out, _, step, *_ = ddp_run
    folder = tmp_path / "run"
    folder.mkdir()
    shutil.copy(out.parent / "stopped.pt", folder / "last.pt")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="resuming a run of 2 rank")
        resumed = _one_process(fsdd, folder, "trainer.resume=true")
    assert len(resumed.losses) == MAX_STEPS - step
    final = torch.load(folder / "last.pt", weights_only=True)
    assert final["step"] == MAX_STEPS
    _assert_weights_close(final["model"], torch.load(single_run[1] / "last.pt", weights_only=True)["model"])


def test_a_one_process_checkpoint_resumes_on_two_ranks(single_run, fsdd, tmp_path):
    stopped = tmp_path / "stopped"
    with pytest.raises(KeyboardInterrupt):
        _one_process(fsdd, stopped, stop_after=7)
    step = checkpoint_step(stopped / "last.pt")
    assert step == 6, "the one-process run's last checkpoint before step 8 is at step 6 (checkpoint_every=2)"
    out = tmp_path / "run"
    resumed = run(torchrun_cmd(2, *DDP, f"data.fsdd_dir={fsdd}", f"hydra.run.dir={out}",
                               f"trainer.resume={stopped / 'last.pt'}"), tmp_path)
    assert resumed.returncode == 0, resumed.stdout
    assert f"resumed from {stopped / 'last.pt'} at step {step}" in resumed.stdout
    final = torch.load(out / "last.pt", weights_only=True)
    assert final["step"] == MAX_STEPS
    _assert_weights_close(final["model"], torch.load(single_run[1] / "last.pt", weights_only=True)["model"])


def test_losses_match_one_process_on_the_same_global_batches(ddp_run, single_run):
    out, *_ = ddp_run
    single, single_dir = single_run
    rows = torch.load(out / "last.pt", weights_only=True)["metrics"]["rows"]  # full floats (the CSV has 6 digits)
    losses = [r["loss"] for r in rows if r["split"] == "train"]
    assert len(losses) == len(single.losses) == MAX_STEPS and all(math.isfinite(x) for x in losses)
    worst = max(abs(a - b) / abs(b) for a, b in zip(losses, single.losses, strict=True))
    assert worst <= LOSS_RTOL, f"DDP losses differ from one process by up to {worst:.2e} (relative)"
    reference = torch.load(single_dir / "last.pt", weights_only=True)["metrics"]["rows"]
    assert [r.get("lr") for r in rows] == [r.get("lr") for r in reference]  # the schedule, resumed exactly
    valid = [r["loss"] for r in rows if r["split"] == "valid"]
    assert valid == pytest.approx([v["loss"] for v in single.valid], rel=LOSS_RTOL)


def test_rank_0_alone_prints_and_writes(ddp_run):
    out, _, _, stopped, resumed = ddp_run
    for printed in (stopped, resumed):
        assert printed.count("model: ctc on a conv encoder") == 1 and "x 2 ranks (DDP)" in printed
    assert resumed.count(f"step {MAX_STEPS}: seen WER") == 1 and resumed.count("done: ") == 1
    assert [int(r["step"]) for r in metric_rows(out) if r["split"] == "train"] == list(range(1, MAX_STEPS + 1))
    assert {p.name for p in out.iterdir()} >= {"last.pt", "metrics.csv", "tensorboard", "loss.png", "wer.png"}


def test_ddp_needs_torchrun_and_torchrun_needs_ddp(monkeypatch, fsdd, tmp_path):
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    cfg = validate(compose([*RUN, f"data.fsdd_dir={fsdd}", "trainer.ddp=true", "trainer.num_threads=0"]))
    with pytest.raises(ConfigError, match=r"trainer.ddp=true needs the environment torchrun sets .*torchrun "
                                          r"--nproc_per_node=N train.py trainer.ddp=true"):
        loop.train(cfg, tmp_path)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    cfg.trainer.ddp = False
    with pytest.raises(ConfigError, match=r"rank 1 of WORLD_SIZE=2 .* add trainer.ddp=true"):
        loop.train(cfg, tmp_path)


def test_shards_partition_each_global_batch_and_weights_recover_its_mean():
    from speechconv.data import LengthBucketSampler
    from speechconv.training.sharding import ShardedBatchSampler, shard

    lengths = [50 + (7 * i) % 90 for i in range(40)]
    inner = LengthBucketSampler(lengths, max_frames=600, max_batch_size=5, seed=3)
    shards = [list(ShardedBatchSampler(inner, r, 2)) for r in (0, 1)]
    inner.set_epoch(0)
    batches = inner.rank_batches(0)
    assert len(shards[0]) == len(shards[1]) == len(batches)
    for batch, a, b in zip(batches, *shards, strict=True):
        if len(batch) >= 2:
            assert sorted(a + b) == sorted(batch) and not set(a) & set(b) and abs(len(a) - len(b)) <= 1
        else:
            assert a == b == batch  # too small to split: whole on every rank
    assert shard([4, 9, 1], 1, 4) == [4, 9, 1] and shard([4, 9, 1, 7, 2], 1, 2) == [9, 7]
    # rank r back-propagates loss_r * n_r * R / N; DDP averages: the mean over all N units
    per_unit = torch.arange(5.0)
    parts = [per_unit[0::2], per_unit[1::2]]
    weighted = sum(p.mean() * len(p) * 2 / 5 for p in parts) / 2
    assert float(weighted) == pytest.approx(float(per_unit.mean()))


@pytest.fixture
def one_rank_group(tmp_path):
    """A one-process gloo group: the synced norms' collectives run (and sum over one rank)."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def test_synced_batch_norm_is_the_masked_one_on_one_rank(one_rank_group):
    """On one rank the all-reduces add nothing: a synced norm gives the unsynced one's
    outputs, gradients and running statistics, for conv outputs and (B, C, T) alike."""
    from speechconv.masking import MaskedBatchNorm
    from speechconv.training.sync_norm import sync_batch_norms

    torch.manual_seed(0)
    model = torch.nn.ModuleDict({"a": MaskedBatchNorm(4), "b": torch.nn.Sequential(MaskedBatchNorm(3))})
    reference = torch.nn.ModuleDict({"a": MaskedBatchNorm(4), "b": MaskedBatchNorm(3)})
    with pytest.warns(UserWarning, match=r"1 batch norm\(s\) of types \['BatchNorm1d'\] keep per-rank"):
        assert sync_batch_norms(torch.nn.ModuleList([model, torch.nn.BatchNorm1d(2)])) == 2
    assert model["a"].sync and model["b"][0].sync and not reference["a"].sync
    mask = shapes.make_pad_mask(torch.tensor([7, 3, 5]), 7)
    for x, mine, theirs in ((torch.randn(3, 4, 7, 5) * 2 + 1, model["a"], reference["a"]),
                            (torch.randn(3, 3, 7) - 1, model["b"][0], reference["b"])):
        x.requires_grad_(True)
        outs = [norm(x, mask) for norm in (mine, theirs)]
        torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-5)
        grads = [torch.autograd.grad((o * o.detach().sin()).sum(), x)[0] for o in outs]
        torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-5)
        for name, buffer in theirs.named_buffers():
            torch.testing.assert_close(mine.get_buffer(name), buffer, rtol=1e-5, atol=1e-6)
