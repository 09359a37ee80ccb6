"""Datasets of ``(features, tokens, text)`` items, features made in the DataLoader worker.

Two kinds:

* :class:`DigitStringDataset`: FSDD digit strings.  ``split="train"`` recomposes
  ``size`` strings every epoch (takes 5-49); ``split="valid"`` (test takes 0-4) and
  ``split="unseen"`` (every take of held-out speakers) are fixed sets (the epoch is
  ignored).
* :class:`ManifestDataset`: the rows of a JSON-lines manifest.

An item is: waveform -> perturbation (speed, reverberation, noise, gain;
:mod:`speechconv.data.perturb`) -> features -> vocal-tract-length warping ->
SpecAugment, each part off unless given.  Both datasets expose
``frame_lengths(epoch)``, the exact frames ``T`` of every item (from the cheap plans
and perturbation draws, or the audio headers), for
:class:`~speechconv.data.sampler.LengthBucketSampler`.

Workers: use :func:`worker_init_fn` (one intra-op thread per worker: the feature
computation is small per item, and each worker's default thread pool, sized to every
core, would fight the training process for the same cores) and keep
``persistent_workers=False`` (the default), so that forked workers see the epoch set
by :meth:`set_epoch` in the main process.  Perturbations and SpecAugment masks are
drawn from generators seeded by ``(seed, epoch, index)``, never from global random
state.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from speechconv import shapes
from speechconv.audio import audio_info, load_audio
from speechconv.data.augment import SpecAugment
from speechconv.data.collate import Item
from speechconv.data.digits import (
    DigitStringConfig,
    DigitStringPlan,
    FsddBank,
    compose,
    plan_epoch,
    transcript,
)
from speechconv.data.perturb import Draw, MelWarp, Perturb, load_noise_clips
from speechconv.feature_config import FeatureConfig
from speechconv.manifest import ManifestEntry
from speechconv.text import CharVocabulary


def worker_init_fn(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: one torch thread per worker (module docstring)."""
    torch.set_num_threads(1)


