"""Build the encoder and the model a :class:`speechconv.config.Config` describes."""

from __future__ import annotations

from torch import nn

from speechconv.encoder_config import EncoderSettings
from speechconv.feature_config import FeatureConfig
from speechconv.models.config import ModelConfig
from speechconv.text import CharVocabulary


def build_encoder(encoder: EncoderSettings, features: FeatureConfig) -> nn.Module:
    """``type=conv``: a flattened :class:`speechconv.ConvEncoder`, ``(B, T, F, C) -> (B, T', D)``;
    ``type=weiss2017``: :class:`speechconv.Weiss2017Encoder` with ``layers`` as its front."""
    if encoder.type == "conv":
        from speechconv.encoder import ConvEncoder

        return ConvEncoder(encoder.conv_config(), features.n_mels, features.n_channels, flatten=True)
    assert encoder.type == "weiss2017", f"unknown encoder.type {encoder.type!r} passed validation"
    from speechconv.weiss2017 import Weiss2017Encoder

    return Weiss2017Encoder(encoder.weiss2017, features.n_mels, features.n_channels, front=encoder.conv_config())


def build_model(model: ModelConfig, encoder: EncoderSettings, features: FeatureConfig, vocab: CharVocabulary) -> nn.Module:
    """The ``ctc`` or ``seq2seq`` model, both on ``encoder`` -> projection -> LSTM layers
    (:class:`RecurrentEncoder`, sized by ``model.projection``, ``hidden``,
    ``lstm_layers``, ``bidirectional``, ``dropout``); both have ``forward(features, lengths, targets,
    target_lengths) -> loss``, ``greedy_decode(features, lengths, max_len) -> ids`` and
    ``decode(...)``, the transcripts (for ``ctc``: through ``model.lexicon`` when it names words)."""
    enc = build_encoder(encoder, features)
    if model.type == "ctc":
        from speechconv.models.ctc import CTCModel

        return CTCModel(enc, len(vocab), vocab.blank_id, model.projection, model.hidden, model.lstm_layers,
                        model.dropout, model.bidirectional, model.decoder(vocab))
    assert model.type == "seq2seq", f"unknown model.type {model.type!r} passed validation"
    from speechconv.models.recurrent import RecurrentEncoder
    from speechconv.seq2seq import Seq2Seq

    enc = RecurrentEncoder(enc, model.projection, model.hidden, model.lstm_layers, model.dropout, model.bidirectional)
    return Seq2Seq(enc, len(vocab), model.embed_dim, model.decoder_dim, model.attention_dim,
                   sos_id=vocab.sos_id, eos_id=vocab.eos_id, pad_id=vocab.pad_id, dropout=model.dropout)
