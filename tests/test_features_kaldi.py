"""The ``kaldi`` backend against kaldi-native-fbank (Kaldi's compute-fbank-feats in C++)
on every bundled clip, offline and streamed, plus its pieces against
torchaudio.compliance.kaldi.

Audio is read with soundfile and resampled with torchaudio's default resampler (the
brief's recipe).  With speechconv.load_audio's steeper Kaiser resampler, bands above
its cut-off hold energies ~1e-10 of the frame's, and there two float32
implementations differ by float32 FFT rounding alone (measured: ours and
torchaudio.compliance.kaldi both differ from kaldi-native-fbank by up to 0.17 in the
log on english_8k.wav), which says nothing about either implementation.

Bounds are per clip, about twice what each measures (max and 99.9th percentile of the
absolute difference of the log energies), so that a regression shows on every clip.
"""

from __future__ import annotations

import kaldi_native_fbank as knf
import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio.compliance.kaldi as ta_kaldi
import torchaudio.functional as AF

from speechconv import FeatureConfig
from speechconv.features import LogMelDeltas, kaldi
from tests.conftest import SPEECH_CLIPS

BOUNDS = {  # clip: (max, p99.9) of |ours - kaldi-native-fbank|; measured: the comment
    "198-209-0000.ogg": (1.2e-3, 1.6e-4),  # 5.5e-4, 7.5e-5
    "arctic_a0007.wav": (2e-4, 8e-5),  # 1.1e-4, 3.6e-5
    "english_8k.wav": (2.2e-3, 9e-4),  # 1.1e-3, 4.1e-4
    "french.aiff": (3e-4, 8e-5),  # 1.4e-4, 3.6e-5
    "jfk.flac": (1e-2, 2e-3),  # 5.0e-3, 6.6e-4
    "no_1000ms.wav": (2e-4, 8e-5),  # 7.6e-5, 3.9e-5
    "noise_1000ms.wav": (2e-4, 7e-5),  # 9.9e-5, 3.2e-5
    "yes_1000ms.wav": (2e-3, 5e-4),  # 9.8e-4, 2.8e-4
}
LOOSEST = (max(b[0] for b in BOUNDS.values()), max(b[1] for b in BOUNDS.values()))

NOISE_LIMITED = "silence_1000ms.wav"
NOISE_NOTE = """Digital near-silence (int16 values -7..7): after pre-emphasis the low bins hold
~1e-5 of the frame's energy, where float32 FFT rounding dominates.  Measured there
against a float64 evaluation of the same formula (torchaudio.compliance.kaldi on float64
input): kaldi-native-fbank, whose FFT is float32, is off by 1.3e-2 max / 1.9e-3 at the
99.9th percentile, ours (float64 spectrum) by 8.3e-4 / 4.8e-4; ours against
kaldi-native-fbank: 1.2e-2 / 1.7e-3.  The reference cannot meet even the loosest
clean-clip bound there, so that case is a strict xfail; its resolvable cells are held
to a tight bound below."""


def read_16k(path) -> torch.Tensor:
    """``(S,)`` float32 mono at 16 kHz: soundfile + torchaudio's default resampler."""
    data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    wave = torch.from_numpy(data.mean(axis=1))
    return AF.resample(wave, rate, 16000) if rate != 16000 else wave


def knf_options() -> knf.FbankOptions:
    """kaldi-native-fbank with Kaldi's defaults and ours."""
    opts = knf.FbankOptions()
    opts.frame_opts.dither = 0.0
    opts.frame_opts.snip_edges = True
    opts.frame_opts.samp_freq = 16000
    opts.frame_opts.frame_length_ms = 25.0
    opts.frame_opts.frame_shift_ms = 10.0
    opts.frame_opts.preemph_coeff = 0.97
    opts.frame_opts.remove_dc_offset = True
    opts.frame_opts.window_type = "povey"
    opts.mel_opts.num_bins = 80
    opts.mel_opts.low_freq = 20.0
    opts.mel_opts.high_freq = 0.0  # Nyquist
    opts.use_energy = False
    opts.use_log_fbank = True
    opts.use_power = True
    return opts


