"""Masked batch norm against nn.BatchNorm2d, per-utterance padding against an explicit
construction, and the TorchScript length forms against the originals in shapes.py."""

from __future__ import annotations

import warnings

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch import nn

from speechconv import masking, shapes

SETTINGS = settings(max_examples=40, deadline=None)


def _pair(momentum: float | None = 0.1, affine: bool = True, seed: int = 0):
    """A MaskedBatchNorm2d and an nn.BatchNorm2d with the same random parameters."""
    torch.manual_seed(seed)
    ref = nn.BatchNorm2d(4, momentum=momentum, affine=affine)
    if affine:
        with torch.no_grad():
            ref.weight.uniform_(0.5, 1.5)
            ref.bias.normal_()
    mine = masking.MaskedBatchNorm2d(4, momentum=momentum, affine=affine)
    mine.load_state_dict(ref.state_dict())
    return mine, ref


def test_same_parameters_and_buffers_as_batchnorm2d() -> None:
    mine, ref = _pair()
    assert isinstance(mine, nn.BatchNorm2d)
    assert {k: v.shape for k, v in mine.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}


@pytest.mark.parametrize("momentum", [0.1, None])
def test_no_padding_equals_batchnorm2d(momentum) -> None:
    mine, ref = _pair(momentum)
    for step in range(3):
        x = torch.randn(3, 4, 7, 5) * 2 + step
        mask = torch.ones(3, 1, 7, 1, dtype=torch.bool)
        torch.testing.assert_close(mine(x, mask), ref(x))
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(mine, name), getattr(ref, name))
    mine.eval()
    ref.eval()
    x = torch.randn(2, 4, 3, 5)
    torch.testing.assert_close(mine(x, torch.zeros(2, 1, 3, 1, dtype=torch.bool)), ref(x))


@SETTINGS
@given(
    lengths=st.lists(st.integers(0, 9), min_size=1, max_size=4).filter(lambda ls: sum(ls) >= 2),
    extra=st.integers(0, 3),
    momentum=st.sampled_from([0.1, 0.5, None]),
    affine=st.booleans(),
    seed=st.integers(0, 1000),
)
def test_masked_equals_batchnorm2d_on_the_valid_frames(lengths, extra, momentum, affine, seed) -> None:
    """Reference: nn.BatchNorm2d over the valid frames of all utterances concatenated
    along time, which is exactly "statistics over valid (b, t) and all f"."""
    mine, ref = _pair(momentum, affine, seed)
    t = max(lengths) + extra
    for _ in range(2):  # two steps: running stats accumulate the same way
        x = torch.randn(len(lengths), 4, t, 3) * 3 + 1
        x.requires_grad_(True)
        mask = masking.time_mask(torch.tensor(lengths), t)
        out = mine(x, mask)
        valid = torch.cat([x[b, :, :n] for b, n in enumerate(lengths)], dim=1)[None]  # (1, C, sum L, F)
        want = ref(valid)
        got = torch.cat([out[b, :, :n] for b, n in enumerate(lengths)], dim=1)[None]
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        # Gradients flow only from valid frames, and match the reference.
        g = torch.randn_like(want)
        (got * g).sum().backward()
        x_ref = valid.detach().requires_grad_(True)
        ref_b = nn.BatchNorm2d(4, affine=affine, track_running_stats=False)
        if affine:
            ref_b.load_state_dict({k: v for k, v in mine.state_dict().items() if k in ("weight", "bias")})
        (ref_b(x_ref) * g).sum().backward()
        got_grad = torch.cat([x.grad[b, :, :n] for b, n in enumerate(lengths)], dim=1)[None]
        torch.testing.assert_close(got_grad, x_ref.grad, rtol=1e-4, atol=1e-5)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(mine, name), getattr(ref, name))


def test_one_valid_value_is_an_error_like_batchnorm2d() -> None:
    mine, _ = _pair()
    x = torch.randn(2, 4, 3, 1)
    with pytest.raises(ValueError, match="more than 1 valid value per channel"):
        mine(x, masking.time_mask(torch.tensor([1, 0]), 3))


def test_fold_equals_conv_then_batchnorm() -> None:
    torch.manual_seed(5)
    for bias in (False, True):
        conv = nn.Conv2d(3, 4, (3, 2), (2, 1), bias=bias)
        mine, ref = _pair(seed=6)
        with torch.no_grad():
            ref.running_mean.normal_()
            ref.running_var.uniform_(0.5, 2.0)
        mine.load_state_dict(ref.state_dict())
        ref.eval()
        x = torch.randn(2, 3, 9, 6)
        w, b = mine.fold(conv.weight, conv.bias)
        torch.testing.assert_close(nn.functional.conv2d(x, w, b, (2, 1)), ref(conv(x)), rtol=1e-5, atol=1e-5)


