"""Write files so that nothing half-written is ever left on disk.

Every file speechconv writes (features, plots, statistics, checkpoints, manifests)
goes through :func:`atomic_path`: the caller writes a temporary file in the same
folder, which replaces the target with ``os.replace`` only once it is complete.  A
crash (or Ctrl-C, or a full disk) leaves the old file, or none, never a torn one.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

_UMASK = os.umask(0)
os.umask(_UMASK)  # read once, at import: os.umask can only be read by setting it
FILE_MODE = 0o666 & ~_UMASK
"""What ``open()`` would have given a new file; ``mkstemp`` makes its files 0600."""


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success move it onto ``path``.

    The temporary name ends in ``suffix`` (default: ``path``'s own) for writers that
    look at the extension, such as matplotlib's ``savefig``; it starts with a dot and
    holds ``.tmp``, so it is never taken for a finished file.  On any exception the temporary file is
    removed and the exception propagates; an unwritable folder raises ``OSError``
    naming it.
    """
    target = Path(path)
    folder = target.parent if str(target.parent) else Path(".")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp" + (suffix or target.suffix), dir=folder)
    except OSError as exc:
        raise OSError(f"cannot write into {folder}: {exc.strerror or exc}; choose a writable output folder") from exc
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
            os.fchmod(fh.fileno(), FILE_MODE)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically (UTF-8)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
