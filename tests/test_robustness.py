"""Failures a long run meets, in-process: NaN/inf losses and gradients (stop or skip), weights
that went non-finite, unwritable folders, full disks, half-written checkpoints.

Each case runs :func:`speechconv.training.main` (what ``train.py`` calls) on a tiny run
and checks the exit code, the one-line message and what is left on disk.
"""

from __future__ import annotations

import errno
import math
import os
import re
import tempfile

import pytest
import torch
from train_helpers import checkpoint_step, metric_rows
from train_helpers import in_process_config as config

from speechconv.config import ConfigError, validate
from speechconv.models import CTCModel
from speechconv.training import loop, main
from speechconv.training.state import nonfinite_tensors
from train import compose


class _NanGrad(torch.autograd.Function):
    """Identity forward, NaN gradient."""

    @staticmethod
    def forward(ctx, x):  # noqa: ANN001, ANN205
        return x.clone()

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        return grad * float("nan")


def inject(monkeypatch, kind: str, calls: set[int]) -> None:
    """Make training forward pass number ``n in calls`` (1-based) non-finite: ``loss`` poisons
    the features (so batch-norm statistics go NaN too), ``gradient norm`` only the gradient."""
    real, seen = CTCModel.forward, []

    def forward(self, features, *rest):  # noqa: ANN001, ANN202
        if self.training:
            seen.append(1)
            if len(seen) in calls and kind == "loss":
                return real(self, features * float("nan"), *rest)
            if len(seen) in calls:
                return _NanGrad.apply(real(self, features, *rest))
        return real(self, features, *rest)

    monkeypatch.setattr(CTCModel, "forward", forward)


def model_is_finite(path) -> bool:
    state = torch.load(path, weights_only=True)
    return all(bool(torch.isfinite(t).all()) for t in state["model"].values() if t.is_floating_point())


BATCH = r"epoch 0, batch 2 of the epoch: dataset indices \[\d+, \d+\], texts \['[a-z ]+', '[a-z ]+'\], " \
        r"frames \[\d+, \d+\], target lengths \[\d+, \d+\]"


@pytest.mark.parametrize("kind", ["loss", "gradient norm"])
def test_nonfinite_stops_before_the_update_and_keeps_the_last_checkpoint(fsdd, tmp_path, monkeypatch, capsys, kind):
    inject(monkeypatch, kind, {3})
    assert main(config(fsdd), tmp_path) == 1
    err = capsys.readouterr().err
    assert re.search(rf"error: {kind} is nan at step 3 \({BATCH}\); stopped before updating the weights", err), err
    assert "trainer.nonfinite=skip" in err
    assert checkpoint_step(tmp_path / "last.pt") == 2 and model_is_finite(tmp_path / "last.pt")
    assert not list(tmp_path.glob(".*tmp*"))


@pytest.mark.parametrize("kind", ["loss", "gradient norm"])
def test_nonfinite_skip_drops_the_batch_and_counts_it(fsdd, tmp_path, monkeypatch, capsys, kind):
    inject(monkeypatch, kind, {3})
    result = loop.train(config(fsdd, "trainer.nonfinite=skip"), tmp_path)
    err = capsys.readouterr().err
    assert re.search(rf"warning: {kind} is nan at step 3 \({BATCH}\); skipped the batch \(1 skipped so far\)", err)
    assert result.steps == 6 and result.skipped == 1 and all(math.isfinite(x) for x in result.losses)
    assert checkpoint_step(tmp_path / "last.pt") == 6 and model_is_finite(tmp_path / "last.pt")
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    assert state["sampler"]["batches_consumed"] == 1 and state["sampler"]["epoch"] == 2  # 7 batches: 3 + 3 + 1
    assert [r["skipped"] for r in metric_rows(tmp_path) if r["split"] == "train"] == ["0", "0", "1", "1", "1", "1"]


