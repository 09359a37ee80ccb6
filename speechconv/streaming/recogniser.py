"""A streaming CTC recogniser: audio in, chunk by chunk, log-probabilities and a greedy
transcript out, equal to the offline model's.

The front end streams with :class:`speechconv.streaming.BatchedFrontEndStream` (the
offline features and conv encoder on their own buffers); then the head runs the
model's own modules on each chunk's new encoder frames: the projection, each
forward-only ``nn.LSTM`` of :class:`speechconv.models.recurrent.RecurrentEncoder` with
its ``(h, c)`` state carried from chunk to chunk, and the output layer with
``log_softmax``.  An output frame depends on the frames up to it only, so its
log-probabilities are final as soon as its encoder frame is, and the greedy path's
best label for it (repeats merged, blanks dropped: :func:`speechconv.models.ctc_collapse`'s
rule, carried across chunks by the last frame's label) never changes afterwards.

A bidirectional model reads each utterance from its end too, so it cannot stream: it
is refused with a ``ValueError`` naming ``model.bidirectional``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from speechconv.encoder import ConvEncoder
from speechconv.features.module import LogMelDeltas
from speechconv.models.ctc import CTCModel
from speechconv.streaming.front_end import BatchedFrontEndStream


class RecogniserStream:
    """``B`` independent streams of a forward-only :class:`CTCModel` (module docstring).

    Args:
        model: an eval-mode CTC model with ``bidirectional=False`` and a conv encoder
            that streams (fixed alignment along time).
        features: the feature stage the model was trained on.
        batch: ``None`` for one stream (``accept((S,))``), else ``B`` (``accept((B, S),
            lengths)``).

    Attributes:
        look_ahead_samples, look_ahead_ms: of the front end (the LSTMs add none);
            :meth:`frames_held` as well.

    Shapes:
        ``step(chunk (B, S), lengths (B,), final (B,))`` -> ``log_probs (B, t', V)``,
        ``counts (B,)`` (stream ``b``'s new frames are the first ``counts[b]``) and,
        per stream, the ids that became final.
    """

    def __init__(self, model: CTCModel, features: LogMelDeltas, batch: int | None = None) -> None:
        body = model.body
        if body.bidirectional:
            raise ValueError("model.bidirectional=true cannot stream: each layer's backward LSTM reads the "
                             "utterance from its end; train a forward-only model (model.bidirectional=false, "
                             "as experiment=streaming_digits does)")
        if model.training:
            raise ValueError("RecogniserStream needs an eval-mode model (dropout off, batch norms on running "
                             "statistics): call model.eval() first")
        if not isinstance(body.encoder, ConvEncoder):
            raise ValueError(f"RecogniserStream streams a conv encoder (encoder.type=conv), got "
                             f"{type(body.encoder).__name__}")
        self.model, self.single = model, batch is None
        self.batch = 1 if batch is None else batch
        self.front = BatchedFrontEndStream(features, body.encoder, self.batch)
        self.look_ahead_samples, self.look_ahead_ms = self.front.look_ahead_samples, self.front.look_ahead_ms
        param = model.out.weight
        hidden = body.forward_layers[0].hidden_size
        self._h = [param.new_zeros(1, self.batch, hidden) for _ in body.forward_layers]  # (1, B, hidden) per layer
        self._c = [param.new_zeros(1, self.batch, hidden) for _ in body.forward_layers]
        self._last = [model.blank_id] * self.batch  # the label of each stream's last frame

    @torch.no_grad()
    def step(self, chunk: torch.Tensor, lengths: torch.Tensor | None = None,
             final: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, list[list[int]]]:
        """The next ``lengths[b]`` samples of each stream (``None``: all); the streams in
        ``final`` (``(B,)`` bool) end after them and start over (class docstring)."""
        final = None if final is None else final.to(torch.bool).cpu()  # None: no stream ends
        encoded, counts = self.front.step(chunk, lengths, final)  # (B, t', D), (B,)
        log_probs = self._head(encoded, counts)  # (B, t', V)
        best = log_probs.argmax(dim=-1).tolist()  # (B, t')
        new: list[list[int]] = []
        for b, n in enumerate(counts.tolist()):
            ids = []
            for i in best[b][:n]:
                if i != self._last[b] and i != self.model.blank_id:
                    ids.append(i)
                self._last[b] = i
            new.append(ids)
        for b in [] if final is None else torch.nonzero(final).flatten().tolist():
            self._restart(b)
        return log_probs, counts, new

    def accept(self, samples: torch.Tensor, lengths: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, list[int]] | tuple[torch.Tensor, torch.Tensor, list[list[int]]]:
        """One stream: ``(S,)`` -> ``(log_probs (t', V), new ids)``; a batch: ``(B, S)``,
        ``(B,)`` -> :meth:`step`'s ``(log_probs, counts, new ids)``."""
        if self.single:
            if samples.dim() != 1 or not samples.is_floating_point():
                raise ValueError(f"samples must be float (S,) for one stream, got {samples.dtype} "
                                 f"{tuple(samples.shape)}")
            log_probs, counts, new = self.step(samples[None])  # (S,) -> (1, S)
            return log_probs[0, : int(counts[0])], new[0]
        return self.step(samples, lengths)

    def finish(self, which: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, list[int]] | tuple[torch.Tensor, torch.Tensor, list[list[int]]]:
        """End the streams in ``which`` (``(B,)`` bool, ``None``: all): their last frames
        and ids, as :meth:`accept` returns them; they then start over."""
        final = torch.ones(self.batch, dtype=torch.bool) if which is None else which
        log_probs, counts, new = self.step(torch.zeros(self.batch, 0), torch.zeros(self.batch, dtype=torch.int64),
                                           final)
        return (log_probs[0, : int(counts[0])], new[0]) if self.single else (log_probs, counts, new)

    def frames_held(self) -> torch.Tensor:
        """``(B,)`` feature frames each stream holds back (the front end's; the LSTMs hold none)."""
        return self.front.frames_held()

    def _head(self, encoded: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """Projection, LSTM layers (state carried) and output layer on each stream's first
        ``counts[b]`` frames: ``(B, t', D)``, ``(B,)`` -> ``(B, t', V)`` (rows past a
        count unspecified)."""
        body = self.model.body
        x = body.project(encoded)  # (B, t', D) -> (B, t', D_proj)
        T = x.shape[1]
        if T == 0:
            return self.model.out.weight.new_zeros(x.shape[0], 0, self.model.out.out_features)
        equal = bool((counts == T).all())
        for i, lstm in enumerate(body.forward_layers):
            if equal:  # every stream has every frame: one call, as offline
                x, (self._h[i], self._c[i]) = lstm(x, (self._h[i], self._c[i]))  # (B, t', hidden)
                continue
            # Streams with fewer frames keep their state past their last one: frame by frame.
            outs, h, c = [], self._h[i], self._c[i]
            for t in range(T):
                y, (h2, c2) = lstm(x[:, t : t + 1], (h, c))  # (B, 1, hidden)
                valid = (t < counts).to(x.device)[None, :, None]  # (B,) -> (1, B, 1)
                h, c = torch.where(valid, h2, h), torch.where(valid, c2, c)
                outs.append(y)
            x = torch.cat(outs, dim=1) if outs else x.new_zeros(x.shape[0], 0, lstm.hidden_size)  # (B, t', hidden)
            self._h[i], self._c[i] = h, c
        return F.log_softmax(self.model.out(x), dim=-1)

    def _restart(self, b: int) -> None:
        for h, c in zip(self._h, self._c, strict=True):
            h[:, b].zero_()
            c[:, b].zero_()
        self._last[b] = self.model.blank_id
