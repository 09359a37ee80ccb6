"""Hydra multirun: ``python train.py -m encoder.layers.0.filters=16,32`` runs both jobs, each into its own folder."""

from __future__ import annotations

import torch
from train_helpers import RUN, run, tiny_fsdd, train_cmd


def test_multirun_trains_each_job_into_its_own_folder(tmp_path):
    fsdd = tiny_fsdd(tmp_path / "fsdd")
    sweep = tmp_path / "sweep"
    overrides = [o for o in RUN if not o.startswith(("trainer.max_steps", "trainer.val_every"))]
    proc = run(train_cmd("-m", "encoder.layers.0.filters=16,32", "trainer.max_steps=5", "trainer.val_every=5",
                         *overrides, f"data.fsdd_dir={fsdd}", f"hydra.sweep.dir={sweep}"), tmp_path)
    assert proc.returncode == 0, proc.stdout
    filters = {}
    for job in ("0", "1"):
        state = torch.load(sweep / job / "last.pt", weights_only=True)
        assert state["step"] == 5
        filters[job] = state["config"]["encoder"]["layers"][0]["filters"]
        # the weights are the job's own: 16 or 32 output channels in the first conv
        first = next(v for k, v in state["model"].items() if k.endswith("layers.0.conv.weight"))
        assert first.shape[0] == filters[job]
        assert (sweep / job / "metrics.csv").is_file() and (sweep / job / ".hydra" / "overrides.yaml").is_file()
    assert filters == {"0": 16, "1": 32}
    assert proc.stdout.count("done: 5 steps") == 2
