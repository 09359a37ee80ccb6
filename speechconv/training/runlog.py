"""A run's messages: printed for the user and kept in ``train.log`` in its run folder.

:func:`say` prints one message (through ``tqdm.write``, so a progress bar on the
terminal is redrawn below it instead of being torn) and, inside :func:`run_log`,
appends it with a timestamp to ``<folder>/train.log``.  Each line is opened,
appended and closed as it is said, so a killed run's log ends at its last message and
a resumed run continues the same file.  The progress bar itself is not logged:
``metrics.csv`` has every logged step.

Hydra's own ``train.log`` is switched off (``configs/config.yaml`` sets
``hydra/job_logging: none``); this one holds what the user saw.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tqdm import tqdm

_folders: list[Path | None] = []  # innermost run_log last; None once appending to it has failed


@contextmanager
def run_log(folder: str | os.PathLike) -> Iterator[None]:
    """Keep :func:`say`'s messages in ``folder/train.log`` while inside (nesting the same folder is a no-op)."""
    folder = Path(folder)
    if _folders and _folders[-1] == folder:
        yield
        return
    _folders.append(folder)
    try:
        yield
    finally:
        _folders.pop()


def say(text: str, *, err: bool = False, echo: bool = True, log: bool = True) -> None:
    """Print ``text`` (stderr when ``err``; not at all unless ``echo``) and, when ``log``,
    append it to the open run log, if any.

    If the log cannot be written (the folder vanished, the disk is full), one warning
    says so and the run goes on printing only; writes that matter (checkpoint,
    metrics) fail with their own :class:`~speechconv.training.outputs.OutputError`.
    An error message whose log cannot be written is just printed: the error says why.
    """
    if echo:
        stream = sys.stderr if err else sys.stdout
        tqdm.write(text, file=stream)
        stream.flush()
    if not log or not _folders or _folders[-1] is None:
        return
    path = _folders[-1] / "train.log"
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    try:
        with open(path, "a", encoding="utf-8") as handle:
            handle.writelines(f"[{stamp}] {line}\n" for line in text.splitlines() or [""])
    except OSError as exc:
        _folders[-1] = None
        if not err:
            tqdm.write(f"warning: cannot append to {path} ({exc.strerror or exc}); messages go to the terminal only",
                       file=sys.stderr)
