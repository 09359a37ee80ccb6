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

Memory conditions; every cell (condition, threads, shape, mode) is measured in a fresh
child process, because PyTorch reads ``THP_MEM_ALLOC_ENABLE`` once and glibc's
thresholds move with what a process has freed before (a cell run after another would
inherit them):

* pages: ``4 KB`` (``THP_MEM_ALLOC_ENABLE=0``, torch's default) or ``huge``
  (``THP_MEM_ALLOC_ENABLE=1``: tensors of 2 MB or more are mapped 2 MB at a time);
* allocator: ``returned`` (glibc's defaults: a freed batch-sized tensor goes back to the
  kernel, so the next one is fresh memory, faulted in page by page) or ``kept``
  (``MALLOC_MMAP_THRESHOLD_`` and ``MALLOC_TRIM_THRESHOLD_`` set high: freed memory is
  kept and reused, as it is in a process whose earlier frees raised glibc's thresholds).

On CPU these layers are memory-bound, and a fresh batch-sized tensor costs about as much
as the pass that fills it: with memory ``returned``, time follows the count of
batch-sized tensors a step makes, which the grouped eval path keeps small; with memory
``kept``, the plain stack pays no faults and the masked path gains only the padding it
skips.

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
PAGES = {"4 KB": {"THP_MEM_ALLOC_ENABLE": "0"}, "huge": {"THP_MEM_ALLOC_ENABLE": "1"}}
ALLOCATORS = {"returned": {}, "kept": {"MALLOC_MMAP_THRESHOLD_": str(256 << 20), "MALLOC_TRIM_THRESHOLD_": str(1 << 30)}}
"""Memory-condition columns -> the environment of their child processes (module docstring)."""
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
    """Every variant of one cell (``args.shape``, ``args.threads``, ``args.mode``), timed in this process."""
    min_time, min_rounds = (0.0, 1) if args.quick else (args.seconds, 5)
    batch, frames = SHAPES[args.shape]
    torch.set_num_threads(args.threads)
    results = interleaved(runners(args.mode, batch, frames), min_time, min_rounds)
    print(f"  {args.threads} thread(s), {batch} x {frames}, {args.mode}: "
          + ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in results.items()), file=sys.stderr, flush=True)
    return [{"threads": args.threads, "shape": f"{batch} x {frames}", "mode": args.mode, "variant": name,
             "ms": sec * 1e3, "plain": results["plain"] / sec, "plain-cl": results["plain-cl"] / sec,
             "layers": results.get("masked-layers", sec) / sec} for name, sec in results.items()]


def table(rows: list[dict[str, object]]) -> str:
    """One markdown table: a row per page size, thread count, shape, mode and variant."""
    lines = ["| pages | memory | threads | shape (B x T) | mode | variant | ms / step | speed / plain "
             "| speed / plain-cl | speed / masked-layers |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        layers = f"{r['layers']:.2f}" if r["mode"] == "eval" and r["variant"].startswith("masked") else ""
        lines.append(f"| {r['pages']} | {r['memory']} | {r['threads']} | {r['shape']} | {r['mode']} | {r['variant']} "
                     f"| {r['ms']:.1f} "
                     f"| {r['plain']:.2f} | {r['plain-cl']:.2f} | {layers} |")
    return "\n".join(lines)


def floors(rows: list[dict[str, object]]) -> str:
    """The issue's floors, cell by cell: masked train time / plain-cl, masked eval speed /
    plain, grouped eval speed / the plain path."""
    lines = []
    for r in rows:
        if r["variant"] != "masked":
            continue
        where = f"{r['pages']} pages, memory {r['memory']}, {r['threads']} thread(s), {r['shape']}"
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
    parser.add_argument("--seconds", type=float, default=8.0, help="least time per cell (default 8)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--shape", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="eval", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:  # one cell, measured in a process of its own as it is set up
        args.threads = args.threads[0]
        print(json.dumps(measure(args)))
        return
    rows = []
    for pages, page_env in PAGES.items():
        for memory, memory_env in ALLOCATORS.items():
            env = {**page_env, **memory_env}
            print(f"== {pages} pages, memory {memory}: " + " ".join(f"{k}={v}" for k, v in env.items()),
                  file=sys.stderr, flush=True)
            for threads in args.threads:
                for shape in range(len(SHAPES)):
                    for mode in ("eval", "train"):
                        child = [sys.executable, __file__, "--child", "--shape", str(shape), "--mode", mode,
                                 "--seconds", str(args.seconds), "--threads", str(threads)]
                        out = subprocess.run(child + (["--quick"] if args.quick else []), env={**os.environ, **env},
                                             check=True, capture_output=True, text=True)
                        sys.stderr.write(out.stderr)
                        rows += [{**r, "pages": pages, "memory": memory} for r in json.loads(out.stdout)]
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
