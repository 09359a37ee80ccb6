"""A small attention sequence-to-sequence model on top of any speechconv encoder.

The encoder is anything with ``forward(features (B, T, F, C), lengths (B,)) ->
(encoded, out_lengths)`` and an ``output_dim``: :class:`speechconv.ConvEncoder`
(its ``(B, T', F', C')`` output is flattened here to ``(B, T', F' * C')``) or
:class:`speechconv.Weiss2017Encoder` (``(B, T', 512)``).  The decoder is one LSTM cell
with input feeding (Luong et al. 2015) and additive (Bahdanau et al. 2015) or scaled
dot-product attention over the encoder frames, masked by ``out_lengths``:

    s_u, m_u = LSTMCell([embed(y_{u-1}); c_{u-1}], (s_{u-1}, m_{u-1}))
    a_u      = softmax over valid frames of score(s_u, h_1..h_T')
    c_u      = sum_t a_u[t] h_t
    logits_u = Linear([s_u; c_u])

with zero initial state and context.

Targets and special tokens.  ``targets`` are the plain token ids of each transcript
(``(B, U)``, padded with ``pad_id``, ``target_lengths`` valid ids each) and must not
contain ``sos_id``, ``eos_id`` or ``pad_id`` in their valid part.  The decoder reads
``<sos> y_1 .. y_n`` and is trained to emit ``y_1 .. y_n <eos>``: ``n + 1`` scored
positions per utterance, so the model learns where to stop.  Greedy decoding starts
from ``<sos>``, stops an utterance at its first ``<eos>`` and returns the tokens
before it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from speechconv import shapes

ATTENTIONS = ("additive", "dot")
REDUCTIONS = ("mean", "sum", "none")


# --------------------------------------------------------------- pure attention


def additive_scores(keys: torch.Tensor, query: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Bahdanau scores ``v . tanh(W_k h_t + W_q s)``, with the projections done by the caller.

    Args:
        keys: ``(B, T, D)`` projected encoder frames ``W_k h_t``.
        query: ``(B, D)`` projected decoder state ``W_q s``.
        v: ``(D,)``.

    Returns:
        ``(B, T)`` unnormalised scores.
    """
    return torch.tanh(keys + query[:, None, :]) @ v  # (B, D) -> (B, 1, D); (B, T, D) @ (D,) -> (B, T)


