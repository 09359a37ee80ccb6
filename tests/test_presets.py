"""Every preset and experiment composes and trains for two steps (tiny sizes, into tmp_path)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
from train_helpers import holdout_speakers

from speechconv.config import validate
from speechconv.training.loop import train  # noqa: E402
from train import CONFIG_DIR, compose

FSDD = Path(__file__).resolve().parents[1] / "data" / "fsdd"
WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

# Small enough for a few seconds per run; keys of groups not in use are harmless.
TINY = [
    "data.train_size=4", "data.valid_size=2", "data.num_workers=0", "data.max_digits=2", "data.max_batch_size=2",
    "trainer.max_steps=2", "trainer.val_every=2", "trainer.log_every=1", "trainer.progress=false",
    "model.hidden=16", "model.projection=16", "model.decoder_dim=16", "model.attention_dim=8", "model.embed_dim=8",
    "model.max_decode_len=6",
    "encoder.weiss2017.lstm_units=8", "encoder.weiss2017.projection=16", "encoder.weiss2017.lstm_layers=1",
    "encoder.weiss2017.convlstm_filters=4",
]


@pytest.fixture(scope="session")
def tiny_fsdd(tmp_path_factory) -> Path:
    """Two speakers and the held-out ones, takes 0 (validation) and 5 (training) of every digit."""
    folder = tmp_path_factory.mktemp("fsdd")
    for digit in range(10):
        for speaker in ("jackson", "lucas", *holdout_speakers()):
            for take in (0, 5):
                shutil.copy(FSDD / f"{digit}_{speaker}_{take}.flac", folder)
    return folder


@pytest.fixture(scope="session")
def manifests(tiny_fsdd) -> list[str]:
    """train.jsonl / valid.jsonl beside the clips, relative paths, digit-word transcripts."""
    paths = []
    for split, take in (("train", 5), ("valid", 0)):
        rows = [{"audio_filepath": f"{d}_jackson_{take}.flac", "text": WORDS[d]} for d in range(10)]
        path = tiny_fsdd / f"{split}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        paths.append(str(path))
    return paths


def _names(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


CASES = ([f"features={n}" for n in _names("features")] + [f"encoder={n}" for n in _names("encoder")]
         + [f"model={n}" for n in _names("model")] + [f"data={n}" for n in _names("data")]
         + [f"trainer={n}" for n in _names("trainer")] + [f"experiment={n}" for n in _names("experiment")])


@pytest.mark.parametrize("choice", CASES)
def test_preset_trains_two_steps(choice, tiny_fsdd, manifests, tmp_path):
    overrides = [choice, *TINY, f"data.fsdd_dir={tiny_fsdd}"]
    if choice == "data=manifest":
        overrides += [f"data.train_manifest={manifests[0]}", f"data.valid_manifest={manifests[1]}"]
    if choice == "trainer=gpu":
        overrides += ["trainer.device=cpu"]  # the preset's other settings, on the CPU the tests have
    cfg = validate(compose(overrides))
    result = train(cfg, tmp_path)
    assert len(result.losses) == 2 and all(math.isfinite(x) for x in result.losses)
    assert (tmp_path / "last.pt").is_file() and result.valid and 0 <= result.valid[-1]["cer"]


def _leaves(node: object, prefix: str) -> list[tuple[str, object]]:
    """Dotted keys and values of every scalar a YAML body sets (list items by index)."""
    if isinstance(node, dict):
        return [kv for k, v in node.items() for kv in _leaves(v, f"{prefix}.{k}" if prefix else str(k))]
    if isinstance(node, list):
        return [kv for i, v in enumerate(node) for kv in _leaves(v, f"{prefix}.{i}")]
    return [(prefix, node)]


PRESETS = [(g, n) for g in ("features", "encoder", "model", "data", "trainer", "experiment") for n in _names(g)]
MANIFESTS = ["data.train_manifest=a.jsonl", "data.valid_manifest=b.jsonl"]


@pytest.mark.parametrize("group,name", PRESETS)
def test_preset_sets_what_it_names(group, name):
    """Each key a preset sets reaches the composed config with the preset's value (a preset
    silently ignored, or overridden by another file, fails), and a preset that sets keys
    changes the config against its group's schema alone (a preset that only restates
    defaults fails); a preset with no keys composes to exactly its schema."""
    from omegaconf import OmegaConf

    text = (CONFIG_DIR / group / f"{name}.yaml").read_text()
    body = OmegaConf.to_container(OmegaConf.create(text))
    body.pop("defaults", None)
    root = group == "experiment" or text.startswith("# @package _global_")
    extra = MANIFESTS if (group, name) == ("data", "manifest") else []
    composed = compose([f"{group}={name}", *extra])
    baseline = compose(extra if group == "experiment" else [f"{group}=base_{group}", *extra])
    leaves = _leaves(body, "" if root else group)
    for key, value in leaves:
        if value != "???":
            assert OmegaConf.select(composed, key) == value, f"{group}={name} sets {key}={value!r}"
    changed = OmegaConf.to_container(composed) != OmegaConf.to_container(baseline)
    assert changed == bool(leaves), f"{group}={name} sets {len(leaves)} keys but changed={changed}"
