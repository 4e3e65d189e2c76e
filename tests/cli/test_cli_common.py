"""What the commands share: the engine imported under a paused collector, help that prints what it says."""

from __future__ import annotations

import errno
import json
import re
import shlex
import subprocess
import sys
import warnings

import pytest
import torch
import typer

from qmix_cli.cli.app import _Qmix, app
from qmix_cli.cli.common import guarded, out_of_resources
from qmix_cli.errors import Terminated
from tests.cli.helpers import assert_one_line_error, stderr_of

PROBE = """
import gc, json, sys
from qmix_cli.cli.common import load_engine
if sys.argv[1] == "off":
    gc.disable()
load_engine()
frozen = gc.get_freeze_count()
made_since = [[i] for i in range(1000)]
load_engine()  # loaded already: nothing more is frozen
print(json.dumps({
    "enabled": gc.isenabled(),
    "frozen": frozen,
    "again": gc.get_freeze_count() - frozen,
    "loaded": all(m in sys.modules for m in ("torch", "timm", "sklearn", "qmix_cli.reporting.score")),
}))
"""


def _after_load_engine(collector: str) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE, collector], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def test_the_engine_is_imported_frozen_and_the_collector_left_as_it_was():
    on = _after_load_engine("on")
    assert on["loaded"] and on["enabled"]
    assert on["frozen"] > 100_000  # torch, timm and scikit-learn's objects: never walked by the collector again
    assert on["again"] == 0
    off = _after_load_engine("off")
    assert off["loaded"] and not off["enabled"]  # a process that turned it off keeps it off


