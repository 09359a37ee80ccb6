"""Benchmark: speechconv's feature stage against the usual ways of computing the same features.

Run: ``.venv/bin/python bench/features.py`` (about 7 minutes, 2.6 of them pauses;
``--quick`` for a smoke run, ``--repeats N`` for more or fewer rounds: each round times
every method once on 10 minutes of audio, about 0.1-0.3 s per method at these speeds,
so single rounds swing by 10-30% and the default takes the median of 15).  A
benchmark, not a test: it asserts nothing.

Audio: 10 minutes of real speech for each utterance length, made by concatenating the
bundled clips (data/fixtures, then the spoken digits of data/fsdd, or
/work/shared/audio/fsdd while data/fsdd does not exist) read with
``speechconv.load_audio`` at 16 kHz and cut into 3 s, 10 s and 60 s utterances.

Rows (every one makes 80 log-mel bins + delta + delta-delta from the same audio):

* ``speechconv torchaudio``  :class:`speechconv.LogMelDeltas` ``backend="torchaudio"``,
                              padded batches of up to 40 s of audio (13 x 3 s, 4 x
                              10 s; a 60 s utterance alone, by the 1-D call, since
                              padding a batch of one would only copy it: 3% of the
                              time at 60 s, measured);
* ``speechconv kaldi``       the same with ``backend="kaldi"``;
* ``torchaudio per-utt``     ``torchaudio.transforms.MelSpectrogram`` + log +
                              ``torchaudio.functional.compute_deltas`` twice, stacked,
                              one utterance at a time;
* ``librosa per-utt``        ``librosa.feature.melspectrogram`` + log +
                              ``librosa.feature.delta`` twice;
* ``ta.compliance.kaldi``    ``torchaudio.compliance.kaldi.fbank`` per utterance (log
                              fbank only, no deltas: the stricter comparison), and
                              ``ta.compliance.kaldi+d`` with ``compute_deltas`` twice;
* ``kaldi-native-fbank``     ``knf.OnlineFbank`` per utterance + numpy deltas.

Numbers are real-time factors (seconds of audio per wall-clock second); each row is
timed in interleaved rounds (every method once per round, ``--repeats`` rounds) and the
median is reported, so a burst of load from other processes hits all rows alike.  Each
run is timed after a pause of :data:`PAUSE_SECONDS`, so that no row pays for the thread
pool the row before it left spinning (without it, a row run right after librosa ran up
to 2.7x slower at 2 threads).
Threads: a column's thread count applies to every row: torch's intra-op threads
(``torch.set_num_threads``) and the BLAS pool numpy brings (OpenBLAS, limited with
``threadpoolctl``), which librosa's mel product runs on.  Without the limit that product
used both cores in the 1-thread columns too (measured: librosa 3-5% faster there).
The FFTs of librosa (scipy.fft, one worker by default) and kaldi-native-fbank run on one
thread.  The ratio columns are speechconv's RTF over each row's (torchaudio backend
against the torch/librosa rows, kaldi backend against the Kaldi rows).

Memory: a subprocess extracts features for a manifest of 1 hour of audio (360 files of
10 s, batches of 16) and reports its peak RSS (``VmHWM`` of /proc/self/status: unlike
``getrusage``'s ``ru_maxrss``, which Linux carries across fork and exec, it starts
afresh in the subprocess, so the parent's 1 GB of benchmark audio does not count).  GPU: measured
when ``torch.cuda.is_available()``, otherwise the table says so.

glibc note: batched tensors over 32 MB are mapped and unmapped on every op; the
feature stage works in groups of <= 4096 frames to stay below that, and
``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=68719476736`` removes the effect entirely.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import librosa
import numpy as np
import soundfile as sf
import torch
import torchaudio
import torchaudio.compliance.kaldi as ta_kaldi
import torchaudio.functional as AF
from threadpoolctl import threadpool_limits

from speechconv import FeatureConfig
from speechconv.audio import load_audio
from speechconv.features import LogMelDeltas

ROOT = Path(__file__).resolve().parents[1]
RATE = 16000
BATCH_SECONDS = 40
"""speechconv's batches hold up to this much audio: 13 utterances of 3 s, 4 of 10 s, 1 of
60 s, about the 4,000-frame batches training uses.  Measured here: batches of 160 s ran
~25% slower (their 15 MB outputs are fresh pages for glibc on every call; with
``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=68719476736`` both sizes run alike)."""
RSS_BATCH = 16
UTTERANCE_SECONDS = (3, 10, 60)


def audio_pool(total_seconds: float) -> torch.Tensor:
    """``(S,)`` at 16 kHz: bundled clips concatenated until ``total_seconds`` is reached."""
    fsdd = ROOT / "data" / "fsdd"
    if not fsdd.is_dir():
        fsdd = Path("/work/shared/audio/fsdd")
    paths = sorted((ROOT / "data" / "fixtures").glob("*.*")) + sorted(fsdd.glob("*.*"))
    paths = [p for p in paths if p.suffix in {".wav", ".flac", ".ogg", ".aiff"}]
    pieces, have = [], 0
    while have < total_seconds * RATE:
        for path in paths:
            wave = load_audio(path, RATE)
            pieces.append(wave)
            have += wave.numel()
            if have >= total_seconds * RATE:
                break
    return torch.cat(pieces)


def utterances(pool: torch.Tensor, seconds: int, total_seconds: float) -> list[torch.Tensor]:
    n = int(total_seconds // seconds)
    size = seconds * RATE
    return [pool[i * size : (i + 1) * size].clone() for i in range(n)]


# ------------------------------------------------------------------------- methods


def speechconv_runner(backend: str, device: str = "cpu") -> Callable[[list[torch.Tensor]], None]:
    module = LogMelDeltas(FeatureConfig(backend=backend)).to(device).eval()

    def run(utts: list[torch.Tensor]) -> None:
        size = max(1, BATCH_SECONDS * RATE // max(u.numel() for u in utts))
        with torch.inference_mode():
            for i in range(0, len(utts), size):
                chunk = utts[i : i + size]
                if len(chunk) == 1:  # one utterance: the 1-D call, no padded copy to make
                    module(chunk[0].to(device))
                    continue
                batch = torch.nn.utils.rnn.pad_sequence(chunk, batch_first=True).to(device)
                lengths = torch.tensor([u.numel() for u in chunk], device=device)
                module(batch, lengths)
        if device == "cuda":
            torch.cuda.synchronize()

    return run


def torchaudio_runner() -> Callable[[list[torch.Tensor]], None]:
    mel = torchaudio.transforms.MelSpectrogram(
        sample_rate=RATE, n_fft=512, win_length=400, hop_length=160, f_min=20.0, n_mels=80, power=2.0
    )

    def run(utts: list[torch.Tensor]) -> None:
        with torch.inference_mode():
            for u in utts:
                logmel = mel(u).clamp_min(1.1920928955078125e-07).log()  # (F, T)
                d1 = AF.compute_deltas(logmel)
                d2 = AF.compute_deltas(d1)
                torch.stack([logmel, d1, d2], dim=-1).transpose(0, 1)  # (F, T, C) -> (T, F, C)

    return run


def librosa_run(utts: list[torch.Tensor]) -> None:
    for u in utts:
        mel = librosa.feature.melspectrogram(
            y=u.numpy(), sr=RATE, n_fft=512, hop_length=160, win_length=400, n_mels=80, fmin=20.0, htk=True, norm=None
        )
        logmel = np.log(np.maximum(mel, 1.1920928955078125e-07))
        d1 = librosa.feature.delta(logmel, width=5, mode="nearest")
        d2 = librosa.feature.delta(d1, width=5, mode="nearest")
        np.stack([logmel, d1, d2], axis=-1).transpose(1, 0, 2)  # (F, T, C) -> (T, F, C)


def compliance_runner(with_deltas: bool) -> Callable[[list[torch.Tensor]], None]:
    def run(utts: list[torch.Tensor]) -> None:
        with torch.inference_mode():
            for u in utts:
                fb = ta_kaldi.fbank(u[None] * 32768, num_mel_bins=80, dither=0.0, low_freq=20.0)  # (T, F)
                if with_deltas:
                    d1 = AF.compute_deltas(fb.T)
                    d2 = AF.compute_deltas(d1)
                    torch.stack([fb.T, d1, d2], dim=-1).transpose(0, 1)  # (F, T, C) -> (T, F, C)

    return run


def numpy_deltas(x: np.ndarray) -> np.ndarray:
    """``(T, F)`` -> ``(T, F)`` first-order deltas, N=2, edges replicated."""
    p = np.pad(x, ((2, 2), (0, 0)), mode="edge")
    return (2 * (p[4:] - p[:-4]) + (p[3:-1] - p[1:-3])) / 10


def knf_run(utts: list[torch.Tensor]) -> None:
    import kaldi_native_fbank as knf

    opts = knf.FbankOptions()
    opts.frame_opts.dither = 0.0
    opts.mel_opts.num_bins = 80
    opts.mel_opts.low_freq = 20.0
    for u in utts:
        fbank = knf.OnlineFbank(opts)
        fbank.accept_waveform(RATE, (u * 32768).numpy())
        fbank.input_finished()
        feats = np.stack([fbank.get_frame(i) for i in range(fbank.num_frames_ready)])
        d1 = numpy_deltas(feats)
        np.stack([feats, d1, numpy_deltas(d1)], axis=-1)


# ------------------------------------------------------------------------- timing


PAUSE_SECONDS = 0.25
"""Idle time before each timed run.  Thread pools keep spinning after their last job:
OpenBLAS's workers for about 2^28 cycles (~0.1 s), and while they spin they take a core
from whatever runs next.  Measured at 2 threads on 10 s utterances: speechconv ran at
4,536x real time right after librosa (whose mel product is an OpenBLAS sgemm), 7,426x
after a 0.05 s pause and 12,170x after 0.2 s, and 10,930x with no pause but
``OPENBLAS_THREAD_TIMEOUT=4`` (workers that sleep almost at once).  Without the pause
each row's figure depended on which row ran before it."""


