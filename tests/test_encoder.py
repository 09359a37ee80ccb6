"""ConvEncoder: shapes, exact lengths, parity with plain torch modules, padding
invariance over generated configs, too-short policy, branches, the grouped eval path
and the folded eval form."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from encoder_helpers import randomise_batch_norms
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from torch import nn

from speechconv import encoder, shapes
from speechconv.encoder import ConvEncoder, fold_batch_norms
from speechconv.encoder_config import EncoderConfig, LayerConfig

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


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
    if padding == "causal":
        return kernel - 1, 0
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
    assert sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in enc.modules()) == 2


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


@pytest.mark.parametrize("padding", ["same", "valid", "causal", 1, 2])
def test_eval_matches_plain_modules_per_utterance(padding) -> None:
    torch.manual_seed(1)
    layers = [LayerConfig(padding=padding), LayerConfig(padding=padding, kernel=[5, 3], stride=[3, 2])]
    enc = ConvEncoder(EncoderConfig(layers=layers))
    randomise_batch_norms(enc)
    enc.eval()
    lengths = torch.tensor([40, 37, 29, 30, 31, 11])
    x = torch.randn(len(lengths), 40, 80, 3)
    out, out_len = enc(x, lengths)
    for b, n in enumerate(lengths.tolist()):
        ref = _reference(enc, x[b, :n], layers)
        assert int(out_len[b]) == ref.shape[0]
        torch.testing.assert_close(out[b, : ref.shape[0]], ref, rtol=1e-5, atol=1e-5)
        assert (out[b, ref.shape[0]:] == 0).all()


@pytest.mark.parametrize("padding", [1, "same"])
def test_train_without_padding_matches_plain_modules(padding) -> None:
    """Equal lengths: the masked batch norm is nn.BatchNorm2d, outputs and running stats."""
    torch.manual_seed(2)
    layers = [LayerConfig(padding=padding), LayerConfig(padding=padding, activation="gelu")]
    enc = ConvEncoder(EncoderConfig(layers=layers)).train()
    x = torch.randn(4, 23, 80, 3)
    ref_mods = []
    ref = x.permute(0, 3, 1, 2)  # (B, T, F, C) -> (B, C, T, F)
    for lc, layer in zip(layers, enc.branches[0].layers, strict=True):
        pads = (1, 1, 1, 1) if padding == 1 else (*_tf_same(ref.shape[3], 3, 2), *_tf_same(ref.shape[2], 3, 2))
        ref = nn.functional.pad(ref, pads)
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

PADDINGS = st.one_of(st.sampled_from(["same", "valid", "causal"]), st.integers(0, 2))


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
    """Random features with garbage past each length (NaN, inf, 1e3 in turn): it must be ignored."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(len(lengths), num_frames, enc.input_freq, enc.input_channels, generator=g)
    pad = torch.arange(num_frames)[None, :] >= lengths[:, None]  # (B, T)
    garbage = torch.tensor([float("nan"), float("inf"), 1e3]).repeat(num_frames)[:num_frames]  # (T,)
    return torch.where(pad[:, :, None, None], garbage[None, :, None, None], x)


@SETTINGS
@given(encoders_and_batches())
def test_eval_batch_equals_alone_and_lengths_exact(case) -> None:
    """Each utterance alone and in a padded batch (garbage past its length): lengths
    exact, zeros past them, values within 1e-5 (the issue's bound; measured at most
    9.5e-7 on outputs up to 5.2 over 300 random stacks: the batch changes the conv
    shapes, and oneDNN picks its kernels, so its summation order, by shape); and the
    plain modules with explicit padding, alone, within 1e-4."""
    enc, layers, lengths, extra, seed = case
    randomise_batch_norms(enc, seed)
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
    randomise_batch_norms(enc)
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
    with pytest.raises(ValueError, match=r"encoder\.layers\.1\.kernel=\[3, 11\] is invalid: expected a frequency kernel that fits its input of 10 rows"):
        ConvEncoder(cfg)


# ------------------------------------------------------------------ branches


@pytest.mark.parametrize("fusion", ["mix", "gated", "concat", "sum"])
def test_two_branches_fuse_flattened_outputs(fusion: str) -> None:
    torch.manual_seed(3)
    # Main: 2 x stride 2, padding 1 -> ceil(ceil(T/2)/2) = ceil(T/4), D = 20*32 = 640.
    # Branch: stack 4 frames -> ceil(T/4), F' = 1, 640 filters.
    cfg = EncoderConfig(branch=[LayerConfig(kind="stack", frames=4, filters=640)], fusion=fusion)
    enc = ConvEncoder(cfg).eval()
    dim = 1280 if fusion == "concat" else 640
    assert enc.output_dim == dim
    x, lengths = torch.randn(3, 26, 80, 3), torch.tensor([26, 9, 1])
    out, out_len = enc(x, lengths)
    assert out.shape == (3, 7, dim) and out_len.tolist() == [7, 3, 1]
    x = x * shapes.make_pad_mask(lengths, 26)[:, :, None, None]  # a branch reads zeros past each length
    main, _ = enc.branches[0](x.permute(0, 3, 1, 2), lengths)  # (B, T, F, C) -> (B, C, T, F)
    side, _ = enc.branches[1](x.permute(0, 3, 1, 2), lengths)
    main = main.permute(0, 2, 3, 1).reshape(3, 7, 640)  # (B, C', T', F') -> (B, T', F'*C')
    side = side.permute(0, 2, 3, 1).reshape(3, 7, 640)
    # The learned fusions start as the plain average.
    want = {"mix": (main + side) / 2, "gated": (main + side) / 2, "concat": torch.cat([main, side], -1),
            "sum": main + side}[fusion]
    torch.testing.assert_close(out, want, rtol=1e-6, atol=1e-6)
    for b, t in enumerate(out_len.tolist()):
        assert (out[b, t:] == 0).all()


