"""Small building blocks: a block-wise linear layer and four ways to fuse two tensors.

``BlockLinear`` is the "every 5 inputs fully connected to their own 3 outputs" layer:
a Conv1d whose kernel equals its stride, so blocks never overlap and share one weight
matrix.  ``LearnedMix``, ``GatedMix``, ``Concat`` and ``Sum`` fuse two tensors (for
example two encoder branches, :class:`speechconv.ConvEncoder`); the two learned ones
start as the plain average, so adding a branch does not change the model at
initialisation.
"""

from __future__ import annotations

import torch
from torch import nn


class BlockLinear(nn.Module):
    """Non-overlapping block-wise fully connected layer, weights shared across blocks.

    The input's axis ``T`` is cut into ``T // block`` consecutive blocks of ``block``
    positions; each block (all its ``in_channels`` channels) is fully connected to
    ``out_per_block`` outputs and to nothing else.  Implemented as
    ``Conv1d(in_channels, out_per_block, kernel_size=block, stride=block)``.

    Example: 100 values in blocks of 5 with 3 outputs each,
    ``BlockLinear(block=5, out_per_block=3)`` maps ``(B, 100)`` to ``(B, 20, 3)`` with
    ``5 * 3 = 15`` weights and 3 biases.

    Parameters: ``block * in_channels * out_per_block`` weights + ``out_per_block``
    biases (when ``bias``).

    Args:
        block: positions per block (kernel size and stride).
        out_per_block: outputs computed from each block.
        in_channels: channels per position; a 2-D input ``(B, T)`` means 1 channel.
        bias: add a learned bias per output.

    Shapes:
        ``forward(x)``: ``(B, T, C)`` with ``C == in_channels``, or ``(B, T)`` when
        ``in_channels == 1``, -> ``(B, T // block, out_per_block)``.  ``T`` must be a
        multiple of ``block`` (a ``ValueError`` otherwise: a partial block would be
        silently dropped).
    """

    def __init__(self, block: int, out_per_block: int, in_channels: int = 1, bias: bool = True) -> None:
        super().__init__()
        for name, value in (("block", block), ("out_per_block", out_per_block), ("in_channels", in_channels)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"BlockLinear {name}={value!r} is invalid: expected an int >= 1")
        self.block = block
        self.out_per_block = out_per_block
        self.in_channels = in_channels
        self.conv = nn.Conv1d(in_channels, out_per_block, kernel_size=block, stride=block, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, T, C)`` or ``(B, T)`` -> ``(B, T // block, out_per_block)``."""
        if x.dim() == 2 and self.in_channels == 1:
            x = x.unsqueeze(-1)  # (B, T) -> (B, T, 1)
        if x.dim() != 3 or x.shape[2] != self.in_channels:
            raise ValueError(
                f"BlockLinear expected input (B, T, {self.in_channels})"
                f"{' or (B, T)' if self.in_channels == 1 else ''}, got shape {list(x.shape)}"
            )
        if x.shape[1] % self.block != 0:
            raise ValueError(
                f"BlockLinear got T={x.shape[1]} positions, which is not a multiple of block={self.block}; "
                f"pad or trim the input to a multiple of {self.block}"
            )
        y = self.conv(x.transpose(1, 2))  # (B, T, C) -> (B, C, T); conv -> (B, C', T // block)
        return y.transpose(1, 2)  # (B, C', T // block) -> (B, T // block, C')


def _check_same_shape(name: str, x: torch.Tensor, y: torch.Tensor) -> None:
    """Raise a ``ValueError`` naming both shapes unless ``x`` and ``y`` (any ``(..., D)``) match."""
    if x.shape != y.shape:
        raise ValueError(
            f"{name} fuses two tensors of the same shape, got {list(x.shape)} and {list(y.shape)}; "
            f"make both branches produce the same (..., D)"
        )


class LearnedMix(nn.Module):
    """``out = alpha * x + (1 - alpha) * y`` with ``alpha = sigmoid(a)`` and one trainable
    scalar ``a``, initialised to 0 so the layer starts as the plain average.

    The sigmoid keeps the weights in ``(0, 1)`` and summing to 1, so the fused tensor
    stays on the scale of its inputs.

    Shapes:
        ``forward(x, y)``: two tensors ``(..., D)`` of the same shape -> the same shape.
    """

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Parameter(torch.zeros(()))

    def alpha(self) -> torch.Tensor:
        """The current weight of ``x``, a scalar in ``(0, 1)``."""
        return torch.sigmoid(self.a)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``x``, ``y``: ``(..., D)`` -> ``(..., D)``."""
        _check_same_shape("LearnedMix", x, y)
        alpha = torch.sigmoid(self.a)
        return alpha * x + (1.0 - alpha) * y


class GatedMix(nn.Module):
    """Per-position gate: ``g = softmax(W [x; y] + b)`` over the two inputs,
    ``out = g0 * x + g1 * y``.

    ``W`` is ``Linear(2 * dim, 2)``, initialised to zero weights and biases, so every
    position starts at ``g = (0.5, 0.5)``, the plain average; the gate then learns which
    branch to trust where.

    Parameters: ``2 * (2 * dim) + 2``.

    Shapes:
        ``forward(x, y)``: two tensors ``(..., D)`` of the same shape, ``D == dim``
        -> ``(..., D)``.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise ValueError(f"GatedMix dim={dim!r} is invalid: expected an int >= 1 (the size of the last axis)")
        self.dim = dim
        self.gate = nn.Linear(2 * dim, 2)
        nn.init.zeros_(self.gate.weight)
        nn.init.zeros_(self.gate.bias)

    def gates(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``x``, ``y``: ``(..., D)`` -> ``(..., 2)`` softmax weights of ``x`` and ``y``."""
        _check_same_shape("GatedMix", x, y)
        if x.dim() == 0 or x.shape[-1] != self.dim:
            raise ValueError(f"GatedMix(dim={self.dim}) expected inputs (..., {self.dim}), got {list(x.shape)}")
        return torch.softmax(self.gate(torch.cat([x, y], dim=-1)), dim=-1)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``x``, ``y``: ``(..., D)`` -> ``(..., D)``."""
        g = self.gates(x, y)
        return g[..., 0:1] * x + g[..., 1:2] * y


class Concat(nn.Module):
    """``out = [x; y]`` along the last axis: no parameters; the inputs may differ in ``D``.

    Shapes:
        ``forward(x, y)``: ``(..., D1)`` and ``(..., D2)`` with equal leading axes ->
        ``(..., D1 + D2)``.
    """

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``x`` ``(..., D1)``, ``y`` ``(..., D2)`` -> ``(..., D1 + D2)``."""
        if x.shape[:-1] != y.shape[:-1]:
            raise ValueError(f"Concat joins tensors along the last axis, got {list(x.shape)} and {list(y.shape)}; "
                             f"make both branches produce the same leading axes (B, T')")
        return torch.cat([x, y], dim=-1)


class Sum(nn.Module):
    """``out = x + y``: no parameters.

    Shapes:
        ``forward(x, y)``: two tensors ``(..., D)`` of the same shape -> the same shape.
    """

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``x``, ``y``: ``(..., D)`` -> ``(..., D)``."""
        _check_same_shape("Sum", x, y)
        return x + y