def knf_frames(fbank: knf.OnlineFbank, first: int) -> np.ndarray:
    """Frames ``first ..`` of an OnlineFbank that are ready, ``(t, 80)``."""
    rows = [fbank.get_frame(i) for i in range(first, fbank.num_frames_ready)]
    return np.stack(rows) if rows else np.zeros((0, 80), dtype=np.float32)


def knf_fbank(wave: torch.Tensor) -> np.ndarray:
    """``(T, 80)`` log energies of kaldi-native-fbank over the whole waveform."""
    fbank = knf.OnlineFbank(knf_options())
    fbank.accept_waveform(16000, (wave * 32768).tolist())
    fbank.input_finished()
    return knf_frames(fbank, 0)


def differences(ours: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    diff = np.abs(ours.astype(np.float64) - ref)
    return float(diff.max()), float(np.percentile(diff, 99.9))


@pytest.fixture(scope="module")
def kaldi_static() -> LogMelDeltas:
    return LogMelDeltas(FeatureConfig(backend="kaldi", channels=["static"])).eval()


@pytest.mark.parametrize(
    "clip",
    [pytest.param(p, marks=pytest.mark.xfail(strict=True, reason=NOISE_NOTE)) if p.name == NOISE_LIMITED else p
     for p in SPEECH_CLIPS],
    ids=[p.name for p in SPEECH_CLIPS],
)
def test_kaldi_backend_matches_kaldi_native_fbank(clip, kaldi_static):
    assert clip.name in BOUNDS or clip.name == NOISE_LIMITED, f"no bound measured for {clip.name}"
    wave = read_16k(clip)
    ref = knf_fbank(wave)
    ours, n = kaldi_static(wave)
    assert int(n) == ref.shape[0] == ours.shape[0]
    max_abs, p999 = differences(ours[..., 0].numpy(), ref)
    print(f"\nPARITY kaldi-vs-knf {clip.name}: frames {ref.shape[0]} max {max_abs:.2e} p99.9 {p999:.2e}")
    bound_max, bound_p999 = BOUNDS.get(clip.name, LOOSEST)
    assert max_abs <= bound_max and p999 <= bound_p999, (max_abs, p999)


@pytest.mark.parametrize("chunk", [1237, 1600, 10240])
@pytest.mark.parametrize("clip", ["jfk.flac", "arctic_a0007.wav", "yes_1000ms.wav"])
def test_streamed_kaldi_backend_matches_online_fbank_chunk_by_chunk(clip, chunk, kaldi_static):
    """Both fed the same chunks: the same frames become ready after every chunk, within
    the clip's offline bound (static channel; the stream equals our offline features)."""
    wave = read_16k(next(p for p in SPEECH_CLIPS if p.name == clip))
    fbank = knf.OnlineFbank(knf_options())
    stream = kaldi_static.streaming()
    ours, ref = [], []
    for start in range(0, wave.numel(), chunk):
        piece = wave[start : start + chunk]
        fbank.accept_waveform(16000, (piece * 32768).tolist())
        ref.append(knf_frames(fbank, sum(r.shape[0] for r in ref)))
        ours.append(stream.accept(piece)[..., 0].numpy())
        assert ours[-1].shape[0] == ref[-1].shape[0], f"frames ready after {start + piece.numel()} samples"
    fbank.input_finished()
    ref.append(knf_frames(fbank, sum(r.shape[0] for r in ref)))
    ours.append(stream.finish()[..., 0].numpy())
    assert ours[-1].shape[0] == ref[-1].shape[0] == 0  # snip edges: no frame waits for the end
    max_abs, p999 = differences(np.concatenate(ours), np.concatenate(ref))
    assert max_abs <= BOUNDS[clip][0] and p999 <= BOUNDS[clip][1], (max_abs, p999)


def test_noise_limited_clip_agrees_where_energy_is_resolvable(kaldi_static):
    """On the near-silent clip, every cell whose mel energy is at least 1e-4 of its
    frame's strongest bin (clear of float32 FFT rounding) agrees to 2.7e-5 max and 2.2e-5
    at the 99.9th percentile (measured; bounds twice that)."""
    wave = read_16k(next(p for p in SPEECH_CLIPS if p.name == NOISE_LIMITED))
    ref = knf_fbank(wave)
    ours = kaldi_static(wave)[0][..., 0].numpy()
    resolvable = ref >= ref.max(axis=1, keepdims=True) + np.log(1e-4)
    assert resolvable.mean() > 0.4  # 44% of the cells on this clip
    max_abs, p999 = differences(ours[resolvable], ref[resolvable])
    assert max_abs <= 6e-5 and p999 <= 5e-5, (max_abs, p999)
    assert np.isfinite(ours).all()


def test_mel_banks_match_torchaudio_compliance():
    """torchaudio (like Kaldi) evaluates the mel positions in float32, ours in float64:
    a mel value near 2,800 has a float32 spacing of 2.4e-4 mel, which over a
    triangle's 33-mel slope moves a weight by up to ~1e-5 (measured 1.4e-5)."""
    ours = kaldi.kaldi_mel_banks(80, 512, 16000, 20.0, 8000.0)
    banks, _ = ta_kaldi.get_mel_banks(80, 512, 16000.0, 20.0, 0.0, 100.0, -500.0, 1.0)  # (F, n_fft/2)
    assert ours.shape == (257, 80)
    torch.testing.assert_close(ours[:256], banks.T.float(), atol=2e-5, rtol=0)
    assert ours[256].abs().max() == 0  # Kaldi never uses the Nyquist bin


def test_window_formulas():
    n = torch.arange(400, dtype=torch.float64)
    expected = (0.5 - 0.5 * torch.cos(2 * torch.pi * n / 399)) ** 0.85
    torch.testing.assert_close(kaldi.kaldi_window("povey", 400), expected)
    torch.testing.assert_close(kaldi.kaldi_window("povey", 400, int16_scale=True), expected * 32768)
    torch.testing.assert_close(
        kaldi.kaldi_window("hamming", 400), torch.hamming_window(400, periodic=False, dtype=torch.float64)
    )


def test_hamming_window_matches_torchaudio_compliance():
    """A window with w[0] != 0 weighs Kaldi's first-sample pre-emphasis rule.
    Measured: 2.2e-4 max, 6.9e-5 at the 99.9th percentile."""
    wave = read_16k(SPEECH_CLIPS[0])[:32000]
    ours = LogMelDeltas(FeatureConfig(backend="kaldi", window="hamming", channels=["static"]))(wave)[0][..., 0]
    ref = ta_kaldi.fbank(wave[None] * 32768, num_mel_bins=80, dither=0.0, low_freq=20.0, window_type="hamming")
    max_abs, p999 = differences(ours.numpy(), ref.double().numpy())
    assert max_abs <= 5e-4 and p999 <= 2e-4, (max_abs, p999)


def test_magnitude_and_no_dc_no_preemphasis_match_torchaudio_compliance():
    """Measured: 1.7e-3 max (a quiet cell), 6.2e-5 at the 99.9th percentile."""
    wave = read_16k(SPEECH_CLIPS[0])[:32000]
    cfg = FeatureConfig(backend="kaldi", power=1.0, remove_dc_offset=False, preemphasis=0.0, channels=["static"])
    ours = LogMelDeltas(cfg)(wave)[0][..., 0]
    ref = ta_kaldi.fbank(wave[None] * 32768, num_mel_bins=80, dither=0.0, low_freq=20.0, use_power=False,
                         remove_dc_offset=False, preemphasis_coefficient=0.0)
    max_abs, p999 = differences(ours.numpy(), ref.double().numpy())
    assert max_abs <= 4e-3 and p999 <= 2e-4, (max_abs, p999)


def test_kaldi_backend_rejects_other_mel_scales():
    with pytest.raises(ValueError, match="mel_scale='htk'"):
        LogMelDeltas(FeatureConfig(backend="kaldi", mel_scale="slaney"))