def test_branches_that_cannot_agree_are_rejected() -> None:
    cfg = EncoderConfig(branch=[LayerConfig(kind="stack", frames=3, filters=640)])
    with pytest.raises(ValueError, match=r"T' = ceil\(ceil\(T/2\)/2\).*T' = ceil\(T/3\)"):
        ConvEncoder(cfg)
    cfg = EncoderConfig(branch=[LayerConfig(kind="stack", frames=4, filters=64)])
    with pytest.raises(ValueError, match=r"D = 20\*32 = 640.*D = 1\*64 = 64"):
        ConvEncoder(cfg)
    concat = ConvEncoder(dataclasses.replace(cfg, fusion="concat")).eval()  # concat joins any D
    assert concat.output_dim == 704 and concat(torch.randn(1, 9, 80, 3), torch.tensor([9]))[0].shape == (1, 3, 704)


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
    randomise_batch_norms(enc)
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




# ------------------------------------------------------------- the grouped eval path


@settings(SETTINGS, max_examples=40)
@given(encoders_and_batches(), st.sampled_from([1, 40, 10**9]))
def test_grouped_eval_equals_the_plain_path(case, budget) -> None:
    """Eval without autograd runs the plain path on groups of utterances, each group cut
    to its longest one (ConvEncoder._forward_grouped, groups of at most ``budget`` layer
    output elements).  Every output equals the whole batch through the plain path up to
    float rounding (other shapes, other oneDNN kernels), frames past each output length
    are exactly 0, and the lengths are exact."""
    enc, _, lengths, extra, seed = case
    randomise_batch_norms(enc, seed)
    enc.eval()
    x = _batch(lengths, int(lengths.max()) + extra, enc, seed)
    sizes = []
    grouped = encoder.ConvEncoder._forward_grouped
    with pytest.MonkeyPatch.context() as mp, torch.no_grad():
        mp.setattr(encoder, "GROUP_ELEMENTS", budget)
        mp.setattr(encoder.ConvEncoder, "_forward_grouped",
                   lambda self, f, n, group: sizes.append(group) or grouped(self, f, n, group))
        out, out_len = enc(x, lengths)
        want, want_len = enc._forward_layers(x, lengths)
    if budget in (1, 10**9):  # groups of one utterance (every batch here has two or more), or one group
        assert bool(sizes) == (budget == 1), "the grouped path runs exactly when groups are smaller than the batch"
    assert out.shape == want.shape and torch.equal(out_len, want_len)
    torch.testing.assert_close(out, want, rtol=0, atol=1e-5)
    for b, t in enumerate(out_len.tolist()):
        assert (out[b, t:] == 0).all()


def test_grouped_path_runs_only_without_autograd_hooks_or_active_dropout() -> None:
    enc, calls = ConvEncoder(EncoderConfig(layers=[LayerConfig(dropout=0.5), LayerConfig()])).eval(), []
    grouped = encoder.ConvEncoder._forward_grouped
    x, lengths = torch.randn(4, 40, 80, 3), torch.tensor([40, 31, 22, 39])
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(encoder, "GROUP_ELEMENTS", 1)
        mp.setattr(encoder.ConvEncoder, "_forward_grouped", lambda self, *a: calls.append(1) or grouped(self, *a))
        with torch.no_grad():
            enc(x, lengths)
        with torch.inference_mode():
            enc(x, lengths)
        assert len(calls) == 2
        enc(x, lengths)  # autograd recording
        handle = enc.branches[0].layers[1].act.register_forward_hook(lambda *args: None)
        with torch.no_grad():
            enc(x, lengths)
        handle.remove()
        enc.branches[0].layers[0].dropout.train()  # Monte Carlo dropout in an eval-mode encoder
        with torch.no_grad():
            enc(x, lengths)
        assert len(calls) == 2


def test_empty_batch() -> None:
    enc = ConvEncoder().eval()
    with torch.no_grad():
        out, out_len = enc(torch.randn(0, 20, 80, 3), torch.zeros(0, dtype=torch.long))
    assert out.shape == (0, 5, 20, 32) and out_len.shape == (0,)


# ------------------------------------------------------------------ folded eval form


@settings(SETTINGS, max_examples=30)
@given(encoders_and_batches())
def test_folded_encoder_equals_the_eval_encoder(case) -> None:
    """fold_batch_norms: every batch norm folded into its conv, same outputs (up to
    float rounding of the folded weights) and lengths, zeros past each output length."""
    enc, _, lengths, extra, seed = case
    randomise_batch_norms(enc, seed)
    enc.eval()
    folded = fold_batch_norms(enc)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in folded.modules())
    assert any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in enc.modules()) == any(
        lc.batch_norm for ls in enc.config.branches() for lc in ls)
    x = _batch(lengths, int(lengths.max()) + extra, enc, seed)
    with torch.no_grad():
        want, want_len = enc(x, lengths)
        got, got_len = folded(x, lengths)
    assert torch.equal(got_len, want_len)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    for b, t in enumerate(got_len.tolist()):
        assert (got[b, t:] == 0).all()


def test_folded_encoder_refuses_training() -> None:
    folded = fold_batch_norms(ConvEncoder())
    with pytest.raises(ValueError, match="folded into its conv.*inference and export only"):
        folded.train()
