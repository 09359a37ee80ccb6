"""Datasets, SpecAugment and collate: items equal their parts, determinism across workers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn.utils.rnn import pad_sequence
from torch.utils.data import DataLoader

from speechconv.data import (
    Collate,
    DigitStringDataset,
    Item,
    LengthBucketSampler,
    ManifestDataset,
    Perturb,
    SpecAugment,
    collate,
    compose,
    load_fsdd,
    read_manifest,
    spec_augment,
    transcript,
    worker_init_fn,
)
from speechconv.feature_config import FeatureConfig
from speechconv.text import CharVocabulary

FIXTURES = Path(__file__).resolve().parents[1] / "data" / "fixtures"
VOCAB = CharVocabulary()


# ------------------------------------------------------------------- SpecAugment


def masked_parts(original, masked, length):
    """Changed ``(T, F)`` positions, the masked bins and the masked valid frames.

    A valid frame that is not changed on every bin is not time-masked, so its changed
    bins are exactly the frequency-masked ones (the same on every such frame).  Unless
    frequency masks cover every bin, the frames changed on every bin are then exactly
    the time-masked ones.
    """
    changed = (original != masked).all(dim=2)  # (T, F)
    full_rows = changed[:length].all(dim=1)
    partial = changed[:length][~full_rows]
    n_bins = original.shape[1]
    if len(partial):
        assert (partial == partial[0]).all(), "frequency masks differ between frames"
        bins = partial[0].nonzero().flatten().tolist()
    else:
        bins = None  # every valid frame fully masked: time masks or frequency masks cover all
    frames = full_rows.nonzero().flatten().tolist() if bins is not None and len(bins) < n_bins else None
    return changed, bins, frames


def bands(indices):
    """Contiguous runs of sorted indices."""
    runs = []
    for i in indices:
        if runs and i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    return runs


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 60), st.integers(0, 20), st.integers(0, 3), st.integers(0, 12), st.integers(0, 3),
    st.integers(0, 15), st.integers(0, 2**31),
)
def test_spec_augment_masks_bands_within_valid_frames(frames, pad, freq_masks, freq_width, time_masks, time_width, seed):
    features = torch.randn(frames + pad, 40, 3, generator=torch.Generator().manual_seed(seed))
    out = spec_augment(features, frames, freq_masks, freq_width, time_masks, time_width,
                       torch.Generator().manual_seed(seed))
    again = spec_augment(features, frames, freq_masks, freq_width, time_masks, time_width,
                         torch.Generator().manual_seed(seed))
    assert torch.equal(out, again)  # the generator alone decides the masks
    assert torch.equal(out[frames:], features[frames:])  # padding untouched
    changed, bins, frames_masked = masked_parts(features, out, frames)
    if bins is not None:
        assert len(bands(bins)) <= freq_masks and len(bins) <= freq_masks * freq_width
    if frames_masked is not None:
        assert len(bands(frames_masked)) <= time_masks and len(frames_masked) <= time_masks * time_width
        # every change lies in a masked bin or a masked valid frame
        assert all(f in bins or t in frames_masked for t, f in changed.nonzero().tolist())
    else:  # everything valid is masked, which needs masks wide enough to cover an axis
        assert time_masks * time_width >= frames or freq_masks * freq_width >= 40
    fill = features[:frames].mean(dim=(0, 1))  # the per-channel mean of the valid features
    for t, f in changed.nonzero().tolist():
        torch.testing.assert_close(out[t, f], fill)


def test_spec_augment_off_and_full():
    features = torch.randn(30, 8, 3)
    off = SpecAugment(0, 10, 0, 10)(features, 30, torch.Generator().manual_seed(0))
    assert torch.equal(off, features)
    # widths are uniform in [0, W]: across seeds some masks reach the full width
    widths = set()
    for seed in range(200):
        out = spec_augment(features, 30, 1, 4, 0, 0, torch.Generator().manual_seed(seed))
        widths.add(len(masked_parts(features, out, 30)[1] or []))
    assert widths == {0, 1, 2, 3, 4}
    with pytest.raises(ValueError, match="time_width=-1"):
        SpecAugment(time_width=-1)


# ----------------------------------------------------------------------- collate


def test_collate_pads_like_pad_sequence():
    g = torch.Generator().manual_seed(0)
    items = [
        Item(torch.randn(t, 80, 3, generator=g), torch.randint(4, 32, (u,), generator=g), f"text {t}")
        for t, u in [(17, 3), (5, 9), (30, 1)]
    ]
    batch = Collate(VOCAB.pad_id)(items)
    assert batch.features.shape == (3, 30, 80, 3) and batch.features.dtype == torch.float32
    assert batch.lengths.tolist() == [17, 5, 30] and batch.lengths.dtype == torch.int64
    assert batch.target_lengths.tolist() == [3, 9, 1] and batch.targets.dtype == torch.int64
    torch.testing.assert_close(batch.features, pad_sequence([i.features for i in items], batch_first=True))
    assert torch.equal(batch.targets, pad_sequence([i.tokens for i in items], batch_first=True,
                                                   padding_value=VOCAB.pad_id))
    assert batch.texts == ["text 17", "text 5", "text 30"]
    assert batch.to("cpu").lengths.tolist() == [17, 5, 30]
    with pytest.raises(ValueError, match="empty list"):
        collate([], 1)


# ----------------------------------------------------------------------- datasets

FEATURES = FeatureConfig()


@pytest.fixture(scope="module")
def bank():
    """The clips, once the feature module the datasets use exists (it is written in parallel)."""
    return load_fsdd(sample_rate=FEATURES.sample_rate)


def test_digit_items_are_features_of_their_plans(bank):
    data = DigitStringDataset(bank, "train", 6, FEATURES, VOCAB, seed=3)
    from speechconv.features import LogMelDeltas

    reference = LogMelDeltas(FEATURES)
    for epoch in (0, 2):
        data.set_epoch(epoch)
        lengths = data.frame_lengths(epoch)
        for i in range(len(data)):
            plan = data.plans(epoch)[i]
            item = data[i]
            expected, n = reference(compose(bank, plan))
            torch.testing.assert_close(item.features, expected)
            assert item.features.shape == (lengths[i], 80, 3) == (int(n), 80, 3)
            assert item.text == transcript(bank, plan)
            assert item.tokens.tolist() == VOCAB.encode(item.text)


def test_train_changes_per_epoch_valid_is_fixed(bank):
    train = DigitStringDataset(bank, "train", 20, FEATURES, VOCAB, seed=0)
    valid = DigitStringDataset(bank, "valid", 20, FEATURES, VOCAB, seed=0)
    assert train.plans(0) != train.plans(1)
    assert valid.plans(0) == valid.plans(5)
    assert all(bank.takes[c] < 5 for p in valid.plans(0) for c in p.clips)
    assert all(bank.takes[c] >= 5 for e in (0, 1) for p in train.plans(e) for c in p.clips)
    with pytest.raises(ValueError, match="load_fsdd\\(sample_rate=8000\\)"):
        DigitStringDataset(bank, "train", 5, FeatureConfig(sample_rate=8000, n_mels=40, n_fft=256), VOCAB)


def test_spec_augment_is_seeded_per_item_and_epoch(bank):
    aug = DigitStringDataset(bank, "train", 4, FEATURES, VOCAB, seed=1, spec_augment=SpecAugment(2, 10, 2, 10))
    plain = DigitStringDataset(bank, "train", 4, FEATURES, VOCAB, seed=1)
    first = [aug[i].features for i in range(4)]
    assert all(torch.equal(a, aug[i].features) for i, a in enumerate(first))
    assert any(not torch.equal(a, plain[i].features) for i, a in enumerate(first))


def loader_batches(dataset, workers, epochs):
    sampler = LengthBucketSampler(dataset.frame_lengths, max_frames=2000, max_batch_size=8, seed=9)
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=Collate(VOCAB.pad_id), num_workers=workers,
                        worker_init_fn=worker_init_fn)
    out = []
    for epoch in epochs:
        dataset.set_epoch(epoch)
        sampler.set_epoch(epoch)
        out.append(list(loader))
    return out


def test_perturbed_items_match_their_planned_lengths_and_differ_from_clean_ones(bank):
    speakers = ["jackson", "lucas"]
    perturbed = DigitStringDataset(bank, "train", 12, FEATURES, VOCAB, seed=2, speakers=speakers, perturb=Perturb())
    clean = DigitStringDataset(bank, "train", 12, FEATURES, VOCAB, seed=2, speakers=speakers)
    for epoch in (0, 1):
        perturbed.set_epoch(epoch)
        clean.set_epoch(epoch)
        draws = perturbed.draws(epoch)
        assert {d.speed for d in draws} == {0.9, 1.0, 1.1} and any(d.noise for d in draws)
        assert any(d.rt60 > 0 for d in draws)
        for i, n in enumerate(perturbed.frame_lengths(epoch)):
            item, plain = perturbed[i], clean[i]
            assert item.features.shape[0] == n and item.text == plain.text
            assert (n == plain.features.shape[0]) == (draws[i].speed == 1.0)
            assert not torch.equal(item.features[: min(n, plain.features.shape[0])],
                                   plain.features[: min(n, plain.features.shape[0])])
    assert perturbed.draws(0) != perturbed.draws(1)


def test_unseen_set_uses_only_the_held_out_speakers(bank):
    unseen = DigitStringDataset(bank, "unseen", 30, FEATURES, VOCAB, seed=0, speakers=["nicolas"])
    assert {bank.speakers[c] for p in unseen.plans(0) for c in p.clips} == {"nicolas"}
    assert unseen.plans(0) == unseen.plans(3)


def test_same_batches_with_0_and_2_workers(bank):
    dataset = DigitStringDataset(bank, "train", 24, FEATURES, VOCAB, seed=5, spec_augment=SpecAugment(),
                                 perturb=Perturb())
    serial = loader_batches(dataset, 0, (0, 1))
    parallel = loader_batches(dataset, 2, (0, 1))
    assert [len(e) for e in serial] == [len(e) for e in parallel]
    assert serial[0][0].texts != serial[1][0].texts or not torch.equal(serial[0][0].features,
                                                                      serial[1][0].features)
    for a_epoch, b_epoch in zip(serial, parallel, strict=True):
        for a, b in zip(a_epoch, b_epoch, strict=True):
            assert a.texts == b.texts
            for x, y in zip(a[:4], b[:4], strict=True):
                assert torch.equal(x, y)
            assert (a.lengths <= a.features.shape[1]).all()


def test_manifest_dataset(tmp_path):
    shutil.copy(FIXTURES / "english_8k.wav", tmp_path / "a.wav")
    shutil.copy(FIXTURES / "yes_1000ms.wav", tmp_path / "b.wav")
    rows = [{"audio_filepath": "a.wav", "text": "Some English, spoken."}, {"audio_filepath": "b.wav", "text": "Yes!"}]
    # other rates and containers: the header-based lengths must match the loaded audio
    rows += [{"audio_filepath": str(FIXTURES / name), "text": "x"} for name in ("198-209-0000.ogg", "french.aiff")]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    entries, problems = read_manifest(tmp_path / "m.jsonl")
    assert problems == []
    data = ManifestDataset(entries, FEATURES, VOCAB)
    assert [data[i].text for i in range(2)] == ["some english spoken", "yes"]
    assert [data[i].features.shape[0] for i in range(4)] == data.frame_lengths()
    assert data.frame_lengths()[1] == FEATURES.num_frames(16000)
    bad = [entries[0].__class__(entries[0].audio_filepath, "costs $5")]
    with pytest.raises(ValueError, match="a.wav"):
        ManifestDataset(bad, FEATURES, VOCAB)
