"""ConvEncoder: shapes, exact lengths, parity with plain torch modules, padding
invariance over generated configs, too-short policy, branches and TorchScript."""

from __future__ import annotations

import dataclasses
import math
import warnings

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from torch import nn

from speechconv import encoder, masking
from speechconv.encoder import ConvEncoder
from speechconv.encoder_config import EncoderConfig, LayerConfig

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _randomise_bn(enc: nn.Module, seed: int = 0) -> None:
    """Non-trivial running statistics and affine parameters, so eval is not identity BN."""
    g = torch.Generator().manual_seed(seed)
    for m in enc.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)


def _tf_same(length: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF SAME padding restated from TensorFlow's documentation (independent of shapes.py)."""
    out = math.ceil(length / stride)
    total = max((out - 1) * stride + kernel - length, 0)
    return total // 2, total - total // 2


def _axis_pad(padding, length: int, kernel: int, stride: int) -> tuple[int, int]:
    if padding == "same":
        return _tf_same(length, kernel, stride)
    if padding == "valid":
        return 0, 0
    return padding, padding


def _reference(enc: ConvEncoder, feats: torch.Tensor, layers: list[LayerConfig]) -> torch.Tensor:
    """One utterance through plain nn.Conv2d / nn.BatchNorm2d / activation with explicit
    F.pad, using the encoder's weights.  ``feats`` ``(T, F, C)`` -> ``(T', F', C')``."""
    x = feats.permute(2, 0, 1)[None]  # (T, F, C) -> (1, C, T, F)
    for lc, layer in zip(layers, enc.branches[0].layers, strict=True):
        kt, kf = layer.conv.kernel_size
        stt, stf = layer.conv.stride
        if lc.kind == "stack":
            pt, pf = "same", "valid"
        else:
            pt, pf = (lc.padding, lc.padding) if not isinstance(lc.padding, list) else lc.padding
        t0, t1 = _axis_pad(pt, x.shape[2], kt, stt)
        f0, f1 = _axis_pad(pf, x.shape[3], kf, stf)
        x = nn.functional.pad(x, (f0, f1, t0, t1))
        conv = nn.Conv2d(x.shape[1], lc.filters, (kt, kf), (stt, stf), bias=not lc.batch_norm)
        conv.load_state_dict(layer.conv.state_dict())
        x = conv(x)
        if lc.batch_norm:
            bn = nn.BatchNorm2d(lc.filters)
            bn.load_state_dict(layer.norm.state_dict())
            bn.train(enc.training)
            x = bn(x)
        x = {"relu": torch.relu, "gelu": nn.functional.gelu, "silu": nn.functional.silu,
             "tanh": torch.tanh, "none": lambda v: v}[lc.activation](x)
    return x[0].permute(1, 2, 0)  # (C', T', F') -> (T', F', C')


# ------------------------------------------------------------------ default shapes


@pytest.mark.parametrize("num_frames", [1, 2, 3, 4, 5, 17, 100, 101])
def test_default_is_weiss2017_front(num_frames: int) -> None:
    enc = ConvEncoder().eval()
    out, out_len = enc(torch.randn(2, num_frames, 80, 3), torch.tensor([num_frames, max(num_frames - 1, 1)]))
    assert out.shape == (2, math.ceil(num_frames / 4), 20, 32)
    assert out_len.tolist() == [math.ceil(num_frames / 4), math.ceil(max(num_frames - 1, 1) / 4)]
    assert enc.output_dim == 640 and enc.subsampling == 4 and enc.min_input_frames == 1
    convs = [m for m in enc.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.stride) for c in convs] == [
        (3, 32, (3, 3), (2, 2)), (32, 32, (3, 3), (2, 2))]
    assert all(c.bias is None for c in convs), "batch norm makes the conv bias redundant"
    assert sum(isinstance(m, nn.BatchNorm2d) for m in enc.modules()) == 2


def test_conv_bias_only_without_batch_norm() -> None:
    cfg = EncoderConfig(layers=[LayerConfig(batch_norm=False), LayerConfig(batch_norm=True)])
    convs = [m for m in ConvEncoder(cfg).modules() if isinstance(m, nn.Conv2d)]
    assert convs[0].bias is not None and convs[1].bias is None


