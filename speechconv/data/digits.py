"""Spoken digit strings composed on the fly from the bundled FSDD clips.

The Free Spoken Digit Dataset (``data/fsdd``, see ``data/README.md``) holds isolated
digits ``{digit}_{speaker}_{take}.flac`` at 8 kHz; takes 0-4 are its official test
split, 5-49 its training split.  An utterance joins 1 to ``max_digits`` clips of ONE
speaker with random silences (``min_silence_ms`` to ``max_silence_ms``) before,
between and after them; its transcript is the digit words (``"three one four"``).

Clips are used as recorded, without trimming: FSDD's clips are already cut close to
the spoken word (a few tens of ms of near-silence at each end), and an energy trim
would clip weak onsets such as the /f/ of "four" and "five".  The inserted silences
are digital zeros.

Determinism: utterance ``i`` of epoch ``e`` is planned by its own generator seeded
with ``(seed, split, e, i)``, so it never depends on worker ids, batching or timing,
and runs resume exactly.  A :class:`DigitStringPlan` (clips and silence lengths) is
cheap, so a whole epoch is planned up front and its lengths are known for bucketing
before any audio is assembled.  :func:`load_fsdd` reads every clip once, resampled,
into one tensor that forked DataLoader workers share copy-on-write.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from speechconv.audio import load_audio

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
SPLITS = ("train", "valid")
TEST_TAKES = range(0, 5)
"""FSDD's official test split: takes 0-4 (validation strings use only these)."""
TRAIN_TAKES = range(5, 50)
"""FSDD's training split: takes 5-49."""
_NAME = re.compile(r"^(\d)_([a-z]+)_(\d+)$")
_SPLIT_CODE = {"train": 0, "valid": 1}


def default_fsdd_dir() -> Path:
    """The bundled clips: ``data/fsdd`` of the repository."""
    return Path(__file__).resolve().parents[2] / "data" / "fsdd"


def parse_fsdd_name(name: str) -> tuple[int, str, int]:
    """``"3_lucas_17"`` (stem or file name) -> ``(digit, speaker, take)``."""
    match = _NAME.match(Path(name).stem)
    if match is None:
        raise ValueError(f"{name!r} is not an FSDD clip name; expected '{{digit}}_{{speaker}}_{{take}}.flac'")
    return int(match.group(1)), match.group(2), int(match.group(3))


@dataclass(frozen=True)
class DigitStringConfig:
    """How digit strings are composed.

    Attributes:
        min_digits, max_digits: digits per string, drawn uniformly from this range.
        min_silence_ms, max_silence_ms: each silence (before, between and after the
            digits) is drawn uniformly from this range, in whole samples.
    """

    min_digits: int = 1
    max_digits: int = 4
    min_silence_ms: float = 50.0
    max_silence_ms: float = 300.0

    def __post_init__(self) -> None:
        if not 1 <= self.min_digits <= self.max_digits:
            raise ValueError(
                f"digits per string (min_digits={self.min_digits}, max_digits={self.max_digits}) must satisfy "
                f"1 <= min_digits <= max_digits"
            )
        if not 0 <= self.min_silence_ms <= self.max_silence_ms:
            raise ValueError(
                f"silence range ({self.min_silence_ms}, {self.max_silence_ms}) ms must satisfy 0 <= min <= max"
            )


