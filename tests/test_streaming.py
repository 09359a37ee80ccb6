"""Front-end streams (features then conv encoder) and the streaming CTC recogniser.

Properties over generated cases: feature settings (both backends and framings, every
channel set), encoder stacks (1-4 layers, time kernels 1-5, strides 1-3, every time
padding that streams), lengths (0, below one window, one window, one window plus k hops
plus or minus 1, random) and chunkings (1 sample, 160, 400, 1237, 1600, 10240, whole,
random splits with empty chunks).  After every chunk the output frames given equal
the formula (:func:`speechconv.shapes.stack_frames_ready` of
:func:`speechconv.shapes.stream_frames_ready`); concatenated, they are the offline
frames, exactly as many, within 1e-5; batched streams that start and end
independently give each stream's own offline frames.  The recogniser's log-probs and
greedy ids equal the offline model's.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from encoder_helpers import randomise_batch_norms
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from test_encoder_stream import ATOL, stream_layers
from torch import nn

from speechconv import FeatureConfig, shapes
from speechconv.encoder import ConvEncoder
from speechconv.encoder_config import EncoderConfig, LayerConfig
from speechconv.features import LogMelDeltas
from speechconv.features.deltas import context_frames
from speechconv.inspector import describe
from speechconv.models import CTCModel
from speechconv.streaming import RecogniserStream, front_end_stream
from tests.conftest import CHANNEL_SETS

SETTINGS = settings(max_examples=25, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
WIN, HOP = 400, 160
EDGE_LENGTHS = [0, 1, WIN - 1, WIN, WIN + 1] + [WIN + k * HOP + d for k in (1, 2, 3, 4, 7, 12) for d in (-1, 0, 1)]
CHUNKS = [1, 160, 400, 1237, 1600, 10240, "whole", "random"]


def split(n: int, chunking: int | str, cuts: list[int]) -> list[int]:
    """Chunk sizes summing to ``n`` (then an empty one): fixed, whole, or ``cuts`` cycled."""
    if chunking == "whole":
        return [n, 0]
    sizes, out, left = (cuts if chunking == "random" else [chunking]), [], n
    for size in itertools.cycle(sizes):
        if left <= 0:
            break
        out.append(min(size, left))
        left -= out[-1]
    return out + [0]


@st.composite
def front_ends(draw) -> tuple[LogMelDeltas, ConvEncoder]:
    """Feature settings that stream and an eval-mode encoder with fixed alignment on them."""
    n_mels = draw(st.integers(6, 12))
    features = LogMelDeltas(FeatureConfig(backend=draw(st.sampled_from(["torchaudio", "kaldi"])),
                                          framing=draw(st.sampled_from(["kaldi", "center"])),
                                          channels=draw(st.sampled_from(CHANNEL_SETS)),
                                          order2=draw(st.sampled_from(["kaldi", "cascade"])), n_mels=n_mels))
    layers = draw(st.lists(stream_layers(), min_size=1, max_size=4))
    try:
        encoder = ConvEncoder(EncoderConfig(layers=layers, too_short=draw(st.sampled_from(["error", "pad"]))),
                              input_freq=n_mels, input_channels=features.config.n_channels,
                              flatten=draw(st.booleans()))
    except ValueError:  # a frequency kernel wider than its input
        assume(False)
    torch.manual_seed(draw(st.integers(0, 2**16)))
    encoder.apply(lambda m: m.reset_parameters() if isinstance(m, nn.Conv2d) else None)
    randomise_batch_norms(encoder, draw(st.integers(0, 2**16)))
    return features, encoder.eval()


def offline(features: LogMelDeltas, encoder: ConvEncoder, wave: torch.Tensor) -> torch.Tensor:
    """``(S,)`` -> the offline encoder frames ``(T', ...)``."""
    with torch.no_grad():
        feats, n = features(wave[None])  # (1, T, F, C)
        out, m = encoder(feats, n)
    return out[0, : int(m[0])]


def ready(features: LogMelDeltas, encoder: ConvEncoder, samples: int) -> int:
    """Output frames a front-end stream has given after ``samples`` samples (before finish)."""
    c = features.config
    frames = shapes.stream_frames_ready(samples, c.win_length, c.hop_length, c.n_fft, c.framing,
                                        context_frames(c.delta_window, c.channels))
    return shapes.stack_frames_ready(frames, [lc.time_geometry() for lc in encoder.config.layers])


@SETTINGS
@given(front=front_ends(), length=st.one_of(st.sampled_from(EDGE_LENGTHS), st.integers(0, 12000)),
       chunking=st.sampled_from(CHUNKS), cuts=st.lists(st.integers(0, 2500), min_size=1, max_size=8).filter(any),
       seed=st.integers(0, 2**31 - 1))
def test_front_end_stream_equals_offline(front, length, chunking, cuts, seed):
    features, encoder = front
    if chunking == 1:
        length = min(length, 900)  # one call per sample
    wave = torch.randn(length, generator=torch.Generator().manual_seed(seed)) * 0.3
    c = features.config
    frames = shapes.frames_from_samples(length, c.win_length, c.hop_length, c.framing)
    stream = front_end_stream(features, encoder)
    geometries = [lc.time_geometry() for lc in encoder.config.layers]
    total = shapes.stack_out_length(max(frames, encoder.min_input_frames) if encoder.config.too_short == "pad"
                                    else frames, geometries)
    jump = shapes.subsampling(geometries)
    pads_beyond_kernel = any(isinstance(g.padding, int) and g.padding > g.kernel - 1 for g in geometries)
    got, start = [], 0
    with torch.no_grad():
        for size in split(length, chunking, cuts):
            got.append(stream.accept(wave[start : start + size]))
            start += size
            given_frames = sum(g.shape[0] for g in got)
            assert given_frames == ready(features, encoder, start), (start, given_frames)
            # the look-ahead is a bound: output j is out once j*J*hop + look-ahead samples are in.
            # It speaks of outputs that read audio: a layer padded by more than kernel - 1
            # frames makes outputs of its padding alone, which the stream gives with the
            # first frames its input makes (exactly as ready() counts, checked above).
            assert given_frames <= total
            if not pads_beyond_kernel:
                by_look_ahead = sum(1 for j in range(total)
                                    if j * jump * c.hop_length + stream.look_ahead_samples <= start)
                assert min(by_look_ahead, total) <= given_frames
            assert stream.samples_accepted() == start and stream.frames_held() >= 0
        if frames < encoder.min_input_frames and encoder.config.too_short == "error":
            with pytest.raises(ValueError, match=f"ends after {frames} feature frames.*at least"):
                stream.finish()
            return
        got.append(stream.finish())
    streamed, want = torch.cat(got), offline(features, encoder, wave)
    assert streamed.shape == want.shape, f"{streamed.shape[0]} frames streamed, {want.shape[0]} offline"
    torch.testing.assert_close(streamed, want, rtol=0, atol=ATOL)
    assert stream.samples_accepted() == 0 == stream.frames_held(), "finish starts the stream afresh"


@settings(SETTINGS, max_examples=10)
@given(front=front_ends(), lengths=st.lists(st.integers(0, 9000), min_size=2, max_size=4),
       chunk=st.sampled_from([160, 1237, 1600]), stagger=st.lists(st.integers(0, 3), min_size=4, max_size=4),
       seed=st.integers(0, 2**31 - 1))
def test_batched_front_end_streams_start_and_end_independently(front, lengths, chunk, stagger, seed):
    """``B`` streams, stream ``b`` starting after ``stagger[b]`` empty chunks and ending
    (alone) with its audio; stream 0 then carries a second utterance.  Every utterance
    gives its own offline frames, and the frames one stream alone gives."""
    features, encoder = front
    c = features.config
    short = encoder.config.too_short == "error"
    minimum = shapes.min_samples_for_frames(encoder.min_input_frames, c.win_length, c.hop_length, c.framing)
    lengths = [max(n, minimum) if short else n for n in lengths]
    gen = torch.Generator().manual_seed(seed)
    B = len(lengths)
    queue = [[torch.randn(n, generator=gen) * 0.3] for n in lengths]
    queue[0].append(torch.randn(max(3000, minimum), generator=gen) * 0.3)
    utterances = [list(q) for q in queue]
    stream = front_end_stream(features, encoder, batch=B)
    got: list[list[torch.Tensor]] = [[] for _ in range(B)]
    done: list[list[torch.Tensor]] = [[] for _ in range(B)]
    position, step = [0] * B, 0
    with torch.no_grad():
        while any(queue):
            chunks = torch.full((B, chunk), float("nan"))  # past each length: never read
            counts = torch.zeros(B, dtype=torch.int64)
            for b in range(B):
                if queue[b] and step >= stagger[b]:
                    piece = queue[b][0][position[b] : position[b] + chunk]
                    chunks[b, : piece.numel()] = piece
                    counts[b], position[b] = piece.numel(), position[b] + piece.numel()
            final = torch.tensor([bool(queue[b]) and step >= stagger[b] and position[b] >= queue[b][0].numel()
                                  for b in range(B)])
            out, n = stream.step(chunks, counts, final)
            for b in range(B):
                got[b].append(out[b, : int(n[b])])
                if final[b]:
                    done[b].append(torch.cat(got[b]))
                    got[b], position[b] = [], 0
                    queue[b].pop(0)
            step += 1
    for b in range(B):
        assert len(done[b]) == len(utterances[b])
        for streamed, wave in zip(done[b], utterances[b], strict=True):
            want = offline(features, encoder, wave)
            assert streamed.shape == want.shape
            torch.testing.assert_close(streamed, want, rtol=0, atol=ATOL)
            alone = front_end_stream(features, encoder)
            with torch.no_grad():
                mine = torch.cat([alone.accept(wave[i : i + chunk]) for i in range(0, wave.numel(), chunk)]
                                 + [alone.finish()])
            torch.testing.assert_close(streamed, mine, rtol=0, atol=ATOL)


@settings(SETTINGS, max_examples=10)
@given(front=front_ends(), lengths=st.lists(st.integers(0, 6000), min_size=1, max_size=3),
       chunk=st.sampled_from([1, 160, 1237, 1600]), seed=st.integers(0, 2**31 - 1))
def test_no_final_is_the_same_step_as_all_false(front, lengths, chunk, seed):
    """``final=None`` (no stream ends: the eager steps skip the end-of-utterance ops) gives
    the same frames, counts and next state, bit for bit, as ``final`` all False."""
    features, encoder = front
    gen = torch.Generator().manual_seed(seed)
    B, S = len(lengths), max(lengths)
    waves = torch.full((B, S), float("nan"))  # past each length: never read
    for b, n in enumerate(lengths):
        waves[b, :n] = torch.randn(n, generator=gen) * 0.3
    skipping, stepping = (front_end_stream(features, encoder, batch=B) for _ in range(2))
    with torch.no_grad():
        for start in range(0, S, chunk):
            counts = (torch.tensor(lengths) - start).clamp(0, chunk)
            piece = waves[:, start : start + chunk]
            a, n = skipping.step(piece, counts)
            b, m = stepping.step(piece, counts, torch.zeros(B, dtype=torch.bool))
            assert torch.equal(n, m)
            assert all(torch.equal(a[i, :k], b[i, :k]) for i, k in enumerate(n.tolist()))
            for x, y in zip([*skipping.features.state, *skipping.encoder.state],
                            [*stepping.features.state, *stepping.encoder.state], strict=True):
                assert torch.equal(x, y)


def test_look_ahead_of_the_default_front_end_and_describe():
    """Features 1040 samples (4 hops of delta context + one window), encoder 3 frames:
    1520 samples = 95 ms, which ``describe()`` prints; TF SAME is refused."""
    stream = front_end_stream(LogMelDeltas(), ConvEncoder().eval())
    assert stream.look_ahead_samples == 4 * HOP + WIN + 3 * HOP == 1520 and stream.look_ahead_ms == 95.0
    d = describe()
    assert d.stream_look_ahead_samples() == 1520
    assert "with the features' 1040 samples (65 ms): 1520 samples = 95 ms in all" in d.to_text()
    centred = FeatureConfig(framing="center")
    assert describe(centred).stream_look_ahead_samples() == \
        front_end_stream(LogMelDeltas(centred), ConvEncoder().eval()).look_ahead_samples == 1520 - 200
    same = EncoderConfig(layers=[LayerConfig(padding="same"), LayerConfig(padding="same")])
    with pytest.raises(ValueError, match="TF SAME.*padding 1"):
        front_end_stream(LogMelDeltas(), ConvEncoder(same).eval())
    with pytest.raises(ValueError, match="normalization='utterance' cannot stream"):
        front_end_stream(LogMelDeltas(FeatureConfig(normalization="utterance")), ConvEncoder().eval())


def test_front_end_stream_bad_input():
    stream = front_end_stream(LogMelDeltas(), ConvEncoder().eval(), batch=2)
    with pytest.raises(ValueError, match=r"expected 2 rows with lengths in \[0, 100\]"):
        stream.accept(torch.zeros(2, 100), torch.tensor([100, 101]))
    with pytest.raises(ValueError, match="samples must be float"):
        front_end_stream(LogMelDeltas(), ConvEncoder().eval()).accept(torch.zeros(2, 100))
    with pytest.raises(ValueError, match="batch=0"):
        front_end_stream(LogMelDeltas(), ConvEncoder().eval(), batch=0)
    with pytest.raises(ValueError, match=r"the features give \(F, C\) = \(40, 3\)"):
        front_end_stream(LogMelDeltas(FeatureConfig(n_mels=40)), ConvEncoder().eval())


# ------------------------------------------------------------------ the recogniser


def ctc_model(seed: int, layers: int = 2, bidirectional: bool = False) -> CTCModel:
    torch.manual_seed(seed)
    encoder = ConvEncoder(flatten=True)
    randomise_batch_norms(encoder, seed)
    return CTCModel(encoder, 12, 0, projection=24, hidden=16, lstm_layers=layers, bidirectional=bidirectional).eval()


LOG_PROB_ATOL = 1e-5
"""Streamed against offline log-probabilities: the same modules on the same frames, the
LSTMs run chunk by chunk from the carried state; measured at most 4.8e-7."""


@settings(SETTINGS, max_examples=8)
@given(seed=st.integers(0, 2**16), layers=st.integers(1, 2), length=st.integers(400, 24000),
       chunking=st.sampled_from([160, 1237, 1600, 10240, "whole", "random"]),
       cuts=st.lists(st.integers(0, 4000), min_size=1, max_size=6).filter(any))
def test_recogniser_stream_equals_the_offline_model(seed, layers, length, chunking, cuts):
    model, features = ctc_model(seed, layers), LogMelDeltas()
    wave = torch.randn(length, generator=torch.Generator().manual_seed(seed)) * 0.3
    with torch.no_grad():
        feats, n = features(wave[None])
        want, m = model.log_probs(feats, n)
    stream = RecogniserStream(model, features)
    log_probs, ids, start = [], [], 0
    for size in split(length, chunking, cuts):
        lp, new = stream.accept(wave[start : start + size])
        start += size
        log_probs.append(lp)
        ids += new
    lp, new = stream.finish()
    log_probs.append(lp)
    ids += new
    streamed = torch.cat(log_probs)
    assert streamed.shape == want[0, : int(m[0])].shape
    torch.testing.assert_close(streamed, want[0, : int(m[0])], rtol=0, atol=LOG_PROB_ATOL)
    assert ids == model.greedy_decode(feats, n)[0]


def test_batched_recogniser_streams_equal_each_alone():
    model, features = ctc_model(3), LogMelDeltas()
    gen = torch.Generator().manual_seed(0)
    waves = [torch.randn(n, generator=gen) * 0.3 for n in (900, 7000, 16000)]
    B, chunk = len(waves), 1600
    stream = RecogniserStream(model, features, batch=B)
    got = [[] for _ in range(B)]
    ids = [[] for _ in range(B)]
    for start in range(0, 16000, chunk):
        pieces = [w[start : start + chunk] for w in waves]
        chunks = torch.stack([nn.functional.pad(p, (0, chunk - p.numel())) for p in pieces])
        lp, n, new = stream.accept(chunks, torch.tensor([p.numel() for p in pieces]))
        assert ((stream.frames_held() >= 0) & (stream.frames_held() <= 4 + 3)).all()  # deltas 4, encoder <= J - 1
        for b in range(B):
            got[b].append(lp[b, : int(n[b])])
            ids[b] += new[b]
    lp, n, new = stream.finish()
    for b, wave in enumerate(waves):
        got[b].append(lp[b, : int(n[b])])
        ids[b] += new[b]
        with torch.no_grad():
            feats, length = features(wave[None])
            want, m = model.log_probs(feats, length)
        torch.testing.assert_close(torch.cat(got[b]), want[0, : int(m[0])], rtol=0, atol=LOG_PROB_ATOL)
        assert ids[b] == model.greedy_decode(feats, length)[0]


def test_bidirectional_and_training_models_are_refused():
    with pytest.raises(ValueError, match="model.bidirectional=true cannot stream.*model.bidirectional=false"):
        RecogniserStream(ctc_model(0, bidirectional=True), LogMelDeltas())
    with pytest.raises(ValueError, match="eval-mode"):
        RecogniserStream(ctc_model(0).train(), LogMelDeltas())
