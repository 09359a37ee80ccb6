"""FSDD digit strings: the bundled clips, the plans, the composed audio and transcripts."""

from __future__ import annotations

from pathlib import Path

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
    load_fsdd,
    parse_fsdd_name,
    plan_epoch,
    transcript,
)

SHARED_FSDD = Path("/work/shared/audio/fsdd")
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


@pytest.mark.skipif(not SHARED_FSDD.is_dir(), reason="the shared FSDD WAVs are not on this machine")
def test_flac_clips_are_bit_exact_copies_of_the_wavs():
    for path in FILES:
        flac, rate = sf.read(str(path), dtype="int16")
        wav, wav_rate = sf.read(str(SHARED_FSDD / (path.stem + ".wav")), dtype="int16")
        assert rate == wav_rate == 8000
        np.testing.assert_array_equal(flac, wav, err_msg=path.name)


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
    with pytest.raises(ValueError, match="split must be one of"):
        bank.split_pools("test")


def check_plan(bank, plan, split, config):
    lo = round(config.min_silence_ms * 16)
    hi = round(config.max_silence_ms * 16)
    assert config.min_digits <= len(plan.clips) <= config.max_digits
    assert len(plan.silences) == len(plan.clips) + 1
    assert all(lo <= s <= hi for s in plan.silences)
    assert len({bank.speakers[c] for c in plan.clips}) == 1  # one speaker per utterance
    takes = range(5, 50) if split == "train" else range(0, 5)
    assert all(bank.takes[c] in takes for c in plan.clips)
    assert plan.num_samples == sum(bank.num_samples(c) for c in plan.clips) + sum(plan.silences)


@settings(max_examples=15, deadline=None)
@given(
    st.sampled_from(["train", "valid"]),
    st.integers(0, 2**32 - 1),
    st.integers(0, 100),
    st.integers(1, 3),
    st.integers(0, 3),
    st.floats(0, 100),
    st.floats(0, 300),
)
def test_plans_composition_and_transcripts(bank, split, seed, epoch, lo_digits, extra, lo_ms, extra_ms):
    config = DigitStringConfig(lo_digits, lo_digits + extra, lo_ms, lo_ms + extra_ms)
    plans = plan_epoch(bank, split, 8, seed, epoch, config)
    for plan in plans:
        check_plan(bank, plan, split, config)
        wave = compose(bank, plan)
        assert wave.shape == (plan.num_samples,) and wave.dtype == torch.float32
        pos = plan.silences[0]
        assert not wave[:pos].any()
        words = transcript(bank, plan).split()
        assert len(words) == len(plan.clips)
        for clip, silence, word in zip(plan.clips, plan.silences[1:], words, strict=True):
            # the audio is the clip itself, and the word is the digit in its file name
            digit = parse_fsdd_name(bank.names[clip])[0]
            assert word == DIGIT_WORDS[digit]
            n = bank.num_samples(clip)
            assert torch.equal(wave[pos : pos + n], bank.clip(clip))
            assert not wave[pos + n : pos + n + silence].any()
            pos += n + silence
        assert pos == plan.num_samples


def test_plans_depend_only_on_seed_split_epoch_and_index(bank):
    config = DigitStringConfig()
    a = plan_epoch(bank, "train", 50, 7, 3, config)
    assert a == plan_epoch(bank, "train", 50, 7, 3, config)  # across calls
    assert a[:20] == plan_epoch(bank, "train", 20, 7, 3, config)  # not on the epoch size
    assert a != plan_epoch(bank, "train", 50, 7, 4, config)
    assert a != plan_epoch(bank, "train", 50, 8, 3, config)
    assert a != plan_epoch(bank, "valid", 50, 7, 3, config)


def test_plans_cover_digits_and_speakers(bank):
    plans = plan_epoch(bank, "train", 2000, 0, 0, DigitStringConfig())
    counts = np.bincount([bank.digits[c] for p in plans for c in p.clips], minlength=10)
    assert counts.min() > 0.8 * counts.mean()  # uniform over digits
    assert {len(p.clips) for p in plans} == {1, 2, 3, 4}
    assert {bank.speakers[p.clips[0]] for p in plans} == {"jackson", "lucas", "nicolas", "yweweler"}


def test_bad_names_and_settings(tmp_path):
    with pytest.raises(ValueError, match="not an FSDD clip name"):
        parse_fsdd_name("hello.flac")
    with pytest.raises(ValueError, match="1 <= min_digits <= max_digits"):
        DigitStringConfig(min_digits=3, max_digits=2)
    with pytest.raises(ValueError, match="silence range"):
        DigitStringConfig(min_silence_ms=300, max_silence_ms=50)
    with pytest.raises(FileNotFoundError, match="prepare_fsdd.py"):
        load_fsdd(tmp_path)


@pytest.mark.skipif(not SHARED_FSDD.is_dir(), reason="the shared FSDD WAVs are not on this machine")
def test_prepare_script_is_deterministic_and_reproduces_the_bundle(tmp_path):
    import importlib.util
    import shutil

    spec = importlib.util.spec_from_file_location("prepare_fsdd", FSDD.parent / "prepare_fsdd.py")
    prepare = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(prepare)
    src = tmp_path / "src"
    src.mkdir()
    for name in ("0_jackson_0", "7_lucas_33", "9_yweweler_49"):
        shutil.copy(SHARED_FSDD / f"{name}.wav", src)
    for out in ("a", "b"):
        assert prepare.main([str(src), "--out", str(tmp_path / out)]) == 0
    for name in ("0_jackson_0", "7_lucas_33", "9_yweweler_49"):
        data = (tmp_path / "a" / f"{name}.flac").read_bytes()
        assert data == (tmp_path / "b" / f"{name}.flac").read_bytes() == (FSDD / f"{name}.flac").read_bytes()
    sf.write(str(src / "1_jackson_0.wav"), np.zeros(100, dtype=np.int16), 16000)  # not FSDD's 8 kHz
    with pytest.raises(SystemExit, match="expected FSDD's 8000 Hz"):
        prepare.main([str(src), "--out", str(tmp_path / "c")])
