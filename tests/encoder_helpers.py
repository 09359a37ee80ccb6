"""Helpers shared by the encoder's tests (test_encoder, test_encoder_stream, test_export)."""

from __future__ import annotations

import torch
from torch import nn


def randomise_batch_norms(module: nn.Module, seed: int = 0) -> None:
    """Non-trivial running statistics and affine parameters in every batch norm of
    ``module``, so that an eval-mode norm is not the identity."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
