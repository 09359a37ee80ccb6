"""Synthesise the ten digit words in 45 eSpeak NG voices into data/espeak as 8 kHz FLAC.

Usage::

    pip install espeakng-loader==0.2.4      # bundles libespeak-ng 1.52 and its voice data
    python data/prepare_espeak.py [--out data/espeak]

Voice ``k`` (k = 0..44) is an English accent of eSpeak NG (American, British, Scottish,
received pronunciation, Caribbean, New York, Lancastrian, in turn) with one of its voice
variants, a speaking rate (120-199 words a minute), a pitch and a pitch range, drawn
from a generator seeded with 0.  Each word is cut to its audible span (samples above
300 of 32768) with 10 ms either side, resampled from eSpeak's 22.05 kHz to the 8 kHz
of the FSDD clips (so both hold the same band) and stored as
``{digit}_espeak_{5 + k}.flac``: takes 5-49, FSDD's training split, so the voices are
training material only and never part of a validation set.

The clips are the output of eSpeak NG 1.52 (GPL-3.0-or-later), run through the
espeakng-loader package (see data/README.md).
"""

from __future__ import annotations

import argparse
import ctypes
import os
import sys
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
ACCENTS = ("en-us", "en", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-us-nyc", "en-gb-x-gbclan")
VOICES = 45
FIRST_TAKE = 5
SAMPLE_RATE = 8000
AUDIBLE = 300
"""int16 amplitude above which a sample counts as part of the word."""
_SYNCHRONOUS, _RATE, _PITCH, _RANGE = 2, 1, 3, 4  # espeak_AUDIO_OUTPUT, espeak_PARAMETER values


class Espeak:
    """eSpeak NG through ctypes: ``synth(text, voice, rate, pitch, pitch_range) -> int16 samples``."""

    def __init__(self) -> None:
        import espeakng_loader

        self.lib = ctypes.CDLL(espeakng_loader.get_library_path())
        self.data = espeakng_loader.get_data_path()
        self.rate = self.lib.espeak_Initialize(_SYNCHRONOUS, 0, ctypes.c_char_p(self.data.encode()), 0)
        if self.rate <= 0:
            raise SystemExit(f"eSpeak NG did not start (espeak_Initialize returned {self.rate})")
        self.chunks: list[np.ndarray] = []
        callback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)

        def collect(wav, n, events):  # eSpeak hands the audio over in pieces
            if n > 0:
                self.chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
            return 0

        self._callback = callback(collect)  # kept: eSpeak calls it later
        self.lib.espeak_SetSynthCallback(self._callback)

    def variants(self) -> list[str]:
        return sorted(os.listdir(Path(self.data) / "voices" / "!v"))

    def synth(self, text: str, voice: str, rate: int, pitch: int, pitch_range: int) -> np.ndarray:
        self.chunks.clear()
        if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise SystemExit(f"eSpeak NG has no voice {voice!r}")
        for key, value in ((_RATE, rate), (_PITCH, pitch), (_RANGE, pitch_range)):
            self.lib.espeak_SetParameter(key, value, 0)
        raw = text.encode() + b"\0"
        self.lib.espeak_Synth(ctypes.c_char_p(raw), len(raw), 0, 0, 0, 0, None, None)
        self.lib.espeak_Synchronize()
        return np.concatenate(self.chunks) if self.chunks else np.zeros(0, np.int16)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "espeak")
    args = parser.parse_args(argv)
    espeak = Espeak()
    variants = espeak.variants()
    rng = np.random.default_rng(0)
    margin = round(0.010 * espeak.rate)
    args.out.mkdir(parents=True, exist_ok=True)
    for k in range(VOICES):
        voice = f"{ACCENTS[k % len(ACCENTS)]}+{variants[rng.integers(len(variants))]}"
        rate, pitch, pitch_range = (int(rng.integers(lo, hi)) for lo, hi in ((120, 200), (20, 80), (20, 80)))
        for digit, word in enumerate(WORDS):
            samples = espeak.synth(word, voice, rate, pitch, pitch_range)
            audible = np.flatnonzero(np.abs(samples) > AUDIBLE)
            if not len(audible):
                raise SystemExit(f"eSpeak NG gave silence for {word!r} in voice {voice}")
            cut = samples[max(0, audible[0] - margin) : audible[-1] + margin].astype(np.float32) / 32768
            low = AF.resample(torch.from_numpy(cut), espeak.rate, SAMPLE_RATE).numpy()
            pcm = np.clip(np.round(low * 32768), -32768, 32767).astype(np.int16)
            sf.write(str(args.out / f"{digit}_espeak_{FIRST_TAKE + k}.flac"), pcm, SAMPLE_RATE, subtype="PCM_16",
                     compression_level=1.0)
        print(f"voice {k}: {voice}, {rate} wpm, pitch {pitch}, range {pitch_range}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
