"""Perturbations: each part does what it says (measured independently), lengths are known
up front, and every draw depends on its generator alone."""

from __future__ import annotations

import math

import librosa
import numpy as np
import pytest
import scipy.signal
import torch
import torchaudio.functional as AF
from hypothesis import given, settings
from hypothesis import strategies as st

from speechconv import shapes
from speechconv.audio import load_audio
from speechconv.data.perturb import (
    DRR_DB,
    Draw,
    MelWarp,
    Perturb,
    coloured_noise,
    default_noise_clips,
    load_noise_clips,
    noise_stretch,
    synthetic_rir,
)
from speechconv.feature_config import FeatureConfig

RATE = 16000
SPEECH = load_audio(default_noise_clips()[0].parent / "yes_1000ms.wav", RATE)  # (S,) real speech
NOISE = load_noise_clips(None, RATE)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 50000), st.sampled_from([0.8, 0.9, 0.95, 1.0, 1.05, 1.1, 1.2]))
def test_speed_samples_is_torchaudio_speed_length(num_samples, factor):
    wave = torch.zeros(num_samples)
    out, lengths = AF.speed(wave, RATE, factor, torch.tensor([num_samples]))
    assert shapes.speed_samples(num_samples, RATE, factor) == out.shape[0] == int(lengths[0])


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 30000), st.sampled_from([8000, 11025, 16000, 22050, 44100, 48000]))
def test_resampled_samples_is_resample_length(num_samples, rate):
    out = AF.resample(torch.zeros(num_samples), rate, RATE)
    assert shapes.resampled_samples(num_samples, rate, RATE) == out.shape[0]


def test_speed_changes_tempo_and_pitch_together():
    """A 500 Hz tone sped up by 1.1 is a 550 Hz tone, 1/1.1 as long."""
    t = torch.arange(RATE) / RATE
    tone = torch.sin(2 * math.pi * 500 * t)
    out = Perturb.waveform(tone, Draw(speed=1.1), RATE, [])
    assert out.shape[0] == Perturb.num_samples(RATE, Draw(speed=1.1), RATE) == math.ceil(RATE / 1.1)
    spectrum = np.abs(np.fft.rfft(out[1000:-1000].numpy() * np.hanning(out.shape[0] - 2000)))
    peak_hz = np.argmax(spectrum) * RATE / (out.shape[0] - 2000)
    assert peak_hz == pytest.approx(550, abs=2)


@pytest.mark.parametrize("snr_db", [0.0, 12.5, 30.0])
@pytest.mark.parametrize("kind", ["clip", "white", "pink", "brown"])
def test_noise_is_added_at_the_drawn_snr(kind, snr_db):
    out = Perturb.waveform(SPEECH, Draw(noise=kind, snr_db=snr_db, seed=3), RATE, NOISE)
    noise = (out - SPEECH).double()
    measured = 10 * math.log10(float(SPEECH.double().square().sum()) / float(noise.square().sum()))
    assert measured == pytest.approx(snr_db, abs=1e-3)


@pytest.mark.parametrize(("name", "beta"), [("white", 0.0), ("pink", 1.0), ("brown", 2.0)])
def test_coloured_noise_has_a_one_over_f_beta_spectrum(name, beta):
    """The slope of the Welch power spectrum (scipy) on log-log axes, 100 Hz - 6 kHz, is -beta."""
    noise = coloured_noise(4 * RATE, beta, torch.Generator().manual_seed(0)).double().numpy()
    assert np.sqrt(np.mean(noise**2)) == pytest.approx(1.0, rel=1e-5)  # unit RMS
    f, power = scipy.signal.welch(noise, fs=RATE, nperseg=4096)
    band = (f >= 100) & (f <= 6000)
    slope = np.polyfit(np.log(f[band]), np.log(power[band]), 1)[0]
    assert slope == pytest.approx(-beta, abs=0.1), name


def test_noise_stretch_loops_the_clip_from_a_random_offset():
    clip = torch.arange(10, dtype=torch.float32)
    out = noise_stretch([clip], 25, torch.Generator().manual_seed(1))
    start = int(out[0])
    assert out.tolist() == [float((start + k) % 10) for k in range(25)]
    with pytest.raises(ValueError, match="noise_kinds"):
        noise_stretch([], 5, torch.Generator())


@pytest.mark.parametrize(("rt60", "drr_db"), [(0.2, 0.0), (0.5, 8.0), (0.8, 15.0)])
def test_synthetic_rir_decays_at_rt60_with_the_drawn_drr(rt60, drr_db):
    rir = synthetic_rir(rt60, drr_db, RATE, torch.Generator().manual_seed(0)).double()
    assert rir[0] == 1.0 and rir.shape[0] == round(rt60 * RATE)
    tail = rir[1:]
    assert 10 * math.log10(1.0 / float(tail.square().sum())) == pytest.approx(drr_db, abs=1e-6)
    # Schroeder backward integration of the tail: the -5 to -25 dB decay extrapolated to 60 dB (T20)
    energy = torch.flip(torch.cumsum(torch.flip(tail.square(), [0]), 0), [0])
    decay_db = 10 * torch.log10(energy / energy[0])
    t = torch.arange(decay_db.shape[0]) / RATE
    fit = (decay_db <= -5) & (decay_db >= -25)
    slope = np.polyfit(t[fit].numpy(), decay_db[fit].numpy(), 1)[0]  # dB per second
    assert -60 / slope == pytest.approx(rt60, rel=0.15)


