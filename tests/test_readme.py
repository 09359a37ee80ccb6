"""The README's promises: its Python blocks run as written, and every command line it
shows names a module, script, mode, preset and config key that exist."""

from __future__ import annotations

import re
import runpy
import shlex
from pathlib import Path

import pytest

from speechconv.config import MODES, validate
from train import CONFIG_DIR, compose

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```(\w+)\n(.*?)```", README, flags=re.S)
PYTHON = [code for lang, code in BLOCKS if lang == "python"]
SHELL = [line.split("#")[0].strip() for lang, code in BLOCKS if lang == "sh" for line in code.splitlines()]
SHELL = [line for line in SHELL if line]


def test_the_readme_stays_short():
    assert len(README.encode()) <= 15_000, f"README.md is {len(README.encode())} bytes; the limit is 15 KB"


@pytest.mark.parametrize("index", range(len(PYTHON)))
def test_python_block_runs(index, tmp_path, monkeypatch):
    """Each block runs from the repository root (its paths are the bundled files), writing
    into a scratch folder and nothing into the repository; blocks build on nothing but
    themselves."""
    code = PYTHON[index]
    script = tmp_path / "block.py"
    script.write_text(re.sub(r'"([\w.]+\.(?:png|onnx|pt2|pte))"', lambda m: repr(str(tmp_path / m.group(1))), code))
    monkeypatch.chdir(ROOT)
    before = set(ROOT.iterdir())
    runpy.run_path(str(script), run_name="__main__")
    assert set(ROOT.iterdir()) == before, f"the block wrote {sorted(set(ROOT.iterdir()) - before)} into the repository"


def test_every_command_line_names_what_exists():
    assert SHELL, "the README shows no command lines"
    for line in SHELL:
        words = shlex.split(line)
        if words[0] in ("make",):
            assert words[1] in ("run", "test", "bench", "lint"), line
            continue
        if words[0] == "torchrun":
            words = words[words.index("train.py") - 1:]
        if words[1] == "-m":
            module = words[2].replace(".", "/")
            assert (ROOT / f"{module}.py").is_file() or (ROOT / module / "__main__.py").is_file(), line
            continue
        assert (ROOT / words[1]).is_file(), f"{words[1]} does not exist: {line}"
        if words[1] != "train.py":
            continue
        overrides = [w for w in words[2:] if "=" in w and not w.startswith(("hydra.", "-"))]
        mode = dict(w.split("=", 1) for w in overrides).get("mode", "train")
        assert mode in MODES, line
        for w in overrides:
            key, value = w.split("=", 1)
            if (CONFIG_DIR / key).is_dir():
                assert (CONFIG_DIR / key / f"{value}.yaml").is_file(), f"no preset {w}: {line}"
        # The overrides compose and validate (paths the README leaves to the reader aside).
        cfg = compose([w for w in overrides if not w.startswith(("checkpoint=", "audio=", "data.test_manifest="))])
        validate(cfg, check_mode=False)


def test_readme_points_at_files_that_exist():
    for path in re.findall(r"\]\(([^)#]+)\)", README):
        if not path.startswith("http"):
            assert (ROOT / path).exists(), path
    for path in re.findall(r"`((?:data|docs|configs|bench|examples|tests)/[\w./-]+)`", README):
        assert (ROOT / path).exists() or any(ROOT.glob(path)), path
