"""Transcribe audio files with an exported speechconv recogniser, using only onnxruntime,
soundfile and numpy (no torch, no speechconv).

    python examples/transcribe_onnx.py model.onnx a.wav b.flac ...

``model.onnx`` is what ``python train.py mode=export checkpoint=... export.format=onnx``
(or ``speechconv.export.export_recogniser``) writes: one graph from raw audio to CTC
log-probabilities, the feature stage included, with the output symbols, the blank id and
the sample rate in its metadata.  Each file is read as float32 in [-1, 1], averaged to
mono, and must be at that sample rate (resample it first otherwise); the files go
through the graph as one padded batch with their lengths.  Each utterance is decoded as
``python train.py mode=transcribe`` decodes it: where the metadata carries a ``lexicon``
(a model trained with ``model.lexicon``), the best CTC path through that word loop
(Viterbi over the graph speechconv wrote, :func:`lexicon_words`); otherwise the best
path per frame, collapsed (repeats merged, blanks dropped; symbols written in angle
brackets, ``<pad>`` ..., are not text and are left out).  Prints ``path<TAB>transcript``
per file; a file that cannot be read, or is at another rate, is reported on stderr and
skipped (exit code 1).
"""

from __future__ import annotations

import json
import sys

import numpy as np
import onnxruntime as ort
import soundfile as sf


def load_model(path: str) -> tuple[ort.InferenceSession, dict]:
    """The session and its metadata: ``vocabulary`` (list), ``blank`` and ``sample_rate``
    (int), and ``lexicon`` (dict) where the model has one."""
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    props = session.get_modelmeta().custom_metadata_map
    if "vocabulary" not in props:
        raise ValueError(f"{path} has no 'vocabulary' in its metadata, so it is not a recogniser: export one with "
                         f"python train.py mode=export checkpoint=... export.format=onnx (a front-end export gives "
                         f"encoder frames, not log-probabilities)")
    meta = {"vocabulary": json.loads(props["vocabulary"]), "blank": int(props["blank"]),
            "sample_rate": int(props["sample_rate"])}
    if "lexicon" in props:
        meta["lexicon"] = json.loads(props["lexicon"])
    return session, meta


def read_mono(path: str, sample_rate: int) -> np.ndarray:
    """``(S,)`` float32 in [-1, 1]; raises ``ValueError`` if its rate differs from ``sample_rate``."""
    audio, rate = sf.read(path, dtype="float32", always_2d=True)  # (S, channels)
    if rate != sample_rate:
        raise ValueError(f"sampled at {rate} Hz, the model takes {sample_rate} Hz; resample it first")
    return audio.mean(axis=1)


def greedy_text(log_probs: np.ndarray, vocabulary: list[str], blank: int) -> str:
    """``(T', V)`` -> the best path per frame, collapsed, as text."""
    ids, previous = [], None
    for i in log_probs.argmax(axis=-1).tolist():
        if i != previous and i != blank:
            ids.append(i)
        previous = i
    symbols = [vocabulary[i] for i in ids]
    return " ".join("".join(s for s in symbols if not (s.startswith("<") and s.endswith(">"))).split())


def lexicon_words(log_probs: np.ndarray, lexicon: dict) -> list[str]:
    """``(T', V)`` -> the words of the best CTC path through the lexicon's graph (Viterbi,
    in float32 as speechconv's ``LexiconDecoder`` computes it)."""
    if log_probs.shape[0] == 0:
        return []
    labels = np.array(lexicon["labels"])
    states = labels.shape[0]
    transitions = np.full((states, states), -np.inf, dtype=np.float32)  # [to, from]: log 1 or log 0
    transitions[tuple(np.array(lexicon["edges"]).T)] = 0.0
    emit = log_probs[:, labels].astype(np.float32)  # (T', S)
    score = np.full(states, -np.inf, dtype=np.float32)
    score[lexicon["start"]] = emit[0, lexicon["start"]]
    back = np.zeros((emit.shape[0], states), dtype=np.int64)  # best predecessor of each state
    for t in range(1, emit.shape[0]):
        candidates = transitions + score[None, :]  # (S, S)
        back[t] = candidates.argmax(axis=1)
        score = candidates.max(axis=1) + emit[t]
    final = np.full(states, -np.inf, dtype=np.float32)
    final[lexicon["final"]] = score[lexicon["final"]]
    path = [int(final.argmax())]
    for t in range(emit.shape[0] - 1, 0, -1):
        path.append(int(back[t, path[-1]]))
    path.reverse()
    first = {state: word for word, state in enumerate(lexicon["first"])}
    return [lexicon["words"][first[s]] for i, s in enumerate(path) if s in first and (i == 0 or path[i - 1] != s)]


def transcribe(session: ort.InferenceSession, meta: dict, waves: list[np.ndarray]) -> list[str]:
    """Transcripts of ``waves`` (each ``(S,)`` float32), run as one padded batch."""
    lengths = np.array([w.shape[0] for w in waves], dtype=np.int64)
    batch = np.zeros((len(waves), int(lengths.max())), dtype=np.float32)  # (B, S)
    for b, wave in enumerate(waves):
        batch[b, : wave.shape[0]] = wave
    log_probs, out_lengths = session.run(None, {"waveforms": batch, "lengths": lengths})  # (B, T', V), (B,)
    if "lexicon" in meta:
        return [" ".join(lexicon_words(lp[:n], meta["lexicon"])) for lp, n in zip(log_probs, out_lengths, strict=True)]
    return [greedy_text(lp[:n], meta["vocabulary"], meta["blank"]) for lp, n in zip(log_probs, out_lengths, strict=True)]


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    try:
        session, meta = load_model(argv[0])
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    paths, waves = [], []
    for path in argv[1:]:
        try:
            waves.append(read_mono(path, meta["sample_rate"]))
            paths.append(path)
        except (ValueError, RuntimeError, OSError) as exc:  # unreadable (soundfile's errors), another rate
            print(f"error: {path}: {exc}", file=sys.stderr)
    if waves:
        for path, text in zip(paths, transcribe(session, meta, waves), strict=True):
            print(f"{path}\t{text}")
    return 0 if len(paths) == len(argv) - 1 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