@pytest.mark.parametrize("command", ["corrupt", "train", "audit", "evaluate", "show", "demo"])
def test_help_prints_every_default_its_options_name(runner, command):
    # Rich reads "[auto]" in help text as a markup tag and prints nothing for it, so an unescaped default vanished
    # from `qmix train --help` ("auto, cpu, cuda or cuda:N ."). Wide enough that no help text wraps.
    result = runner.invoke(app, [command, "--help"], env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    params = typer.main.get_command(app).commands[command].params
    defaults = [d for p in params for d in re.findall(r"\\?\[([^\]]+)\]", getattr(p, "help", None) or "")]
    for default in defaults:
        assert f"[{default}]" in result.output, default
    # Options that default to None (a preset or the configuration fills them) state their default as text.
    described = [p.show_default for p in params if isinstance(p.show_default, str)]
    assert described or command in {"evaluate", "show", "demo"}
    for text in described:
        assert f"[default: ({text})]" in result.output, text
    assert not re.search(r" \.\s", result.output)  # the trace a dropped "[...]" before a full stop leaves


NO_SPACE_LINE = "free some space or write elsewhere"
CPU_ALLOCATOR_ERROR = (
    "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you tried to "
    "allocate 3221225472 bytes. Error code 12 (Cannot allocate memory)"
)
MEMORY_HINT = ": lower --batch-size, or train with a smaller --img-size or --model"


@pytest.mark.parametrize(
    ("error", "line"),
    [
        (
            OSError(errno.ENOSPC, "No space left on device", "out/report.csv"),
            f"no space left on the device writing out/report.csv: {NO_SPACE_LINE}",
        ),
        (  # a copy names its source first and the file it could not write second
            OSError(errno.EDQUOT, "Disk quota exceeded", "a.png", None, "out/1.png"),
            "disk quota exceeded writing out/1.png: free some of your space or write elsewhere",
        ),
        (OSError(errno.ENOSPC, "No space left on device"), f"no space left on the device: {NO_SPACE_LINE}"),
        (
            torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of"),
            f"out of GPU memory (an allocation of 2.00 GiB){MEMORY_HINT}",
        ),
        (
            RuntimeError(CPU_ALLOCATOR_ERROR),
            f"out of memory (an allocation of 3.0 GiB){MEMORY_HINT}",
        ),
        (MemoryError(), f"out of memory{MEMORY_HINT}"),
        (
            RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"),
            f"out of GPU memory{MEMORY_HINT}",
        ),
        (
            RuntimeError("DataLoader worker (pid 4242) is killed by signal: Killed. "),
            "a data-loading worker was killed (most likely out of memory): lower --workers or --batch-size",
        ),
    ],
    ids=[
        "no-space",
        "quota-on-copy",
        "no-space-unnamed",
        "gpu-memory",
        "host-allocator",
        "memory-error",
        "cublas",
        "worker-killed",
    ],
)
def test_a_full_disk_or_memory_anywhere_is_one_line_saying_what_to_do(runner, error, line):
    demo = typer.Typer()

    @demo.command()
    @guarded
    def work(ctx: typer.Context) -> None:
        raise error

    result = runner.invoke(demo, [])
    assert_one_line_error(result, f"error: {line}")
    assert "unexpected" not in stderr_of(result)


def test_other_runtime_errors_stay_unexpected(runner):
    demo = typer.Typer()

    @demo.command()
    @guarded
    def work(ctx: typer.Context) -> None:
        raise RuntimeError("a bug")

    assert_one_line_error(runner.invoke(demo, []), "unexpected RuntimeError: a bug")


@pytest.mark.parametrize(("interrupt", "status"), [(KeyboardInterrupt, 130), (Terminated, 143)])
def test_a_stopped_command_ends_with_the_status_a_shell_gives_its_signal(runner, interrupt, status):
    """Ctrl-C 130, SIGTERM 143 (128 + the signal): a scheduler requeues a job its time limit stopped, and not one a
    person cancelled."""
    demo = typer.Typer()

    @demo.command()
    @guarded
    def work(ctx: typer.Context) -> None:
        raise interrupt

    result = runner.invoke(demo, [])
    assert result.exit_code == status
    assert stderr_of(result).strip() == "interrupted"


@pytest.mark.parametrize(("interrupt", "status"), [(KeyboardInterrupt, 130), (Terminated, 143)])
def test_a_command_stopped_while_its_options_are_read_ends_with_its_signals_status(runner, interrupt, status):
    """Before a command runs (an option's callback, a slow file system), typer said 130 to SIGTERM too."""
    demo = typer.Typer(cls=_Qmix)

    def stop(value: str) -> str:
        raise interrupt

    @demo.command()
    def work(ctx: typer.Context, name: str = typer.Option("x", callback=stop)) -> None:
        pass

    @demo.command()
    def other() -> None:  # two commands: a group, as qmix is
        pass

    result = runner.invoke(demo, ["work"])
    assert result.exit_code == status
    assert stderr_of(result).strip() == "interrupted"


def test_an_aborted_command_is_one_line_and_status_1(runner):
    demo = typer.Typer(cls=_Qmix)

    @demo.command()
    def work() -> None:
        raise typer.Abort

    @demo.command()
    def other() -> None:
        pass

    result = runner.invoke(demo, ["work"])
    assert result.exit_code == 1 and stderr_of(result).strip() == "aborted"
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_out_of_memory_without_the_nets_loaded_does_not_point_at_training_options(monkeypatch):
    monkeypatch.delitem(sys.modules, "torch")  # apply, show and evaluate never load it
    assert out_of_resources(MemoryError()) == "out of memory: close other programs or use a machine with more memory"
    assert out_of_resources(ValueError("x")) is None


def test_every_command_keeps_pillows_warnings_about_judged_images_quiet(runner, tmp_path):
    with warnings.catch_warnings():  # the filters the command sets are the process's: given back after the test
        result = runner.invoke(app, ["evaluate", str(tmp_path / "missing.parquet"), "--truth", str(tmp_path)])
        modules = [f[3].pattern for f in warnings.filters if f[0] == "ignore" and f[3] is not None]
    assert result.exit_code == 1
    assert r"PIL\.TiffImagePlugin" in modules  # what each filter keeps quiet: tests/data/test_images.py


def test_a_pixel_limit_in_the_environment_that_is_no_number_is_one_line(runner, tmp_path):
    result = runner.invoke(app, ["show", str(tmp_path / "r.parquet")], env={"QMIX_MAX_IMAGE_PIXELS": "lots"})
    assert_one_line_error(result, "QMIX_MAX_IMAGE_PIXELS='lots'", "'none' for no limit")
    helped = runner.invoke(app, ["corrupt", "--help"], env={"QMIX_MAX_IMAGE_PIXELS": "lots"})
    assert helped.exit_code == 0 and "Usage" in helped.stdout  # help is no command: it reads no image


@pytest.mark.parametrize("flag", ["-q", "--verbose"])
def test_a_global_option_after_the_command_says_where_it_goes(runner, tmp_path, flag):
    args = ["evaluate", str(tmp_path / "r.parquet"), "--truth", str(tmp_path), flag]
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert f"{flag} is an option of qmix itself: qmix {flag} evaluate ..." in stderr_of(result).splitlines()[0]
    other = runner.invoke(app, ["evaluate", str(tmp_path / "r.parquet"), "--nope"])
    assert other.exit_code == 2 and "option of qmix itself" not in other.output  # any other option: as before


@pytest.mark.parametrize(
    ("args", "message", "usage"),
    [
        (["corrupt", "digits"], "error: Missing option '--out' / '-o'.", "Usage: qmix corrupt [OPTIONS]"),
        (["corrupt", "digits", "-o", "x", "--label-rate", "lots"], "error: Invalid value for '--label-rate'", "Usage"),
        (["nosuch"], "error: No such command 'nosuch'.", "Usage: qmix [OPTIONS] COMMAND [ARGS]..."),
        (["--nope"], "error: No such option: --nope", "Usage: qmix [OPTIONS]"),
    ],
)
def test_a_mistyped_command_line_is_one_error_line_then_the_usage(runner, tmp_path, args, message, usage):
    """As every other error is said, whatever the terminal's width (typer's own box wraps it over lines); the
    status stays 2, and nothing is written."""
    result = runner.invoke(app, args, prog_name="qmix", env={"COLUMNS": "40"})
    assert result.exit_code == 2
    lines = stderr_of(result).splitlines()
    assert len(lines) == 2 and lines[0].startswith(message), lines
    assert lines[1].startswith(usage) and lines[1].endswith("-h for help)"), lines
    assert not any(tmp_path.iterdir())


def _qmix_in_bash(args: str, *, then: str, cwd) -> subprocess.CompletedProcess:
    """``qmix ARGS`` run by bash, its stdout going where ``then`` says, its status printed last on stderr."""
    script = f'{shlex.quote(sys.executable)} -m qmix_cli {args} {then}; echo "rc=${{PIPESTATUS[0]}}" >&2'
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=120, cwd=cwd)


