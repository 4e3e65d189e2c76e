"""Progress bars (`qmix_cli.progress`): what a terminal shows, which the CLI tests (never a terminal) do not."""

from __future__ import annotations

import io
import json
import re

from rich.console import Console
from typer.testing import CliRunner

from qmix_cli.cli.app import app
from qmix_cli.progress import reporter
from tests.conftest import TINY_TRAIN


def test_bars_on_a_terminal_come_and_go_one_task_after_another():
    console = Console(file=io.StringIO(), force_terminal=True, width=100)
    with reporter(console) as rep:
        for epoch in range(3):  # an epoch's bar is removed when full, and the next epoch's is a new task
            advance = rep.task(f"epoch {epoch}", total=4)
            overlapping = rep.task("audit", total=2)  # another bar while one runs
            for _ in range(4):
                advance(1)
            overlapping(2)
        assert rep._progress.tasks == []  # every finished bar was taken away
        rep.log("done")
    assert "done" in console.file.getvalue()


def test_training_on_a_terminal_runs_its_epochs(noisy_digits, tmp_path):
    # FORCE_COLOR makes rich take the CLI's stderr for a terminal (TERM: not a dumb one, where it draws no live
    # display, as Emacs shells and some CI runners say): the bars of two epochs, one after the other.
    options = [f"--{key.replace('_', '-')}={value}" for key, value in TINY_TRAIN.items() if key != "hflip"]
    args = ["train", str(noisy_digits), "--out", str(tmp_path / "run"), "--method", "ce", "--epochs", "2", *options]
    result = CliRunner().invoke(app, [*args, "--no-hflip"], env={"FORCE_COLOR": "1", "TERM": "xterm"})
    assert result.exit_code == 0, result.output
    err = result.stderr
    assert "\x1b[2K" in err  # rich's erase-line: the terminal's live display, not the plain lines of a pipe
    for epoch in (1, 2):  # each epoch's bar was drawn (its name, then the bar itself)
        assert re.search(rf"epoch {epoch}/2 net 0 warm-up\S*\s+\S*━", err), err[-2000:]
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]


def test_a_note_quoting_a_path_with_control_characters_stays_one_plain_line():
    out = io.StringIO()
    with reporter(Console(file=out, width=200), quiet=False) as rep:
        rep.log("note: wrote images to new\nline\x1b[2J")  # a folder named with a line break and a screen clear
    assert out.getvalue() == "note: wrote images to new\\nline\\x1b[2J\n"
