"""The C++ kernels (``speechconv/csrc/kernels.cpp``) against their numba twins.

The C++ ops are written to round exactly as the numba kernels do, so the two must give
the same bits: for each op over generated shapes, strides and settings, and for the
whole feature module over generated batches, at 1, 2 and 3 threads (each frame is
computed whole by one thread, so the split cannot change a value).  The numba
kernels are held to the eager ops in ``test_kernels.py``, and the CPU default (the
C++ ops here) to kaldi-native-fbank and librosa by the parity tests.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from speechconv import FeatureConfig, kernels, native
from speechconv.fbank import mel_bands, mel_matrix
from speechconv.features import LogMelDeltas
from speechconv.kaldi_fbank import kaldi_mel_banks


@pytest.fixture(scope="module")
def cpp():
    """The loaded C++ ops; skipped only where the machine has no C++ compiler."""
    if not native.ENABLED:
        pytest.skip("SPEECHCONV_NATIVE=0: the C++ kernels are switched off")
    if native.compiler() is None:
        pytest.skip("no C++ compiler here: the numba kernels run (test_kernels.py)")
    ops = native.ops()
    assert ops is not None, "a C++ compiler is present but the kernels did not build: see the RuntimeWarning"
    return ops


def numba_and_cpp(fn, monkeypatch, threads=(1, 2, 3)):
    """``fn()`` with the numba kernels, then with the C++ ops at each thread count."""
    monkeypatch.setattr(native, "ENABLED", False)
    reference = fn()
    monkeypatch.setattr(native, "ENABLED", True)
    before = torch.get_num_threads()
    try:
        results = []
        for n in threads:
            torch.set_num_threads(n)
            results.append(fn())
    finally:
        torch.set_num_threads(before)
    return reference, results


def assert_same_bits(reference, results):
    for result in results:
        if isinstance(reference, tuple):
            for a, b in zip(reference, result, strict=True):
                assert torch.equal(a, b)
        else:
            assert torch.equal(reference, result)


@settings(max_examples=30, deadline=None)
@given(
    b=st.integers(1, 4), t=st.integers(1, 700), win=st.sampled_from([400, 320, 64, 7]),
    hop=st.sampled_from([160, 80, 1]), lead=st.integers(0, 40), n_pad=st.integers(0, 112),
    centre=st.booleans(), c=st.sampled_from([0.97, 0.0, 0.5]), remove_dc=st.booleans(),
    scale=st.sampled_from([1e-3, 1.0, 3e4]), dc=st.floats(-1.0, 1.0), seed=st.integers(0, 2**16),
)
def test_window_frames_same_bits(cpp, b, t, win, hop, lead, n_pad, centre, c, remove_dc, scale, dc, seed):
    gen = torch.Generator().manual_seed(seed)
    row = lead + (t - 1) * hop + win + 3
    storage = torch.randn(b * row + 5, generator=gen) * scale + dc
    frames = storage.as_strided((b, t, win), (row, hop, 1), lead)  # (b, t, win) rows of contiguous samples
    window = torch.rand(win, generator=gen) * 32768
    n_fft, offset = win + n_pad, (n_pad // 2 if centre else 0)

    def run():
        out = torch.full((b, t, n_fft), 7.0)
        kernels.kaldi_window_frames(frames, window, c, remove_dc, out, offset)
        return out

    with pytest.MonkeyPatch.context() as monkeypatch:
        reference, results = numba_and_cpp(run, monkeypatch)
    assert_same_bits(reference, results)
    assert (reference[..., :offset] == 7).all() and (reference[..., offset + win :] == 7).all()  # only the window


MELS = {
    "kaldi": kaldi_mel_banks(80, 512, 16000, 20.0, 8000.0),
    "htk": mel_matrix(FeatureConfig()),
    "slaney-40": mel_matrix(FeatureConfig(mel_scale="slaney", mel_norm="slaney", n_mels=40, n_fft=400)),
}


@settings(max_examples=30, deadline=None)
@given(mel=st.sampled_from(sorted(MELS)), b=st.integers(1, 4), t=st.integers(1, 300), power=st.sampled_from([2.0, 1.0]),
       floor=st.sampled_from([1.1920928955078125e-07, 1e-10, 50.0]), margin=st.integers(0, 6),
       seed=st.integers(0, 2**16))
def test_power_mel_floor_same_bits(cpp, mel, b, t, power, floor, margin, seed):
    matrix = MELS[mel]
    K, F = matrix.shape
    spec = torch.randn(b, t, K, dtype=torch.complex64, generator=torch.Generator().manual_seed(seed)) * 30
    bands = mel_bands(matrix)

    def run():
        out = torch.full((b, t + 2 * margin, F), float("nan"))[:, margin : margin + t]  # strided (b, t, F)
        kernels.power_mel_floor(spec, bands, power, floor, out)
        return out

    with pytest.MonkeyPatch.context() as monkeypatch:
        reference, results = numba_and_cpp(run, monkeypatch)
    assert_same_bits(reference, results)
    assert not reference.isnan().any()


MODULE_SETTINGS = [
    {"backend": "kaldi"},
    {"backend": "kaldi", "framing": "center", "order2": "cascade", "channels": ["delta_delta", "static"]},
    {"backend": "kaldi", "window": "hamming", "power": 1.0, "channels": ["static"]},
    {"backend": "torchaudio"},
    {"backend": "torchaudio", "normalization": "utterance", "channels": ["delta", "static"]},
    {"backend": "torchaudio", "framing": "center", "mel_scale": "slaney", "mel_norm": "slaney", "n_mels": 40},
]


@settings(max_examples=25, deadline=None)
@given(setting=st.sampled_from(MODULE_SETTINGS), lengths=st.lists(st.integers(0, 30000), min_size=1, max_size=6),
       seed=st.integers(0, 2**16))
def test_feature_module_same_bits(cpp, setting, lengths, seed):
    waves = (torch.rand(len(lengths), max(lengths), generator=torch.Generator().manual_seed(seed)) - 0.5) * 0.3
    module = LogMelDeltas(FeatureConfig(**setting))
    with pytest.MonkeyPatch.context() as monkeypatch:
        reference, results = numba_and_cpp(lambda: module(waves, torch.tensor(lengths)), monkeypatch)
    assert_same_bits(reference, results)


def test_ops_reject_bad_tensors_clearly(cpp):
    bands = [torch.from_numpy(a) for a in mel_bands(MELS["kaldi"])]
    spec = torch.zeros(1, 4, 257, dtype=torch.complex64)
    with pytest.raises(RuntimeError, match="out must be a CPU float32 tensor"):
        cpp.power_mel_floor(spec, *bands, False, 1e-7, torch.zeros(1, 4, 80, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="spec must be a contiguous"):
        cpp.power_mel_floor(spec.transpose(1, 2), *bands, False, 1e-7, torch.zeros(1, 4, 80))
    with pytest.raises(RuntimeError, match="room for the window"):
        cpp.kaldi_window_frames(torch.zeros(1, 4, 400), torch.zeros(400), 0.97, True, torch.zeros(1, 4, 512), 200)


def run_python(code: str, **env: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k not in ("CXX", "SPEECHCONV_NATIVE", "SPEECHCONV_CACHE")}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env={**environment, **env}, timeout=300)


FEATURES = """
    import torch, speechconv
    from speechconv import native
    module = speechconv.LogMelDeltas(speechconv.FeatureConfig(backend="kaldi"))
    features, _ = module(torch.linspace(-0.5, 0.5, 16000))
    print(native.ops() is not None, float(features.sum()))
