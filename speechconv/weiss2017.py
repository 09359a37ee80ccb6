"""The whole encoder of Weiss et al. 2017, "Sequence-to-Sequence Models Can Directly
Translate Foreign Speech" (arXiv:1703.08581, Sec. 3):

    features (B, T, 80, 3)
    -> 2 conv layers, 32 filters 3x3, stride 2x2, batch norm, ReLU     (B, T/4, 20, 32)
    -> 1 bidirectional convolutional LSTM, 1x3 filter over frequency   (B, T/4, 20, 2*C_h)
    -> 3 bidirectional LSTMs, 256 units per direction, each followed by
       a 512-dim linear projection, batch norm and ReLU                (B, T/4, 512)

Layer count.  Sec. 3 of the paper says "the encoder is composed of a total of 8
layers" and describes 2 conv + 1 ConvLSTM + 3 BiLSTM layers (6 recurrent or conv
layers) "interleaved with a 512-dim linear projection, followed by batch norm and a
ReLU".  Our reading: "interleaved" puts a projection between consecutive BiLSTMs, i.e.
2 projections, and 6 + 2 = 8.  The last BiLSTM already emits 2 * 256 = 512 values, the
paper's "final 512-dim encoder representation" either way.  Our default
(``project_last=True``, as the project's brief asks) also projects after the last
BiLSTM (9 weight layers counted this way); ``project_last=False`` is the 8-layer
reading exactly.

The ConvLSTM's filter count is not given in the paper; we default to 32, the conv
front's width.

Everything respects lengths: the ConvLSTM's backward direction starts at each
utterance's last valid frame, the BiLSTMs run on packed sequences, batch norm uses
valid frames only, and padded output frames are exactly zero, so an utterance encodes
the same alone and in a batch (in eval mode).

Export: the conv front exports (:func:`speechconv.encoder.export_program`); the rest
does not trace with ``torch.export``, with static shapes or dynamic ones: the BiLSTMs
run on packed sequences (``pack_padded_sequence``, whose sizes depend on the lengths'
values) and the ConvLSTM is a Python loop over frames.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from speechconv import shapes
from speechconv.encoder import ConvEncoder
from speechconv.encoder_config import EncoderConfig, Weiss2017Config
from speechconv.masking import MaskedBatchNorm

__all__ = ["BiConvLSTM", "ProjectedBiLSTM", "Weiss2017Config", "Weiss2017Encoder", "convlstm_scan"]


# ------------------------------------------------------------------------- ConvLSTM


def convlstm_scan(gates_x: torch.Tensor, mask: torch.Tensor, weight_h: torch.Tensor, reverse: bool) -> torch.Tensor:
    """Run one direction of a convolutional LSTM over time.

    At each frame ``t`` the gates are ``conv_x(x_t) + conv_h(h_{t-1})`` (a 1-D conv over
    frequency of ``[x_t; h_{t-1}]``, split into its two halves so the input half is
    computed for all frames at once by the caller), in PyTorch's LSTM order
    ``i, f, g, o``: ``c_t = s(f) c_{t-1} + s(i) tanh(g)``, ``h_t = s(o) tanh(c_t)``.
    On padded frames the state is held, and for ``reverse=True`` the scan runs from
    ``T - 1`` down to 0 starting from zero state, so each utterance's backward pass
    effectively starts at its own last valid frame.

    Args:
        gates_x: ``(B, T, 4 * C, F)`` input contribution to the gates, bias included.
        mask: ``(B, T)`` bool, True on valid frames.
        weight_h: ``(4 * C, C, k)`` recurrent conv weight, ``k`` odd.
        reverse: scan backward in time.

    Returns:
        ``(B, T, C, F)`` hidden states, zero on padded frames.
    """
    b, t, g, f = gates_x.shape
    c_h = g // 4
    assert weight_h.shape[0] == g and weight_h.shape[1] == c_h, "weight_h must be (4C, C, k) for gates (B, T, 4C, F)"
    pad = weight_h.shape[2] // 2
    h = gates_x.new_zeros(b, c_h, f)
    c = gates_x.new_zeros(b, c_h, f)
    outs: list[torch.Tensor] = []
    for step in range(t):
        i = t - 1 - step if reverse else step
        gates = gates_x[:, i] + F.conv1d(h, weight_h, None, 1, pad)  # (B, 4C, F)
        in_gate, forget_gate, cell_gate, out_gate = gates.chunk(4, 1)
        c_new = torch.sigmoid(forget_gate) * c + torch.sigmoid(in_gate) * torch.tanh(cell_gate)
        h_new = torch.sigmoid(out_gate) * torch.tanh(c_new)
        valid = mask[:, i].view(b, 1, 1)  # (B,) -> (B, 1, 1)
        c = torch.where(valid, c_new, c)
        h = torch.where(valid, h_new, h)
        outs.append(torch.where(valid, h_new, torch.zeros_like(h_new)))
    if reverse:
        outs.reverse()
    return torch.stack(outs, dim=1)  # T x (B, C, F) -> (B, T, C, F)


class BiConvLSTM(nn.Module):
    """Bidirectional convolutional LSTM, convolving over frequency within each frame.

    Per direction the gate conv maps ``C_in + C_h`` channels to ``4 * C_h`` with a
    ``k``-wide kernel, held as an input conv (with the bias) and a recurrent conv (no
    bias).  Parameters per direction: ``4 * C_h * (C_in + C_h) * k + 4 * C_h``.

    Shapes:
        ``forward(x, mask)``: ``(B, T, F, C_in)``, ``(B, T)`` bool -> ``(B, T, F, 2 * C_h)``
        (forward direction's channels first), zero on padded frames.
    """

    def __init__(self, in_channels: int, hidden_channels: int, kernel: int) -> None:
        super().__init__()
        assert kernel % 2 == 1, f"ConvLSTM kernel must be odd, got {kernel}"
        self.hidden_channels = hidden_channels
        self.input_fwd = nn.Conv1d(in_channels, 4 * hidden_channels, kernel, padding=kernel // 2)
        self.input_bwd = nn.Conv1d(in_channels, 4 * hidden_channels, kernel, padding=kernel // 2)
        self.hidden_fwd = nn.Conv1d(hidden_channels, 4 * hidden_channels, kernel, padding=kernel // 2, bias=False)
        self.hidden_bwd = nn.Conv1d(hidden_channels, 4 * hidden_channels, kernel, padding=kernel // 2, bias=False)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``(B, T, F, C_in)``, ``(B, T)`` -> ``(B, T, F, 2 * C_h)``."""
        b, t, f, c = x.shape
        rows = x.reshape(b * t, f, c).transpose(1, 2)  # (B, T, F, C) -> (B*T, F, C) -> (B*T, C, F)
        g = 4 * self.hidden_channels
        gates_fwd = self.input_fwd(rows).reshape(b, t, g, f)  # (B*T, 4C_h, F) -> (B, T, 4C_h, F)
        gates_bwd = self.input_bwd(rows).reshape(b, t, g, f)  # (B*T, 4C_h, F) -> (B, T, 4C_h, F)
        h_fwd = convlstm_scan(gates_fwd, mask, self.hidden_fwd.weight, False)
        h_bwd = convlstm_scan(gates_bwd, mask, self.hidden_bwd.weight, True)
        h = torch.cat([h_fwd, h_bwd], dim=2)  # 2 x (B, T, C_h, F) -> (B, T, 2C_h, F)
        return h.transpose(2, 3)  # (B, T, 2C_h, F) -> (B, T, F, 2C_h)


# ------------------------------------------------------------------ BiLSTM layers


class ProjectedBiLSTM(nn.Module):
    """One bidirectional LSTM on packed sequences, then optionally a linear projection,
    masked batch norm and ReLU.

    Parameters, in PyTorch's two-bias convention (``b_ih`` and ``b_hh``, each ``4H``):
    ``2 * (4 * H * (I + H) + 8 * H)`` for the LSTM, plus ``2 * H * P + P`` for the
    projection and ``2 * P`` for batch norm when ``project``.

    Shapes:
        ``forward(x, lengths, mask)``: ``(B, T, I)``, ``(B,)``, ``(B, T)`` -> ``(B, T, D)``
        with ``D = P`` if ``project`` else ``2 * H``; zero on padded frames.
    """

    def __init__(self, input_dim: int, units: int, projection_dim: int, project: bool, dropout: float) -> None:
        super().__init__()
        self.project = project
        self.dropout = nn.Dropout(dropout)
        self.lstm = nn.LSTM(input_dim, units, batch_first=True, bidirectional=True)
        self.projection = nn.Linear(2 * units, projection_dim) if project else nn.Identity()
        self.norm = MaskedBatchNorm(projection_dim) if project else None
        self.output_dim = projection_dim if project else 2 * units

    def forward(self, x: torch.Tensor, lengths: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``(B, T, I)``, ``(B,)``, ``(B, T)`` -> ``(B, T, D)``."""
        packed = pack_padded_sequence(self.dropout(x), lengths.cpu(), batch_first=True, enforce_sorted=False)
        y, _ = self.lstm(packed)
        h, _ = pad_packed_sequence(y, batch_first=True, total_length=x.shape[1])  # (B, T, 2H), zero padded
        norm = self.norm
        if norm is None:
            return h
        y = norm(self.projection(h).transpose(1, 2), mask)  # (B, T, P) -> (B, P, T), zero on padding
        return torch.relu(y.transpose(1, 2))  # (B, P, T) -> (B, T, P)


# ------------------------------------------------------------------------- encoder


class Weiss2017Encoder(nn.Module):
    """The paper's whole 512-dim encoder (see the module docstring).

    Same interface as :class:`speechconv.ConvEncoder`: ``forward(features, lengths)``,
    ``output_dim``, ``subsampling``, ``min_input_frames``, ``output_lengths``.  Only the
    conv front changes lengths, so ``T'`` and the minimum input are the front's.

    Parameters per layer with the defaults (``I`` input, ``H`` units, ``P`` projection,
    ``C_in = 32`` and ``F' = 20`` from the front, ``C_h = 32``, ``k = 3``):

    ============================  =======================================  =========
    layer                         formula                                  count
    ============================  =======================================  =========
    conv front                    see :class:`speechconv.ConvEncoder`
    BiConvLSTM                    ``2 * (4 C_h (C_in + C_h) k + 4 C_h)``      49,408
    BiLSTM 1 (I = F' * 2 C_h)     ``2 * (4 H (I + H) + 8 H)``, I = 1280     3,149,824
    BiLSTM 2, 3 (I = P = 512)     ``2 * (4 H (I + H) + 8 H)``               1,576,960
    projection + BN, each         ``2 H P + P + 2 P``                         263,680
    ============================  =======================================  =========

    LSTMs use PyTorch's two-bias convention (``b_ih`` and ``b_hh`` per direction, so
    ``8 H`` biases where a one-bias LSTM has ``4 H``).  ``tests/test_weiss2017.py``
    recomputes every row from the formula and compares it with the module.

    Args:
        config: sizes past the conv front; ``None`` gives the paper's.
        input_freq: ``F`` of the features (80).
        input_channels: ``C`` of the features (3: log-mel, delta, delta-delta).
        front: the conv front; ``None`` gives the paper's (2 layers of 32 filters, 3x3,
            stride 2x2, SAME, batch norm, ReLU).  It must have no second branch: the
            ConvLSTM needs the ``(B, T', F', C')`` layout.

    Shapes:
        ``forward(features, lengths)``: ``(B, T, F, C)``, ``(B,)`` int64 ->
        ``(B, T', D)`` with ``D = output_dim``, zero on padded frames, and ``(B,)``
        int64 output lengths.
    """

    def __init__(self, config: Weiss2017Config | None = None, input_freq: int = 80, input_channels: int = 3,
                 front: EncoderConfig | None = None) -> None:
        super().__init__()
        config = config if config is not None else Weiss2017Config()
        config.validate()
        front = front if front is not None else EncoderConfig()
        if front.branch is not None:
            raise ValueError("Weiss2017Encoder front.branch must be null: the ConvLSTM convolves over the frequency "
                             "axis, which a fused branch flattens away; use a front without encoder.branch")
        self.config = config
        self.front = ConvEncoder(front, input_freq=input_freq, input_channels=input_channels)
        self.front_freq = self.front.out_freq
        self.front_channels = self.front.out_channels
        self.convlstm = BiConvLSTM(self.front_channels, config.convlstm_filters, config.convlstm_kernel)
        layers = []
        dim = self.front_freq * 2 * config.convlstm_filters
        for i in range(config.lstm_layers):
            project = config.project_last or i < config.lstm_layers - 1
            layer = ProjectedBiLSTM(dim, config.lstm_units, config.projection, project, config.dropout)
            layers.append(layer)
            dim = layer.output_dim
        self.lstms = nn.ModuleList(layers)
        self._output_dim = dim

    @property
    def output_dim(self) -> int:
        """``D`` of the output: ``projection``, or ``2 * lstm_units`` when the last
        BiLSTM is not projected."""
        return self._output_dim

    @property
    def subsampling(self) -> int:
        """Frames of input per output frame (the conv front's, 4 by default)."""
        return self.front.subsampling

    @property
    def min_input_frames(self) -> int:
        """Fewest input frames that give one output frame (the conv front's)."""
        return self.front.min_input_frames

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        """``(B,)`` input frames -> ``(B,)`` int64 output frames (the conv front's)."""
        return self.front.output_lengths(lengths)

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, T, F, C)``, ``(B,)`` -> ``(B, T', D)``, ``(B,)``."""
        x, out_lengths = self.front(features, lengths)  # (B, T', F', C')
        assert x.dim() == 4 and x.shape[2] == self.front_freq and x.shape[3] == self.front_channels, (
            "the conv front must return (B, T', F', C') matching shapes.py's frequency arithmetic"
        )
        mask = shapes.make_pad_mask(out_lengths, x.shape[1])  # (B, T')
        h = self.convlstm(x, mask)  # (B, T', F', 2C_h)
        b, t, f, c = h.shape
        y = h.reshape(b, t, f * c)  # (B, T', F', 2C_h) -> (B, T', F' * 2C_h)
        for layer in self.lstms:
            y = layer(y, out_lengths, mask)
        return y, out_lengths

