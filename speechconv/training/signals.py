"""Ctrl-C (SIGINT) and SIGTERM during training: finish the step, save, exit.

Inside :class:`StopSignals` the first SIGINT or SIGTERM only records itself; the
training loop looks at :attr:`StopSignals.received` after every step, writes
``last.pt`` at that step with the exact sampler position, and ends the run with exit
code ``128 + signal`` (130 for Ctrl-C, 143 for SIGTERM).  Stopping between steps,
never inside one, is what makes the checkpoint consistent: a ``KeyboardInterrupt``
raised in the middle of ``optimizer.step`` would leave half-updated weights.

A second signal aborts at once (``KeyboardInterrupt``; the previous checkpoint stays,
files are written atomically), except under DDP, where ``torchrun`` forwards the
terminal's Ctrl-C to its workers, which therefore get it twice.  DataLoader workers
ignore SIGINT and SIGTERM (:func:`speechconv.training.data.loader`), so a signal sent to
the whole process group (a terminal's Ctrl-C, a scheduler's SIGTERM) does not kill them
under the main process' feet.

Handlers are installed only in the main thread (Python's rule) and restored on exit.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopSignals:
    """Context manager: record SIGINT/SIGTERM instead of raising (module docstring).

    Args:
        repeat_aborts: a second signal raises ``KeyboardInterrupt`` (False under DDP).
    """

    def __init__(self, repeat_aborts: bool = True) -> None:
        self.repeat_aborts = repeat_aborts
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received is not None and self.repeat_aborts:
            raise KeyboardInterrupt
        if self.received is None:
            self.received = signum

    @property
    def name(self) -> str:
        """``SIGINT`` or ``SIGTERM`` (empty before a signal)."""
        return signal.Signals(self.received).name if self.received is not None else ""

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