def time_interleaved(methods: dict[str, Callable], utts: list[torch.Tensor], repeats: int,
                     pause: float = PAUSE_SECONDS) -> dict[str, float]:
    """Median wall seconds of each method over ``repeats`` rounds (one warm-up round first),
    each run timed after ``pause`` idle seconds (:data:`PAUSE_SECONDS`)."""
    for run in methods.values():
        run(utts[:2])
    times: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(repeats):
        for name, run in methods.items():
            time.sleep(pause)
            start = time.perf_counter()
            run(utts)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


def peak_rss_for_one_hour(pool: torch.Tensor, folder: Path) -> str:
    """Peak RSS of a subprocess extracting features of a 1-hour manifest (360 x 10 s files)."""
    size = 10 * RATE
    entries = []
    for i in range(360):
        start = (i * size) % max(pool.numel() - size, 1)
        path = folder / f"utt{i:03d}.flac"
        sf.write(path, pool[start : start + size].numpy(), RATE)
        entries.append({"audio_filepath": str(path), "text": "x", "duration": 10.0})
    manifest = folder / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(e) + "\n" for e in entries))
    script = textwrap.dedent(f"""
        import json, torch
        from speechconv import FeatureConfig
        from speechconv.audio import load_audio
        from speechconv.features import LogMelDeltas
        def status(key):
            return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(key))
        base = status("VmRSS:")
        module = LogMelDeltas(FeatureConfig()).eval()
        rows = [json.loads(line) for line in open({str(manifest)!r})]
        frames = 0
        with torch.inference_mode():
            for i in range(0, len(rows), {RSS_BATCH}):
                waves = [load_audio(r["audio_filepath"], 16000) for r in rows[i : i + {RSS_BATCH}]]
                batch = torch.nn.utils.rnn.pad_sequence(waves, batch_first=True)
                feats, lengths = module(batch, torch.tensor([w.numel() for w in waves]))
                frames += int(lengths.sum())
        peak = status("VmHWM:")
        print(f"{{frames}} {{base}} {{peak}}")
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    frames, base, peak = map(int, out.stdout.split())
    return (f"1 hour manifest (360 x 10 s FLAC, batches of {RSS_BATCH}): {frames} frames, peak RSS "
            f"{peak / 1024:.0f} MB ({base / 1024:.0f} MB after imports) -> "
            f"{'under' if peak < 1024 * 1024 else 'OVER'} 1 GB")


def timing_args(doc: str, repeats: int, quick_help: str) -> tuple[argparse.Namespace, float, int]:
    """The benchmarks' command line: ``(args, audio seconds per utterance length, timing
    rounds)``, 600 s and ``--repeats`` rounds (default ``repeats``), or with ``--quick``
    60 s and one round."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--repeats", type=int, default=repeats,
                        help=f"interleaved timing rounds per cell, median reported (default {repeats})")
    args = parser.parse_args()
    return args, (60.0 if args.quick else 600.0), (1 if args.quick else args.repeats)


