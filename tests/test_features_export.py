"""The feature module exports: ``torch.export`` with dynamic batch and length (saved and
loaded back), ONNX run by onnxruntime's default CPU provider, and the FFT-free variant.

Checks run on bundled audio at lengths not used when exporting, and on a padded batch.
Exported graphs take at least two frames per batch (``S >= win + hop`` with ``kaldi``
framing, ``S >= hop`` with ``center``): torch.export specialises sizes 0 and 1.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from speechconv import FeatureConfig, shapes
from speechconv.audio import load_audio
from speechconv.features import LogMelDeltas, pipeline
from tests.conftest import SPEECH_CLIPS

COMBOS = [(backend, framing) for backend in ("torchaudio", "kaldi") for framing in ("kaldi", "center")]


def example() -> tuple[torch.Tensor, torch.Tensor]:
    """The inputs the graphs are traced with: ``(3, 16000)`` noise, lengths 16000/9000/500."""
    gen = torch.Generator().manual_seed(0)
    return torch.randn(3, 16000, generator=gen) * 0.3, torch.tensor([16000, 9000, 500])


def dynamic_shapes(config: FeatureConfig) -> dict[str, dict[int, torch.export.Dim]]:
    smallest = shapes.min_samples_for_frames(2, config.win_length, config.hop_length, config.framing)
    batch = torch.export.Dim("batch", min=1, max=4096)
    samples = torch.export.Dim("samples", min=smallest, max=16000 * 3600)
    return {"waveforms": {0: batch, 1: samples}, "lengths": {0: batch}}


def bundled_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Four bundled clips cut to lengths the export never saw, as a padded batch ``(4, S)``."""
    names = ["jfk.flac", "arctic_a0007.wav", "yes_1000ms.wav", "198-209-0000.ogg"]
    waves = [load_audio(next(p for p in SPEECH_CLIPS if p.name == name)) for name in names]
    waves = [w[: n] for w, n in zip(waves, (70001, 45123, 15999, 8321), strict=True)]
    return torch.nn.utils.rnn.pad_sequence(waves, batch_first=True), torch.tensor([w.numel() for w in waves])


@pytest.mark.parametrize("combo", COMBOS, ids=["-".join(c) for c in COMBOS])
def test_torch_export_with_dynamic_batch_and_length_saved_and_loaded(combo, tmp_path):
    module = LogMelDeltas(FeatureConfig(backend=combo[0], framing=combo[1])).eval()
    program = torch.export.export(module, example(), dynamic_shapes=dynamic_shapes(module.config))
    torch.export.save(program, tmp_path / "features.pt2")
    loaded = torch.export.load(tmp_path / "features.pt2").module()
    batch, lengths = bundled_batch()
    expected, expected_lengths = module(batch, lengths)
    for run in (program.module(), loaded):
        features, frame_lengths = run(batch, lengths)
        assert torch.equal(frame_lengths, expected_lengths)
        torch.testing.assert_close(features, expected, atol=1e-5, rtol=0)
        one, n = run(batch[1:2, : lengths[1]], lengths[1:2])  # an utterance alone, batch of one
        torch.testing.assert_close(one[0], expected[1, : int(n[0])], atol=1e-5, rtol=0)


def float64_features(module: LogMelDeltas, batch: torch.Tensor, lengths: torch.Tensor) -> np.ndarray:
    """The same pipeline evaluated in float64 (FFT), the yardstick of float32 rounding."""
    window, mel = module.window.double(), module.mel_matrix.double()
    return pipeline.log_mel_deltas(batch.double(), lengths, module.config, window, mel)[0].numpy()


def error(ours: np.ndarray, exact: np.ndarray) -> tuple[float, float]:
    diff = np.abs(ours.astype(np.float64) - exact)
    return float(diff.max()), float(np.percentile(diff, 99.9))


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["torchaudio", "kaldi"])
@pytest.mark.parametrize("dft", ["fft", "matrix"])
def test_onnx_export_runs_in_onnxruntime_cpu(backend, dft, tmp_path):
    """onnxruntime against eager PyTorch, in the log domain: at most 1e-3 max and 1e-4 at
    the 99.9th percentile (the issue's bounds), on a batch of noise and on bundled speech
    (measured: at most 2e-6 on both, with the spectrum in float64,
    :data:`speechconv.features.fbank.SPECTRUM_DTYPE`).  ``dft="matrix"`` makes a graph
    without ONNX's DFT operator."""
    module = LogMelDeltas(FeatureConfig(backend=backend), dft=dft).eval()
    program = torch.onnx.export(module, example(), dynamo=True, dynamic_shapes=dynamic_shapes(module.config))
    program.save(str(tmp_path / "features.onnx"))
    ops = {node.op_type for node in onnx.load(str(tmp_path / "features.onnx")).graph.node}
    assert ("DFT" in ops) == (dft == "fft"), sorted(ops)
    session = ort.InferenceSession(str(tmp_path / "features.onnx"), providers=["CPUExecutionProvider"])

    gen = torch.Generator().manual_seed(1)
    noise = (torch.randn(3, 23456, generator=gen) * 0.3, torch.tensor([23456, 20000, 777]))
    for batch, lengths in (noise, bundled_batch()):
        features, frame_lengths = session.run(None, {"waveforms": batch.numpy(), "lengths": lengths.numpy()})
        expected, expected_lengths = module(batch, lengths)
        assert np.array_equal(frame_lengths, expected_lengths.numpy())
        max_abs, p999 = error(features, expected.double().numpy())
        print(f"\nONNX {backend} {dft}: against eager {max_abs:.1e} max, {p999:.1e} at the 99.9th percentile")
        assert max_abs <= 1e-3 and p999 <= 1e-4, (max_abs, p999)


def test_exported_graph_has_no_data_dependent_control_flow():
    """One graph serves every batch: no guard on the lengths' values was recorded (the
    export above would fail on one), and the traced forward takes the one-piece path."""
    module = LogMelDeltas().eval()
    program = torch.export.export(module, example(), dynamic_shapes=dynamic_shapes(module.config))
    targets = {str(node.target) for node in program.graph.nodes if node.op == "call_function"}
    assert not any("item" in t or "nonzero" in t or "_local_scalar_dense" in t for t in targets), targets


@pytest.mark.parametrize("backend", ["torchaudio", "kaldi"])
def test_matrix_dft_is_as_close_to_float64_as_the_fft(backend):
    """The FFT-free variant against the FFT path: each compared with the same pipeline
    evaluated in float64, the matrix DFT's difference (max and 99.9th percentile) is
    within twice the FFT's, or 1e-4 (measured: 0.3-4x the FFT's on the bundled clips,
    4x only where both are below 3e-5)."""
    config = FeatureConfig(backend=backend)
    fft, matrix = LogMelDeltas(config), LogMelDeltas(config, dft="matrix")
    for name in ["jfk.flac", "arctic_a0007.wav", "silence_1000ms.wav", "no_1000ms.wav"]:
        wave = load_audio(next(p for p in SPEECH_CLIPS if p.name == name))
        exact = float64_features(fft, wave[None], torch.tensor([wave.numel()]))[0]
        (fft_max, fft_p999), (matrix_max, matrix_p999) = errors = [error(m(wave)[0].numpy(), exact)
                                                                    for m in (fft, matrix)]
        assert matrix_max <= max(2 * fft_max, 1e-4) and matrix_p999 <= max(2 * fft_p999, 1e-4), (name, errors)