def test_skips_in_a_row_past_the_cap_stop_the_run(fsdd, tmp_path, monkeypatch, capsys):
    inject(monkeypatch, "loss", {2, 3, 4})
    assert main(config(fsdd, "trainer.nonfinite=skip", "trainer.max_skips=2"), tmp_path) == 1
    err = capsys.readouterr().err
    assert "error: loss is nan at step 2" in err and "3 batches in a row had a non-finite loss" in err
    assert "trainer.max_skips=2" in err and "the model has diverged" in err


def test_non_finite_weights_are_never_saved(fsdd, tmp_path, monkeypatch, capsys):
    real = loop.train_step

    def poison_at_three(stepper, batch, units, stop, step, where):  # noqa: ANN001, ANN202
        out = real(stepper, batch, units, stop, step, where)
        if step == 3:
            with torch.no_grad():
                next(stepper.model.parameters()).fill_(float("inf"))
        return out

    monkeypatch.setattr(loop, "train_step", poison_at_three)
    assert main(config(fsdd, "trainer.checkpoint_every=1"), tmp_path) == 1
    err = capsys.readouterr().err
    assert re.search(r"error: the weights \['[\w.]+'\] are not finite at step 3; .*last\.pt was not overwritten", err)
    assert checkpoint_step(tmp_path / "last.pt") == 2 and model_is_finite(tmp_path / "last.pt")


def test_nonfinite_tensors_names_them():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    assert nonfinite_tensors(model) == []
    model[1].running_var[0] = float("nan")
    assert nonfinite_tensors(model) == ["1.running_var"]


def test_unwritable_run_folder_is_one_clear_error(fsdd, tmp_path, monkeypatch, capsys):
    afile = tmp_path / "a_file"
    afile.write_text("")
    assert main(config(fsdd), afile / "run") == 2
    assert f"error: run folder {afile / 'run'} is not writable: ENOTDIR (Not a directory)" in capsys.readouterr().err

    locked = tmp_path / "locked"
    locked.mkdir()
    if os.geteuid() != 0:
        locked.chmod(0o500)
        expected = "EACCES (Permission denied)"
    else:  # root writes through any mode: a read-only file system instead
        def read_only(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))

        monkeypatch.setattr(tempfile, "mkstemp", read_only)
        expected = "EROFS (Read-only file system)"
    try:
        assert main(config(fsdd), locked) == 2
    finally:
        locked.chmod(0o700)
    err = capsys.readouterr().err
    assert f"error: run folder {locked} is not writable: {expected}; make the folder writable or choose another " \
           "with hydra.run.dir=PATH" in err
    assert list(locked.iterdir()) == []


