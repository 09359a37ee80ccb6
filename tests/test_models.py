"""build_model: both heads sit on the same projection -> LSTM stack over the encoder, which
equals torch's own LSTM on packed sequences."""

from __future__ import annotations

import pytest
import torch

from speechconv.config import validate
from speechconv.models import build_model
from speechconv.models.recurrent import RecurrentEncoder
from speechconv.text import CharVocabulary
from train import compose


@pytest.mark.parametrize("model", ["ctc", "seq2seq"])
def test_both_models_share_the_recurrent_stack(model: str) -> None:
    cfg = validate(compose([f"model={model}", "model.hidden=16", "model.projection=8"]))
    net = build_model(cfg.model, cfg.encoder, cfg.features, CharVocabulary())
    body = net.body if model == "ctc" else net.encoder
    assert isinstance(body, RecurrentEncoder) and body.output_dim == 32
    assert body.forward_layers[0].input_size == 8 and body.bidirectional and len(body.backward_layers) == 1


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


class _Identity(torch.nn.Module):
    """An "encoder" that hands its features through: ``(B, T, D, 1)`` -> ``(B, T, D)``."""

    output_dim = 5

    def forward(self, features, lengths):
        return features.flatten(2), lengths


@pytest.mark.parametrize("bidirectional", [True, False])
def test_the_stack_equals_torchs_lstm_on_packed_sequences(bidirectional: bool) -> None:
    """Reference: one ``nn.LSTM(num_layers=2, bidirectional=...)`` given the same weights
    and run on packed sequences (torch's own exact-length path)."""
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    torch.manual_seed(1)
    body = RecurrentEncoder(_Identity(), 0, 4, 2, 0.0, bidirectional=bidirectional).eval()
    ref = torch.nn.LSTM(5, 4, num_layers=2, batch_first=True, bidirectional=bidirectional)
    with torch.no_grad():
        for layer, lstm in enumerate(body.forward_layers):
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(ref, f"{name}_l{layer}").copy_(getattr(lstm, f"{name}_l0"))
                if bidirectional:
                    getattr(ref, f"{name}_l{layer}_reverse").copy_(getattr(body.backward_layers[layer], f"{name}_l0"))
    features, lengths = torch.randn(3, 11, 5, 1), torch.tensor([11, 6, 1])
    features[1, 6:] = 1e3  # padding the stack must never read
    with torch.no_grad():
        out, _ = body(features, lengths)
        packed = pack_padded_sequence(features.flatten(2), lengths, batch_first=True, enforce_sorted=False)
        want, _ = pad_packed_sequence(ref(packed)[0], batch_first=True, total_length=11)
    assert out.shape == (3, 11, 8 if bidirectional else 4)
    torch.testing.assert_close(out, want, atol=1e-6, rtol=0)
