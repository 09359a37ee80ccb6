"""Checkpoints: plain values only (weights_only loads them), atomic writes, clear errors."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from speechconv.training.checkpoint import (
    CheckpointError,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)


def _state() -> dict:
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    return {"model": model.state_dict(), "optimizer": opt.state_dict(), "config": {"mode": "train", "n": [1, 2]},
            "vocab": {"kind": "char"}, "step": 7, "rng": rng_state(), "metrics": {"rows": [{"step": 1, "loss": 0.5}]}}


def test_round_trip_with_weights_only(tmp_path):
    state = _state()
    path = save_checkpoint(tmp_path / "last.pt", state)
    loaded = load_checkpoint(path)
    assert loaded["step"] == 7 and loaded["config"] == state["config"] and loaded["metrics"] == state["metrics"]
    for k, v in state["model"].items():
        assert torch.equal(loaded["model"][k], v)
    # the file really is loadable by the safe unpickler on its own
    assert torch.load(path, weights_only=True)["vocab"] == {"kind": "char"}
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"], "a temporary file was left behind"


def test_rng_state_restores_every_generator():
    state = rng_state()
    first = (torch.rand(3), np.random.rand(3), random.random())
    set_rng_state(state)
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(first[0], again[0]) and np.array_equal(first[1], again[1]) and first[2] == again[2]


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_checkpoint_names_the_file(tmp_path, damage):
    path = save_checkpoint(tmp_path / "last.pt", _state())
    data = path.read_bytes()
    path.write_bytes({"truncate": data[: len(data) // 2], "garbage": b"\x00not a checkpoint" * 50, "empty": b""}[damage])
    with pytest.raises(CheckpointError, match=r"last\.pt is corrupt or half-written"):
        load_checkpoint(path)


def test_missing_and_foreign_checkpoints(tmp_path):
    with pytest.raises(CheckpointError, match=r"nope\.pt does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match=r"other\.pt lacks \['model', 'config', 'vocab', 'step'\]"):
        load_checkpoint(tmp_path / "other.pt")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="holds a list"):
        load_checkpoint(tmp_path / "list.pt")


class _Payload:
    """Unpickling this runs ``Path.touch`` on a file: what a malicious checkpoint would do."""

    def __init__(self, target) -> None:
        self.target = target

    def __reduce__(self):
        import pathlib

        return pathlib.Path.touch, (pathlib.Path(self.target),)


@pytest.mark.parametrize("planted", ["payload", "numpy_generator"])
def test_pickled_objects_are_refused_unread(tmp_path, planted):
    """A checkpoint that needs code to unpickle is refused with a message that says so, and
    the code never runs (an evil pickle) whatever the object (a foreign class too)."""
    state = _state()
    marker = tmp_path / "payload-ran"
    state["config"] = _Payload(marker) if planted == "payload" else np.random.default_rng(0)
    torch.save(state, tmp_path / "unsafe.pt")
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(tmp_path / "unsafe.pt")
    message = str(info.value)
    assert f"checkpoint {tmp_path / 'unsafe.pt'} was refused" in message
    assert "pickled objects that only running code could rebuild" in message and "GLOBAL" in message
    assert "nothing in it was run" in message and "corrupt" not in message
    assert not marker.exists(), "the planted payload ran"


def test_a_failed_save_keeps_the_previous_file(tmp_path):
    path = save_checkpoint(tmp_path / "last.pt", _state())
    before = path.read_bytes()
    bad = _state()
    bad["config"] = {"fn": lambda: 0}  # torch.save cannot pickle a lambda
    with pytest.raises(Exception):  # noqa: B017 - whatever pickle raises, the old file must survive
        save_checkpoint(path, bad)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["last.pt"]