@dataclass
class FsddBank:
    """Every FSDD clip, resampled, in one shared tensor.

    Attributes:
        waveforms: ``(S,)`` float32, all clips end to end.
        offsets: ``(N + 1,)`` int64; clip ``n`` is ``waveforms[offsets[n]:offsets[n + 1]]``.
        digits, takes: ``(N,)`` int64 per clip.
        speakers: speaker name per clip.
        names: file stem per clip (``"3_lucas_17"``).
        sample_rate: Hz of ``waveforms``.
    """

    waveforms: torch.Tensor
    offsets: np.ndarray
    digits: np.ndarray
    takes: np.ndarray
    speakers: list[str]
    names: list[str]
    sample_rate: int

    def __len__(self) -> int:
        return len(self.names)

    def clip(self, n: int) -> torch.Tensor:
        """Clip ``n`` as a ``(S,)`` view of :attr:`waveforms`."""
        return self.waveforms[int(self.offsets[n]) : int(self.offsets[n + 1])]

    def num_samples(self, n: int) -> int:
        return int(self.offsets[n + 1] - self.offsets[n])

    def split_pools(self, split: str) -> dict[str, np.ndarray]:
        """Clip indices of ``split`` (``train``: takes 5-49, ``valid``: 0-4) per speaker."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        takes = TRAIN_TAKES if split == "train" else TEST_TAKES
        in_split = (self.takes >= takes.start) & (self.takes < takes.stop)
        speakers = np.asarray(self.speakers)
        pools = {s: np.flatnonzero(in_split & (speakers == s)) for s in sorted(set(self.speakers))}
        return {s: p for s, p in pools.items() if len(p)}


def load_fsdd(folder: str | os.PathLike | None = None, sample_rate: int = 16000) -> FsddBank:
    """Read every ``*.flac`` / ``*.wav`` FSDD clip of ``folder``, resampled to ``sample_rate``.

    Clips are sorted by name, so clip indices (and therefore every plan) do not depend
    on the file system's listing order.  Call this once in the main process, before
    DataLoader workers fork.
    """
    root = Path(folder) if folder is not None else default_fsdd_dir()
    files = sorted(p for p in root.glob("*") if p.suffix in (".flac", ".wav"))
    if not files:
        raise FileNotFoundError(
            f"no FSDD clips (*.flac or *.wav) in {root}; run 'python data/prepare_fsdd.py SRC_DIR' "
            f"or point data.fsdd_dir at the clips"
        )
    waves, digits, speakers, takes, names = [], [], [], [], []
    # 2,000 resamplings of half-second clips: intra-op threads only add overhead
    # (measured: 0.7 s with one thread, 4.6 s with two on a busy 2-core machine).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for path in files:
            digit, speaker, take = parse_fsdd_name(path.name)
            waves.append(load_audio(path, sample_rate=sample_rate))
            digits.append(digit)
            speakers.append(speaker)
            takes.append(take)
            names.append(path.stem)
    finally:
        torch.set_num_threads(threads)
    offsets = np.zeros(len(waves) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(w) for w in waves])
    return FsddBank(
        waveforms=torch.cat(waves).to(torch.float32).contiguous(),
        offsets=offsets,
        digits=np.asarray(digits, dtype=np.int64),
        takes=np.asarray(takes, dtype=np.int64),
        speakers=speakers,
        names=names,
        sample_rate=sample_rate,
    )


@dataclass(frozen=True)
class DigitStringPlan:
    """One composed utterance, before any audio is assembled.

    Attributes:
        clips: bank indices of the digit clips, in spoken order.
        silences: samples of silence before, between and after the clips
            (``len(clips) + 1`` values).
        num_samples: total samples, ``sum(clip lengths) + sum(silences)``.
    """

    clips: tuple[int, ...]
    silences: tuple[int, ...]
    num_samples: int


def item_seed(seed: int, split: str, epoch: int, index: int) -> np.random.SeedSequence:
    """The seed of utterance ``index`` of ``epoch``: a function of these four values only."""
    return np.random.SeedSequence([seed, _SPLIT_CODE[split], epoch, index])


def plan_digit_string(
    bank: FsddBank, pools: dict[str, np.ndarray], config: DigitStringConfig, rng: np.random.Generator
) -> DigitStringPlan:
    """Draw one plan: a speaker, then ``n`` clips of theirs and ``n + 1`` silences."""
    speakers = sorted(pools)
    pool = pools[speakers[int(rng.integers(len(speakers)))]]
    n = int(rng.integers(config.min_digits, config.max_digits + 1))
    clips = tuple(int(c) for c in pool[rng.integers(len(pool), size=n)])
    lo = round(config.min_silence_ms * bank.sample_rate / 1000)
    hi = round(config.max_silence_ms * bank.sample_rate / 1000)
    silences = tuple(int(s) for s in rng.integers(lo, hi + 1, size=n + 1))
    return DigitStringPlan(clips, silences, sum(bank.num_samples(c) for c in clips) + sum(silences))


def plan_epoch(
    bank: FsddBank, split: str, size: int, seed: int, epoch: int, config: DigitStringConfig
) -> list[DigitStringPlan]:
    """Plans of utterances ``0 .. size-1`` of ``epoch``; plan ``i`` depends only on ``(seed, split, epoch, i)``."""
    pools = bank.split_pools(split)
    if not pools:
        raise ValueError(f"the FSDD bank holds no clips of the {split!r} split")
    return [
        plan_digit_string(bank, pools, config, np.random.default_rng(item_seed(seed, split, epoch, i)))
        for i in range(size)
    ]


def compose(bank: FsddBank, plan: DigitStringPlan) -> torch.Tensor:
    """Assemble the waveform of ``plan``: ``(S,)`` float32 with ``S = plan.num_samples``."""
    out = torch.zeros(plan.num_samples, dtype=torch.float32)
    pos = plan.silences[0]
    for clip, silence in zip(plan.clips, plan.silences[1:], strict=True):
        n = bank.num_samples(clip)
        out[pos : pos + n] = bank.clip(clip)
        pos += n + silence
    assert pos == plan.num_samples, f"composed {pos} samples but the plan says {plan.num_samples}"
    return out


def transcript(bank: FsddBank, plan: DigitStringPlan) -> str:
    """Digit words of ``plan``'s clips, e.g. ``"three one four"``."""
    return " ".join(DIGIT_WORDS[int(bank.digits[c])] for c in plan.clips)
