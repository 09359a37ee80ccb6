"""``mode=transcribe``: a transcript per audio file from a checkpoint (the model's ``decode``:
greedy, or through its lexicon); a bad file is reported and skipped."""

from __future__ import annotations

import torch

from speechconv.config import Config
from speechconv.training.runlog import say


def run_transcribe(cfg: Config) -> int:
    """Print ``path<TAB>transcript`` per file of ``cfg.audio``; returns 1 if any file failed, else 0."""
    from speechconv.audio import load_audio
    from speechconv.features import LogMelDeltas
    from speechconv.training.checkpoint import restore_model

    model, run_cfg, vocab = restore_model(cfg.checkpoint, cfg.trainer.device)
    features = LogMelDeltas(run_cfg.features).eval()
    failed = 0
    for path in cfg.audio:
        try:
            wave = load_audio(path, sample_rate=run_cfg.features.sample_rate)
            with torch.no_grad():
                feats, length = features(wave)  # (S,) -> (T, F, C), ()
                ids = model.decode(feats[None].to(cfg.trainer.device),  # (T, F, C) -> (1, T, F, C)
                                   length.reshape(1).to(cfg.trainer.device), run_cfg.model.max_decode_len)
        except (ValueError, OSError) as exc:  # AudioError is a ValueError; too-short audio too
            failed += 1
            say(f"error: {path}: {exc}", err=True)
            continue
        say(f"{path}\t{vocab.transcript(ids[0])}")
    return 1 if failed else 0