def test_flatten_order_is_freq_major_channel_minor() -> None:
    torch.manual_seed(0)
    enc, flat = ConvEncoder().eval(), ConvEncoder(flatten=True).eval()
    flat.load_state_dict(enc.state_dict())
    x, lengths = torch.randn(2, 21, 80, 3), torch.tensor([21, 13])
    out, _ = enc(x, lengths)
    out_flat, _ = flat(x, lengths)
    assert out_flat.shape == (2, 6, 640) and flat.output_dim == 640
    f, c = 7, 5
    torch.testing.assert_close(out_flat[:, :, f * 32 + c], out[:, :, f, c], rtol=0, atol=0)


def test_valid_padding_shapes() -> None:
    cfg = EncoderConfig(layers=[LayerConfig(padding="valid"), LayerConfig(padding="valid")])
    enc = ConvEncoder(cfg).eval()
    assert enc.min_input_frames == 7 and enc.out_freq == 19
    out, out_len = enc(torch.randn(3, 30, 80, 3), torch.tensor([30, 7, 8]))
    # (T - 3) // 2 + 1 twice, written out: 30 -> 14 -> 6, 7 -> 3 -> 1, 8 -> 3 -> 1.
    assert out.shape == (3, 6, 19, 32) and out_len.tolist() == [6, 1, 1]


# ------------------------------------------------------ parity with plain modules


@pytest.mark.parametrize("padding", ["same", "valid", 1, 2])
def test_eval_matches_plain_modules_per_utterance(padding) -> None:
    torch.manual_seed(1)
    layers = [LayerConfig(padding=padding), LayerConfig(padding=padding, kernel=[5, 3], stride=[3, 2])]
    enc = ConvEncoder(EncoderConfig(layers=layers))
    _randomise_bn(enc)
    enc.eval()
    lengths = torch.tensor([40, 37, 29, 30, 31, 11])
    x = torch.randn(len(lengths), 40, 80, 3)
    out, out_len = enc(x, lengths)
    for b, n in enumerate(lengths.tolist()):
        ref = _reference(enc, x[b, :n], layers)
        assert int(out_len[b]) == ref.shape[0]
        torch.testing.assert_close(out[b, : ref.shape[0]], ref, rtol=1e-5, atol=1e-5)
        assert (out[b, ref.shape[0]:] == 0).all()


def test_train_without_padding_matches_plain_modules() -> None:
    """Equal lengths: the masked batch norm is nn.BatchNorm2d, outputs and running stats."""
    torch.manual_seed(2)
    layers = [LayerConfig(), LayerConfig(activation="gelu")]
    enc = ConvEncoder(EncoderConfig(layers=layers)).train()
    x = torch.randn(4, 23, 80, 3)
    ref_mods = []
    ref = x.permute(0, 3, 1, 2)  # (B, T, F, C) -> (B, C, T, F)
    for lc, layer in zip(layers, enc.branches[0].layers, strict=True):
        ref = nn.functional.pad(ref, (*_tf_same(ref.shape[3], 3, 2), *_tf_same(ref.shape[2], 3, 2)))
        conv, bn = nn.Conv2d(ref.shape[1], 32, 3, 2, bias=False), nn.BatchNorm2d(32)
        conv.load_state_dict(layer.conv.state_dict())
        ref = bn(conv(ref))
        ref = torch.relu(ref) if lc.activation == "relu" else nn.functional.gelu(ref)
        ref_mods.append(bn)
    out, _ = enc(x, torch.full((4,), 23))
    torch.testing.assert_close(out, ref.permute(0, 2, 3, 1), rtol=1e-5, atol=1e-5)  # (B, C, T, F) -> (B, T, F, C)
    for bn, layer in zip(ref_mods, enc.branches[0].layers, strict=True):
        torch.testing.assert_close(layer.norm.running_mean, bn.running_mean)
        torch.testing.assert_close(layer.norm.running_var, bn.running_var)


# --------------------------------------------------------- generated configurations

PADDINGS = st.one_of(st.sampled_from(["same", "valid"]), st.integers(0, 2))


