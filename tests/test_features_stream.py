"""Streaming features: chunk by chunk, the offline features bit for bit.

Properties over generated cases: every chunking (1 sample, 160, 400, 1237, 1600, 10240,
the whole waveform, random splits with empty chunks) of every interesting length (0,
below one window, exactly one window, one window plus k hops plus or minus 1, and
random ones) gives, concatenated, ``torch.equal`` to ``LogMelDeltas()(waveform)[0]``;
after every chunk the frames out equal :func:`speechconv.shapes.stream_frames_ready`;
frames once returned never change; batched streams that start and end independently
each equal their own offline features.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from speechconv import FeatureConfig, shapes
from speechconv.features import LogMelDeltas
from tests.conftest import CHANNEL_SETS

COMBOS = [(backend, framing) for backend in ("torchaudio", "kaldi") for framing in ("kaldi", "center")]
WIN, HOP = 400, 160
EDGE_LENGTHS = [0, 1, 159, 160, WIN - 1, WIN, WIN + 1] + [WIN + k * HOP + d for k in (1, 2, 3, 4, 5, 9) for d in (-1, 0, 1)]
CHUNKS = [1, 160, 400, 1237, 1600, 10240, "whole", "random"]


def split(n: int, chunking: int | str, cuts: list[int]) -> list[int]:
    """Chunk sizes summing to ``n``: fixed size, the whole waveform (and an empty chunk),
    or ``cuts`` (random sizes, zeros included) until ``n`` is reached."""
    if chunking == "whole":
        return [n, 0]
    sizes = cuts if chunking == "random" else [chunking]
    out, left = [], n
    for size in itertools.cycle(sizes):
        if left <= 0:
            break
        out.append(min(size, left))
        left -= out[-1]
        if len(out) > 100_000:
            raise AssertionError("chunking makes no progress")
    return out + [0]


def stream_all(stream, wave: torch.Tensor, sizes: list[int], config: FeatureConfig) -> torch.Tensor:
    """Feed ``wave`` in chunks of ``sizes``; check the frames-ready count after each chunk
    and that returned frames never change; returns every frame, finish included."""
    outs, kept, start = [], [], 0
    for size in sizes:
        frames = stream.accept(wave[start : start + size])
        start += size
        outs.append(frames)
        kept.append(frames.clone())
        ready = shapes.stream_frames_ready(start, config.win_length, config.hop_length, config.n_fft, config.framing,
                                           stream.context_frames)
        assert stream.frames_emitted() == sum(o.shape[0] for o in outs) == ready, (start, ready)
        assert stream.samples_accepted() == start
        assert 0 <= stream.frames_held() <= stream.context_frames
    outs.append(stream.finish())
    kept.append(outs[-1].clone())
    assert all(torch.equal(a, b) for a, b in zip(outs, kept, strict=True)), "a returned frame changed"
    assert stream.frames_emitted() == stream.samples_accepted() == 0, "finish starts the stream afresh"
    return torch.cat(outs)


@settings(max_examples=80, deadline=None)
@given(
    combo=st.sampled_from(COMBOS),
    channels=st.sampled_from(CHANNEL_SETS),
    order2=st.sampled_from(["kaldi", "cascade"]),
    normalization=st.sampled_from(["none", "global"]),
    length=st.one_of(st.sampled_from(EDGE_LENGTHS), st.integers(0, 20000)),
    chunking=st.sampled_from(CHUNKS),
    cuts=st.lists(st.integers(0, 3000), min_size=1, max_size=12).filter(any),
    seed=st.integers(0, 2**31 - 1),
)
def test_stream_equals_offline_bit_for_bit(global_stats_files, combo, channels, order2, normalization, length, chunking,
                                           cuts, seed):
    if chunking == 1:
        length = min(length, 2500)  # one call per sample
    config = FeatureConfig(backend=combo[0], framing=combo[1], channels=channels, order2=order2,
                           normalization=normalization,
                           global_stats_path=global_stats_files[tuple(channels)] if normalization == "global" else None)
    module = LogMelDeltas(config)
    wave = torch.randn(length, generator=torch.Generator().manual_seed(seed)) * 0.3
    streamed = stream_all(module.streaming(), wave, split(length, chunking, cuts), config)
    offline, n = module(wave)
    assert streamed.shape == offline.shape and int(n) == offline.shape[0]
    assert torch.equal(streamed, offline)


@pytest.mark.parametrize("combo", COMBOS, ids=["-".join(c) for c in COMBOS])
def test_one_sample_chunks_of_a_real_clip(combo, speech_clips):
    from speechconv.audio import load_audio

    module = LogMelDeltas(FeatureConfig(backend=combo[0], framing=combo[1]))
    wave = load_audio(next(p for p in speech_clips if p.name == "yes_1000ms.wav"))[:6000]
    streamed = stream_all(module.streaming(), wave, [1] * wave.numel() + [0], module.config)
    assert torch.equal(streamed, module(wave)[0])


@settings(max_examples=25, deadline=None)
@given(
    combo=st.sampled_from(COMBOS),
    lengths=st.lists(st.integers(0, 9000), min_size=1, max_size=5),
    chunk=st.sampled_from([160, 1237, 4000]),
    stagger=st.lists(st.integers(0, 4), min_size=5, max_size=5),
    seed=st.integers(0, 2**31 - 1),
)
def test_batched_streams_start_and_end_independently(combo, lengths, chunk, stagger, seed):
    """B streams, each starting after ``stagger[b]`` chunks of silence-free nothing (0
    samples) and ending when its audio does (``finish(b)``); a second utterance follows
    on stream 0.  Every utterance equals its own offline features."""
    module = LogMelDeltas(FeatureConfig(backend=combo[0], framing=combo[1]))
    gen = torch.Generator().manual_seed(seed)
    B = len(lengths)
    waves = [torch.randn(n, generator=gen) * 0.3 for n in lengths] + [torch.randn(3000, generator=gen) * 0.3]
    queue = [[waves[b]] for b in range(B)]
    queue[0].append(waves[-1])  # stream 0 carries a second utterance after its first
    stream = module.streaming(batch_size=B)
    got: list[list[torch.Tensor]] = [[] for _ in range(B)]
    done: list[list[torch.Tensor]] = [[] for _ in range(B)]
    position = [0] * B
    step = 0
    while any(queue):
        chunks = torch.zeros(B, chunk)
        counts = torch.zeros(B, dtype=torch.int64)
        for b in range(B):
            if queue[b] and step >= stagger[b]:
                piece = queue[b][0][position[b] : position[b] + chunk]
                chunks[b, : piece.numel()] = piece
                counts[b] = piece.numel()
                position[b] += piece.numel()
        for b, frames in enumerate(stream.accept(chunks, counts)):
            got[b].append(frames)
        for b in range(B):
            if queue[b] and position[b] >= queue[b][0].numel() and step >= stagger[b]:
                got[b].append(stream.finish(b))
                done[b].append(torch.cat(got[b]))
                got[b], position[b] = [], 0
                queue[b].pop(0)
        step += 1
    expected = [[waves[b]] for b in range(B)]
    expected[0].append(waves[-1])
    for b in range(B):
        assert len(done[b]) == len(expected[b])
        for streamed, wave in zip(done[b], expected[b], strict=True):
            assert torch.equal(streamed, module(wave)[0])


def test_batched_finish_all_reset_and_bad_input():
    module = LogMelDeltas()
    stream = module.streaming(batch_size=2)
    waves = torch.randn(2, 5000) * 0.3
    first = stream.accept(waves, torch.tensor([5000, 3000]))
    last = stream.finish()
    assert isinstance(last, list) and len(last) == 2
    assert torch.equal(torch.cat([first[0], last[0]]), module(waves[0])[0])
    assert torch.equal(torch.cat([first[1], last[1]]), module(waves[1, :3000])[0])
    stream.accept(waves, torch.tensor([5000, 5000]))
    stream.reset(1)
    assert stream.samples_accepted(0) == 5000 and stream.samples_accepted(1) == 0
    with pytest.raises(ValueError, match="expected 2 rows with lengths in"):
        stream.accept(waves, torch.tensor([5000, 6000]))
    with pytest.raises(ValueError, match="samples must be float"):
        stream.accept(waves[0])
    with pytest.raises(ValueError, match="samples must be float"):
        module.streaming().accept(waves)


def test_look_ahead_and_frames_held_back():
    """Defaults: frame t waits for frame t + 4's window (delta-deltas), which ends 4 hops
    and one window after t*hop with kaldi framing (65 ms), 200 samples less centred."""
    stream = LogMelDeltas().streaming()
    assert stream.context_frames == 4
    assert stream.look_ahead_samples == 4 * HOP + WIN == 1040 and stream.look_ahead_ms == 65.0
    centred = LogMelDeltas(FeatureConfig(framing="center")).streaming()
    assert centred.look_ahead_samples == 1040 - 200 and centred.look_ahead_ms == 52.5
    statics = LogMelDeltas(FeatureConfig(channels=["static"])).streaming()
    assert statics.context_frames == 0 and statics.look_ahead_samples == WIN
    # frames ready after n samples, against counting windows by hand
    for n in range(0, 3000, 7):
        by_hand = sum(1 for t in range(100) if t * HOP + 4 * HOP + WIN <= n)
        assert shapes.stream_frames_ready(n, WIN, HOP, 512, "kaldi", 4) == by_hand
    wave = torch.randn(3000) * 0.3
    stream.accept(wave)
    assert stream.frames_held() == 4 == shapes.frames_from_samples(3000, WIN, HOP) - stream.frames_emitted()


@pytest.mark.parametrize(
    "settings_,match",
    [({"normalization": "utterance"}, "normalization='utterance' cannot stream.*compute_global_stats"),
     ({"dither": 1.0}, "dither=1.0 cannot stream.*dither=0")],
)
def test_settings_that_cannot_stream_say_why_and_what_instead(settings_, match):
    with pytest.raises(ValueError, match=match):
        LogMelDeltas(FeatureConfig(**settings_)).streaming()


def test_bad_batch_size():
    with pytest.raises(ValueError, match="batch_size=0"):
        LogMelDeltas().streaming(batch_size=0)
