"""The front-end exported to executorch (``.pte``) and run by executorch's runtime, against
eager PyTorch: the offline front-end with a dynamic batch and length (up to the bounds
fixed when exporting), and the streaming step fed chunk by chunk.

The feature stage is made with ``dft="matrix"``: executorch's portable kernel library
(``executorch/kernels/portable/functions.yaml``) has no FFT operator, and every operator
of each program is checked to be one of its kernels (or one of the runtime's own scalar
operators), so the files run in a runtime built with the portable kernels alone.  The
Python runtime also links the optimised kernels; it runs what a device would.

Bounds: :data:`FRONT_END_ATOL` against the eager front-end, absolute, on encoder
outputs up to about 5 (the issue's bound for a runtime other than torch, as onnxruntime
is held to in tests/test_streaming_export.py); output lengths and frame counts exact.
executorch is in the ``pte`` extra, which the ``dev`` extra includes.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from encoder_helpers import randomise_batch_norms
from executorch.runtime import Runtime

from speechconv import FeatureConfig, export
from speechconv.audio import load_audio
from speechconv.encoder import ConvEncoder
from speechconv.features import LogMelDeltas
from speechconv.streaming.step import FrontEndStep, export_front_end_step
from tests.conftest import SPEECH_CLIPS
from tests.test_features_export import bundled_batch
from tests.test_streaming_export import CHUNK, _stream_queues

FRONT_END_ATOL = 1e-4
"""The ``.pte`` against the eager front-end, absolute (measured: at most 4.3e-6 offline with
the torchaudio backend on outputs up to 5.5, 9.5e-6 with the kaldi backend on outputs up
to 11.5, 3.8e-6 streamed: executorch's convolutions and matrix products round otherwise
than torch's)."""

MAX_SECONDS = 5.0
"""The offline export's length bound: the longest bundled check (70001 samples) fits."""


def portable_operators() -> set[str]:
    """``namespace::name.overload`` of every kernel in executorch's portable library."""
    names = set()
    listing = importlib.resources.files("executorch.kernels.portable") / "functions.yaml"
    for entry in yaml.safe_load(listing.read_text()):
        if "op" in entry:
            names.add(f"aten::{entry['op']}")
        else:
            names.add(entry["func"].split("(")[0])
    return names


def program_operators(path: Path) -> set[str]:
    """``namespace::name.overload`` of every operator the ``.pte`` file calls."""
    from executorch.exir._serialize._program import deserialize_pte_binary

    program = deserialize_pte_binary(path.read_bytes()).program
    return {f"{op.name}.{op.overload}" for plan in program.execution_plan for op in plan.operators}


RUNTIME_OPERATORS = ("executorch_prim::", "aten::sym_size.int", "aten::sym_numel")
"""Scalar operators every executorch runtime registers itself (its prim ops), whatever
kernel library it links."""


def assert_portable(path: Path) -> None:
    ops = program_operators(path)
    missing = sorted(op for op in ops - portable_operators() if not op.startswith(RUNTIME_OPERATORS))
    assert not missing, f"{path.name} calls operators that executorch's portable kernels lack: {missing}"
    assert not any("fft" in op for op in ops), sorted(ops)


def constant(program, name: str) -> int:
    """The value of a ``.pte``'s constant method ``name``."""
    return int(program.load_method(name).execute([])[0])


def front_end(backend: str) -> tuple[LogMelDeltas, ConvEncoder]:
    torch.manual_seed(0)
    encoder = ConvEncoder().eval()
    randomise_batch_norms(encoder, 0)
    return LogMelDeltas(FeatureConfig(backend=backend), dft="matrix").eval(), encoder


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["torchaudio", "kaldi"])
def test_offline_front_end_pte_equals_eager(backend, tmp_path) -> None:
    """The offline front-end (features and conv encoder) with a dynamic batch and length:
    a padded batch of bundled clips at lengths the export never saw, each utterance alone
    (a batch below the bound), and one utterance as long as the bound."""
    features, encoder = front_end(backend)
    path = export.export_frontend(features, encoder, tmp_path / "front_end.pte", "pte", max_batch=4,
                                  max_seconds=MAX_SECONDS)
    assert_portable(path)
    program = Runtime.get().load_program(path)
    rate = features.config.sample_rate
    assert constant(program, "sample_rate") == rate
    assert constant(program, "max_batch") == 4 and constant(program, "max_samples") == int(MAX_SECONDS * rate)
    assert constant(program, "min_samples") == export.min_samples(features, encoder.min_input_frames)
    method = program.load_method("forward")

    batch, lengths = bundled_batch()
    jfk = load_audio(next(p for p in SPEECH_CLIPS if p.name == "jfk.flac"))[: int(MAX_SECONDS * rate)]
    cases = [(batch, lengths)] + [(batch[b : b + 1, : lengths[b]], lengths[b : b + 1]) for b in range(4)]
    cases.append((jfk[None], torch.tensor([jfk.numel()])))
    for waveforms, lens in cases:
        with torch.no_grad():
            want, want_lengths = encoder(*features(waveforms, lens))
        got, got_lengths = method.execute([waveforms.contiguous(), lens])
        assert torch.equal(got_lengths, want_lengths) and got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=0, atol=FRONT_END_ATOL)
        print(f"\npte {backend} front-end vs eager, batch {tuple(waveforms.shape)}: largest difference "
              f"{(got - want).abs().max():.1e} on outputs up to {want.abs().max():.1f}")


