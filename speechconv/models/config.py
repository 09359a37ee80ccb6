"""`ModelConfig`: the ``model`` group of ``train.py``, checked on creation."""

from __future__ import annotations

from dataclasses import dataclass

from speechconv.checks import ConfigError, check_choice, check_float, check_int
from speechconv.models.lexicon import LexiconDecoder
from speechconv.text import CharVocabulary

MODEL_TYPES = ("ctc", "seq2seq")


@dataclass
class ModelConfig:
    """The model on top of the encoder.

    Attributes:
        type: ``ctc``: encoder -> projection -> LSTM stack -> linear -> CTC;
            ``seq2seq``: encoder -> projection -> LSTM stack -> attention LSTM decoder
            (:class:`speechconv.seq2seq.Seq2Seq`).  Both share the recurrent stack
            (:class:`speechconv.models.recurrent.RecurrentEncoder`) sized below.
        projection: linear size between encoder and LSTM stack (0 = none); a projection of
            the 640-wide conv output keeps the LSTM small.
        hidden: LSTM units per direction.
        lstm_layers: LSTM layers.
        bidirectional: each LSTM layer reads the utterance both ways; ``false``: forward
            only (every output frame depends only on the audio up to it: it streams).
        dropout: dropout before the LSTM stack and before the output layer.
        embed_dim, decoder_dim, attention_dim: ``seq2seq`` sizes.
        max_decode_len: ``seq2seq``: the most tokens greedy decoding emits.
        lexicon: the words transcripts are made of: a ``ctc`` model decodes to the best CTC
            path through a loop of them (:class:`speechconv.models.lexicon.LexiconDecoder`);
            ``null``: greedy decoding, any string of characters.  ``seq2seq`` decodes
            greedily either way (the run says so).
    """

    type: str = "ctc"
    projection: int = 256
    hidden: int = 192
    lstm_layers: int = 1
    bidirectional: bool = True
    dropout: float = 0.1
    embed_dim: int = 64
    decoder_dim: int = 256
    attention_dim: int = 128
    max_decode_len: int = 100
    lexicon: list[str] | None = None

    def __post_init__(self) -> None:
        check_choice("model.type", self.type, MODEL_TYPES)
        check_int("model.projection", self.projection, 0)
        for key in ("hidden", "lstm_layers", "embed_dim", "decoder_dim", "attention_dim", "max_decode_len"):
            check_int(f"model.{key}", getattr(self, key), 1)
        check_float("model.dropout", self.dropout, 0.0, 1.0, high_open=True)
        if self.lexicon is not None:
            self.lexicon = list(self.lexicon)
            try:
                self.decoder(CharVocabulary())
            except ValueError as exc:
                raise ConfigError(f"model.lexicon: {exc}") from exc

    def decoder(self, vocab: CharVocabulary) -> LexiconDecoder | None:
        """The :class:`LexiconDecoder` of ``lexicon`` over ``vocab`` (``None`` without a lexicon)."""
        return None if self.lexicon is None else LexiconDecoder(self.lexicon, vocab)
