"""Benchmark: the streaming front end (features + conv encoder) against offline.

Run: ``.venv/bin/python bench/streaming.py`` (about 3 minutes; ``--quick`` for a smoke
run, ``--repeats N`` for more or fewer rounds, ``--profile`` to print where one stream's
time goes at 100 ms chunks).  A benchmark, not a test: it asserts nothing.  It prints
its tables and writes them into ``docs/benchmarks.md`` (section ``streaming``).

Front end: :class:`speechconv.LogMelDeltas` at the defaults then the default
:class:`speechconv.ConvEncoder` (padding 1: fixed alignment), eval mode, chained by
:func:`speechconv.streaming.front_end_stream`.  Audio: 10 s utterances of bundled speech
(:func:`bench.features.audio_pool`).

* One stream, 1 thread, chunks of 10, 100 and 640 ms: real-time factor (seconds of audio
  per wall second), compute per chunk (mean and 99th percentile), algorithmic latency
  (the front end's look-ahead plus one chunk: how long after a sound its output frame
  can exist) and the bytes of state a stream holds (its largest over the utterance);
  beside it the offline front end on the same utterances one at a time.
* 32 streams at once (``batch=32``), 100 ms chunks, against the offline front end on the
  same 32 utterances as one padded batch: throughput in seconds of audio per wall second.

Each cell is the median over interleaved rounds (every row timed once per round), so a
burst of load from other processes hits all rows alike; the machine is shared, so the
load average is printed with the table.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.features import audio_pool  # noqa: E402
from bench.report import load, machine, write_section  # noqa: E402
from speechconv.encoder import ConvEncoder  # noqa: E402
from speechconv.features import LogMelDeltas  # noqa: E402
from speechconv.streaming import BatchedFrontEndStream, front_end_stream  # noqa: E402

RATE = 16000
UTTERANCE_SECONDS = 10
CHUNK_MS = (10, 100, 640)
BATCH = 32
TARGET_RTF = 100.0
TARGET_BATCHED = 0.5


def state_bytes(stream: BatchedFrontEndStream) -> int:
    """Bytes of every tensor a front-end stream holds from chunk to chunk, per stream."""
    tensors = list(stream.features.state) + list(stream.encoder.state) + [stream.encoder.emitted]
    return sum(t.numel() * t.element_size() for t in tensors) // stream.batch


def one_stream(features: LogMelDeltas, encoder: ConvEncoder, utts: list[torch.Tensor], chunk: int,
               record: dict[str, list[float]] | None = None) -> None:
    """Stream each utterance in ``chunk``-sample pieces; ``record`` gets per-chunk seconds
    and the largest state."""
    stream = front_end_stream(features, encoder)
    for wave in utts:
        for start in range(0, wave.numel(), chunk):
            t = time.perf_counter()
            stream.accept(wave[start : start + chunk])
            if record is not None:
                record["chunk"].append(time.perf_counter() - t)
                record["bytes"].append(state_bytes(stream.batched))
        stream.finish()


def offline_each(features: LogMelDeltas, encoder: ConvEncoder, utts: list[torch.Tensor]) -> None:
    for wave in utts:
        encoder(*features(wave[None]))


def batched_streams(features: LogMelDeltas, encoder: ConvEncoder, utts: list[torch.Tensor], chunk: int) -> None:
    stream = front_end_stream(features, encoder, batch=len(utts))
    waves = torch.stack(utts)  # (B, S): equal lengths
    for start in range(0, waves.shape[1], chunk):
        stream.accept(waves[:, start : start + chunk])
    stream.finish()


def offline_batch(features: LogMelDeltas, encoder: ConvEncoder, utts: list[torch.Tensor]) -> None:
    encoder(*features(torch.stack(utts)))  # (B, S)


def time_interleaved(methods: dict[str, Callable[[], None]], repeats: int) -> dict[str, tuple[float, float]]:
    """Median ``(wall, CPU)`` seconds of each method over ``repeats`` interleaved rounds
    (after one warm-up).  CPU seconds are this thread's (``time.thread_time``; one torch
    thread runs in it): what the work costs when no other process takes the core."""
    for run in methods.values():
        run()
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in methods}
    for _ in range(repeats):
        for name, run in methods.items():
            wall, cpu = time.perf_counter(), time.thread_time()
            run()
            times[name].append((time.perf_counter() - wall, time.thread_time() - cpu))
    return {name: (statistics.median(t[0] for t in ts), statistics.median(t[1] for t in ts))
            for name, ts in times.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 utterances per stream row, 1 round")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds per cell, median reported")
    parser.add_argument("--profile", action="store_true", help="print cProfile's top functions for one stream")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args()
    repeats = 1 if args.quick else args.repeats
    torch.set_num_threads(1)
    torch.set_grad_enabled(False)
    print(machine())
    load_before = os.getloadavg()[0]
    size = UTTERANCE_SECONDS * RATE
    pool = audio_pool(BATCH * UTTERANCE_SECONDS + 10)
    utts = [pool[i * size : (i + 1) * size].clone() for i in range(BATCH)]
    few = utts[: 2 if args.quick else 3]
    features, encoder = LogMelDeltas().eval(), ConvEncoder().eval()
    look_ahead_ms = front_end_stream(features, encoder).look_ahead_ms
    seconds = len(few) * UTTERANCE_SECONDS

    if args.profile:
        profile = cProfile.Profile()
        profile.runcall(one_stream, features, encoder, few, RATE // 10)
        pstats.Stats(profile).sort_stats("cumulative").print_stats(25)

    methods: dict[str, Callable[[], None]] = {
        f"{ms} ms": (lambda c=ms * RATE // 1000: one_stream(features, encoder, few, c)) for ms in CHUNK_MS}
    methods["offline"] = lambda: offline_each(features, encoder, few)
    single = time_interleaved(methods, repeats)
    rows = ["| chunk | real-time factor, wall / CPU | compute per chunk, mean CPU / p99 wall (ms) | "
            "algorithmic latency (ms) | state per stream (bytes) | CPU vs offline |", "|---|---|---|---|---|---|"]
    for ms in CHUNK_MS:
        record: dict[str, list[float]] = {"chunk": [], "bytes": []}
        one_stream(features, encoder, few, ms * RATE // 1000, record)
        per_chunk = sorted(record["chunk"])
        p99 = per_chunk[min(int(0.99 * len(per_chunk)), len(per_chunk) - 1)]
        wall, cpu = single[f"{ms} ms"]
        rows.append(f"| {ms} ms | {seconds / wall:,.0f}x / {seconds / cpu:,.0f}x | "
                    f"{1000 * cpu / len(per_chunk):.2f} / {1000 * p99:.2f} | {look_ahead_ms + ms:g} | "
                    f"{max(record['bytes']):,} | {single['offline'][1] / cpu:.3f} |")
        print(rows[-1], flush=True)
    wall, cpu = single["offline"]
    rows.append(f"| offline, whole utterance | {seconds / wall:,.0f}x / {seconds / cpu:,.0f}x | | | | 1 |")

    batched = time_interleaved({
        "streams": lambda: batched_streams(features, encoder, utts, RATE // 10),
        "offline": lambda: offline_batch(features, encoder, utts),
    }, repeats)
    audio = BATCH * UTTERANCE_SECONDS
    (streams_wall, streams_cpu), (offline_wall, offline_cpu) = batched["streams"], batched["offline"]
    ratio_wall, ratio_cpu = offline_wall / streams_wall, offline_cpu / streams_cpu
    one_wall, one_cpu = (seconds / t for t in single["100 ms"])
    table2 = ("| 32 x 10 s | throughput, wall / CPU (s of audio per s) |\n|---|---|\n"
              f"| 32 batched streams, 100 ms chunks | {audio / streams_wall:,.0f}x / {audio / streams_cpu:,.0f}x |\n"
              f"| offline, one padded batch | {audio / offline_wall:,.0f}x / {audio / offline_cpu:,.0f}x |\n"
              f"| streams / offline | {ratio_wall:.2f} / {ratio_cpu:.2f} |")
    verdict = (f"Targets: one stream at 100 ms chunks >= {TARGET_RTF:g}x real time on 1 thread: "
               f"{one_wall:,.0f}x wall, {one_cpu:,.0f}x CPU ({'met' if one_cpu >= TARGET_RTF else 'missed'}); "
               f"32 batched streams >= {TARGET_BATCHED:g} of offline batched throughput: {ratio_wall:.2f} wall, "
               f"{ratio_cpu:.2f} CPU ({'met' if ratio_cpu >= TARGET_BATCHED else 'missed'}).")
    command = "python bench/streaming.py" + (" --quick" if args.quick else f" --repeats {repeats}")
    section = (f"## Streaming front end\n\n`{command}` on {machine()}; 1 thread; default features + conv front "
               f"(look-ahead {look_ahead_ms:g} ms); {len(few)} x {UTTERANCE_SECONDS} s of bundled speech per "
               f"stream row, median of {repeats} interleaved rounds; {load(load_before)} (a shared machine: other processes "
               f"slow every row).\n\n" + "\n".join(rows) + "\n\n" + table2 + "\n\n" + verdict)
    print("\n" + section)
    if not (args.quick or args.no_write):
        print(f"\nwritten to {write_section('streaming', section)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