def _augment_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    """The generator of one item's SpecAugment masks, seeded by ``(seed, epoch, index)`` only."""
    state = np.random.SeedSequence([seed, 7, epoch, index]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def _perturb_generator(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator of one item's perturbation draws, seeded by ``(seed, epoch, index)`` only."""
    return np.random.default_rng(np.random.SeedSequence([seed, 8, epoch, index]))


def _make_features(feature_config: FeatureConfig) -> torch.nn.Module:
    from speechconv.features import LogMelDeltas

    return LogMelDeltas(feature_config)


class _FeatureDataset(Dataset):
    """Shared part: waveform -> perturbation -> features -> warping and SpecAugment; transcript -> tokens."""

    def __init__(
        self,
        feature_config: FeatureConfig,
        vocab: CharVocabulary,
        spec_augment: SpecAugment | None,
        seed: int,
        perturb: Perturb | None = None,
        noise_clips: list[str] | None = None,
    ) -> None:
        self.feature_config = feature_config
        self.vocab = vocab
        self.spec_augment = spec_augment
        self.seed = seed
        self.epoch = 0
        self.features = _make_features(feature_config)
        self.perturb = perturb
        self.noise = (load_noise_clips(noise_clips, feature_config.sample_rate)
                      if perturb is not None and perturb.noise_prob > 0 and "clip" in perturb.noise_kinds else [])
        self.warp = MelWarp(feature_config) if perturb is not None and perturb.vtlp > 0 else None
        self._draws: tuple[int, list[Draw]] | None = None

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch the next items belong to (call in the main process before each epoch)."""
        self.epoch = epoch

    def __len__(self) -> int:
        raise NotImplementedError

    def draws(self, epoch: int) -> list[Draw]:
        """Perturbation draws of every item of ``epoch`` (cached for the most recent epoch;
        neutral draws without perturbation)."""
        if self._draws is None or self._draws[0] != epoch:
            if self.perturb is None:
                draws = [Draw()] * len(self)
            else:
                draws = [self.perturb.draw(_perturb_generator(self.seed, epoch, i)) for i in range(len(self))]
            self._draws = (epoch, draws)
        return self._draws[1]

    def _frames(self, num_samples: list[int], epoch: int) -> list[int]:
        """Frames ``T`` of items of ``num_samples`` samples before perturbation."""
        rate = self.feature_config.sample_rate
        return [self.feature_config.num_frames(Perturb.num_samples(n, d, rate))
                for n, d in zip(num_samples, self.draws(epoch), strict=True)]

    def _item(self, waveform: torch.Tensor, text: str, index: int) -> Item:
        """``(S,)`` waveform + transcript -> :class:`Item` with ``(T, F, C)`` features."""
        draw = self.draws(self.epoch)[index]
        if self.perturb is not None:
            waveform = Perturb.waveform(waveform, draw, self.feature_config.sample_rate, self.noise)
        with torch.no_grad():
            features, length = self.features(waveform)
        length = int(length)
        expected = self.feature_config.num_frames(waveform.shape[0])
        assert features.shape[0] == length == expected, (
            f"features have {features.shape[0]} frames (length {length}), shapes.frames_from_samples says {expected}"
        )
        if self.warp is not None:
            features = self.warp(features, draw.vtlp)
        if self.spec_augment is not None:
            features = self.spec_augment(features, length, _augment_generator(self.seed, self.epoch, index))
        tokens = torch.tensor(self.vocab.encode(text), dtype=torch.int64)
        return Item(features.to(torch.float32), tokens, self.vocab.normalize(text))


class DigitStringDataset(_FeatureDataset):
    """FSDD digit strings composed on the fly (see :mod:`speechconv.data.digits`).

    Args:
        bank: the clips, loaded once in the main process (:func:`~speechconv.data.digits.load_fsdd`).
        split: ``train`` (takes 5-49, new strings every epoch), ``valid`` (takes 0-4, fixed)
            or ``unseen`` (every take, fixed: for speakers held out of training).
        size: strings per epoch (``train``) or in the fixed set.
        feature_config: the features; its ``sample_rate`` must be the bank's.
        vocab: the character vocabulary of the targets.
        config: digits per string, silences and levels.
        seed: seeds the plans, the perturbations and the SpecAugment masks.
        spec_augment: training-time masking (None: off; keep it off for validation).
        speakers: the speakers whose clips the strings use (None: every speaker of the bank).
        perturb: training-time perturbation (None: off).
        noise_clips: noise recordings for ``perturb`` (None: the bundled clip).
    """

    def __init__(
        self,
        bank: FsddBank,
        split: str,
        size: int,
        feature_config: FeatureConfig,
        vocab: CharVocabulary,
        config: DigitStringConfig | None = None,
        seed: int = 0,
        spec_augment: SpecAugment | None = None,
        speakers: Sequence[str] | None = None,
        perturb: Perturb | None = None,
        noise_clips: list[str] | None = None,
    ) -> None:
        super().__init__(feature_config, vocab, spec_augment, seed, perturb, noise_clips)
        if bank.sample_rate != feature_config.sample_rate:
            raise ValueError(
                f"the FSDD bank is at {bank.sample_rate} Hz but features.sample_rate={feature_config.sample_rate}; "
                f"load the bank with load_fsdd(sample_rate={feature_config.sample_rate})"
            )
        if size < 1:
            raise ValueError(f"size={size} is invalid: expected at least 1 digit string")
        self.bank = bank
        self.split = split
        self.size = size
        self.speakers = None if speakers is None else sorted(speakers)
        self.config = config if config is not None else DigitStringConfig()
        self._plans: tuple[int, list[DigitStringPlan]] | None = None
        self.plans(0)  # checks the split and fails early on an empty one

    def _plan_epoch(self, epoch: int) -> int:
        return epoch if self.split == "train" else 0

    def plans(self, epoch: int) -> list[DigitStringPlan]:
        """Plans of every item of ``epoch`` (cached for the most recent epoch)."""
        e = self._plan_epoch(epoch)
        if self._plans is None or self._plans[0] != e:
            self._plans = (e, plan_epoch(self.bank, self.split, self.size, self.seed, e, self.config, self.speakers))
        return self._plans[1]

    def frame_lengths(self, epoch: int = 0) -> list[int]:
        """Frames ``T`` of every item of ``epoch``, known before any audio is assembled."""
        return self._frames([p.num_samples for p in self.plans(epoch)], self._plan_epoch(epoch))

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch the next items belong to (fixed sets stay at epoch 0)."""
        self.epoch = self._plan_epoch(epoch)

    def waveform(self, index: int) -> tuple[torch.Tensor, str]:
        """``(S,)`` waveform (before perturbation) and transcript of item ``index`` of the current epoch."""
        plan = self.plans(self.epoch)[index]
        return compose(self.bank, plan), transcript(self.bank, plan)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> Item:
        wave, text = self.waveform(index)
        return self._item(wave, text, index)


class ManifestDataset(_FeatureDataset):
    """Rows of a manifest (:func:`~speechconv.manifest.read_manifest`).

    Transcripts are checked against the vocabulary here, so a row it cannot hold
    fails at start-up with its text named, not in a worker mid-epoch.
    """

    def __init__(
        self,
        entries: Sequence[ManifestEntry],
        feature_config: FeatureConfig,
        vocab: CharVocabulary,
        seed: int = 0,
        spec_augment: SpecAugment | None = None,
        perturb: Perturb | None = None,
        noise_clips: list[str] | None = None,
    ) -> None:
        super().__init__(feature_config, vocab, spec_augment, seed, perturb, noise_clips)
        if not entries:
            raise ValueError("the manifest has no usable rows; check the problems read_manifest reported")
        self.entries = list(entries)
        for entry in self.entries:
            try:
                vocab.encode(entry.text)
            except ValueError as exc:
                raise ValueError(f"{entry.audio_filepath}: {exc}") from exc
        self._samples: list[int] | None = None

    def frame_lengths(self, epoch: int = 0) -> list[int]:
        """Frames ``T`` of every item of ``epoch``, from the audio headers (read once).

        The resampled length is what :func:`speechconv.load_audio` returns
        (:func:`speechconv.shapes.resampled_samples`); speed perturbation changes it per epoch.
        """
        if self._samples is None:
            rate = self.feature_config.sample_rate
            self._samples = []
            for entry in self.entries:
                info = audio_info(entry.audio_filepath)
                self._samples.append(shapes.resampled_samples(info.frames, info.sample_rate, rate))
        return self._frames(self._samples, epoch)

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> Item:
        entry = self.entries[index]
        wave = load_audio(entry.audio_filepath, sample_rate=self.feature_config.sample_rate)
        return self._item(wave, entry.text, index)
