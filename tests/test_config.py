"""Config schemas, presets and validation: bad values stop train.py with the key named."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from speechconv.config import Config, ConfigError, config_from_dict, config_to_dict, validate
from train import CONFIG_DIR, compose

ROOT = Path(__file__).resolve().parents[1]
GROUPS = ("features", "encoder", "model", "data", "trainer", "experiment")


def presets(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


def test_the_required_presets_exist():
    required = {
        "features": {"logmel80", "kaldi"},
        "encoder": {"weiss2017_conv", "weiss2017_full", "valid_padding", "stack4", "conv_stack_fused"},
        "model": {"ctc", "seq2seq"},
        "data": {"digits", "manifest"},
        "trainer": {"cpu_small", "gpu"},
    }
    for group, names in required.items():
        assert names <= set(presets(group)), group
    assert presets("experiment")
    for name in presets("experiment"):
        assert (CONFIG_DIR / "experiment" / f"{name}.yaml").read_text().startswith("# @package _global_")


def test_defaults_are_the_make_run_setup():
    cfg = validate(compose())
    assert isinstance(cfg, Config)
    assert (cfg.mode, cfg.encoder.type, cfg.model.type, cfg.data.type, cfg.trainer.device) == (
        "train", "conv", "ctc", "digits", "cpu")
    assert (cfg.features.n_mels, cfg.features.win_length, cfg.features.hop_length, cfg.features.n_channels) == (
        80, 400, 160, 3)
    # the paper's front: 2 x [32 filters, 3x3, stride 2x2, padding 1, batch norm, ReLU]
    assert [(lc.filters, list(lc.kernel), list(lc.stride), lc.padding, lc.batch_norm, lc.activation)
            for lc in cfg.encoder.layers] == [(32, [3, 3], [2, 2], 1, True, "relu")] * 2


@pytest.mark.parametrize("override", [f"{g}={n}" for g in GROUPS for n in presets(g)])
def test_every_preset_composes_and_validates(override):
    extra = ["data.train_manifest=a.jsonl", "data.valid_manifest=b.jsonl"] if override == "data=manifest" else []
    cfg = validate(compose([override, *extra]))
    group, name = override.split("=")
    if group == "encoder":
        assert cfg.encoder.type == ("weiss2017" if name == "weiss2017_full" else "conv")


def test_weiss2017_full_keeps_the_conv_front_overridable():
    cfg = validate(compose(["encoder=weiss2017_full", "encoder.layers.0.filters=64"]))
    assert cfg.encoder.type == "weiss2017" and cfg.encoder.layers[0].filters == 64
    assert (cfg.encoder.weiss2017.lstm_layers, cfg.encoder.weiss2017.lstm_units, cfg.encoder.weiss2017.projection) == (
        3, 256, 512)


@pytest.mark.parametrize(
    ("overrides", "key", "hint"),
    [
        (["encoder.layers.1.stride=[0,2]"], "encoder.layers.1.stride=[0, 2]", "strides >= 1"),
        (["features.n_mels=300"], "features.n_mels=300", "n_fft/2+1 = 257"),
        (["encoder=valid_padding", "features.n_mels=2"], "encoder.layers.0.kernel", "fits its input of 2 rows"),
        (["encoder=stack4", "features.n_mels=8", "encoder.layers.3.padding=valid"], "encoder.layers.3.kernel",
         "input of 1 rows"),
        (["model.hidden=0"], "model.hidden=0", "an int >= 1"),
        (["trainer.lr=-1"], "trainer.lr=-1", "[0.0, 10.0]"),
        (["encoder.type=rnn"], "encoder.type='rnn'", "one of ('conv', 'weiss2017')"),
        (["encoder=weiss2017_full", "encoder.weiss2017.convlstm_kernel=2"], "encoder.weiss2017.convlstm_kernel=2", "odd"),
        (["encoder=conv_stack_fused", "encoder.branch.0.filters=64"], "encoder.branch", "D=640"),
        (["mode=eval", "checkpoint=x.pt"], "data.test_manifest", "data.test_manifest=PATH.jsonl"),
        (["mode=transcribe", "checkpoint=x.pt"], "audio=[]", "'audio=[a.wav,b.flac]'"),
        (["mode=fly"], "mode='fly'", "one of"),
        (["data.spec_augment.time_masks=-1"], "data.spec_augment.time_masks=-1", "an int >= 0"),
    ],
)
@pytest.mark.filterwarnings("ignore:.*SAME padding fills the rest with zeros:UserWarning")  # stack4 at 8 mels warns first
def test_validate_names_key_and_range(overrides, key, hint):
    with pytest.raises(ConfigError) as err:
        validate(compose(overrides))
    assert key in str(err.value) and hint in str(err.value), str(err.value)


def test_same_padding_kernel_larger_than_input_warns():
    with pytest.warns(UserWarning, match=r"encoder\.layers\.0\.kernel=\[3, 100\] spans 100 rows of an input of 80"):
        validate(compose(["encoder=tf_same", "encoder.layers.0.kernel=[3,100]"]))


def test_config_round_trips_through_a_plain_dict():
    cfg = validate(compose(["encoder=weiss2017_full", "model=seq2seq", "features.n_mels=40"]))
    plain = config_to_dict(cfg)
    assert isinstance(plain, dict) and isinstance(plain["encoder"]["layers"][0], dict)
    assert config_from_dict(plain) == cfg


def test_library_does_not_import_hydra():
    code = "import sys, speechconv.config, speechconv.training.loop; assert 'hydra' not in sys.modules, 'hydra imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def run_train_py(*overrides: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "train.py"), f"hydra.run.dir={cwd}", *overrides],
                          capture_output=True, text=True, cwd=cwd, timeout=120)


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        (["encoder.layers.0.stride=[0,2]"], "encoder.layers.0.stride"),
        (["encoder.layers.0.stride=0"], "encoder.layers.0.stride"),
        (["features.n_mels=300"], "features.n_mels=300"),
        (["encoder.layers.0.padding=valid", "encoder.layers.0.kernel=[3,100]"], "encoder.layers.0.kernel"),
        (["encoder.layers.0.filterz=3"], "filterz"),
        (["trainer.max_steps=abc"], "trainer.max_steps"),
    ],
)
def test_train_py_stops_on_bad_values_before_reading_data(overrides, named, tmp_path):
    # data.fsdd_dir points nowhere: the config must fail before any data is read
    proc = run_train_py(*overrides, "data.fsdd_dir=/nonexistent", cwd=tmp_path)
    assert proc.returncode != 0
    assert named in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and "/nonexistent" not in proc.stderr, proc.stderr
