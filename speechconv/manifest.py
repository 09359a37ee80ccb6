"""JSON-lines manifests: one utterance per line, ``{"audio_filepath", "text", "duration", "speaker"}``.

``audio_filepath`` may be absolute or relative; relative paths resolve against the
manifest's own folder (so a folder of audio plus its manifest can be moved as one).
``duration`` (seconds) is optional and filled from the audio header when audio is
checked.  ``speaker`` (a name) is optional: ``mode=eval`` then reports WER per
speaker.  Bad rows (invalid JSON, missing or mistyped keys, missing or unreadable
audio, empty text) are reported with their line numbers and skipped; ``strict=True``
raises :class:`ManifestError` on the first one instead.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import soundfile as sf

from speechconv.atomic import atomic_write_text

REQUIRED_KEYS = ("audio_filepath", "text")


class ManifestError(ValueError):
    """A manifest row that cannot be used (raised with ``strict=True``)."""


@dataclass(frozen=True)
class ManifestEntry:
    """One utterance: resolved audio path, raw transcript, duration in seconds (or None),
    speaker name (or None)."""

    audio_filepath: Path
    text: str
    duration: float | None = None
    speaker: str | None = None


def _check_row(row: object, folder: Path, check_audio: bool) -> ManifestEntry:
    """Entry of one decoded JSON row; raises ``ValueError`` with the cause."""
    if not isinstance(row, dict):
        raise ValueError(f"expected a JSON object, got {type(row).__name__}")
    missing = [k for k in REQUIRED_KEYS if k not in row]
    if missing:
        raise ValueError(f"missing key(s) {missing}; every row needs {list(REQUIRED_KEYS)}")
    audio, text, duration, speaker = row["audio_filepath"], row["text"], row.get("duration"), row.get("speaker")
    if not isinstance(audio, str) or not audio:
        raise ValueError(f"audio_filepath must be a non-empty string, got {audio!r}")
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"text must be a non-empty string, got {text!r}")
    if duration is not None and (isinstance(duration, bool) or not isinstance(duration, (int, float)) or duration < 0):
        raise ValueError(f"duration must be a number of seconds >= 0 or absent, got {duration!r}")
    if speaker is not None and (not isinstance(speaker, str) or not speaker.strip()):
        raise ValueError(f"speaker must be a non-empty string or absent, got {speaker!r}")
    path = Path(audio) if os.path.isabs(audio) else folder / audio
    if check_audio:
        if not path.is_file():
            raise ValueError(f"audio file {path} does not exist")
        try:
            info = sf.info(str(path))
        except Exception as exc:  # soundfile raises LibsndfileError, RuntimeError or TypeError
            raise ValueError(f"audio file {path} cannot be read: {exc}") from exc
        if info.frames <= 0:
            raise ValueError(f"audio file {path} holds no samples")
        if duration is None:
            duration = info.frames / info.samplerate
    return ManifestEntry(path, text, None if duration is None else float(duration), speaker)


def read_manifest(
    path: str | os.PathLike, strict: bool = False, check_audio: bool = True
) -> tuple[list[ManifestEntry], list[str]]:
    """Read a JSON-lines manifest.

    Args:
        path: the manifest file.
        strict: raise :class:`ManifestError` on the first bad row instead of skipping it.
        check_audio: check that each audio file exists and its header reads (and take
            a missing ``duration`` from it).  Blank lines are ignored.

    Returns:
        ``(entries, problems)``: the good rows in file order, and one message per
        skipped row, ``"<manifest>:<line>: <cause>"``.

    Raises:
        ManifestError: the manifest cannot be opened, or (``strict``) a row is bad.
    """
    manifest = Path(path)
    try:
        lines = manifest.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"cannot read manifest {manifest}: {exc}; pass a UTF-8 JSON-lines file") from exc
    folder = manifest.resolve().parent
    entries: list[ManifestEntry] = []
    problems: list[str] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"invalid JSON ({exc.msg} at column {exc.colno})") from exc
            entries.append(_check_row(row, folder, check_audio))
        except ValueError as exc:
            message = f"{manifest}:{number}: {exc}"
            if strict:
                raise ManifestError(message + "; fix or remove the row, or read with strict=False (train.py: "
                                    "data.strict=false) to skip it") from exc
            problems.append(message)
    return entries, problems


def write_manifest(path: str | os.PathLike, entries: Iterable[ManifestEntry]) -> None:
    """Write ``entries`` as JSON lines, atomically.

    Audio paths inside the manifest's folder are written relative to it (so the folder
    stays movable), others absolute.  ``duration`` and ``speaker`` are written when known.
    """
    manifest = Path(path)
    folder = manifest.resolve().parent
    lines = []
    for entry in entries:
        audio = Path(entry.audio_filepath).resolve()
        try:
            audio_text = audio.relative_to(folder).as_posix()
        except ValueError:
            audio_text = str(audio)
        row: dict[str, object] = {"audio_filepath": audio_text, "text": entry.text}
        if entry.duration is not None:
            row["duration"] = entry.duration
        if entry.speaker is not None:
            row["speaker"] = entry.speaker
        lines.append(json.dumps(row, ensure_ascii=False))
    atomic_write_text(manifest, "".join(line + "\n" for line in lines))
