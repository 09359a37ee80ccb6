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

import functools

import torch

from speechconv.feature_config import ORDER2_RULES


def delta_taps(window: int) -> torch.Tensor:
    """The ``2N + 1`` first-order taps ``n / (2 sum n^2)`` for ``n = -N..N`` (float64)."""
    n = torch.arange(-window, window + 1, dtype=torch.float64)
    return n / (2 * (n[window + 1 :] ** 2).sum())


@functools.cache
def tap_weights(window: int) -> tuple[float, ...]:
    """:func:`delta_taps` as Python floats, checked antisymmetric once per ``window``
    (the feature stage calls :func:`apply_taps` a few times per batch, so the float64
    arithmetic is not redone there)."""
    w = tuple(delta_taps(window).tolist())
    K = window
    assert K >= 1 and all(w[K + n] == -w[K - n] for n in range(K + 1)), f"taps {w} are not antisymmetric"
    return w


def kaldi_order2_taps(window: int) -> torch.Tensor:
    """Kaldi's second-order taps: the first-order taps convolved with themselves (``4N + 1``, float64)."""
    taps = delta_taps(window)
    # conv1d is a correlation; the taps are odd so flipping only changes the sign twice.
    return torch.nn.functional.conv1d(taps.view(1, 1, -1), taps.flip(0).view(1, 1, -1), padding=2 * window).view(-1)


def replicate_edges_(extended: torch.Tensor, lengths: torch.Tensor, pad: int) -> torch.Tensor:
    """Fill the ``pad`` frames on each side of every utterance with its own edge frames, in place.

    Args:
        extended: ``(B, T + 2 pad, F)`` holding frame ``t`` of each utterance at ``pad + t``.
        lengths: ``(B,)`` valid frames per utterance, each in ``[0, T]``.
        pad: frames on each side.

    Returns:
        ``extended``, with positions ``< pad`` holding frame 0 and positions
        ``pad + L .. pad + L + pad - 1`` holding frame ``L - 1`` of an utterance of
        length ``L >= 1`` (anything later is padding the caller ignores).
    """
    T = extended.shape[1] - 2 * pad
    if pad == 0 or T <= 0:
        return extended
    extended[:, :pad] = extended[:, pad : pad + 1]
    extended[:, pad + T :] = extended[:, pad + T - 1 : pad + T]
    short = (lengths > 0) & (lengths < T)
    if bool(short.any()):
        rows = short.nonzero().view(-1)
        last = extended[rows, pad + lengths[rows] - 1]  # (R, F)
        # (R,) rows x (pad,) offsets: the frames just after each short utterance's end.
        pos = (pad + lengths[rows])[:, None] + torch.arange(pad, device=extended.device)[None, :]
        extended[rows[:, None], pos] = last[:, None, :]
    return extended


def pad_replicate(features: torch.Tensor, lengths: torch.Tensor, pad: int) -> torch.Tensor:
    """Pad each utterance along T by ``pad`` copies of its own first and last valid frame.

    Args:
        features: ``(B, T, F)``.
        lengths: ``(B,)`` int valid frames per utterance, each in ``[0, T]``.
        pad: frames added on each side.

    Returns:
        ``(B, T + 2 pad, F)`` as :func:`replicate_edges_` leaves it.
    """
    B, T, F = features.shape
    out = features.new_zeros(B, T + 2 * pad, F) if T == 0 else features.new_empty(B, T + 2 * pad, F)
    out[:, pad : pad + T] = features
    return replicate_edges_(out, lengths, pad)


def apply_taps(padded: torch.Tensor, w: tuple[float, ...], num_frames: int,
               out: torch.Tensor | None = None) -> torch.Tensor:
    """Correlate along T with antisymmetric taps: ``out_t = sum_j w_j padded_{t + j}``.

    Args:
        padded: ``(B, T + 2K, F)`` from :func:`pad_replicate` with ``K = len(w) // 2``.
        w: ``2K + 1`` weights with ``w[K + n] = -w[K - n]`` (:func:`tap_weights`).
        num_frames: ``T``.
        out: optional ``(B, T, F)`` destination (may be strided, e.g. one channel of
            ``(B, T, F, C)`` features): the last operation writes straight into it.

    Returns:
        ``(B, T, F)``, computed as ``sum_n w_{K+n} (padded_{t+K+n} - padded_{t+K-n})``
        so that constant input gives exactly 0.  Shifted slices of the contiguous
        ``(B, T, F)`` layout beat a conv1d here: the features are made frame-major,
        and a conv would need two transposes of the whole tensor.
    """
    K = len(w) // 2
    assert padded.shape[1] == num_frames + 2 * K, f"padded has {padded.shape[1]} frames, expected {num_frames}+2*{K}"

    def frame(n: int) -> torch.Tensor:  # padded_{t + K + n} for t = 0 .. T-1
        return padded[:, K + n : K + n + num_frames]

    acc = torch.sub(frame(K), frame(-K))
    if K == 1:
        return torch.mul(acc, w[2], out=out) if out is not None else acc.mul_(w[2])
    acc.mul_(w[2 * K])
    # Each difference is formed before it is scaled: a fused a + w*(x - y) keeps
    # constant input at exactly 0, where a + w*x - w*y does not under FMA rounding.
    for n in range(K - 1, 1, -1):
        acc.add_(torch.sub(frame(n), frame(-n)), alpha=w[K + n])
    last = torch.sub(frame(1), frame(-1))
    return torch.add(acc, last, alpha=w[K + 1], out=out) if out is not None else acc.add_(last, alpha=w[K + 1])


