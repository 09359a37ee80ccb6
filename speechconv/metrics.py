"""Word and character error rates from one Levenshtein distance (torchaudio's).

``errors`` is the minimum number of substitutions, deletions and insertions that turn
the reference token sequence into the hypothesis; the corpus rate is
``sum(errors) / sum(reference tokens)`` (never a mean of per-utterance rates, which
would overweight short utterances).

Tokens: ``unit="word"`` splits on whitespace; ``unit="char"`` takes the characters
of the text with whitespace runs collapsed to one space and trimmed, so spaces count
as characters (as in most CER scripts).

Empty references: an empty reference has 0 tokens, so every hypothesis token is an
insertion.  The corpus rate is then ``errors / ref_length``; when the whole corpus has
``ref_length == 0`` the rate is ``0.0`` if there are no errors and ``inf`` otherwise
(a rate has no finite value there; we return one rather than raise so that a logging
loop never dies on an odd batch).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torchaudio.functional import edit_distance

__all__ = ["ErrorRate", "cer", "edit_distance", "error_rate", "tokenize", "wer"]

UNITS = ("word", "char")


@dataclass(frozen=True)
class ErrorRate:
    """Result of :func:`error_rate`: ``rate = errors / ref_length`` (see the module docstring)."""

    errors: int
    ref_length: int

    @property
    def rate(self) -> float:
        if self.ref_length == 0:
            return 0.0 if self.errors == 0 else float("inf")
        return self.errors / self.ref_length

    def __add__(self, other: ErrorRate) -> ErrorRate:
        return ErrorRate(self.errors + other.errors, self.ref_length + other.ref_length)


def tokenize(text: str, unit: str) -> list[str]:
    """Tokens of ``text`` for ``unit`` ``"word"`` or ``"char"`` (module docstring)."""
    if unit == "word":
        return text.split()
    if unit == "char":
        return list(" ".join(text.split()))
    raise ValueError(f"unit must be one of {UNITS}, got {unit!r}")


def error_rate(references: Sequence[str], hypotheses: Sequence[str], unit: str = "word") -> ErrorRate:
    """Corpus error rate of ``hypotheses`` against ``references``.

    Args:
        references, hypotheses: transcripts, paired by position (same length).
        unit: ``"word"`` (WER) or ``"char"`` (CER).

    Returns:
        :class:`ErrorRate` with the summed edit distance, the summed reference length
        and ``rate``.
    """
    if isinstance(references, str) or isinstance(hypotheses, str):
        raise TypeError("error_rate takes lists of transcripts; wrap a single string in a list")
    if len(references) != len(hypotheses):
        raise ValueError(f"got {len(references)} references but {len(hypotheses)} hypotheses; pair them one to one")
    errors = ref_length = 0
    for ref, hyp in zip(references, hypotheses, strict=True):
        ref_tokens = tokenize(ref, unit)
        errors += edit_distance(ref_tokens, tokenize(hyp, unit))
        ref_length += len(ref_tokens)
    return ErrorRate(errors, ref_length)


def wer(references: Sequence[str], hypotheses: Sequence[str]) -> ErrorRate:
    """Word error rate: :func:`error_rate` with ``unit="word"``."""
    return error_rate(references, hypotheses, "word")


def cer(references: Sequence[str], hypotheses: Sequence[str]) -> ErrorRate:
    """Character error rate: :func:`error_rate` with ``unit="char"``."""
    return error_rate(references, hypotheses, "char")
