"""Shared test fixtures: paths of the bundled real audio."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data"
FIXTURES = DATA / "fixtures"
AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".aiff"}
SPEECH_CLIPS = sorted(p for p in FIXTURES.iterdir() if p.suffix in AUDIO_SUFFIXES)
"""Every real clip in data/fixtures (speech, silence and noise)."""

# pytest -n 2 runs two workers on two cores: one intra-op thread each.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def fsdd(tmp_path_factory) -> Path:
    """A tiny spoken-digit folder (links to 20 bundled clips) for training runs."""
    from train_helpers import tiny_fsdd

    return tiny_fsdd(tmp_path_factory.mktemp("fsdd"))


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return FIXTURES


@pytest.fixture(scope="session")
def speech_clips() -> list[Path]:
    return SPEECH_CLIPS
