"""Audio reading for the data pipeline: :func:`speechconv.load_audio` once it exists.

Until ``speechconv/audio.py`` lands this falls back to soundfile plus torchaudio's
resampler, with the same contract: ``(S,)`` float32 mono at ``sample_rate``.
"""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF


def load_audio(path: str | os.PathLike, sample_rate: int = 16000) -> torch.Tensor:
    """Read ``path`` as ``(S,)`` float32 mono at ``sample_rate`` Hz."""
    if importlib.util.find_spec("speechconv.audio") is not None:
        from speechconv.audio import load_audio as _load

        return _load(path, sample_rate=sample_rate)
    data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    wave = torch.from_numpy(np.ascontiguousarray(data.mean(axis=1)))
    if rate != sample_rate:
        wave = AF.resample(wave, rate, sample_rate)
    return wave
