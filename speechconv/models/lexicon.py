"""CTC decoding constrained to a lexicon: the best path whose transcript is a sequence
of lexicon words.

Greedy decoding (:func:`speechconv.models.ctc_collapse` of the per-frame argmax) spells
whatever the frames say: a voice the model never heard gives near-misses such as
``"eigeht"`` or ``"twr"``.  :class:`LexiconDecoder` instead finds the single best CTC
alignment (Viterbi, max over paths) through a word loop::

    start -> (word (space? word)*)? -> end      blanks anywhere a CTC path allows them

A state is one token of one word (its CTC self-loop included), the blank between two
tokens of a word, or one of two shared states between words: a blank and a space.  A
word's token may follow the one before it directly unless the two are equal (CTC needs
a blank between repeats: ``three``'s ``ee``); a word may follow another directly, after
blanks or after spaces.  With ``S`` states the search costs ``O(T' S^2)``; the ten
digit words make 72 states.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from speechconv.text import CharVocabulary


class LexiconDecoder:
    """Best CTC path through a loop of ``words``.

    Args:
        words: the lexicon; each a non-empty word of the vocabulary's characters (no space).
        vocab: the model's output symbols.

    Call with ``log_probs (T', V)`` and the valid length ``T'' <= T'``; returns the token
    ids of the transcript (words joined by single spaces, as :meth:`CharVocabulary.encode`
    would give them).
    """

    def __init__(self, words: Sequence[str], vocab: CharVocabulary) -> None:
        if not words:
            raise ValueError("LexiconDecoder needs at least one word; got an empty lexicon")
        self.words = tuple(words)
        self.vocab = vocab
        space = vocab.tokens.index(" ")  # the word separator's id
        labels: list[int] = [vocab.blank_id, space]  # state 0: blank between words; 1: space
        first: list[int] = []  # each word's first state
        last: list[int] = []  # each word's last state
        inner: list[tuple[int, int]] = []  # (from, to) transitions inside words
        for word in self.words:
            ids = vocab.encode(word)
            if not ids or vocab.normalize(word) != word or " " in word:
                raise ValueError(f"lexicon word {word!r} is not one word of the vocabulary's characters "
                                 f"(lowercase, no spaces or punctuation): write it as {vocab.normalize(word)!r}")
            previous = -1
            for i, token in enumerate(ids):
                if i == 0:
                    first.append(len(labels))
                    labels.append(token)
                else:
                    gap = len(labels)  # the blank between this token and the one before
                    labels += [vocab.blank_id, token]
                    inner += [(previous, gap), (gap, gap + 1)]
                    if ids[i - 1] != token:
                        inner.append((previous, gap + 1))
                previous = len(labels) - 1
            last.append(previous)
        S = len(labels)
        allowed = torch.zeros(S, S, dtype=torch.bool)  # [to, from]
        allowed[range(S), range(S)] = True  # every state repeats (CTC's self-loops)
        for a, b in inner:
            allowed[b, a] = True
        between = [0, 1] + last
        for b in (0, 1):
            allowed[b, between] = True
        for f in first:
            allowed[f, [0, 1]] = True
            for end in last:
                if labels[end] != labels[f]:  # a repeated token needs a blank between the words
                    allowed[f, end] = True
        self.labels = torch.tensor(labels)  # (S,)
        self.transitions = torch.where(allowed, 0.0, float("-inf"))  # (S, S) [to, from]: log 1 or log 0
        self.start = torch.zeros(S, dtype=torch.bool)  # (S,) states a path may begin in
        self.start[[0, 1] + first] = True
        self.final = torch.zeros(S, dtype=torch.bool)  # (S,) states a path may end in
        self.final[between] = True
        self.first = {f: w for w, f in enumerate(first)}

    def graph(self) -> dict[str, list]:
        """The search graph as plain lists, for a client without torch (the ONNX
        metadata ``lexicon``, read by examples/transcribe_onnx.py): ``words``; ``labels``,
        each state's output id; ``edges``, the allowed ``[to, from]`` transitions (self-loops
        included); ``start`` and ``final``, the states a path may begin and end in;
        ``first``, each word's first state."""
        edges = (self.transitions == 0).nonzero().tolist()  # [to, from] pairs of the allowed transitions
        return {"words": list(self.words), "labels": self.labels.tolist(), "edges": edges,
                "start": self.start.nonzero().view(-1).tolist(), "final": self.final.nonzero().view(-1).tolist(),
                "first": list(self.first)}

    def __call__(self, log_probs: torch.Tensor, length: int) -> list[int]:
        """``log_probs (T', V)`` -> the transcript's token ids (empty for ``length`` 0)."""
        if length == 0:
            return []
        emit = log_probs[:length].detach().float().cpu()[:, self.labels]  # (T', V) -> (T'', S)
        neg = torch.tensor(float("-inf"))
        score = torch.where(self.start, emit[0], neg)  # (S,)
        back = torch.empty(length, len(self.labels), dtype=torch.int64)  # (T'', S) best predecessor
        back[0] = torch.arange(len(self.labels))
        for t in range(1, length):
            best, back[t] = (self.transitions + score[None, :]).max(dim=1)  # (S, S) -> (S,)
            score = best + emit[t]
        score = torch.where(self.final, score, neg)
        state = int(score.argmax())
        path = [state]
        for t in range(length - 1, 0, -1):
            state = int(back[t, state])
            path.append(state)
        path.reverse()
        words = [self.first[s] for i, s in enumerate(path) if s in self.first and (i == 0 or path[i - 1] != s)]
        return self.vocab.encode(" ".join(self.words[w] for w in words))
