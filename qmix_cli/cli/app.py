"""The ``qmix`` Typer application."""

from __future__ import annotations

import os
import signal
import sys
from typing import Annotated, Any

import typer
from rich.console import Console
from typer.core import TyperGroup

from qmix_cli import __version__
from qmix_cli.allocator import keep_freed_memory
from qmix_cli.cli import apply, audit, corrupt, demo, evaluate, show, train
from qmix_cli.cli.common import (
    LastingStderr,
    State,
    quiet_pillow_warnings,
    reader_may_leave,
    stop_interrupted,
    usage_error,
)
from qmix_cli.errors import Terminated

# The options of qmix itself, which go before the command.
GLOBAL_OPTIONS = ("-q", "--quiet", "-v", "--verbose")


class _Qmix(TyperGroup):
    def main(self, *args: Any, standalone_mode: bool = True, **kwargs: Any) -> Any:
        """Typer's run, but a mistyped command line is said as every other error is, in one line (typer draws a
        box, wrapped to the terminal, which a log then holds broken over several lines); the usage follows it, and
        the exit status stays 2. Run without ``standalone_mode`` (as typer's own callers do), errors reach the
        caller untouched."""
        if not standalone_mode:
            return super().main(*args, standalone_mode=False, **kwargs)
        try:
            code = super().main(*args, standalone_mode=False, **kwargs)  # an `Exit`'s status, or a command's None
        except typer.Abort:  # an interrupted prompt; qmix asks none, but a callback may
            Console(stderr=True).print("[bold red]aborted[/]")
            sys.exit(1)
        except Exception as error:
            # Click's UsageError and its kin, by what they carry: typer vendors its own copy of click.
            status, message = getattr(error, "exit_code", None), getattr(error, "format_message", None)
            if not isinstance(status, int) or not callable(message):
                raise
            if type(error).__name__ != "NoArgsIsHelpError":  # `qmix` alone: the help is printed already
                usage_error(message(), getattr(error, "ctx", None))
            sys.exit(status)
        sys.exit(code if isinstance(code, int) else 0)

    def invoke(self, ctx: typer.Context) -> object:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt as stop:  # while a command's options are read: typer would say 130 to a SIGTERM too
            stop_interrupted(stop)
        except Exception as error:  # `qmix audit ... -q`: say where it goes, not only "no such option"
            # Click's NoSuchOption, by what it carries: typer vendors its own copy of click, which names it privately.
            name = getattr(error, "option_name", None)
            if name in GLOBAL_OPTIONS and isinstance(getattr(error, "message", None), str) and ctx.invoked_subcommand:
                error.message += f" ({name} is an option of qmix itself: qmix {name} {ctx.invoked_subcommand} ...)"
            raise


app = typer.Typer(
    cls=_Qmix,
    name="qmix",
    help="Find wrong labels and unreadable images in image datasets with QMix.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    rich_markup_mode="rich",
)


def _version(value: bool) -> None:
    if value:
        with reader_may_leave():
            typer.echo(f"qmix {__version__}")
        raise typer.Exit()


@app.callback()
def main_callback(
    ctx: typer.Context,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Print nothing but errors and requested output.")
    ] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show tracebacks with errors.")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")
    ] = False,
) -> None:
    ctx.obj = State(quiet=quiet, verbose=verbose)
    quiet_pillow_warnings()


for module in (corrupt, train, audit, apply, evaluate, show, demo):
    module.register(app)


def _interrupt_on_sigterm(signum: int, frame: object) -> None:
    # `kill PID` (a scheduler's time limit, `docker stop`) then unwinds like Ctrl-C: temporary files are removed
    # and the run stops after its last complete checkpoint, instead of dying with half-written files around.
    raise Terminated


def _stdout_is_null() -> bool:
    try:
        out, null = os.fstat(sys.__stdout__.fileno()), os.stat(os.devnull)
    except (AttributeError, OSError, ValueError):  # no stdout at all, or no null device to compare with
        return False
    return (out.st_dev, out.st_ino) == (null.st_dev, null.st_ino)


def main() -> None:
    signal.signal(signal.SIGTERM, _interrupt_on_sigterm)
    sys.stderr = LastingStderr(sys.stderr)
    keep_freed_memory()
    null_from_the_start = _stdout_is_null()
    try:
        app()
    except SystemExit as exit_:
        # Help and usage are printed by typer's own rich console, whose handler for a reader that left (`qmix --help
        # | head`) points stdout at the null device and exits with 1. The reader chose to stop reading; `head` and
        # `set -o pipefail` scripts expect 0 of that, as of our own output (`StdoutConsole`).
        if exit_.code == 1 and not null_from_the_start and _stdout_is_null():
            raise SystemExit(0) from None
        raise
