"""LogMelDeltas as a module: an utterance's features are the same bits alone and in any
padded batch, frame counts == shapes.py, the 1-D API, degenerate audio and input errors."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from speechconv import FeatureConfig, shapes
from speechconv.features import LogMelDeltas, pipeline
from tests.conftest import CHANNEL_SETS

COMBOS = [(backend, framing) for backend in ("torchaudio", "kaldi") for framing in ("kaldi", "center")]
MODULES = {combo: LogMelDeltas(FeatureConfig(backend=combo[0], framing=combo[1])) for combo in COMBOS}


def random_batch(lengths: list[int], seed: int) -> torch.Tensor:
    """``(B, S)`` noise, beyond each utterance's length too: the padding must never
    reach an utterance's features."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(len(lengths), max(lengths), generator=gen) * 0.3


@settings(max_examples=60, deadline=None)
@given(
    combo=st.sampled_from(COMBOS),
    lengths=st.lists(st.integers(0, 6000), min_size=1, max_size=8),
    order2=st.sampled_from(["kaldi", "cascade"]),
    channels=st.sampled_from(CHANNEL_SETS),
    normalization=st.sampled_from(["none", "global"]),
    seed=st.integers(0, 2**31 - 1),
)
def test_batched_equals_alone_bit_for_bit(global_stats_files, combo, lengths, order2, channels, normalization, seed):
    module = LogMelDeltas(FeatureConfig(
        backend=combo[0], framing=combo[1], order2=order2, channels=channels, normalization=normalization,
        global_stats_path=global_stats_files[tuple(channels)] if normalization == "global" else None))
    batch = random_batch(lengths, seed)
    features, frame_lengths = module(batch, torch.tensor(lengths))
    T = features.shape[1]
    assert features.dtype == torch.float32 and frame_lengths.dtype == torch.int64
    assert features.shape == (len(lengths), T, 80, len(channels)) and T == int(frame_lengths.max())
    for b, n in enumerate(lengths):
        alone, t_alone = module(batch[b, :n])
        assert int(t_alone) == int(frame_lengths[b]) == alone.shape[0]
        assert torch.equal(features[b, : int(t_alone)], alone), f"utterance {b} of {lengths}"
        assert not features[b, int(t_alone) :].any()  # padding frames exactly zero


@settings(max_examples=30, deadline=None)
@given(
    combo=st.sampled_from(COMBOS),
    lengths=st.lists(st.integers(0, 40000), min_size=1, max_size=5),
    piece=st.sampled_from([1, 7, 64, 250, 1024]),
    seed=st.integers(0, 2**31 - 1),
)
def test_statics_in_pieces_equal_one_piece(combo, lengths, piece, seed):
    """:data:`speechconv.features.pipeline.PIECE_FRAMES` only splits the work: the pieces,
    whatever their size, give the bits of one piece per batch."""
    module = MODULES[combo]
    batch, lens = random_batch(lengths, seed), torch.tensor(lengths)
    default = pipeline.PIECE_FRAMES
    try:
        pipeline.PIECE_FRAMES = 2**62
        whole, frame_lengths = module(batch, lens)
        pipeline.PIECE_FRAMES = piece
        pieces, piece_lengths = module(batch, lens)
    finally:
        pipeline.PIECE_FRAMES = default
    assert torch.equal(frame_lengths, piece_lengths) and torch.equal(pieces, whole)


@pytest.mark.parametrize("combo", COMBOS, ids=["-".join(c) for c in COMBOS])
def test_frame_count_formula_equals_produced_frames(combo):
    module = MODULES[combo]
    wave = torch.randn(2000) * 0.1
    for n in range(2001):
        features, t = module(wave[:n])
        expected = shapes.frames_from_samples(n, 400, 160, combo[1])
        assert features.shape == (expected, 80, 3) and int(t) == expected, (n, features.shape, int(t))
    # and the batched form, one padded batch of every length
    lengths = torch.arange(2001)
    _, frame_lengths = module(wave.expand(2001, -1), lengths)
    assert frame_lengths.tolist() == [shapes.frames_from_samples(n, 400, 160, combo[1]) for n in range(2001)]


@pytest.mark.parametrize("combo", COMBOS, ids=["-".join(c) for c in COMBOS])
def test_silence_and_short_audio(combo):
    module = MODULES[combo]
    features, t = module(torch.zeros(16000))
    assert torch.isfinite(features).all() and int(t) == features.shape[0] > 0
    # constant input: every delta is exactly zero
    assert features[..., 1:].abs().max() == 0
    short = 399 if combo[1] == "kaldi" else 0  # shorter than one window: zero frames (documented policy)
    features, t = module(torch.randn(short))
    assert features.shape == (0, 80, 3) and int(t) == 0
    features, lengths = module(torch.randn(2, 800), torch.tensor([short, 800]))
    assert lengths[0] == 0 and features[0].abs().max() == 0
    features, lengths = module(torch.randn(3, short), torch.tensor([short, 0, short]))  # no frame in the batch
    assert features.shape == (3, 0, 80, 3) and lengths.tolist() == [0, 0, 0]
    features, lengths = module(torch.randn(0, 16000), torch.zeros(0, dtype=torch.int64))  # an empty batch
    assert features.shape == (0, shapes.frames_from_samples(16000, 400, 160, combo[1]), 80, 3) and lengths.shape == (0,)


