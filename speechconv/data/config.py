"""The ``data`` group of ``train.py``: where utterances come from, how they are perturbed
and batched (:class:`DataConfig`, with :class:`AugmentConfig` and :class:`SpecAugment`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from speechconv.checks import check_choice, check_int
from speechconv.data.augment import SpecAugment
from speechconv.data.digits import DigitStringConfig
from speechconv.data.perturb import Perturb

DATA_TYPES = ("digits", "manifest")


@dataclass
class AugmentConfig:
    """Perturbation of training utterances (never of validation): see
    :class:`speechconv.data.Perturb`, whose fields these are.  Each part is off at its
    neutral value: ``speeds=[1.0]``, ``reverb_prob=0``, ``noise_prob=0``,
    ``gain_db=[0, 0]``, ``vtlp=0``.

    Attributes:
        speeds: speed factors, one drawn uniformly per utterance (Kaldi's 0.9/1.0/1.1).
        reverb_prob, rt60_s: probability of a synthetic room, and its reverberation time range.
        noise_prob, snr_db, noise_kinds: probability of additive noise, its SNR range in dB,
            and the kinds drawn from (``clip``: a recording; ``white``, ``pink``, ``brown``).
        noise_clips: noise recordings for ``clip`` (``null``: the bundled
            ``data/fixtures/noise_1000ms.wav``).
        gain_db: the range of the random gain in dB.
        vtlp: vocal-tract-length warping factors are uniform in ``[1 - vtlp, 1 + vtlp]``.
    """

    speeds: list[float] = field(default_factory=lambda: [0.9, 1.0, 1.1])
    reverb_prob: float = 0.3
    rt60_s: list[float] = field(default_factory=lambda: [0.1, 0.6])
    noise_prob: float = 0.5
    snr_db: list[float] = field(default_factory=lambda: [0.0, 30.0])
    noise_kinds: list[str] = field(default_factory=lambda: ["clip", "white", "pink", "brown"])
    noise_clips: list[str] | None = None
    gain_db: list[float] = field(default_factory=lambda: [-10.0, 10.0])
    vtlp: float = 0.1

    def __post_init__(self) -> None:
        self.perturb()

    def perturb(self) -> Perturb:
        """The :class:`speechconv.data.Perturb` of these settings (checks them)."""
        return Perturb(tuple(self.speeds), self.reverb_prob, tuple(self.rt60_s), self.noise_prob,
                       tuple(self.snr_db), tuple(self.noise_kinds), tuple(self.gain_db), self.vtlp)


@dataclass
class DataConfig:
    """Where utterances come from and how they are batched.

    Attributes:
        type: ``digits``: FSDD digit strings (training strings composed on the fly from
            takes 5-49 of every speaker but the held-out ones; validation fixed sets from
            the official test takes 0-4 of the same speakers, and from every take of the
            held-out speakers); ``manifest``: JSON-lines manifests ``train_manifest`` /
            ``valid_manifest``.
        fsdd_dir: the bundled clips (``null``: ``data/fsdd`` of the repository).
        synthetic_voices: also train on digits spoken by synthetic voices (training
            material only: they are never held out nor validated).
        synthetic_dir: their clips (``null``: the bundled ``data/espeak``, 45 eSpeak NG voices).
        holdout_speakers: FSDD speakers never trained on; validation reports their WER
            and CER beside the seen speakers' (``[]``: none).
        max_digits: digits per string, 1 to ``max_digits``.
        edge_silence_ms, gap_ms: ``[min, max]`` silence before the first and after the
            last digit of a training string, and between digits.
        edge_pause_prob: the probability of each of the two edge pauses (else none).
        level_db: ``[min, max]`` peak level of a training string in dB full scale
            (``null``: as recorded); digit_level_db: the width of each digit's own offset.
        train_size: training strings per epoch.
        valid_size: validation strings of the seen speakers, and of the held-out ones.
        valid_seed: seed of the fixed validation strings.
        train_manifest, valid_manifest: manifests for ``type=manifest``.
        test_manifest: the manifest ``mode=eval`` scores.
        strict: a bad manifest row stops the run, naming its line (else it is reported
            with its line number and skipped).
        batch_frames: most feature frames per training batch (padding included).
        max_batch_size: most utterances per batch.
        num_workers: DataLoader worker processes computing features (0: in the main process).
        augment: training-time perturbation (speed, reverberation, noise, gain, warping).
        spec_augment: training-time masking.
    """

    type: str = "digits"
    fsdd_dir: str | None = None
    synthetic_voices: bool = True
    synthetic_dir: str | None = None
    holdout_speakers: list[str] = field(default_factory=list)
    max_digits: int = 6
    edge_silence_ms: list[float] = field(default_factory=lambda: [0.0, 400.0])
    edge_pause_prob: float = 0.5
    gap_ms: list[float] = field(default_factory=lambda: [0.0, 300.0])
    level_db: list[float] | None = field(default_factory=lambda: [-35.0, -3.0])
    digit_level_db: float = 6.0
    train_size: int = 4000
    valid_size: int = 200
    valid_seed: int = 1234
    train_manifest: str | None = None
    valid_manifest: str | None = None
    test_manifest: str | None = None
    strict: bool = False
    batch_frames: int = 4000
    max_batch_size: int = 64
    num_workers: int = 1
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    spec_augment: SpecAugment = field(default_factory=SpecAugment)

    def __post_init__(self) -> None:
        check_choice("data.type", self.type, DATA_TYPES)
        for key in ("max_digits", "train_size", "valid_size", "batch_frames", "max_batch_size"):
            check_int(f"data.{key}", getattr(self, key), 1)
        check_int("data.num_workers", self.num_workers, 0)
        self.holdout_speakers = list(self.holdout_speakers)
        if not isinstance(self.augment, AugmentConfig):
            self.augment = AugmentConfig(**self.augment)
        if not isinstance(self.spec_augment, SpecAugment):
            self.spec_augment = SpecAugment(**self.spec_augment)
        self.digit_strings()

    def digit_strings(self) -> DigitStringConfig:
        """The :class:`speechconv.data.DigitStringConfig` of the training strings (checks them)."""
        return DigitStringConfig(1, self.max_digits, tuple(self.edge_silence_ms), self.edge_pause_prob,
                                 tuple(self.gap_ms),
                                 None if self.level_db is None else tuple(self.level_db), self.digit_level_db)
