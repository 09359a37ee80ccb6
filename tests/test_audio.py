"""load_audio / audio_info: every fixture, bit depths, channel mixing, resampling, errors.

References are independent of speechconv: soundfile's own header and integer reads,
numpy channel means, analytic sines and librosa's soxr resampler.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import librosa
import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import SPEECH_CLIPS
from hypothesis import given, settings
from hypothesis import strategies as st

from speechconv.audio import AudioError, audio_info, load_audio

TARGET = 16000


@pytest.mark.parametrize("path", SPEECH_CLIPS, ids=lambda p: p.name)
def test_every_fixture_loads_as_mono_float32_at_16k(path: Path) -> None:
    info = sf.info(str(path))
    wave = load_audio(path)
    assert wave.dtype == torch.float32 and wave.dim() == 1
    # torchaudio's resampler keeps ceil(S * new / old) samples; the duration is the file's to 1 sample.
    assert wave.shape[0] == math.ceil(info.frames * TARGET / info.samplerate)
    assert abs(wave.shape[0] / TARGET - info.frames / info.samplerate) <= 1 / TARGET
    assert torch.isfinite(wave).all()
    assert wave.abs().max() <= 1.0


@pytest.mark.parametrize("path", SPEECH_CLIPS, ids=lambda p: p.name)
def test_audio_info_matches_soundfile(path: Path) -> None:
    info = sf.info(str(path))
    got = audio_info(path)
    assert (got.sample_rate, got.channels, got.frames) == (info.samplerate, info.channels, info.frames)
    assert got.duration == pytest.approx(info.frames / info.samplerate)
    assert (got.format, got.subtype) == (info.format, info.subtype)


def test_16k_int16_wav_is_exactly_int_over_32768() -> None:
    path = next(p for p in SPEECH_CLIPS if sf.info(str(p)).samplerate == TARGET and sf.info(str(p)).subtype == "PCM_16")
    ints, _ = sf.read(str(path), dtype="int16")
    np.testing.assert_array_equal(load_audio(path).numpy(), ints.astype(np.float32) / 32768)


def test_stereo_is_the_mean_of_channels(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    left, right = rng.uniform(-0.5, 0.5, 4000), rng.uniform(-0.5, 0.5, 4000)
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, right], axis=1).astype(np.float32), TARGET, subtype="FLOAT")
    expected = (left.astype(np.float32).astype(np.float64) + right.astype(np.float32)) / 2
    np.testing.assert_allclose(load_audio(path).numpy(), expected, rtol=0, atol=1e-7)


def test_four_channels_at_44k1_equal_mono_mix_resampled(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    data = rng.uniform(-0.2, 0.2, (4410, 4)).astype(np.float32)
    multi, mono = tmp_path / "multi.flac", tmp_path / "mono.wav"
    sf.write(multi, data, 44100, subtype="PCM_24")
    sf.write(mono, sf.read(multi, dtype="float64")[0].mean(axis=1), 44100, subtype="DOUBLE")
    np.testing.assert_allclose(load_audio(multi).numpy(), load_audio(mono).numpy(), rtol=0, atol=1e-6)


# Quantisation step of each subtype (float32 holds 24 mantissa bits, so 32-bit ints
# come back rounded to float32: the step there is float32's at 1.0).
SUBTYPES = {"PCM_16": 2.0**-15, "PCM_24": 2.0**-23, "PCM_32": 2.0**-24, "FLOAT": 2.0**-24, "DOUBLE": 2.0**-24}


FORMATS = [(f, s) for f in ("WAV", "FLAC", "AIFF") for s in SUBTYPES if sf.check_format(f, s)]


@pytest.mark.parametrize(("fmt", "subtype"), FORMATS, ids=[f"{f}-{s}" for f, s in FORMATS])
def test_bit_depths_and_containers(tmp_path: Path, fmt: str, subtype: str) -> None:
    rng = np.random.default_rng(2)
    x = rng.uniform(-0.99, 0.99, 3000)
    path = tmp_path / f"x.{fmt.lower()}"
    sf.write(path, x, TARGET, format=fmt, subtype=subtype)
    # soundfile stores round(x * 2**(bits-1)) for ints; reading back is exact to one step.
    np.testing.assert_allclose(load_audio(path).numpy(), x, rtol=0, atol=SUBTYPES[subtype])


def test_24_bit_values_are_exact(tmp_path: Path) -> None:
    ints = np.random.default_rng(3).integers(-(2**23), 2**23, 2000, dtype=np.int32)
    path = tmp_path / "x24.wav"
    sf.write(path, ints << 8, TARGET, subtype="PCM_24")  # soundfile's int32 is left-aligned
    np.testing.assert_array_equal(load_audio(path).numpy(), ints.astype(np.float32) / 2**23)


RATES = [8000, 11025, 22050, 32000, 44100, 48000]


@settings(deadline=None, max_examples=25)
@given(rate=st.sampled_from(RATES), unit=st.floats(0.02, 1.0), amplitude=st.floats(0.05, 0.9),
       phase=st.floats(0.0, 2 * math.pi))
def test_resampled_sine_is_the_analytic_sine(tmp_path_factory: pytest.TempPathFactory, rate: int, unit: float,
                                             amplitude: float, phase: float) -> None:
    # Frequencies up to 0.88 of the lower Nyquist frequency, the filter's flat
    # passband (measured: 0.26% down at 0.9, cut at 0.9476): the resampled sine is the
    # sine sampled at 16 kHz.  1e-4 absolute is 5x the worst error measured (2e-5 at 11.025 kHz,
    # float32 accumulation); 300 samples at each end are left out, where the 64-zero-
    # crossing filter reaches past the signal (it sees zeros there).
    freq = 20 + unit * (0.88 * min(rate, TARGET) / 2 - 20)
    n = np.arange(rate // 2)
    path = tmp_path_factory.mktemp("sine") / "sine.wav"
    sf.write(path, amplitude * np.sin(2 * np.pi * freq * n / rate + phase), rate, subtype="FLOAT")
    wave = load_audio(path).numpy().astype(np.float64)
    m = np.arange(wave.shape[0])
    expected = amplitude * np.sin(2 * np.pi * freq * m / TARGET + phase)
    np.testing.assert_allclose(wave[300:-300], expected[300:-300], rtol=0, atol=1e-4)


@pytest.mark.parametrize("path", [p for p in SPEECH_CLIPS if sf.info(str(p)).samplerate != TARGET],
                         ids=lambda p: p.name)
def test_resampled_speech_matches_soxr_in_the_passband(path: Path) -> None:
    # librosa's soxr_vhq is an independent resampler with another filter design; the
    # two agree wherever both pass the signal, below 0.9 of the lower Nyquist
    # frequency (measured: relative spectral error <= 5e-5; above 0.93 they differ by
    # ~2e-3 because the transition bands differ).  Tolerance 2e-4.
    data, rate = sf.read(str(path), dtype="float64", always_2d=True)
    reference = librosa.resample(data.mean(axis=1), orig_sr=rate, target_sr=TARGET, res_type="soxr_vhq")
    wave = load_audio(path).numpy().astype(np.float64)
    assert wave.shape == reference.shape
    ours, theirs = np.fft.rfft(wave), np.fft.rfft(reference)
    band = np.fft.rfftfreq(wave.shape[0], 1 / TARGET) < 0.9 * min(rate, TARGET) / 2
    error = np.linalg.norm(ours[band] - theirs[band]) / np.linalg.norm(theirs[band])
    assert error < 2e-4, f"{path.name}: relative passband error {error:.2e}"


def test_other_target_rate(tmp_path: Path) -> None:
    path = next(p for p in SPEECH_CLIPS if p.name == "jfk.flac")
    info = sf.info(str(path))
    assert load_audio(path, sample_rate=8000).shape[0] == math.ceil(info.frames * 8000 / info.samplerate)
    with pytest.raises(ValueError, match="sample_rate"):
        load_audio(path, sample_rate=0)


# ------------------------------------------------------------------------- errors


def _error(path: Path) -> str:
    with pytest.raises(AudioError) as caught:
        load_audio(path)
    message = str(caught.value)
    assert str(path) in message
    return message


def test_missing_file(tmp_path: Path) -> None:
    assert "not found" in _error(tmp_path / "nope.wav")


def test_directory(tmp_path: Path) -> None:
    assert "directory" in _error(tmp_path)


def test_corrupt_bytes(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.wav"
    path.write_bytes(np.random.default_rng(4).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    message = _error(path)
    assert "cannot decode" in message and "Format not recognised" in message  # libsndfile's own words


def test_truncated_header(tmp_path: Path) -> None:
    path = tmp_path / "truncated.wav"
    path.write_bytes((SPEECH_CLIPS[0].parent / "yes_1000ms.wav").read_bytes()[:20])
    message = _error(path)
    assert "cannot decode" in message and "Error opening" in message


def test_zero_byte_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.wav"
    path.touch()
    assert "empty (0 bytes)" in _error(path)


def test_header_without_samples(tmp_path: Path) -> None:
    path = tmp_path / "no_samples.wav"
    sf.write(path, np.zeros((0, 1), np.float32), TARGET, subtype="PCM_16")
    assert path.stat().st_size > 0
    assert "no audio samples" in _error(path)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_samples(tmp_path: Path, bad: float) -> None:
    x = np.zeros(1600, np.float32)
    x[800] = bad
    path = tmp_path / "bad.wav"
    sf.write(path, x, TARGET, subtype="FLOAT")
    message = _error(path)
    assert "NaN or Inf" in message and "frame 800" in message


def test_audio_info_errors(tmp_path: Path) -> None:
    with pytest.raises(AudioError, match="not found"):
        audio_info(tmp_path / "nope.flac")
    path = tmp_path / "junk.flac"
    path.write_bytes(b"not audio" * 100)
    with pytest.raises(AudioError, match="cannot decode"):
        audio_info(path)


def test_float_file_above_full_scale_warns_with_name(tmp_path: Path) -> None:
    path = tmp_path / "loud.wav"
    x = np.linspace(-1.5, 1.5, 1000, dtype=np.float32)
    sf.write(path, x, TARGET, subtype="FLOAT")
    with pytest.warns(UserWarning, match="loud.wav.*1.5"):
        wave = load_audio(path)
    np.testing.assert_array_equal(wave.numpy(), x)  # warned, not clipped


def test_full_scale_int_file_does_not_warn(tmp_path: Path) -> None:
    path = tmp_path / "full.wav"
    sf.write(path, np.array([-32768, 32767, 0], np.int16), TARGET, subtype="PCM_16")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        wave = load_audio(path)
    assert wave.min() == -1.0
