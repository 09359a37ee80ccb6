"""Character vocabulary for English transcripts (CTC and seq2seq alike).

Token ids are fixed, so a checkpoint trained on digit strings reads any English
manifest with the same output layer:

    ====  ==========  ==================================================================
    id    token       use
    ====  ==========  ==================================================================
    0     ``<blank>`` CTC blank (``torch.nn.CTCLoss(blank=0)``, the default)
    1     ``<pad>``   pads target rows in a batch (``ignore_index`` for cross-entropy)
    2     ``<sos>``   start of sequence (seq2seq decoders)
    3     ``<eos>``   end of sequence (seq2seq decoders)
    4     `` ``       word separator
    5     ``'``       apostrophe (``don't``)
    6-31  ``a``-``z``
    ====  ==========  ==================================================================

Normalisation policy (:meth:`CharVocabulary.normalize`): text is lowercased; accents
are removed by Unicode decomposition (``café`` -> ``cafe``); punctuation (Unicode
categories ``P*``) other than the apostrophe is dropped; typographic apostrophes
become ``'``; every run of whitespace becomes one space, trimmed at both ends.  Any
other character (digits, symbols, other scripts) raises ``ValueError`` naming the text
and the character: silently dropping ``"3"`` would teach the model a wrong transcript,
so the fix (spell numbers as words, clean the manifest) is left to the user.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Sequence
from typing import Any

SPECIALS = ("<blank>", "<pad>", "<sos>", "<eos>")
CHARACTERS = (" ", "'") + tuple("abcdefghijklmnopqrstuvwxyz")
_APOSTROPHES = {"\u2019": "'", "\u2018": "'", "\u02bc": "'", "`": "'"}


class CharVocabulary:
    """Fixed character vocabulary: 4 specials, space, apostrophe and ``a``-``z`` (32 ids).

    Args:
        specials: names of the special tokens, in id order (blank, pad, sos, eos).
        characters: the characters after the specials, in id order.
    """

    def __init__(self, specials: Sequence[str] = SPECIALS, characters: Sequence[str] = CHARACTERS) -> None:
        if len(specials) != 4 or len(set(specials)) != 4:
            raise ValueError(f"specials must be 4 distinct names (blank, pad, sos, eos), got {list(specials)!r}")
        if any(len(c) != 1 for c in characters) or len(set(characters)) != len(characters):
            raise ValueError(f"characters must be distinct single characters, got {list(characters)!r}")
        self.specials = tuple(specials)
        self.characters = tuple(characters)
        self.tokens = self.specials + self.characters
        self._ids = {c: i + len(self.specials) for i, c in enumerate(self.characters)}

    # ------------------------------------------------------------------ ids
    @property
    def blank_id(self) -> int:
        return 0

    @property
    def pad_id(self) -> int:
        return 1

    @property
    def sos_id(self) -> int:
        return 2

    @property
    def eos_id(self) -> int:
        return 3

    def __len__(self) -> int:
        return len(self.tokens)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CharVocabulary) and self.tokens == other.tokens

    def __repr__(self) -> str:
        return f"CharVocabulary(size={len(self)}, characters={''.join(self.characters)!r})"

    # ------------------------------------------------------------- text <-> ids
    def normalize(self, text: str) -> str:
        """Lowercase, strip accents and punctuation, collapse whitespace (module docstring).

        Raises:
            ValueError: naming the text and the first character the vocabulary cannot hold.
        """
        decomposed = unicodedata.normalize("NFKD", text.lower())
        out: list[str] = []
        for ch in decomposed:
            ch = _APOSTROPHES.get(ch, ch)
            if ch in self._ids:
                out.append(ch)
            elif ch.isspace():
                out.append(" ")
            elif unicodedata.category(ch) == "Mn":
                continue  # combining accent left by NFKD
            elif unicodedata.category(ch).startswith("P"):
                continue
            else:
                raise ValueError(
                    f"transcript {text!r} holds {ch!r} (U+{ord(ch):04X}), which the character vocabulary "
                    f"({''.join(self.characters)!r}) cannot hold; spell numbers and symbols as words "
                    f"or remove the row from the manifest"
                )
        return " ".join("".join(out).split())

    def encode(self, text: str) -> list[int]:
        """Token ids of ``normalize(text)`` (no blank, sos or eos added)."""
        return [self._ids[ch] for ch in self.normalize(text)]

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids``; special tokens are skipped (CTC's greedy collapse is :func:`speechconv.models.ctc_collapse`)."""
        first = len(self.specials)
        out = []
        for i in ids:
            i = int(i)
            if not 0 <= i < len(self.tokens):
                raise ValueError(f"token id {i} is outside the vocabulary [0, {len(self.tokens)})")
            if i >= first:
                out.append(self.tokens[i])
        return "".join(out)

    def transcript(self, ids: Iterable[int]) -> str:
        """The transcript of ``ids``: :meth:`decode`'s text with its words separated by single
        spaces (no space at either end)."""
        return " ".join(self.decode(ids).split())

    # ------------------------------------------------------------ checkpoints
    def to_dict(self) -> dict[str, Any]:
        """Plain dict for checkpoints (round trip: :meth:`from_dict`)."""
        return {"kind": "char", "specials": list(self.specials), "characters": list(self.characters)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CharVocabulary:
        if data.get("kind") != "char":
            raise ValueError(f"not a character vocabulary dict: kind={data.get('kind')!r}, expected 'char'")
        return cls(specials=data["specials"], characters=data["characters"])
