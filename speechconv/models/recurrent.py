"""The recurrent stack both heads put on a speechconv encoder: projection -> LSTM layers.

The conv encoder sees 85 ms around each frame (receptive field 7 frames); the LSTMs
give every output frame the utterance before it and, bidirectional, after it.  The CTC
head needs that context to place labels, and the attention decoder needs it to know
where it is in the utterance and when to stop: on the bare conv encoder, a seq2seq run
on the digit strings reached a teacher-forced validation loss of 0.42 per character but
92% WER greedy, mostly by repeating digits ("four two four" for "four").

Exact lengths without packing: each layer is a forward ``nn.LSTM`` run on the padded
batch (an output depends only on the frames before it, so the padding after an
utterance never reaches its valid outputs) and, when bidirectional, a second
``nn.LSTM`` run on each utterance reversed within its own length
(:func:`reverse_within`), whose outputs are reversed back.  Plain ops on padded
tensors, so the same forward trains, evaluates and streams (forward-only layers keep
their ``(h, c)`` state from chunk to chunk).
"""

from __future__ import annotations

import torch
from torch import nn

from speechconv import shapes


def reverse_within(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Each utterance's valid frames in reverse order: ``(B, T, D)``, ``(B,)`` -> ``(B, T, D)``.

    Frame ``t < L`` of utterance ``b`` becomes frame ``L - 1 - t``; frames past ``L`` hold
    a copy of frame 0 (never read by a valid output).  Its own inverse on valid frames."""
    t = torch.arange(x.shape[1], device=x.device)
    index = (lengths.to(torch.int64)[:, None] - 1 - t[None, :]).clamp(min=0)  # (B, T)
    return x.gather(1, index[:, :, None].expand(-1, -1, x.shape[2]))


class RecurrentEncoder(nn.Module):
    """``encoder`` (flattened) -> linear projection -> dropout -> LSTM layers.

    Args:
        encoder: a speechconv encoder with an int ``output_dim`` returning ``(B, T', D)``
            or ``(B, T', F', C')`` (flattened here) and exact ``out_lengths``.
        projection: linear size between the encoder and the LSTMs (0: none).
        hidden: LSTM units per direction.
        lstm_layers: LSTM layers.
        dropout: before the first LSTM layer and between layers.
        bidirectional: each layer reads the utterance both ways (``output_dim = 2 *
            hidden``); ``False``: forward only, so every output frame depends on the
            frames up to it and the stack streams (``output_dim = hidden``).

    Attributes:
        forward_layers, backward_layers: one single-layer ``nn.LSTM`` per layer and
            direction (``backward_layers`` empty when not bidirectional).

    Shapes:
        ``forward(features (B, T, F, C), lengths (B,))`` -> ``((B, T', output_dim), (B,))``,
        zero on padded frames.
    """

    def __init__(self, encoder: nn.Module, projection: int, hidden: int, lstm_layers: int, dropout: float,
                 bidirectional: bool = True) -> None:
        super().__init__()
        encoder_dim = getattr(encoder, "output_dim", None)
        if not isinstance(encoder_dim, int):
            raise ValueError(f"RecurrentEncoder needs an encoder with an int output_dim, got {type(encoder).__name__}")
        self.encoder = encoder
        self.project = nn.Linear(encoder_dim, projection) if projection > 0 else nn.Identity()
        self.dropout = nn.Dropout(dropout)
        self.bidirectional = bidirectional
        directions = 2 if bidirectional else 1
        sizes = [projection or encoder_dim] + [directions * hidden] * (lstm_layers - 1)
        self.forward_layers = nn.ModuleList(nn.LSTM(size, hidden, batch_first=True) for size in sizes)
        self.backward_layers = nn.ModuleList(nn.LSTM(size, hidden, batch_first=True) for size in sizes) \
            if bidirectional else nn.ModuleList()
        self.output_dim = directions * hidden

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, T, F, C)``, ``(B,)`` -> ``(B, T', output_dim)``, ``(B,)`` output lengths."""
        encoded, out_lengths = self.encoder(features, lengths)
        if encoded.dim() == 4:
            encoded = encoded.flatten(2)  # (B, T', F', C') -> (B, T', D)
        x = self.dropout(self.project(encoded))  # (B, T', D) -> (B, T', D_proj)
        return self.recur(x, out_lengths), out_lengths

    def recur(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """The LSTM layers on ``(B, T', D_proj)`` with ``(B,)`` lengths -> ``(B, T', output_dim)``,
        zero past each length."""
        for i, forward_lstm in enumerate(self.forward_layers):
            if i:
                x = self.dropout(x)
            y, _ = forward_lstm(x)  # (B, T', hidden)
            if self.bidirectional:
                back, _ = self.backward_layers[i](reverse_within(x, lengths))
                y = torch.cat([y, reverse_within(back, lengths)], dim=2)  # (B, T', 2 * hidden)
            x = y
        return x * shapes.make_pad_mask(lengths, x.shape[1])[:, :, None].to(x.dtype)  # (B, T') -> (B, T', 1)
