"""The datasets and loaders a :class:`speechconv.config.Config` asks for."""

from __future__ import annotations

import signal
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from speechconv.checks import ConfigError
from speechconv.data import (
    Batch,
    Collate,
    DigitStringDataset,
    LengthBucketSampler,
    ManifestDataset,
    SpecAugment,
    eval_strings,
    load_fsdd,
    read_manifest,
    worker_init_fn,
)
from speechconv.data.config import DataConfig
from speechconv.data.digits import default_fsdd_dir, default_synthetic_dir, folder_speakers
from speechconv.data.perturb import Perturb
from speechconv.feature_config import FeatureConfig
from speechconv.text import CharVocabulary
from speechconv.training.runlog import say


@dataclass
class TrainData:
    """The training dataset with its bucketed sampler, and the fixed validation sets by name:
    ``seen`` (the training speakers' test takes, or the validation manifest) and, with
    ``data.holdout_speakers``, ``unseen`` (the held-out speakers)."""

    train: Dataset
    sampler: LengthBucketSampler
    valid: dict[str, Dataset]


def manifest_dataset(path: str | None, key: str, features: FeatureConfig, vocab: CharVocabulary,
                     spec_augment: SpecAugment | None = None, seed: int = 0, strict: bool = False,
                     perturb: Perturb | None = None, noise_clips: list[str] | None = None) -> ManifestDataset:
    """A :class:`ManifestDataset` of ``path``; skipped rows are printed with their line numbers
    (``strict``: the first bad row raises :class:`speechconv.data.ManifestError` naming it)."""
    if not path:
        raise ConfigError(f"{key}={path!r} is invalid: expected a JSON-lines manifest path; add {key}=PATH.jsonl")
    entries, problems = read_manifest(path, strict=strict)
    for problem in problems:
        say(f"warning: skipped {problem} (data.strict=true stops on it instead)")
    if not entries:
        raise ConfigError(f"{key}={path!r} has no usable rows ({len(problems)} skipped); fix the manifest")
    return ManifestDataset(entries, features, vocab, seed=seed, spec_augment=spec_augment, perturb=perturb,
                           noise_clips=noise_clips)


def build_train_data(data: DataConfig, features: FeatureConfig, vocab: CharVocabulary, seed: int) -> TrainData:
    """Training set (perturbation and SpecAugment on), its sampler (seeded by ``seed``), and
    the validation sets (no augmentation).  Digit strings train on every speaker but the
    held-out ones, synthetic voices included; the seen-speaker set holds the recorded
    speakers only."""
    augment = data.spec_augment
    perturb, noise = data.augment.perturb(), data.augment.noise_clips
    if data.type == "digits":
        synthetic = [data.synthetic_dir or default_synthetic_dir()] if data.synthetic_voices else []
        bank = load_fsdd(data.fsdd_dir, features.sample_rate, synthetic)  # once, before workers fork
        recorded = folder_speakers(data.fsdd_dir or default_fsdd_dir())
        held = sorted(set(data.holdout_speakers))
        unknown = [s for s in held if s not in recorded]
        if unknown:
            raise ConfigError(f"data.holdout_speakers={held} names {unknown}, not among the recorded FSDD speakers "
                              f"{recorded} (synthetic voices are training material only); name recorded speakers, "
                              f"or [] for none")
        speakers = [s for s in bank.speaker_names if s not in held]
        seen = [s for s in recorded if s not in held]
        if not seen:
            raise ConfigError(f"data.holdout_speakers={held} holds out every recorded speaker of the FSDD clips; "
                              f"leave at least one to train on")
        strings = eval_strings(data.max_digits)
        train = DigitStringDataset(bank, "train", data.train_size, features, vocab, data.digit_strings(), seed,
                                   augment, speakers, perturb, noise)
        valid = {"seen": DigitStringDataset(bank, "valid", data.valid_size, features, vocab, strings,
                                            data.valid_seed, speakers=seen)}
        if held:
            valid["unseen"] = DigitStringDataset(bank, "unseen", data.valid_size, features, vocab, strings,
                                                 data.valid_seed, speakers=held)
    else:
        train = manifest_dataset(data.train_manifest, "data.train_manifest", features, vocab, augment, seed,
                                 data.strict, perturb, noise)
        valid = {"seen": manifest_dataset(data.valid_manifest, "data.valid_manifest", features, vocab,
                                          strict=data.strict)}
    sampler = LengthBucketSampler(train.frame_lengths, max_frames=data.batch_frames,
                                  max_batch_size=data.max_batch_size, seed=seed)
    return TrainData(train, sampler, valid)


def _init_worker(worker_id: int) -> None:
    """Ctrl-C and SIGTERM are the main process' to handle (it finishes the step and saves,
    see :mod:`speechconv.training.signals`).  A terminal, ``kill -TERM -PGID`` or a job
    scheduler sends them to the whole process group; a worker dying of one would break
    the step in flight.  Workers still end with the main process (DataLoader's watchdog)."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    worker_init_fn(worker_id)


def loader(dataset: Dataset, data: DataConfig, vocab: CharVocabulary,
           sampler: Sampler[list[int]] | None = None) -> DataLoader[Batch]:
    """A DataLoader of padded :class:`Batch` es; ``sampler`` yields lists of indices (a
    :class:`LengthBucketSampler`, or a rank's shard of one); without it, the dataset in
    order, bucketed by length without shuffling (for validation and evaluation)."""
    if sampler is None:
        sampler = LengthBucketSampler(dataset.frame_lengths, max_frames=data.batch_frames,
                                      max_batch_size=data.max_batch_size, shuffle=False)
    # A private generator: otherwise each new iterator draws its workers' base seed from the
    # global torch RNG, and a resumed run (which starts an iterator mid-epoch) would drift
    # from an unbroken one.  Items never use it: they are seeded by (seed, epoch, index).
    return DataLoader(dataset, batch_sampler=sampler, collate_fn=Collate(vocab.pad_id),
                      num_workers=data.num_workers, worker_init_fn=_init_worker if data.num_workers else None,
                      generator=torch.Generator().manual_seed(0))
