"""speechconv's one entry point: ``python train.py [mode=shapes|train|eval|transcribe] [overrides]``.

Examples::

    python train.py                                   # the small run on the bundled digits
    python train.py mode=shapes encoder.layers.0.filters=64 features.n_mels=40
    python train.py mode=eval checkpoint=outputs/<run>/last.pt data.test_manifest=test.jsonl
    python train.py mode=transcribe checkpoint=outputs/<run>/last.pt 'audio=[a.wav,b.flac]'

Configs: ``configs/`` (schemas in ``speechconv/config.py``).  Everything else is in
:mod:`speechconv.training`, which tests call directly.
"""

from __future__ import annotations

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from speechconv.config import register_configs
from speechconv.training import main as run_job

register_configs()


@hydra.main(config_path="configs", config_name="config", version_base=None)
def main(cfg: DictConfig) -> None:
    code = run_job(cfg, HydraConfig.get().runtime.output_dir)
    if code:
        sys.exit(code)


if __name__ == "__main__":
    main()
