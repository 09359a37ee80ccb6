"""Feature normalisation: per-utterance CMVN and global statistics saved to a file.

Both normalise every (mel bin, channel) pair on its own: ``(x - mean) / std`` with the
population standard deviation (divide by the frame count) floored at
:data:`STD_FLOOR`, so a constant bin (silence at the log floor, a one-frame
utterance) becomes 0 instead of dividing by zero.

``utterance``  mean and std over each utterance's *valid* frames only; the padding of
               a batch neither enters the statistics nor leaves zero, so an
               utterance's features are the same in a batch and alone.
``global``     mean and std over all frames of a corpus, computed once by
               :func:`speechconv.compute_global_stats` and saved as a small torch file (a dict
               of tensors, ints and strings: loadable with ``weights_only=True``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch

from speechconv import shapes

STD_FLOOR = 1e-5
"""Smallest standard deviation divided by (log-mel units)."""


def utterance_cmvn(features: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Per-utterance mean and variance normalisation over valid frames.

    Args:
        features: ``(B, T, ...)``, e.g. one channel ``(B, T, F)`` or ``(B, T, F, C)``.
        lengths: ``(B,)`` valid frames per utterance.

    Returns:
        ``features``' shape: each valid ``(b, :, ...)`` series has mean 0 and (population)
        std 1 (or is 0 where its std is below :data:`STD_FLOOR`); padding is exactly 0.
        Padding frames are dropped with ``torch.where``, not multiplied by 0: their values
        are unspecified (possibly inf or NaN from whatever the batch was padded with) and
        ``NaN * 0`` is NaN.
    """
    B, T = features.shape[:2]
    trailing = (1,) * (features.dim() - 2)
    mask = shapes.make_pad_mask(lengths, T).view(B, T, *trailing)  # (B, T) -> (B, T, 1, ...)
    count = lengths.clamp_min(1).to(features.dtype).view(B, 1, *trailing)  # (B,) -> (B, 1, 1, ...)
    zero = features.new_zeros(())
    mean = torch.where(mask, features, zero).sum(1, keepdim=True) / count
    centred = torch.where(mask, features - mean, zero)
    std = (centred.square().sum(1, keepdim=True) / count).sqrt().clamp_min(STD_FLOOR)
    return centred / std


def global_cmvn(features: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Normalise with corpus statistics, frame by frame (elementwise: a frame's values do
    not depend on the others, so a stream normalises exactly as the whole utterance).

    Args:
        features: ``(B, T, F, C)``, or one channel ``(B, T, F)``.
        mean, std: ``(F, C)`` from :func:`speechconv.compute_global_stats`, or one
            channel's ``(F,)``.

    Returns:
        ``features``' shape.
    """
    return (features - mean) / std.clamp_min(STD_FLOOR)


def load_global_stats(path: str | os.PathLike, n_mels: int, channels: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Read a file written by :func:`speechconv.compute_global_stats` and check it fits the features.

    Returns:
        ``(mean, std)``, each ``(F, C)`` float32.

    Raises:
        ValueError: the file is missing or unreadable, or was computed for other
            features (mel bins or channels), naming the file and the fix.
    """
    path = Path(path)
    fix = "compute it with speechconv.compute_global_stats(audio, config, path) for these features"
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

