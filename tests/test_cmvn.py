"""Normalisation against numpy: utterance CMVN over valid frames, global statistics
over files, the saved file and the module that loads it."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import soundfile as sf
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from speechconv import FeatureConfig, compute_global_stats
from speechconv.audio import load_audio
from speechconv.features import LogMelDeltas, cmvn
from speechconv.features.cli import main
from tests.conftest import SPEECH_CLIPS


@settings(max_examples=40, deadline=None)
@given(lengths=st.lists(st.integers(0, 30), min_size=1, max_size=6), seed=st.integers(0, 2**31 - 1))
def test_utterance_cmvn_matches_numpy_over_valid_frames(lengths, seed):
    gen = np.random.default_rng(seed)
    T = max(lengths)
    x = gen.normal(3.0, 2.0, size=(len(lengths), T, 4, 3)).astype(np.float32)
    out = cmvn.utterance_cmvn(torch.from_numpy(x), torch.tensor(lengths)).numpy()
    for b, n in enumerate(lengths):
        assert not out[b, n:].any(), "padding must stay exactly zero"
        if n == 0:
            continue
        valid = x[b, :n].astype(np.float64)
        std = np.maximum(valid.std(axis=0), cmvn.STD_FLOOR)  # population std, per (bin, channel)
        np.testing.assert_allclose(out[b, :n], (valid - valid.mean(axis=0)) / std, atol=1e-4, rtol=1e-4)


@settings(max_examples=20, deadline=None)
@given(lengths=st.lists(st.integers(1, 30), min_size=1, max_size=4), seed=st.integers(0, 2**31 - 1))
def test_utterance_cmvn_per_channel_equals_on_the_stacked_features(lengths, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(len(lengths), max(lengths), 5, 3, generator=gen)
    lens = torch.tensor(lengths)
    stacked = cmvn.utterance_cmvn(x, lens)
    for c in range(3):
        torch.testing.assert_close(cmvn.utterance_cmvn(x[..., c], lens), stacked[..., c], atol=1e-6, rtol=0)


def test_utterance_normalisation_in_the_module_is_batched_equals_single():
    module = LogMelDeltas(FeatureConfig(normalization="utterance"))
    gen = torch.Generator().manual_seed(0)
    batch = torch.randn(3, 12000, generator=gen) * 0.2
    lengths = torch.tensor([12000, 5000, 2000])
    features, frames = module(batch, lengths)
    for b in range(3):
        alone, n = module(batch[b, : lengths[b]])
        torch.testing.assert_close(features[b, :n], alone, atol=1e-4, rtol=0)
        assert not features[b, n:].any()
        np.testing.assert_allclose(alone.mean(0).numpy(), 0.0, atol=1e-4)
        np.testing.assert_allclose(alone.std(0, unbiased=False).numpy(), 1.0, atol=1e-3)


@pytest.fixture(scope="module")
def clips():
    return [p for p in SPEECH_CLIPS if p.suffix == ".wav"][:4]


def test_global_stats_match_numpy_and_load_weights_only(tmp_path, clips):
    cfg = FeatureConfig(backend="kaldi")
    path = compute_global_stats(clips, cfg, tmp_path / "stats" / "cmvn.pt")
    assert path.is_file() and not list(path.parent.glob(".*tmp*"))
    stats = torch.load(path, weights_only=True)
    plain = LogMelDeltas(cfg)
    frames = []
    for clip in clips:
        features, n = plain(load_audio(clip, 16000))
        frames.append(features[: int(n)].numpy().astype(np.float64))
    every = np.concatenate(frames)  # (sum T, F, C)
    assert stats["count"] == every.shape[0]
    np.testing.assert_allclose(stats["mean"].numpy(), every.mean(axis=0), atol=1e-4, rtol=1e-5)
    np.testing.assert_allclose(stats["std"].numpy(), every.std(axis=0), atol=1e-4, rtol=1e-4)
    assert stats["channels"] == cfg.channels and stats["n_mels"] == 80

    module = LogMelDeltas(dataclasses.replace(cfg, normalization="global", global_stats_path=str(path)))
    assert {"global_mean", "global_std"} <= dict(module.named_buffers()).keys()
    wave = load_audio(clips[0], 16000)
    normalised, n = module(wave)
    expected = (frames[0] - every.mean(axis=0)) / every.std(axis=0)
    np.testing.assert_allclose(normalised[: int(n)].numpy(), expected, atol=1e-3, rtol=1e-4)
    batch, lengths = module(torch.stack([wave, torch.zeros_like(wave)]), torch.tensor([wave.numel(), 1000]))
    assert not batch[1, int(lengths[1]) :].any()


def test_global_stats_from_waveforms_paths_a_manifest_and_a_file_list(tmp_path, clips):
    """compute_global_stats takes waveforms or paths; manifests and file lists are read
    by the command line (``--global-stats``), which gives the same statistics."""
    cfg = FeatureConfig()
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps({"audio_filepath": str(p), "text": "x"}) + "\n" for p in clips))
    listing = tmp_path / "files.txt"
    listing.write_text("\n".join(str(p) for p in clips) + "\n")
    a = torch.load(compute_global_stats(clips, cfg, tmp_path / "a.pt"), weights_only=True)
    waves = [load_audio(p, 16000) for p in clips]
    compute_global_stats(iter(waves), cfg, tmp_path / "b.pt")
    assert main([str(manifest), "--global-stats", str(tmp_path / "c.pt")]) == 0
    assert main([str(listing), "--global-stats", str(tmp_path / "d.pt")]) == 0
    for name in ("b", "c", "d"):
        other = torch.load(tmp_path / f"{name}.pt", weights_only=True)
        assert torch.equal(a["mean"], other["mean"]) and torch.equal(a["std"], other["std"]), name
        assert other["count"] == a["count"]


def test_global_stats_errors(tmp_path, clips):
    with pytest.raises(ValueError, match="no audio"):
        compute_global_stats([], FeatureConfig(), tmp_path / "x.pt")
    tiny = tmp_path / "tiny.wav"
    sf.write(tiny, np.zeros(100, dtype=np.float32), 16000)
    with pytest.raises(ValueError, match="long enough"):
        compute_global_stats([tiny], FeatureConfig(), tmp_path / "x.pt")
    assert not (tmp_path / "x.pt").exists()
    path = compute_global_stats(clips[:1], FeatureConfig(n_mels=40), tmp_path / "40.pt")
    with pytest.raises(ValueError, match="expected \\(F, C\\) = \\(80, 3\\)"):
        LogMelDeltas(FeatureConfig(normalization="global", global_stats_path=str(path)))
    with pytest.raises(ValueError, match="cannot be read"):
        LogMelDeltas(FeatureConfig(normalization="global", global_stats_path=str(tmp_path / "missing.pt")))
