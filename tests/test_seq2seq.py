"""Seq2Seq with both encoders: it trains, decodes consistently with its own teacher-forced
logits, ignores padding, and its attention matches formulas written here."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from speechconv import ConvEncoder, EncoderConfig, LayerConfig, Weiss2017Config, Weiss2017Encoder
from speechconv.seq2seq import Seq2Seq, additive_scores, attend, dot_scores

VOCAB, PAD, SOS, EOS = 10, 1, 2, 3
PLAIN = list(range(4, VOCAB))  # ids that may appear in targets


def _small_weiss() -> Weiss2017Encoder:
    front = EncoderConfig(layers=[LayerConfig(filters=8), LayerConfig(filters=8)])
    return Weiss2017Encoder(Weiss2017Config(convlstm_filters=4, lstm_layers=2, lstm_units=16, projection=32),
                            front=front)


ENCODERS = {"conv": ConvEncoder, "weiss2017": _small_weiss}


def _model(encoder: str, attention: str = "additive", seed: int = 0) -> Seq2Seq:
    torch.manual_seed(seed)
    return Seq2Seq(ENCODERS[encoder](), VOCAB, embed_dim=16, decoder_dim=48, attention_dim=24, attention=attention,
                   sos_id=SOS, eos_id=EOS, pad_id=PAD)


def _batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([40, 27, 33])
    feats = torch.randn(3, 40, 80, 3, generator=g)
    feats[torch.arange(40)[None, :] >= lengths[:, None]] = 0.0
    target_lengths = torch.tensor([5, 3, 4])
    targets = torch.randint(4, VOCAB, (3, 5), generator=g)
    targets[torch.arange(5)[None, :] >= target_lengths[:, None]] = PAD
    return feats, lengths, targets, target_lengths


# -------------------------------------------------------------------- attention


def test_attention_functions_match_formulas():
    torch.manual_seed(0)
    keys, values, query, v = torch.randn(2, 6, 5), torch.randn(2, 6, 7), torch.randn(2, 5), torch.randn(5)
    mask = torch.tensor([[True] * 6, [True, True, True, False, False, False]])
    add = additive_scores(keys, query, v)
    dot = dot_scores(keys, query)
    for b in range(2):
        for t in range(6):
            assert torch.isclose(add[b, t], torch.dot(v, torch.tanh(keys[b, t] + query[b])), atol=1e-6)
            assert torch.isclose(dot[b, t], torch.dot(keys[b, t], query[b]) / math.sqrt(5), atol=1e-6)
    context, weights = attend(dot, mask, values)
    assert torch.all(weights[1, 3:] == 0)
    torch.testing.assert_close(weights.sum(1), torch.ones(2))
    w1 = torch.exp(dot[1, :3]) / torch.exp(dot[1, :3]).sum()
    torch.testing.assert_close(context[1], (w1[:, None] * values[1, :3]).sum(0), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------- training


@pytest.mark.parametrize("encoder,attention", [("conv", "additive"), ("weiss2017", "dot"), ("conv", "dot")])
def test_loss_decreases_with_adam(encoder, attention):
    model = _model(encoder, attention)
    batch = _batch()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        opt.zero_grad()
        loss = model(*batch)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(x) for x in losses)
    assert losses[-1] < 0.5 * losses[0], f"loss did not halve: {losses[0]:.3f} -> {losses[-1]:.3f}"


def test_zero_output_layer_gives_log_vocab_loss():
    """Uniform logits cost exactly log V per scored token, whatever the reduction."""
    model = _model("conv").eval()
    with torch.no_grad():
        model.out.weight.zero_()
        model.out.bias.zero_()
    feats, lengths, targets, target_lengths = _batch()
    with torch.no_grad():
        per_item = model(feats, lengths, targets, target_lengths, reduction="none")
        torch.testing.assert_close(per_item, (target_lengths + 1).float() * math.log(VOCAB))
        torch.testing.assert_close(model(feats, lengths, targets, target_lengths), torch.tensor(math.log(VOCAB)))
        total = model(feats, lengths, targets, target_lengths, reduction="sum")
        torch.testing.assert_close(total, (target_lengths + 1).sum().float() * math.log(VOCAB))


def test_loss_is_the_cross_entropy_of_targets_then_eos():
    """Against log_softmax picked by hand: y_1..y_n then <eos>, nothing after."""
    model = _model("conv").eval()
    feats, lengths, targets, target_lengths = _batch()
    with torch.no_grad():
        logp = torch.log_softmax(model.decoder_logits(feats, lengths, targets, target_lengths), dim=-1)
        per_item = model(feats, lengths, targets, target_lengths, reduction="none")
    for b in range(3):
        n = int(target_lengths[b])
        gold = targets[b, :n].tolist() + [EOS]
        want = -sum(logp[b, u, tok] for u, tok in enumerate(gold))
        torch.testing.assert_close(per_item[b], want, rtol=1e-5, atol=1e-5)


def test_decoder_does_not_look_ahead():
    model = _model("conv").eval()
    feats, lengths, targets, target_lengths = _batch()
    changed = targets.clone()
    changed[0, 3:] = torch.tensor([4, 5])
    with torch.no_grad():
        a = model.decoder_logits(feats, lengths, targets, target_lengths)
        b = model.decoder_logits(feats, lengths, changed, target_lengths)
    torch.testing.assert_close(a[0, :4], b[0, :4], rtol=0, atol=0)  # position u reads y_0..y_{u-1}
    assert not torch.allclose(a[0, 4:], b[0, 4:])


@pytest.mark.parametrize("encoder", sorted(ENCODERS))
def test_padding_does_not_change_the_eval_loss(encoder):
    model = _model(encoder)
    feats, lengths, targets, target_lengths = _batch()
    model(feats, lengths, targets, target_lengths)  # one training-mode pass moves the batch norm statistics
    model.eval()
    padded_feats = torch.cat([feats, torch.full((3, 13, 80, 3), 5.0)], dim=1)  # garbage padding in T
    padded_targets = torch.cat([targets, torch.full((3, 4), PAD)], dim=1)  # more padding in U
    with torch.no_grad():
        base = model(feats, lengths, targets, target_lengths, reduction="none")
        padded = model(padded_feats, lengths, padded_targets, target_lengths, reduction="none")
        torch.testing.assert_close(padded, base, rtol=0, atol=1e-5)
        for b in range(3):
            n, m = int(lengths[b]), int(target_lengths[b])
            alone = model(feats[b:b + 1, :n], lengths[b:b + 1], targets[b:b + 1, :m], target_lengths[b:b + 1],
                          reduction="none")
            torch.testing.assert_close(alone[0], base[b], rtol=0, atol=1e-5)


# ---------------------------------------------------------------------- decoding


@pytest.mark.parametrize("encoder", sorted(ENCODERS))
@pytest.mark.parametrize("max_len", [1, 3, 12])
def test_greedy_decode_ends_at_eos_or_max_len_and_matches_teacher_forcing(encoder, max_len):
    """Feeding the greedy output back as targets, its argmaxes reproduce it: each token
    is the argmax (sos and pad excluded) at its step, and a sequence shorter than
    max_len has <eos> as the argmax right after it."""
    model = _model(encoder, seed=3).eval()
    feats, lengths, _, _ = _batch(seed=1)
    hyps = model.greedy_decode(feats, lengths, max_len=max_len)
    assert len(hyps) == 3
    width = max(len(h) for h in hyps)
    targets = torch.full((3, max(width, 1)), PAD)
    for b, h in enumerate(hyps):
        assert len(h) <= max_len and all(t not in (SOS, EOS, PAD) for t in h)
        targets[b, :len(h)] = torch.tensor(h, dtype=torch.int64)
    target_lengths = torch.tensor([len(h) for h in hyps])
    with torch.no_grad():
        logits = model.decoder_logits(feats, lengths, targets, target_lengths)
    logits[..., [SOS, PAD]] = float("-inf")
    best = logits.argmax(-1)
    for b, h in enumerate(hyps):
        assert best[b, :len(h)].tolist() == h
        if len(h) < max_len:
            assert best[b, len(h)].item() == EOS


def test_greedy_decode_learns_a_tiny_batch():
    model = _model("conv", seed=4)
    feats, lengths, targets, target_lengths = _batch()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(60):
        opt.zero_grad()
        model(feats, lengths, targets, target_lengths).backward()
        opt.step()
    model.eval()
    hyps = model.greedy_decode(feats, lengths, max_len=10)
    want = [targets[b, :int(target_lengths[b])].tolist() for b in range(3)]
    assert hyps == want


# ------------------------------------------------------------------------ errors


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="special ids must be distinct"):
        Seq2Seq(ConvEncoder(), VOCAB, sos_id=2, eos_id=2, pad_id=1)
    with pytest.raises(ValueError, match=r"eos_id=10 is invalid: expected an id in \[0, 10\)"):
        Seq2Seq(ConvEncoder(), VOCAB, sos_id=2, eos_id=10, pad_id=1)
    with pytest.raises(ValueError, match="attention='luong'"):
        Seq2Seq(ConvEncoder(), VOCAB, attention="luong", sos_id=2, eos_id=3, pad_id=1)
    model = _model("conv")
    feats, lengths, targets, target_lengths = _batch()
    with_eos = targets.clone()
    with_eos[0, 0] = EOS
    with pytest.raises(ValueError, match="the model adds <sos>/<eos> itself"):
        model(feats, lengths, with_eos, target_lengths)
    with pytest.raises(ValueError, match="targets must be int64"):
        model(feats, lengths, targets.int(), target_lengths)
    with pytest.raises(ValueError, match="target_lengths must be"):
        model(feats, lengths, targets, torch.tensor([6, 1, 1]))
    with pytest.raises(ValueError, match="reduction='avg'"):
        model(feats, lengths, targets, target_lengths, reduction="avg")
    with pytest.raises(ValueError, match="max_len=0"):
        model.greedy_decode(feats, lengths, max_len=0)


@given(seed=st.integers(0, 10_000), u=st.integers(0, 4))
@settings(max_examples=10, deadline=None)
def test_empty_and_short_targets_score_one_eos_each(seed, u):
    """Target length 0 is legal: the only scored token is <eos>."""
    model = _model("conv", seed=seed % 3).eval()
    feats, lengths, _, _ = _batch(seed)
    targets = torch.full((3, 4), PAD)
    target_lengths = torch.tensor([0, u, 0])
    targets[1, :u] = torch.tensor(PLAIN[:u])
    with torch.no_grad():
        logp = torch.log_softmax(model.decoder_logits(feats, lengths, targets, target_lengths), dim=-1)
        per_item = model(feats, lengths, targets, target_lengths, reduction="none")
    torch.testing.assert_close(per_item[0], -logp[0, 0, EOS], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(per_item[2], -logp[2, 0, EOS], rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------- real speech


def _real_features(paths: list) -> tuple[torch.Tensor, torch.Tensor]:
    """(T, 80, 3) log-mel + deltas of real 16 kHz clips, made with torchaudio's Kaldi
    fbank (independent of speechconv's front-end), per-utterance normalised, padded."""
    import soundfile as sf
    import torchaudio

    feats = []
    for path in paths:
        wav, sr = sf.read(str(path), dtype="float32")
        assert sr == 16000
        fbank = torchaudio.compliance.kaldi.fbank(torch.from_numpy(wav)[None] * 32768, num_mel_bins=80,
                                                  sample_frequency=16000, dither=0.0)  # (T, 80)
        fbank = (fbank - fbank.mean(0)) / fbank.std(0).clamp(min=1e-3)
        d1 = torchaudio.functional.compute_deltas(fbank.T).T  # (T, 80) -> (80, T) -> (T, 80)
        d2 = torchaudio.functional.compute_deltas(d1.T).T
        feats.append(torch.stack([fbank, d1, d2], dim=-1))  # 3 x (T, 80) -> (T, 80, 3)
    lengths = torch.tensor([f.shape[0] for f in feats])
    return torch.nn.utils.rnn.pad_sequence(feats, batch_first=True), lengths


@pytest.mark.parametrize("encoder", sorted(ENCODERS))
def test_learns_yes_and_no_from_real_speech(encoder, fixtures_dir):
    from speechconv.text import CharVocabulary

    vocab = CharVocabulary()
    feats, lengths = _real_features([fixtures_dir / "yes_1000ms.wav", fixtures_dir / "no_1000ms.wav"])
    words = ["yes", "no"]
    ids = [vocab.encode(w) for w in words]
    targets = torch.full((2, 3), vocab.pad_id)
    for b, seq in enumerate(ids):
        targets[b, :len(seq)] = torch.tensor(seq)
    target_lengths = torch.tensor([len(s) for s in ids])
    torch.manual_seed(5)
    model = Seq2Seq(ENCODERS[encoder](), len(vocab), embed_dim=16, decoder_dim=48, attention_dim=24,
                    sos_id=vocab.sos_id, eos_id=vocab.eos_id, pad_id=vocab.pad_id)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(40):
        opt.zero_grad()
        loss = model(feats, lengths, targets, target_lengths)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0], f"{losses[0]:.3f} -> {losses[-1]:.3f}"
    model.eval()
    assert [vocab.decode(h) for h in model.greedy_decode(feats, lengths, max_len=8)] == words
