"""The recurrent stack both heads put on a speechconv encoder: projection -> BiLSTM.

The conv encoder sees 85 ms around each frame (receptive field 7 frames); the BiLSTM
gives every output frame the whole utterance.  The CTC head needs it to place labels,
and the attention decoder needs it to know where it is in the utterance and when to
stop: on the bare conv encoder, a seq2seq run on the digit strings stood at step 1,000
at a teacher-forced validation loss of 0.42 per character but 92% WER greedy, mostly
by repeating digits ("four two four" for "four").
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence


class RecurrentEncoder(nn.Module):
    """``encoder`` (flattened) -> linear projection -> dropout -> BiLSTM.

    Args:
        encoder: a speechconv encoder with an int ``output_dim`` returning ``(B, T', D)``
            or ``(B, T', F', C')`` (flattened here) and exact ``out_lengths``.
        projection: linear size between the encoder and the BiLSTM (0: none).
        hidden: BiLSTM units per direction.
        lstm_layers: BiLSTM layers.
        dropout: before the BiLSTM and between its layers.

    Shapes:
        ``forward(features (B, T, F, C), lengths (B,))`` -> ``((B, T', 2 * hidden), (B,))``,
        zero on padded frames; ``output_dim = 2 * hidden``.
    """

    def __init__(self, encoder: nn.Module, projection: int, hidden: int, lstm_layers: int, dropout: float) -> None:
        super().__init__()
        encoder_dim = getattr(encoder, "output_dim", None)
        if not isinstance(encoder_dim, int):
            raise ValueError(f"RecurrentEncoder needs an encoder with an int output_dim, got {type(encoder).__name__}")
        self.encoder = encoder
        self.project = nn.Linear(encoder_dim, projection) if projection > 0 else nn.Identity()
        self.dropout = nn.Dropout(dropout)
        self.lstm = nn.LSTM(projection or encoder_dim, hidden, num_layers=lstm_layers, batch_first=True,
                            bidirectional=True, dropout=dropout if lstm_layers > 1 else 0.0)
        self.output_dim = 2 * hidden

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, T, F, C)``, ``(B,)`` -> ``(B, T', 2 * hidden)``, ``(B,)`` output lengths."""
        encoded, out_lengths = self.encoder(features, lengths)
        if encoded.dim() == 4:
            b, t, f, c = encoded.shape
            encoded = encoded.reshape(b, t, f * c)  # (B, T', F', C') -> (B, T', D)
        x = self.dropout(self.project(encoded))  # (B, T', D) -> (B, T', D_proj)
        packed = pack_padded_sequence(x, out_lengths.cpu(), batch_first=True, enforce_sorted=False)
        y, _ = self.lstm(packed)
        y, _ = pad_packed_sequence(y, batch_first=True, total_length=x.shape[1])  # (B, T', 2 * hidden)
        return y, out_lengths
