"""What a NaN or infinite loss or gradient norm does: stop with the step and batch named, or skip.

The training step checks the loss *before* ``backward`` and the gradient norm before
``optimizer.step``, so a non-finite value never reaches the weights, the optimizer
state or a checkpoint (``trainer.nonfinite``):

``stop``  raise :class:`NonFiniteError` naming the step, the batch's position in its
          epoch, its dataset indices, transcripts and lengths (audio paths for
          manifests); the last checkpoint on disk is the one before.
``skip``  drop the batch (no update; the step counter, the schedule and the optimizer
          do not advance), print the same description and count it; more than
          ``trainer.max_skips`` skips in a row stop the run as above.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from torch.utils.data import Dataset

from speechconv.data import Batch
from speechconv.training.runlog import say


class NonFiniteError(FloatingPointError):
    """A non-finite loss or gradient norm stopped the run; the message names the step and the batch."""


def describe_batch(dataset: Dataset, indices: Sequence[int], batch: Batch, epoch: int, position: int) -> str:
    """The batch as a user can find it: epoch, position, dataset indices, transcripts,
    frames and target lengths (and audio paths when the dataset has manifest entries)."""
    where = (f"epoch {epoch}, batch {position} of the epoch: dataset indices {list(indices)}, "
             f"texts {list(batch.texts)}, frames {batch.lengths.tolist()}, target lengths "
             f"{batch.target_lengths.tolist()}")
    entries = getattr(dataset, "entries", None)
    if entries is not None:
        where += f", audio {[str(entries[i].audio_filepath) for i in indices]}"
    return where


class NonFiniteGuard:
    """Applies ``trainer.nonfinite`` (module docstring) and counts the skipped batches.

    Args:
        policy: ``stop`` or ``skip``.
        max_skips: the most batches skipped in a row.
        verbose: print each skip (rank 0 only under DDP).
    """

    def __init__(self, policy: str, max_skips: int, verbose: bool = True) -> None:
        assert policy in ("stop", "skip"), f"trainer.nonfinite={policy!r} passed validation"
        self.policy = policy
        self.max_skips = max_skips
        self.verbose = verbose
        self.skipped = 0
        self.in_a_row = 0

    def admit(self, what: str, value: float, step: int, where: Callable[[], str]) -> bool:
        """True when ``value`` is finite; False to skip the batch; raises :class:`NonFiniteError`
        to stop.  ``step`` is the step being taken; ``where()`` describes the batch."""
        if math.isfinite(value):
            return True
        place = f"{what} is {value} at step {step} ({where()})"
        if self.policy == "stop":
            raise NonFiniteError(
                f"{place}; stopped before updating the weights (the last checkpoint is the one before). "
                "Lower trainer.lr or trainer.grad_clip, check these utterances, or set trainer.nonfinite=skip")
        self.skipped += 1
        self.in_a_row += 1
        if self.in_a_row > self.max_skips:
            raise NonFiniteError(
                f"{place}: {self.in_a_row} batches in a row had a non-finite loss or gradient "
                f"(trainer.max_skips={self.max_skips}); the model has diverged: lower trainer.lr and resume "
                "from the last checkpoint or start again")
        if self.verbose:
            say(f"warning: {place}; skipped the batch ({self.skipped} skipped so far)", err=True)
        return False

    def updated(self) -> None:
        """A step went through: the run of skips is over."""
        self.in_a_row = 0
