"""Benchmark: the feature stage with its fused CPU kernels against the eager torch ops.

Run: ``.venv/bin/python bench/kernels.py`` (about 3 minutes; ``--quick`` for a smoke
run, ``--repeats N`` rounds per cell, default 9).  A benchmark, not a test: it asserts
nothing.

:mod:`speechconv.kernels` replaces two groups of eager passes by one numba kernel each
(Kaldi's pre-FFT steps; power spectrum + mel product + floor).  This times both
backends with the kernels on and off (``speechconv.kernels.ENABLED``) in the setting of
``bench/features.py``: 10 minutes of the same audio in 3, 10 and 60 s utterances,
padded batches of up to 40 s, 1 and 2 threads, a pause before every timed run, the two
variants interleaved round by round, medians reported.  ``bench/features.py`` gives the
comparison with the other libraries; this isolates what the kernels contribute.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

import features as bench  # bench/features.py, beside this file
import torch

from speechconv import kernels


def with_kernels(run: Callable[[list[torch.Tensor]], None], enabled: bool) -> Callable[[list[torch.Tensor]], None]:
    """``run`` with :data:`speechconv.kernels.ENABLED` set to ``enabled`` for its call."""

    def switched(utts: list[torch.Tensor]) -> None:
        kernels.ENABLED = enabled
        run(utts)

    return switched


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="60 s of audio per length, 1 round")
    parser.add_argument("--repeats", type=int, default=9, help="interleaved rounds per cell (default 9)")
    args = parser.parse_args()
    total = 60 if args.quick else 600
    repeats = 1 if args.quick else args.repeats
    pool = bench.audio_pool(total + 60)
    print(f"{'backend':>10s} {'threads':>7s} {'utt':>5s} {'kernels':>9s} {'eager':>9s} {'kernels/eager':>14s}"
          f"   (real-time factors, medians of {repeats})")
    enabled = kernels.ENABLED
    try:
        for backend in ("kaldi", "torchaudio"):
            run = bench.speechconv_runner(backend)
            methods = {"kernels": with_kernels(run, True), "eager": with_kernels(run, False)}
            for threads in (1, 2):
                torch.set_num_threads(threads)
                for seconds in bench.UTTERANCE_SECONDS:
                    utts = bench.utterances(pool, seconds, total)
                    seconds_taken = bench.time_interleaved(methods, utts, repeats)  # paused, medians
                    rtf = {name: total / t for name, t in seconds_taken.items()}
                    print(f"{backend:>10s} {threads:7d} {seconds:4d}s {rtf['kernels']:8.0f}x {rtf['eager']:8.0f}x "
                          f"{rtf['kernels'] / rtf['eager']:14.2f}", flush=True)
    finally:
        kernels.ENABLED = enabled
    return 0


if __name__ == "__main__":
    sys.exit(main())
