"""Shared test fixtures: paths of the bundled real audio, global CMVN statistics files."""

from __future__ import annotations

import itertools
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
CHANNEL_SETS = [list(p) for n in (1, 2, 3) for p in itertools.permutations(["static", "delta", "delta_delta"], n)]
"""Every ordered, non-empty choice of feature channels."""

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


@pytest.fixture(scope="session")
def global_stats_files(tmp_path_factory) -> dict[tuple[str, ...], str]:
    """A global CMVN statistics file for each of :data:`CHANNEL_SETS` (random but
    plausible mean and std, 80 bins), keyed by the channel names."""
    folder = tmp_path_factory.mktemp("stats")
    gen = torch.Generator().manual_seed(5)
    files = {}
    for channels in CHANNEL_SETS:
        path = folder / ("-".join(channels) + ".pt")
        torch.save({"mean": torch.randn(80, len(channels), generator=gen) * 3,
                    "std": torch.rand(80, len(channels), generator=gen) + 0.5, "channels": channels}, path)
        files[tuple(channels)] = str(path)
    return files
