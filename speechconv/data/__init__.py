"""Data for training: manifests, FSDD digit strings, datasets, perturbations, bucketed batches, SpecAugment.

Typical use (what ``train.py`` does)::

    bank = load_fsdd(sample_rate=features.sample_rate)          # once, before workers fork
    train = DigitStringDataset(bank, "train", 4000, features, vocab, seed=0, spec_augment=SpecAugment(),
                               speakers=["jackson", "lucas", "yweweler"], perturb=Perturb())
    sampler = LengthBucketSampler(train.frame_lengths, max_frames=8000, max_batch_size=64, seed=0)
    loader = DataLoader(train, batch_sampler=sampler, collate_fn=Collate(vocab.pad_id),
                        num_workers=1, worker_init_fn=worker_init_fn)
    for epoch in ...:
        train.set_epoch(epoch); sampler.set_epoch(epoch)
        for batch in loader: ...                                  # Batch(features, lengths, ...)
"""

from speechconv.data.augment import SpecAugment, spec_augment
from speechconv.data.collate import Batch, Collate, Item, collate
from speechconv.data.dataset import DigitStringDataset, ManifestDataset, worker_init_fn
from speechconv.data.digits import (
    DIGIT_WORDS,
    DigitStringConfig,
    DigitStringPlan,
    FsddBank,
    compose,
    default_fsdd_dir,
    eval_strings,
    load_fsdd,
    plan_epoch,
    transcript,
)
from speechconv.data.perturb import Draw, MelWarp, Perturb
from speechconv.data.sampler import LengthBucketSampler, bucket_batches
from speechconv.manifest import ManifestEntry, ManifestError, read_manifest, write_manifest

__all__ = [
    "DIGIT_WORDS",
    "Batch",
    "Collate",
    "DigitStringConfig",
    "DigitStringDataset",
    "DigitStringPlan",
    "Draw",
    "FsddBank",
    "Item",
    "LengthBucketSampler",
    "ManifestDataset",
    "ManifestEntry",
    "ManifestError",
    "MelWarp",
    "Perturb",
    "SpecAugment",
    "bucket_batches",
    "collate",
    "compose",
    "default_fsdd_dir",
    "eval_strings",
    "load_fsdd",
    "plan_epoch",
    "read_manifest",
    "spec_augment",
    "transcript",
    "worker_init_fn",
    "write_manifest",
]