def test_reverb_keeps_the_length_and_equals_a_direct_convolution():
    draw = Draw(rt60=0.3, drr_db=5.0, seed=11)
    out = Perturb.waveform(SPEECH, draw, RATE, [])
    rir = synthetic_rir(0.3, 5.0, RATE, torch.Generator().manual_seed(11))
    expected = np.convolve(SPEECH.double().numpy(), rir.double().numpy())[: SPEECH.shape[0]]
    assert out.shape == SPEECH.shape
    np.testing.assert_allclose(out.numpy(), expected, atol=2e-6)


def test_gain_scales_by_the_drawn_decibels():
    out = Perturb.waveform(SPEECH, Draw(gain_db=-20.0), RATE, [])
    torch.testing.assert_close(out, SPEECH * 0.1, rtol=1e-6, atol=0)


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**63 - 1), st.integers(1, 3) .map(lambda k: (0.9, 1.0, 1.1)[:k]))
def test_draws_and_waveforms_depend_on_the_generator_alone(seed, speeds):
    perturb = Perturb(speeds=speeds, reverb_prob=0.5, noise_prob=0.5)
    a = perturb.draw(np.random.default_rng(seed))
    assert a == perturb.draw(np.random.default_rng(seed))
    assert a.speed in speeds and DRR_DB[0] <= a.drr_db <= DRR_DB[1] and 0.9 <= a.vtlp <= 1.1
    out = Perturb.waveform(SPEECH, a, RATE, NOISE)
    assert torch.equal(out, Perturb.waveform(SPEECH, a, RATE, NOISE))
    assert out.shape[0] == Perturb.num_samples(SPEECH.shape[0], a, RATE) and out.dtype == torch.float32
    assert bool(torch.isfinite(out).all())


def test_switching_a_part_off_keeps_the_other_draws():
    full, no_noise = Perturb(), Perturb(noise_prob=0.0)
    for seed in range(50):
        a, b = full.draw(np.random.default_rng(seed)), no_noise.draw(np.random.default_rng(seed))
        assert b.noise == "" and (a.speed, a.rt60, a.gain_db, a.vtlp, a.seed) == (b.speed, b.rt60, b.gain_db,
                                                                                    b.vtlp, b.seed)


def test_off_is_the_identity():
    off = Perturb(speeds=(1.0,), reverb_prob=0.0, noise_prob=0.0, gain_db=(0.0, 0.0), vtlp=0.0)
    draw = off.draw(np.random.default_rng(0))
    assert torch.equal(Perturb.waveform(SPEECH, draw, RATE, NOISE), SPEECH) and draw.vtlp == 1.0


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"speeds": ()}, "speeds"), ({"speeds": (3.0,)}, "speeds"), ({"noise_prob": 1.5}, "noise_prob"),
    ({"rt60_s": (0.5, 0.1)}, "rt60_s"), ({"noise_kinds": ("rain",)}, "noise_kinds"), ({"vtlp": 0.7}, "vtlp"),
])
def test_bad_settings_name_the_key(kwargs, message):
    with pytest.raises(ValueError, match=f"data.augment.{message}="):
        Perturb(**kwargs)


@pytest.mark.parametrize("scale", ["htk", "slaney"])
def test_mel_warp_moves_each_bin_to_its_scaled_frequency(scale):
    """A feature that is the bin index's centre frequency (librosa's mel frequencies, an
    independent reference) becomes, after warping by alpha, the centre frequency / alpha
    wherever that lies inside the axis."""
    config = FeatureConfig(n_mels=80, f_min=20.0, f_max=4000.0, mel_scale=scale)
    centres = librosa.mel_frequencies(82, fmin=20.0, fmax=4000.0, htk=scale == "htk")[1:-1]
    warp = MelWarp(config)
    features = torch.tensor(centres, dtype=torch.float64)[None, :, None].repeat(5, 1, 3)  # (T, F, C)
    assert warp(features, 1.0) is features
    for alpha in (0.9, 1.1):
        out = warp(features, alpha)
        assert out.shape == features.shape
        inside = (centres / alpha >= centres[0]) & (centres / alpha <= centres[-1])
        # linear interpolation between neighbouring bins is exact to within the curvature of the mel scale
        np.testing.assert_allclose(out[0, inside, 0].numpy(), centres[inside] / alpha, rtol=2e-3)
        assert torch.equal(out[:, :, 0], out[:, :, 2]) and torch.equal(out[0], out[4])
        edge = out[0, ~inside, 0].numpy()
        assert np.all((edge == centres[0]) | (edge == centres[-1]))  # held at the edges


def test_waveform_is_the_same_bits_at_any_thread_count():
    """Items are made in DataLoader workers (one thread) and in the main process alike."""
    draws = [Draw(rt60=0.4, drr_db=3.0, seed=1), Draw(noise="pink", snr_db=10.0, seed=2), Draw(speed=0.9, seed=3)]
    threads = torch.get_num_threads()
    try:
        outs = []
        for n in (1, 2, 4):
            torch.set_num_threads(n)
            outs.append([Perturb.waveform(SPEECH, d, RATE, NOISE) for d in draws])
            assert torch.get_num_threads() == n  # put back
    finally:
        torch.set_num_threads(threads)
    for other in outs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(outs[0], other, strict=True))
