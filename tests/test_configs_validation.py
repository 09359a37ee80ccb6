"""FeatureConfig / EncoderConfig reject bad values with a message naming the key and range."""

from __future__ import annotations

import pytest

from speechconv.encoder_config import EncoderConfig, LayerConfig, freq_geometries
from speechconv.feature_config import FeatureConfig


def test_feature_defaults_are_the_papers():
    c = FeatureConfig()
    assert (c.sample_rate, c.n_mels, c.win_length, c.hop_length, c.n_channels) == (16000, 80, 400, 160, 3)
    assert c.num_frames(16000) == 98  # 1 + (16000 - 400) // 160


@pytest.mark.parametrize(
    ("kwargs", "key", "hint"),
    [
        ({"n_mels": 300}, "features.n_mels=300", "n_fft/2+1 = 257"),
        ({"n_fft": 256}, "features.n_fft=256", ">= the window length 400"),
        ({"framing": "snip"}, "features.framing='snip'", "kaldi"),
        ({"channels": ["static", "velocity"]}, "features.channels", "distinct names"),
        ({"channels": []}, "features.channels", "non-empty"),
        ({"f_min": 9000.0}, "features.f_min/f_max", "Nyquist (8000 Hz)"),
        ({"normalization": "global"}, "features.global_stats_path", "compute_global_stats"),
        ({"backend": "htk"}, "features.backend='htk'", "torchaudio"),
        ({"delta_window": 3}, "features.order2='kaldi'", "cascade"),
    ],
)
def test_feature_config_errors_name_key_and_range(kwargs, key, hint):
    with pytest.raises(ValueError) as err:
        FeatureConfig(**kwargs)
    assert key in str(err.value) and hint in str(err.value)


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"stride": [0, 2]}, "encoder.layer.stride=[0, 2]"),
        ({"kernel": [3, 0]}, "encoder.layer.kernel"),
        ({"filters": 0}, "encoder.layer.filters=0"),
        ({"padding": "full"}, "encoder.layer.padding='full'"),
        ({"padding": [1, "wide"]}, "encoder.layer.padding"),
        ({"activation": "swish"}, "encoder.layer.activation='swish'"),
        ({"dropout": 1.0}, "encoder.layer.dropout=1.0"),
        ({"kind": "lstm"}, "encoder.layer.kind='lstm'"),
    ],
)
def test_layer_config_errors(kwargs, key):
    with pytest.raises(ValueError, match="invalid: expected") as err:
        LayerConfig(**kwargs)
    assert key in str(err.value)


def test_encoder_config_names_the_layer_index():
    bad = LayerConfig()
    bad.stride = [2, 0]  # bypass __post_init__, as a Hydra override would before validation
    with pytest.raises(ValueError, match=r"encoder\.layers\.1\.stride"):
        EncoderConfig(layers=[LayerConfig(), bad])
    with pytest.raises(ValueError, match="encoder.too_short"):
        EncoderConfig(too_short="crop")


def test_layer_geometry():
    assert [g.kernel for g in freq_geometries([LayerConfig(kind="stack", frames=4)], 80)] == [80]
    lc = LayerConfig(padding=["valid", 1], kernel=[5, 3], stride=[1, 2])
    assert lc.time_geometry().padding == "valid" and lc.freq_geometry(80).padding == 1
    assert EncoderConfig(layers=[{"filters": 8}]).layers[0].filters == 8
