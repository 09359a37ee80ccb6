"""Manifests: relative paths, every kind of bad row (skipped or strict), atomic round trip."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import soundfile as sf

from speechconv.manifest import ManifestEntry, ManifestError, read_manifest, write_manifest

YES = Path(__file__).resolve().parents[1] / "data" / "fixtures" / "yes_1000ms.wav"


@pytest.fixture()
def folder(tmp_path: Path) -> Path:
    (tmp_path / "audio").mkdir()
    shutil.copy(YES, tmp_path / "audio" / "yes.wav")
    (tmp_path / "audio" / "corrupt.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk" * 10)
    return tmp_path


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_good_rows_resolve_relative_to_the_manifest_folder(folder, tmp_path, monkeypatch):
    manifest = write_lines(folder / "m.jsonl", [
        json.dumps({"audio_filepath": "audio/yes.wav", "text": "yes"}),
        json.dumps({"audio_filepath": str(YES), "text": "yes again", "duration": 0.5}),
    ])
    monkeypatch.chdir(tmp_path.parent)  # the working directory must not matter
    entries, problems = read_manifest(manifest)
    assert problems == []
    assert entries[0] == ManifestEntry(folder / "audio" / "yes.wav", "yes", sf.info(str(YES)).duration)
    assert entries[0].duration == pytest.approx(1.0)
    assert entries[1] == ManifestEntry(YES, "yes again", 0.5)  # a given duration is kept


BAD_ROWS = [
    ("{not json", "invalid JSON"),
    (json.dumps(["audio/yes.wav", "yes"]), "expected a JSON object"),
    (json.dumps({"text": "yes"}), "missing key(s) ['audio_filepath']"),
    (json.dumps({"audio_filepath": "audio/yes.wav"}), "missing key(s) ['text']"),
    (json.dumps({"audio_filepath": "audio/yes.wav", "text": "   "}), "text must be a non-empty string"),
    (json.dumps({"audio_filepath": "audio/yes.wav", "text": 3}), "text must be a non-empty string"),
    (json.dumps({"audio_filepath": "audio/yes.wav", "text": "yes", "duration": -1}), "duration must be"),
    (json.dumps({"audio_filepath": "audio/missing.wav", "text": "yes"}), "does not exist"),
    (json.dumps({"audio_filepath": "audio/corrupt.wav", "text": "yes"}), "cannot be read"),
]


def test_bad_rows_are_reported_with_line_numbers_and_skipped(folder):
    good = json.dumps({"audio_filepath": "audio/yes.wav", "text": "yes"})
    lines = [good]
    for row, _ in BAD_ROWS:
        lines += [row, ""]  # blank lines are ignored but still counted
    manifest = write_lines(folder / "m.jsonl", lines + [good])
    entries, problems = read_manifest(manifest)
    assert len(entries) == 2 and all(e.text == "yes" for e in entries)
    assert len(problems) == len(BAD_ROWS)
    for k, (message, (_, cause)) in enumerate(zip(problems, BAD_ROWS, strict=True)):
        assert message.startswith(f"{manifest}:{2 + 2 * k}: "), message
        assert cause in message


@pytest.mark.parametrize(("row", "cause"), BAD_ROWS)
def test_strict_fails_on_the_first_bad_row(folder, row, cause):
    good = json.dumps({"audio_filepath": "audio/yes.wav", "text": "yes"})
    manifest = write_lines(folder / "m.jsonl", [good, good, row, "{also bad"])
    with pytest.raises(ManifestError) as info:
        read_manifest(manifest, strict=True)
    message = str(info.value)
    assert f"{manifest}:3:" in message and cause in message and "strict=False" in message


def test_check_audio_false_skips_the_files(folder):
    manifest = write_lines(folder / "m.jsonl", [json.dumps({"audio_filepath": "nowhere.wav", "text": "x"})])
    entries, problems = read_manifest(manifest, check_audio=False)
    assert problems == [] and entries == [ManifestEntry(folder / "nowhere.wav", "x", None)]


def test_unreadable_manifest(tmp_path):
    with pytest.raises(ManifestError, match="cannot read manifest"):
        read_manifest(tmp_path / "absent.jsonl")


def test_write_then_read_round_trip(folder):
    entries = [
        ManifestEntry(folder / "audio" / "yes.wav", "yes", 1.0),
        ManifestEntry(YES, "jä, ünïcode", None),
    ]
    out = folder / "sub" / "out.jsonl"
    write_manifest(out, entries)
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert rows[0] == {"audio_filepath": str((folder / "audio" / "yes.wav").resolve()), "text": "yes", "duration": 1.0}
    assert "duration" not in rows[1]
    back, problems = read_manifest(out, check_audio=False)
    assert problems == [] and [(e.audio_filepath.resolve(), e.text, e.duration) for e in back] == [
        (Path(e.audio_filepath).resolve(), e.text, e.duration) for e in entries
    ]
    # inside the manifest's folder, paths are written relative (the folder stays movable)
    write_manifest(folder / "here.jsonl", entries[:1])
    assert json.loads((folder / "here.jsonl").read_text())["audio_filepath"] == "audio/yes.wav"
    assert sorted(p.name for p in (folder / "sub").iterdir()) == ["out.jsonl"]  # no temporary left
