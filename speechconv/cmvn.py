"""Feature normalisation: per-utterance CMVN and global statistics saved to a file.

Both normalise every (mel bin, channel) pair on its own: ``(x - mean) / std`` with the
population standard deviation (divide by the frame count) floored at
:data:`STD_FLOOR`, so a constant bin (silence at the log floor, a one-frame
utterance) becomes 0 instead of dividing by zero.

``utterance``  mean and std over each utterance's *valid* frames only; the padding of
               a batch neither enters the statistics nor leaves zero, so an
               utterance's features are the same in a batch and alone.
``global``     mean and std over all frames of a corpus, computed once by
               :func:`compute_global_stats` and saved as a small torch file (a dict
               of tensors, ints and strings: loadable with ``weights_only=True``).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

from speechconv import shapes
from speechconv.atomic import atomic_path
from speechconv.feature_config import FeatureConfig

STD_FLOOR = 1e-5
"""Smallest standard deviation divided by (log-mel units)."""

MANIFEST_SUFFIXES = (".json", ".jsonl")
FILE_LIST_SUFFIXES = (".txt", ".lst", ".list", ".scp")


def _valid_mask(lengths: torch.Tensor, num_frames: int) -> torch.Tensor:
    """``(B,)`` -> ``(B, T, 1, 1)`` True on valid frames.  Padding frames are dropped with
    ``torch.where``, not multiplied by 0: their values are unspecified (possibly inf or
    NaN from whatever the batch was padded with) and ``NaN * 0`` is NaN."""
    return shapes.make_pad_mask(lengths, num_frames)[:, :, None, None]  # (B, T) -> (B, T, 1, 1)


def utterance_cmvn(features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Per-utterance mean and variance normalisation over valid frames.

    Args:
        features: ``(B, T, F, C)``.
        lengths: ``(B,)`` valid frames per utterance.

    Returns:
        ``(B, T, F, C)``: each valid ``(b, :, f, c)`` series has mean 0 and (population)
        std 1 (or is 0 where its std is below :data:`STD_FLOOR`); padding is exactly 0.
    """
    mask = _valid_mask(lengths, features.shape[1])
    count = lengths.clamp_min(1).to(features.dtype)[:, None, None, None]  # (B,) -> (B, 1, 1, 1)
    zero = features.new_zeros(())
    mean = torch.where(mask, features, zero).sum(1, keepdim=True) / count
    centred = torch.where(mask, features - mean, zero)
    std = (centred.square().sum(1, keepdim=True) / count).sqrt_().clamp_min_(STD_FLOOR)
    return centred / std


def global_cmvn(features: torch.Tensor, lengths: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Normalise with corpus statistics, leaving the padding exactly 0.

    Args:
        features: ``(B, T, F, C)``.
        lengths: ``(B,)`` valid frames per utterance.
        mean, std: ``(F, C)`` from :func:`compute_global_stats`.

    Returns:
        ``(B, T, F, C)``.
    """
    mask = _valid_mask(lengths, features.shape[1])
    return torch.where(mask, (features - mean) / std.clamp_min(STD_FLOOR), features.new_zeros(()))


def load_global_stats(path: str | os.PathLike, n_mels: int, channels: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Read a file written by :func:`compute_global_stats` and check it fits the features.

    Returns:
        ``(mean, std)``, each ``(F, C)`` float32.

    Raises:
        ValueError: the file is missing or unreadable, or was computed for other
            features (mel bins or channels), naming the file and the fix.
    """
    path = Path(path)
    fix = "compute it with speechconv.compute_global_stats(files, config, path) for these features"
    try:
        stats = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, ValueError) as exc:
        raise ValueError(f"global CMVN stats file {path} cannot be read ({exc}); {fix}") from exc
    if not isinstance(stats, dict) or not {"mean", "std"} <= stats.keys():
        raise ValueError(f"global CMVN stats file {path} has no 'mean' and 'std' tensors; {fix}")
    mean, std = stats["mean"], stats["std"]
    expected = (n_mels, len(channels))
    if tuple(mean.shape) != expected or tuple(std.shape) != expected:
        raise ValueError(f"global CMVN stats file {path} holds statistics of shape {tuple(mean.shape)}, "
                         f"expected (F, C) = {expected} for channels {list(channels)}; {fix}")
    if list(stats.get("channels", channels)) != list(channels):
        raise ValueError(f"global CMVN stats file {path} was computed for channels {stats['channels']}, "
                         f"not {list(channels)}; {fix}")
    return mean.float(), std.float()


