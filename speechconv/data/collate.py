"""Items of the datasets and the collate function that pads them into a batch."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch


class Item(NamedTuple):
    """One utterance.

    Attributes:
        features: ``(T, F, C)`` float32.
        tokens: ``(U,)`` int64 token ids of the transcript (no blank, sos or eos).
        text: the normalised transcript.
    """

    features: torch.Tensor
    tokens: torch.Tensor
    text: str


class Batch(NamedTuple):
    """A padded batch (a NamedTuple, so DataLoader's ``pin_memory`` handles it).

    Attributes:
        features: ``(B, T, F, C)`` float32, zero past each utterance's length.
        lengths: ``(B,)`` int64 valid frames.
        targets: ``(B, U)`` int64 token ids, ``pad_id`` past each target length.
        target_lengths: ``(B,)`` int64.
        texts: the ``B`` transcripts.
    """

    features: torch.Tensor
    lengths: torch.Tensor
    targets: torch.Tensor
    target_lengths: torch.Tensor
    texts: list[str]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """The tensors moved to ``device`` (texts stay)."""
        return Batch(
            self.features.to(device, non_blocking=non_blocking),
            self.lengths.to(device, non_blocking=non_blocking),
            self.targets.to(device, non_blocking=non_blocking),
            self.target_lengths.to(device, non_blocking=non_blocking),
            self.texts,
        )


def collate(items: Sequence[Item], pad_id: int) -> Batch:
    """Pad ``B`` items: features ``(T_b, F, C)`` -> ``(B, T, F, C)``, tokens ``(U_b,)`` -> ``(B, U)``."""
    if not items:
        raise ValueError("cannot collate an empty list of items")
    lengths = torch.tensor([item.features.shape[0] for item in items], dtype=torch.int64)
    target_lengths = torch.tensor([item.tokens.numel() for item in items], dtype=torch.int64)
    _, n_bins, n_channels = items[0].features.shape
    features = torch.zeros(len(items), int(lengths.max()), n_bins, n_channels, dtype=torch.float32)
    targets = torch.full((len(items), int(target_lengths.max())), pad_id, dtype=torch.int64)
    for b, item in enumerate(items):
        assert item.features.shape[1:] == (n_bins, n_channels), (
            f"item {b} has features {tuple(item.features.shape)}, the batch (T, {n_bins}, {n_channels})"
        )
        features[b, : lengths[b]] = item.features
        targets[b, : target_lengths[b]] = item.tokens
    return Batch(features, lengths, targets, target_lengths, [item.text for item in items])


class Collate:
    """Picklable ``collate_fn`` for DataLoader: ``Collate(vocab.pad_id)``."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, items: Sequence[Item]) -> Batch:
        return collate(items, self.pad_id)
