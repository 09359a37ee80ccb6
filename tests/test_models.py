"""build_model: both heads sit on the same projection -> BiLSTM stack over the encoder."""

from __future__ import annotations

import pytest
import torch

from speechconv.config import compose, validate
from speechconv.models import build_model
from speechconv.models.recurrent import RecurrentEncoder
from speechconv.text import CharVocabulary


@pytest.mark.parametrize("model", ["ctc", "seq2seq"])
def test_both_models_share_the_recurrent_stack(model: str) -> None:
    cfg = validate(compose([f"model={model}", "model.hidden=16", "model.projection=8"]))
    net = build_model(cfg.model, cfg.encoder, cfg.features, CharVocabulary())
    body = net.body if model == "ctc" else net.encoder
    assert isinstance(body, RecurrentEncoder) and body.output_dim == 32
    assert body.lstm.input_size == 8 and body.lstm.bidirectional


def test_recurrent_encoder_is_padding_invariant() -> None:
    """An utterance's BiLSTM output is the same alone and in a padded batch (packed sequences)."""
    torch.manual_seed(0)
    cfg = validate(compose())
    from speechconv.models import build_encoder

    body = RecurrentEncoder(build_encoder(cfg.encoder, cfg.features), 8, 6, 2, 0.0).eval()
    features, lengths = torch.randn(3, 57, 80, 3), torch.tensor([57, 30, 9])
    with torch.no_grad():
        batch, out_lengths = body(features, lengths)  # (B, T', 12)
        assert batch.shape == (3, 15, 12) and out_lengths.tolist() == [15, 8, 3]
        for b in range(3):
            n = int(lengths[b])
            alone, m = body(features[b : b + 1, :n], lengths[b : b + 1])
            torch.testing.assert_close(batch[b, : int(m)], alone[0], atol=1e-5, rtol=0)
            assert not batch[b, int(m) :].any()
