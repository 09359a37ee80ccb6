"""shapes.py against things it did not compute: real torch convs, brute force, autograd."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from speechconv import shapes
from speechconv.shapes import AxisGeometry

paddings = st.one_of(st.sampled_from(["same", "valid", "causal"]), st.integers(0, 3))
geometries = st.builds(AxisGeometry, kernel=st.integers(1, 5), stride=st.integers(1, 3), padding=paddings)
fixed_geometries = st.builds(AxisGeometry, kernel=st.integers(1, 5), stride=st.integers(1, 3),
                             padding=st.one_of(st.sampled_from(["valid", "causal"]), st.integers(0, 3)))


def _pads(length: int, g: AxisGeometry) -> tuple[int, int]:
    """Zeros before and after, restated from the module docstring's definitions."""
    if g.padding == "same":
        return shapes.same_padding(length, g.kernel, g.stride)  # checked against TF's rule below
    if g.padding == "causal":
        return g.kernel - 1, 0
    pad = 0 if g.padding == "valid" else int(g.padding)
    return pad, pad


def _conv1d_len(length: int, g: AxisGeometry) -> int:
    """Run a real 1-D conv the way the encoder pads, and count its outputs."""
    x = F.pad(torch.zeros(1, 1, length), _pads(length, g))
    if x.shape[-1] < g.kernel:
        return 0  # torch refuses; the formula's answer for this case is 0
    return F.conv1d(x, torch.ones(1, 1, g.kernel), stride=g.stride).shape[-1]


@given(length=st.integers(0, 60), g=geometries)
@settings(max_examples=300, deadline=None)
def test_conv_out_length_equals_real_conv(length, g):
    expected = _conv1d_len(length, g) if length > 0 else 0
    assert shapes.conv_out_length(length, g.kernel, g.stride, g.padding) == expected
    got = shapes.conv_out_length_tensor(torch.tensor([length]), g.kernel, g.stride, g.padding)
    assert got.item() == expected
    if length > 0:
        assert shapes.padding_amounts(length, g.kernel, g.stride, g.padding) == _pads(length, g)
        before = shapes.pad_before_tensor(torch.tensor([length]), g.kernel, g.stride, g.padding)
        assert before.item() == _pads(length, g)[0]
        assert before.item() >= shapes.min_pad_before(g.kernel, g.stride, g.padding)


