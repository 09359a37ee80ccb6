"""Benchmark: the masked ConvEncoder against a plain nn.Sequential of the same layers.

Run: ``.venv/bin/python bench/encoder.py`` (about two minutes; ``--quick`` for a smoke
run).  Two tables, one per page size of torch's CPU allocator, each measured in a child
process of its own (PyTorch reads ``THP_MEM_ALLOC_ENABLE`` once per process):

* ``4 KB pages``   ``THP_MEM_ALLOC_ENABLE=0``, torch's default: every tensor of 2 MB or
                   more is fresh memory from the kernel, faulted in 4 KB at a time;
* ``huge pages``   ``THP_MEM_ALLOC_ENABLE=1``: such tensors are 2 MB aligned and
                   ``madvise(MADV_HUGEPAGE)``-d, so the kernel maps them 2 MB at a time.
                   ``train.py`` runs this way unless the variable is set otherwise.

Every row at B=16, T=1000, 80 x 3 input:

* ``plain``        nn.Sequential(Conv2d + BatchNorm2d + ReLU) x 2, contiguous NCHW,
                   symmetric padding 1 (the same FLOPs as SAME), no lengths or masks;
* ``plain-cl``     the same modules and input in channels_last;
* ``masked``       :class:`speechconv.ConvEncoder` (per-utterance SAME padding, masks,
                   masked batch norm; channels_last inside), lengths drawn in [T/2, T]
                   with the longest equal to T, like a bucketed batch;
* ``masked-full``  the same encoder and input with every length equal to T: no padding
                   frames for it to skip.

Modes: ``eval`` is a forward pass under ``torch.inference_mode``; ``train`` is forward +
backward of ``out.sum()`` in train mode.  Columns: input frames per second (B*T per
iteration, padded frames included), the ratio to ``plain`` and to ``plain-cl`` at the same
thread count (variants are timed in interleaved rounds, medians reported), achieved
GFLOP/s (2 FLOPs per multiply-add of the convs each variant runs, counted from the
shapes its ``conv2d`` calls see, so frames a variant skips do not count; backward
counted as twice the forward: the input and weight gradients), and that as a
percentage of a float32 peak measured in the same run (:func:`float32_peak`: the
faster of a large ``torch.mm`` and a compute-bound oneDNN conv).

Reading the rows: on CPU these layers are memory-bound, and where a fresh large tensor
costs page faults (4 KB pages; measured on the development VM: ~15-25 ms to allocate
and touch 41 MB, ~2 ms to copy into existing memory) time follows the count of new
batch-sized tensors per step.

* Eval (``speechconv.encoder.ConvBranch._forward_chained``): the norm is folded into
  the conv, each conv's output is the next conv's padded input as it stands (the first
  buffer is sized and each utterance placed so that this holds), and the batch runs in
  groups of consecutive utterances (two of these 1000-frame ones), each cut to its own
  longest utterance.  A group's buffers (5 MB) come back from glibc's free lists and
  mostly stay in cache, where whole-batch buffers (41 MB for the first conv's output)
  are fresh pages on every call: that, not skipped padding, is most of the gain
  (compare ``masked-full``, which skips nothing and computes 0.7% more than ``plain``
  for the larger chained buffers; ``masked`` computes 9% less).
* Train: the masked encoder needs a zero-padded input buffer per conv (per-utterance
  SAME offsets), but its first layer writes its batch-norm + ReLU output straight into
  the second conv's buffer (``ConvBranch._forward_placed``), so that buffer replaces the
  output rather than adding to it, and the backward reads the gradient out of it per
  utterance; the batch norm's backward is hand-written
  (``speechconv.masking._MaskedBatchNormFn``: per-utterance reductions over the valid
  frames, the ReLU fused, one new tensor), where ``nn.BatchNorm2d``'s backward on 4-D
  channels_last tensors is itself slow (~20 ms for the first layer at 1 thread).  Batch
  statistics need the whole batch, so training does not run in groups.
* Huge pages (the second table) take most of the cost of a fresh tensor away: on this
  VM (``madvise`` THP mode) they cut the plain variants' times by a third to a half;
  ``plain-cl`` itself is then only 1.1-1.4x ``plain``.

Two threads on a loaded machine: every op big enough to run in parallel waits for
both threads, and a descheduled thread costs up to a scheduler time slice.  The masked
encoder runs per-utterance loops (a few hundred such ops per training step, against
about twenty for ``plain``), so its 2-thread rows swing by several times when other
jobs hold the cores; judge them on an idle machine, or by the 1-thread rows.  Even
idle, the 2-thread eval rows of the plain variants move most from run to run (``plain``
from 17 to 78 ms over eight runs of this VM).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch
from torch import nn

from speechconv import shapes
from speechconv.encoder import ConvEncoder

B, T, F, C = 16, 1000, 80, 3


def conv_macs(enc: ConvEncoder, num_frames: int) -> int:
    """Multiply-adds of every conv of the encoder's main branch for one ``(B, T, F, C)``
    batch, from the layer shapes: outputs x (C_in * kT * kF) per output."""
    macs, t = 0, num_frames
    for layer in enc.branches[0].layers:
        conv = layer.conv
        kt, kf = conv.kernel_size
        t = shapes.conv_out_length_int(t, kt, conv.stride[0], layer.time_same, layer.time_pad)
        macs += B * t * layer.out_freq * conv.out_channels * conv.in_channels * kt * kf
    return macs


def plain_sequential() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(C, 32, 3, 2, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(inplace=True),
        nn.Conv2d(32, 32, 3, 2, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(inplace=True),
    )


def timeit(fn: Callable[[], object], min_time: float, min_iters: int) -> float:
    """Median seconds per call after one warm-up call."""
    return interleaved({"fn": fn}, min_time, min_iters)["fn"]


def interleaved(fns: dict[str, Callable[[], object]], min_time: float, min_iters: int) -> dict[str, float]:
    """Median seconds per call of each function, timed in rounds that call each once.

    Interleaving puts every variant under the same background load (the machine may be
    shared), so their ratios stay meaningful even when absolute times drift."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    start = time.perf_counter()
    rounds = 0
    while rounds < min_iters or time.perf_counter() - start < min_time:
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
        rounds += 1
    return {name: statistics.median(ts) for name, ts in times.items()}