# Arguments of pad_per_utterance: lengths, per-utterance offsets, buffer time, frequency padding.
PAD_CASES = {
    "lengths": st.lists(st.integers(0, 8), min_size=1, max_size=4),
    "offsets": st.lists(st.integers(0, 3), min_size=4, max_size=4),
    "out_time": st.integers(1, 12),
    "freq": st.tuples(st.integers(0, 2), st.integers(0, 2)),
    "channels_last": st.booleans(),
}


@SETTINGS
@given(**PAD_CASES)
def test_pad_per_utterance_places_each_valid_frame(lengths, offsets, out_time, freq, channels_last) -> None:
    b_size, t = len(lengths), max(lengths) + 1
    x = torch.randn(b_size, 3, t, 5)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    pb = torch.tensor(offsets[:b_size])
    got = masking.pad_per_utterance(x, torch.tensor(lengths), pb, out_time, *freq)
    want = torch.zeros(b_size, 3, out_time, 5 + sum(freq))
    for b, n in enumerate(lengths):
        for i in range(n):
            if 0 <= int(pb[b]) + i < out_time:
                want[b, :, int(pb[b]) + i, freq[0] : freq[0] + 5] = x[b, :, i]
    assert torch.equal(got, want)
    assert got.is_contiguous(memory_format=torch.channels_last)


def test_zero_padding_and_time_mask() -> None:
    x = torch.ones(2, 3, 4, 5)
    out = masking.zero_padding(x, torch.tensor([4, 1]))
    assert out[0].eq(1).all() and out[1, :, :1].eq(1).all() and out[1, :, 1:].eq(0).all()
    assert masking.time_mask(torch.tensor([2]), 3).shape == (1, 1, 3, 1)


# ------------------------------------------------- TorchScript forms of shapes.py


@SETTINGS
@given(
    lengths=st.lists(st.integers(0, 60), min_size=1, max_size=6),
    kernel=st.integers(1, 7),
    stride=st.integers(1, 4),
    padding=st.one_of(st.sampled_from(["same", "valid"]), st.integers(0, 3)),
)
def test_script_length_forms_agree_with_shapes(lengths, kernel, stride, padding) -> None:
    n = torch.tensor(lengths)
    same, pad = padding == "same", 0 if padding in ("same", "valid") else padding
    want = shapes.conv_out_length_tensor(n, kernel, stride, padding)
    assert shapes.conv_out_length_script(n, kernel, stride, same, pad).tolist() == want.tolist()
    assert [shapes.conv_out_length_int(v, kernel, stride, same, pad) for v in lengths] == want.tolist()
    before = [shapes.same_padding(v, kernel, stride)[0] if v > 0 else 0 for v in lengths]
    assert shapes.same_pad_before_tensor(n, kernel, stride).tolist() == before
    for out in want.tolist():
        span = shapes.conv_input_span(out, kernel, stride)
        assert span == (shapes.conv_min_input(out, kernel, stride, "valid") if out > 0 else 0)


def test_script_forms_compile() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated on torch 2.14; it still works
        for fn in (shapes.conv_out_length_script, shapes.conv_out_length_int, shapes.same_pad_before_tensor,
                   masking.pad_per_utterance, masking.zero_padding):
            torch.jit.script(fn)
        torch.jit.script(masking.MaskedBatchNorm2d(3))