def context_frames(window: int, rule: str, delta_delta: bool) -> int:
    """Edge frames :func:`deltas_into` needs on each side: ``2N`` for Kaldi's second order, else ``N``."""
    return 2 * window if delta_delta and rule == "kaldi" else window


def deltas_into(extended: torch.Tensor, lengths: torch.Tensor, window: int, rule: str,
                delta_out: torch.Tensor | None, delta_delta_out: torch.Tensor | None) -> None:
    """Write deltas of statics held in an edge buffer into (possibly strided) outputs.

    Args:
        extended: ``(B, T + 2P, F)`` with the statics at ``[P, P + T)``,
            ``P = context_frames(window, rule, delta_delta_out is not None)``; its
            edges are filled here (:func:`replicate_edges_`).
        lengths: ``(B,)`` valid frames per utterance.
        window: ``N``.
        rule: ``kaldi`` or ``cascade`` (module docstring).
        delta_out, delta_delta_out: ``(B, T, F)`` destinations, or ``None`` to skip.
    """
    P = context_frames(window, rule, delta_delta_out is not None)
    T = extended.shape[1] - 2 * P
    taps = tap_weights(window)
    replicate_edges_(extended, lengths, P)
    if delta_delta_out is None:
        if delta_out is not None:
            apply_taps(extended, taps, T, out=delta_out)
        return
    if rule == "kaldi":
        # e_u for u = -N .. T-1+N; its middle is the first order (see delta_and_delta_delta).
        first = apply_taps(extended, taps, T + 2 * window)
        if delta_out is not None:
            delta_out.copy_(first[:, window : window + T])
        apply_taps(first, taps, T, out=delta_delta_out)
    elif rule == "cascade":
        first = apply_taps(extended, taps, T)
        if delta_out is not None:
            delta_out.copy_(first)
        apply_taps(pad_replicate(first, lengths, window), taps, T, out=delta_delta_out)
    else:
        raise ValueError(f"order2 rule {rule!r} is invalid: expected one of {ORDER2_RULES}")


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
    return apply_taps(pad_replicate(features, lengths, window), tap_weights(window), T)


def delta_and_delta_delta(
    features: torch.Tensor, lengths: torch.Tensor, window: int = 2, rule: str = "kaldi"
) -> tuple[torch.Tensor, torch.Tensor]:
    """First- and second-order deltas by ``rule`` (module docstring).

    ``kaldi`` is computed without the ``4N + 1``-tap filter: the first-order taps are
    applied to the statics clamped ``2N`` frames beyond each edge, giving
    ``e_u = sum_n a_n c_{clamp(u+n)}`` for ``u = -N .. L-1+N``; then
    ``sum_k a_k e_{t+k} = sum_j (a * a)_j c_{clamp(t+j)}``, Kaldi's order-2 output,
    and ``e_t`` for ``0 <= t < L`` is the first-order output itself.  Two
    ``2N + 1``-tap passes instead of one of ``2N + 1`` and one of ``4N + 1`` taps.

    Args:
        features: ``(B, T, F)`` static features.
        lengths: ``(B,)`` valid frames per utterance.
        window: ``N`` of the first-order rule.
        rule: ``kaldi`` or ``cascade``.

    Returns:
        ``(delta, delta_delta)``, each ``(B, T, F)``, valid on ``t < lengths[b]``.
    """
    T = features.shape[1]
    taps = tap_weights(window)
    if rule == "kaldi":
        extended = apply_taps(pad_replicate(features, lengths, 2 * window), taps, T + 2 * window)
        return extended[:, window : window + T], apply_taps(extended, taps, T)
    if rule == "cascade":
        first = compute_deltas(features, lengths, window)
        return first, compute_deltas(first, lengths, window)
    raise ValueError(f"order2 rule {rule!r} is invalid: expected one of {ORDER2_RULES}")