def _audio_paths(paths_or_manifest: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    """Audio paths from a manifest (``.json``/``.jsonl``), a file list (one path a line,
    relative to the list's folder), one audio file, or an iterable of audio paths."""
    if isinstance(paths_or_manifest, (str, os.PathLike)):
        source = Path(paths_or_manifest)
        if source.suffix in MANIFEST_SUFFIXES:
            from speechconv.data.manifest import read_manifest

            entries, _ = read_manifest(source, strict=True, check_audio=False)
            return [e.audio_filepath for e in entries]
        if source.suffix in FILE_LIST_SUFFIXES:
            try:
                lines = source.read_text(encoding="utf-8").splitlines()
            except OSError as exc:
                raise ValueError(f"cannot read file list {source}: {exc}; pass an existing text file") from exc
            folder = source.resolve().parent
            return [Path(s) if os.path.isabs(s) else folder / s for s in (x.strip() for x in lines) if s]
        return [source]
    return [Path(p) for p in paths_or_manifest]


def compute_global_stats(
    paths_or_manifest: str | os.PathLike | Iterable[str | os.PathLike],
    config: FeatureConfig,
    out_path: str | os.PathLike,
) -> Path:
    """Per-bin, per-channel mean and std over all frames of some audio files.

    Each file is read (resampled to ``config.sample_rate``) and featurised alone with
    ``config`` but ``normalization="none"``; the statistics are merged file by file in
    float64 (Chan et al.'s pairwise update), so memory stays that of one file.

    Args:
        paths_or_manifest: a JSON-lines manifest, a file list (``.txt``/``.lst``/``.scp``),
            one audio file, or an iterable of audio paths.
        config: the feature settings the statistics are for.
        out_path: where to write the torch file (atomically).

    Returns:
        ``out_path`` as a ``Path``.  The file holds ``mean`` and ``std`` ``(F, C)``
        float32, ``count`` (frames), ``channels``, ``n_mels`` and ``backend``.

    Raises:
        ValueError: no audio files, or none of them long enough for one frame.
    """
    from speechconv.audio import load_audio
    from speechconv.features import LogMelDeltas

    paths = _audio_paths(paths_or_manifest)
    if not paths:
        raise ValueError("compute_global_stats got no audio files; pass a manifest, a file list or paths")
    module = LogMelDeltas(dataclasses.replace(config, normalization="none", global_stats_path=None)).eval()
    count, mean, m2 = 0, None, None
    with torch.no_grad():
        for path in paths:
            features, n = module(load_audio(path, sample_rate=config.sample_rate))  # (S,) -> (T, F, C)
            if int(n) == 0:
                continue
            x = features[: int(n)].double()
            n_b, mean_b = x.shape[0], x.mean(0)
            m2_b = (x - mean_b).square().sum(0)
            if mean is None:
                count, mean, m2 = n_b, mean_b, m2_b
                continue
            total = count + n_b
            delta = mean_b - mean
            mean = mean + delta * (n_b / total)
            m2 = m2 + m2_b + delta.square() * (count * n_b / total)
            count = total
    if mean is None:
        raise ValueError(f"none of the {len(paths)} audio files is long enough for one feature frame "
                         f"({config.win_length} samples at {config.sample_rate} Hz); pass longer audio")
    stats = {
        "mean": mean.float(), "std": (m2 / count).sqrt().float(), "count": count,
        "channels": list(config.channels), "n_mels": config.n_mels, "backend": config.backend,
    }
    with atomic_path(out_path) as tmp:
        torch.save(stats, tmp)
    return Path(out_path)
