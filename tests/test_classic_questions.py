"""The classic multi-channel convolution questions, answered twice: by the inspector and
by real torch modules.  The expected numbers are the known answers, worked out here
from the definition of a 2-D convolution (one ``in x kt x kf`` block per filter)."""

from __future__ import annotations

import math

import torch
from torch import nn

from speechconv.encoder_config import LayerConfig
from speechconv.inspector import describe_layers
from speechconv.layers import BlockLinear


def _plain_conv(filters: int, kernel: int, stride: int = 1) -> LayerConfig:
    """A bare conv: no padding, bias, no batch norm, no activation (a default Conv2d)."""
    return LayerConfig(
        filters=filters, kernel=[kernel, kernel], stride=[stride, stride], padding="valid",
        batch_norm=False, activation="none",
    )


def _numel(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def test_10x5x6_input_3x3_conv_16_filters():
    # Width 10 -> T, height 5 -> F.  Valid 3x3: 10 - 3 + 1 = 8, 5 - 3 + 1 = 3.
    row = describe_layers((10, 5, 6), [_plain_conv(16, 3)]).row("layers.0")
    assert row.out_shape == (8, 3, 16)
    assert row.kernels_2d == 6 * 16 == 96
    assert row.kernel_shape == (16, 6, 3, 3)
    assert row.weights == 3 * 3 * 96 == 864
    assert row.biases == 16

    conv = nn.Conv2d(6, 16, (3, 3))
    x = torch.randn(1, 6, 10, 5)  # (B, C, T, F): width along T, height along F
    assert tuple(conv(x).shape) == (1, 16, 8, 3)
    assert conv.weight.numel() == 864 and conv.bias.numel() == 16
    # Each output channel is the sum over the 6 input channels of one 2-D correlation each.
    ref = sum(
        torch.nn.functional.conv2d(x[:, i : i + 1], conv.weight[:, i : i + 1]) for i in range(6)
    ) + conv.bias.view(1, 16, 1, 1)
    torch.testing.assert_close(conv(x), ref, rtol=1e-5, atol=1e-5)


def test_7550_not_7800():
    # Layer #2 of the LeNet-like net: 13x13x6 maps -> 50 maps of 5x5 (5x5 kernel, stride 2).
    row = describe_layers((13, 13, 6), [_plain_conv(50, 5, stride=2)]).row("layers.0")
    assert row.out_shape == (5, 5, 50)
    assert row.params == (5 * 5 * 6 + 1) * 50 == 7550
    assert row.params != (5 * 5 + 1) * 6 * 50  # 7,800 gives each input map its own bias
    assert row.kernels_2d == 300 and row.biases == 50

    conv = nn.Conv2d(in_channels=6, out_channels=50, kernel_size=5, stride=2)
    assert _numel(conv) == 7550
    assert tuple(conv(torch.zeros(1, 6, 13, 13)).shape) == (1, 50, 5, 5)


def test_keras_7x7x8x16():
    # InputLayer((101, 101, 1)), Conv2D(8, (11, 11)), Conv2D(16, (7, 7)), valid padding.
    d = describe_layers((101, 101, 1), [_plain_conv(8, 11), _plain_conv(16, 7)])
    first, second = d.row("layers.0"), d.row("layers.1")
    assert first.out_shape == (91, 91, 8) and second.out_shape == (85, 85, 16)
    assert second.kernel_shape == (16, 8, 7, 7)  # PyTorch order (out, in, kt, kf)
    assert second.weights == 7 * 7 * 8 * 16 == 6272
    assert first.weights == 11 * 11 * 1 * 8 == 968

    model = nn.Sequential(nn.Conv2d(1, 8, 11), nn.Conv2d(8, 16, 7))
    assert tuple(model(torch.zeros(1, 1, 101, 101)).shape) == (1, 16, 85, 85)
    w = model[1].weight
    assert tuple(w.shape) == (16, 8, 7, 7)
    assert tuple(w.permute(2, 3, 1, 0).shape) == (7, 7, 8, 16)  # (out, in, kh, kw) -> Keras (kh, kw, in, out)
    assert w.numel() == 6272


def test_weiss2017_default_front_on_t_by_80_by_3():
    # Two layers of 32 filters, 3x3, stride 2x2, SAME, batch norm, ReLU.
    layers = [LayerConfig(), LayerConfig()]
    for t in (1, 2, 7, 98, 101, 1000):
        d = describe_layers((t, 80, 3), layers)
        assert d.output_shape == (math.ceil(math.ceil(t / 2) / 2), 20, 32)
        assert d.output_shape[0] == math.ceil(t / 4)
    first, second = d.rows
    # Layer 1: 32 filters, each a 3 (channels) x 3 x 3 block: kernel tensor 32x3x3x3.
    assert first.kernel_shape == (32, 3, 3, 3) and first.weights == 864 and first.kernels_2d == 96
    assert first.biases == 0  # batch norm's shift replaces the conv bias
    assert first.bn_params == 32 + 32  # gamma and beta
    assert first.bn_buffers == 32 + 32 + 1  # running mean, running var, num_batches_tracked
    assert second.kernel_shape == (32, 32, 3, 3) and second.weights == 9216 and second.kernels_2d == 1024
    assert second.bn_params == 64 and second.bn_buffers == 65
    assert d.totals.params == 864 + 9216 + 128

    # The same with real modules: conv without bias, then BatchNorm2d.
    model = nn.Sequential(
        nn.Conv2d(3, 32, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Conv2d(32, 32, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
    )
    assert _numel(model[0]) == 864 and _numel(model[3]) == 9216
    assert _numel(model[1]) == 64 and sum(b.numel() for b in model[1].buffers()) == 65
    assert _numel(model) == d.totals.params
    # With an even T, TF SAME pads 0 before and 1 after, which symmetric padding=1 can
    # not express, but the output length is the same: 100 -> 50 -> 25 and 80 -> 40 -> 20.
    assert tuple(model(torch.zeros(1, 3, 100, 80)).shape) == (1, 32, 25, 20)


def test_block_linear_100_in_blocks_of_5():
    stack = LayerConfig(kind="stack", frames=5, filters=3, batch_norm=False, activation="none")
    row = describe_layers((100, 1, 1), [stack]).row("layers.0")
    assert row.out_shape == (20, 1, 3)
    assert row.kernel_shape == (3, 1, 5, 1)
    assert row.weights == 5 * 3 == 15 and row.biases == 3

    layer = BlockLinear(block=5, out_per_block=3)
    assert tuple(layer(torch.randn(2, 100)).shape) == (2, 20, 3)
    assert layer.conv.weight.numel() == 15 and layer.conv.bias.numel() == 3
    # Block b of the output depends only on inputs 5b..5b+4.
    x = torch.randn(1, 100, requires_grad=True)
    layer(x)[0, 7].sum().backward()
    touched = x.grad[0].nonzero().flatten().tolist()
    assert set(touched) <= set(range(35, 40))
