"""Weiss2017Encoder against nn.LSTM, a hand-written ConvLSTM, parameter formulas,
single-utterance runs and TorchScript."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from speechconv import ConvEncoder, EncoderConfig, LayerConfig, Weiss2017Config, Weiss2017Encoder
from speechconv.weiss2017 import BiConvLSTM


def _n(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _mask(lengths: torch.Tensor, t: int) -> torch.Tensor:
    return torch.arange(t)[None, :] < lengths[:, None]


def _random_lengths(draw_lengths: list[int]) -> tuple[torch.Tensor, int]:
    lengths = torch.tensor(draw_lengths)
    return lengths, int(lengths.max())


# ------------------------------------------------------------------------ ConvLSTM


@given(lengths=st.lists(st.integers(1, 7), min_size=1, max_size=4), f=st.integers(1, 4))
@settings(max_examples=25, deadline=None)
def test_convlstm_with_1x1_filter_is_an_lstm_per_frequency_row(lengths, f):
    """With kernel 1 the ConvLSTM is nn.LSTM on each frequency row, shared weights."""
    torch.manual_seed(0)
    c_in, c_h = 3, 4
    lens, t = _random_lengths(lengths)
    b = len(lengths)
    ours = BiConvLSTM(c_in, c_h, kernel=1)
    ref = torch.nn.LSTM(c_in, c_h, batch_first=True, bidirectional=True)
    with torch.no_grad():
        for suffix, conv_x, conv_h in (("", ours.input_fwd, ours.hidden_fwd), ("_reverse", ours.input_bwd,
                                                                                ours.hidden_bwd)):
            getattr(ref, f"weight_ih_l0{suffix}").copy_(conv_x.weight[:, :, 0])
            getattr(ref, f"weight_hh_l0{suffix}").copy_(conv_h.weight[:, :, 0])
            getattr(ref, f"bias_ih_l0{suffix}").copy_(conv_x.bias)
            getattr(ref, f"bias_hh_l0{suffix}").zero_()
    x = torch.randn(b, t, f, c_in)
    got = ours(x, _mask(lens, t))  # (B, T, F, 2C_h)
    rows = x.permute(0, 2, 1, 3).reshape(b * f, t, c_in)  # (B, T, F, C) -> (B, F, T, C) -> (B*F, T, C)
    packed = pack_padded_sequence(rows, lens.repeat_interleave(f), batch_first=True, enforce_sorted=False)
    y, _ = pad_packed_sequence(ref(packed)[0], batch_first=True, total_length=t)  # (B*F, T, 2C_h)
    want = y.reshape(b, f, t, 2 * c_h).permute(0, 2, 1, 3)  # (B*F, T, 2C_h) -> (B, F, T, 2C_h) -> (B, T, F, 2C_h)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def _naive_convlstm_direction(x: torch.Tensor, w_x: torch.Tensor, b_x: torch.Tensor, w_h: torch.Tensor) -> torch.Tensor:
    """One direction of a ConvLSTM on one unpadded utterance, written out by hand.

    x: (T, F, C_in); w_x: (4H, C_in, k); w_h: (4H, H, k). Returns (T, F, H).  Gate order
    i, f, g, o; zero padding of k // 2 bins on both sides of the frequency axis.
    """
    t_len, f_len, _ = x.shape
    h_dim, k = w_h.shape[1], w_h.shape[2]
    half = k // 2
    h = torch.zeros(f_len, h_dim)
    c = torch.zeros(f_len, h_dim)
    out = []
    for t in range(t_len):
        gates = torch.zeros(f_len, 4 * h_dim)
        for f in range(f_len):
            acc = b_x.clone()
            for j in range(k):
                src = f + j - half
                if 0 <= src < f_len:
                    acc = acc + w_x[:, :, j] @ x[t, src] + w_h[:, :, j] @ h[src]
            gates[f] = acc
        i, fg, g, o = gates.split(h_dim, dim=1)
        c = torch.sigmoid(fg) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        out.append(h)
    return torch.stack(out)


@given(lengths=st.lists(st.integers(1, 5), min_size=1, max_size=3), f=st.integers(1, 5),
       kernel=st.sampled_from([3, 5]))
@settings(max_examples=15, deadline=None)
def test_convlstm_matches_hand_written_recurrence(lengths, f, kernel):
    """Frequency coupling, and the backward direction starting at each utterance's
    last valid frame: each utterance is run alone, trimmed, through the naive loop."""
    torch.manual_seed(1)
    c_in, c_h = 2, 3
    lens, t = _random_lengths(lengths)
    ours = BiConvLSTM(c_in, c_h, kernel=kernel)
    x = torch.randn(len(lengths), t, f, c_in)
    got = ours(x, _mask(lens, t))
    for b, n in enumerate(lengths):
        xb = x[b, :n]
        fwd = _naive_convlstm_direction(xb, ours.input_fwd.weight, ours.input_fwd.bias, ours.hidden_fwd.weight)
        bwd = _naive_convlstm_direction(xb.flip(0), ours.input_bwd.weight, ours.input_bwd.bias,
                                        ours.hidden_bwd.weight).flip(0)
        torch.testing.assert_close(got[b, :n], torch.cat([fwd, bwd], dim=-1), rtol=1e-5, atol=1e-5)
        assert torch.all(got[b, n:] == 0)


# --------------------------------------------------------------- parameter counts


def _formula_counts(cfg: Weiss2017Config, front_freq: int, front_channels: int) -> dict[str, int]:
    """Per-layer parameter counts from the formulas (PyTorch LSTMs: b_ih and b_hh)."""
    c_h, k, h, p = cfg.convlstm_filters, cfg.convlstm_kernel, cfg.lstm_units, cfg.projection
    counts = {"convlstm": 2 * (4 * c_h * (front_channels + c_h) * k + 4 * c_h)}
    dim = front_freq * 2 * c_h
    for i in range(cfg.lstm_layers):
        counts[f"lstm{i}"] = 2 * (4 * h * (dim + h) + 8 * h)
        if cfg.project_last or i < cfg.lstm_layers - 1:
            counts[f"proj{i}"] = 2 * h * p + p + 2 * p  # linear weight + bias, batch norm scale + shift
            dim = p
        else:
            dim = 2 * h
    return counts


def _module_counts(enc: Weiss2017Encoder) -> dict[str, int]:
    counts = {"convlstm": _n(enc.convlstm)}
    for i, layer in enumerate(enc.lstms):
        counts[f"lstm{i}"] = _n(layer.lstm)
        if layer.norm is not None:
            counts[f"proj{i}"] = _n(layer.projection) + _n(layer.norm)
    return counts


def test_default_parameter_counts_match_formulas_and_docstring():
    enc = Weiss2017Encoder()
    cfg = enc.config
    # 80 bins through two SAME stride-2 layers: ceil(ceil(80 / 2) / 2) = 20 rows of 32 channels.
    formula = _formula_counts(cfg, front_freq=20, front_channels=32)
    assert _module_counts(enc) == formula
    assert _n(enc) == _n(enc.front) + sum(formula.values())
    assert _n(enc.front) == _n(ConvEncoder())
    for count in (formula["convlstm"], formula["lstm0"], formula["lstm1"], formula["proj0"]):
        assert f"{count:,}" in Weiss2017Encoder.__doc__, f"docstring table lacks {count:,}"
    assert formula["lstm1"] == formula["lstm2"]


@given(c_h=st.integers(1, 4), k=st.sampled_from([1, 3]), layers=st.integers(1, 3), units=st.integers(1, 5),
       proj=st.integers(1, 6), last=st.booleans(), f_in=st.integers(8, 24))
@settings(max_examples=20, deadline=None)
def test_parameter_counts_match_formulas_for_other_sizes(c_h, k, layers, units, proj, last, f_in):
    front = EncoderConfig(layers=[LayerConfig(filters=5), LayerConfig(filters=6)])
    cfg = Weiss2017Config(convlstm_filters=c_h, convlstm_kernel=k, lstm_layers=layers, lstm_units=units,
                          projection=proj, project_last=last)
    enc = Weiss2017Encoder(cfg, input_freq=f_in, front=front)
    front_freq = math.ceil(math.ceil(f_in / 2) / 2)
    assert _module_counts(enc) == _formula_counts(cfg, front_freq, 6)
    assert enc.output_dim == (proj if last else 2 * units)


# --------------------------------------------------------------------- the encoder


def _small_encoder() -> Weiss2017Encoder:
    front = EncoderConfig(layers=[LayerConfig(filters=8), LayerConfig(filters=8)])
    return Weiss2017Encoder(Weiss2017Config(convlstm_filters=4, lstm_layers=2, lstm_units=16, projection=24),
                            front=front)


def test_interface_matches_conv_front():
    enc = Weiss2017Encoder()
    assert enc.output_dim == 512
    assert enc.subsampling == enc.front.subsampling == 4
    assert enc.min_input_frames == enc.front.min_input_frames
    lengths = torch.tensor([1, 4, 5, 98, 100, 301])
    torch.testing.assert_close(enc.output_lengths(lengths), torch.div(lengths + 3, 4, rounding_mode="floor"))
    enc.eval()
    y, out_lengths = enc(torch.randn(2, 41, 80, 3), torch.tensor([41, 17]))
    assert y.shape == (2, 11, 512)
    assert out_lengths.tolist() == [11, 5]


def test_project_last_false_is_the_eight_layer_reading():
    enc = Weiss2017Encoder(Weiss2017Config(project_last=False))
    assert enc.output_dim == 2 * 256 == 512
    assert [layer.norm is not None for layer in enc.lstms] == [True, True, False]
    enc.eval()
    y, _ = enc(torch.randn(1, 12, 80, 3), torch.tensor([12]))
    assert y.shape == (1, 3, 512)


@pytest.mark.parametrize("make_encoder", [Weiss2017Encoder, _small_encoder])
def test_batched_equals_single_and_padding_is_zero(make_encoder):
    torch.manual_seed(0)
    enc = make_encoder()
    lengths = torch.tensor([57, 9, 33, 40])
    feats = torch.randn(4, 57, 80, 3)
    enc.train()
    for _ in range(2):  # move the batch norms' running statistics away from their init
        enc(feats, lengths)
    enc.eval()
    feats = feats.clone()
    feats[_mask(lengths, 57) == 0] = 7.0  # garbage padding must not leak into valid frames
    with torch.no_grad():
        y, out_lengths = enc(feats, lengths)
        for b, n in enumerate(lengths.tolist()):
            alone, alone_len = enc(feats[b:b + 1, :n], lengths[b:b + 1])
            m = int(out_lengths[b])
            assert alone_len.item() == m and alone.shape[1] == m
            torch.testing.assert_close(y[b, :m], alone[0], rtol=0, atol=1e-5)
            assert torch.all(y[b, m:] == 0)


@given(lengths=st.lists(st.integers(9, 40), min_size=1, max_size=3))
@settings(max_examples=8, deadline=None)
def test_batched_equals_single_over_generated_lengths(lengths):
    torch.manual_seed(2)
    enc = _small_encoder().eval()
    lens, t = _random_lengths(lengths)
    feats = torch.randn(len(lengths), t, 80, 3)
    with torch.no_grad():
        y, out_lengths = enc(feats, lens)
        for b, n in enumerate(lengths):
            alone, _ = enc(feats[b:b + 1, :n], lens[b:b + 1])
            m = int(out_lengths[b])
            torch.testing.assert_close(y[b, :m], alone[0], rtol=0, atol=1e-5)
            assert torch.all(y[b, m:] == 0)


def test_gradients_reach_every_parameter():
    enc = _small_encoder()
    y, _ = enc(torch.randn(2, 30, 80, 3), torch.tensor([30, 14]))
    y.pow(2).sum().backward()
    missing = [name for name, p in enc.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert not missing, f"no gradient for {missing}"


def test_config_errors_name_the_value():
    with pytest.raises(ValueError, match=r"weiss2017.convlstm_kernel=2 is invalid: expected an odd int"):
        Weiss2017Config(convlstm_kernel=2)
    with pytest.raises(ValueError, match=r"weiss2017.lstm_units=0"):
        Weiss2017Config(lstm_units=0)
    with pytest.raises(ValueError, match=r"front.branch must be null"):
        Weiss2017Encoder(front=EncoderConfig(branch=[LayerConfig(kind="stack", filters=32)]))
