"""FSDD digit strings: the bundled clips, the plans, the composed audio and transcripts."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio.functional as AF
from hypothesis import given, settings
from hypothesis import strategies as st

from speechconv import audio
from speechconv.data.digits import (
    DIGIT_WORDS,
    DigitStringConfig,
    compose,
    default_fsdd_dir,
    eval_strings,
    load_fsdd,
    parse_fsdd_name,
    plan_epoch,
    transcript,
)

FSDD = default_fsdd_dir()
FILES = sorted(FSDD.glob("*.flac"))


@pytest.fixture(scope="module")
def bank():
    return load_fsdd()


def test_bundled_clips_are_complete_and_small():
    assert len(FILES) == 2000
    names = [parse_fsdd_name(p.name) for p in FILES]
    assert {n[1] for n in names} == {"jackson", "lucas", "nicolas", "yweweler"}
    assert sorted(names) == sorted((d, s, t) for d in range(10) for s in {n[1] for n in names} for t in range(50))
    assert sum(p.stat().st_size for p in FILES) < 10e6
    info = sf.info(str(FILES[0]))
    assert (info.samplerate, info.channels, info.format, info.subtype) == (8000, 1, "FLAC", "PCM_16")


def test_bank_holds_every_clip_resampled(bank):
    assert len(bank) == 2000 and bank.sample_rate == 16000
    assert bank.waveforms.dtype == torch.float32 and bank.waveforms.dim() == 1
    # Against an independent read resampled with load_audio's documented settings: this
    # checks the bank's stitching and offsets (resampling quality is test_audio's job).
    for n in (0, 777, 1999):
        raw, rate = sf.read(str(FSDD / (bank.names[n] + ".flac")), dtype="float32")
        expected = AF.resample(
            torch.from_numpy(raw),
            rate,
            16000,
            lowpass_filter_width=audio.RESAMPLE_LOWPASS_WIDTH,
            rolloff=audio.RESAMPLE_ROLLOFF,
            resampling_method=audio.RESAMPLE_METHOD,
            beta=audio.RESAMPLE_BETA,
        )
        torch.testing.assert_close(bank.clip(n), expected, atol=1e-5, rtol=0)
        assert parse_fsdd_name(bank.names[n]) == (bank.digits[n], bank.speakers[n], bank.takes[n])


def test_split_pools(bank):
    train, valid = bank.split_pools("train"), bank.split_pools("valid")
    assert sorted(train) == sorted(valid) == ["jackson", "lucas", "nicolas", "yweweler"]
    assert all(set(bank.takes[p]) == set(range(5, 50)) for p in train.values())
    assert all(set(bank.takes[p]) == set(range(0, 5)) for p in valid.values())
    unseen = bank.split_pools("unseen", ["nicolas"])
    assert list(unseen) == ["nicolas"] and set(bank.takes[unseen["nicolas"]]) == set(range(50))
    assert sorted(bank.split_pools("train", ["lucas", "jackson"])) == ["jackson", "lucas"]
    with pytest.raises(ValueError, match="split must be one of"):
        bank.split_pools("test")
    with pytest.raises(ValueError, match=r"speakers \['george'\] are not in the FSDD bank"):
        bank.split_pools("train", ["george"])


def check_plan(bank, plan, split, config, speakers):
    edge = [round(ms * 16) for ms in config.edge_silence_ms]
    gap = [round(ms * 16) for ms in config.gap_ms]
    assert config.min_digits <= len(plan.clips) <= config.max_digits
    assert len(plan.silences) == len(plan.clips) + 1 == len(plan.gains) + 1
    assert all(s == 0 or edge[0] <= s <= edge[1] for s in (plan.silences[0], plan.silences[-1]))
    if config.edge_pause_prob == 0:
        assert plan.silences[0] == plan.silences[-1] == 0
    assert all(gap[0] <= s <= gap[1] for s in plan.silences[1:-1])
    assert len({bank.speakers[c] for c in plan.clips}) == 1  # one speaker per utterance
    assert bank.speakers[plan.clips[0]] in speakers
    takes = {"train": range(5, 50), "valid": range(0, 5), "unseen": range(0, 50)}[split]
    assert all(bank.takes[c] in takes for c in plan.clips)
    assert plan.num_samples == sum(bank.num_samples(c) for c in plan.clips) + sum(plan.silences)


@settings(max_examples=15, deadline=None)
@given(
    st.sampled_from([("train", ("jackson", "lucas")), ("valid", ("jackson", "lucas")), ("unseen", ("nicolas",))]),
    st.integers(0, 2**32 - 1),
    st.integers(0, 100),
    st.integers(1, 3),
    st.integers(0, 4),
    st.tuples(st.floats(0, 100), st.floats(0, 300)),
    st.tuples(st.floats(0, 100), st.floats(0, 300)),
    st.one_of(st.none(), st.tuples(st.floats(-60, -30), st.floats(0, 30))),
    st.floats(0, 12),
    st.sampled_from([0.0, 0.5, 1.0]),
)
def test_plans_composition_and_transcripts(bank, where, seed, epoch, lo_digits, extra, edge, gap, level, spread,
                                           pause):
    split, speakers = where
    level_db = None if level is None else (level[0], level[0] + level[1])
    config = DigitStringConfig(lo_digits, lo_digits + extra, (edge[0], edge[0] + edge[1]), pause,
                               (gap[0], gap[0] + gap[1]), level_db, spread)
    plans = plan_epoch(bank, split, 8, seed, epoch, config, speakers)
    for plan in plans:
        check_plan(bank, plan, split, config, speakers)
        wave = compose(bank, plan)
        assert wave.shape == (plan.num_samples,) and wave.dtype == torch.float32
        pos = plan.silences[0]
        assert not wave[:pos].any()
        words = transcript(bank, plan).split()
        assert len(words) == len(plan.clips)
        for clip, gain, silence, word in zip(plan.clips, plan.gains, plan.silences[1:], words, strict=True):
            # the audio is the clip itself at its gain, and the word is the digit in its file name
            digit = parse_fsdd_name(bank.names[clip])[0]
            assert word == DIGIT_WORDS[digit]
            n = bank.num_samples(clip)
            torch.testing.assert_close(wave[pos : pos + n], bank.clip(clip) * gain, rtol=0, atol=0)
            assert not wave[pos + n : pos + n + silence].any()
            pos += n + silence
        assert pos == plan.num_samples
        if level_db is None:
            assert plan.gains == (1.0,) * len(plan.clips)
        else:
            # the string's peak lies at the drawn level, each digit within its spread of the others
            peak_db = 20 * np.log10(float(wave.abs().max()))
            assert level_db[0] - 1e-3 <= peak_db <= level_db[1] + 1e-3
            offsets = 20 * np.log10(np.asarray(plan.gains))
            assert offsets.max() - offsets.min() <= spread + 1e-9


def test_default_levels_span_thirty_decibels_and_strings_start_at_once(bank):
    config = DigitStringConfig()
    assert config.level_db[1] - config.level_db[0] >= 30 and config.edge_silence_ms[0] == 0
    assert config.min_digits == 1 and config.max_digits >= 6
    plans = plan_epoch(bank, "train", 2000, 0, 0, config, ["jackson", "lucas"])
    peaks = [20 * np.log10(max(bank.peaks[c] * g for c, g in zip(p.clips, p.gains, strict=True))) for p in plans]
    assert max(peaks) - min(peaks) >= 30
    starts = np.asarray([p.silences[0] for p in plans])
    assert 0.4 < np.mean(starts == 0) < 0.6 and starts.max() > 16 * 300  # half start at once, others after pauses
    assert 0.4 < np.mean([p.silences[-1] == 0 for p in plans]) < 0.6
    for plan in plan_epoch(bank, "unseen", 50, 0, 0, eval_strings(6), ["nicolas"]):
        wave = compose(bank, plan)
        assert plan.silences[0] == plan.silences[-1] == 0
        assert torch.equal(wave[: bank.num_samples(plan.clips[0])], bank.clip(plan.clips[0]))  # speech at sample 0
        assert all(1600 <= s <= 4800 for s in plan.silences[1:-1])


def test_plans_depend_only_on_seed_split_epoch_and_index(bank):
    config = DigitStringConfig()
    a = plan_epoch(bank, "train", 50, 7, 3, config)
    assert a == plan_epoch(bank, "train", 50, 7, 3, config)  # across calls
    assert a[:20] == plan_epoch(bank, "train", 20, 7, 3, config)  # not on the epoch size
    assert a != plan_epoch(bank, "train", 50, 7, 4, config)
    assert a != plan_epoch(bank, "train", 50, 8, 3, config)
    assert a != plan_epoch(bank, "valid", 50, 7, 3, config)


def test_plans_cover_digits_and_speakers(bank):
    plans = plan_epoch(bank, "train", 2000, 0, 0, DigitStringConfig(), ["jackson", "lucas", "yweweler"])
    counts = np.bincount([bank.digits[c] for p in plans for c in p.clips], minlength=10)
    assert counts.min() > 0.8 * counts.mean()  # uniform over digits
    assert {len(p.clips) for p in plans} == {1, 2, 3, 4, 5, 6}
    assert {bank.speakers[p.clips[0]] for p in plans} == {"jackson", "lucas", "yweweler"}


def test_bad_names_and_settings(tmp_path):
    with pytest.raises(ValueError, match="not an FSDD clip name"):
        parse_fsdd_name("hello.flac")
    with pytest.raises(ValueError, match=r"data.max_digits=2 is invalid: expected an int >= min_digits = 3"):
        DigitStringConfig(min_digits=3, max_digits=2)
    with pytest.raises(ValueError, match=r"gap_ms=\[300, 50\] is invalid"):
        DigitStringConfig(gap_ms=(300, 50))
    with pytest.raises(ValueError, match="level_db"):
        DigitStringConfig(level_db=(-20, 6))
    with pytest.raises(FileNotFoundError, match="prepare_fsdd.py"):
        load_fsdd(tmp_path)


def test_prepare_script_is_deterministic_and_reproduces_the_bundle(tmp_path):
    """WAVs of the bundled clips' samples (as FSDD ships them: 8 kHz 16-bit PCM) go through
    the script twice and come out as the bundled FLAC files, byte for byte."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("prepare_fsdd", FSDD.parent / "prepare_fsdd.py")
    prepare = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(prepare)
    src = tmp_path / "src"
    src.mkdir()
    names = ("0_jackson_0", "7_lucas_33", "9_yweweler_49")
    for name in names:
        samples, rate = sf.read(str(FSDD / f"{name}.flac"), dtype="int16")
        sf.write(str(src / f"{name}.wav"), samples, rate, subtype="PCM_16")
    for out in ("a", "b"):
        assert prepare.main([str(src), "--out", str(tmp_path / out)]) == 0
    for name in names:
        data = (tmp_path / "a" / f"{name}.flac").read_bytes()
        assert data == (tmp_path / "b" / f"{name}.flac").read_bytes() == (FSDD / f"{name}.flac").read_bytes()
    sf.write(str(src / "1_jackson_0.wav"), np.zeros(100, dtype=np.int16), 16000)  # not FSDD's 8 kHz
    with pytest.raises(SystemExit, match="expected FSDD's 8000 Hz"):
        prepare.main([str(src), "--out", str(tmp_path / "c")])