"""


def test_failed_build_warns_and_the_numba_kernels_run(tmp_path):
    failed = run_python(FEATURES, CXX="false", SPEECHCONV_CACHE=str(tmp_path))
    assert failed.returncode == 0, failed.stderr
    assert "the C++ feature kernels could not be built, so the numba kernels run" in failed.stderr
    assert "false exited with 1" in failed.stderr
    assert failed.stdout.split()[0] == "False"
    off = run_python(FEATURES, SPEECHCONV_NATIVE="0", SPEECHCONV_CACHE=str(tmp_path))
    assert off.stdout.split() == failed.stdout.split() and "could not be built" not in off.stderr
    assert not list(tmp_path.iterdir()), "nothing may be left in the cache by a failed build"


def test_the_library_is_built_once_then_loaded_from_the_cache(cpp, tmp_path):
    first = run_python(FEATURES, SPEECHCONV_CACHE=str(tmp_path))
    assert first.returncode == 0 and first.stdout.split()[0] == "True", first.stderr
    built = list(tmp_path.iterdir())
    assert len(built) == 1 and built[0].suffix == ".so"  # no temporary left beside it
    stamp = built[0].stat().st_mtime_ns
    again = run_python(FEATURES, CXX=native.compiler(), SPEECHCONV_CACHE=str(tmp_path))
    assert again.stdout == first.stdout and list(tmp_path.iterdir()) == built
    assert built[0].stat().st_mtime_ns == stamp, "the cached library was rebuilt"
    # A different compiler is a different key: it would build anew, so "false" fails.
    other = run_python(FEATURES, CXX="false", SPEECHCONV_CACHE=str(tmp_path))
    assert "could not be built" in other.stderr
