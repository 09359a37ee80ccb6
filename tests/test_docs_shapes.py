"""docs/shapes.md and docs/questions.md show what speechconv prints now.

Every generated block must equal what its snippet in docs/make_docs.py prints when
run against the current code; a stale page fails here with the block's name.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

_spec = importlib.util.spec_from_file_location("make_docs", ROOT / "docs" / "make_docs.py")
make_docs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(make_docs)

"""Snippets that read audio and compute features (speechconv.audio, speechconv.features)."""

PAGE_BLOCKS = [
    (page.name, name, body)
    for page in make_docs.PAGES
    for name, body in make_docs.blocks(page.read_text(encoding="utf-8"))
]


def test_every_snippet_appears_once_and_every_block_has_a_snippet():
    names = [name for _, name, _ in PAGE_BLOCKS]
    assert sorted(names) == sorted(make_docs.SNIPPETS), "blocks and snippets differ; see docs/make_docs.py"


@pytest.mark.parametrize(("page", "name", "body"), PAGE_BLOCKS, ids=[f"{p}:{n}" for p, n, _ in PAGE_BLOCKS])
def test_block_equals_what_the_code_prints_now(page, name, body):
    assert body == make_docs.run_snippet(name), f"{page} block {name!r} is stale: run python docs/make_docs.py"


def test_the_walkthrough_states_the_known_numbers():
    text = (ROOT / "docs" / "shapes.md").read_text(encoding="utf-8")
    blocks = {n: b for p, n, b in PAGE_BLOCKS if p == "shapes.md"}
    # 1 s at 16 kHz with 400-sample windows every 160 samples: 1 + (16000 - 400) // 160 frames.
    frames = 1 + (16000 - 400) // 160
    assert f"features (T, F, C)      ({frames}, 80, 3)" in blocks["pipeline"]
    assert f"(1, {-(-frames // 4)}, 20, 32) lengths [{-(-frames // 4)}]" in blocks["pipeline"]
    assert "all equal" in blocks["check-yes"]
    assert f"{(5 * 5 * 6 + 1) * 50:,}" in text and f"{3 * 32}" in text
