"""Global CMVN statistics of a corpus, for ``FeatureConfig(normalization="global")``."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable
from pathlib import Path

import torch

from speechconv.atomic import atomic_path
from speechconv.audio import load_audio
from speechconv.feature_config import FeatureConfig
from speechconv.features.module import LogMelDeltas


def compute_global_stats(
    audio: Iterable[torch.Tensor | str | os.PathLike],
    config: FeatureConfig,
    out_path: str | os.PathLike,
) -> Path:
    """Per-bin, per-channel mean and std over all frames of some audio.

    Each utterance is featurised alone with ``config`` but ``normalization="none"``;
    the statistics are merged utterance by utterance in float64 (Chan et al.'s
    pairwise update), so memory stays that of one utterance.

    Args:
        audio: waveforms ``(S,)`` float in [-1, 1] at ``config.sample_rate``, or paths
            of audio files (read with :func:`speechconv.load_audio`), mixed as you like.
            (For a manifest: ``python -m speechconv.features MANIFEST --global-stats PATH``.)
        config: the feature settings the statistics are for.
        out_path: where to write the torch file (atomically).

    Returns:
        ``out_path`` as a ``Path``.  The file holds ``mean`` and ``std`` ``(F, C)``
        float32, ``count`` (frames), ``channels``, ``n_mels`` and ``backend``.

    Raises:
        ValueError: no audio, or none of it long enough for one frame.
    """
    module = LogMelDeltas(dataclasses.replace(config, normalization="none", global_stats_path=None)).eval()
    utterances = count = 0
    mean = m2 = None
    with torch.no_grad():
        for item in audio:
            utterances += 1
            wave = item if isinstance(item, torch.Tensor) else load_audio(item, sample_rate=config.sample_rate)
            features, n = module(wave)  # (S,) -> (T, F, C)
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
    if utterances == 0:
        raise ValueError("compute_global_stats got no audio; pass waveforms or audio file paths")
    if mean is None:
        raise ValueError(f"none of the {utterances} utterances is long enough for one feature frame "
                         f"({config.win_length} samples at {config.sample_rate} Hz); pass longer audio")
    stats = {
        "mean": mean.float(), "std": (m2 / count).sqrt().float(), "count": count,
        "channels": list(config.channels), "n_mels": config.n_mels, "backend": config.backend,
    }
    with atomic_path(out_path) as tmp:
        torch.save(stats, tmp)
    return Path(out_path)