def main() -> int:
    args, total, repeats = timing_args(__doc__, 15, "60 s of audio per length, 1 round, no RSS run")

    print(f"torch {torch.__version__}, torchaudio {torchaudio.__version__}, librosa {librosa.__version__}; "
          f"{os.cpu_count()} CPUs; MALLOC_MMAP_MAX_={os.environ.get('MALLOC_MMAP_MAX_', 'unset')}")
    t0 = time.perf_counter()
    pool = audio_pool(total + 60)
    print(f"audio: {pool.numel() / RATE:.0f} s of bundled speech loaded in {time.perf_counter() - t0:.1f} s; "
          f"{total / 60:g} min per utterance length; real-time factor = audio s / wall s (median of {repeats})\n")

    methods = {
        "speechconv torchaudio": speechconv_runner("torchaudio"),
        "speechconv kaldi": speechconv_runner("kaldi"),
        "torchaudio per-utt": torchaudio_runner(),
        "librosa per-utt": librosa_run,
        "ta.compliance.kaldi": compliance_runner(False),
        "ta.compliance.kaldi+d": compliance_runner(True),
        "kaldi-native-fbank": knf_run,
    }
    ours_for = {"torchaudio per-utt": "speechconv torchaudio", "librosa per-utt": "speechconv torchaudio",
                "ta.compliance.kaldi": "speechconv kaldi", "ta.compliance.kaldi+d": "speechconv kaldi",
                "kaldi-native-fbank": "speechconv kaldi"}
    columns = [(threads, seconds) for threads in (1, 2) for seconds in UTTERANCE_SECONDS]
    rtf: dict[tuple[int, int], dict[str, float]] = {}
    for threads, seconds in columns:
        torch.set_num_threads(threads)
        utts = utterances(pool, seconds, total)
        audio = sum(u.numel() for u in utts) / RATE
        with threadpool_limits(threads):  # numpy's BLAS (librosa's mel product) gets the same threads as torch
            times = time_interleaved(methods, utts, repeats)
        rtf[threads, seconds] = {k: audio / v for k, v in times.items()}

    header = f"{'method':34s}" + "".join(f"  {f'{t}T {s}s':>8s}" for t, s in columns)
    print("real-time factor (x real time)")
    print(header)
    for name in methods:
        print(f"{name:34s}" + "".join(f"  {rtf[c][name]:8.0f}" for c in columns))
    print("\nspeechconv's speed-up (its RTF / the row's RTF)")
    print(header)
    for name, ours in ours_for.items():
        print(f"{ours[11:] + ' / ' + name:34s}" + "".join(f"  {rtf[c][ours] / rtf[c][name]:8.2f}" for c in columns))

    print()
    if torch.cuda.is_available():
        utts = utterances(pool, 10, total)
        audio = sum(u.numel() for u in utts) / RATE
        gpu = {b: speechconv_runner(b, "cuda") for b in ("torchaudio", "kaldi")}
        times = time_interleaved(gpu, utts, repeats)
        print("GPU (" + torch.cuda.get_device_name() + ", 10 s utterances, batches of up to 40 s, host->device copy "
              "included): " + ", ".join(f"{b} {audio / t:.0f}x" for b, t in times.items()))
    else:
        print("GPU figures not available: torch.cuda.is_available() is False on this machine")
    if not args.quick:
        torch.set_num_threads(2)
        with tempfile.TemporaryDirectory() as folder:
            print(peak_rss_for_one_hour(pool, Path(folder)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
