"""Spoken digit strings composed on the fly from the bundled FSDD clips.

The Free Spoken Digit Dataset (``data/fsdd``, see ``data/README.md``) holds isolated
digits ``{digit}_{speaker}_{take}.flac`` at 8 kHz; takes 0-4 are its official test
split, 5-49 its training split.  An utterance joins 1 to ``max_digits`` clips of ONE
speaker; its transcript is the digit words (``"three one four"``).

Composition (:class:`DigitStringConfig`) follows real recordings, which start and end
at once or after a pause of any length: the silence before the first digit and after
the last is none at all, or with probability ``edge_pause_prob`` a pause drawn from
``edge_silence_ms`` (from 0 ms); the gaps between digits are drawn from ``gap_ms``.  Each string is scaled so that its peak lies at a level drawn from
``level_db`` (dB full scale, a range of 30 dB or more), and each digit in it by its own
offset of up to ``digit_level_db / 2`` either way, as a speaker's words vary.

Clips are used as recorded, without trimming: FSDD's clips are already cut close to
the spoken word (a few tens of ms of near-silence at each end), and an energy trim
would clip weak onsets such as the /f/ of "four" and "five".  The inserted silences
are digital zeros (noise augmentation, :mod:`speechconv.data.waveaug`, fills them).

Splits: ``train`` strings use takes 5-49 of the training speakers; ``valid`` the test
takes 0-4 of the same speakers (seen voices, unseen takes); ``unseen`` every take of
speakers held out of training (voices the model never heard).  Validation strings
use :func:`eval_strings`: no silence at either end, gaps of 100-300 ms, levels as
recorded.

Determinism: utterance ``i`` of epoch ``e`` is planned by its own generator seeded
with ``(seed, split, e, i)``, so it never depends on worker ids, batching or timing,
and runs resume exactly.  A :class:`DigitStringPlan` (clips, silences and gains) is
cheap, so a whole epoch is planned up front and its lengths are known for bucketing
before any audio is assembled.  :func:`load_fsdd` reads every clip once, resampled,
into one tensor that forked DataLoader workers share copy-on-write.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from speechconv.audio import load_audio
from speechconv.checks import bad, check_range

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
SPLITS = ("train", "valid", "unseen")
TEST_TAKES = range(0, 5)
"""FSDD's official test split: takes 0-4 (seen-speaker validation strings use only these)."""
TRAIN_TAKES = range(5, 50)
"""FSDD's training split: takes 5-49."""
ALL_TAKES = range(0, 50)
"""Every take: a held-out speaker's strings may use them all."""
SPLIT_TAKES = {"train": TRAIN_TAKES, "valid": TEST_TAKES, "unseen": ALL_TAKES}
_NAME = re.compile(r"^(\d)_([a-z]+)_(\d+)$")
_SPLIT_CODE = {"train": 0, "valid": 1, "unseen": 2}


def default_fsdd_dir() -> Path:
    """The bundled clips: ``data/fsdd`` of the repository."""
    return Path(__file__).resolve().parents[2] / "data" / "fsdd"


def default_synthetic_dir() -> Path:
    """The bundled synthetic voices: ``data/espeak`` (eSpeak NG, made by ``data/prepare_espeak.py``)."""
    return Path(__file__).resolve().parents[2] / "data" / "espeak"


def clip_files(folder: str | os.PathLike) -> list[Path]:
    """The ``*.flac`` / ``*.wav`` clips of ``folder``, sorted by name."""
    return sorted(p for p in Path(folder).glob("*") if p.suffix in (".flac", ".wav"))


def folder_speakers(folder: str | os.PathLike) -> list[str]:
    """The speakers named by the clips of ``folder``, sorted."""
    return sorted({parse_fsdd_name(p.name)[1] for p in clip_files(folder)})


def parse_fsdd_name(name: str) -> tuple[int, str, int]:
    """``"3_lucas_17"`` (stem or file name) -> ``(digit, speaker, take)``."""
    match = _NAME.match(Path(name).stem)
    if match is None:
        raise ValueError(f"{name!r} is not an FSDD clip name; expected '{{digit}}_{{speaker}}_{{take}}.flac'")
    return int(match.group(1)), match.group(2), int(match.group(3))


