"""Both backends against their independent references on every bundled FSDD clip.

test_features_kaldi.py and test_features_torchaudio.py cover data/fixtures with bounds
measured clip by clip; this covers the 2,000 spoken digits of data/fsdd, one shard per
digit, with a bound each clip sets for itself: the float32 rounding of the two
implementations on that clip.

The FSDD recordings are 8 kHz: resampled to 16 kHz (by the tests' own reader), the mel
bins above their 4 kHz Nyquist hold only the resampler's residue, and some frames are
very quiet.  Where a cell's energy is many orders of magnitude below its frame's
strongest bin, float32 FFT rounding dominates any comparison of two float32
implementations (up to 2e-2 in the log on these clips, for kaldi-native-fbank against
float64 as for ours).  So each clip is held to::

    |ours - ref| <= 2 (|ours - ours64| + |ref - ref64|)     (max, and 99.9th percentile)

over all its cells: ``ours64`` is our pipeline evaluated in float64, ``ref64`` the
reference's own float64 evaluation (librosa on float64 input; for kaldi-native-fbank,
which computes in float32 only, torchaudio.compliance.kaldi on float64 input).  With
both formulas the same, the difference of two float32 implementations is at most the
sum of their roundings, so the factor 2 leaves room for rounding only: measured on
every tenth clip, the left side is 0.5 (kaldi) and 1.0 (librosa) times the right side
in the median clip and at most 1.0 and 1.5 times.
"""

from __future__ import annotations

import librosa
import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio.compliance.kaldi as ta_kaldi

from speechconv import FeatureConfig
from speechconv.features import LogMelDeltas, pipeline
from tests import test_features_kaldi as kaldi_ref
from tests import test_features_torchaudio as librosa_ref
from tests.conftest import DATA

FSDD_CLIPS = sorted((DATA / "fsdd").glob("*.flac"))


def float64(module: LogMelDeltas, wave: torch.Tensor) -> np.ndarray:
    """``(T, F, C)`` of our pipeline evaluated in float64."""
    window, mel = module.window.double(), module.mel_matrix.double()
    lengths = torch.tensor([wave.numel()])
    return pipeline.log_mel_deltas(wave[None].double(), lengths, module.config, window, mel)[0][0].numpy()


def spread(diff: np.ndarray) -> np.ndarray:
    """``[max, 99.9th percentile]`` of absolute differences."""
    diff = np.abs(diff)
    return np.array([diff.max(), np.percentile(diff, 99.9)])


def ratio(ours: np.ndarray, ours64: np.ndarray, ref: np.ndarray, ref64: np.ndarray) -> np.ndarray:
    """``|ours - ref|`` over the sum of the two float32 roundings, for the max and the 99.9th percentile."""
    return spread(ours - ref) / (spread(ours - ours64) + spread(ref - ref64))


@pytest.mark.slow
@pytest.mark.parametrize("digit", range(10))
def test_every_fsdd_clip_matches_both_references(digit: int) -> None:
    clips = [p for p in FSDD_CLIPS if p.name.startswith(f"{digit}_")]
    assert len(FSDD_CLIPS) == 2000 and len(clips) == 200
    assert {sf.info(str(p)).samplerate for p in clips} == {8000}
    kaldi = LogMelDeltas(FeatureConfig(backend="kaldi", channels=["static"])).eval()
    ta_cfg = FeatureConfig(backend="torchaudio", framing="center", channels=["static", "delta"])
    ta = LogMelDeltas(ta_cfg).eval()
    ratios: dict[str, list[np.ndarray]] = {"kaldi-vs-knf": [], "torchaudio-vs-librosa": [], "delta-vs-librosa": []}
    over = []
    with torch.inference_mode():
        for clip in clips:
            wave = kaldi_ref.read_16k(clip)  # (S,) at 16 kHz
            ref = kaldi_ref.knf_fbank(wave).astype(np.float64)  # (T, F)
            ref64 = ta_kaldi.fbank(wave[None].double() * 32768, num_mel_bins=80, dither=0.0, low_freq=20.0).numpy()
            ours, n = kaldi(wave)  # (T, F, 1)
            assert int(n) == ref.shape[0] == ours.shape[0], clip.name
            ratios["kaldi-vs-knf"].append(ratio(ours[..., 0].double().numpy(), float64(kaldi, wave)[..., 0],
                                                ref, ref64))

            ours, n = ta(wave)  # (T, F, 2)
            ours, ours64 = ours.double().numpy(), float64(ta, wave)
            ref = librosa_ref.librosa_log_mel(wave.numpy(), ta_cfg)  # (T, F)
            ref64 = librosa_ref.librosa_log_mel(wave.double().numpy(), ta_cfg)
            assert int(n) == ref.shape[0] == ours.shape[0], clip.name
            ratios["torchaudio-vs-librosa"].append(ratio(ours[..., 0], ours64[..., 0], ref, ref64))
            delta, delta64 = (librosa.feature.delta(r.T, width=5, mode="nearest", axis=-1).T for r in (ref, ref64))
            ratios["delta-vs-librosa"].append(ratio(ours[..., 1], ours64[..., 1], delta, delta64))
            over += [f"{clip.name} {name}: {r[-1]}" for name, r in ratios.items() if (r[-1] > 2).any()]
    for name, values in ratios.items():
        worst, median = np.max(values, axis=0), np.median(values, axis=0)
        print(f"\nPARITY digit {digit} {name} over {len(values)} clips, |ours - ref| over the float32 roundings "
              f"(max, p99.9): median {median[0]:.2f}, {median[1]:.2f}; worst {worst[0]:.2f}, {worst[1]:.2f}")
    assert not over, f"{len(over)} clip(s) differ by more than twice the float32 roundings: {over[:20]}"
