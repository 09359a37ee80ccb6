"""CTC model: encoder (flattened) -> projection -> LSTM layers -> linear -> CTC; greedy or
lexicon-constrained decoding.

The encoder is any speechconv encoder returning ``(B, T', D)`` (or ``(B, T', F', C')``,
flattened) with exact ``out_lengths``, under the :class:`RecurrentEncoder` stack; CTC
reads those lengths, so padded frames never enter the loss.  The interface matches :class:`speechconv.seq2seq.Seq2Seq`:
``forward(...) -> loss``, ``greedy_decode(...) -> ids`` and ``decode(...) -> ids``, so one
training loop serves both.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from speechconv.models.lexicon import LexiconDecoder
from speechconv.models.recurrent import RecurrentEncoder


def ctc_collapse(ids: list[int], blank_id: int) -> list[int]:
    """Greedy CTC read-out of one frame-wise argmax path: merge repeats, then drop blanks."""
    out, previous = [], None
    for i in ids:
        if i != previous and i != blank_id:
            out.append(i)
        previous = i
    return out


class CTCModel(nn.Module):
    """Encoder + LSTM layers (bidirectional by default) + CTC.

    Args:
        encoder: a speechconv encoder with an int ``output_dim``.
        vocab_size: output ids ``V`` including the blank.
        blank_id: the CTC blank (from the vocabulary).
        projection: linear size between encoder and LSTMs (0: none).
        hidden: LSTM units per direction.
        lstm_layers: LSTM layers.
        dropout: dropout before the LSTMs and before the output layer.
        bidirectional: LSTMs that read both ways (else forward only: it streams).
        lexicon: decode to words of this lexicon (:class:`LexiconDecoder`); ``None``: greedy.

    Shapes:
        ``log_probs(features (B, T, F, C), lengths (B,))`` -> ``((B, T', V), (B,))``.
        ``forward(features, lengths, targets (B, U), target_lengths (B,))`` -> scalar loss:
        CTC summed per utterance, divided by its target length, averaged over the batch
        (``reduction="mean"``), ``zero_infinity=True`` so an utterance too short for its
        transcript gives no gradient instead of ``inf``.
        ``greedy_decode(features, lengths)`` -> ``B`` lists of ids: the frame-wise best path.
        ``decode(features, lengths)`` -> ``B`` lists of ids: the transcripts
        (:meth:`transcript_ids` of each row).
    """

    def __init__(
        self,
        encoder: nn.Module,
        vocab_size: int,
        blank_id: int,
        projection: int = 256,
        hidden: int = 192,
        lstm_layers: int = 1,
        dropout: float = 0.1,
        bidirectional: bool = True,
        lexicon: LexiconDecoder | None = None,
    ) -> None:
        super().__init__()
        if not 0 <= blank_id < vocab_size:
            raise ValueError(f"CTCModel blank_id={blank_id} is invalid: expected an id in [0, {vocab_size})")
        self.body = RecurrentEncoder(encoder, projection, hidden, lstm_layers, dropout, bidirectional)
        self.blank_id = blank_id
        self.lexicon = lexicon
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(self.body.output_dim, vocab_size)

    def log_probs(self, features: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, T, F, C)``, ``(B,)`` -> log-probabilities ``(B, T', V)`` and ``(B,)`` output lengths."""
        y, out_lengths = self.body(features, lengths)  # (B, T', 2 * hidden)
        return F.log_softmax(self.out(self.dropout(y)), dim=-1), out_lengths

    def forward(
        self, features: torch.Tensor, lengths: torch.Tensor, targets: torch.Tensor, target_lengths: torch.Tensor
    ) -> torch.Tensor:
        """CTC loss of ``targets (B, U)`` (no blanks; padding past ``target_lengths``) -> scalar."""
        log_probs, out_lengths = self.log_probs(features, lengths)
        return F.ctc_loss(
            log_probs.transpose(0, 1),  # (B, T', V) -> (T', B, V), the layout ctc_loss wants
            targets, out_lengths, target_lengths, blank=self.blank_id, reduction="mean", zero_infinity=True,
        )

    @torch.no_grad()
    def greedy_decode(self, features: torch.Tensor, lengths: torch.Tensor, max_len: int | None = None) -> list[list[int]]:
        """Best path per frame, repeats merged and blanks dropped (``max_len`` is unused: CTC
        emits at most one id per output frame)."""
        log_probs, out_lengths = self.log_probs(features, lengths)
        return [self.greedy_ids(row, n) for row, n in zip(log_probs, out_lengths.tolist(), strict=True)]

    def greedy_ids(self, log_probs: torch.Tensor, length: int) -> list[int]:
        """One utterance's ``log_probs (T', V)`` (``length`` valid frames) -> the greedy read-out."""
        return ctc_collapse(log_probs[:length].argmax(dim=-1).tolist(), self.blank_id)

    def transcript_ids(self, log_probs: torch.Tensor, length: int) -> list[int]:
        """One utterance's ``log_probs (T', V)`` (``length`` valid frames) -> transcript ids:
        the lexicon's best word sequence when the model has a lexicon, else the greedy path."""
        return self.greedy_ids(log_probs, length) if self.lexicon is None else self.lexicon(log_probs, length)

    @torch.no_grad()
    def decode(self, features: torch.Tensor, lengths: torch.Tensor, max_len: int | None = None) -> list[list[int]]:
        """Transcript ids of a batch (:meth:`transcript_ids`; ``max_len`` is unused)."""
        log_probs, out_lengths = self.log_probs(features, lengths)
        return [self.transcript_ids(row, n) for row, n in zip(log_probs, out_lengths.tolist(), strict=True)]
