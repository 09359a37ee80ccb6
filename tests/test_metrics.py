"""WER/CER: hand-counted cases and an independent recursive edit distance."""

from __future__ import annotations

import functools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from speechconv.metrics import ErrorRate, cer, edit_distance, error_rate, wer


def reference_distance(a: tuple, b: tuple) -> int:
    """Levenshtein by memoised recursion on suffixes (written independently of the DP)."""

    @functools.cache
    def d(i: int, j: int) -> int:
        if i == len(a):
            return len(b) - j
        if j == len(b):
            return len(a) - i
        if a[i] == b[j]:
            return d(i + 1, j + 1)
        return 1 + min(d(i + 1, j), d(i, j + 1), d(i + 1, j + 1))

    return d(0, 0)


@pytest.mark.parametrize(
    ("ref", "hyp", "errors"),
    [
        ("one two three", "one two three", 0),
        ("one two three", "one too three", 1),  # substitution
        ("one two three", "one three", 1),  # deletion
        ("one two three", "one two two three", 1),  # insertion
        ("one two three", "three two one", 2),  # two substitutions
        ("one two three", "", 3),
        ("a b c d", "x a b c", 2),  # insert x, delete d
    ],
)
def test_wer_hand_counted(ref, hyp, errors):
    result = wer([ref], [hyp])
    assert result.errors == errors
    assert result.ref_length == len(ref.split())
    assert result.rate == pytest.approx(errors / len(ref.split()))


def test_cer_counts_spaces_and_collapses_whitespace():
    # "ab cd" (5 chars) vs "ab  ce": whitespace collapses, one substitution
    assert cer(["ab cd"], ["ab  ce"]) == ErrorRate(1, 5)
    assert cer(["kitten"], ["sitting"]) == ErrorRate(3, 6)  # the textbook example


def test_corpus_rate_sums_errors_and_reference_tokens():
    refs = ["one", "one two three four"]
    hyps = ["two", "one two three four"]
    result = wer(refs, hyps)
    assert (result.errors, result.ref_length) == (1, 5)
    assert result.rate == pytest.approx(0.2)  # not the mean of 1.0 and 0.0


def test_empty_references():
    assert wer([""], [""]) == ErrorRate(0, 0)
    assert wer([""], [""]).rate == 0.0
    assert wer([""], ["a b"]).errors == 2  # insertions
    assert math.isinf(wer([""], ["a b"]).rate)
    assert wer(["", "a b"], ["x", "a b"]).rate == pytest.approx(0.5)
    assert wer([], []).rate == 0.0


def test_bad_arguments():
    with pytest.raises(ValueError, match="2 references but 1 hypotheses"):
        wer(["a", "b"], ["a"])
    with pytest.raises(TypeError, match="lists of transcripts"):
        wer("a b", "a b")
    with pytest.raises(ValueError, match="unit must be"):
        error_rate(["a"], ["a"], unit="phone")


tokens = st.lists(st.sampled_from("abcd"), max_size=9).map(tuple)


@settings(max_examples=300, deadline=None)
@given(tokens, tokens)
def test_edit_distance_matches_independent_recursion(a, b):
    assert edit_distance(a, b) == reference_distance(a, b)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(tokens, tokens), max_size=5))
def test_corpus_wer_matches_recursion(pairs):
    refs = [" ".join(a) for a, _ in pairs]
    hyps = [" ".join(b) for _, b in pairs]
    result = wer(refs, hyps)
    assert result.errors == sum(reference_distance(a, b) for a, b in pairs)
    assert result.ref_length == sum(len(a) for a, _ in pairs)
    # symmetric distance, bounded by the longer sequence
    for a, b in pairs:
        assert edit_distance(a, b) == edit_distance(b, a) <= max(len(a), len(b))