@dataclass(frozen=True)
class DigitStringConfig:
    """How digit strings are composed (module docstring).

    Attributes:
        min_digits, max_digits: digits per string, drawn uniformly from this range.
        edge_silence_ms: ``(min, max)`` silence before the first and after the last
            digit, each drawn uniformly, in whole samples.
        edge_pause_prob: the probability of each of those two pauses; otherwise the
            string starts (or ends) with the digit's own clip.
        gap_ms: ``(min, max)`` silence between two digits.
        level_db: ``(min, max)`` peak level of the string in dB full scale (``None``:
            the clips' own levels).
        digit_level_db: width in dB of each digit's own offset, uniform in
            ``[-digit_level_db / 2, digit_level_db / 2]`` (0: none).
    """

    min_digits: int = 1
    max_digits: int = 6
    edge_silence_ms: tuple[float, float] = (0.0, 400.0)
    edge_pause_prob: float = 0.5
    gap_ms: tuple[float, float] = (0.0, 300.0)
    level_db: tuple[float, float] | None = (-35.0, -3.0)
    digit_level_db: float = 6.0

    def __post_init__(self) -> None:
        if not 1 <= self.min_digits <= self.max_digits:
            raise bad("data.max_digits", self.max_digits, f"an int >= min_digits = {self.min_digits} >= 1")
        object.__setattr__(self, "edge_silence_ms", check_range("data.edge_silence_ms", self.edge_silence_ms, 0.0))
        object.__setattr__(self, "gap_ms", check_range("data.gap_ms", self.gap_ms, 0.0))
        if not 0 <= self.edge_pause_prob <= 1:
            raise bad("data.edge_pause_prob", self.edge_pause_prob, "a probability in [0, 1]")
        if self.level_db is not None:
            object.__setattr__(self, "level_db", check_range("data.level_db", self.level_db, -120.0, 0.0))
        if not 0 <= self.digit_level_db <= 40:
            raise bad("data.digit_level_db", self.digit_level_db, "a width in [0, 40] dB")


def eval_strings(max_digits: int) -> DigitStringConfig:
    """The validation strings: 1 to ``max_digits`` digits starting and ending without
    silence, 100-300 ms between digits, each clip at its recorded level."""
    return DigitStringConfig(1, max_digits, (0.0, 0.0), 0.0, (100.0, 300.0), None, 0.0)