@st.composite
def layer_configs(draw) -> LayerConfig:
    if draw(st.integers(0, 4)) == 0:
        return LayerConfig(kind="stack", frames=draw(st.integers(1, 4)), filters=draw(st.integers(2, 5)),
                           batch_norm=draw(st.booleans()))
    return LayerConfig(
        filters=draw(st.integers(2, 5)),
        kernel=[draw(st.integers(1, 5)), draw(st.integers(1, 5))],
        stride=[draw(st.integers(1, 3)), draw(st.integers(1, 3))],
        padding=draw(st.one_of(PADDINGS, st.lists(PADDINGS, min_size=2, max_size=2))),
        batch_norm=draw(st.booleans()),
        activation=draw(st.sampled_from(["relu", "gelu", "silu", "tanh", "none"])),
    )


@st.composite
def encoders_and_batches(draw):
    layers = draw(st.lists(layer_configs(), min_size=1, max_size=3))
    in_freq, in_ch = draw(st.integers(5, 16)), draw(st.integers(1, 3))
    try:
        enc = ConvEncoder(EncoderConfig(layers=layers), input_freq=in_freq, input_channels=in_ch)
    except ValueError:
        assume(False)
    m = enc.min_input_frames
    lengths = draw(st.lists(st.integers(m, m + 14), min_size=2, max_size=4))
    extra = draw(st.integers(0, 5))
    seed = draw(st.integers(0, 2**16))
    return enc, layers, torch.tensor(lengths), extra, seed


