"""Benchmark: the feature stage with its C++ and its numba kernels against the eager torch ops.

Run: ``.venv/bin/python bench/kernels.py`` (about 2 minutes; ``--quick`` for a smoke
run, ``--repeats N`` rounds per cell, default 9).  A benchmark, not a test: it asserts
nothing.

:mod:`speechconv.kernels` replaces two groups of eager passes by one kernel each
(Kaldi's pre-FFT steps; power spectrum + mel product + floor), a C++ op split over
torch's threads (:mod:`speechconv.native`), else a serial numba kernel.  This times both backends three
ways, in the setting of ``bench/features.py``: the C++ ops (the CPU default), the numba
kernels (``speechconv.native.ENABLED = False``) and the eager ops
(``speechconv.kernels.ENABLED = False``); 10 minutes of the same audio in 3, 10 and
60 s utterances, padded batches of up to 40 s, 1 and 2 threads, a pause before every
timed run, the variants interleaved round by round, medians reported.
``bench/features.py`` gives the comparison with the other libraries; this isolates
what the kernels contribute.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import features as bench  # bench/features.py, beside this file
import torch

from speechconv import kernels, native

VARIANTS = {"c++": (True, True), "numba": (True, False), "eager": (False, False)}
"""Name -> (:data:`speechconv.kernels.ENABLED`, :data:`speechconv.native.ENABLED`)."""


def with_kernels(run: Callable[[list[torch.Tensor]], None], variant: str) -> Callable[[list[torch.Tensor]], None]:
    """``run`` with the kernels of ``variant`` (:data:`VARIANTS`) for its call."""

    def switched(utts: list[torch.Tensor]) -> None:
        kernels.ENABLED, native.ENABLED = VARIANTS[variant]
        run(utts)

    return switched


def main() -> int:
    _, total, repeats = bench.timing_args(__doc__, 9, "60 s of audio per length, 1 round")
    pool = bench.audio_pool(total + 60)
    if native.ops() is None:
        print("the C++ kernels are not built here (see the warning): the c++ column times the numba kernels")
    print(f"{'backend':>10s} {'threads':>7s} {'utt':>5s} {'c++':>9s} {'numba':>9s} {'eager':>9s} {'c++/numba':>10s} "
          f"{'c++/eager':>10s} {'numba/eager':>12s}   (real-time factors, medians of {repeats})")
    enabled = kernels.ENABLED, native.ENABLED
    try:
        for backend in ("kaldi", "torchaudio"):
            run = bench.speechconv_runner(backend)
            methods = {name: with_kernels(run, name) for name in VARIANTS}
            for threads in (1, 2):
                torch.set_num_threads(threads)
                for seconds in bench.UTTERANCE_SECONDS:
                    utts = bench.utterances(pool, seconds, total)
                    seconds_taken = bench.time_interleaved(methods, utts, repeats)  # paused, medians
                    rtf = {name: total / t for name, t in seconds_taken.items()}
                    print(f"{backend:>10s} {threads:7d} {seconds:4d}s {rtf['c++']:8.0f}x {rtf['numba']:8.0f}x "
                          f"{rtf['eager']:8.0f}x {rtf['c++'] / rtf['numba']:10.2f} {rtf['c++'] / rtf['eager']:10.2f} "
                          f"{rtf['numba'] / rtf['eager']:12.2f}", flush=True)
    finally:
        kernels.ENABLED, native.ENABLED = enabled
    return 0


if __name__ == "__main__":
    sys.exit(main())
