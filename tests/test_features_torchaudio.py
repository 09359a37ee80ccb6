"""The ``torchaudio`` backend against librosa on every bundled clip (``center`` framing),
and its mel matrix against torchaudio's and librosa's."""

from __future__ import annotations

import librosa
import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio.functional as AF

from speechconv import FeatureConfig
from speechconv.fbank import apply_mel, mel_blocks, mel_matrix
from speechconv.feature_config import FLT_EPSILON
from speechconv.features import LogMelDeltas
from tests.conftest import SPEECH_CLIPS

MAX_ABS, P999, DELTA_MAX = 2e-2, 2e-3, 5e-3


def read_16k(path) -> torch.Tensor:
    """``(S,)`` float32 mono at 16 kHz: soundfile + torchaudio's default resampler."""
    data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    wave = torch.from_numpy(data.mean(axis=1))
    return AF.resample(wave, rate, 16000) if rate != 16000 else wave


def librosa_log_mel(wave: np.ndarray, cfg: FeatureConfig) -> np.ndarray:
    """``(T, F)`` natural-log mel energies from librosa with the same settings."""
    mel = librosa.feature.melspectrogram(
        y=wave, sr=cfg.sample_rate, n_fft=cfg.n_fft, hop_length=cfg.hop_length, win_length=cfg.win_length,
        window="hann", center=True, pad_mode="constant", power=cfg.power, n_mels=cfg.n_mels,
        htk=cfg.mel_scale == "htk", norm=cfg.mel_norm, fmin=cfg.f_min, fmax=cfg.upper_hz,
    )
    return np.log(np.maximum(mel, cfg.log_floor)).T  # (F, T) -> (T, F)


@pytest.mark.parametrize("clip", SPEECH_CLIPS, ids=[p.name for p in SPEECH_CLIPS])
def test_torchaudio_backend_matches_librosa(clip, feature_path):
    cfg = FeatureConfig(backend="torchaudio", framing="center", channels=["static", "delta"])
    wave = read_16k(clip)
    ours, n = LogMelDeltas(cfg)(wave)
    ref = librosa_log_mel(wave.numpy(), cfg)
    ref_delta = librosa.feature.delta(ref.T, width=5, mode="nearest", axis=-1).T  # (T, F) -> (F, T) -> (T, F)
    assert int(n) == ref.shape[0] == ours.shape[0]
    diff = np.abs(ours[..., 0].numpy() - ref)
    max_abs, p999 = float(diff.max()), float(np.percentile(diff, 99.9))
    delta_max = float(np.abs(ours[..., 1].numpy() - ref_delta).max())
    print(f"\nPARITY torchaudio-vs-librosa ({feature_path}) {clip.name}: frames {ref.shape[0]} log-mel max {max_abs:.2e} "
          f"p99.9 {p999:.2e} delta max {delta_max:.2e}")
    assert max_abs <= MAX_ABS and p999 <= P999, (max_abs, p999)
    assert delta_max <= DELTA_MAX


def test_slaney_magnitude_settings_match_librosa(feature_path):
    cfg = FeatureConfig(framing="center", mel_scale="slaney", mel_norm="slaney", power=1.0, f_min=0.0,
                        f_max=7600.0, channels=["static"])
    wave = read_16k(SPEECH_CLIPS[1])
    ours = LogMelDeltas(cfg)(wave)[0][..., 0].numpy()
    diff = np.abs(ours - librosa_log_mel(wave.numpy(), cfg))
    assert diff.max() <= MAX_ABS and np.percentile(diff, 99.9) <= P999


def test_kaldi_framing_matches_librosa_without_centering():
    """Snip-edges frames are librosa's ``center=False`` frames with the window at the start."""
    cfg = FeatureConfig(framing="kaldi", channels=["static"])
    wave = read_16k(SPEECH_CLIPS[1])
    ours = LogMelDeltas(cfg)(wave)[0][..., 0].numpy()
    window = np.zeros(cfg.n_fft, dtype=np.float32)
    window[: cfg.win_length] = np.hanning(cfg.win_length + 1)[:-1]  # periodic Hann at the frame's start
    # librosa cuts whole n_fft frames; the last snip-edges window needs n_fft - win zeros after it
    padded = np.concatenate([wave.numpy(), np.zeros(cfg.n_fft - cfg.win_length, dtype=np.float32)])
    mel = librosa.feature.melspectrogram(
        y=padded, sr=16000, n_fft=512, hop_length=160, window=window, center=False, power=2.0,
        n_mels=80, htk=True, norm=None, fmin=cfg.f_min, fmax=8000.0,
    )
    ref = np.log(np.maximum(mel, FLT_EPSILON)).T
    assert ref.shape == ours.shape
    diff = np.abs(ours - ref)
    assert diff.max() <= MAX_ABS and np.percentile(diff, 99.9) <= P999


@pytest.mark.parametrize("scale,norm", [("htk", None), ("slaney", "slaney"), ("htk", "slaney")])
def test_mel_matrix_is_torchaudios_and_blocks_lose_nothing(scale, norm):
    cfg = FeatureConfig(mel_scale=scale, mel_norm=norm)
    mel = mel_matrix(cfg)
    ref = AF.melscale_fbanks(257, cfg.f_min, 8000.0, 80, 16000, norm, scale)
    torch.testing.assert_close(mel, ref.float())
    covered = torch.zeros_like(mel, dtype=torch.bool)
    for lo, hi, a, b in mel_blocks(mel):
        covered[lo:hi, a:b] = True
    assert not (mel != 0)[~covered].any(), "a nonzero weight lies outside every block"
    energy = torch.rand(3, 7, 257)
    torch.testing.assert_close(apply_mel(energy, mel, mel_blocks(mel)), energy @ mel, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("rows", [1, 5, 1024, 1030])
@pytest.mark.parametrize("blocked", [True, False])
def test_apply_mel_writes_into_strided_views(rows, blocked):
    """``out`` as the static part of an edge buffer (rows of a batch not adjacent), with
    and without blocks, at chunk sizes around 1024 (the padded transposed buffer)."""
    mel = mel_matrix(FeatureConfig())
    energy = torch.rand(2, rows, 257)
    buffer = torch.full((2, rows + 6, 80), 7.0)
    out = buffer[:, 3 : 3 + rows]
    result = apply_mel(energy, mel, mel_blocks(mel) if blocked else None, out=out)
    assert result.data_ptr() == out.data_ptr()
    torch.testing.assert_close(out, energy @ mel, rtol=1e-5, atol=1e-6)
    assert (buffer[:, :3] == 7.0).all() and (buffer[:, 3 + rows :] == 7.0).all(), "wrote outside out"