def test_defaults_and_one_dimensional_api():
    module = LogMelDeltas()
    assert module.config == FeatureConfig()
    wave = torch.randn(16000) * 0.1
    features, t = module(wave)
    assert features.shape == (98, 80, 3) and t.shape == () and int(t) == 98
    batched, lengths = module(wave[None], torch.tensor(16000))
    assert torch.equal(batched[0], features)
    assert lengths.tolist() == [98]
    features64, _ = module(wave.double())
    assert features64.dtype == torch.float32


def test_config_from_mapping():
    module = LogMelDeltas({"backend": "kaldi", "n_mels": 40, "channels": ["static", "delta"]})
    features, _ = module(torch.randn(4000))
    assert features.shape == (23, 40, 2)
    with pytest.raises(ValueError, match="unknown feature setting"):
        LogMelDeltas({"n_mel": 40})


@pytest.mark.parametrize(
    "waves,lengths,match",
    [
        (torch.zeros(2, 3, 100), None, "waveforms must be"),
        (torch.zeros(2, 100, dtype=torch.int16), None, "float"),
        (torch.zeros(2, 100), torch.tensor([100, 101]), "lengths must be"),
        (torch.zeros(2, 100), torch.tensor([100]), "lengths must be"),
        (torch.zeros(2, 100), torch.tensor([-1, 5]), "lengths must be"),
        (torch.zeros(2, 100, requires_grad=True), None, "computes no gradients"),
    ],
)
def test_bad_inputs_name_the_problem(waves, lengths, match):
    with pytest.raises(ValueError, match=match):
        LogMelDeltas()(waves, lengths)


def test_bad_dft_form_names_the_choices():
    with pytest.raises(ValueError, match="dft='fast'.*'fft', 'matrix'"):
        LogMelDeltas(dft="fast")


def test_channel_selection_and_order():
    wave = torch.randn(8000) * 0.1
    full, _ = LogMelDeltas()(wave)
    picked, _ = LogMelDeltas(FeatureConfig(channels=["delta_delta", "static"]))(wave)
    assert torch.equal(picked[..., 0], full[..., 2]) and torch.equal(picked[..., 1], full[..., 0])


@pytest.mark.parametrize("backend", ["torchaudio", "kaldi"])
def test_dither_adds_noise_only_when_asked(backend):
    wave = torch.zeros(8000)
    plain, _ = LogMelDeltas(FeatureConfig(backend=backend))(wave)
    dithered = LogMelDeltas(FeatureConfig(backend=backend, dither=1.0))
    a, _ = dithered(wave)
    b, _ = dithered(wave)
    assert torch.isfinite(a).all() and not torch.equal(a, b)
    # digital silence sits at the log floor; dither of one int16 step lifts it above
    assert a[..., 0].mean() > plain[..., 0].mean()


@pytest.mark.parametrize("combo", COMBOS, ids=["-".join(c) for c in COMBOS])
@pytest.mark.parametrize("normalization", ["none", "utterance"])
@pytest.mark.parametrize("pad_value", [float("nan"), float("inf"), 1e30])
def test_non_finite_padding_never_reaches_the_features(combo, normalization, pad_value):
    """``kaldi`` framing reads the batch in place (no zeroing copy): whatever the batch
    is padded with is read only by frames past an utterance's count, and must not reach
    its features, its normalisation statistics or the zeroed padding frames."""
    module = LogMelDeltas(FeatureConfig(backend=combo[0], framing=combo[1], normalization=normalization))
    gen = torch.Generator().manual_seed(0)
    lengths = [16000, 3999, 400, 0, 9000]
    batch = torch.full((len(lengths), max(lengths)), pad_value)
    for b, n in enumerate(lengths):
        batch[b, :n] = torch.randn(n, generator=gen) * 0.3
    features, frame_lengths = module(batch, torch.tensor(lengths))
    assert torch.isfinite(features).all()
    for b, n in enumerate(lengths):
        alone, t = module(batch[b, :n])
        if normalization == "none":
            assert torch.equal(features[b, : int(t)], alone)
        else:  # the statistics are sums over the frames: their order follows the batch's length
            torch.testing.assert_close(features[b, : int(t)], alone, atol=1e-4, rtol=0)
        assert not features[b, int(t) :].any()


@pytest.mark.parametrize("backend", ["torchaudio", "kaldi"])
def test_features_do_not_depend_on_the_thread_count(backend):
    """Every step computes each value the same way on any number of threads (the FFT and
    the mel product split rows, not sums); the caller's thread count is left as it was."""
    module = MODULES[(backend, "kaldi")]
    lengths = [48000, 31000, 160000, 7000]
    batch = random_batch(lengths, 1)
    before = torch.get_num_threads()
    try:
        results = []
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            results.append(module(batch, torch.tensor(lengths))[0])
            assert torch.get_num_threads() == threads
    finally:
        torch.set_num_threads(before)
    assert torch.equal(results[0], results[1]) and torch.equal(results[0], results[2])