@given(length=st.integers(1, 60), kernel=st.integers(1, 5), stride=st.integers(1, 3))
@settings(max_examples=200, deadline=None)
def test_same_padding_matches_tensorflow_rule(length, kernel, stride):
    # TF: out = ceil(L / s); pad_total = max((out - 1) * s + k - L, 0); before = total // 2.
    out = -(-length // stride)
    total = max((out - 1) * stride + kernel - length, 0)
    assert shapes.same_padding(length, kernel, stride) == (total // 2, total - total // 2)
    # The closed form in the module docstring: P = k - s if L % s == 0 else k - (L % s), clamped.
    r = length % stride
    assert total == max(kernel - stride if r == 0 else kernel - r, 0)


@given(layers=st.lists(geometries, min_size=1, max_size=4), out=st.integers(1, 4))
@settings(max_examples=200, deadline=None)
def test_stack_min_input_is_the_smallest(layers, out):
    m = shapes.stack_min_input(layers, out)
    assert shapes.stack_out_length(m, layers) >= out
    if m > 1:
        assert shapes.stack_out_length(m - 1, layers) < out


def test_valid_two_layer_example_from_the_issue():
    g = [AxisGeometry(3, 2, "valid")] * 2
    assert shapes.stack_min_input(g) == 7
    assert shapes.stack_out_length(80, g) == 19
    assert shapes.stack_out_length(80, g[:1]) == 39
    same = [AxisGeometry(3, 2, "same")] * 2
    assert [shapes.stack_out_length(t, same) for t in (1, 4, 5, 98, 100)] == [1, 1, 2, 25, 25]


FIELD_INPUT = 200
"""Input length of :func:`_empirical_field`: long enough that, for every stack the test
draws (field <= 40, subsampling <= 27, padding shifting a field by at most 39), some
output's whole field lies inside the input.  With 64 an output whose field reached into
the padding could pass for a whole field, and some stacks had none inside at all."""


def _empirical_field(layers: list[AxisGeometry], length: int = FIELD_INPUT) -> tuple[int, int]:
    """Receptive field and look-ahead measured by autograd on a real conv stack.

    Returns (largest span of inputs that reach one output, over the outputs whose
    inputs lie strictly inside the signal; max over outputs t of (last input reached -
    t * J)).
    """
    x = torch.zeros(1, 1, length, requires_grad=True)
    h = x
    for g in layers:
        h = F.conv1d(F.pad(h, _pads(h.shape[-1], g)), torch.ones(1, 1, g.kernel), stride=g.stride)
    jump = shapes.subsampling(layers)
    spans, ahead = [], []
    for t in range(h.shape[-1]):
        (grad,) = torch.autograd.grad(h[0, 0, t], x, retain_graph=True)
        idx = grad[0, 0].nonzero().flatten()
        if len(idx) == 0:
            continue
        lo, hi = idx.min().item(), idx.max().item()
        if lo > 0 and hi < length - 1:  # fully inside the input: the whole field is visible
            spans.append(hi - lo + 1)
        ahead.append(hi - t * jump)
    return max(spans), max(ahead)


@given(layers=st.lists(geometries, min_size=1, max_size=3))
@settings(max_examples=60, deadline=None)
def test_receptive_field_and_look_ahead_match_autograd(layers):
    assume(shapes.stack_out_length(FIELD_INPUT, layers) >= 3 and shapes.receptive_field(layers) <= 40)
    span, ahead = _empirical_field(layers)
    assert span == shapes.receptive_field(layers)
    # look_ahead is the worst case over lengths; autograd sees one length, so it may see less.
    assert max(ahead, 0) <= shapes.look_ahead(layers)


@given(layers=st.lists(fixed_geometries, min_size=1, max_size=3))
@settings(max_examples=60, deadline=None)
def test_fixed_alignment_look_ahead_is_exact(layers):
    """Without SAME the padding before does not depend on the length, so every output's
    look-ahead is the same and the formula is attained (the streams rely on it)."""
    assume(shapes.stack_out_length(FIELD_INPUT, layers) >= 3 and shapes.receptive_field(layers) <= 40)
    _, ahead = _empirical_field(layers)
    assert max(ahead, 0) == shapes.look_ahead(layers)
    assert shapes.look_ahead([AxisGeometry(g.kernel, g.stride, "causal") for g in layers]) == 0


def test_look_ahead_is_attained_for_default_stack():
    layers = [AxisGeometry(3, 2, "same")] * 2
    assert shapes.receptive_field(layers) == 7
    _, ahead = _empirical_field(layers)
    assert ahead == shapes.look_ahead(layers) == 6


@pytest.mark.parametrize("framing", ["kaldi", "center"])
def test_frame_formula_matches_brute_force_and_inverse(framing):
    win, hop = 400, 160
    for s in range(0, 2001):
        if framing == "kaldi":
            brute = sum(1 for t in range(s + 1) if t * hop + win <= s)
        else:
            brute = 0 if s == 0 else sum(1 for t in range(s + 1) if t * hop <= s)
        assert shapes.frames_from_samples(s, win, hop, framing) == brute
    lengths = torch.arange(0, 2001)
    batched = shapes.frames_from_samples_tensor(lengths, win, hop, framing)
    assert batched.tolist() == [shapes.frames_from_samples(s, win, hop, framing) for s in range(2001)]
    for t in range(1, 12):
        m = shapes.min_samples_for_frames(t, win, hop, framing)
        assert shapes.frames_from_samples(m, win, hop, framing) >= t
        assert shapes.frames_from_samples(m - 1, win, hop, framing) < t


def test_pad_mask():
    mask = shapes.make_pad_mask(torch.tensor([0, 2, 3]), 3)
    assert mask.tolist() == [[False] * 3, [True, True, False], [True] * 3]


@pytest.mark.parametrize("bad", [-1, "full", True, 1.5])
def test_bad_padding_is_a_clear_error(bad):
    with pytest.raises(ValueError, match="padding must be"):
        shapes.conv_out_length(10, 3, 1, bad)
