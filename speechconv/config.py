"""Schemas of every setting ``train.py`` reads, their validation, and their Hydra registration.

The schemas are plain dataclasses that OmegaConf understands, so Hydra types and checks
each override (unknown keys and wrong types stop the program at start-up).  Ranges are
checked by each dataclass' ``__post_init__`` when :func:`validate` converts the composed
config with ``OmegaConf.to_object``; :func:`validate` then cross-checks values that
span groups (the encoder's geometry against ``features.n_mels``).  Every failure is a
:class:`ConfigError` naming the key, the allowed range and the fix.

Hydra itself is imported only inside :func:`register_configs`: library code never
imports it at import time.

Groups (YAML presets in ``configs/``):

``features``  :class:`speechconv.FeatureConfig` (``logmel80``, ``kaldi``).
``encoder``   :class:`EncoderSettings`: ``type: conv`` is the strided conv stack
              (:class:`speechconv.ConvEncoder`, flattened to ``(B, T', D)``);
              ``type: weiss2017`` is the paper's whole encoder
              (:class:`speechconv.Weiss2017Encoder`) whose conv front is the same
              ``layers``, so ``encoder.layers.0.filters=64`` works for both; the
              ``weiss2017`` block holds the sizes past the conv front.
``model``     :class:`ModelConfig`: ``ctc`` (BiLSTM + CTC) or ``seq2seq`` (attention LSTM).
``data``      :class:`DataConfig`: ``digits`` (FSDD digit strings composed on the fly)
              or ``manifest`` (JSON-lines manifests).
``trainer``   :class:`TrainerConfig`: steps, seed, device, optimiser, schedule, logging.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from speechconv import shapes
from speechconv.encoder_config import EncoderConfig, LayerConfig, Weiss2017Config, freq_geometries, time_geometries
from speechconv.feature_config import FeatureConfig

MODES = ("shapes", "train", "eval", "transcribe")
ENCODER_TYPES = ("conv", "weiss2017")
MODEL_TYPES = ("ctc", "seq2seq")
DATA_TYPES = ("digits", "manifest")
SCHEDULES = ("onecycle", "cosine", "constant")
NONFINITE = ("stop", "skip")


class ConfigError(ValueError):
    """A bad setting from the user: the message names the key, the allowed range and the fix."""


def _bad(key: str, value: object, allowed: str, fix: str = "") -> ConfigError:
    msg = f"{key}={value!r} is invalid: expected {allowed}"
    return ConfigError(msg + (f"; {fix}" if fix else ""))


def _check_int(key: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise _bad(key, value, f"an int >= {low}")


def _check_float(key: str, value: Any, low: float, high: float, high_open: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and low <= value
    ok = ok and (value < high if high_open else value <= high)
    if not ok:
        raise _bad(key, value, f"a number in [{low}, {high}{')' if high_open else ']'}")


# ----------------------------------------------------------------------- encoder


@dataclass
class EncoderSettings(EncoderConfig):
    """:class:`EncoderConfig` (the conv stack) plus which encoder to build around it.

    Attributes:
        type: ``conv`` (the conv stack alone) or ``weiss2017`` (conv stack as the front
            of :class:`speechconv.Weiss2017Encoder`, sized by ``weiss2017``).
        weiss2017: the sizes past the conv front (:class:`speechconv.Weiss2017Config`);
            ignored for ``type=conv``.
    """

    type: str = "conv"
    weiss2017: Weiss2017Config = field(default_factory=Weiss2017Config)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.type not in ENCODER_TYPES:
            raise _bad("encoder.type", self.type, f"one of {ENCODER_TYPES}")
        if not isinstance(self.weiss2017, Weiss2017Config):
            self.weiss2017 = Weiss2017Config(**self.weiss2017)
        if self.type == "weiss2017" and self.branch is not None:
            raise _bad("encoder.branch", "<set>", "null with encoder.type=weiss2017",
                       "the paper's encoder has one conv branch; use encoder.type=conv for fused branches")

    def conv_config(self) -> EncoderConfig:
        """The plain :class:`EncoderConfig` of the conv stack."""
        return EncoderConfig(layers=self.layers, branch=self.branch, fusion=self.fusion, too_short=self.too_short)


# ------------------------------------------------------------------------- model


@dataclass
class ModelConfig:
    """The model on top of the encoder.

    Attributes:
        type: ``ctc``: encoder -> projection -> BiLSTM -> linear -> CTC, greedy decoding;
            ``seq2seq``: encoder -> projection -> BiLSTM -> attention LSTM decoder
            (:class:`speechconv.seq2seq.Seq2Seq`).  Both share the recurrent stack
            (:class:`speechconv.models.recurrent.RecurrentEncoder`) sized below.
        projection: linear size between encoder and BiLSTM (0 = none); a projection of
            the 640-wide conv output keeps the LSTM small.
        hidden: LSTM units per direction.
        lstm_layers: LSTM layers.
        bidirectional: each LSTM layer reads the utterance both ways; ``false``: forward
            only (every output frame depends only on the audio up to it: it streams).
        dropout: dropout before the BiLSTM and before the output layer.
        embed_dim, decoder_dim, attention_dim: ``seq2seq`` sizes.
        max_decode_len: ``seq2seq``: the most tokens greedy decoding emits.
    """

    type: str = "ctc"
    projection: int = 256
    hidden: int = 192
    lstm_layers: int = 1
    bidirectional: bool = True
    dropout: float = 0.1
    embed_dim: int = 64
    decoder_dim: int = 256
    attention_dim: int = 128
    max_decode_len: int = 100

    def __post_init__(self) -> None:
        if self.type not in MODEL_TYPES:
            raise _bad("model.type", self.type, f"one of {MODEL_TYPES}")
        _check_int("model.projection", self.projection, 0)
        for key in ("hidden", "lstm_layers", "embed_dim", "decoder_dim", "attention_dim", "max_decode_len"):
            _check_int(f"model.{key}", getattr(self, key), 1)
        _check_float("model.dropout", self.dropout, 0.0, 1.0, high_open=True)


# -------------------------------------------------------------------------- data


@dataclass
class SpecAugmentConfig:
    """SpecAugment on training features (never on validation): masks and their widest size."""

    freq_masks: int = 2
    freq_width: int = 10
    time_masks: int = 2
    time_width: int = 10

    def __post_init__(self) -> None:
        for key in ("freq_masks", "freq_width", "time_masks", "time_width"):
            _check_int(f"data.spec_augment.{key}", getattr(self, key), 0)


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

    def perturb(self) -> Any:
        """The :class:`speechconv.data.Perturb` of these settings (checks them)."""
        from speechconv.data.perturb import Perturb

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
    spec_augment: SpecAugmentConfig = field(default_factory=SpecAugmentConfig)

    def __post_init__(self) -> None:
        if self.type not in DATA_TYPES:
            raise _bad("data.type", self.type, f"one of {DATA_TYPES}")
        for key in ("max_digits", "train_size", "valid_size", "batch_frames", "max_batch_size"):
            _check_int(f"data.{key}", getattr(self, key), 1)
        _check_int("data.num_workers", self.num_workers, 0)
        self.holdout_speakers = list(self.holdout_speakers)
        if not isinstance(self.augment, AugmentConfig):
            self.augment = AugmentConfig(**self.augment)
        if not isinstance(self.spec_augment, SpecAugmentConfig):
            self.spec_augment = SpecAugmentConfig(**self.spec_augment)
        try:
            self.digit_strings()
        except ValueError as exc:
            raise ConfigError(f"data.{exc}") from exc

    def digit_strings(self) -> Any:
        """The :class:`speechconv.data.DigitStringConfig` of the training strings (checks them)."""
        from speechconv.data.digits import DigitStringConfig

        return DigitStringConfig(1, self.max_digits, tuple(self.edge_silence_ms), self.edge_pause_prob,
                                 tuple(self.gap_ms),
                                 None if self.level_db is None else tuple(self.level_db), self.digit_level_db)


# ----------------------------------------------------------------------- trainer


@dataclass
class TrainerConfig:
    """The optimisation loop.

    Attributes:
        max_steps: optimiser steps (the run's budget: steps, not epochs or minutes).
        seed: seeds torch, numpy, python and the data; same seed -> same losses on CPU.
        device: ``cpu``, ``cuda``, ``cuda:1``...
        resume: ``false``; ``true`` (the run folder's ``last.pt``); or a checkpoint path.
        lr: peak learning rate of AdamW.
        weight_decay: AdamW's decoupled weight decay.
        schedule: ``onecycle`` (warm up to ``lr`` then cosine down), ``cosine`` (linear
            warm-up then cosine), or ``constant``.
        warmup_frac: fraction of ``max_steps`` spent warming up.
        grad_clip: gradient norm clip (0 = off).
        val_every: validate every N steps (and at the end); each validation also writes ``last.pt``.
        checkpoint_every: also write ``last.pt`` every N steps without validating (0: only
            when validating); a crash loses at most this many steps.
        log_every: write the training metrics every N steps.
        num_threads: torch intra-op threads in the main process (0: leave torch's default).
        progress: show the tqdm progress bar.
        nonfinite: what a non-finite loss or gradient norm does: ``stop`` the run with an
            error naming the step and the batch, or ``skip`` the batch (no update; the
            step counter does not advance).  Either way no non-finite weights are saved.
        max_skips: with ``nonfinite=skip``, the most batches skipped in a row; one more
            stops the run (the model has diverged).
        ddp: train with DistributedDataParallel, one process per device, launched by
            ``torchrun`` (gloo on CPU, NCCL on CUDA); see :mod:`speechconv.training.distributed`.
    """

    max_steps: int = 1200
    seed: int = 0
    device: str = "cpu"
    resume: Any = False
    lr: float = 2e-3
    weight_decay: float = 1e-2
    schedule: str = "onecycle"
    warmup_frac: float = 0.15
    grad_clip: float = 5.0
    val_every: int = 400
    log_every: int = 10
    num_threads: int = 0
    progress: bool = True
    checkpoint_every: int = 0
    nonfinite: str = "stop"
    max_skips: int = 10
    ddp: bool = False

    def __post_init__(self) -> None:
        _check_int("trainer.max_steps", self.max_steps, 1)
        _check_int("trainer.seed", self.seed, 0)
        for key in ("val_every", "log_every", "max_skips"):
            _check_int(f"trainer.{key}", getattr(self, key), 1)
        for key in ("num_threads", "checkpoint_every"):
            _check_int(f"trainer.{key}", getattr(self, key), 0)
        if self.nonfinite not in NONFINITE:
            raise _bad("trainer.nonfinite", self.nonfinite, f"one of {NONFINITE}")
        if not (self.device == "cpu" or self.device.startswith("cuda")):
            raise _bad("trainer.device", self.device, "'cpu' or 'cuda[:N]'")
        if not (isinstance(self.resume, (bool, str))):
            raise _bad("trainer.resume", self.resume, "false, true or a checkpoint path")
        _check_float("trainer.lr", self.lr, 0.0, 10.0)
        if self.lr <= 0:
            raise _bad("trainer.lr", self.lr, "a float > 0")
        _check_float("trainer.weight_decay", self.weight_decay, 0.0, 1.0)
        if self.schedule not in SCHEDULES:
            raise _bad("trainer.schedule", self.schedule, f"one of {SCHEDULES}")
        _check_float("trainer.warmup_frac", self.warmup_frac, 0.0, 1.0, high_open=True)
        _check_float("trainer.grad_clip", self.grad_clip, 0.0, float("inf"))


# ------------------------------------------------------------------------ the job


@dataclass
class Config:
    """Everything ``train.py`` reads.

    Attributes:
        mode: ``shapes`` (inspector table + forward check), ``train``, ``eval``
            (WER/CER of ``checkpoint`` on ``data.test_manifest``) or ``transcribe``
            (``audio`` files with ``checkpoint``).
        checkpoint: a checkpoint path for ``eval`` and ``transcribe``.
        audio: audio files for ``transcribe``.
        shapes_audio: the clip ``mode=shapes`` runs through the model (``null``: the
            bundled ``data/fixtures/yes_1000ms.wav``).
    """

    mode: str = "train"
    checkpoint: str | None = None
    audio: list[str] = field(default_factory=list)
    shapes_audio: str | None = None
    features: FeatureConfig = field(default_factory=FeatureConfig)
    encoder: EncoderSettings = field(default_factory=EncoderSettings)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise _bad("mode", self.mode, f"one of {MODES}")


# -------------------------------------------------------------------- validation


def _check_layers(node: Any, where: str) -> None:
    """Validate each layer with its own index in the key (``encoder.layers.1.stride``).

    ``LayerConfig.__post_init__`` only knows it is "a layer"; building the objects
    without it and calling ``validate(where)`` names the index the user typed.
    """
    from omegaconf import OmegaConf

    for i, layer in enumerate(node or []):
        lc = object.__new__(LayerConfig)
        lc.__dict__.update(OmegaConf.to_container(layer, resolve=True))
        lc.validate(f"{where}.{i}")


def check_geometry(features: FeatureConfig, encoder: EncoderConfig) -> None:
    """Every conv layer must leave at least one frequency row and the branches must agree.

    Raises :class:`ConfigError` naming the first layer whose kernel is larger than
    its (padded) input, computed with :mod:`speechconv.shapes`.  With ``same`` padding
    a kernel larger than its input still gives ``ceil(F / stride)`` rows, mostly of
    padding: that warns.
    """
    widths = []
    for name, layers in zip(("layers", "branch"), encoder.branches(), strict=False):
        rows = features.n_mels
        for i, g in enumerate(freq_geometries(layers, features.n_mels)):
            out = shapes.conv_out_length(rows, g.kernel, g.stride, g.padding)
            if g.padding == "same" and g.kernel > rows:
                warnings.warn(
                    f"encoder.{name}.{i}.kernel={list(layers[i].kernel)} spans {g.kernel} rows of an input of {rows} "
                    f"(features.n_mels={features.n_mels}); SAME padding fills the rest with zeros",
                    stacklevel=2,
                )
            if out < 1:
                raise _bad(
                    f"encoder.{name}.{i}.kernel", layers[i].kernel,
                    f"a frequency kernel that fits its input of {rows} rows (features.n_mels={features.n_mels}) "
                    f"with padding {g.padding!r}",
                    "use a smaller kernel or stride, padding 'same', or raise features.n_mels",
                )
            rows = out
        widths.append(rows * layers[-1].filters)
    if len(widths) == 2:
        sub = [shapes.subsampling(time_geometries(b)) for b in encoder.branches()]
        if (widths[0] != widths[1] and encoder.fusion != "concat") or sub[0] != sub[1]:
            raise _bad("encoder.branch", f"D={widths[1]}, subsampling {sub[1]}",
                       f"the main branch's D={widths[0]} and subsampling {sub[0]}",
                       "both branches must give the same (T', D) to be fused")


def validate(cfg: Any, check_mode: bool = True) -> Config:
    """Turn a composed OmegaConf config into a checked :class:`Config`.

    Runs every dataclass' range checks (via ``OmegaConf.to_object``) and the cross
    checks; raises :class:`ConfigError` naming the key, the range and the fix.
    ``check_mode=False`` skips what only the chosen ``mode`` needs (checkpoint, audio).
    """
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        _check_layers(cfg.encoder.layers, "encoder.layers")
        _check_layers(cfg.encoder.branch, "encoder.branch")
        obj = OmegaConf.to_object(cfg)
    except ConfigError:
        raise
    except (ValueError, TypeError, OmegaConfBaseException) as exc:
        raise ConfigError(str(exc).splitlines()[0] if str(exc) else repr(exc)) from exc
    assert isinstance(obj, Config), f"the composed config converts to {type(obj).__name__}, not Config"
    check_geometry(obj.features, obj.encoder)
    if not check_mode:
        return obj
    if obj.mode in ("eval", "transcribe") and not obj.checkpoint:
        raise _bad("checkpoint", obj.checkpoint, f"a checkpoint path with mode={obj.mode}",
                   "add checkpoint=outputs/<run>/last.pt")
    if obj.mode == "eval" and not obj.data.test_manifest:
        raise _bad("data.test_manifest", None, "a JSON-lines manifest with mode=eval",
                   "add data.test_manifest=PATH.jsonl")
    if obj.mode == "transcribe" and not obj.audio:
        raise _bad("audio", [], "a list of audio files with mode=transcribe", "add 'audio=[a.wav,b.flac]'")
    return obj


def config_from_dict(data: dict[str, Any]) -> Config:
    """A :class:`Config` from a plain dict (a checkpoint's), checked like a composed one."""
    from omegaconf import OmegaConf

    merged = OmegaConf.merge(OmegaConf.structured(Config), data)
    return validate(merged, check_mode=False)


def config_to_dict(cfg: Config) -> dict[str, Any]:
    """A :class:`Config` as plain dicts, lists and scalars (for checkpoints)."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)


def register_configs() -> None:
    """Register the schema as ``base_config`` in Hydra's ConfigStore (imports Hydra)."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="base_config", node=Config)


CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
"""The YAML presets of the repository (``configs/``)."""


def compose(overrides: list[str] | None = None, config_dir: str | Path = CONFIG_DIR) -> Any:
    """The config ``python train.py OVERRIDES`` would run, composed without running anything
    (Hydra's compose API; for tests and notebooks).  Returns an OmegaConf ``DictConfig``;
    pass it to :func:`validate` or :func:`speechconv.training.run`."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    register_configs()
    with initialize_config_dir(config_dir=str(Path(config_dir).resolve()), version_base=None):
        return hydra_compose("config", overrides=list(overrides or []))