def float32_peak(threads: int) -> tuple[float, float]:
    """Float32 GFLOP/s of two compute-bound ops: ``(torch.mm 2048 x 2048 (MKL), 3x3 conv of
    128 channels on 64 x 64, channels_last (oneDNN))``.  The larger is the peak the table
    uses: on AMD CPUs MKL's sgemm runs at about half of what oneDNN reaches (measured on
    this VM, an AVX-512 AMD EPYC: 100 against 220-250 GFLOP/s at 1 thread)."""
    torch.set_num_threads(threads)
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    mm = 2 * 2048**3 / timeit(lambda: torch.mm(a, b), 0.5, 3) / 1e9
    x = torch.randn(1, 128, 64, 64).contiguous(memory_format=torch.channels_last)
    w = torch.randn(128, 128, 3, 3)
    with torch.inference_mode():
        conv = 2 * 128 * 64 * 64 * 128 * 9 / timeit(lambda: nn.functional.conv2d(x, w, padding=1), 0.5, 3) / 1e9
    return mm, conv


def runners(mode: str, seed: int = 0, forward_only: bool = False) -> dict[str, Callable[[], object]]:
    """One zero-argument callable per variant, for ``mode`` ``eval`` or ``train``
    (``forward_only``: the forward pass alone, without autograd, for :func:`counted_macs`)."""
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(B, T, F, C, generator=g)  # (B, T, F, C)
    lengths = torch.randint(T // 2, T + 1, (B,), generator=g)
    lengths[0] = T
    nchw = feats.permute(0, 3, 1, 2).contiguous()  # (B, T, F, C) -> (B, C, T, F), contiguous copy
    nchw_cl = nchw.contiguous(memory_format=torch.channels_last)
    plain = plain_sequential()
    plain_cl = plain_sequential().to(memory_format=torch.channels_last)
    masked = ConvEncoder()
    train = mode == "train"
    for m in (plain, plain_cl, masked):
        m.train(train)

    def step(fn: Callable[[], torch.Tensor]) -> Callable[[], object]:
        if forward_only:
            return torch.no_grad()(fn)
        if train:
            return lambda: fn().sum().backward()

        def infer() -> torch.Tensor:
            with torch.inference_mode():
                return fn()

        return infer

    full = torch.full_like(lengths, T)
    return {
        "plain": step(lambda: plain(nchw)),
        "plain-cl": step(lambda: plain_cl(nchw_cl)),
        "masked": step(lambda: masked(feats, lengths)[0]),
        "masked-full": step(lambda: masked(feats, full)[0]),
    }


def counted_macs(fn: Callable[[], object]) -> int:
    """Multiply-adds of every 2-D conv one call of ``fn`` runs (forward only), counted
    from the shapes each ``torch.nn.functional.conv2d`` call sees: outputs x (C_in / groups
    * kT * kF).  Counts what each variant computes, padding frames included and frames a
    variant skips excluded."""
    total = 0
    original = torch.nn.functional.conv2d

    def counting(x, weight, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        nonlocal total
        out = original(x, weight, *args, **kwargs)
        total += out.numel() * weight[0].numel()
        return out

    torch.nn.functional.conv2d = counting
    try:
        fn()
    finally:
        torch.nn.functional.conv2d = original
    return total


PAGE_SIZES = {"4 KB pages": "0", "huge pages": "1"}
"""Table title -> ``THP_MEM_ALLOC_ENABLE`` of its child process."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one short pass per row (smoke test)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--table", action="store_true", help="measure one table in this process, as it is set up")
    args = parser.parse_args()
    if args.table:
        table(args)
        return
    for title, thp in PAGE_SIZES.items():
        print(f"== {title} (THP_MEM_ALLOC_ENABLE={thp}) ==", flush=True)
        child = [sys.executable, __file__, "--table", "--threads", *map(str, args.threads)]
        subprocess.run(child + (["--quick"] if args.quick else []), env={**os.environ, "THP_MEM_ALLOC_ENABLE": thp},
                       check=True)
        print(flush=True)


def table(args: argparse.Namespace) -> None:
    """One table: every thread count, mode and variant, timed in this process."""
    min_time, min_iters = (0.0, 1) if args.quick else (6.0, 7)
    macs = conv_macs(ConvEncoder(), T)
    print(f"B={B} T={T} F={F} C={C}: {macs / 1e9:.3f} G multiply-adds per forward (conv layers, padded batch)")
    header = f"{'threads':>7} {'mode':>5} {'variant':>11} {'ms/iter':>8} {'frames/s':>10} {'/plain':>7} " \
             f"{'/plain-cl':>9} {'GFLOP/s':>8} {'%peak':>6}"
    rows = []
    for threads in args.threads:
        mm, conv = float32_peak(threads)
        peak = max(mm, conv)
        print(f"threads={threads}: float32 peak {peak:.1f} GFLOP/s (torch.mm 2048x2048: {mm:.1f}, "
              f"3x3 conv 128->128 on 64x64: {conv:.1f})")
        for mode in ("eval", "train"):
            torch.set_num_threads(threads)
            done = {name: counted_macs(fn) for name, fn in runners(mode, forward_only=True).items()}
            results = interleaved(runners(mode), min_time, min_iters)
            for name, sec in results.items():
                gflops = 2 * done[name] * (3 if mode == "train" else 1) / sec / 1e9
                rows.append(
                    f"{threads:>7} {mode:>5} {name:>11} {sec * 1e3:>8.1f} {B * T / sec:>10.0f} "
                    f"{results['plain'] / sec:>7.2f} {results['plain-cl'] / sec:>9.2f} {gflops:>8.1f} "
                    f"{100 * gflops / peak:>5.1f}%"
                )
    print(header)
    print("\n".join(rows))


if __name__ == "__main__":
    main()