@pytest.mark.parametrize("channels", [1, 3])
def test_conv_layout_avoids_onednn_single_channel_bug(channels: int) -> None:
    """torch 2.14.1's oneDNN conv returns wrong values for B > 1, one input channel with
    stride 1 (the channels_last view of (B, T, F, 1)) and one output frequency row, e.g.
    kernel (1, 4), stride (1, 2) on F = 5.  conv_layout must give correct convs; the
    reference is torch's native (non-oneDNN) convolution on a contiguous copy."""
    torch.manual_seed(7)
    x = torch.randn(3, 6, 5, channels)  # (B, T, F, C)
    for kernel, stride in (((1, 4), (1, 2)), ((2, 3), (1, 3)), ((3, 3), (2, 2))):
        w = torch.randn(2, channels, *kernel)
        got = nn.functional.conv2d(masking.conv_layout(x), w, None, stride)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the flags switch warns about Intel GPUs
            with torch.backends.mkldnn.flags(enabled=False):
                want = nn.functional.conv2d(x.permute(0, 3, 1, 2).contiguous(), w, None, stride)  # (B, C, T, F)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_forward_frames_equals_masked_forward_on_gathered_frames() -> None:
    """The encoder's training path (native kernel on gathered valid frames) gives the
    masked forward's values on valid frames and the same running statistics."""
    dense, _ = _pair(seed=9)
    packed, _ = _pair(seed=9)
    lengths = torch.tensor([6, 2, 5])
    x = torch.randn(3, 4, 7, 5) * 2 + 0.5
    want = dense(x, masking.time_mask(lengths, 7))
    index = masking.valid_frame_index(lengths, 7)
    got = packed.forward_frames(masking.gather_frames(x, index))  # (N, F, C)
    back = masking.scatter_frames(got, index, 3, 7)  # (B, C, T, F)
    torch.testing.assert_close(back, masking.zero_padding(want, lengths), rtol=1e-5, atol=1e-5)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(packed, name), getattr(dense, name))


# ------------------------------------------- training path with lengths (autograd.Function)


def _script_forward_lengths(bn: masking.MaskedBatchNorm2d):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated on torch 2.14; it still works
        return torch.jit.script(bn).forward_lengths


@SETTINGS
@given(
    lengths=st.lists(st.integers(0, 9), min_size=1, max_size=4).filter(lambda ls: sum(ls) >= 2),
    extra=st.integers(0, 3),
    momentum=st.sampled_from([0.1, None]),
    affine=st.booleans(),
    relu=st.booleans(),
    scripted=st.booleans(),
    seed=st.integers(0, 1000),
)
def test_forward_lengths_equals_batchnorm2d_on_the_valid_frames(
    lengths, extra, momentum, affine, relu, scripted, seed
) -> None:
    """The encoder's training path (eager: the autograd.Function; TorchScript: autograd
    of masked sums) against nn.BatchNorm2d (+ ReLU) on the valid frames concatenated along
    time: outputs, zeros on padding, input and parameter gradients, running statistics."""
    mine, ref = _pair(momentum, affine, seed)
    forward = _script_forward_lengths(mine) if scripted else mine.forward_lengths
    t = max(lengths) + extra
    act = torch.relu if relu else (lambda v: v)
    for _ in range(2):  # two steps: running stats accumulate the same way
        x = (torch.randn(len(lengths), t, 3, 4) * 3 + 1).permute(0, 3, 1, 2)  # (B, T, F, C) -> (B, C, T, F)
        x.requires_grad_(True)
        out = forward(x, lengths, relu)
        assert out.is_contiguous(memory_format=torch.channels_last)
        valid = torch.cat([x[b, :, :n] for b, n in enumerate(lengths)], dim=1)[None]  # (1, C, sum L, F)
        got = torch.cat([out[b, :, :n] for b, n in enumerate(lengths)], dim=1)[None]
        ref_b = nn.BatchNorm2d(4, affine=affine, track_running_stats=False)
        if affine:
            ref_b.load_state_dict({k: v for k, v in mine.state_dict().items() if k in ("weight", "bias")})
        want = act(ref(valid.detach()))
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        for b, n in enumerate(lengths):
            assert (out[b, :, n:] == 0).all()
        g = torch.randn_like(out)  # non-zero on padding too: it must not leak into x.grad
        (out * g).sum().backward()
        x_ref = valid.detach().requires_grad_(True)
        g_valid = torch.cat([g[b, :, :n] for b, n in enumerate(lengths)], dim=1)[None]
        (act(ref_b(x_ref)) * g_valid).sum().backward()
        got_grad = torch.cat([x.grad[b, :, :n] for b, n in enumerate(lengths)], dim=1)[None]
        torch.testing.assert_close(got_grad, x_ref.grad, rtol=1e-4, atol=1e-5)
        for b, n in enumerate(lengths):
            assert (x.grad[b, :, n:] == 0).all()
        if affine:
            torch.testing.assert_close(mine.weight.grad, ref_b.weight.grad, rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(mine.bias.grad, ref_b.bias.grad, rtol=1e-4, atol=1e-4)
            mine.weight.grad = mine.bias.grad = None
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(mine, name), getattr(ref, name))


