"""How a global batch is split over DDP ranks, and how each rank's loss is weighted.

The length-bucketed sampler (:class:`speechconv.data.LengthBucketSampler`, built with
one replica) makes the same global batches on every rank: ``data.batch_frames`` and
``data.max_batch_size`` bound the *global* batch, whatever the number of ranks.  Rank
``r`` of ``R`` takes utterances ``r, r + R, ...`` of each global batch (which is sorted
by length, so every rank gets a similar mix of lengths and about ``1/R`` of its padded
frames); a global batch of fewer than ``R`` utterances goes whole to every rank.  So a
run on ``R`` devices steps through exactly the batches of a one-process run with the
same config and seed, and the sampler position saved in checkpoints is the same on
every rank (resume works with any number of ranks).  To keep each device as busy as
one process was, raise ``data.batch_frames`` and ``data.max_batch_size`` ``R``-fold
(which changes the batches: a different recipe).

Each rank's loss is a mean over its shard's *units* (utterances for CTC, whose loss is
the batch mean of per-utterance losses; scored tokens for seq2seq, ``U_b + 1`` per
utterance).  With ``n_r`` units on rank ``r`` and ``N = sum_r n_r``, rank ``r``
back-propagates ``loss_r * n_r * R / N``; DDP averages gradients over ``R`` ranks, so
the update is the gradient of ``sum_r loss_r * n_r / N``: the loss of the whole global
batch, as one process computes it (up to the order of float sums).  A batch given
whole to every rank has ``n_r = N / R``: weight 1, the same loss on every rank.
"""

from __future__ import annotations

from collections.abc import Iterator

from torch.utils.data import Sampler

from speechconv.data import Batch, LengthBucketSampler


def shard(batch: list[int], rank: int, world_size: int) -> list[int]:
    """Rank ``rank``'s utterances of one global batch (module docstring)."""
    return list(batch) if len(batch) < world_size else batch[rank::world_size]


class ShardedBatchSampler(Sampler[list[int]]):
    """This rank's shard of every batch of ``sampler`` (which yields the global batches).

    Epochs, positions and resuming stay with ``sampler``: call its ``set_epoch``,
    ``state_dict`` and ``load_state_dict``.
    """

    def __init__(self, sampler: LengthBucketSampler, rank: int, world_size: int) -> None:
        assert sampler.num_replicas == 1, "the inner sampler must yield global batches (num_replicas=1)"
        assert 0 <= rank < world_size, f"rank {rank} outside a world of {world_size}"
        self.sampler = sampler
        self.rank = rank
        self.world_size = world_size

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.sampler:
            yield shard(batch, self.rank, self.world_size)

    def __len__(self) -> int:
        return len(self.sampler)


def loss_units(model_type: str, batch: Batch) -> int:
    """What the model's loss averages over in ``batch``: utterances (``ctc``) or scored
    tokens (``seq2seq``: each target plus its end-of-sentence token)."""
    if model_type == "ctc":
        return len(batch.texts)
    assert model_type == "seq2seq", f"no loss units for model.type={model_type!r}"
    return int(batch.target_lengths.sum()) + len(batch.texts)