@pytest.mark.parametrize("args", ["--help", "audit --help", "--version"])
def test_help_and_version_for_a_reader_that_stops_early_end_with_success(args, tmp_path):
    """``qmix --help | head -1`` under ``set -o pipefail``: typer's rich console (help) and click (the version)
    ended with status 1 when the reader left; a reader that closes its end at once makes every write fail."""
    proc = _qmix_in_bash(args, then="| (exec 0<&-; sleep 1)", cwd=tmp_path)
    assert proc.stderr.splitlines() == ["rc=0"], proc.stderr


def test_an_error_with_stdout_thrown_away_still_ends_with_status_1(tmp_path):
    # Output sent to the null device from the start is the caller's choice, not a reader that left: the error stands.
    proc = _qmix_in_bash(f"evaluate {tmp_path / 'nope.parquet'} --truth digits", then="> /dev/null", cwd=tmp_path)
    assert proc.stderr.splitlines()[-1] == "rc=1" and "report not found" in proc.stderr, proc.stderr


def test_user_text_in_an_error_can_neither_split_its_line_nor_act_on_the_terminal(runner, tmp_path):
    # A path with a line break, a label with a terminal's colour codes: written as escapes, on the error's one line.
    report = str(tmp_path / "a\nb\x1b[31mred.parquet")
    result = runner.invoke(app, ["show", report])
    line = assert_one_line_error(result, "report not found")
    assert line.endswith("a\\nb\\x1b[31mred.parquet") and "\x1b[31m" not in stderr_of(result)