def dot_scores(keys: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """Scaled dot-product scores ``(W_k h_t) . (W_q s) / sqrt(D)``.

    Args:
        keys: ``(B, T, D)``; query: ``(B, D)``.

    Returns:
        ``(B, T)``.
    """
    return torch.bmm(keys, query[:, :, None]).squeeze(2) / math.sqrt(keys.shape[2])  # (B, D) -> (B, D, 1) -> (B, T)


def attend(scores: torch.Tensor, mask: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax over valid frames and the weighted sum of ``values``.

    Args:
        scores: ``(B, T)``; mask: ``(B, T)`` bool, True on valid frames (at least one
            per row); values: ``(B, T, D)``.

    Returns:
        context ``(B, D)`` and weights ``(B, T)`` (exactly 0 on padded frames).
    """
    weights = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=1)
    context = torch.bmm(weights[:, None, :], values).squeeze(1)  # (B, T) -> (B, 1, T); -> (B, 1, D) -> (B, D)
    return context, weights


# ------------------------------------------------------------------------ model


class Seq2Seq(nn.Module):
    """Encoder + attention LSTM decoder, trained with teacher forcing.

    Args:
        encoder: a speechconv encoder (see the module docstring).
        vocab_size: number of output ids ``V`` (``sos_id``, ``eos_id``, ``pad_id`` among them).
        embed_dim: size of the token embedding.
        decoder_dim: LSTM cell units.
        attention_dim: size of the attention's key/query projections.
        attention: ``additive`` or ``dot``.
        sos_id, eos_id, pad_id: the three distinct special ids (keyword-only).
        dropout: dropout on the embedding and before the output layer.

    Shapes:
        ``forward(features, lengths, targets, target_lengths)``: ``(B, T, F, C)``,
        ``(B,)``, ``(B, U)`` int64, ``(B,)`` -> the loss (a scalar, or ``(B,)`` with
        ``reduction="none"``).
        ``greedy_decode(features, lengths, max_len)`` -> ``B`` lists of ids.
    """

    def __init__(
        self,
        encoder: nn.Module,
        vocab_size: int,
        embed_dim: int = 64,
        decoder_dim: int = 256,
        attention_dim: int = 128,
        attention: str = "additive",
        *,
        sos_id: int,
        eos_id: int,
        pad_id: int,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        for key, value in (("vocab_size", vocab_size), ("embed_dim", embed_dim), ("decoder_dim", decoder_dim),
                           ("attention_dim", attention_dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"Seq2Seq {key}={value!r} is invalid: expected an int >= 1")
        if attention not in ATTENTIONS:
            raise ValueError(f"Seq2Seq attention={attention!r} is invalid: expected one of {ATTENTIONS}")
        ids = {"sos_id": sos_id, "eos_id": eos_id, "pad_id": pad_id}
        for key, value in ids.items():
            if not 0 <= value < vocab_size:
                raise ValueError(f"Seq2Seq {key}={value} is invalid: expected an id in [0, {vocab_size})")
        if len(set(ids.values())) != 3:
            raise ValueError(f"Seq2Seq special ids must be distinct, got {ids}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"Seq2Seq dropout={dropout!r} is invalid: expected a float in [0, 1)")
        encoder_dim = getattr(encoder, "output_dim", None)
        if not isinstance(encoder_dim, int):
            raise ValueError(f"Seq2Seq needs an encoder with an int output_dim, got {type(encoder).__name__}")
        self.encoder = encoder
        self.encoder_dim = encoder_dim
        self.vocab_size = vocab_size
        self.attention = attention
        self.sos_id, self.eos_id, self.pad_id = sos_id, eos_id, pad_id
        self.embed = nn.Embedding(vocab_size, embed_dim)
        self.cell = nn.LSTMCell(embed_dim + encoder_dim, decoder_dim)
        self.key = nn.Linear(encoder_dim, attention_dim, bias=False)
        self.query = nn.Linear(decoder_dim, attention_dim, bias=attention == "additive")
        self.v = nn.Parameter(torch.randn(attention_dim) / math.sqrt(attention_dim)) if attention == "additive" else None
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(decoder_dim + encoder_dim, vocab_size)

    # ----------------------------------------------------------------- pieces

    def encode(self, features: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, T, F, C)``, ``(B,)`` -> encoder frames ``(B, T', D)`` and ``(B,)`` lengths."""
        encoded, out_lengths = self.encoder(features, lengths)
        if encoded.dim() == 4:
            b, t, f, c = encoded.shape
            encoded = encoded.reshape(b, t, f * c)  # (B, T', F', C') -> (B, T', F' * C')
        assert encoded.dim() == 3 and encoded.shape[2] == self.encoder_dim, (
            f"encoder returned {list(encoded.shape)}, expected (B, T', {self.encoder_dim}) from its output_dim"
        )
        return encoded, out_lengths

    def _step(
        self,
        tokens: torch.Tensor,
        state: tuple[torch.Tensor, torch.Tensor],
        context: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        mask: torch.Tensor,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
        """One decoder step: ``tokens`` ``(B,)``, state ``2 x (B, decoder_dim)``, context
        ``(B, D)``, keys ``(B, T', A)``, values ``(B, T', D)``, mask ``(B, T')`` ->
        logits ``(B, V)``, new state, new context."""
        inp = torch.cat([self.dropout(self.embed(tokens)), context], dim=1)  # (B, E + D)
        h, c = self.cell(inp, state)
        q = self.query(h)  # (B, A)
        v = self.v
        scores = additive_scores(keys, q, v) if v is not None else dot_scores(keys, q)
        context, _ = attend(scores, mask, values)
        logits = self.out(self.dropout(torch.cat([h, context], dim=1)))  # (B, decoder_dim + D) -> (B, V)
        return logits, (h, c), context

    def _check_targets(self, targets: torch.Tensor, target_lengths: torch.Tensor, batch: int) -> None:
        """Raise a ``ValueError`` unless ``targets`` is int64 ``(B, U)`` and ``target_lengths``
        ``(B,)`` in ``[0, U]``, with only plain (non-special, in-vocabulary) ids in the valid part."""
        if targets.dim() != 2 or targets.shape[0] != batch or targets.dtype != torch.int64:
            raise ValueError(f"targets must be int64 (B={batch}, U), got {targets.dtype} {list(targets.shape)}")
        if target_lengths.shape != (batch,) or bool(((target_lengths < 0) | (target_lengths > targets.shape[1])).any()):
            raise ValueError(f"target_lengths must be (B={batch},) in [0, U={targets.shape[1]}], "
                             f"got {target_lengths.tolist()}")
        valid = shapes.make_pad_mask(target_lengths, targets.shape[1])  # (B, U)
        ids = targets[valid]
        special = (ids == self.sos_id) | (ids == self.eos_id) | (ids == self.pad_id)
        if bool(((ids < 0) | (ids >= self.vocab_size) | special).any()):
            raise ValueError(
                f"targets hold ids outside [0, {self.vocab_size}) or special ids (sos={self.sos_id}, "
                f"eos={self.eos_id}, pad={self.pad_id}) among their valid positions; pass plain token ids, "
                f"the model adds <sos>/<eos> itself"
            )

    def decoder_logits(
        self, features: torch.Tensor, lengths: torch.Tensor, targets: torch.Tensor, target_lengths: torch.Tensor
    ) -> torch.Tensor:
        """Teacher-forced logits.

        Args:
            features: ``(B, T, F, C)``; lengths: ``(B,)``.
            targets: ``(B, U)`` int64 padded with ``pad_id``; target_lengths: ``(B,)``.

        Returns:
            ``(B, U + 1, V)``: position ``u`` predicts ``targets[:, u]`` for
            ``u < target_lengths`` and ``<eos>`` at ``u == target_lengths``; later
            positions are padding.
        """
        b = features.shape[0]
        self._check_targets(targets, target_lengths, b)
        values, out_lengths = self.encode(features, lengths)
        mask = shapes.make_pad_mask(out_lengths, values.shape[1])  # (B, T')
        keys = self.key(values)  # (B, T', A)
        sos = torch.full((b, 1), self.sos_id, dtype=torch.int64, device=targets.device)
        inputs = torch.cat([sos, targets], dim=1)  # (B, U) -> (B, U + 1)
        state = (values.new_zeros(b, self.cell.hidden_size), values.new_zeros(b, self.cell.hidden_size))
        context = values.new_zeros(b, self.encoder_dim)
        steps = []
        for u in range(inputs.shape[1]):
            logits, state, context = self._step(inputs[:, u], state, context, keys, values, mask)
            steps.append(logits)
        return torch.stack(steps, dim=1)  # (U + 1) x (B, V) -> (B, U + 1, V)

    # ------------------------------------------------------------------ public

    def forward(
        self,
        features: torch.Tensor,
        lengths: torch.Tensor,
        targets: torch.Tensor,
        target_lengths: torch.Tensor,
        reduction: str = "mean",
    ) -> torch.Tensor:
        """Token-level cross-entropy of ``y_1 .. y_n <eos>`` under teacher forcing.

        Args:
            features: ``(B, T, F, C)``; lengths: ``(B,)`` frames.
            targets: ``(B, U)`` int64 token ids padded with ``pad_id``, no sos/eos.
            target_lengths: ``(B,)`` valid ids per row.
            reduction: ``mean`` over all scored tokens of the batch (``sum(n_b + 1)``
                of them), ``sum``, or ``none`` for ``(B,)`` per-utterance sums.

        Returns:
            A scalar, or ``(B,)`` for ``reduction="none"``.
        """
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction={reduction!r} is invalid: expected one of {REDUCTIONS}")
        logits = self.decoder_logits(features, lengths, targets, target_lengths)  # (B, U + 1, V)
        b, steps, v = logits.shape
        pad = torch.full((b, 1), self.pad_id, dtype=torch.int64, device=targets.device)
        gold = torch.cat([targets, pad], dim=1)  # (B, U) -> (B, U + 1)
        gold = gold.scatter(1, target_lengths[:, None].to(torch.int64), self.eos_id)  # <eos> after each row
        scored = shapes.make_pad_mask(target_lengths + 1, steps)  # (B, U + 1): positions 0..n_b
        nll = F.cross_entropy(logits.reshape(b * steps, v), gold.reshape(b * steps), reduction="none")
        nll = nll.reshape(b, steps) * scored  # (B * (U + 1),) -> (B, U + 1)
        if reduction == "none":
            return nll.sum(dim=1)
        if reduction == "sum":
            return nll.sum()
        return nll.sum() / scored.sum()

    @torch.no_grad()
    def greedy_decode(self, features: torch.Tensor, lengths: torch.Tensor, max_len: int) -> list[list[int]]:
        """Most likely token at each step, from ``<sos>`` until ``<eos>`` or ``max_len`` steps.

        ``<sos>`` and ``<pad>`` are never emitted (they are never training targets).

        Args:
            features: ``(B, T, F, C)``; lengths: ``(B,)``.
            max_len: most decoder steps; ``<eos>`` counts as a step.

        Returns:
            ``B`` lists of token ids, ``<sos>``/``<eos>`` excluded.  A list shorter than
            ``max_len`` ended with ``<eos>``; one of ``max_len`` ids was cut off.
        """
        if isinstance(max_len, bool) or not isinstance(max_len, int) or max_len < 1:
            raise ValueError(f"max_len={max_len!r} is invalid: expected an int >= 1")
        b = features.shape[0]
        values, out_lengths = self.encode(features, lengths)
        mask = shapes.make_pad_mask(out_lengths, values.shape[1])  # (B, T')
        keys = self.key(values)
        never = torch.zeros(self.vocab_size, dtype=torch.bool, device=values.device)
        never[[self.sos_id, self.pad_id]] = True  # never targets, so never emitted
        tokens = torch.full((b,), self.sos_id, dtype=torch.int64, device=values.device)
        state = (values.new_zeros(b, self.cell.hidden_size), values.new_zeros(b, self.cell.hidden_size))
        context = values.new_zeros(b, self.encoder_dim)
        done = torch.zeros(b, dtype=torch.bool, device=values.device)
        out: list[list[int]] = [[] for _ in range(b)]
        for _ in range(max_len):
            logits, state, context = self._step(tokens, state, context, keys, values, mask)
            tokens = logits.masked_fill(never, float("-inf")).argmax(dim=1)
            for i, tok in enumerate(tokens.tolist()):
                if not done[i] and tok != self.eos_id:
                    out[i].append(tok)
            done |= tokens == self.eos_id
            if bool(done.all()):
                break
        return out

    decode = greedy_decode  # the transcripts trained models print: greedy (no lexicon search for seq2seq)
