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

import os
import sys

# Set before torch is imported (PyTorch reads it once per process): CPU tensors of 2 MB
# or more get 2 MB pages (madvise), so a fresh batch-sized tensor costs a few page
# faults instead of thousands.  Same values; bench/encoder.py's steps on 16 x 1000-frame
# batches run a third to a half faster, while make run's batches of <= 4000 frames show
# no difference beyond noise (300-step A/B: 141-149 ms per step with, 148-153 without).
# An explicit THP_MEM_ALLOC_ENABLE=0 in the environment is kept.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

import hydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from speechconv.config import register_configs  # noqa: E402
from speechconv.training import main as run_job  # noqa: E402

register_configs()


@hydra.main(config_path="configs", config_name="config", version_base=None)
def main(cfg: DictConfig) -> None:
    code = run_job(cfg, HydraConfig.get().runtime.output_dir)
    if code:
        sys.exit(code)


if __name__ == "__main__":
    main()
