"""``train.log``: what a run printed, and the error or traceback that ended it, kept in its
run folder (speechconv/training/runlog.py)."""

from __future__ import annotations

import re

import pytest
from train_helpers import in_process_config as config

from speechconv.training import loop, main
from speechconv.training.runlog import run_log, say

STAMP = re.compile(r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\] ")


def logged(folder) -> list[str]:
    """The lines of ``folder/train.log`` without their timestamps (each must have one)."""
    lines = (folder / "train.log").read_text().splitlines()
    assert all(STAMP.match(line) for line in lines), lines
    return [STAMP.sub("", line) for line in lines]


def test_the_log_holds_every_printed_line_in_order(fsdd, tmp_path, capsys):
    assert main(config(fsdd), tmp_path) == 0
    printed = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert printed[0].startswith("model:") and printed[-1].startswith("plots:")
    assert logged(tmp_path) == printed


def test_a_resumed_run_appends_and_a_user_error_ends_the_log(fsdd, tmp_path, capsys):
    assert main(config(fsdd), tmp_path) == 0
    first = logged(tmp_path)
    assert main(config(fsdd, "trainer.resume=true", "model.hidden=24"), tmp_path) == 2
    err = capsys.readouterr().err
    lines = logged(tmp_path)
    assert lines[: len(first)] == first
    assert lines[-1].startswith(f"error: checkpoint {tmp_path / 'last.pt'} does not fit this run's model")
    assert err.count("error: checkpoint") == 1


def test_a_crash_leaves_its_traceback_in_the_log_and_prints_it_once(fsdd, tmp_path, monkeypatch, capsys):
    def crash(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise RuntimeError("crashed while validating")

    monkeypatch.setattr(loop, "evaluate", crash)
    with pytest.raises(RuntimeError, match="crashed while validating"):
        main(config(fsdd), tmp_path)
    lines = logged(tmp_path)
    out, err = capsys.readouterr()
    printed = [line for line in out.splitlines() if line.strip()]
    start = lines.index("Traceback (most recent call last):")
    assert lines[:start] == printed and printed[0].startswith("model:")  # what the run printed, then the traceback
    assert lines[-1] == "RuntimeError: crashed while validating"
    assert "Traceback" not in err  # left to Python (here pytest) to print


def test_an_unwritable_log_warns_once_and_the_messages_still_print(tmp_path, capsys):
    missing = tmp_path / "no such folder"
    with run_log(missing):
        say("first")
        say("second")
        say("an error", err=True)
    say("outside any run")
    out, err = capsys.readouterr()
    assert out.splitlines() == ["first", "second", "outside any run"]
    assert err.splitlines() == [f"warning: cannot append to {missing / 'train.log'} (No such file or directory); "
                                "messages go to the terminal only", "an error"]
    assert not missing.exists()
