"""Batch feature extraction: audio files -> ``DIR/<stem>.pt`` (+ ``DIR/<stem>.png``), and
global CMVN statistics.

Run as ``python -m speechconv.features INPUT... --out DIR [--global-stats FILE]``.  An
input is an audio file, a JSON-lines manifest (``.json``/``.jsonl``, read by
:func:`speechconv.manifest.read_manifest`) or a file list (``.txt``, ``.lst``,
``.list``, ``.scp``: one audio path a line, relative to the list's folder).  This
command line is an application on top of the feature stage: it is the one place of
``speechconv.features`` that reads manifests.  Each ``.pt`` file holds a dict that
``torch.load(..., weights_only=True)`` reads:

    features     (T, F, C) float32 tensor
    num_frames   int, T
    sample_rate  int, Hz of the waveform the features came from
    config       dict, the FeatureConfig (dataclasses.asdict)
    source       str, the absolute path of the audio file

``--global-stats FILE`` writes the statistics of every input's features
(:func:`speechconv.compute_global_stats`) for ``normalization="global"``.

A bad file does not stop the run: the good files are written, the bad ones (and bad
manifest rows) are listed with their errors on stderr at the end.  Exit code 0 if every
file succeeded, 1 if any failed (a clash of output names counts as a failure of each
file involved), 2 for usage errors (bad options, neither --out nor --global-stats, an
--out that is a file).  Every output is written atomically, so an interrupted run never
leaves a torn file.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm import tqdm

from speechconv import shapes
from speechconv.atomic import atomic_path
from speechconv.audio import load_audio
from speechconv.feature_config import BACKENDS, FeatureConfig
from speechconv.features.module import LogMelDeltas
from speechconv.features.stats import compute_global_stats
from speechconv.manifest import read_manifest
from speechconv.plot import plot_features

MANIFEST_SUFFIXES = (".json", ".jsonl")
FILE_LIST_SUFFIXES = (".txt", ".lst", ".list", ".scp")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m speechconv.features",
        description="Compute log-mel + delta + delta-delta features (T, F, C) of audio files and save one "
        "<stem>.pt (and a <stem>.png picture) per file, and/or their global CMVN statistics.",
    )
    parser.add_argument("audio", nargs="+", type=Path, metavar="INPUT",
                        help="audio files (WAV, FLAC, Ogg Vorbis, AIFF, ...; any rate, resampled to 16 kHz), "
                        "JSON-lines manifests (.json, .jsonl) or file lists (.txt, .lst, .list, .scp)")
    parser.add_argument("--out", type=Path, metavar="DIR", help="output folder of the features (created if needed)")
    parser.add_argument("--global-stats", type=Path, metavar="FILE",
                        help="write the per-bin mean and std of all inputs' features to FILE, for "
                        "normalization='global' (global_stats_path)")
    parser.add_argument("--backend", choices=BACKENDS, default=FeatureConfig.backend,
                        help="feature implementation (default: %(default)s)")
    parser.add_argument("--framing", choices=shapes.FRAMINGS, default=FeatureConfig.framing,
                        help="kaldi: snip edges, T = 1 + (S - win) // hop; center: T = 1 + S // hop "
                        "(default: %(default)s)")
    parser.add_argument("--n-mels", type=int, default=FeatureConfig.n_mels, metavar="F",
                        help="mel bins F (default: %(default)s)")
    parser.add_argument("--no-plot", action="store_true", help="write only the .pt files, no .png pictures")
    return parser


def audio_paths(inputs: Sequence[Path]) -> tuple[list[Path], dict[Path, str]]:
    """Audio paths of the inputs (manifests and file lists expanded), and an error for each
    manifest or list that cannot be read, or bad manifest row (keyed by the input)."""
    paths: list[Path] = []
    errors: dict[Path, str] = {}
    for source in inputs:
        if source.suffix in MANIFEST_SUFFIXES:
            try:
                entries, problems = read_manifest(source, check_audio=False)
            except ValueError as exc:
                errors[source] = str(exc)
                continue
            if problems:
                errors[source] = f"{len(problems)} bad row(s) skipped: " + "; ".join(problems[:3])
            paths += [entry.audio_filepath for entry in entries]
        elif source.suffix in FILE_LIST_SUFFIXES:
            try:
                lines = source.read_text(encoding="utf-8").splitlines()
            except (OSError, UnicodeDecodeError) as exc:
                errors[source] = f"cannot read file list {source}: {exc}; pass a UTF-8 text file, one path a line"
                continue
            folder = source.resolve().parent
            paths += [Path(s) if os.path.isabs(s) else folder / s for s in (x.strip() for x in lines) if s]
        else:
            paths.append(source)
    return paths, errors


def output_stems(paths: Sequence[Path]) -> tuple[dict[Path, str], dict[Path, str]]:
    """Output stem of each distinct input file, and an error for each clashing one.

    Two different files with the same stem (``a/x.wav``, ``b/x.flac``) would write the
    same ``x.pt``; rather than let the last one win silently, every file of a clashing
    stem is refused.  A file listed twice is processed once.

    Returns:
        ``(stems, clashes)``: input path -> stem for the files to process, and input
        path -> error message for the refused ones (both in first-seen order).
    """
    by_stem: dict[str, list[Path]] = defaultdict(list)
    seen: set[Path] = set()
    for path in paths:
        key = path.resolve()
        if key in seen:
            continue
        seen.add(key)
        by_stem[path.stem].append(path)
    stems: dict[Path, str] = {}
    clashes: dict[Path, str] = {}
    for stem, group in by_stem.items():
        if len(group) == 1:
            stems[group[0]] = stem
            continue
        names = ", ".join(str(p) for p in group)
        for path in group:
            clashes[path] = (f"output name clash: {names} would all be written as {stem}.pt; "
                             "rename the files or extract them into different --out folders")
    return stems, clashes


def extract_file(path: Path, stem: str, out_dir: Path, extractor: torch.nn.Module, config: FeatureConfig,
                 plot: bool) -> int:
    """Features of one file -> ``out_dir/<stem>.pt`` (+ ``.png``); returns ``T``."""
    waveform = load_audio(path, sample_rate=config.sample_rate)  # (S,)
    with torch.inference_mode():
        features, length = extractor(waveform)  # (S,) -> (T, F, C), ()
    num_frames = int(length)
    assert features.dim() == 3 and features.shape[0] == num_frames, (
        f"LogMelDeltas returned {tuple(features.shape)} with length {num_frames} for a 1-D waveform"
    )
    record = {
        "features": features.detach().to("cpu", torch.float32).contiguous(),
        "num_frames": num_frames,
        "sample_rate": config.sample_rate,
        "config": dataclasses.asdict(config),
        "source": str(path.resolve()),
    }
    with atomic_path(out_dir / f"{stem}.pt") as tmp:
        torch.save(record, tmp)
    if plot:
        plot_features(record["features"], out_dir / f"{stem}.png", hop_ms=config.hop_ms,
                      channel_names=config.channels, title=f"{path.name}  ({num_frames} frames)")
    return num_frames


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI on ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2): argparse has printed why
        return int(exc.code or 0)
    try:
        config = FeatureConfig(backend=args.backend, framing=args.framing, n_mels=args.n_mels)
    except ValueError as exc:
        parser.print_usage(sys.stderr)
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    if args.out is None and args.global_stats is None:
        parser.print_usage(sys.stderr)
        print(f"{parser.prog}: error: nothing to write: give --out DIR (features) and/or --global-stats FILE",
              file=sys.stderr)
        return 2
    if args.out is not None and args.out.exists() and not args.out.is_dir():
        parser.print_usage(sys.stderr)
        print(f"{parser.prog}: error: --out {args.out} is a file, expected a folder; choose another path",
              file=sys.stderr)
        return 2
    paths, failures = audio_paths(args.audio)
    if args.out is not None:
        extractor = LogMelDeltas(config).eval()
        stems, clashes = output_stems(paths)
        failures.update(clashes)
        written = 0
        for path, stem in tqdm(stems.items(), desc="features", unit="file", disable=None):
            try:
                extract_file(path, stem, args.out, extractor, config, plot=not args.no_plot)
                written += 1
            except Exception as exc:  # one bad file must not stop the batch; it is listed below
                failures[path] = str(exc) if isinstance(exc, (ValueError, OSError)) else f"{type(exc).__name__}: {exc}"
        print(f"wrote features of {written} of {len(stems) + len(clashes)} file(s) to {args.out}")
    if args.global_stats is not None:
        try:
            compute_global_stats(paths, config, args.global_stats)
            print(f"wrote global statistics of {len(paths)} file(s) to {args.global_stats}")
        except ValueError as exc:  # no audio, none long enough, or a bad file (named by load_audio)
            failures[args.global_stats] = str(exc)
    if failures:
        print(f"{len(failures)} file(s) failed:", file=sys.stderr)
        for path, message in failures.items():
            print("  " + (message if message.startswith(str(path)) else f"{path}: {message}"), file=sys.stderr)
        return 1
    return 0