@pytest.mark.slow
def test_front_end_step_pte_streams_the_offline_encoder_output(tmp_path, speech_clips) -> None:
    """The streaming front-end step at a fixed chunk (its state as inputs and outputs) run
    by executorch's runtime: two streams of real clips side by side, the first ending while
    the second goes on and then starting another clip in the same batch (as
    tests/test_streaming_export.py feeds onnxruntime); every utterance's frames, in number
    exactly, are the offline eager encoder output's."""
    features, encoder = front_end("torchaudio")
    path = export_front_end_step(features, encoder, tmp_path / "step.pte", CHUNK, batch=2, fmt="pte")
    assert_portable(path)
    program = Runtime.get().load_program(path)
    assert constant(program, "chunk_samples") == CHUNK and constant(program, "batch") == 2
    assert constant(program, "sample_rate") == features.config.sample_rate
    method = program.load_method("forward")
    state = list(FrontEndStep(features, encoder).initial_state(2))

    def pte_run(chunk, lengths, final):
        nonlocal state
        inputs = [torch.from_numpy(chunk), torch.from_numpy(lengths), torch.from_numpy(final), *state]
        # the runtime takes contiguous tensors; its outputs live in the method's memory (copied)
        outputs = method.execute([t.contiguous() for t in inputs])
        encoded, counts, *state = (t.clone(memory_format=torch.contiguous_format) for t in outputs)
        return encoded, counts

    clips = {p.name: p for p in speech_clips}
    queues = [[load_audio(clips["yes_1000ms.wav"]), load_audio(clips["no_1000ms.wav"])[:7777]],
              [load_audio(clips["arctic_a0007.wav"])[:23457]]]
    streamed = _stream_queues(pte_run, queues, 2)
    for b, queue in enumerate(queues):
        for u, wave in enumerate(queue):
            with torch.no_grad():
                want, n = encoder(*features(wave[None]))
            want = want[0, : int(n[0])].numpy()
            assert streamed[b][u].shape == want.shape
            np.testing.assert_allclose(streamed[b][u], want, rtol=0, atol=FRONT_END_ATOL)
            print(f"\npte front-end step vs offline eager, stream {b} utterance {u}: {want.shape[0]} frames, "
                  f"largest difference {np.abs(streamed[b][u] - want).max():.1e}")


def test_pte_refusals_name_the_setting(tmp_path) -> None:
    """What a ``.pte`` cannot hold is refused before anything is traced or written."""
    from tests.test_export_recogniser import default_recogniser

    features, encoder = LogMelDeltas().eval(), ConvEncoder().eval()
    with pytest.raises(export.ExportError, match="dft='fft'.*dft='matrix'"):
        export.export_frontend(features, encoder, tmp_path / "a.pte", "pte")
    with pytest.raises(export.ExportError, match="dft='fft'"):
        export_front_end_step(features, encoder, tmp_path / "b.pte", CHUNK, fmt="pte")
    matrix = LogMelDeltas(dft="matrix").eval()
    with pytest.raises(export.ExportError, match="too small"):
        export.export_frontend(matrix, encoder, tmp_path / "c.pte", "pte", max_seconds=0.01)
    with pytest.raises(export.ExportError, match="max_seconds=0"):
        export.export_frontend(matrix, encoder, tmp_path / "c.pte", "pte", max_seconds=0)
    with pytest.raises(export.ExportError, match="max_batch=0"):
        export.export_frontend(matrix, encoder, tmp_path / "c.pte", "pte", max_batch=0)
    with pytest.raises(export.ExportError, match="fmt='pt2'.*streaming step"):
        export_front_end_step(matrix, encoder, tmp_path / "d.pt2", CHUNK, fmt="pt2")
    model, _, vocab = default_recogniser()
    with pytest.raises(export.ExportError, match="export.format=pte exports the front-end only"):
        export.export_recogniser(model, matrix, vocab, tmp_path / "e.pte", "pte")
    assert not list(tmp_path.iterdir())
