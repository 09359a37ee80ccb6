"""MaskedBatchNorm against nn.BatchNorm2d / nn.BatchNorm1d on the valid frames alone,
pad_per_utterance against an explicit construction, and the oneDNN layout guard."""

from __future__ import annotations

import warnings

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch import nn

from speechconv import masking, shapes

SETTINGS = settings(max_examples=40, deadline=None)


def _pair(momentum: float | None = 0.1, affine: bool = True, seed: int = 0, channels: int = 4):
    """A MaskedBatchNorm and an nn.BatchNorm2d with the same random parameters."""
    torch.manual_seed(seed)
    ref = nn.BatchNorm2d(channels, momentum=momentum, affine=affine)
    if affine:
        with torch.no_grad():
            ref.weight.uniform_(0.5, 1.5)
            ref.bias.normal_()
    mine = masking.MaskedBatchNorm(channels, momentum=momentum, affine=affine)
    mine.load_state_dict(ref.state_dict())
    return mine, ref


def _mask(lengths: list[int], t: int) -> torch.Tensor:
    return shapes.make_pad_mask(torch.tensor(lengths), t)


def test_same_parameters_and_buffers_as_batchnorm2d() -> None:
    mine, ref = _pair()
    assert isinstance(mine, nn.modules.batchnorm._BatchNorm)
    assert {k: v.shape for k, v in mine.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}


@pytest.mark.parametrize("momentum", [0.1, None])
def test_no_padding_equals_batchnorm2d(momentum) -> None:
    mine, ref = _pair(momentum)
    for step in range(3):
        x = torch.randn(3, 4, 7, 5) * 2 + step
        torch.testing.assert_close(mine(x, torch.ones(3, 7, dtype=torch.bool)), ref(x))
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(mine, name), getattr(ref, name))
    mine.eval()
    ref.eval()
    x = torch.randn(2, 4, 3, 5)
    torch.testing.assert_close(mine(x, torch.ones(2, 3, dtype=torch.bool)), ref(x))


@SETTINGS
@given(
    lengths=st.lists(st.integers(0, 9), min_size=1, max_size=4),
    extra=st.integers(0, 3),
    momentum=st.sampled_from([0.1, 0.5, None]),
    affine=st.booleans(),
    channels_last=st.booleans(),
    seed=st.integers(0, 1000),
)
def test_masked_equals_batchnorm2d_on_the_valid_frames(lengths, extra, momentum, affine, channels_last, seed) -> None:
    """Reference: nn.BatchNorm2d over the valid frames of all utterances concatenated
    along time, which is exactly "statistics over valid (b, t) and all f".  Garbage
    (1e3) on padding frames; outputs zero there; input and parameter gradients and the
    running statistics of two steps."""
    assume(sum(lengths) * 3 > 1)  # batch statistics need two values (the error is tested below)
    mine, ref = _pair(momentum, affine, seed)
    t = max(lengths) + extra
    pad = ~_mask(lengths, t)[:, None, :, None]  # (B, 1, T, 1)
    for _ in range(2):
        x = torch.where(pad, 1e3, torch.randn(len(lengths), 4, t, 3) * 3 + 1)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        x.requires_grad_(True)
        out = mine(x, _mask(lengths, t))
        assert (out.masked_select(pad) == 0).all()
        valid = torch.cat([x[b, :, :n] for b, n in enumerate(lengths)], dim=1)[None]  # (1, C, sum L, F)
        got = torch.cat([out[b, :, :n] for b, n in enumerate(lengths)], dim=1)[None]
        torch.testing.assert_close(got, ref(valid.detach()), rtol=1e-5, atol=1e-5)
        g = torch.randn_like(out)  # non-zero on padding too: it must not leak into x.grad
        (out * g).sum().backward()
        x_ref = valid.detach().requires_grad_(True)
        ref_b = nn.BatchNorm2d(4, affine=affine, track_running_stats=False)
        if affine:
            ref_b.load_state_dict({k: v for k, v in mine.state_dict().items() if k in ("weight", "bias")})
        g_valid = torch.cat([g[b, :, :n] for b, n in enumerate(lengths)], dim=1)[None]
        (ref_b(x_ref) * g_valid).sum().backward()
        got_grad = torch.cat([x.grad[b, :, :n] for b, n in enumerate(lengths)], dim=1)[None]
        torch.testing.assert_close(got_grad, x_ref.grad, rtol=1e-4, atol=1e-5)
        assert (x.grad.masked_select(pad) == 0).all()
        if affine:
            torch.testing.assert_close(mine.weight.grad, ref_b.weight.grad, rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(mine.bias.grad, ref_b.bias.grad, rtol=1e-4, atol=1e-4)
            mine.weight.grad = mine.bias.grad = None
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(mine, name), getattr(ref, name))


def test_three_dimensional_input_equals_batchnorm1d_on_valid_frames() -> None:
    """(B, C, T) (the Weiss2017 projections): nn.BatchNorm1d on the valid frames."""
    torch.manual_seed(0)
    lengths, t, d = [7, 3, 5], 7, 4
    mask = _mask(lengths, t)
    mine, ref = masking.MaskedBatchNorm(d), nn.BatchNorm1d(d)
    with torch.no_grad():
        mine.weight.uniform_(0.5, 2.0)
        mine.bias.uniform_(-1.0, 1.0)
    ref.load_state_dict(mine.state_dict())
    for step in range(3):
        x = torch.randn(3, t, d) * 3 + step
        x[~mask] = 1e3  # garbage in the padding must not leak into the statistics
        y = mine(x.transpose(1, 2), mask).transpose(1, 2)  # (B, T, D) -> (B, D, T) and back
        torch.testing.assert_close(y[mask], ref(x[mask]), rtol=1e-5, atol=1e-5)  # (N, D) valid frames
        assert torch.all(y[~mask] == 0)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(mine, name), getattr(ref, name))
    mine.eval()
    ref.eval()
    x = torch.randn(3, t, d)
    torch.testing.assert_close(mine(x.transpose(1, 2), mask).transpose(1, 2)[mask], ref(x[mask]), rtol=1e-5,
                               atol=1e-5)


