"""The batch extraction CLI (``python -m speechconv.features``): outputs, manifests and
file lists, global statistics, per-file failures, name clashes, usage errors, atomicity."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import kaldi_native_fbank as knf
import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import FIXTURES, ROOT

from speechconv.audio import load_audio
from speechconv.feature_config import FeatureConfig
from speechconv.features import LogMelDeltas
from speechconv.features.cli import main, output_stems

JFK = FIXTURES / "jfk.flac"  # 44.1 kHz stereo 24-bit FLAC
OGG = FIXTURES / "198-209-0000.ogg"  # 22.05 kHz Ogg Vorbis
YES = FIXTURES / "yes_1000ms.wav"
NO = FIXTURES / "no_1000ms.wav"


@pytest.fixture
def corrupt(tmp_path: Path) -> Path:
    path = tmp_path / "in" / "broken.wav"
    path.parent.mkdir()
    path.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" + bytes(range(256)) * 4)
    return path


def _load(path: Path) -> dict:
    return torch.load(path, weights_only=True)


def test_good_and_bad_files(tmp_path: Path, corrupt: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    code = main([str(YES), str(corrupt), str(OGG), "--out", str(out)])
    assert code == 1
    err = capsys.readouterr().err
    assert "1 file(s) failed" in err and str(corrupt) in err and "cannot decode" in err
    assert sorted(p.name for p in out.iterdir()) == ["198-209-0000.png", "198-209-0000.pt", "yes_1000ms.png",
                                                     "yes_1000ms.pt"]  # no .tmp, nothing for the bad file
    config = FeatureConfig()
    extractor = LogMelDeltas(config).eval()
    for source in (YES, OGG):
        saved = _load(out / f"{source.stem}.pt")
        assert set(saved) == {"features", "num_frames", "sample_rate", "config", "source"}
        wave = load_audio(source)
        # Kaldi framing, written out here: 25 ms windows every 10 ms, whole windows only.
        frames = 1 + (wave.shape[0] - 400) // 160
        assert saved["features"].shape == (frames, 80, 3) and saved["features"].dtype == torch.float32
        assert saved["num_frames"] == frames and saved["sample_rate"] == 16000
        assert saved["config"] == dataclasses.asdict(config)
        assert saved["source"] == str(source.resolve())
        with torch.inference_mode():
            expected, length = extractor(wave)
        assert int(length) == frames
        torch.testing.assert_close(saved["features"], expected, rtol=0, atol=0)
        png = (out / f"{source.stem}.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_kaldi_backend_matches_kaldi_native_fbank(tmp_path: Path) -> None:
    assert main([str(JFK), "--out", str(tmp_path), "--backend", "kaldi", "--no-plot"]) == 0
    saved = _load(tmp_path / "jfk.pt")
    assert saved["config"]["backend"] == "kaldi"
    opts = knf.FbankOptions()
    opts.frame_opts.dither = 0.0
    opts.mel_opts.num_bins = 80
    fbank = knf.OnlineFbank(opts)
    wave = load_audio(JFK)
    fbank.accept_waveform(16000, (wave * 32768).tolist())  # Kaldi reads int16-scaled samples
    fbank.input_finished()
    reference = np.stack([fbank.get_frame(t) for t in range(fbank.num_frames_ready)]).astype(np.float64)  # (T, F)
    ours = saved["features"][:, :, 0].numpy().astype(np.float64)  # (T, F, C) -> (T, F), static
    assert saved["num_frames"] == reference.shape[0]
    # Both compute in float32, so FFT roundoff scales with each frame's energy: a quiet
    # bin of a loud frame differs by up to 0.019 in log (measured on jfk.flac), while
    # the mel energies agree to 1.4e-5 of the frame's largest (tolerance 1e-4), and log
    # values within 10 nats of the frame's peak to 1.3e-4 (tolerance 1e-3).
    peak = np.exp(reference).max(axis=1, keepdims=True)
    assert (np.abs(np.exp(ours) - np.exp(reference)) / peak).max() < 1e-4
    loud = reference >= np.log(peak) - 10
    np.testing.assert_allclose(ours[loud], reference[loud], rtol=0, atol=1e-3)


def test_options_reach_the_config(tmp_path: Path) -> None:
    assert main([str(NO), "--out", str(tmp_path), "--n-mels", "40", "--framing", "center", "--no-plot"]) == 0
    assert [p.name for p in tmp_path.iterdir()] == ["no_1000ms.pt"]
    saved = _load(tmp_path / "no_1000ms.pt")
    assert saved["config"]["n_mels"] == 40 and saved["config"]["framing"] == "center"
    assert saved["features"].shape == (1 + 16000 // 160, 40, 3)  # centred frames: 1 + S // hop


def test_name_clash_is_refused_not_overwritten(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a, b = tmp_path / "a" / "utt.wav", tmp_path / "b" / "utt.flac"
    for path, clip in ((a, YES), (b, NO)):
        path.parent.mkdir()
        data, rate = sf.read(clip)
        sf.write(path, data, rate)
    out = tmp_path / "out"
    assert main([str(a), str(YES), str(b), "--out", str(out), "--no-plot"]) == 1
    captured = capsys.readouterr()
    assert "of 3 file(s)" in captured.out
    assert "clash" in captured.err and str(a) in captured.err and str(b) in captured.err
    assert sorted(p.name for p in out.iterdir()) == ["yes_1000ms.pt"]


def test_output_stems() -> None:
    x, y, z = Path("d1/x.wav"), Path("d2/x.ogg"), Path("d1/z.wav")
    stems, clashes = output_stems([x, z, y, z, Path("./d1/z.wav")])
    assert stems == {z: "z"}
    assert list(clashes) == [x, y] and "x.pt" in clashes[x]


def test_same_file_twice_is_processed_once(tmp_path: Path) -> None:
    assert main([str(YES), str(YES), "--out", str(tmp_path), "--no-plot"]) == 0
    assert [p.name for p in tmp_path.iterdir()] == ["yes_1000ms.pt"]


def test_a_crash_while_saving_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    def torn_save(obj: object, path: str | os.PathLike) -> None:
        Path(path).write_bytes(b"half a pickle")
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", torn_save)
    assert main([str(YES), "--out", str(tmp_path), "--no-plot"]) == 1
    assert "No space left on device" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_manifest_and_file_list_inputs(tmp_path: Path) -> None:
    """A manifest's rows (paths relative to its folder) and a file list's lines are
    extracted like files named on the command line; bad manifest rows are failures."""
    (tmp_path / "audio").mkdir()
    for clip in (YES, NO):
        (tmp_path / "audio" / clip.name).symlink_to(clip)
    manifest = tmp_path / "audio" / "m.jsonl"
    manifest.write_text(json.dumps({"audio_filepath": YES.name, "text": "yes"}) + "\n")
    listing = tmp_path / "audio" / "files.txt"
    listing.write_text(f"{NO.name}\n\n")
    out = tmp_path / "out"
    assert main([str(manifest), str(listing), "--out", str(out), "--no-plot"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["no_1000ms.pt", "yes_1000ms.pt"]
    manifest.write_text(json.dumps({"audio_filepath": YES.name, "text": "yes"}) + "\n{not json\n")
    assert main([str(manifest), "--out", str(tmp_path / "again"), "--no-plot"]) == 1
    assert [p.name for p in (tmp_path / "again").iterdir()] == ["yes_1000ms.pt"]


def test_global_stats_file(tmp_path: Path) -> None:
    stats = tmp_path / "stats.pt"
    assert main([str(YES), str(NO), "--global-stats", str(stats), "--backend", "kaldi"]) == 0
    saved = torch.load(stats, weights_only=True)
    assert saved["mean"].shape == saved["std"].shape == (80, 3) and saved["backend"] == "kaldi"
    config = FeatureConfig(backend="kaldi", normalization="global", global_stats_path=str(stats))
    features, _ = LogMelDeltas(config)(load_audio(YES))
    assert torch.isfinite(features).all()


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        ([], "required"),
        ([str(YES)], "nothing to write"),
        ([str(YES), "--out", "o", "--backend", "sox"], "invalid choice"),
        ([str(YES), "--out", "o", "--n-mels", "0"], "features.n_mels=0 is invalid"),
        ([str(YES), "--out", "o", "--n-mels", "many"], "invalid int value"),
    ],
)
def test_usage_errors_exit_2(argv: list[str], needle: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    assert needle in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_out_that_is_a_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "taken"
    target.write_text("x")
    assert main([str(YES), "--out", str(target)]) == 2
    assert "is a file" in capsys.readouterr().err


def test_help_in_process(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    assert "--out" in text and "--backend" in text and "--no-plot" in text


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)


def test_subprocess_mixed_batch(tmp_path: Path, corrupt: Path) -> None:
    out = tmp_path / "out"
    result = _run("-m", "speechconv.features", str(JFK), str(corrupt), "--out", str(out), "--no-plot")
    assert result.returncode == 1, result.stderr
    assert corrupt.name in result.stderr and "failed" in result.stderr
    saved = _load(out / "jfk.pt")
    assert saved["features"].shape[1:] == (80, 3)
    assert [p.name for p in out.iterdir()] == ["jfk.pt"]


def test_subprocess_help_via_features_module() -> None:
    result = _run("-m", "speechconv.features", "--help")
    assert result.returncode == 0, result.stderr
    assert "python -m speechconv.features" in result.stdout and "--out" in result.stdout
