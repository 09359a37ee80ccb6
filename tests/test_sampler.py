"""LengthBucketSampler: coverage, budgets, seeding, exact resume, DDP sharding."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from speechconv.data.sampler import LengthBucketSampler

lengths_st = st.lists(st.integers(1, 400), min_size=1, max_size=300)
params = st.fixed_dictionaries(
    {
        "max_frames": st.one_of(st.none(), st.integers(400, 3000)),
        "max_batch_size": st.one_of(st.none(), st.integers(1, 40)),
        "bucket_size": st.integers(1, 120),
        "seed": st.integers(0, 2**31),
    }
).filter(lambda p: p["max_frames"] is not None or p["max_batch_size"] is not None)


@settings(max_examples=80, deadline=None)
@given(lengths_st, params, st.integers(0, 5))
def test_every_index_once_and_budgets_hold(lengths, p, epoch):
    sampler = LengthBucketSampler(lengths, **p)
    sampler.set_epoch(epoch)
    batches = list(sampler)
    assert len(batches) == len(sampler)
    assert sorted(itertools.chain.from_iterable(batches)) == list(range(len(lengths)))
    for batch in batches:
        assert batch
        if p["max_batch_size"] is not None:
            assert len(batch) <= p["max_batch_size"]
        if p["max_frames"] is not None:
            assert len(batch) * max(lengths[i] for i in batch) <= p["max_frames"]


def test_buckets_reduce_padding():
    rng = np.random.default_rng(0)
    lengths = rng.integers(50, 500, size=2000).tolist()
    padded = {}
    for bucket in (32, 2000):  # a bucket of one batch: random batches, no sorting
        batches = list(LengthBucketSampler(lengths, max_batch_size=32, bucket_size=bucket, seed=1))
        padded[bucket] = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    assert padded[2000] < 0.7 * padded[32]  # sorting gives batches of near-equal lengths
    assert padded[2000] < 1.05 * sum(lengths)


def test_oversize_utterance_gets_its_own_batch_with_a_warning():
    with pytest.warns(UserWarning, match="longer than max_frames=100"):
        batches = list(LengthBucketSampler([10, 500, 20], max_frames=100, shuffle=False))
    assert sorted(batches) == [[0, 2], [1]]


def test_seeding():
    lengths = list(range(1, 301))
    a = LengthBucketSampler(lengths, max_frames=1000, bucket_size=50, seed=3)
    b = LengthBucketSampler(lengths, max_frames=1000, bucket_size=50, seed=3)
    assert list(a) == list(b)
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first  # a new shuffle each epoch
    assert list(LengthBucketSampler(lengths, max_frames=1000, bucket_size=50, seed=4)) != first
    no_shuffle = list(LengthBucketSampler(lengths, max_batch_size=7, shuffle=False))
    assert list(itertools.chain.from_iterable(no_shuffle)) == list(range(300))


def test_lengths_may_change_per_epoch():
    calls = []

    def lengths(epoch):
        calls.append(epoch)
        return [10 * (epoch + 1)] * 10

    sampler = LengthBucketSampler(lengths, max_frames=100)
    assert all(len(b) == 10 for b in sampler)  # 10 frames each: one batch
    sampler.set_epoch(4)
    assert all(len(b) == 2 for b in sampler)  # 50 frames each: two per batch
    assert 4 in calls


@settings(max_examples=40, deadline=None)
@given(lengths_st, st.integers(0, 3), st.data())
def test_resume_yields_exactly_the_remaining_batches(lengths, epoch, data):
    kwargs = {"max_frames": 1200, "max_batch_size": 16, "bucket_size": 64, "seed": 11}
    full = LengthBucketSampler(lengths, **kwargs)
    full.set_epoch(epoch)
    expected = list(full)
    consumed = data.draw(st.integers(0, len(expected)))

    run = LengthBucketSampler(lengths, **kwargs)
    run.set_epoch(epoch)
    it = iter(run)
    seen = [next(it) for _ in range(consumed)]
    state = run.state_dict()
    assert state == {"epoch": epoch, "batches_consumed": consumed, "seed": 11}

    resumed = LengthBucketSampler(lengths, **kwargs)
    resumed.load_state_dict(state)
    resumed.set_epoch(epoch)  # a trainer's loop calls this again: it must keep the offset
    assert len(resumed) == len(expected) - consumed
    assert seen + list(resumed) == expected
    resumed.set_epoch(epoch + 1)  # the next epoch starts from its first batch
    full.set_epoch(epoch + 1)
    assert list(resumed) == list(full)


def test_state_dict_takes_the_trainers_count():
    sampler = LengthBucketSampler(list(range(1, 100)), max_batch_size=5)
    list(sampler)  # a prefetching loader may have pulled everything
    assert sampler.state_dict(batches_consumed=3)["batches_consumed"] == 3


@settings(max_examples=40, deadline=None)
@given(lengths_st, st.integers(1, 4), st.integers(0, 3))
def test_ranks_have_equal_batches_and_cover_the_data(lengths, replicas, epoch):
    kwargs = {"max_frames": 1500, "max_batch_size": 8, "bucket_size": 50, "seed": 5}
    ranks = []
    for rank in range(replicas):
        sampler = LengthBucketSampler(lengths, num_replicas=replicas, rank=rank, **kwargs)
        sampler.set_epoch(epoch)
        ranks.append(list(sampler))
    n_global = len(LengthBucketSampler(lengths, **kwargs).global_batches(epoch))
    assert {len(r) for r in ranks} == {-(-n_global // replicas)}
    flat = [i for r in ranks for b in r for i in b]
    assert set(flat) == set(range(len(lengths)))
    if n_global % replicas == 0:  # no padding: an exact partition
        assert sorted(flat) == list(range(len(lengths)))
    else:  # padding repeats whole batches only, fewer than `replicas` of them
        padded = [b for r in ranks for b in r]
        assert len(padded) - n_global == replicas - n_global % replicas


def test_bad_settings():
    with pytest.raises(ValueError, match="set max_frames, max_batch_size or both"):
        LengthBucketSampler([1, 2])
    with pytest.raises(ValueError, match="max_frames=0"):
        LengthBucketSampler([1, 2], max_frames=0)
    with pytest.raises(ValueError, match="0 <= rank < num_replicas"):
        LengthBucketSampler([1, 2], max_batch_size=1, num_replicas=2, rank=2)