@pytest.mark.parametrize("offset", [10.0, 300.0])
def test_variance_bound_for_a_large_mean(offset: float) -> None:
    """The variance, ``sum x (x - mean) - mean (sum x - n mean)`` with ``sum x`` in float64,
    against float64 statistics, for channels whose mean is ``offset`` standard deviations:
    within float32 rounding times ``1 + mean/std`` (each product ``x (x - mean)`` is rounded
    to ``eps |x| |x - mean|``); measured 7.9e-8 and 9.5e-7.  With ``sum x`` in float32 the
    correction cancels to about ``eps (mean/std)^2``: measured 1.7e-6 and 3.9e-3, both over."""
    torch.manual_seed(1)
    lengths = [50, 45, 30, 50, 12, 49]
    x = torch.randn(6, 8, 50, 40) + offset  # (B, C, T, F), std 1
    norm = masking.MaskedBatchNorm(8, affine=False, momentum=1.0)  # running stats = the batch's
    norm(x, _mask(lengths, 50))
    valid = torch.cat([x[b, :, :n] for b, n in enumerate(lengths)], dim=1).double()  # (C, N, F)
    count = valid[0].numel()
    var = valid.var(dim=(1, 2), correction=0)
    measured = ((norm.running_var.double() * (count - 1) / count - var).abs() / var).max().item()
    assert measured <= torch.finfo(torch.float32).eps * (1 + offset), measured


def test_one_valid_value_is_an_error_like_batchnorm2d() -> None:
    mine, _ = _pair()
    with pytest.raises(ValueError, match="more than 1 valid value per channel"):
        mine(torch.randn(2, 4, 3, 1), _mask([1, 0], 3))
    with pytest.raises(ValueError, match=r"mask of shape \[2, 3\]"):
        mine(torch.randn(2, 4, 3, 1), _mask([1, 0, 2], 3))


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


PAD_CASES = {
    "lengths": st.lists(st.integers(0, 8), min_size=1, max_size=4),
    "offsets": st.lists(st.integers(-3, 3), min_size=4, max_size=4),
    "span": st.integers(0, 12),
    "freq": st.tuples(st.integers(0, 2), st.integers(0, 2)),
    "channels": st.sampled_from([1, 3]),
    "channels_last": st.booleans(),
}


@SETTINGS
@given(**PAD_CASES)
def test_pad_per_utterance_places_each_valid_frame(lengths, offsets, span, freq, channels, channels_last) -> None:
    """Against a buffer built frame by frame, with frequency rows of zeros; garbage
    (finite) past each length stays out, negative offsets drop frames from the front; the
    gradient reaches exactly the frames placed."""
    b_size, t = len(lengths), max(lengths) + 1
    x = torch.where(~_mask(lengths, t)[:, None, :, None], 1e3, torch.randn(b_size, channels, t, 5))
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    pb = torch.tensor(offsets[:b_size])
    got = masking.pad_per_utterance(x, torch.tensor(lengths), pb, span, *freq)
    want = torch.zeros(b_size, channels, span, 5 + sum(freq))
    placed = torch.zeros(b_size, channels, t, 5)
    for b, n in enumerate(lengths):
        for i in range(n):
            if 0 <= int(pb[b]) + i < span:
                want[b, :, int(pb[b]) + i, freq[0] : freq[0] + 5] = x[b, :, i]
                placed[b, :, i] = 1
    assert torch.equal(got, want)
    if channels > 1 and got.numel() > 0:
        assert got.is_contiguous(memory_format=torch.channels_last)
    got.sum().backward()
    assert torch.equal(x.grad, placed)


def test_pad_per_utterance_gradcheck() -> None:
    x = torch.randn(3, 2, 6, 4, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    lengths, offsets = torch.tensor([6, 3, 0]), torch.tensor([1, -1, 2])
    assert torch.autograd.gradcheck(lambda v: masking.pad_per_utterance(v, lengths, offsets, 7, 1, 2), (x,))


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


def test_a_mask_with_gaps_is_refused() -> None:
    norm = masking.MaskedBatchNorm(4)
    mask = torch.tensor([[True, False, True], [True, True, False]])
    with pytest.raises(ValueError, match="valid frames start each utterance"):
        norm(torch.randn(2, 4, 3, 5), mask)


def test_gradients_match_finite_differences() -> None:
    """The written-out backward against torch's numerical gradient (float64): input,
    weight and bias, with padding frames and a frequency axis."""
    torch.manual_seed(0)
    mask = _mask([5, 3, 1], 6)
    x = torch.randn(3, 3, 6, 2, dtype=torch.float64, requires_grad=True)
    weight = torch.empty(3, dtype=torch.float64).uniform_(0.5, 1.5).requires_grad_()
    bias = torch.randn(3, dtype=torch.float64, requires_grad=True)

    def norm(x, weight, bias):
        return masking._MaskedNorm.apply(x, mask.sum(1).tolist(), mask.double(), weight, bias, 1e-5, False)[0]

    assert torch.autograd.gradcheck(norm, (x, weight, bias))
