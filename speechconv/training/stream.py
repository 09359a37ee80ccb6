"""``mode=stream``: each audio file fed chunk by chunk to a streaming recogniser, the
transcript printed as it grows; a bad file is reported and skipped.

Per file, a line each time characters became final: the seconds of audio the stream had
taken then (the end of the chunk that made them final, or the end of the file for those
that come with ``finish``) and the greedy transcript so far; then ``path<TAB>transcript``,
the line ``mode=transcribe`` prints for the same checkpoint and file: the model's
transcript of all the log-probabilities the stream gave (which are the offline model's),
through its lexicon when it has one (``model.lexicon``; the growing lines stay greedy).
"""

from __future__ import annotations

import torch

from speechconv.checks import ConfigError
from speechconv.config import Config
from speechconv.training.runlog import say


def run_stream(cfg: Config) -> int:
    """Stream every file of ``cfg.audio`` through ``cfg.checkpoint``'s model in chunks of
    ``cfg.stream.chunk_ms``; returns 1 if any file failed, else 0.  A checkpoint whose
    model cannot stream (bidirectional, or a TF SAME front) raises a
    :class:`ConfigError` that says why (``model.bidirectional``) and what to train instead."""
    from speechconv.audio import load_audio
    from speechconv.features import LogMelDeltas
    from speechconv.streaming import RecogniserStream
    from speechconv.training.checkpoint import restore_model

    model, run_cfg, vocab = restore_model(cfg.checkpoint, cfg.trainer.device)
    features = LogMelDeltas(run_cfg.features).to(cfg.trainer.device).eval()
    rate = run_cfg.features.sample_rate
    size = max(round(cfg.stream.chunk_ms * rate / 1000), 1)
    try:
        stream = RecogniserStream(model, features)
    except ValueError as exc:
        raise ConfigError(f"mode=stream: checkpoint {cfg.checkpoint}: {exc}") from exc
    say(f"streaming in chunks of {size} samples ({1000 * size / rate:g} ms); look-ahead "
        f"{stream.look_ahead_samples} samples ({stream.look_ahead_ms:g} ms)")
    failed = 0
    for path in cfg.audio:
        try:
            wave = load_audio(path, sample_rate=rate).to(cfg.trainer.device)  # (S,)
            ids: list[int] = []
            log_probs = []  # (t, V) per chunk
            for start in range(0, wave.numel(), size):
                chunk_log_probs, new = stream.accept(wave[start : start + size])
                log_probs.append(chunk_log_probs)
                ids += new
                if new:
                    say(f"{path}\t{min(start + size, wave.numel()) / rate:.2f} s\t{vocab.decode(ids)}")
            chunk_log_probs, new = stream.finish()
            log_probs.append(chunk_log_probs)
            ids += new
            if new:
                say(f"{path}\t{wave.numel() / rate:.2f} s\t{vocab.decode(ids)}")
        except (ValueError, OSError) as exc:  # AudioError is a ValueError; too-short audio too
            stream = RecogniserStream(model, features)  # a file that failed leaves nothing behind
            failed += 1
            say(f"error: {path}: {exc}", err=True)
            continue
        every = torch.cat(log_probs)  # (T', V), the offline model's log-probabilities
        say(f"{path}\t{vocab.transcript(model.transcript_ids(every, every.shape[0]))}")
    return 1 if failed else 0
