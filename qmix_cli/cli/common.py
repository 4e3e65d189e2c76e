"""What every subcommand shares: global state, consoles, and turning errors into one line."""

from __future__ import annotations

import contextlib
import errno
import functools
import gc
import os
import re
import sys
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from qmix_cli.errors import QmixError, interrupted_status, one_line
from qmix_cli.io import NO_SPACE, format_bytes, is_stream, send_to_null
from qmix_cli.progress import CommandLineConsole

F = TypeVar("F", bound=Callable[..., Any])

# How `--help` shows where decoded images and image checks go by default (`qmix_cli.data.builtin.cache_root`).
CACHE_DEFAULT = "$QMIX_CACHE_DIR, else $XDG_CACHE_HOME/qmix, else ~/.cache/qmix"


@dataclass
class State:
    quiet: bool = False
    verbose: bool = False

    @property
    def err(self) -> Console:
        # Human-facing output goes to stderr so that stdout stays clean for pipes (`--out -`).
        console = CommandLineConsole(stderr=True, quiet=self.quiet)
        # Into a file or a pipe each message stays one line, so that a log can be grepped for it; a terminal wraps
        # them at its width.
        console.soft_wrap = not console.is_terminal
        return console


class LastingStderr:
    """``sys.stderr`` that outlives its reader: once the pipe it writes to is closed (``qmix train ... 2>&1 | head``,
    a log collector that went away), later writes go to the null device instead of raising `BrokenPipeError` in
    the middle of an epoch, so that a long run is not lost for its progress lines."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            send_to_null(self._stream)
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            send_to_null(self._stream)

    def __getattr__(self, name: str) -> Any:  # fileno, isatty, encoding, ...: the stream's own
        return getattr(self._stream, name)


def folder_out(out: str, *, what: str) -> None:
    """The ``--out`` of a command that writes a folder (``what``): ``-``, stdout to `qmix audit`, cannot name one,
    and taking it for a folder called ``-`` would leave a stray folder where a script expected a stream."""
    if is_stream(out):
        raise QmixError(f"--out -: {what} is a folder, not a stream to stdout; name the folder (./- for one called -)")


class StdoutConsole(Console):
    """A console for a command's output on stdout. Where its reader has gone, rich's own handler ends the process
    with status 1; this one raises `BrokenPipeError` for `reader_may_leave` to end the printing quietly."""

    def on_broken_pipe(self) -> None:
        self.quiet = True
        raise BrokenPipeError(errno.EPIPE, "stdout's reader went away")


@contextlib.contextmanager
def reader_may_leave() -> Iterator[None]:
    """Print a command's output to stdout in the block (`typer.echo`, a `StdoutConsole`); a reader that stops early
    (``qmix evaluate | head``) ends it quietly, as the command's success, the way `head` expects of the commands it
    reads (and ``set -o pipefail`` scripts of them)."""
    try:
        yield
        sys.stdout.flush()
    except BrokenPipeError:
        send_to_null(sys.stdout)


def quiet_pillow_warnings() -> None:
    """Keep Pillow's warnings off the terminal where the image check already judges the images: those of its
    TIFF/EXIF parser (damaged EXIF metadata in a photo; the pixels are what is judged) and its pixel-limit warning
    (the check names such images as unreadable; a thumbnail or a decode of an image that changed since it was
    checked then goes on silently). Set for the process, once, from the main thread: filters changed from the
    decoding threads would race."""
    warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.TiffImagePlugin")  # EXIF is parsed there
    warnings.filterwarnings("ignore", message=r"Image size \(\d+ pixels\) exceeds limit", category=RuntimeWarning)


def apply_pixel_limit(environ: Mapping[str, str]) -> None:
    """Set Pillow's pixel limit from ``$QMIX_MAX_IMAGE_PIXELS`` when it is set: a whole number of pixels, or
    ``none`` for no limit (Pillow's default, about 89.5 million, refuses a 100-megapixel photo or a slide scan).

    Raises
    ------
    QmixError
        When the variable is neither.
    """
    from PIL import Image

    from qmix_cli.data.images import PIXEL_LIMIT_VARIABLE

    value = environ.get(PIXEL_LIMIT_VARIABLE, "").strip()
    if not value:
        return
    if value.lower() == "none":
        Image.MAX_IMAGE_PIXELS = None
        return
    if not value.isdigit() or int(value) < 1:
        raise QmixError(f"{PIXEL_LIMIT_VARIABLE}={value!r}: give a whole number of pixels, or 'none' for no limit")
    Image.MAX_IMAGE_PIXELS = int(value)


def state(ctx: typer.Context | None) -> State:
    """The global options, stored on the root context by the app's callback."""
    obj = ctx.find_root().obj if ctx is not None else None
    return obj if isinstance(obj, State) else State()


def bold(text: object) -> str:
    """``text`` (a path, a name) in bold rich markup, escaped so that any "[...]" in it prints as written and on one
    line (`one_line`: a line break or a terminal's escape sequence in a path stays text)."""
    return f"[bold]{escape(one_line(str(text)))}[/]"


def load_engine() -> None:
    """Import the training and audit engine (torch, timm, scikit-learn) with Python's cyclic garbage collector
    paused, then freeze what the imports made.

    The imports leave a few hundred thousand long-lived objects; every time they grow by a quarter the collector
    walks all of them again, and it went on walking them during the command: 0.8 of a `qmix audit`'s 3.9 s of
    imports on a 2-core CPU (docs/decisions.md, "Twenty-first round"). Frozen, they are never walked again; the
    collector runs as usual for everything the command makes. For the `qmix` commands that train or audit only:
    a library user's process is theirs to tune.
    """
    if {"timm", "qmix_cli.engine.trainer", "qmix_cli.reporting.score"} <= sys.modules.keys():
        return  # loaded (and frozen) already: a second freeze would also keep whatever the process made since
    enabled = gc.isenabled()
    gc.disable()
    try:
        import timm  # noqa: F401  (imported by the first net built otherwise)

        import qmix_cli.engine.trainer
        import qmix_cli.reporting.score  # noqa: F401
    finally:
        gc.freeze()
        if enabled:
            gc.enable()


def fail(message: str) -> None:
    # The message quotes user text (labels, paths) that may contain "[...]": escaped, it prints as written
    # instead of being read, or rejected, as rich markup.
    Console(stderr=True).print(f"[bold red]error:[/] {escape(one_line(message))}", highlight=False, soft_wrap=True)
    raise typer.Exit(1)


def stop_interrupted(interrupt: KeyboardInterrupt) -> NoReturn:
    """End a command that Ctrl-C or SIGTERM stopped: one line, and the status a shell gives the signal."""
    Console(stderr=True).print("[bold red]interrupted[/]")
    raise typer.Exit(interrupted_status(interrupt)) from None


def usage_error(message: str, ctx: typer.Context | None) -> None:
    """Print a mistyped command line's ``message`` as `fail` prints an error, in one line, then the usage of the
    command ``ctx`` is of (None: unknown) and how to ask for its help."""
    console = Console(stderr=True)
    console.print(f"[bold red]error:[/] {escape(one_line(message))}", highlight=False, soft_wrap=True)
    if ctx is not None:
        usage = ctx.get_usage().strip()
        helped = f" ({ctx.command_path} {ctx.help_option_names[0]} for help)" if ctx.help_option_names else ""
        console.print(escape(usage + helped), highlight=False, soft_wrap=True)


def out_of_resources(error: BaseException) -> str | None:
    """The one line for a failure whose fix is the user's wherever it happens, a full disk or an allocation the
    memory could not hold (torch's CUDA `OutOfMemoryError`, its CPU allocator's ``RuntimeError``, Python's
    `MemoryError`); None for any other error."""
    if isinstance(error, OSError) and error.errno in NO_SPACE:
        target = error.filename2 or error.filename  # a copy names its source first, and the full disk second
        where = f" writing {target}" if target else ""
        if error.errno == errno.EDQUOT:
            return f"disk quota exceeded{where}: free some of your space or write elsewhere"
        return f"no space left on the device{where}: free some space or write elsewhere"
    torch = sys.modules.get("torch")  # loaded by the commands that run the nets, and only by them
    text = str(error) if isinstance(error, RuntimeError) else ""
    if "DataLoader worker" in text and "killed by signal" in text:  # the kernel's OOM killer, most likely
        return "a data-loading worker was killed (most likely out of memory): lower --workers or --batch-size"
    # cuBLAS and cuDNN report a failed allocation of their own workspace in their own words.
    on_gpu = torch is not None and (isinstance(error, torch.OutOfMemoryError) or "_STATUS_ALLOC_FAILED" in text)
    on_host = isinstance(error, MemoryError) or "can't allocate memory" in text
    if not (on_gpu or on_host):
        return None
    asked = re.search(r"[Tt]ried to allocate ([\d.]+ \w+|\d+ bytes)", str(error))
    size = ""
    if asked:
        amount = asked.group(1)
        size = f" (an allocation of {format_bytes(int(amount.split()[0])) if amount.endswith('bytes') else amount})"
    if torch is None:  # a table, not a net: nothing of the command's own to lower
        return f"out of memory{size}: close other programs or use a machine with more memory"
    return (
        f"out of {'GPU ' if on_gpu else ''}memory{size}: lower --batch-size, or train with a smaller --img-size "
        "or --model"
    )


def guarded(fn: F) -> F:
    """Run a command so that any failure is one styled line on stderr and exit code 1.

    With ``--verbose`` the traceback is printed as well. Errors the user can fix are `QmixError`s; anything else
    is reported as unexpected, still without a traceback unless asked. The command must take ``ctx``.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        st = state(kwargs.get("ctx"))
        try:
            # Here, not in the app's callback: `--help` (answered before the command runs) still works with a
            # mistyped value, which every command then names.
            apply_pixel_limit(os.environ)
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort):
            raise
        except QmixError as e:
            if st.verbose:
                e.args = (e.cli_message, *e.args[1:])  # the traceback's last line in the CLI's words too
                Console(stderr=True).print_exception()
            fail(e.cli_message)
        except KeyboardInterrupt as e:
            stop_interrupted(e)
        except Exception as e:
            if st.verbose:
                Console(stderr=True).print_exception()
            if message := out_of_resources(e):
                fail(message)
            hint = "" if st.verbose else " (rerun with --verbose for the traceback)"
            fail(f"unexpected {type(e).__name__}: {e}{hint}")

    return wrapper  # type: ignore[return-value]
