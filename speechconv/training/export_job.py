"""``mode=export``: a checkpoint's recogniser as one graph from raw audio to log-probabilities
(:func:`speechconv.export.export_recogniser`), checked against the eager model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from speechconv.config import Config
from speechconv.training.runlog import say

CHECK_AUDIO = Path(__file__).resolve().parents[2] / "data" / "fixtures" / "arctic_a0007.wav"
"""The bundled clip the written file is checked on (3.3 s of read speech)."""
BOUNDS = {"onnx": 1e-3, "pt2": 1e-5}
"""Largest difference of the exported log-probabilities from eager's (the issue's bounds)."""


def exported_log_probs(path: Path, fmt: str, wave: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """``(log_probs (1, T', V), out_lengths (1,))`` of the file at ``path`` on one ``(S,)`` waveform."""
    waveforms, lengths = wave[None], torch.tensor([wave.numel()])  # (S,) -> (1, S)
    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        log_probs, out_lengths = session.run(None, {"waveforms": waveforms.numpy(), "lengths": lengths.numpy()})
        return log_probs, out_lengths
    with torch.no_grad():
        log_probs, out_lengths = torch.export.load(path).module()(waveforms, lengths)
    return log_probs.numpy(), out_lengths.numpy()


def run_export(cfg: Config, out_dir: str | Path) -> int:
    """Write ``cfg.checkpoint``'s recogniser to ``cfg.export.path`` (default: ``model.onnx``
    or ``model.pt2`` in ``out_dir``) as ``cfg.export.format``, then run the file and the
    eager model on a bundled clip; returns 0, or 1 if they differ by more than
    :data:`BOUNDS` or in their lengths or transcript."""
    from speechconv.audio import load_audio
    from speechconv.export import export_recogniser
    from speechconv.features import LogMelDeltas
    from speechconv.training.checkpoint import restore_model

    fmt = cfg.export.format
    model, run_cfg, vocab = restore_model(cfg.checkpoint, "cpu")  # exported graphs run on the CPU
    features = LogMelDeltas(run_cfg.features).eval()
    path = Path(cfg.export.path) if cfg.export.path else Path(out_dir) / f"model.{fmt}"
    export_recogniser(model, features, vocab, path, fmt)
    lexicon = f"; metadata lexicon: {len(model.lexicon.words)} words" if model.lexicon and fmt == "onnx" else ""
    say(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB, {fmt}): waveforms (B, S) float32 at "
        f"{run_cfg.features.sample_rate} Hz and lengths (B,) int64 -> log_probs (B, T', {len(vocab)}) and "
        f"out_lengths (B,){lexicon}")

    wave = load_audio(CHECK_AUDIO, sample_rate=run_cfg.features.sample_rate)
    log_probs, out_lengths = exported_log_probs(path, fmt, wave)
    with torch.no_grad():
        want, want_lengths = model.log_probs(*features(wave[None], torch.tensor([wave.numel()])))
    difference = float(np.abs(log_probs - want.numpy()).max())
    # the model's own decoding (through its lexicon, which the ONNX metadata carries, if it has one)
    text = vocab.transcript(model.transcript_ids(torch.from_numpy(log_probs[0]), int(out_lengths[0])))
    eager_text = vocab.transcript(model.transcript_ids(want[0], int(want_lengths[0])))
    same = np.array_equal(out_lengths, want_lengths.numpy()) and text == eager_text
    say(f"check on {CHECK_AUDIO.name}: log_probs within {difference:.1e} of eager (bound {BOUNDS[fmt]:.0e}), "
        f"out_lengths {'equal' if same else 'or transcript DIFFERENT'}; transcript {text!r}")
    if difference > BOUNDS[fmt] or not same:
        say(f"error: the exported {path} does not match the eager model (transcript {eager_text!r})", err=True)
        return 1
    return 0
