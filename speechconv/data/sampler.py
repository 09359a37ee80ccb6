"""Length-bucketed batches: little padding, seeded per epoch, shardable, resumable.

Each epoch ``e``:

1. shuffle all indices with a generator seeded by ``(seed, e)``;
2. cut the shuffled order into buckets of ``bucket_size`` and sort each bucket by
   length (stable), so a batch holds utterances of similar length;
3. fill batches greedily along each sorted bucket under both limits:
   ``len(batch) <= max_batch_size`` and padded frames
   ``len(batch) * max(lengths in batch) <= max_frames`` (the padded size is what
   costs memory and compute).  An utterance longer than ``max_frames`` gets a batch
   of its own, with a warning;
4. shuffle the batch order (same generator), so long and short batches mix;
5. shard for DDP: rank ``r`` of ``R`` takes batches ``r, r + R, ...``.  When the
   number of batches is not a multiple of ``R`` the first batches are repeated to
   make it one (as ``DistributedSampler`` does), so every rank runs the same number
   of steps; without that padding the ranks partition the indices exactly.
   ``train.py trainer.ddp=true`` does not use this: every rank draws the same global
   batches (``num_replicas=1``) and takes every R-th utterance of each
   (:mod:`speechconv.training.sharding`), so N ranks make the same updates as one.

Lengths may change per epoch (digit strings are recomposed every epoch), so
``lengths`` may be a callable ``epoch -> lengths``.

Resuming: :meth:`state_dict` holds the epoch and the batches this rank has consumed;
after :meth:`load_state_dict` the next iteration yields exactly the remaining
batches of that epoch.  The sampler counts the batches it has yielded, which equals
the batches trained on only without prefetching; a trainer using DataLoader workers
(which prefetch) passes its own count: ``state_dict(batches_consumed=step_in_epoch)``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
from torch.utils.data import Sampler

Lengths = Sequence[int] | Callable[[int], Sequence[int]]


def bucket_batches(
    lengths: Sequence[int],
    max_frames: int | None,
    max_batch_size: int | None,
    bucket_size: int,
    rng: np.random.Generator | None,
) -> list[list[int]]:
    """All batches of one epoch (steps 1-4 of the module docstring), before sharding.

    ``rng=None`` keeps the index order (no shuffling of indices or batches).
    """
    lens = np.asarray(lengths, dtype=np.int64)
    order = rng.permutation(len(lens)) if rng is not None else np.arange(len(lens))
    cap_frames = max_frames if max_frames is not None else np.iinfo(np.int64).max
    cap_size = max_batch_size if max_batch_size is not None else len(lens) + 1
    batches: list[list[int]] = []
    oversize = 0
    for start in range(0, len(order), bucket_size):
        bucket = order[start : start + bucket_size]
        bucket = bucket[np.argsort(lens[bucket], kind="stable")]
        batch: list[int] = []
        longest = 0
        for idx in bucket.tolist():
            grown = max(longest, int(lens[idx]))
            if batch and (len(batch) + 1 > cap_size or (len(batch) + 1) * grown > cap_frames):
                batches.append(batch)
                batch, grown = [], int(lens[idx])
            batch.append(idx)
            longest = grown
            oversize += int(lens[idx]) > cap_frames
        if batch:
            batches.append(batch)
    if oversize:
        warnings.warn(
            f"{oversize} utterance(s) are longer than max_frames={max_frames} frames and form batches of one; "
            f"raise max_frames or drop them",
            stacklevel=3,
        )
    if rng is not None:
        batches = [batches[k] for k in rng.permutation(len(batches))]
    return batches


class LengthBucketSampler(Sampler[list[int]]):
    """Batch sampler (``DataLoader(batch_sampler=...)``) grouping utterances of similar length.

    Args:
        lengths: frames per utterance, or a callable ``epoch -> lengths``.
        max_frames: most padded frames ``B * T`` per batch (None: no limit).
        max_batch_size: most utterances per batch (None: no limit).  At least one of
            the two limits must be set.
        bucket_size: utterances per sorting bucket; larger gives less padding and less
            randomness in which utterances share a batch.
        shuffle: shuffle (seeded by ``(seed, epoch)``); False keeps index order.
        seed: the shuffling seed.
        num_replicas, rank: DDP sharding (module docstring).
    """

    def __init__(
        self,
        lengths: Lengths,
        max_frames: int | None = None,
        max_batch_size: int | None = None,
        bucket_size: int = 1000,
        shuffle: bool = True,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        if max_frames is None and max_batch_size is None:
            raise ValueError("set max_frames, max_batch_size or both; with neither the whole epoch is one batch")
        for key, value in (("max_frames", max_frames), ("max_batch_size", max_batch_size)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{key}={value!r} is invalid: expected an int >= 1 or None")
        if not isinstance(bucket_size, int) or bucket_size < 1:
            raise ValueError(f"bucket_size={bucket_size!r} is invalid: expected an int >= 1")
        if not isinstance(num_replicas, int) or num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"need num_replicas >= 1 and 0 <= rank < num_replicas, got {num_replicas}, {rank}")
        self.lengths = lengths
        self.max_frames = max_frames
        self.max_batch_size = max_batch_size
        self.bucket_size = bucket_size
        self.shuffle = shuffle
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0
        self.batches_consumed = 0
        self._resume_from = 0
        self._cache: tuple[int, list[list[int]]] | None = None

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch of the next iteration (call before each epoch)."""
        if epoch != self.epoch:
            self._resume_from = 0
        self.epoch = epoch
        self.batches_consumed = self._resume_from

    def epoch_lengths(self, epoch: int) -> Sequence[int]:
        return self.lengths(epoch) if callable(self.lengths) else self.lengths

    def global_batches(self, epoch: int) -> list[list[int]]:
        """Every rank's batches of ``epoch`` (before sharding, without the DDP padding)."""
        rng = np.random.default_rng([self.seed, epoch]) if self.shuffle else None
        return bucket_batches(self.epoch_lengths(epoch), self.max_frames, self.max_batch_size, self.bucket_size, rng)

    def rank_batches(self, epoch: int) -> list[list[int]]:
        """This rank's batches of ``epoch``, in order (cached for the current epoch)."""
        if self._cache is None or self._cache[0] != epoch:
            batches = self.global_batches(epoch)
            per_rank = -(-len(batches) // self.num_replicas)
            total = per_rank * self.num_replicas
            padded = [batches[k % len(batches)] for k in range(total)] if batches else []
            self._cache = (epoch, padded[self.rank :: self.num_replicas])
        return self._cache[1]

    def __iter__(self) -> Iterator[list[int]]:
        batches = self.rank_batches(self.epoch)
        start, self._resume_from = self._resume_from, 0
        for k in range(start, len(batches)):
            self.batches_consumed = k + 1
            yield list(batches[k])

    def __len__(self) -> int:
        """Batches the next iteration yields (fewer than an epoch's after a resume)."""
        return len(self.rank_batches(self.epoch)) - self._resume_from

    def state_dict(self, batches_consumed: int | None = None) -> dict[str, Any]:
        """``{"epoch", "batches_consumed", "seed"}``; pass ``batches_consumed`` when the loader prefetches."""
        consumed = self.batches_consumed if batches_consumed is None else batches_consumed
        return {"epoch": self.epoch, "batches_consumed": int(consumed), "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume: the next iteration yields the batches of ``state["epoch"]`` after the consumed ones."""
        if state.get("seed", self.seed) != self.seed:
            warnings.warn(
                f"resuming a sampler saved with seed {state['seed']} into one with seed {self.seed}: "
                f"the remaining batches will differ from the interrupted run",
                stacklevel=2,
            )
        self.epoch = int(state["epoch"])
        self._resume_from = int(state["batches_consumed"])
        self.batches_consumed = self._resume_from