PLACE = ([1, 0, 2, 1], 5, 1, 2)
"""A placement for 4 utterances of lengths [5, 2, 0, 4]: offsets, buffer frames (the
first utterance loses its last frame past the buffer), zero rows before and after in F."""


@pytest.mark.parametrize("place", [None, PLACE], ids=["own-frames", "placed"])
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("affine", [False, True])
def test_masked_batch_norm_function_gradcheck(relu: bool, affine: bool, place) -> None:
    """The hand-written backward against finite differences, in float64, with padding
    frames, an empty utterance and garbage past every length; also when the output is
    written into the next conv's padded buffer (a frame dropped past its end)."""
    torch.manual_seed(11)
    lens = [5, 2, 0, 4]
    x = (torch.randn(4, 5, 3, 2, dtype=torch.float64) * 2 + 1).permute(0, 3, 1, 2)  # (B, C, T, F) channels_last
    x.requires_grad_(True)
    weight = (torch.rand(2, dtype=torch.float64) + 0.5).requires_grad_(True) if affine else None
    bias = torch.randn(2, dtype=torch.float64, requires_grad=True) if affine else None

    def fn(x, *params):
        w, b = params if affine else (None, None)
        return masking._MaskedBatchNormFn.apply(x, w, b, lens, 1e-5, relu, place)[0]

    inputs = (x, weight, bias) if affine else (x,)
    assert torch.autograd.gradcheck(fn, inputs)


@SETTINGS
@given(**PAD_CASES, relu=st.booleans())
def test_placed_batch_norm_equals_batch_norm_then_padding(lengths, offsets, out_time, freq, channels_last, relu):
    """Writing the norm's output into the padded buffer gives the buffer, the running
    statistics and the gradients of the unfused pair (norm, then pad_per_utterance),
    bit for bit: the same operations on the same values."""
    b_size, t = len(lengths), max(lengths) + 1
    x = torch.randn(b_size, 3, t, 5).contiguous(memory_format=torch.channels_last) * 2 + 1
    if not channels_last:
        x = x.contiguous()
    place = (offsets[:b_size], out_time, *freq)
    assume(sum(lengths) * 5 > 1)  # batch statistics need two values (the error is tested elsewhere)
    outs, grads = [], []
    weight, bias = torch.rand(3) + 0.5, torch.rand(3) * 2 - 1
    for fused in (True, False):
        bn = masking.MaskedBatchNorm2d(3).train()
        with torch.no_grad():
            bn.weight.copy_(weight)
            bn.bias.copy_(bias)
        xi = x.clone().requires_grad_(True)
        if fused:
            out = bn.forward_lengths(xi, lengths, relu, place)
        else:
            out = masking.pad_to_placement(bn.forward_lengths(xi, lengths, relu), lengths, place)
        out.backward(torch.linspace(-1, 1, out.numel()).view(out.shape))
        outs.append((out.detach(), bn.running_mean, bn.running_var))
        grads.append((xi.grad, bn.weight.grad, bn.bias.grad))
    for a, b in zip(outs[0] + grads[0], outs[1] + grads[1], strict=True):
        assert torch.equal(a, b)


@SETTINGS
@given(**PAD_CASES)
def test_pad_per_utterance_gradient_equals_the_index_gather(lengths, offsets, out_time, freq, channels_last) -> None:
    """Eager autograd (the autograd.Function, one slice copy per utterance both ways)
    against the TorchScript form (row gather): same buffer, same input gradient."""
    b_size, t = len(lengths), max(lengths) + 1
    x = torch.randn(b_size, 3, t, 5)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    args = (torch.tensor(lengths), torch.tensor(offsets[:b_size]), out_time, *freq)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated on torch 2.14; it still works
        scripted = torch.jit.script(masking.pad_per_utterance)
    x_a, x_b = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    got, want = masking.pad_per_utterance(x_a, *args), scripted(x_b, *args)
    assert torch.equal(got, want)
    assert got.is_contiguous(memory_format=torch.channels_last)
    g = torch.randn_like(got)
    (got * g).sum().backward()
    (want * g).sum().backward()
    assert torch.equal(x_a.grad, x_b.grad)


def test_pad_per_utterance_gradcheck() -> None:
    x = torch.randn(3, 2, 6, 4, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    lengths, offsets = torch.tensor([6, 3, 0]), torch.tensor([1, 0, 2])
    assert torch.autograd.gradcheck(lambda v: masking.pad_per_utterance(v, lengths, offsets, 7, 1, 2), (x,))