@dataclass
class FsddBank:
    """Every FSDD clip, resampled, in one shared tensor.

    Attributes:
        waveforms: ``(S,)`` float32, all clips end to end.
        offsets: ``(N + 1,)`` int64; clip ``n`` is ``waveforms[offsets[n]:offsets[n + 1]]``.
        digits, takes: ``(N,)`` int64 per clip.
        peaks: ``(N,)`` float64, each clip's largest absolute sample.
        speakers: speaker name per clip.
        names: file stem per clip (``"3_lucas_17"``).
        sample_rate: Hz of ``waveforms``.
    """

    waveforms: torch.Tensor
    offsets: np.ndarray
    digits: np.ndarray
    takes: np.ndarray
    peaks: np.ndarray
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

    @property
    def speaker_names(self) -> list[str]:
        """The speakers of the bank, sorted."""
        return sorted(set(self.speakers))

    def split_pools(self, split: str, speakers: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Clip indices of ``split``'s takes (:data:`SPLIT_TAKES`) per speaker of ``speakers``
        (``None``: every speaker of the bank); speakers with no clips there are left out."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        chosen = self.speaker_names if speakers is None else sorted(set(speakers))
        unknown = sorted(set(chosen) - set(self.speakers))
        if unknown:
            raise ValueError(f"speakers {unknown} are not in the FSDD bank; it holds {self.speaker_names}")
        takes = SPLIT_TAKES[split]
        in_split = (self.takes >= takes.start) & (self.takes < takes.stop)
        names = np.asarray(self.speakers)
        pools = {s: np.flatnonzero(in_split & (names == s)) for s in chosen}
        return {s: p for s, p in pools.items() if len(p)}


def load_fsdd(folder: str | os.PathLike | None = None, sample_rate: int = 16000,
              extra_folders: Sequence[str | os.PathLike] = ()) -> FsddBank:
    """Read every ``*.flac`` / ``*.wav`` FSDD clip of ``folder`` (and of ``extra_folders``:
    clips named the same way, such as the synthetic voices), resampled to ``sample_rate``.

    Clips are sorted by name, so clip indices (and therefore every plan) do not depend
    on the file system's listing order.  Call this once in the main process, before
    DataLoader workers fork.
    """
    root = Path(folder) if folder is not None else default_fsdd_dir()
    files = clip_files(root)
    if not files:
        raise FileNotFoundError(
            f"no FSDD clips (*.flac or *.wav) in {root}; run 'python data/prepare_fsdd.py SRC_DIR' "
            f"or point data.fsdd_dir at the clips"
        )
    for extra in extra_folders:
        more = clip_files(extra)
        if not more:
            raise FileNotFoundError(f"no clips (*.flac or *.wav) in {extra}; run 'python data/prepare_espeak.py' "
                                    f"or set data.synthetic_voices=false")
        files += more
    files.sort(key=lambda p: p.name)
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
        peaks=np.asarray([float(w.abs().max()) for w in waves], dtype=np.float64),
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
        gains: the linear gain of each clip.
        num_samples: total samples, ``sum(clip lengths) + sum(silences)``.
    """

    clips: tuple[int, ...]
    silences: tuple[int, ...]
    gains: tuple[float, ...]
    num_samples: int


def item_seed(seed: int, split: str, epoch: int, index: int) -> np.random.SeedSequence:
    """The seed of utterance ``index`` of ``epoch``: a function of these four values only."""
    return np.random.SeedSequence([seed, _SPLIT_CODE[split], epoch, index])


def _samples(ms: float, sample_rate: int) -> int:
    return round(ms * sample_rate / 1000)


def plan_digit_string(
    bank: FsddBank, pools: dict[str, np.ndarray], config: DigitStringConfig, rng: np.random.Generator
) -> DigitStringPlan:
    """Draw one plan: a speaker, ``n`` clips of theirs, ``n + 1`` silences, ``n`` gains."""
    speakers = sorted(pools)
    pool = pools[speakers[int(rng.integers(len(speakers)))]]
    n = int(rng.integers(config.min_digits, config.max_digits + 1))
    clips = tuple(int(c) for c in pool[rng.integers(len(pool), size=n)])
    edges = [_samples(ms, bank.sample_rate) for ms in config.edge_silence_ms]
    gaps = [_samples(ms, bank.sample_rate) for ms in config.gap_ms]
    pauses = rng.random(2) < config.edge_pause_prob
    lead, trail = (int(s) for s in rng.integers(edges[0], edges[1] + 1, size=2) * pauses)
    silences = [lead, *(int(s) for s in rng.integers(gaps[0], gaps[1] + 1, size=n - 1)), trail]
    gains = np.ones(n)
    if config.level_db is not None:
        offsets_db = rng.uniform(-config.digit_level_db / 2, config.digit_level_db / 2, size=n)
        gains = 10.0 ** (offsets_db / 20)
        peak = float(np.max(bank.peaks[list(clips)] * gains))
        level = 10.0 ** (rng.uniform(*config.level_db) / 20)
        gains = gains * (level / peak if peak > 0 else 1.0)
    num_samples = sum(bank.num_samples(c) for c in clips) + sum(silences)
    return DigitStringPlan(clips, tuple(silences), tuple(float(g) for g in gains), num_samples)


def plan_epoch(
    bank: FsddBank,
    split: str,
    size: int,
    seed: int,
    epoch: int,
    config: DigitStringConfig,
    speakers: Sequence[str] | None = None,
) -> list[DigitStringPlan]:
    """Plans of utterances ``0 .. size-1`` of ``epoch`` from ``split``'s takes of ``speakers``
    (``None``: all); plan ``i`` depends only on ``(seed, split, epoch, i)`` and the pools."""
    pools = bank.split_pools(split, speakers)
    if not pools:
        raise ValueError(f"the FSDD bank holds no clips of the {split!r} split for speakers {speakers}")
    return [
        plan_digit_string(bank, pools, config, np.random.default_rng(item_seed(seed, split, epoch, i)))
        for i in range(size)
    ]


def compose(bank: FsddBank, plan: DigitStringPlan) -> torch.Tensor:
    """Assemble the waveform of ``plan``: ``(S,)`` float32 with ``S = plan.num_samples``."""
    out = torch.zeros(plan.num_samples, dtype=torch.float32)
    pos = plan.silences[0]
    for clip, gain, silence in zip(plan.clips, plan.gains, plan.silences[1:], strict=True):
        n = bank.num_samples(clip)
        out[pos : pos + n] = bank.clip(clip) * gain if gain != 1.0 else bank.clip(clip)
        pos += n + silence
    assert pos == plan.num_samples, f"composed {pos} samples but the plan says {plan.num_samples}"
    return out


def transcript(bank: FsddBank, plan: DigitStringPlan) -> str:
    """Digit words of ``plan``'s clips, e.g. ``"three one four"``."""
    return " ".join(DIGIT_WORDS[int(bank.digits[c])] for c in plan.clips)