def _batch(lengths: torch.Tensor, num_frames: int, enc: ConvEncoder, seed: int) -> torch.Tensor:
    """Random features with garbage (not zeros) past each length: it must be ignored."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(len(lengths), num_frames, enc.input_freq, enc.input_channels, generator=g)
    pad = torch.arange(num_frames)[None, :] >= lengths[:, None]  # (B, T)
    return torch.where(pad[:, :, None, None], torch.full_like(x, 1e3), x)


@SETTINGS
@given(encoders_and_batches())
def test_eval_batch_equals_alone_and_lengths_exact(case) -> None:
    enc, layers, lengths, extra, seed = case
    _randomise_bn(enc, seed)
    enc.eval()
    x = _batch(lengths, int(lengths.max()) + extra, enc, seed)
    with torch.no_grad():
        out, out_len = enc(x, lengths)
    assert out_len.tolist() == enc.output_lengths(lengths).tolist()
    assert out.shape[1] == enc.output_lengths(torch.tensor([x.shape[1]])).item()
    for b, n in enumerate(lengths.tolist()):
        with torch.no_grad():
            alone, alone_len = enc(x[b : b + 1, :n], lengths[b : b + 1])
        t = int(out_len[b])
        assert int(alone_len) == t == alone.shape[1]
        torch.testing.assert_close(out[b, :t], alone[0], rtol=0, atol=1e-5)
        assert (out[b, t:] == 0).all(), "frames past the output length must be exactly zero"
        ref = _reference(enc, x[b, :n], layers)
        torch.testing.assert_close(alone[0], ref, rtol=1e-4, atol=1e-4)


@SETTINGS
@given(encoders_and_batches())
def test_train_extra_padding_changes_nothing(case) -> None:
    enc, _, lengths, extra, seed = case
    assume(extra > 0)
    enc.train()
    twin = ConvEncoder(enc.config, enc.input_freq, enc.input_channels).train()
    twin.load_state_dict(enc.state_dict())
    tight = _batch(lengths, int(lengths.max()), enc, seed)
    loose = torch.cat([tight, torch.randn(len(lengths), extra, *tight.shape[2:])], dim=1)  # (B, T+e, F, C)
    try:
        out_a, len_a = enc(tight, lengths)
    except ValueError as err:  # a single valid value per channel cannot be batch-normalised
        assume("more than 1 valid value" not in str(err))
        raise
    out_b, len_b = twin(loose, lengths)
    assert len_a.tolist() == len_b.tolist()
    for b, t in enumerate(len_a.tolist()):
        torch.testing.assert_close(out_b[b, :t], out_a[b, :t], rtol=1e-5, atol=1e-5)
        assert (out_b[b, t:] == 0).all() and (out_a[b, t:] == 0).all()
    for (name, a), (_, b) in zip(enc.state_dict().items(), twin.state_dict().items(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=f"{name} differs after one step")


# ------------------------------------------------------------------- too short


def test_too_short_error_names_index_length_and_minimum() -> None:
    cfg = EncoderConfig(layers=[LayerConfig(padding="valid"), LayerConfig(padding="valid")])
    enc = ConvEncoder(cfg)
    with pytest.raises(ValueError, match=r"utterance 1 .* 6 frames.* at least 7 frames"):
        enc(torch.randn(3, 10, 80, 3), torch.tensor([10, 6, 0]))
    with pytest.raises(ValueError, match=r"utterance 0 .* 0 frames.* at least 1 frames"):
        ConvEncoder()(torch.randn(1, 4, 80, 3), torch.tensor([0]))


def test_too_short_pad_gives_the_output_of_the_minimum() -> None:
    layers = [LayerConfig(padding="valid"), LayerConfig(padding="valid")]
    enc = ConvEncoder(EncoderConfig(layers=layers, too_short="pad"))
    _randomise_bn(enc)
    enc.eval()
    x = torch.randn(3, 5, 80, 3)  # T = 5 < 7: the batch itself is too short
    out, out_len = enc(x, torch.tensor([5, 0, 3]))
    assert out_len.tolist() == [1, 1, 1] and out.shape == (3, 1, 19, 32)
    zero_padded = torch.zeros(7, 80, 3)
    zero_padded[:5] = x[0]
    torch.testing.assert_close(out[0], _reference(enc, zero_padded, layers), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out[1], _reference(enc, torch.zeros(7, 80, 3), layers), rtol=1e-5, atol=1e-5)
    assert enc.output_lengths(torch.tensor([5, 0, 11])).tolist() == [1, 1, 2]  # 11 -> 5 -> 2
    same = ConvEncoder(EncoderConfig(too_short="pad")).eval()
    assert same(torch.randn(1, 3, 80, 3), torch.tensor([0]))[1].tolist() == [1]


def test_bad_inputs_raise_clear_errors() -> None:
    enc = ConvEncoder()
    with pytest.raises(ValueError, match=r"expected features \(B, T, 80, 3\)"):
        enc(torch.randn(2, 10, 40, 3), torch.tensor([10, 10]))
    with pytest.raises(ValueError, match=r"lengths\[1\]=11 is outside \[0, 10\]"):
        enc(torch.randn(2, 10, 80, 3), torch.tensor([10, 11]))
    with pytest.raises(ValueError, match="integers"):
        enc(torch.randn(2, 10, 80, 3), torch.tensor([10.0, 9.0]))


def test_freq_kernel_larger_than_input_is_a_config_error() -> None:
    cfg = EncoderConfig(layers=[LayerConfig(stride=[2, 8], padding="valid"), LayerConfig(kernel=[3, 11], padding=[1, 0])])
    with pytest.raises(ValueError, match=r"layers\.1: frequency kernel 11 is larger than the 10 rows"):
        ConvEncoder(cfg)


# ------------------------------------------------------------------ branches


@pytest.mark.parametrize("fusion", ["mix", "gated"])
def test_two_branches_fuse_flattened_outputs(fusion: str) -> None:
    torch.manual_seed(3)
    # Main: 2 x stride 2 SAME -> ceil(ceil(T/2)/2) = ceil(T/4), D = 20*32 = 640.
    # Branch: stack 4 frames -> ceil(T/4), F' = 1, 640 filters.
    cfg = EncoderConfig(branch=[LayerConfig(kind="stack", frames=4, filters=640)], fusion=fusion)
    enc = ConvEncoder(cfg).eval()
    assert enc.output_dim == 640
    x, lengths = torch.randn(3, 26, 80, 3), torch.tensor([26, 9, 1])
    out, out_len = enc(x, lengths)
    assert out.shape == (3, 7, 640) and out_len.tolist() == [7, 3, 1]
    main, _ = enc.branches[0](x.permute(0, 3, 1, 2), lengths)  # (B, T, F, C) -> (B, C, T, F)
    side, _ = enc.branches[1](x.permute(0, 3, 1, 2), lengths)
    main = main.permute(0, 2, 3, 1).reshape(3, 7, 640)  # (B, C', T', F') -> (B, T', F'*C')
    side = side.permute(0, 2, 3, 1).reshape(3, 7, 640)
    # Both fusions start as the plain average.
    torch.testing.assert_close(out, (main + side) / 2, rtol=1e-6, atol=1e-6)
    for b, t in enumerate(out_len.tolist()):
        assert (out[b, t:] == 0).all()


def test_branches_that_cannot_agree_are_rejected() -> None:
    cfg = EncoderConfig(branch=[LayerConfig(kind="stack", frames=3, filters=640)])
    with pytest.raises(ValueError, match=r"T' = ceil\(ceil\(T/2\)/2\).*T' = ceil\(T/3\)"):
        ConvEncoder(cfg)
    cfg = EncoderConfig(branch=[LayerConfig(kind="stack", frames=4, filters=64)])
    with pytest.raises(ValueError, match=r"D = 20\*32 = 640.*D = 1\*64 = 64"):
        ConvEncoder(cfg)


# ----------------------------------------------------------------- TorchScript


@pytest.mark.parametrize("branch", [False, True])
def test_torchscript_matches_eager(branch: bool) -> None:
    torch.manual_seed(4)
    cfg = EncoderConfig(branch=[LayerConfig(kind="stack", frames=4, filters=640)] if branch else None,
                        fusion="gated")
    enc = ConvEncoder(cfg)
    _randomise_bn(enc)
    x, lengths = torch.randn(3, 30, 80, 3), torch.tensor([30, 17, 4])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated on torch 2.14; it still works
        scripted = torch.jit.script(enc)
    for train in (False, True):
        enc.train(train)
        scripted.train(train)
        want, want_len = enc(x, lengths)
        got, got_len = scripted(x, lengths)
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
        assert got_len.tolist() == want_len.tolist()
    with pytest.raises(Exception, match="at least 1 frames"):
        scripted(x, torch.tensor([30, 0, 4]))


def test_single_channel_single_row_batch_equals_alone() -> None:
    """The case hypothesis found: one input channel and one output frequency row hit a
    oneDNN conv bug on channels_last strides (see masking.conv_layout)."""
    layers = [LayerConfig(filters=2, kernel=[1, 4], stride=[1, 2], padding="valid", batch_norm=False)]
    enc = ConvEncoder(EncoderConfig(layers=layers), input_freq=5, input_channels=1).eval()
    x, lengths = torch.randn(2, 6, 5, 1), torch.tensor([1, 2])
    with torch.no_grad():
        out, _ = enc(x, lengths)
        for b, n in enumerate(lengths.tolist()):
            torch.testing.assert_close(out[b, :n], _reference(enc, x[b, :n], layers), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("padding", ["same", "valid", 2])
def test_input_gradients_batch_equals_alone(padding) -> None:
    """With autograd on the features (the index-gather padding path), outputs and input
    gradients of each utterance are those it gets alone; padding frames get no gradient."""
    torch.manual_seed(8)
    layers = [LayerConfig(padding=padding), LayerConfig(padding=padding, activation="tanh", batch_norm=False)]
    enc = ConvEncoder(EncoderConfig(layers=layers))
    _randomise_bn(enc)
    enc.eval()
    lengths = torch.tensor([19, 12, 8])
    x = torch.randn(3, 21, 80, 3, requires_grad=True)
    out, out_len = enc(x, lengths)
    weights = torch.randn_like(out)
    (out * weights).sum().backward()
    assert (x.grad[1, 12:] == 0).all() and (x.grad[2, 8:] == 0).all() and (x.grad[0, 19:] == 0).all()
    for b, n in enumerate(lengths.tolist()):
        xb = x[b : b + 1, :n].detach().requires_grad_(True)
        alone, _ = enc(xb, lengths[b : b + 1])
        t = int(out_len[b])
        torch.testing.assert_close(out[b, :t], alone[0], rtol=1e-5, atol=1e-5)
        (alone * weights[b : b + 1, :t]).sum().backward()
        torch.testing.assert_close(x.grad[b, :n], xb.grad[0], rtol=1e-5, atol=1e-5)


def test_torchscript_train_gradients_match_eager() -> None:
    """Training under TorchScript takes autograd of masked sums instead of the eager
    path's hand-written backward (masking._MaskedBatchNormFn, _PadPerUtterance): the same
    parameter and input gradients.  In float64: in float32 both are within ~5e-5 of the
    float64 gradients (weight gradients up to ~150), but not of each other at 1e-5."""
    torch.manual_seed(12)
    layers = [LayerConfig(), LayerConfig(activation="gelu")]
    enc = ConvEncoder(EncoderConfig(layers=layers)).double().train()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated on torch 2.14; it still works
        scripted = torch.jit.script(ConvEncoder(EncoderConfig(layers=layers)).double().train())
    scripted.load_state_dict(enc.state_dict())
    x, lengths = torch.randn(3, 30, 80, 3, dtype=torch.float64), torch.tensor([30, 17, 9])
    grads = []
    for model in (enc, scripted):
        xg = x.clone().requires_grad_(True)
        out, _ = model(xg, lengths)
        (out * torch.linspace(-1, 1, out.shape[-1], dtype=torch.float64)).sum().backward()
        grads.append([xg.grad] + [p.grad for p in model.parameters()])
    for want, got in zip(*grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def _layer_by_layer(enc: ConvEncoder) -> list:
    """Forward hooks on every layer make ConvBranch call each layer as a module (no layer
    writes into the next one's padded input): the reference for the placed path."""
    return [layer.register_forward_hook(lambda *args: None) for br in enc.branches for layer in br.layers]


@settings(SETTINGS, max_examples=60)
@given(encoders_and_batches(), st.floats(0.0, 0.5), st.booleans(),
       st.lists(st.sampled_from(["relu", "relu", "none", "gelu"]), min_size=3, max_size=3),
       st.lists(st.booleans(), min_size=3, max_size=3))
def test_placed_outputs_equal_layer_by_layer(case, dropout, train, activations, norms) -> None:
    """Layers writing their outputs straight into the next conv's padded input
    (ConvBranch._forward_placed) give the outputs, input and parameter gradients and
    running statistics of the layers run one by one, bit for bit, in training (autograd)
    and in eval (no autograd; the chained path, tested below, switched off); dropout and
    non-ReLU activations fall back to the copy.  Stacks of 2-3 layers, mostly ReLU (the
    activation that is placed), one layer in two with dropout."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(encoder.ConvBranch, "_can_chain", lambda self: False)
        _check_placed_equals_layer_by_layer(case, dropout, train, activations, norms)


def _check_placed_equals_layer_by_layer(case, dropout, train, activations, norms) -> None:
    enc, layers, lengths, extra, seed = case
    assume(len(layers) >= 2)
    layers = [dataclasses.replace(lc, activation=act, batch_norm=norm, dropout=dropout if i % 2 else 0.0)
              for i, (lc, act, norm) in enumerate(zip(layers, activations, norms, strict=False))]
    enc = ConvEncoder(EncoderConfig(layers=layers), enc.input_freq, enc.input_channels)
    _randomise_bn(enc, seed)
    twin = ConvEncoder(enc.config, enc.input_freq, enc.input_channels)
    twin.load_state_dict(enc.state_dict())
    handles = _layer_by_layer(twin)
    x = _batch(lengths, int(lengths.max()) + extra, enc, seed)
    results = []
    for model in (enc, twin):
        model.train(train)
        xg = x.clone().requires_grad_(train)
        torch.manual_seed(seed)  # the same dropout masks
        try:
            with torch.set_grad_enabled(train):
                out, out_len = model(xg, lengths)
        except ValueError as err:  # a single valid value per channel cannot be batch-normalised
            assume("more than 1 valid value" not in str(err))
            raise
        if train:
            (out * torch.linspace(-1, 1, out.numel()).view(out.shape)).sum().backward()
            results.append([out.detach(), out_len, xg.grad, *(p.grad for p in model.parameters()),
                            *model.buffers()])
        else:
            results.append([out, out_len])
    for a, b in zip(*results, strict=True):
        assert (a is None and b is None) or torch.equal(a, b)
    for h in handles:
        h.remove()


@settings(SETTINGS, max_examples=60)
@given(encoders_and_batches(), st.lists(st.sampled_from(["relu", "relu", "none", "gelu", "tanh"]), min_size=3,
                                        max_size=3),
       st.lists(st.booleans(), min_size=3, max_size=3), st.sampled_from([1, 40, 10**9]))
def test_chained_eval_equals_layer_by_layer(case, activations, norms, budget) -> None:
    """Eval without autograd chains the convs (ConvBranch._forward_chained: each conv's
    output is the next conv's padded input, utterances in groups of at most ``budget``
    output elements, each group cut to its longest utterance).  Every utterance's output
    equals the layers run one by one, and frames past each output length are exactly 0.

    Not bit for bit: the chained buffers, the groups and the cut change the shapes the
    convs run on, and oneDNN chooses its kernels (and so its summation order) by shape.
    Measured over 120 of these cases: 37 bit for bit, the rest at most 3.6e-7 apart at
    outputs up to 1.7 (a few float32 ulps); the tolerance is the issue's
    batched-equals-alone one (1e-5)."""
    enc, layers, lengths, extra, seed = case
    layers = [dataclasses.replace(lc, activation=act, batch_norm=norm)
              for lc, act, norm in zip(layers, activations, norms, strict=False)]
    enc = ConvEncoder(EncoderConfig(layers=layers), enc.input_freq, enc.input_channels).eval()
    _randomise_bn(enc, seed)
    twin = ConvEncoder(enc.config, enc.input_freq, enc.input_channels).eval()
    twin.load_state_dict(enc.state_dict())
    handles = _layer_by_layer(twin)
    x = _batch(lengths, int(lengths.max()) + extra, enc, seed)
    groups = []
    chain_group = encoder.ConvBranch._chain_group
    with pytest.MonkeyPatch.context() as mp, torch.no_grad():
        mp.setattr(encoder, "CHAIN_GROUP_ELEMENTS", budget)
        mp.setattr(encoder.ConvBranch, "_chain_group",
                   lambda self, *args: groups.append(args[0].shape[0]) or chain_group(self, *args))
        out, out_len = enc(x, lengths)
        want, want_len = twin(x, lengths)
    assert (sum(groups) == len(lengths)) or not enc.branches[0].freq_sizes, "the chained path did not run"
    assert out.shape == want.shape and torch.equal(out_len, want_len)
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)
    for b, t in enumerate(out_len.tolist()):
        assert (out[b, t:] == 0).all()
    for h in handles:
        h.remove()


def test_chained_eval_runs_for_the_default_encoder() -> None:
    """The default encoder in eval under no_grad or inference_mode takes the chained path;
    with autograd recording, or with a hook on a layer, it does not."""
    enc, calls = ConvEncoder().eval(), []
    original = encoder.ConvBranch._chain_group

    def counting(self, *args):
        calls.append(1)
        return original(self, *args)

    x, lengths = torch.randn(3, 40, 80, 3), torch.tensor([40, 31, 22])
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(encoder.ConvBranch, "_chain_group", counting)
        with torch.no_grad():
            enc(x, lengths)
        with torch.inference_mode():
            enc(x, lengths)
        assert len(calls) == 2
        enc(x, lengths)
        handle = enc.branches[0].layers[1].register_forward_hook(lambda *args: None)
        with torch.no_grad():
            enc(x, lengths)
        handle.remove()
        assert len(calls) == 2


def test_empty_batch_and_submodule_hooks_in_eval() -> None:
    """Found in review of the chained path: an empty batch in eval under no_grad gives an
    empty output (it raised in lengths.max()), and a hook on a layer's submodule (here
    its activation) sees the layer-by-layer tensor, not the chained buffer."""
    enc = ConvEncoder().eval()
    with torch.no_grad():
        out, out_len = enc(torch.randn(0, 20, 80, 3), torch.zeros(0, dtype=torch.long))
    assert out.shape == (0, 5, 20, 32) and out_len.shape == (0,)
    seen = []
    handle = enc.branches[0].layers[0].act.register_forward_hook(lambda m, i, o: seen.append(tuple(o.shape)))
    with torch.no_grad():
        enc(torch.randn(2, 30, 80, 3), torch.tensor([30, 21]))
    handle.remove()
    assert seen == [(2, 32, 15, 40)]


def test_placed_path_runs_for_the_default_encoder() -> None:
    """The default encoder's first layer writes into the second conv's buffer in training
    and in eval: pad_per_utterance (the copy) runs once per forward, for the first conv."""
    enc, calls = ConvEncoder(), []
    original = masking.pad_per_utterance

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    x, lengths = torch.randn(3, 40, 80, 3), torch.tensor([40, 31, 22])
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(masking, "pad_per_utterance", counting)
        mp.setattr(encoder.ConvBranch, "_can_chain", lambda self: False)  # eval: the placed path
        enc.train()(x, lengths)[0].sum().backward()
        with torch.no_grad():
            enc.eval()(x, lengths)
        assert len(calls) == 2
        handles = _layer_by_layer(enc)
        with torch.no_grad():
            enc(x, lengths)
        assert len(calls) == 4, "with hooks every layer pads its own input"
        for h in handles:
            h.remove()


def test_a_layer_with_a_backward_hook_is_called_as_a_module() -> None:
    """A full backward hook on a layer sees its output gradient: the placed path, which
    does not call the layer as a module, steps aside for it."""
    enc, seen = ConvEncoder().train(), []
    enc.branches[0].layers[0].register_full_backward_hook(lambda mod, gin, gout: seen.append(gout[0].shape))
    enc(torch.randn(2, 40, 80, 3, requires_grad=True), torch.tensor([40, 33]))[0].sum().backward()
    assert seen == [torch.Size([2, 32, 20, 40])]


# torch.backends.mkldnn.flags() also sets oneDNN's TF32 switch, which warns that this build
# has no Intel GPU support; it changes nothing on this CPU.
@pytest.mark.filterwarnings("ignore:TF32 acceleration on top of oneDNN:UserWarning")
@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("case", ["one input channel", "one filter then a one-row conv"])
def test_single_channel_buffers_avoid_the_onednn_bug(case, train) -> None:
    """Padded and placed buffers with one channel get contiguous strides (conv_layout):
    with channels_last strides, oneDNN on torch 2.14.1 computes a conv with one input
    channel and one output frequency row wrongly for B > 1, and on an uninitialised
    buffer that gives NaN.  Compared with PyTorch's native convolution."""
    if case == "one input channel":
        layers, channels = [LayerConfig(filters=2, kernel=[1, 4], stride=[1, 2], padding="valid"),
                            LayerConfig(filters=2, kernel=[1, 1], stride=[1, 1])], 1
    else:
        layers, channels = [LayerConfig(filters=1, kernel=[1, 1], stride=[1, 1]),
                            LayerConfig(filters=2, kernel=[1, 4], stride=[1, 2], padding="valid")], 2
    torch.manual_seed(0)
    enc = ConvEncoder(EncoderConfig(layers=layers), input_freq=5, input_channels=channels).train(train)
    x, lengths = torch.randn(3, 9, 5, channels), torch.tensor([9, 7, 8])
    outs = []
    for onednn in (True, False):
        with torch.backends.mkldnn.flags(enabled=onednn), torch.set_grad_enabled(train):
            outs.append(enc(x, lengths)[0].detach())
    assert torch.isfinite(outs[0]).all()
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-5)


def test_monte_carlo_dropout_in_eval_mode_is_kept() -> None:
    """Dropout modules switched to training inside an eval-mode encoder (Monte Carlo
    dropout) still drop: the placed path steps aside for them, so the output equals the
    layers run one by one under the same seed."""
    enc = ConvEncoder(EncoderConfig(layers=[LayerConfig(dropout=0.5), LayerConfig(dropout=0.5)])).eval()
    for module in enc.modules():
        if isinstance(module, nn.Dropout):
            module.train()
    x, lengths = torch.randn(2, 40, 80, 3), torch.tensor([40, 33])
    outs = []
    for hooked in (False, True):
        handles = _layer_by_layer(enc) if hooked else []
        torch.manual_seed(1)
        with torch.no_grad():
            outs.append(enc(x, lengths)[0])
        for h in handles:
            h.remove()
    assert torch.equal(outs[0], outs[1])
