"""Benchmark: the masked ConvEncoder against a plain nn.Sequential of the same layers.

Run: ``.venv/bin/python bench/encoder.py`` (a few minutes; ``--quick`` for a smoke run).
Prints the tables and writes them as the ``encoder`` section of ``docs/benchmarks.md``
(``bench/report.py``).  Every variant of a cell is timed in interleaved rounds in one
process (medians), so ratios hold under background load; the machine is named in the
section.

Variants, on the default encoder (2 x [32 filters, 3x3, stride 2, SAME, batch norm, ReLU])
and ``(B, T, 80, 3)`` features:

* ``plain``       nn.Sequential(Conv2d + BatchNorm2d + ReLU) x 2, contiguous NCHW,
                  symmetric padding 1 (the FLOPs of SAME), no lengths or masks;
* ``plain-cl``    the same modules and input in channels_last;
* ``masked``      :class:`speechconv.ConvEncoder` (per-utterance SAME padding, batch norm
                  over valid frames, zeros past every length), lengths drawn in
                  ``[T/2, T]`` with the longest equal to ``T``, like a bucketed batch;
                  in eval this is the grouped path (``ConvEncoder._forward_grouped``);
* ``masked-layers`` eval only: the plain layer-by-layer path on the whole batch
                  (``ConvEncoder._forward_layers``), what the grouped path is measured
                  against;
* ``masked-full`` ``masked`` with every length equal to ``T``.

Modes: ``eval`` is a forward under ``torch.inference_mode``, ``train`` forward and
backward of ``out.sum()`` in train mode.  Shapes: ``16 x 1000`` frames, and
``16 x 250`` (4000 frames, ``make run``'s largest batch).

Page sizes, one child process each (PyTorch reads ``THP_MEM_ALLOC_ENABLE`` once):
``4 KB`` (``THP_MEM_ALLOC_ENABLE=0``, torch's default: every tensor of 2 MB or more is
fresh memory from the kernel, faulted in 4 KB at a time) and ``huge``
(``THP_MEM_ALLOC_ENABLE=1``: such tensors are mapped 2 MB at a time).  On CPU these layers are memory-bound, and a fresh batch-sized tensor costs
about as much as the pass that fills it, so time follows the count of batch-sized
tensors a step makes.

Floors (issue 15): masked train at most 1.15x plain-cl's time; masked eval at least
1.5x plain's speed; the grouped eval path at least 1.2x the plain path's speed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.report import machine, write_section  # noqa: E402
from speechconv.encoder import ConvEncoder  # noqa: E402

F, C = 80, 3
SHAPES = [(16, 1000), (16, 250)]
PAGES = {"4 KB": "0", "huge": "1"}
"""Page-size column -> ``THP_MEM_ALLOC_ENABLE`` of its child process."""
COMMAND = ".venv/bin/python bench/encoder.py"


def plain_sequential() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(C, 32, 3, 2, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(inplace=True),
        nn.Conv2d(32, 32, 3, 2, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(inplace=True),
    )


def interleaved(fns: dict[str, Callable[[], object]], min_time: float, min_rounds: int) -> dict[str, float]:
    """Median seconds per call of each function, timed in rounds that call each once
    (every variant under the same background load), after one warm-up call each."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    start, rounds = time.perf_counter(), 0
    while rounds < min_rounds or time.perf_counter() - start < min_time:
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
        rounds += 1
    return {name: statistics.median(ts) for name, ts in times.items()}


