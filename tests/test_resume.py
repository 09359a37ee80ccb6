"""A run killed (SIGKILL) or stopped with Ctrl-C (SIGINT) and resumed with ``trainer.resume=true``
ends bit for bit where an uninterrupted run with the same seed ends (CPU, one thread), with
every perturbation (speed, reverberation, noise, gain, warping), SpecAugment and the random
composition (edge pauses, levels, synthetic voices) on.

Each interrupted run is a real ``python train.py`` subprocess in its own session; the
signal goes to the whole session (DataLoader workers included), as a terminal's does.
"""

from __future__ import annotations

import signal

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
    tiny_fsdd,
    train_cmd,
)

from speechconv.config import validate
from speechconv.training import loop
from train import compose

COMPARED_STATE = ("model", "optimizer", "scheduler", "sampler", "step", "rng")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run, in-process (same config, seed and thread count as the
    subprocesses), made once per session."""

    def train(out):
        threads = torch.get_num_threads()
        try:
            loop.train(validate(compose([*RUN, f"data.fsdd_dir={tiny_fsdd(out / 'fsdd')}"])), out / "run")
        finally:
            torch.set_num_threads(threads)

    return shared_once(tmp_path_factory, "resume_reference", train) / "run"


def test_the_compared_runs_have_every_augmentation_on(fsdd):
    data = validate(compose([*RUN, f"data.fsdd_dir={fsdd}"])).data
    on = data.augment
    assert len(on.speeds) > 1 and on.reverb_prob > 0 and on.noise_prob > 0 and on.vtlp > 0
    assert on.gain_db[1] > on.gain_db[0] and {"clip", "white"} <= set(on.noise_kinds)
    assert data.spec_augment.freq_masks > 0 and data.spec_augment.time_masks > 0
    # the composition's own draws too: edge pauses, levels, synthetic voices
    assert 0 < data.edge_pause_prob < 1 and data.edge_silence_ms[1] > 0 and data.gap_ms[1] > 0
    assert data.level_db is not None and data.level_db[1] > data.level_db[0] and data.synthetic_voices


def assert_resumed_equals_reference(out, reference):
    got, want = torch.load(out / "last.pt", weights_only=True), torch.load(reference / "last.pt", weights_only=True)
    assert got["step"] == MAX_STEPS
    for key in COMPARED_STATE:
        assert_same(got[key], want[key], key)
    assert_same(got["metrics"]["valid"], want["metrics"]["valid"], "metrics.valid")
    assert metric_rows(out) == metric_rows(reference)
    assert not list(out.glob(".*tmp*")), "temporary files left behind"


def test_sigkill_then_resume_is_bit_identical(tmp_path, fsdd, reference):
    """In the main process (data.num_workers=0); the Ctrl-C test below has a worker."""
    out = tmp_path / "run"
    args = [*RUN, f"data.fsdd_dir={fsdd}", f"hydra.run.dir={out}"]
    proc = start(train_cmd(*args), tmp_path)
    try:
        interrupt_after_first_checkpoint(proc, out / "last.pt", signal.SIGKILL)
        finish(proc)
    finally:
        stop(proc)
    killed_at = checkpoint_step(out / "last.pt")
    assert proc.returncode == -signal.SIGKILL
    assert killed_at is not None and 0 < killed_at < MAX_STEPS, f"the kill came after the run ended ({killed_at})"

    resumed = run(train_cmd(*args, "trainer.resume=true"), tmp_path)
    assert resumed.returncode == 0, resumed.stdout
    assert f"resumed from {out / 'last.pt'} at step {killed_at}" in resumed.stdout
    assert_resumed_equals_reference(out, reference)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl_c", "sigterm"])
def test_stop_signal_saves_at_the_current_step_and_resume_finishes(tmp_path, fsdd, reference, sig):
    out = tmp_path / "run"
    args = [*RUN, f"data.fsdd_dir={fsdd}", "data.num_workers=1", f"hydra.run.dir={out}"]
    proc = start(train_cmd(*args), tmp_path)
    try:
        interrupt_after_first_checkpoint(proc, out / "last.pt", sig)  # worker included, as a terminal's
        printed = finish(proc)
    finally:
        stop(proc)
    assert proc.returncode == 128 + sig, printed  # 130 for Ctrl-C, 143 for SIGTERM
    assert "Traceback" not in printed, printed
    step = checkpoint_step(out / "last.pt")
    assert step is not None and 0 < step < MAX_STEPS
    assert f"{sig.name}: stopped at step {step} of {MAX_STEPS}; saved {out / 'last.pt'}" in printed
    assert f"trainer.resume=true hydra.run.dir={out}" in printed
    # the checkpoint is at the step it stopped at, not the last periodic one, with the rows up to it
    assert [int(r["step"]) for r in metric_rows(out) if r["split"] == "train"] == list(range(1, step + 1))
    assert not list(out.glob(".*tmp*")), "temporary files left behind"

    resumed = run(train_cmd(*args, "trainer.resume=true"), tmp_path)
    assert resumed.returncode == 0, resumed.stdout
    assert_resumed_equals_reference(out, reference)
