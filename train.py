"""speechconv's one entry point: ``python train.py [mode=shapes|train|eval|transcribe|stream|export] [overrides]``.

Examples::

    python train.py                                   # the small run on the bundled digits
    python train.py mode=shapes encoder.layers.0.filters=64 features.n_mels=40
    python train.py mode=eval checkpoint=outputs/<run>/last.pt data.test_manifest=test.jsonl
    python train.py mode=transcribe checkpoint=outputs/<run>/last.pt 'audio=[a.wav,b.flac]'
    python train.py mode=stream checkpoint=outputs/<run>/last.pt 'audio=[a.wav]' stream.chunk_ms=100
    python train.py mode=export checkpoint=outputs/<run>/last.pt export.format=onnx

Configs: ``configs/``, typed by the schemas that :func:`register_configs` puts in Hydra's
ConfigStore (:class:`speechconv.config.Config` and one per group, so that each YAML
preset lists only what differs from its schema).  This file is the only one that imports
Hydra; the jobs are :mod:`speechconv.training`, which tests call directly, composing
configs with :func:`compose`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import hydra
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from speechconv.config import Config, TrainerConfig
from speechconv.data.config import DataConfig
from speechconv.encoder_config import EncoderSettings
from speechconv.feature_config import FeatureConfig
from speechconv.models.config import ModelConfig
from speechconv.training import main as run_job

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
"""The YAML presets (``configs/``)."""

GROUP_SCHEMAS = {"features": FeatureConfig, "encoder": EncoderSettings, "model": ModelConfig,
                 "data": DataConfig, "trainer": TrainerConfig}
"""The schema of each config group with presets in ``configs/``, stored as
``<group>/base_<group>``: a preset names it first in its defaults list and lists only the
keys it changes.  (``stream`` and ``export`` have no presets: set their keys directly.)"""


def register_configs() -> None:
    """Store the schemas in Hydra's ConfigStore: ``base_config`` (the whole
    :class:`Config`, first in ``configs/config.yaml``) and ``base_<group>`` per group."""
    store = ConfigStore.instance()
    store.store(name="base_config", node=Config)
    for group, schema in GROUP_SCHEMAS.items():
        store.store(group=group, name=f"base_{group}", node=schema)


def compose(overrides: list[str] | None = None, config_dir: str | Path = CONFIG_DIR) -> Any:
    """The config ``python train.py OVERRIDES`` would run, composed without running anything
    (Hydra's compose API; for tests and notebooks).  Returns an OmegaConf ``DictConfig``;
    pass it to :func:`speechconv.config.validate` or :func:`speechconv.training.run`."""
    with initialize_config_dir(config_dir=str(Path(config_dir).resolve()), version_base=None):
        return hydra_compose("config", overrides=list(overrides or []))


register_configs()


@hydra.main(config_path="configs", config_name="config", version_base=None)
def main(cfg: DictConfig) -> None:
    code = run_job(cfg, HydraConfig.get().runtime.output_dir)
    if code:
        sys.exit(code)


if __name__ == "__main__":
    main()
