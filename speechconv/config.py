"""The schema of everything ``train.py`` reads (:class:`Config`), and its validation.

Each group's schema lives with the code it configures: :class:`speechconv.FeatureConfig`
(``features``), :class:`speechconv.encoder_config.EncoderSettings` (``encoder``),
:class:`speechconv.models.config.ModelConfig` (``model``),
:class:`speechconv.data.config.DataConfig` (``data``); the job's own groups
(``trainer``, ``stream``, ``export``) are here.  They are plain dataclasses that OmegaConf
understands, so Hydra types each override (unknown keys and wrong types stop the program
at start-up), and each checks its ranges in ``__post_init__`` when :func:`validate`
converts the composed config with ``OmegaConf.to_object``; :func:`validate` then
cross-checks values that span groups (the encoder's geometry against
``features.n_mels``, what the ``mode`` needs).  Every failure is a
:class:`~speechconv.checks.ConfigError` naming the key, the allowed range and the fix.

``train.py`` registers these schemas in Hydra's ConfigStore; nothing in the package
imports Hydra.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

from speechconv import shapes
from speechconv.checks import ConfigError, bad, check_choice, check_float, check_int
from speechconv.data.config import DataConfig
from speechconv.encoder_config import (
    EncoderConfig,
    EncoderSettings,
    LayerConfig,
    check_freq_fit,
    freq_geometries,
    time_geometries,
)
from speechconv.feature_config import FeatureConfig
from speechconv.models.config import ModelConfig

MODES = ("shapes", "train", "eval", "transcribe", "stream", "export")
SCHEDULES = ("onecycle", "cosine", "constant")
NONFINITE = ("stop", "skip")
EXPORT_FORMATS = ("onnx", "pt2")


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
        check_int("trainer.max_steps", self.max_steps, 1)
        check_int("trainer.seed", self.seed, 0)
        for key in ("val_every", "log_every", "max_skips"):
            check_int(f"trainer.{key}", getattr(self, key), 1)
        for key in ("num_threads", "checkpoint_every"):
            check_int(f"trainer.{key}", getattr(self, key), 0)
        check_choice("trainer.nonfinite", self.nonfinite, NONFINITE)
        if not (self.device == "cpu" or self.device.startswith("cuda")):
            raise bad("trainer.device", self.device, "'cpu' or 'cuda[:N]'")
        if not (isinstance(self.resume, (bool, str))):
            raise bad("trainer.resume", self.resume, "false, true or a checkpoint path")
        check_float("trainer.lr", self.lr, 0.0, 10.0)
        if self.lr <= 0:
            raise bad("trainer.lr", self.lr, "a float > 0")
        check_float("trainer.weight_decay", self.weight_decay, 0.0, 1.0)
        check_choice("trainer.schedule", self.schedule, SCHEDULES)
        check_float("trainer.warmup_frac", self.warmup_frac, 0.0, 1.0, high_open=True)
        check_float("trainer.grad_clip", self.grad_clip, 0.0, float("inf"))


# ---------------------------------------------------------------- stream, export


@dataclass
class StreamConfig:
    """``mode=stream``: how the audio files are fed to the streaming recogniser.

    Attributes:
        chunk_ms: milliseconds of audio per chunk (as a microphone or a call delivers it).
    """

    chunk_ms: float = 100.0

    def __post_init__(self) -> None:
        check_float("stream.chunk_ms", self.chunk_ms, 0.0625, 60_000.0)


@dataclass
class ExportConfig:
    """``mode=export``: the recogniser, from raw audio to log-probabilities, as one graph.

    Attributes:
        format: ``onnx`` (onnxruntime and every ONNX runtime) or ``pt2`` (``torch.export``).
        path: the file to write (``null``: ``model.onnx`` / ``model.pt2`` in the run folder).
    """

    format: str = "onnx"
    path: str | None = None

    def __post_init__(self) -> None:
        check_choice("export.format", self.format, EXPORT_FORMATS)


# ------------------------------------------------------------------------ the job


@dataclass
class Config:
    """Everything ``train.py`` reads.

    Attributes:
        mode: ``shapes`` (inspector table + forward check), ``train``, ``eval``
            (WER/CER of ``checkpoint`` on ``data.test_manifest``), ``transcribe``
            (``audio`` files with ``checkpoint``), ``stream`` (the same, fed chunk by
            chunk to a streaming recogniser) or ``export`` (``checkpoint`` as one graph).
        checkpoint: a checkpoint path for ``eval``, ``transcribe``, ``stream`` and ``export``.
        audio: audio files for ``transcribe`` and ``stream``.
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
    stream: StreamConfig = field(default_factory=StreamConfig)
    export: ExportConfig = field(default_factory=ExportConfig)

    def __post_init__(self) -> None:
        check_choice("mode", self.mode, MODES)


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
    its (padded) input (:func:`speechconv.encoder_config.check_freq_fit`).  With ``same`` padding
    a kernel larger than its input still gives ``ceil(F / stride)`` rows, mostly of
    padding: that warns.
    """
    widths = []
    for name, layers in zip(("layers", "branch"), encoder.branches(), strict=False):
        rows = check_freq_fit(layers, features.n_mels, f"encoder.{name}")
        for i, (g, rows_in) in enumerate(zip(freq_geometries(layers, features.n_mels), [features.n_mels, *rows],
                                             strict=False)):
            if g.padding == "same" and g.kernel > rows_in:
                warnings.warn(
                    f"encoder.{name}.{i}.kernel={list(layers[i].kernel)} spans {g.kernel} rows of an input of "
                    f"{rows_in} (features.n_mels={features.n_mels}); SAME padding fills the rest with zeros",
                    stacklevel=2,
                )
        widths.append(rows[-1] * layers[-1].filters)
    if len(widths) == 2:
        sub = [shapes.subsampling(time_geometries(b)) for b in encoder.branches()]
        if (widths[0] != widths[1] and encoder.fusion != "concat") or sub[0] != sub[1]:
            raise bad("encoder.branch", f"D={widths[1]}, subsampling {sub[1]}",
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
    if obj.mode in ("eval", "transcribe", "stream", "export") and not obj.checkpoint:
        raise bad("checkpoint", obj.checkpoint, f"a checkpoint path with mode={obj.mode}",
                   "add checkpoint=outputs/<run>/last.pt")
    if obj.mode == "eval" and not obj.data.test_manifest:
        raise bad("data.test_manifest", None, "a JSON-lines manifest with mode=eval",
                   "add data.test_manifest=PATH.jsonl")
    if obj.mode in ("transcribe", "stream") and not obj.audio:
        raise bad("audio", [], f"a list of audio files with mode={obj.mode}", "add 'audio=[a.wav,b.flac]'")
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
