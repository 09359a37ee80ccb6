"""Benchmark: speechconv's feature stage against the usual ways of computing the same features.

Run: ``.venv/bin/python bench/features.py`` (about 6 minutes; ``--quick`` for a smoke
run, ``--repeats N`` for more or fewer rounds).  A benchmark, not a test: it asserts
nothing.  It prints its tables and writes them into ``docs/benchmarks.md`` (section
``features``, :mod:`bench.report`).

Audio: 10 minutes of real speech for each utterance length, made by concatenating the
bundled clips (data/fixtures, then the spoken digits of data/fsdd) read with
``speechconv.load_audio`` at 16 kHz and cut into 3 s, 10 s and 60 s utterances.

Rows (every one makes 80 log-mel bins + delta + delta-delta from the same audio):

* ``speechconv torchaudio``  :class:`speechconv.LogMelDeltas` ``backend="torchaudio"``,
                             padded batches of up to 40 s of audio (13 x 3 s, 4 x 10 s,
                             1 x 60 s), exact per-utterance lengths;
* ``speechconv kaldi``       the same with ``backend="kaldi"``;
* ``... one piece``          the torchaudio backend with every batch's statics computed
                             in one piece (``PIECE_FRAMES`` unbounded): what the pieces
                             of :func:`speechconv.features.pipeline.static_log_mel` buy;
* ``... float32 spectrum``   the torchaudio backend with the frames windowed and
                             transformed in float32 (``fbank.SPECTRUM_DTYPE``), which
                             speechconv does not ship: what the float64 spectrum costs
                             (its docstring says what it buys);
* ``torchaudio per-utt``     ``torchaudio.transforms.MelSpectrogram`` + log +
                             ``torchaudio.functional.compute_deltas`` twice, stacked,
                             one utterance at a time (exact lengths, one call each);
* ``torchaudio batched``     the same on speechconv's padded batches, the code a user
                             writes first: fast, but its frames do not follow the
                             lengths (``center=True`` reflect padding at the batch's end,
                             deltas across the padding), so only the full-length
                             utterances' features are right;
* ``compliance.kaldi+d``     ``torchaudio.compliance.kaldi.fbank`` per utterance +
                             ``compute_deltas`` twice (Kaldi's features in torchaudio);
* ``kaldi-native-fbank``     ``knf.OnlineFbank`` per utterance + numpy deltas.

Numbers are real-time factors (seconds of audio per wall-clock second); each cell times
every row once per round, in interleaved rounds, and reports the median, so a burst of
load from other processes hits all rows alike.  Each run is timed after a pause of
:data:`PAUSE_SECONDS`, so that no row pays for thread pools the row before left
spinning.  A column's thread count (``torch.set_num_threads``) applies to every row.

Memory: a subprocess extracts features for a manifest of 1 hour of audio (360 files of
10 s, batches of 16) and reports its peak RSS (``VmHWM`` of /proc/self/status, which
starts afresh in the subprocess).
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

import numpy as np
import soundfile as sf
import torch
import torchaudio
import torchaudio.compliance.kaldi as ta_kaldi
import torchaudio.functional as AF

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.report import load, machine, write_section  # noqa: E402
from speechconv import FeatureConfig  # noqa: E402
from speechconv.audio import load_audio  # noqa: E402
from speechconv.features import LogMelDeltas, fbank, pipeline  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RATE = 16000
BATCH_SECONDS = 40
"""Padded batches hold up to this much audio (about the 4,000-frame batches training uses)."""
RSS_BATCH = 16
UTTERANCE_SECONDS = (3, 10, 60)
PAUSE_SECONDS = 0.25
"""Idle time before each timed run: thread pools keep spinning a while after their last
job and would take a core from the next row at 2 threads."""
LOG_FLOOR = 1.1920928955078125e-07


def audio_pool(total_seconds: float) -> torch.Tensor:
    """``(S,)`` at 16 kHz: bundled clips concatenated until ``total_seconds`` is reached."""
    paths = sorted((ROOT / "data" / "fixtures").glob("*.*")) + sorted((ROOT / "data" / "fsdd").glob("*.*"))
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
    size = seconds * RATE
    return [pool[i * size : (i + 1) * size].clone() for i in range(int(total_seconds // seconds))]


def batches(utts: list[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Padded batches ``((b, S), (b,))`` of up to :data:`BATCH_SECONDS` of audio."""
    size = max(1, BATCH_SECONDS * RATE // max(u.numel() for u in utts))
    return [(torch.nn.utils.rnn.pad_sequence(utts[i : i + size], batch_first=True),
             torch.tensor([u.numel() for u in utts[i : i + size]])) for i in range(0, len(utts), size)]


# ------------------------------------------------------------------------- methods


def speechconv_runner(backend: str, one_piece: bool = False,
                      spectrum: torch.dtype = fbank.SPECTRUM_DTYPE) -> Callable[[list[torch.Tensor]], None]:
    module = LogMelDeltas(FeatureConfig(backend=backend)).eval()
    module.window = module.window.to(spectrum)

    def run(utts: list[torch.Tensor]) -> None:
        pieces, dtype = pipeline.PIECE_FRAMES, fbank.SPECTRUM_DTYPE
        pipeline.PIECE_FRAMES = 2**62 if one_piece else pieces
        fbank.SPECTRUM_DTYPE = spectrum
        try:
            with torch.inference_mode():
                for batch, lengths in batches(utts):
                    module(batch, lengths)
        finally:
            pipeline.PIECE_FRAMES, fbank.SPECTRUM_DTYPE = pieces, dtype

    return run


def mel_spectrogram() -> torchaudio.transforms.MelSpectrogram:
    return torchaudio.transforms.MelSpectrogram(sample_rate=RATE, n_fft=512, win_length=400, hop_length=160,
                                                f_min=20.0, n_mels=80, power=2.0)


def torchaudio_runner() -> Callable[[list[torch.Tensor]], None]:
    mel = mel_spectrogram()

    def run(utts: list[torch.Tensor]) -> None:
        with torch.inference_mode():
            for u in utts:
                logmel = mel(u).clamp_min(LOG_FLOOR).log()  # (S,) -> (F, T)
                d1 = AF.compute_deltas(logmel)
                d2 = AF.compute_deltas(d1)
                torch.stack([logmel, d1, d2], dim=-1).transpose(0, 1)  # (F, T, C) -> (T, F, C)

    return run


def torchaudio_batched_runner() -> Callable[[list[torch.Tensor]], None]:
    mel = mel_spectrogram()

    def run(utts: list[torch.Tensor]) -> None:
        with torch.inference_mode():
            for batch, _ in batches(utts):
                logmel = mel(batch).clamp_min(LOG_FLOOR).log()  # (B, S) -> (B, F, T)
                d1 = AF.compute_deltas(logmel)
                d2 = AF.compute_deltas(d1)
                torch.stack([logmel, d1, d2], dim=-1).transpose(1, 2)  # (B, F, T, C) -> (B, T, F, C)

    return run


def compliance_run(utts: list[torch.Tensor]) -> None:
    with torch.inference_mode():
        for u in utts:
            fb = ta_kaldi.fbank(u[None] * 32768, num_mel_bins=80, dither=0.0, low_freq=20.0)  # (T, F)
            d1 = AF.compute_deltas(fb.T)  # (F, T)
            d2 = AF.compute_deltas(d1)
            torch.stack([fb.T, d1, d2], dim=-1).transpose(0, 1)  # (F, T, C) -> (T, F, C)


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
        feats = np.stack([fbank.get_frame(i) for i in range(fbank.num_frames_ready)])  # (T, F)
        d1 = numpy_deltas(feats)
        np.stack([feats, d1, numpy_deltas(d1)], axis=-1)  # (T, F, C)


METHODS = {
    "speechconv torchaudio": lambda: speechconv_runner("torchaudio"),
    "speechconv kaldi": lambda: speechconv_runner("kaldi"),
    "speechconv torchaudio, one piece": lambda: speechconv_runner("torchaudio", one_piece=True),
    "speechconv torchaudio, float32 spectrum": lambda: speechconv_runner("torchaudio", spectrum=torch.float32),
    "torchaudio per-utt": torchaudio_runner,
    "torchaudio batched": torchaudio_batched_runner,
    "compliance.kaldi+d": lambda: compliance_run,
    "kaldi-native-fbank": lambda: knf_run,
}
RATIOS = [  # (row, over row, floor)
    ("speechconv torchaudio", "torchaudio per-utt", 2.0),
    ("speechconv torchaudio", "torchaudio batched", None),
    ("speechconv kaldi", "compliance.kaldi+d", 1.5),
    ("speechconv kaldi", "kaldi-native-fbank", None),
    ("speechconv torchaudio", "speechconv torchaudio, one piece", 1.2),
    ("speechconv torchaudio", "speechconv torchaudio, float32 spectrum", None),
    ("speechconv torchaudio, float32 spectrum", "torchaudio per-utt", None),
]


# ------------------------------------------------------------------------- timing


def time_interleaved(methods: dict[str, Callable], utts: list[torch.Tensor], repeats: int) -> dict[str, float]:
    """Median wall seconds of each method over ``repeats`` rounds (one warm-up round first),
    each run timed after :data:`PAUSE_SECONDS` idle seconds."""
    for run in methods.values():
        run(utts[:2])
    times: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(repeats):
        for name, run in methods.items():
            time.sleep(PAUSE_SECONDS)
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
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, env=env)
    frames, base, peak = map(int, out.stdout.split())
    return (f"1 hour manifest (360 x 10 s FLAC, batches of {RSS_BATCH}, 2 threads): {frames} frames, peak RSS "
            f"{peak / 1024:.0f} MB ({base / 1024:.0f} MB after imports)")