def runners(mode: str, batch: int, frames: int, seed: int = 0) -> dict[str, Callable[[], object]]:
    """One zero-argument callable per variant for ``mode`` ``eval`` or ``train``."""
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(batch, frames, F, C, generator=g)  # (B, T, F, C)
    lengths = torch.randint(frames // 2, frames + 1, (batch,), generator=g)
    lengths[0] = frames
    full = torch.full_like(lengths, frames)
    nchw = feats.permute(0, 3, 1, 2).contiguous()  # (B, T, F, C) -> (B, C, T, F), contiguous copy
    nchw_cl = nchw.contiguous(memory_format=torch.channels_last)
    plain, plain_cl, masked = plain_sequential(), plain_sequential().to(memory_format=torch.channels_last), ConvEncoder()
    for m in (plain, plain_cl, masked):
        m.train(mode == "train")

    def step(fn: Callable[[], torch.Tensor]) -> Callable[[], object]:
        if mode == "train":
            return lambda: fn().sum().backward()

        def infer() -> torch.Tensor:
            with torch.inference_mode():
                return fn()

        return infer

    fns = {
        "plain": step(lambda: plain(nchw)),
        "plain-cl": step(lambda: plain_cl(nchw_cl)),
        "masked": step(lambda: masked(feats, lengths)[0]),
        "masked-layers": step(lambda: masked._forward_layers(feats, lengths)[0]),
        "masked-full": step(lambda: masked(feats, full)[0]),
    }
    if mode == "train":
        del fns["masked-layers"]  # training runs the plain path already
    return fns


def measure(args: argparse.Namespace) -> list[dict[str, object]]:
    """Every thread count, shape, mode and variant, timed in this process."""
    min_time, min_rounds = (0.0, 1) if args.quick else (args.seconds, 5)
    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        for batch, frames in SHAPES:
            for mode in ("eval", "train"):
                results = interleaved(runners(mode, batch, frames), min_time, min_rounds)
                for name, sec in results.items():
                    rows.append({"threads": threads, "shape": f"{batch} x {frames}", "mode": mode, "variant": name,
                                 "ms": sec * 1e3, "plain": results["plain"] / sec, "plain-cl": results["plain-cl"] / sec,
                                 "layers": results.get("masked-layers", sec) / sec})
                print(f"  {threads} thread(s), {batch} x {frames}, {mode}: "
                      + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in results.items()), file=sys.stderr, flush=True)
    return rows


def table(rows: list[dict[str, object]]) -> str:
    """One markdown table: a row per page size, thread count, shape, mode and variant."""
    lines = ["| pages | threads | shape (B x T) | mode | variant | ms / step | speed / plain | speed / plain-cl "
             "| speed / masked-layers |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        layers = f"{r['layers']:.2f}" if r["mode"] == "eval" and r["variant"].startswith("masked") else ""
        lines.append(f"| {r['pages']} | {r['threads']} | {r['shape']} | {r['mode']} | {r['variant']} | {r['ms']:.1f} "
                     f"| {r['plain']:.2f} | {r['plain-cl']:.2f} | {layers} |")
    return "\n".join(lines)


def floors(rows: list[dict[str, object]]) -> str:
    """The issue's floors, cell by cell: masked train time / plain-cl, masked eval speed /
    plain, grouped eval speed / the plain path."""
    lines = []
    for r in rows:
        if r["variant"] != "masked":
            continue
        where = f"{r['pages']} pages, {r['threads']} thread(s), {r['shape']}"
        if r["mode"] == "train":
            cost = 1 / r["plain-cl"]
            lines.append(f"- train, {where}: masked takes {cost:.2f}x plain-cl's time (floor 1.15x): "
                         f"{'met' if cost <= 1.15 else 'NOT met'}")
        else:
            lines.append(f"- eval, {where}: masked runs {r['plain']:.2f}x plain (floor 1.5x): "
                         f"{'met' if r['plain'] >= 1.5 else 'NOT met'}; the grouped path {r['layers']:.2f}x the "
                         f"plain path (floor 1.2x): {'met' if r['layers'] >= 1.2 else 'NOT met'}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one short round per cell (smoke test); no docs written")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--seconds", type=float, default=4.0, help="least time per cell (default 4)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:  # one page size, measured in this process as it is set up
        print(json.dumps(measure(args)))
        return
    rows = []
    for pages, thp in PAGES.items():
        print(f"== {pages} pages (THP_MEM_ALLOC_ENABLE={thp})", file=sys.stderr, flush=True)
        child = [sys.executable, __file__, "--child", "--seconds", str(args.seconds), "--threads",
                 *map(str, args.threads)] + (["--quick"] if args.quick else [])
        out = subprocess.run(child, env={**os.environ, "THP_MEM_ALLOC_ENABLE": thp}, check=True, capture_output=True,
                             text=True)
        sys.stderr.write(out.stderr)
        rows += [{**r, "pages": pages} for r in json.loads(out.stdout)]
    markdown = "\n\n".join([
        f"## Encoder (`{COMMAND}`)",
        f"Machine: {machine()}.  Speeds are ratios of median step times measured side by side "
        f"(higher is faster); the variants are described in `bench/encoder.py`.",
        table(rows),
        "Floors:\n\n" + floors(rows),
    ])
    print(markdown)
    if not args.quick:
        print(f"wrote {write_section('encoder', markdown)}", file=sys.stderr)


if __name__ == "__main__":
    main()
