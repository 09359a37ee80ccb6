"""layers.py against autograd and hand-written formulas."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from speechconv.layers import BlockLinear, Concat, GatedMix, LearnedMix, Sum


def _n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_block_linear_canonical_100_in_blocks_of_5_to_20x3():
    layer = BlockLinear(block=5, out_per_block=3)
    assert layer.conv.weight.numel() == 15 and layer.conv.bias.numel() == 3
    assert _n_params(layer) == 15 + 3
    x = torch.randn(2, 100)
    y = layer(x)
    assert y.shape == (2, 20, 3)
    # Independent reference: reshape into blocks and apply the shared 5 -> 3 matrix.
    w = layer.conv.weight[:, 0, :]  # (3, 1, 5) -> (3, 5)
    ref = x.reshape(2, 20, 5) @ w.T + layer.conv.bias  # (B, 100) -> (B, 20, 5)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-6)


def test_block_linear_jacobian_is_block_diagonal():
    layer = BlockLinear(block=5, out_per_block=3)
    x = torch.randn(100)
    jac = torch.autograd.functional.jacobian(lambda v: layer(v[None])[0].reshape(-1), x)  # (20, 3) -> (60,)
    assert jac.shape == (60, 100)
    w = layer.conv.weight[:, 0, :].detach()  # (3, 1, 5) -> (3, 5)
    for out_block in range(20):
        rows = jac[out_block * 3:(out_block + 1) * 3]
        for in_block in range(20):
            part = rows[:, in_block * 5:(in_block + 1) * 5]
            if in_block == out_block:
                torch.testing.assert_close(part, w)  # own block: exactly the shared weights
            else:
                assert torch.count_nonzero(part) == 0, f"output block {out_block} depends on input block {in_block}"


@given(block=st.integers(1, 6), out=st.integers(1, 4), cin=st.integers(1, 3), blocks=st.integers(1, 7),
       batch=st.integers(1, 3))
@settings(max_examples=40, deadline=None)
def test_block_linear_matches_reshape_matmul(block, out, cin, blocks, batch):
    layer = BlockLinear(block=block, out_per_block=out, in_channels=cin)
    assert _n_params(layer) == block * cin * out + out
    x = torch.randn(batch, blocks * block, cin)
    # Conv1d weight is (C', C, k): output o of block n is sum_{c, j} W[o, c, j] x[n*k + j, c] + b[o].
    xb = x.reshape(batch, blocks, block, cin)  # (B, T, C) -> (B, T // k, k, C)
    ref = torch.einsum("bnjc,ocj->bno", xb, layer.conv.weight) + layer.conv.bias
    torch.testing.assert_close(layer(x), ref, rtol=1e-5, atol=1e-5)


def test_block_linear_bad_inputs_raise():
    with pytest.raises(ValueError, match="multiple of block=5"):
        BlockLinear(5, 3)(torch.randn(2, 99))
    with pytest.raises(ValueError, match=r"expected input \(B, T, 2\)"):
        BlockLinear(5, 3, in_channels=2)(torch.randn(2, 100, 3))
    with pytest.raises(ValueError, match="block=0"):
        BlockLinear(0, 3)


def test_learned_mix_starts_at_the_average_and_learns():
    mix = LearnedMix()
    x, y = torch.randn(4, 7, 5), torch.randn(4, 7, 5)
    assert mix.alpha().item() == 0.5
    torch.testing.assert_close(mix(x, y), (x + y) / 2, rtol=0, atol=0)
    (mix(x, y) - x).pow(2).sum().backward()
    assert mix.a.grad is not None and mix.a.grad.abs().item() > 0
    # d/da of alpha*x + (1-alpha)*y is sigmoid'(a) (x - y) = 0.25 (x - y) at a = 0.
    out = mix(x, y)
    grad_ref = ((out - x) * 2 * 0.25 * (x - y)).sum()
    torch.testing.assert_close(mix.a.grad, grad_ref.detach(), rtol=1e-5, atol=1e-5)


def test_gated_mix_starts_at_the_average_and_learns():
    mix = GatedMix(5)
    x, y = torch.randn(4, 7, 5), torch.randn(4, 7, 5)
    g = mix.gates(x, y)
    assert g.shape == (4, 7, 2) and torch.all(g == 0.5)
    torch.testing.assert_close(mix(x, y), (x + y) / 2, rtol=0, atol=0)
    (mix(x, y) - x).pow(2).sum().backward()
    assert mix.gate.weight.grad.abs().sum().item() > 0
    # Both logits get opposite gradients, so the bias gradient sums to zero but is nonzero.
    assert mix.gate.bias.grad.abs().sum().item() > 0
    assert _n_params(mix) == 2 * 10 + 2


def test_gated_mix_matches_formula_after_training_step():
    torch.manual_seed(0)
    mix = GatedMix(3)
    with torch.no_grad():
        mix.gate.weight.normal_()
        mix.gate.bias.normal_()
    x, y = torch.randn(6, 3), torch.randn(6, 3)
    logits = torch.cat([x, y], -1) @ mix.gate.weight.T + mix.gate.bias
    e = logits.exp()
    g0 = (e[:, 0] / e.sum(-1))[:, None]
    torch.testing.assert_close(mix(x, y), g0 * x + (1 - g0) * y, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("make", [LearnedMix, lambda: GatedMix(5)])
def test_mixes_reject_mismatched_shapes(make):
    with pytest.raises(ValueError, match=r"same shape.*\[2, 3, 5\] and \[2, 5\]"):
        make()(torch.randn(2, 3, 5), torch.randn(2, 5))


def test_gated_mix_rejects_wrong_dim():
    with pytest.raises(ValueError, match=r"GatedMix\(dim=5\) expected inputs \(\.\.\., 5\)"):
        GatedMix(5)(torch.randn(2, 4), torch.randn(2, 4))


def test_concat_and_sum_fuse_without_parameters():
    x, y, z = torch.randn(2, 7, 5), torch.randn(2, 7, 5), torch.randn(2, 7, 3)
    assert _n_params(Concat()) == _n_params(Sum()) == 0
    assert torch.equal(Concat()(x, z), torch.cat([x, z], dim=-1)) and Concat()(x, z).shape == (2, 7, 8)
    assert torch.equal(Sum()(x, y), x + y)
    with pytest.raises(ValueError, match=r"same leading axes.*\[2, 7, 5\] and \[2, 6, 5\]|\[2, 7, 5\] and \[2, 6, 5\]"):
        Concat()(x, torch.randn(2, 6, 5))
    with pytest.raises(ValueError, match=r"Sum fuses two tensors of the same shape"):
        Sum()(x, z)