def table(rtf: dict[tuple[int, int], dict[str, float]], columns: list[tuple[int, int]]) -> str:
    """The markdown tables: real-time factors, then the ratios with their floors."""
    head = "| row | " + " | ".join(f"{t}T {s} s" for t, s in columns) + " |"
    rule = "|---|" + "---:|" * len(columns)
    lines = ["Real-time factor (audio seconds per wall second), median of the interleaved rounds:", "",
             head, rule]
    lines += [f"| {name} | " + " | ".join(f"{rtf[c][name]:,.0f}" for c in columns) + " |" for name in METHODS]
    lines += ["", "speechconv against each row (its real-time factor over the row's):", "", head, rule]
    for ours, other, floor in RATIOS:
        label = f"{ours[11:]} / {other}" + (f" (floor {floor:g}x)" if floor else "")
        lines.append(f"| {label} | " + " | ".join(f"{rtf[c][ours] / rtf[c][other]:.2f}" for c in columns) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="60 s of audio per length, 1 round, no RSS run")
    parser.add_argument("--repeats", type=int, default=9, help="interleaved rounds per cell, median reported")
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/benchmarks.md alone")
    args = parser.parse_args()
    total, repeats = (60.0, 1) if args.quick else (600.0, args.repeats)

    print(machine())
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    pool = audio_pool(total + 60)
    print(f"audio: {pool.numel() / RATE:.0f} s of bundled speech loaded in {time.perf_counter() - t0:.1f} s; "
          f"{total / 60:g} min per utterance length, median of {repeats} rounds\n", flush=True)
    methods = {name: make() for name, make in METHODS.items()}
    columns = [(threads, seconds) for threads in (1, 2) for seconds in UTTERANCE_SECONDS]
    rtf: dict[tuple[int, int], dict[str, float]] = {}
    for threads, seconds in columns:
        torch.set_num_threads(threads)
        utts = utterances(pool, seconds, total)
        audio = sum(u.numel() for u in utts) / RATE
        rtf[threads, seconds] = {k: audio / v for k, v in time_interleaved(methods, utts, repeats).items()}
        print(f"{threads}T {seconds} s: " + ", ".join(f"{k} {v:,.0f}x" for k, v in rtf[threads, seconds].items()),
              flush=True)
    markdown = table(rtf, columns)
    if not args.quick:
        torch.set_num_threads(2)
        with tempfile.TemporaryDirectory() as folder:
            markdown += "\n\n" + peak_rss_for_one_hour(pool, Path(folder)) + "."
    command = "python bench/features.py" + (" --quick" if args.quick else f" --repeats {repeats}")
    section = (f"## Feature stage\n\n`{command}` on {machine()}; {total / 60:g} minutes of bundled speech per "
               f"utterance length; {load(load_before)} (other processes slow every row, and 2-thread rows most).\n\n{markdown}")
    print("\n" + section)
    if not (args.quick or args.no_write):
        print(f"\nwritten to {write_section('features', section)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
