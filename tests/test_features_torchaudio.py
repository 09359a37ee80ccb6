"""The ``torchaudio`` backend against librosa on every bundled clip (``center`` framing),
and its mel matrix against torchaudio's.

Bounds are per clip, about twice what each measures, so that a regression shows on
every clip.
"""

from __future__ import annotations

import librosa
import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio.functional as AF

from speechconv import FeatureConfig
from speechconv.feature_config import FLT_EPSILON
from speechconv.features import LogMelDeltas, fbank
from tests.conftest import SPEECH_CLIPS

BOUNDS = {  # clip: (log-mel max, log-mel p99.9, delta max) of |ours - librosa|; measured: the comment
    # The spectrum is computed in float64 on both sides, so what is left is the float32
    # rounding of the output: one unit in the last place of log-mels of magnitude 8-16.
    "198-209-0000.ogg": (2e-6, 2e-6, 1e-6),  # 9.5e-7, 9.5e-7, 4.8e-7
    "arctic_a0007.wav": (2e-6, 2e-6, 1e-6),  # 9.5e-7, 9.5e-7, 4.8e-7
    "english_8k.wav": (2e-6, 2e-6, 1e-6),  # 9.5e-7, 9.5e-7, 4.8e-7
    "french.aiff": (2e-6, 2e-6, 1e-6),  # 9.5e-7, 9.5e-7, 4.8e-7
    "jfk.flac": (2e-6, 2e-6, 1e-6),  # 9.5e-7, 9.5e-7, 4.8e-7
    "no_1000ms.wav": (2e-6, 2e-6, 1e-6),  # 9.5e-7, 9.5e-7, 4.8e-7
    "noise_1000ms.wav": (1e-6, 1e-6, 4e-7),  # 4.8e-7, 4.8e-7, 1.9e-7
    "silence_1000ms.wav": (2e-6, 2e-6, 6e-7),  # 9.5e-7, 9.5e-7, 3.0e-7
    "yes_1000ms.wav": (2e-6, 2e-6, 1e-6),  # 9.5e-7, 9.5e-7, 4.8e-7
}


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


def differences(ours: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    diff = np.abs(ours.astype(np.float64) - ref)
    return float(diff.max()), float(np.percentile(diff, 99.9))


@pytest.mark.parametrize("clip", SPEECH_CLIPS, ids=[p.name for p in SPEECH_CLIPS])
def test_torchaudio_backend_matches_librosa(clip):
    assert clip.name in BOUNDS, f"no bound measured for {clip.name}"
    cfg = FeatureConfig(backend="torchaudio", framing="center", channels=["static", "delta"])
    wave = read_16k(clip)
    ours, n = LogMelDeltas(cfg)(wave)
    ref = librosa_log_mel(wave.numpy(), cfg)
    ref_delta = librosa.feature.delta(ref.T, width=5, mode="nearest", axis=-1).T  # (T, F) -> (F, T) -> (T, F)
    assert int(n) == ref.shape[0] == ours.shape[0]
    max_abs, p999 = differences(ours[..., 0].numpy(), ref)
    delta_max = differences(ours[..., 1].numpy(), ref_delta)[0]
    print(f"\nPARITY torchaudio-vs-librosa {clip.name}: frames {ref.shape[0]} log-mel max {max_abs:.2e} "
          f"p99.9 {p999:.2e} delta max {delta_max:.2e}")
    bound_max, bound_p999, bound_delta = BOUNDS[clip.name]
    assert max_abs <= bound_max and p999 <= bound_p999 and delta_max <= bound_delta, (max_abs, p999, delta_max)


def test_slaney_magnitude_settings_match_librosa():
    """Measured: 6.3e-5 max, 2.2e-5 at the 99.9th percentile."""
    cfg = FeatureConfig(framing="center", mel_scale="slaney", mel_norm="slaney", power=1.0, f_min=0.0,
                        f_max=7600.0, channels=["static"])
    wave = read_16k(SPEECH_CLIPS[1])
    ours = LogMelDeltas(cfg)(wave)[0][..., 0].numpy()
    max_abs, p999 = differences(ours, librosa_log_mel(wave.numpy(), cfg))
    assert max_abs <= 2e-4 and p999 <= 5e-5, (max_abs, p999)


def test_kaldi_framing_matches_librosa_without_centering():
    """Snip-edges frames are librosa's ``center=False`` frames with the window at the start.
    Measured: 1.5e-4 max, 5.7e-5 at the 99.9th percentile."""
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
    max_abs, p999 = differences(ours, ref)
    assert max_abs <= 3e-4 and p999 <= 2e-4, (max_abs, p999)


@pytest.mark.parametrize("scale,norm", [("htk", None), ("slaney", "slaney"), ("htk", "slaney")])
def test_mel_matrix_is_torchaudios(scale, norm):
    cfg = FeatureConfig(mel_scale=scale, mel_norm=norm)
    ref = AF.melscale_fbanks(257, cfg.f_min, 8000.0, 80, 16000, norm, scale)
    torch.testing.assert_close(fbank.mel_matrix(cfg), ref.float())
