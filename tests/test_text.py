"""CharVocabulary: fixed ids, normalisation policy, round trips, checkpoints."""

from __future__ import annotations

import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from speechconv.text import CharVocabulary

VOCAB = CharVocabulary()


def test_documented_ids():
    assert len(VOCAB) == 32
    assert (VOCAB.blank_id, VOCAB.pad_id, VOCAB.sos_id, VOCAB.eos_id) == (0, 1, 2, 3)
    assert VOCAB.encode(" ") == []  # whitespace alone normalises to nothing
    assert VOCAB.encode("a b") == [6, 4, 7]
    assert VOCAB.encode("'") == [5]
    assert VOCAB.encode("z") == [31]
    assert VOCAB.encode(string.ascii_lowercase) == list(range(6, 32))


@pytest.mark.parametrize(
    ("raw", "normal"),
    [
        ("Three  ONE\tfour\n", "three one four"),
        ("Hello, world!", "hello world"),
        ("Don\u2019t stop.", "don't stop"),
        ("  café   Noël ", "cafe noel"),
        ("well -- maybe...", "well maybe"),
        ("\u00ab quoted \u00bb", "quoted"),
    ],
)
def test_normalize(raw, normal):
    assert VOCAB.normalize(raw) == normal


@pytest.mark.parametrize("bad", ["call 911", "5 $", "naïve + x", "\u4e2d\u6587"])
def test_unmappable_characters_raise_naming_the_text(bad):
    with pytest.raises(ValueError) as info:
        VOCAB.encode(bad)
    assert repr(bad) in str(info.value)
    assert "spell numbers" in str(info.value)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(alphabet="abcdefghijklmnopqrstuvwxyz'", min_size=1, max_size=8), max_size=6))
def test_round_trip_of_normal_text(words):
    text = " ".join(words)
    assert VOCAB.decode(VOCAB.encode(text)) == text
    assert all(6 <= i < 32 or i in (4, 5) for i in VOCAB.encode(text))


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=string.ascii_letters + " \t\n.,;:!?\"-()'", max_size=40))
def test_normalize_is_idempotent_and_clean(text):
    normal = VOCAB.normalize(text)
    assert VOCAB.normalize(normal) == normal
    assert normal == normal.strip() and "  " not in normal
    assert set(normal) <= set(" 'abcdefghijklmnopqrstuvwxyz")
    # letters survive, in order, lowercased
    assert normal.replace(" ", "").replace("'", "") == "".join(c.lower() for c in text if c.isalpha())


def test_decode_skips_specials_and_rejects_out_of_range():
    assert VOCAB.decode([2, 6, 0, 1, 7, 3]) == "ab"
    with pytest.raises(ValueError, match="outside the vocabulary"):
        VOCAB.decode([32])


def test_transcript_separates_words_by_single_spaces():
    """CTC may emit a word separator at either end or twice in a row; the transcript has one between words."""
    v = CharVocabulary()
    space, blank = v.encode("a b")[1], v.blank_id
    ids = [space, *v.encode("two"), space, blank, space, *v.encode("one"), space]
    assert v.decode(ids) == " two  one " and v.transcript(ids) == "two one"
    assert v.transcript([]) == ""


def test_dict_round_trip():
    data = VOCAB.to_dict()
    assert CharVocabulary.from_dict(data) == VOCAB
    with pytest.raises(ValueError, match="not a character vocabulary"):
        CharVocabulary.from_dict({"kind": "bpe"})
