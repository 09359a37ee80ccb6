"""The fused CPU kernels (``speechconv.kernels``) against the eager torch ops they replace.

"Kernels" here is the CPU default: the C++ ops where they build, else the numba
kernels; ``test_native.py`` holds the two to the same bits.

Both paths are also held to the parity bounds against kaldi-native-fbank and librosa
on every bundled clip (the ``feature_path`` fixture in ``test_features_kaldi.py`` and
``test_features_torchaudio.py``).  Here they are compared with each other over
generated batches and settings: the kernels sum each frame's mean and each mel band
in their own float32 order, so the values may differ by rounding, never more.  As in
the FSDD parity test, cells within 1e-4 of their frame's strongest band are held
tightly, and cells far below it only to where float32 FFT rounding leaves them.
"""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from speechconv import FeatureConfig, kernels
from speechconv.fbank import mel_bands, mel_matrix
from speechconv.features import LogMelDeltas
from speechconv.kaldi_fbank import kaldi_mel_banks

ROUNDING = 5e-4
"""Bound on |kernels - eager| for the static log energies of cells within 1e-4 of their
frame's strongest band, in nats.  Measured: at most 9.5e-5 over 400 generated cases
like the test's, 6.1e-5 on noise at 0.1 amplitude."""

FLOOR = 1e-2
"""Bound for every cell of every channel: the kaldi backend's parity bound against
kaldi-native-fbank.  Far below a frame's peak the two paths are each as far from a
float64 evaluation as float32 FFT rounding puts them, in opposite directions or not
(hypothesis found a band e^-20 below its frame's peak, kaldi backend, ``center``
framing, noise at 1e-3: the kernels 4.0e-4 and the eager ops 2.6e-4 from float64,
6.6e-4 apart; the README's silence and FSDD notes show the same floor for
kaldi-native-fbank).  Over 400 generated cases the largest difference was 3.0e-4."""

RESOLVABLE = math.log(1e-4)

SETTINGS = [
    {"backend": "kaldi"},
    {"backend": "kaldi", "framing": "center"},
    {"backend": "kaldi", "window": "hamming", "power": 1.0},
    {"backend": "kaldi", "window": "hann", "preemphasis": 0.0, "remove_dc_offset": False},
    {"backend": "kaldi", "kaldi_int16_scale": False, "order2": "cascade"},
    {"backend": "torchaudio"},
    {"backend": "torchaudio", "framing": "center", "power": 1.0, "mel_scale": "slaney", "mel_norm": "slaney"},
    {"backend": "torchaudio", "n_mels": 40, "n_fft": 400, "f_min": 100.0, "f_max": 6000.0},
]


def both_paths(module: LogMelDeltas, waves: torch.Tensor, lengths: torch.Tensor, monkeypatch) -> tuple:
    monkeypatch.setattr(kernels, "ENABLED", True)
    fused, n_fused = module(waves, lengths)
    monkeypatch.setattr(kernels, "ENABLED", False)
    eager, n_eager = module(waves, lengths)
    return fused, n_fused, eager, n_eager


@settings(max_examples=40, deadline=None)
@example(setting={"backend": "kaldi", "framing": "center"}, lengths=[671], scale=1e-3, seed=19182)
@given(
    setting=st.sampled_from(SETTINGS),
    lengths=st.lists(st.integers(0, 7000), min_size=1, max_size=5),
    scale=st.sampled_from([1e-3, 0.1, 0.9]),
    seed=st.integers(0, 2**16),
)
def test_kernels_match_eager_ops(setting, lengths, scale, seed):
    monkeypatch = pytest.MonkeyPatch()
    try:
        gen = torch.Generator().manual_seed(seed)
        S = max(lengths)
        waves = (torch.rand(len(lengths), S, generator=gen) * 2 - 1) * scale  # (B, S)
        lens = torch.tensor(lengths)
        module = LogMelDeltas(FeatureConfig(**setting))
        fused, n_fused, eager, n_eager = both_paths(module, waves, lens, monkeypatch)
    finally:
        monkeypatch.undo()
    assert torch.equal(n_fused, n_eager)
    assert fused.shape == eager.shape
    assert torch.isfinite(fused).all()
    for b, n in enumerate(n_fused.tolist()):
        assert (fused[b, n:] == 0).all()  # frames past the length: exactly zero
    torch.testing.assert_close(fused, eager, atol=FLOOR, rtol=0)
    static, static_fused = eager[..., 0], fused[..., 0]  # (B, T, F)
    resolvable = static >= static.amax(dim=2, keepdim=True) + RESOLVABLE  # within 1e-4 of the frame's peak
    torch.testing.assert_close(static_fused[resolvable], static[resolvable], atol=ROUNDING, rtol=0)


@pytest.mark.parametrize("backend", ["kaldi", "torchaudio"])
def test_kernels_run_on_cpu_and_step_aside_when_disabled(backend, monkeypatch):
    calls = []
    real = kernels.power_mel_floor
    monkeypatch.setattr(kernels, "power_mel_floor", lambda *a: calls.append(1) or real(*a))
    module = LogMelDeltas(FeatureConfig(backend=backend))
    wave = torch.randn(8000) * 0.1
    module(wave)
    assert calls, "the CPU default should use the kernels"
    calls.clear()
    monkeypatch.setattr(kernels, "ENABLED", False)
    module(wave)
    assert not calls


def test_usable_only_for_cpu_float32_without_autograd(monkeypatch):
    x = torch.zeros(4)
    assert kernels.usable(x, torch.zeros(2, dtype=torch.complex64))
    assert not kernels.usable(x.double())
    assert not kernels.usable(x.requires_grad_())
    with torch.no_grad():
        assert kernels.usable(x)
    assert not kernels.usable(torch.zeros(4, device="meta"))
    monkeypatch.setattr(kernels, "ENABLED", False)
    assert not kernels.usable(torch.zeros(4))


def test_environment_switch_turns_the_kernels_off():
    code = "from speechconv import kernels; print(kernels.ENABLED)"
    for value, expected in (("0", "False"), ("1", "True")):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             env={"SPEECHCONV_KERNELS": value, "PATH": ""})
        assert out.stdout.strip() == expected


@pytest.mark.parametrize("mel", [
    kaldi_mel_banks(80, 512, 16000, 20.0, 8000.0),
    mel_matrix(FeatureConfig()),
    mel_matrix(FeatureConfig(mel_scale="slaney", mel_norm="slaney", n_mels=40)),
], ids=["kaldi", "htk", "slaney-40"])
def test_mel_bands_hold_every_weight(mel):
    bands = mel_bands(mel)
    dense = torch.zeros_like(mel)
    for f in range(mel.shape[1]):
        lo, hi, start = int(bands.lo[f]), int(bands.hi[f]), int(bands.start[f])
        dense[lo:hi, f] = torch.from_numpy(bands.weights[start : start + hi - lo])
    assert torch.equal(dense, mel)
    assert bands.weights.size == int(bands.hi.sum() - bands.lo.sum())


def test_power_mel_floor_equals_the_formula():
    gen = torch.Generator().manual_seed(3)
    spec = torch.randn(3, 37, 257, dtype=torch.complex64, generator=gen)  # (b, t, K): not a multiple of 16 frames
    mel = mel_matrix(FeatureConfig())
    out = torch.full((3, 40, 80), float("nan"))[:, :37]  # a strided destination, (b, t, F)
    for power in (2.0, 1.0):
        kernels.power_mel_floor(spec, mel_bands(mel), power, 1e-3, out)
        expected = (spec.abs().double() ** power @ mel.double()).clamp_min(1e-3)
        torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=0)
