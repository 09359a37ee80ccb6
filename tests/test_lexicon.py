"""Lexicon-constrained CTC decoding (speechconv.models.lexicon) against an exhaustive search
over every CTC path, on many generated cases; and examples/transcribe_onnx.py's numpy
search over the graph the decoder exports, against the decoder."""

from __future__ import annotations

import functools
import importlib.util
import itertools
import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from speechconv.checks import ConfigError
from speechconv.models.config import ModelConfig
from speechconv.models.lexicon import LexiconDecoder
from speechconv.text import CharVocabulary
from tests.conftest import ROOT

VOCAB = CharVocabulary()
DIGITS = "zero one two three four five six seven eight nine".split()
SMALL = ["ab", "ba", "aa"]
"""Words of equal length, so a character string splits into words one way only; ``aa``
and ``ab ba`` need a blank between repeated letters."""


def ids(text: str) -> list[int]:
    return VOCAB.encode(text)


def collapse(path: tuple[int, ...]) -> list[int]:
    out, previous = [], None
    for i in path:
        if i != previous and i != VOCAB.blank_id:
            out.append(i)
        previous = i
    return out


def words_of(tokens: list[int], lexicon: list[str]) -> list[str] | None:
    """The lexicon words a collapsed path spells (spaces optional between words and at the
    ends, never inside one), or ``None`` if it spells something else."""
    text = VOCAB.decode(tokens)
    out = []
    for chunk in text.split():
        while chunk:
            match = [w for w in lexicon if chunk.startswith(w)]
            if not match:
                return None
            out.append(match[0])
            chunk = chunk[len(match[0]):]
    return out


def exhaustive(log_probs: torch.Tensor, lexicon: list[str]) -> str:
    """The transcript of the best-scoring CTC path over blank, space and the lexicon's
    letters whose collapse spells words of the lexicon."""
    symbols = sorted({VOCAB.blank_id, *ids("a b")} | {i for w in lexicon for i in ids(w)})
    best, text = float("-inf"), None
    for path in itertools.product(symbols, repeat=log_probs.shape[0]):
        words = words_of(collapse(path), lexicon)
        if words is None:
            continue
        score = float(sum(log_probs[t, s] for t, s in enumerate(path)))
        if score > best:
            best, text = score, " ".join(words)
    assert text is not None, "the all-blank path is always valid"
    return text


@settings(max_examples=60, deadline=None)
@given(frames=st.integers(1, 7), seed=st.integers(0, 2**31 - 1))
def test_best_path_equals_exhaustive_search(frames: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    log_probs = torch.randn(frames, len(VOCAB), generator=g).mul_(3).log_softmax(-1)  # (T', V)
    decoder = LexiconDecoder(SMALL, VOCAB)
    assert VOCAB.decode(decoder(log_probs, frames)) == exhaustive(log_probs, SMALL)


@settings(max_examples=60, deadline=None)
@given(words=st.lists(st.sampled_from(DIGITS), min_size=0, max_size=6), seed=st.integers(0, 2**31 - 1),
       spaces=st.booleans())
def test_a_clear_alignment_of_digit_words_decodes_to_them(words: list[str], seed: int, spaces: bool) -> None:
    """Log-probabilities that favour one CTC alignment of the words (random durations,
    blanks and separators) decode to exactly those words."""
    g = torch.Generator().manual_seed(seed)
    path: list[int] = [VOCAB.blank_id] * int(torch.randint(0, 3, (), generator=g))
    for k, word in enumerate(words):
        if k and (spaces or ids(words[k - 1])[-1] == ids(word)[0]):
            path += ids("a b")[1:2] * int(spaces) + [VOCAB.blank_id]
        for i, token in enumerate(ids(word)):
            if i and ids(word)[i - 1] == token:
                path.append(VOCAB.blank_id)
            path += [token] * int(torch.randint(1, 4, (), generator=g))
    path += [VOCAB.blank_id] * int(torch.randint(0, 3, (), generator=g))
    log_probs = torch.full((len(path), len(VOCAB)), -8.0)
    log_probs[range(len(path)), path] = -0.01
    log_probs += torch.rand(log_probs.shape, generator=g)  # (T', V) noise below the margin
    assert VOCAB.decode(LexiconDecoder(DIGITS, VOCAB)(log_probs, len(path))) == " ".join(words)


def test_misspelt_frames_decode_to_the_nearest_word() -> None:
    """Frames that spell ``eigeht`` (no such word) come out as the lexicon word they fit best."""
    path = ids("eigeht")
    log_probs = torch.full((len(path), len(VOCAB)), -9.0)
    log_probs[range(len(path)), path] = -0.1
    assert VOCAB.decode(LexiconDecoder(DIGITS, VOCAB)(log_probs, len(path))) == "eight"


def test_only_the_valid_frames_are_read() -> None:
    log_probs = torch.full((6, len(VOCAB)), -9.0)
    log_probs[range(6), ids("twozer")] = -0.1
    decoder = LexiconDecoder(DIGITS, VOCAB)
    assert VOCAB.decode(decoder(log_probs, 3)) == "two"
    assert decoder(log_probs, 0) == []


@pytest.mark.parametrize("word", ["Two", "two words", "7", "", "it's!"])
def test_a_word_outside_the_vocabulary_is_refused_by_name(word: str) -> None:
    with pytest.raises(ValueError, match="lexicon word|cannot hold"):
        LexiconDecoder(["one", word], VOCAB)


def test_config_names_the_setting() -> None:
    with pytest.raises(ConfigError, match="model.lexicon"):
        ModelConfig(lexicon=["one", "Two"])
    assert ModelConfig(lexicon=DIGITS).decoder(VOCAB).words == tuple(DIGITS)


@functools.cache
def example_module():
    """examples/transcribe_onnx.py imported as a module."""
    spec = importlib.util.spec_from_file_location("transcribe_onnx", ROOT / "examples" / "transcribe_onnx.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@settings(max_examples=80, deadline=None)
@given(frames=st.integers(0, 60), seed=st.integers(0, 2**31 - 1), digits=st.booleans(),
       sharpness=st.sampled_from([1.0, 3.0, 10.0]))
def test_the_onnx_example_decodes_as_the_decoder(frames: int, seed: int, digits: bool, sharpness: float) -> None:
    """The example's numpy Viterbi over ``LexiconDecoder.graph()`` (what the ONNX metadata
    ``lexicon`` carries, through JSON) gives the decoder's words on random log-probs."""
    lexicon = DIGITS if digits else SMALL
    decoder = LexiconDecoder(lexicon, VOCAB)
    graph = json.loads(json.dumps(decoder.graph()))
    g = torch.Generator().manual_seed(seed)
    log_probs = torch.randn(frames, len(VOCAB), generator=g).mul_(sharpness).log_softmax(-1)  # (T', V)
    got = example_module().lexicon_words(log_probs.numpy(), graph)
    assert " ".join(got) == VOCAB.decode(decoder(log_probs, frames))
