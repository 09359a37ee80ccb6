"""Transcribe audio files with an exported speechconv recogniser, using only onnxruntime,
soundfile and numpy (no torch, no speechconv).

    python examples/transcribe_onnx.py model.onnx a.wav b.flac ...

``model.onnx`` is what ``python train.py mode=export checkpoint=... export.format=onnx``
(or ``speechconv.export.export_recogniser``) writes: one graph from raw audio to CTC
log-probabilities, the feature stage included, with the output symbols, the blank id and
the sample rate in its metadata.  Each file is read as float32 in [-1, 1], averaged to
mono, and must be at that sample rate (resample it first otherwise); the files go
through the graph as one padded batch with their lengths, and each utterance's best
path is collapsed (repeats merged, blanks dropped).  Symbols written in angle brackets
(``<pad>``, ...) are not text and are left out.  Prints ``path<TAB>transcript`` per file.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import onnxruntime as ort
import soundfile as sf


def load_model(path: str) -> tuple[ort.InferenceSession, list[str], int, int]:
    """The session and its metadata: ``(session, vocabulary, blank id, sample rate)``."""
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    return session, json.loads(meta["vocabulary"]), int(meta["blank"]), int(meta["sample_rate"])


def read_mono(path: str, sample_rate: int) -> np.ndarray:
    """``(S,)`` float32 in [-1, 1]; raises ``ValueError`` naming the file if its rate differs."""
    audio, rate = sf.read(path, dtype="float32", always_2d=True)  # (S, channels)
    if rate != sample_rate:
        raise ValueError(f"{path} is sampled at {rate} Hz, the model takes {sample_rate} Hz; resample it first")
    return audio.mean(axis=1)


def transcribe(session: ort.InferenceSession, vocabulary: list[str], blank: int,
               waves: list[np.ndarray]) -> list[str]:
    """Greedy CTC transcripts of ``waves`` (each ``(S,)`` float32), run as one padded batch."""
    lengths = np.array([w.shape[0] for w in waves], dtype=np.int64)
    batch = np.zeros((len(waves), int(lengths.max())), dtype=np.float32)  # (B, S)
    for b, wave in enumerate(waves):
        batch[b, : wave.shape[0]] = wave
    log_probs, out_lengths = session.run(None, {"waveforms": batch, "lengths": lengths})  # (B, T', V), (B,)
    texts = []
    for path, n in zip(log_probs.argmax(axis=-1), out_lengths, strict=True):
        ids, previous = [], None
        for i in path[:n].tolist():
            if i != previous and i != blank:
                ids.append(i)
            previous = i
        symbols = [vocabulary[i] for i in ids]
        texts.append(" ".join("".join(s for s in symbols if not (s.startswith("<") and s.endswith(">"))).split()))
    return texts


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    session, vocabulary, blank, sample_rate = load_model(argv[0])
    waves = [read_mono(path, sample_rate) for path in argv[1:]]
    for path, text in zip(argv[1:], transcribe(session, vocabulary, blank, waves), strict=True):
        print(f"{path}\t{text}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
