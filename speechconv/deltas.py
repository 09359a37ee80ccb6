"""Delta and delta-delta features along time, per utterance in a padded batch.

First order (Kaldi's and HTK's regression, torchaudio's ``compute_deltas``)::

    d_t = sum_{n=1..N} n (c_{t+n} - c_{t-n}) / (2 sum_{n=1..N} n^2)

with the edge frames of each utterance replicated (``c_{-1} = c_0``,
``c_{L} = c_{L-1}`` for an utterance of ``L`` valid frames, never the batch's padding).

Second order, two named rules (``FeatureConfig.order2``):

``kaldi``    Kaldi's ``add-deltas``: the order-2 window is the order-1 window
             convolved with itself.  For ``N = 2``, ``[-2, -1, 0, 1, 2] / 10`` convolved
             with itself is ``[4, 4, 1, -4, -10, -4, 1, 4, 4] / 100``, and Kaldi applies
             it to the *static* features with every index clamped into ``[0, L-1]``
             (``DeltaFeatures::Process``).  Near the edges this is therefore not a
             delta of the delta: frame ``t`` reads ``c_{clamp(t+j)}`` for ``j = -4..4``.
``cascade``  the first-order rule applied to the (edge-replicated) first-order
             output, torchaudio's ``compute_deltas`` twice.  Away from the edges
             (``4 <= t < L-4``) both rules give the same numbers; within 4 frames of
             an edge they differ, because the cascade replicates ``d_0`` where Kaldi
             replicates ``c_0``.

All functions take features as ``(B, T, F)`` and ``(B,)`` lengths; frames at or beyond
an utterance's length in the output are unspecified (the caller zeroes them).
"""

from __future__ import annotations

import torch

from speechconv.feature_config import ORDER2_RULES


def delta_taps(window: int) -> torch.Tensor:
    """The ``2N + 1`` first-order taps ``n / (2 sum n^2)`` for ``n = -N..N`` (float64)."""
    n = torch.arange(-window, window + 1, dtype=torch.float64)
    return n / (2 * (n[window + 1 :] ** 2).sum())


def kaldi_order2_taps(window: int) -> torch.Tensor:
    """Kaldi's second-order taps: the first-order taps convolved with themselves (``4N + 1``, float64)."""
    taps = delta_taps(window)
    # conv1d is a correlation; the taps are odd so flipping only changes the sign twice.
    return torch.nn.functional.conv1d(taps.view(1, 1, -1), taps.flip(0).view(1, 1, -1), padding=2 * window).view(-1)


def pad_replicate(features: torch.Tensor, lengths: torch.Tensor, pad: int) -> torch.Tensor:
    """Pad each utterance along T by ``pad`` copies of its own first and last valid frame.

    Args:
        features: ``(B, T, F)``.
        lengths: ``(B,)`` int valid frames per utterance, each in ``[0, T]``.
        pad: frames added on each side.

    Returns:
        ``(B, T + 2 pad, F)``: position ``pad + t`` holds frame ``t``; positions
        ``pad + L .. pad + L + pad - 1`` hold frame ``L - 1`` of an utterance of length
        ``L >= 1`` (anything later is padding the caller ignores).
    """
    B, T, F = features.shape
    if T == 0:
        return features.new_zeros(B, 2 * pad, F)
    out = features.new_empty(B, T + 2 * pad, F)
    out[:, pad : pad + T] = features
    out[:, :pad] = features[:, :1]
    out[:, pad + T :] = features[:, -1:]
    short = (lengths > 0) & (lengths < T)
    if pad and bool(short.any()):
        rows = short.nonzero().view(-1)
        last = lengths[rows] - 1
        # (R,) rows x (pad,) offsets: the frames just after each short utterance's end.
        pos = (pad + lengths[rows])[:, None] + torch.arange(pad, device=features.device)[None, :]
        out[rows[:, None], pos] = features[rows, last][:, None, :]
    return out


def apply_taps(padded: torch.Tensor, taps: torch.Tensor, num_frames: int) -> torch.Tensor:
    """Correlate along T with odd-length ``taps``: ``out_t = sum_j taps_j padded_{t + j}``.

    Args:
        padded: ``(B, T + 2K, F)`` from :func:`pad_replicate` with ``K = len(taps) // 2``.
        taps: ``(2K + 1,)`` weights (any float dtype; cast to ``padded``'s).
        num_frames: ``T``.

    Returns:
        ``(B, T, F)``.  Shifted slices of the contiguous ``(B, T, F)`` layout beat a
        conv1d here: the features are made frame-major, and a conv would need two
        transposes of the whole tensor.  The centre tap is skipped when it is zero.
    """
    K = taps.numel() // 2
    assert padded.shape[1] == num_frames + 2 * K, f"padded has {padded.shape[1]} frames, expected {num_frames}+2*{K}"
    weights = taps.tolist()
    out = None
    for j, w in enumerate(weights):
        if w == 0.0:
            continue
        term = padded[:, j : j + num_frames]
        out = term * w if out is None else out.add_(term, alpha=w)
    assert out is not None, "all taps are zero"
    return out


def compute_deltas(features: torch.Tensor, lengths: torch.Tensor, window: int = 2) -> torch.Tensor:
    """First-order deltas with each utterance's edge frames replicated.

    Args:
        features: ``(B, T, F)``.
        lengths: ``(B,)`` valid frames per utterance.
        window: ``N`` (2: five taps).

    Returns:
        ``(B, T, F)``, valid on ``t < lengths[b]``.
    """
    T = features.shape[1]
    return apply_taps(pad_replicate(features, lengths, window), delta_taps(window), T)


def compute_delta_deltas(
    features: torch.Tensor, lengths: torch.Tensor, window: int = 2, rule: str = "kaldi",
    deltas: torch.Tensor | None = None,
) -> torch.Tensor:
    """Second-order deltas by ``rule`` (module docstring).

    Args:
        features: ``(B, T, F)`` static features.
        lengths: ``(B,)`` valid frames per utterance.
        window: ``N`` of the first-order rule.
        rule: ``kaldi`` (9-tap filter on the clamped statics) or ``cascade``.
        deltas: ``(B, T, F)`` first-order deltas if already computed (``cascade`` reuses them).

    Returns:
        ``(B, T, F)``, valid on ``t < lengths[b]``.
    """
    T = features.shape[1]
    if rule == "kaldi":
        taps = kaldi_order2_taps(window)
        return apply_taps(pad_replicate(features, lengths, 2 * window), taps, T)
    if rule == "cascade":
        first = compute_deltas(features, lengths, window) if deltas is None else deltas
        return compute_deltas(first, lengths, window)
    raise ValueError(f"order2 rule {rule!r} is invalid: expected one of {ORDER2_RULES}")
