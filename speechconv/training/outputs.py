"""The run folder: checked writable at start-up; write failures turned into one clear error.

Every file of a run is written atomically (:mod:`speechconv.atomic`): a failed write
removes its temporary file and leaves the previous version (of ``last.pt`` above all)
as it was.  What a user needs then is the file, the reason and the fix, not a
traceback from deep inside ``torch.save``: :class:`OutputError` carries them, and
``train.py`` prints it as one line (exit code 2).
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


class OutputError(RuntimeError):
    """A file of the run could not be written; the message names it, the reason and the fix."""


class RunFolderError(OutputError):
    """The run folder itself cannot be written: nothing goes into it, not even ``train.log``."""


def reason(exc: OSError) -> str:
    """``ENOSPC (No space left on device)``, or the message when the error has no errno."""
    if exc.errno is None and isinstance(exc.__cause__, OSError):  # speechconv.atomic re-raises with the folder
        exc = exc.__cause__
    if exc.errno is not None:
        return f"{errno.errorcode.get(exc.errno, exc.errno)} ({exc.strerror or os.strerror(exc.errno)})"
    return str(exc)


def fix(exc: OSError) -> str:
    """What to do about ``exc``."""
    if exc.errno is None and isinstance(exc.__cause__, OSError):
        exc = exc.__cause__
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return "free disk space (or choose another folder with hydra.run.dir=PATH)"
    return "make the folder writable or choose another with hydra.run.dir=PATH"


def check_writable(folder: str | os.PathLike) -> None:
    """Create ``folder`` if needed and write (then remove) a small file in it.

    Raises:
        RunFolderError: naming the folder, the reason and the fix.
    """
    path = Path(folder)
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=".writable.", suffix=".tmp", dir=path)
        try:
            os.write(fd, b"speechconv")
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(name)
    except OSError as exc:
        raise RunFolderError(f"run folder {path} is not writable: {reason(exc)}; {fix(exc)}") from exc


RUN_FILES = ("last.pt", "metrics.csv", "loss.png", "wer.png", "features.png")
"""The files a training run writes atomically into its folder."""


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files a killed run left beside :data:`RUN_FILES` (a process
    killed with SIGKILL in the middle of a write cannot remove its own); returns them."""
    stale = [p for name in RUN_FILES for p in Path(folder).glob(f".{name}.*.tmp*")]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


@contextlib.contextmanager
def writing(path: str | os.PathLike, keep: str = "") -> Iterator[None]:
    """Turn an ``OSError`` raised while writing ``path`` into an :class:`OutputError`;
    ``keep`` tells what survived (e.g. the previous checkpoint)."""
    try:
        yield
    except OSError as exc:
        kept = f"; {keep}" if keep else ""
        raise OutputError(f"cannot write {path}: {reason(exc)}{kept}; {fix(exc)}") from exc
