"""Reading audio files: any format soundfile decodes -> ``(S,)`` float32 mono at one rate.

soundfile (libsndfile) decodes WAV, FLAC, Ogg Vorbis, AIFF and more, at any bit depth
(8/16/24/32-bit integer, 32/64-bit float).  ``torchaudio.load`` is not used: it needs
TorchCodec and FFmpeg, which this project does not depend on.

Every problem with a file is an :class:`AudioError` (a ``ValueError``) naming the file,
the cause and, where there is one, the fix.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

# Resampling: torchaudio's windowed-sinc interpolator with the settings its docs give
# for librosa's (resampy's) "kaiser_best": a Kaiser window (beta 14.77), 64 zero
# crossings each side, cut off at 0.9476 of the lower Nyquist frequency.  44.1 kHz ->
# 16 kHz passes 0..7.04 kHz (0.88 of Nyquist) within 5e-5 relative, is 0.26% down at
# 7.2 kHz and cuts at 7.58 kHz: the top mel bins lose what would otherwise alias.
# torchaudio's default (Hann window, 6 zero crossings) costs a third as much but
# attenuates 6 kHz by 1.5% and 7 kHz by 18%; 6.5 ms per 11 s of 44.1 kHz audio on one
# core is cheap next to decoding.  The output has ceil(S * new_rate / old_rate)
# samples and sample 0 stays at t = 0.
RESAMPLE_METHOD = "sinc_interp_kaiser"
RESAMPLE_LOWPASS_WIDTH = 64
RESAMPLE_ROLLOFF = 0.9475937167399596
RESAMPLE_BETA = 14.769656459379492


class AudioError(ValueError):
    """A file that cannot be used as audio: missing, unreadable, empty or non-finite."""


@dataclass(frozen=True)
class AudioInfo:
    """What a file's header says, without decoding it.

    Attributes:
        sample_rate: Hz as stored in the file.
        channels: interleaved channels (averaged to mono by :func:`load_audio`).
        frames: samples per channel as stored (before any resampling).
        duration: ``frames / sample_rate`` seconds.
        format, subtype: libsndfile's names, e.g. ``FLAC`` and ``PCM_24``.
    """

    sample_rate: int
    channels: int
    frames: int
    duration: float
    format: str
    subtype: str


def _check_readable(path: Path) -> None:
    """Raise :class:`AudioError` for a path that cannot be an audio file at all."""
    if not path.exists():
        raise AudioError(f"{path}: file not found; check the path (relative paths start at {Path.cwd()})")
    if path.is_dir():
        raise AudioError(f"{path}: is a directory, expected an audio file; list the files inside it instead")
    if path.stat().st_size == 0:
        raise AudioError(f"{path}: file is empty (0 bytes); re-export or re-download it")


def _decoder_error(path: Path, exc: Exception) -> AudioError:
    return AudioError(
        f"{path}: cannot decode as audio ({exc}); the file is corrupt, truncated or not in a format "
        "libsndfile reads (WAV, FLAC, Ogg Vorbis, AIFF, ...): re-export it, e.g. as 16-bit WAV"
    )


def audio_info(path: str | os.PathLike) -> AudioInfo:
    """Read ``path``'s header: rate, channels, frames and duration (for manifests).

    Raises:
        AudioError: the file is missing, empty or not readable as audio.
    """
    p = Path(path)
    _check_readable(p)
    try:
        info = sf.info(str(p))
    except (sf.SoundFileError, RuntimeError) as exc:
        raise _decoder_error(p, exc) from exc
    return AudioInfo(
        sample_rate=int(info.samplerate),
        channels=int(info.channels),
        frames=int(info.frames),
        duration=info.frames / info.samplerate,
        format=info.format,
        subtype=info.subtype,
    )


def load_audio(path: str | os.PathLike, sample_rate: int = 16000) -> torch.Tensor:
    """Read ``path`` as a mono float32 waveform at ``sample_rate`` Hz.

    Integer files are scaled to [-1, 1) by soundfile (``x / 2**(bits-1)``); float files
    are taken as they are.  Channels are averaged.  Other rates are resampled with
    :func:`torchaudio.functional.resample` (settings above), which may overshoot
    [-1, 1] by a little for full-scale audio; values are not clipped.

    Args:
        path: an audio file soundfile can read.
        sample_rate: the rate wanted, in Hz.

    Returns:
        ``(S,)`` float32 waveform; ``S = ceil(frames * sample_rate / file_rate)``.

    Raises:
        AudioError: the file is missing, empty, undecodable, holds no samples or holds
            NaN/Inf samples.
        ValueError: ``sample_rate`` is not a positive int.

    Warns:
        UserWarning: a float file's samples exceed 1.0 in magnitude (the features
            will be computed, but the file was probably saved without normalising).
    """
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, int) or sample_rate <= 0:
        raise ValueError(f"sample_rate={sample_rate!r} is invalid: expected a positive int of Hz, e.g. 16000")
    p = Path(path)
    _check_readable(p)
    try:
        data, file_rate = sf.read(str(p), dtype="float32", always_2d=True)  # (S, channels)
    except (sf.SoundFileError, RuntimeError) as exc:
        raise _decoder_error(p, exc) from exc
    if data.shape[0] == 0 or data.shape[1] == 0:
        raise AudioError(f"{p}: holds no audio samples (0 frames); the recording is empty, re-record or drop it")
    finite = np.isfinite(data)
    if not finite.all():
        bad = int(data.size - finite.sum())
        first = int(np.argwhere(~finite)[0, 0])
        raise AudioError(
            f"{p}: {bad} sample(s) are NaN or Inf (first at frame {first}, {first / file_rate:.3f} s); "
            "the file is corrupt or was written from a broken computation: regenerate it"
        )
    peak = float(np.abs(data).max())
    if peak > 1.0:
        warnings.warn(
            f"{p}: samples reach {peak:.3g}, beyond the [-1, 1] full scale of float audio; features are "
            "computed from the values as they are (normalise the file to remove this warning)",
            UserWarning,
            stacklevel=2,
        )
    mono = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]  # (S, channels) -> (S,)
    wave = torch.from_numpy(np.ascontiguousarray(mono))
    if file_rate != sample_rate:
        wave = AF.resample(
            wave,
            int(file_rate),
            sample_rate,
            lowpass_filter_width=RESAMPLE_LOWPASS_WIDTH,
            rolloff=RESAMPLE_ROLLOFF,
            resampling_method=RESAMPLE_METHOD,
            beta=RESAMPLE_BETA,
        )
    assert wave.dtype == torch.float32 and wave.dim() == 1, f"load_audio made {wave.dtype} {tuple(wave.shape)}"
    return wave
