"""SpecAugment (Park et al. 2019) frequency and time masking, seeded per utterance.

Masks are drawn as in ``torchaudio.functional.mask_along_axis``: a width uniform in
``[0, max_width]`` and a start uniform over the positions where the band fits, but
from an explicit ``torch.Generator`` (torchaudio draws from the global generator,
which would make an item depend on which worker made it and in what order).  Time
masks are placed within the valid frames ``[0, length)`` only, so padding never
absorbs a mask and a short utterance is never masked past its end.  One band covers
every channel (static, delta, delta-delta) of the same bins or frames.

Masked values are set to the per-channel mean of the valid features: the features are
log-mels (not normalised by default), where 0 would be a loud, unnatural value.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from speechconv.checks import check_int


def _draw_band(size: int, max_width: int, generator: torch.Generator) -> tuple[int, int]:
    """``(start, width)`` of one band within ``[0, size)``, width uniform in ``[0, min(max_width, size)]``."""
    width = int(torch.randint(0, min(max_width, size) + 1, (1,), generator=generator))
    start = int(torch.randint(0, size - width + 1, (1,), generator=generator))
    return start, width


def spec_augment(
    features: torch.Tensor,
    length: int,
    freq_masks: int,
    freq_width: int,
    time_masks: int,
    time_width: int,
    generator: torch.Generator,
) -> torch.Tensor:
    """Mask ``freq_masks`` bands of bins and ``time_masks`` bands of valid frames.

    Args:
        features: ``(T, F, C)`` features of one utterance (not modified).
        length: valid frames ``T_valid <= T``; masks stay within them.
        freq_masks, freq_width: number of frequency bands and the widest, in bins.
        time_masks, time_width: number of time bands and the widest, in frames.
        generator: the utterance's own generator (its seed makes the masks).

    Returns:
        ``(T, F, C)`` masked copy.
    """
    assert features.dim() == 3, f"spec_augment takes one utterance (T, F, C), got shape {tuple(features.shape)}"
    assert 0 <= length <= features.shape[0], f"length {length} outside [0, T={features.shape[0]}]"
    out = features.clone()
    if length == 0:
        return out
    fill = features[:length].mean(dim=(0, 1))  # (C,)
    n_bins = features.shape[1]
    for _ in range(freq_masks):
        start, width = _draw_band(n_bins, freq_width, generator)
        out[:length, start : start + width, :] = fill
    for _ in range(time_masks):
        start, width = _draw_band(length, time_width, generator)
        out[start : start + width, :, :] = fill
    return out


@dataclass
class SpecAugment:
    """Settings of :func:`spec_augment`, callable on one utterance; also the schema of
    ``data.spec_augment`` (masks and their widest size; 0 masks: off)."""

    freq_masks: int = 2
    freq_width: int = 10
    time_masks: int = 2
    time_width: int = 10

    def __post_init__(self) -> None:
        for key in ("freq_masks", "freq_width", "time_masks", "time_width"):
            check_int(f"data.spec_augment.{key}", getattr(self, key), 0)

    def __call__(self, features: torch.Tensor, length: int, generator: torch.Generator) -> torch.Tensor:
        """``(T, F, C)`` -> ``(T, F, C)``; see :func:`spec_augment`."""
        return spec_augment(
            features, length, self.freq_masks, self.freq_width, self.time_masks, self.time_width, generator
        )
