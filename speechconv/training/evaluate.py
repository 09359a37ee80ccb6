"""Decode a dataset and score it; ``mode=eval``: WER/CER of a checkpoint on a manifest."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from speechconv.atomic import atomic_write_text
from speechconv.config import Config
from speechconv.data import Batch
from speechconv.metrics import cer, wer
from speechconv.text import CharVocabulary
from speechconv.training.outputs import writing
from speechconv.training.runlog import say


@dataclass
class EvalResult:
    """Corpus WER and CER (rates in [0, inf)), mean loss per batch, and per-utterance rows;
    for a CTC model that decodes through a lexicon, also the WER of the greedy read-out of
    the same log-probabilities (else ``None``)."""

    wer: float
    cer: float
    loss: float
    rows: list[dict] = field(default_factory=list)
    greedy_wer: float | None = None


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable[Batch], vocab: CharVocabulary, max_len: int,
             device: torch.device | str = "cpu") -> EvalResult:
    """Loss, transcripts and corpus WER/CER over ``batches`` (model left in eval mode)."""
    model.eval()
    lexicon = getattr(model, "lexicon", None) is not None
    refs, hyps, greedy, losses = [], [], [], []
    for batch in batches:
        batch = batch.to(device)
        losses.append(float(model(batch.features, batch.lengths, batch.targets, batch.target_lengths)))
        if lexicon:  # a CTC model: both read-outs of one forward pass
            log_probs, out_lengths = model.log_probs(batch.features, batch.lengths)  # (B, T', V), (B,)
            for row, n in zip(log_probs, out_lengths.tolist(), strict=True):
                hyps.append(vocab.transcript(model.transcript_ids(row, n)))
                greedy.append(vocab.transcript(model.greedy_ids(row, n)))
        else:
            hyps.extend(vocab.transcript(ids) for ids in model.decode(batch.features, batch.lengths, max_len))
        refs.extend(batch.texts)
    rows = [{"reference": r, "hypothesis": h, "word_errors": wer([r], [h]).errors} for r, h in zip(refs, hyps, strict=True)]
    return EvalResult(wer(refs, hyps).rate, cer(refs, hyps).rate, sum(losses) / max(len(losses), 1), rows,
                      wer(refs, greedy).rate if lexicon else None)


def speaker_rates(rows: list[dict]) -> dict[str, tuple[float, float, int]]:
    """``{speaker: (WER, CER, utterances)}`` of the rows that name a ``speaker``, sorted by name."""
    by: dict[str, list[dict]] = {}
    for row in rows:
        if row.get("speaker") is not None:
            by.setdefault(row["speaker"], []).append(row)
    out = {}
    for speaker in sorted(by):
        refs, hyps = [r["reference"] for r in by[speaker]], [r["hypothesis"] for r in by[speaker]]
        out[speaker] = (wer(refs, hyps).rate, cer(refs, hyps).rate, len(refs))
    return out


def run_eval(cfg: Config, out_dir: str | Path) -> int:
    """``mode=eval``: score ``cfg.checkpoint`` on ``cfg.data.test_manifest``; print WER and CER
    (and per speaker, when the manifest's rows name one) and write one JSON line per
    utterance into this run's folder ``out_dir`` (``hypotheses_<manifest>.jsonl``)."""
    from speechconv.training.checkpoint import restore_model
    from speechconv.training.data import loader, manifest_dataset

    model, run_cfg, vocab = restore_model(cfg.checkpoint, cfg.trainer.device)
    dataset = manifest_dataset(cfg.data.test_manifest, "data.test_manifest", run_cfg.features, vocab,
                               strict=cfg.data.strict)
    data_cfg = run_cfg.data
    data_cfg.num_workers = cfg.data.num_workers
    batches = loader(dataset, data_cfg, vocab)
    order = [i for batch in batches.batch_sampler for i in batch]  # dataset index of each scored row
    result = evaluate(model, batches, vocab, run_cfg.model.max_decode_len, cfg.trainer.device)
    for row, i in zip(result.rows, order, strict=True):
        row["audio_filepath"] = str(dataset.entries[i].audio_filepath)
        if dataset.entries[i].speaker is not None:
            row["speaker"] = dataset.entries[i].speaker
    result.rows.sort(key=lambda r: r["audio_filepath"])
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    out = Path(out_dir) / f"hypotheses_{Path(cfg.data.test_manifest).stem}.jsonl"
    with writing(out):
        atomic_write_text(out, "".join(json.dumps(r) + "\n" for r in result.rows))
    say(f"{cfg.data.test_manifest}: {len(result.rows)} utterances  WER {100 * result.wer:.2f}%  "
        f"CER {100 * result.cer:.2f}%  loss {result.loss:.4f}")
    for speaker, (w, c, n) in speaker_rates(result.rows).items():
        say(f"  speaker {speaker}: {n} utterances  WER {100 * w:.2f}%  CER {100 * c:.2f}%")
    say(f"hypotheses: {out}")
    return 0