def _fail_on_call(real, n: int, code: int, only=lambda *a: True):  # noqa: ANN001, ANN202
    """``real`` that raises ``OSError(code)`` on its ``n``-th call for which ``only(*args)`` holds."""
    calls = []

    def wrapper(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        if only(*args):
            calls.append(1)
            if len(calls) == n:
                raise OSError(code, os.strerror(code))
        return real(*args, **kwargs)

    return wrapper


@pytest.mark.parametrize("where", ["torch.save", "os.replace"])
def test_full_disk_while_checkpointing_keeps_the_previous_checkpoint(fsdd, tmp_path, monkeypatch, capsys, where):
    if where == "torch.save":
        monkeypatch.setattr(torch, "save", _fail_on_call(torch.save, 2, errno.ENOSPC))
    else:
        monkeypatch.setattr(os, "replace", _fail_on_call(os.replace, 2, errno.ENOSPC,
                                                         lambda src, dst: str(dst).endswith("last.pt")))
    assert main(config(fsdd), tmp_path) == 2
    err = capsys.readouterr().err
    path = tmp_path / "last.pt"
    assert f"error: cannot write {path}: ENOSPC (No space left on device); {path} (step 2) is intact; " \
           "free disk space" in err
    assert checkpoint_step(path) == 2 and model_is_finite(path)
    assert not list(tmp_path.glob(".*tmp*")), "temporary files left behind"


def test_unwritable_metrics_file_is_named(fsdd, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(os, "replace", _fail_on_call(os.replace, 1, errno.EACCES,
                                                     lambda src, dst: str(dst).endswith("metrics.csv")))
    assert main(config(fsdd), tmp_path) == 2
    err = capsys.readouterr().err
    assert f"error: cannot write {tmp_path / 'metrics.csv'}: EACCES (Permission denied)" in err
    assert not (tmp_path / "last.pt").exists() and not list(tmp_path.glob(".*tmp*"))


def test_resuming_a_half_written_checkpoint_names_it(fsdd, tmp_path, capsys):
    assert main(config(fsdd, "trainer.max_steps=2"), tmp_path) == 0
    data = (tmp_path / "last.pt").read_bytes()
    (tmp_path / "last.pt").write_bytes(data[: len(data) // 3])
    capsys.readouterr()
    assert main(config(fsdd, "trainer.resume=true"), tmp_path) == 2
    assert f"error: checkpoint {tmp_path / 'last.pt'} is corrupt or half-written" in capsys.readouterr().err



def test_resuming_with_another_model_names_the_checkpoint(fsdd, tmp_path, capsys):
    """A checkpoint whose weights do not fit the configured model is a user error, not a traceback."""
    assert main(config(fsdd, "trainer.max_steps=2"), tmp_path) == 0
    capsys.readouterr()
    assert main(config(fsdd, "trainer.resume=true", "model.hidden=24"), tmp_path) == 2
    err = capsys.readouterr().err
    assert f"error: checkpoint {tmp_path / 'last.pt'} does not fit this run's model or optimizer" in err
    assert ".hydra/config.yaml" in err
@pytest.mark.parametrize(
    ("override", "key", "expected"),
    [("trainer.nonfinite=ignore", "trainer.nonfinite='ignore'", "one of ('stop', 'skip')"),
     ("trainer.max_skips=0", "trainer.max_skips=0", "an int >= 1"),
     ("trainer.checkpoint_every=-1", "trainer.checkpoint_every=-1", "an int >= 0")],
)
def test_new_trainer_settings_are_validated(override, key, expected):
    with pytest.raises(ConfigError) as err:
        validate(compose([override]))
    assert key in str(err.value) and expected in str(err.value)


def test_second_ctrl_c_during_the_save_keeps_the_previous_checkpoint(tmp_path, fsdd, monkeypatch):
    """Ctrl-C after step 3 asks for a save at step 3; a second Ctrl-C arrives while that
    checkpoint is being written (its temporary file is complete, not yet renamed): the run
    aborts, last.pt is still the complete step-2 checkpoint and no temporary file is left."""
    import signal

    from speechconv import atomic

    cfg = config(fsdd, "trainer.checkpoint_every=2", max_steps=6)
    real_step, real_fsync = loop.train_step, atomic.os.fsync
    saves = []

    def step_then_ctrl_c(stepper, batch, units, stop, step, where):
        out = real_step(stepper, batch, units, stop, step, where)
        if step == 3:
            os.kill(os.getpid(), signal.SIGINT)  # the first one: finish the step and save
        return out

    def fsync_then_ctrl_c(fd):
        real_fsync(fd)
        if os.path.basename(os.readlink(f"/proc/self/fd/{fd}")).startswith(".last.pt."):
            saves.append(fd)
            if len(saves) == 2:  # the step-3 checkpoint (the first was step 2's)
                os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(loop, "train_step", step_then_ctrl_c)
    monkeypatch.setattr(atomic.os, "fsync", fsync_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt):
        loop.train(cfg, tmp_path)
    assert len(saves) == 2, "the second Ctrl-C did not come during the step-3 save"
    assert checkpoint_step(tmp_path / "last.pt") == 2
    assert not [p.name for p in tmp_path.iterdir() if ".tmp" in p.name], "a temporary file was left"
