"""Helpers for the tests that train tiny runs in subprocesses (resume, DDP, multirun): the
tiny data, ``train.py`` / ``torchrun`` command lines, polling, and exact state comparison."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
FSDD = ROOT / "data" / "fsdd"

# 6 training strings in batches of 2: 3 batches an epoch, so 16 steps cross 5 epochs and a
# checkpoint every 2 steps lands mid-epoch as often as not.  One thread per process: the runs
# compared bit for bit must use the same kernels, and two processes share two cores.
MAX_STEPS = 16
AUGMENT_ALL_ON = ["data.augment.speeds=[0.9,1.0,1.1]", "data.augment.reverb_prob=0.5", "data.augment.noise_prob=0.5",
                  "data.augment.noise_kinds=[clip,white,pink,brown]", "data.augment.gain_db=[-10,10]",
                  "data.augment.vtlp=0.1", "data.spec_augment.freq_masks=2", "data.spec_augment.time_masks=2"]
"""Every perturbation and SpecAugment on, whatever the defaults (the runs compared bit for bit use them)."""
RUN = [*AUGMENT_ALL_ON, "data.train_size=6", "data.valid_size=3", "data.num_workers=0", "data.max_digits=2", "data.max_batch_size=2",
       f"trainer.max_steps={MAX_STEPS}", "trainer.val_every=8", "trainer.checkpoint_every=2", "trainer.log_every=1",
       "trainer.progress=false", "trainer.num_threads=1", "model.hidden=16", "model.projection=16"]
IN_PROCESS = [o for o in RUN if not o.startswith(("trainer.max_steps", "trainer.num_threads"))]
""":data:`RUN` for runs inside the pytest process, which keep its thread count (conftest)."""
COMPARED = ("step", "split", "epoch", "loss", "lr", "wer", "cer", "skipped")
"""metrics.csv columns that must match between runs (the others are timings)."""


def shared_once(tmp_path_factory, name: str, make: Callable[[Path], None]) -> Path:
    """A folder ``make`` fills once per test session, even when pytest-xdist's workers each
    ask for it (a file lock in the session's temporary folder; the others wait and reuse it)."""
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # the session's, shared by its workers
    folder = root / name
    with FileLock(str(root / f"{name}.lock")):
        if not (folder / ".done").exists():
            folder.mkdir(exist_ok=True)
            make(folder)
            (folder / ".done").touch()
    return folder


def holdout_speakers() -> list[str]:
    """The speakers ``data=digits`` holds out of training by default."""
    from speechconv.config import validate
    from train import compose

    return validate(compose()).data.holdout_speakers


def tiny_fsdd(folder: Path) -> Path:
    """Takes 0 (validation) and 5 (training) of one speaker's ten digits, and the same of the
    default held-out speakers (the unseen validation set), linked into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for speaker in ("jackson", *holdout_speakers()):
        for digit in range(10):
            for take in (0, 5):
                link = folder / f"{digit}_{speaker}_{take}.flac"
                if not link.exists():
                    link.symlink_to(FSDD / f"{digit}_{speaker}_{take}.flac")
    return folder


def in_process_config(fsdd: Path, *extra: str, max_steps: int = 6) -> Any:
    """A validated :data:`IN_PROCESS` config of ``max_steps`` on the ``fsdd`` folder, plus ``extra`` overrides."""
    from speechconv.config import validate
    from train import compose

    return validate(compose([*IN_PROCESS, f"trainer.max_steps={max_steps}", f"data.fsdd_dir={fsdd}", *extra]))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_cmd(*overrides: str) -> list[str]:
    return [sys.executable, str(ROOT / "train.py"), *overrides]


def torchrun_cmd(nproc: int, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master_addr=127.0.0.1",
            f"--master_port={free_port()}", str(ROOT / "train.py"), *overrides]


def child_env(**extra: str) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "1", **extra}


def run(cmd: list[str], cwd: Path, timeout: float = 240, **env: str) -> subprocess.CompletedProcess:
    """Run to the end; stdout and stderr together."""
    return subprocess.run(cmd, cwd=cwd, env=child_env(**env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=timeout)


def start(cmd: list[str], cwd: Path, **env: str) -> subprocess.Popen:
    """Start in a session of its own, so that :func:`stop` reaches every process it starts
    (DataLoader workers, torchrun's ranks), as a terminal's Ctrl-C does."""
    return subprocess.Popen(cmd, cwd=cwd, env=child_env(**env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)


def stop(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    """Send ``sig`` to the process group of ``proc`` (no error if it is gone)."""
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def finish(proc: subprocess.Popen, timeout: float = 240) -> str:
    """Wait for ``proc`` and return its output; kill its group if it outlives ``timeout``."""
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        stop(proc)
        if proc.poll() is None:
            proc.wait(10)
    return out


def interrupt_after_first_checkpoint(proc: subprocess.Popen, checkpoint: Path, sig: int) -> None:
    """Once ``checkpoint`` exists, freeze the run's session (SIGSTOP), queue ``sig`` and let it
    go on (SIGCONT): the run gets ``sig`` a poll interval after its first checkpoint, however
    busy the machine, and so well before its last step."""
    wait_until(checkpoint.exists, proc)
    stop(proc, signal.SIGSTOP)
    stop(proc, sig)
    stop(proc, signal.SIGCONT)


def wait_until(ready: Callable[[], bool], proc: subprocess.Popen, timeout: float = 180) -> None:
    """Poll ``ready()`` every 10 ms while ``proc`` runs; fail with its output if it ends first."""
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended (code {proc.returncode}) before the awaited file:\n{finish(proc)}")
        if time.monotonic() > deadline:
            stop(proc)
            raise AssertionError(f"no awaited file after {timeout} s:\n{finish(proc)}")
        time.sleep(0.01)


def checkpoint_step(path: Path) -> int | None:
    """The step of a complete checkpoint at ``path``, None while there is none."""
    try:
        return int(torch.load(path, weights_only=True)["step"])
    except (FileNotFoundError, RuntimeError, EOFError):
        return None


def assert_same(a: Any, b: Any, where: str = "state") -> None:
    """``a`` and ``b`` are equal bit for bit: tensors by ``torch.equal``, containers item by item."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), f"{where} differs"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), f"{where}: keys {sorted(a)} vs {sorted(b)}"
        for k in a:
            assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), f"{where}: lengths differ"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def metric_rows(folder: Path) -> list[dict]:
    """metrics.csv rows of ``folder``, the columns of :data:`COMPARED` only."""
    import csv

    with (folder / "metrics.csv").open() as fh:
        return [{k: row[k] for k in COMPARED} for row in csv.DictReader(fh)]
