"""Benchmark: the exported graphs in onnxruntime's CPU provider against eager PyTorch.

Run: ``.venv/bin/python bench/export.py`` (a few minutes; ``--quick`` for a smoke run,
``--repeats N`` for more or fewer rounds, ``--threads 1 2`` for the thread counts).  A
benchmark, not a test: it asserts nothing.  It prints its tables and writes them into
``docs/benchmarks.md`` (section ``export``, :mod:`bench.report`).

Model: the default run's recogniser (``python train.py``'s config: ``logmel80``
features, the conv front, projection, BiLSTM, CTC), randomly initialised: the same ops
and sizes as a trained one.  Stages, each exported with :mod:`speechconv.export` and
compared with the eager eval-mode modules it was exported from:

* ``features (DFT)``     the feature stage alone, the spectrum by ONNX's DFT operator;
* ``features (matrix)``  the same with ``dft="matrix"`` (a product with a fixed basis);
* ``front-end``          features + conv encoder (``encoded (B, T', D)``);
* ``recogniser``         raw audio to log-probabilities (the LSTM as an ONNX ``Scan``);
* ``spectrum alone``     one ONNX ``DFT`` node (float64, 512 points, one-sided, as the
                         feature graphs use it) on as many frames as the batch has,
                         against ``torch.fft.rfft`` of the same frames: a floor under
                         any graph that computes the spectrum with onnxruntime's DFT.

Batches: 32 x 3 s and 8 x 10 s of bundled speech (data/fixtures then data/fsdd, cut),
padded, every utterance full length.  Each round times every row once, eager and
onnxruntime side by side (interleaved: the machine is shared, and a burst of load hits
both alike), each run after a short pause (bench/features.py's: thread pools spin a while
after a run); the tables give medians over the rounds.  ``torch.set_num_threads`` and
onnxruntime's ``intra_op_num_threads`` are the same in each column.  Accuracy: the
largest difference between onnxruntime's output and eager's on the first batch.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.features import PAUSE_SECONDS, audio_pool, utterances  # noqa: E402
from bench.report import machine, write_section  # noqa: E402
from speechconv import export  # noqa: E402
from speechconv.config import validate  # noqa: E402
from speechconv.features import LogMelDeltas  # noqa: E402
from speechconv.models import build_model  # noqa: E402
from speechconv.text import CharVocabulary  # noqa: E402
from train import compose  # noqa: E402

SHAPES = ((32, 3), (8, 10))
"""(utterances, seconds each) of the batches."""
SPECTRUM = "spectrum alone (DFT node; eager: rfft)"


class Features(torch.nn.Module):
    """The feature stage as a :class:`speechconv.export.Frontend` encoder would see it: identity."""

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return features, lengths


def build(folder: Path) -> list[tuple[str, torch.nn.Module, Path]]:
    """``(stage, eager module, onnx file)`` of each row."""
    cfg = validate(compose(), check_mode=False)
    vocab = CharVocabulary()
    torch.manual_seed(0)
    model = build_model(cfg.model, cfg.encoder, cfg.features, vocab).eval()
    rows = []
    for name, dft in (("features (DFT)", "fft"), ("features (matrix)", "matrix")):
        features = LogMelDeltas(cfg.features, dft=dft).eval()
        path = export.export_frontend(features, Features(), folder / f"features-{dft}.onnx")
        rows.append((name, export.Frontend(features, Features()).eval(), path))
    features = LogMelDeltas(cfg.features).eval()
    path = export.export_frontend(features, model.body.encoder, folder / "frontend.onnx")
    rows.append(("front-end", export.Frontend(features, model.body.encoder).eval(), path))
    path = export.export_recogniser(model, features, vocab, folder / "recogniser.onnx")
    rows.append(("recogniser", export.Recogniser(features, model).eval(), path))
    return rows


def dft_session(n_fft: int, options: ort.SessionOptions) -> ort.InferenceSession:
    """A graph of one ``DFT`` node: ``frames (R, n_fft, 1)`` float64 -> ``(R, n_fft//2 + 1, 2)``."""
    from onnx import TensorProto, helper

    frames = helper.make_tensor_value_info("frames", TensorProto.DOUBLE, [None, n_fft, 1])
    spectrum = helper.make_tensor_value_info("spectrum", TensorProto.DOUBLE, None)
    size = helper.make_tensor("size", TensorProto.INT64, [], [n_fft])
    axis = helper.make_tensor("axis", TensorProto.INT64, [], [1])
    node = helper.make_node("DFT", ["frames", "size", "axis"], ["spectrum"], onesided=1)
    graph = helper.make_graph([node], "dft", [frames], [spectrum], initializer=[size, axis])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def timed(fn, *args) -> float:
    """Seconds ``fn(*args)`` takes, after a pause of :data:`PAUSE_SECONDS` (so that neither
    runtime pays for the other's thread pool still spinning)."""
    time.sleep(PAUSE_SECONDS)
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--quick", action="store_true", help="2 rounds, 1 thread, no docs update")
    args = parser.parse_args()
    repeats, threads = (2, [1]) if args.quick else (args.repeats, args.threads)
    pool = audio_pool(max(b * s for b, s in SHAPES))
    batches = {}
    for b, s in SHAPES:
        utts = utterances(pool, s, b * s)
        batches[(b, s)] = (torch.stack(utts), torch.tensor([u.numel() for u in utts]))
    with tempfile.TemporaryDirectory() as folder:
        rows = build(Path(folder))
        sizes = {name: path.stat().st_size for name, _, path in rows}
        results = []
        for n_threads in threads:
            torch.set_num_threads(n_threads)
            options = ort.SessionOptions()
            options.intra_op_num_threads, options.inter_op_num_threads = n_threads, 1
            sessions = {name: ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
                        for name, _, path in rows}
            n_fft = rows[0][1].features.config.n_fft
            sessions[SPECTRUM] = dft_session(n_fft, options)
            for shape, (batch, lengths) in batches.items():
                feed = {"waveforms": batch.numpy(), "lengths": lengths.numpy()}
                frames = torch.randn(int(rows[0][1].features.num_frames(lengths).sum()), n_fft, dtype=torch.float64)
                runs = {name: (module, (batch, lengths), feed) for name, module, _ in rows}
                runs[SPECTRUM] = (lambda x: (torch.view_as_real(torch.fft.rfft(x)),), (frames,),
                                  {"frames": frames[..., None].numpy()})  # (R, n_fft) -> (R, K, 2)
                times = {(name, kind): [] for name in runs for kind in ("eager", "ort")}
                error = {}
                for name, (fn, inputs, ort_feed) in runs.items():  # warm-up, and the accuracy
                    with torch.inference_mode():
                        want = fn(*inputs)[0].numpy()
                    error[name] = float(np.abs(sessions[name].run(None, ort_feed)[0] - want).max())
                # the spectrum row in rounds of its own: its batch-sized arrays would change
                # the allocator's state for the rows timed after them
                for group in ([name for name, _, _ in rows], [SPECTRUM]):
                    for _ in range(repeats):
                        for name in group:
                            fn, inputs, ort_feed = runs[name]
                            with torch.inference_mode():
                                times[(name, "eager")].append(timed(fn, *inputs))
                            times[(name, "ort")].append(timed(sessions[name].run, None, ort_feed))
                for name in runs:
                    eager_ms = 1000 * statistics.median(times[(name, "eager")])
                    ort_ms = 1000 * statistics.median(times[(name, "ort")])
                    results.append((n_threads, shape, name, eager_ms, ort_ms, error[name]))
    table = ["| threads | batch | stage | eager ms | onnxruntime ms | onnxruntime speed / eager | max difference |",
             "|---:|---|---|---:|---:|---:|---:|"]
    for n_threads, (b, s), name, eager_ms, ort_ms, err in results:
        table.append(f"| {n_threads} | {b} x {s} s | {name} | {eager_ms:.1f} | {ort_ms:.1f} | "
                     f"{eager_ms / ort_ms:.2f} | {err:.1e} |")
    size_lines = [f"- {name}: {sizes[name] / 1e6:.2f} MB" for name, _, _ in rows]
    by_cell = {(n, shape, name): (eager_ms, ort_ms) for n, shape, name, eager_ms, ort_ms, _ in results}
    floor_lines = [f"- {n} thread(s), {b} x {s} s: onnxruntime's DFT node alone {by_cell[(n, (b, s), SPECTRUM)][1]:.1f} ms, "
                   f"eager's whole front-end {by_cell[(n, (b, s), 'front-end')][0]:.1f} ms"
                   for n in threads for b, s in SHAPES]
    markdown = "\n".join([
        "## Export (`.venv/bin/python bench/export.py`)", "",
        f"Machine: {machine()}.  Median of {repeats} interleaved rounds (eager and onnxruntime side by side in "
        f"each round; the machine is shared, so absolute times are noisy and the ratios are the figures); "
        f"onnxruntime {ort.__version__}, CPU provider.  Speed > 1: onnxruntime is faster.  Max difference: "
        f"onnxruntime against eager on that batch (log domain for features; encoder output; log-probabilities).",
        "", *table, "", "The spectrum alone in onnxruntime (float64, which the 1e-3 parity needs) against "
        "eager's whole front-end:", "", *floor_lines, "", "ONNX file sizes:", "", *size_lines,
    ])
    print(markdown)
    if not args.quick:
        write_section("export", markdown)


if __name__ == "__main__":
    main()
