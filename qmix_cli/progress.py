"""Progress reporting: rich bars on a terminal, nothing (or plain lines) otherwise.

The core takes a `Progress`-like object with ``task(description, total)`` returning an advance callback, so it
never imports rich itself and stays silent when used as a library.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Protocol

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from qmix_cli.errors import one_line


def plain(text: str) -> Text:
    """``text`` (a note or a table cell quoting the user's labels, ids or paths) to print as written: no rich markup,
    and control characters as escapes (`one_line`: a line break cannot split the line, an escape sequence cannot act
    on the terminal)."""
    return Text(one_line(text))


class CommandLineConsole(Console):
    """The console of someone who typed the CLI's options: the lines printed on it name them as typed
    (``--label-rate``). On any other console, a Python caller's, the API names its keywords (``label_rate``)."""


class Reporter(Protocol):
    def task(self, description: str, total: int) -> Callable[[int], None]: ...

    def log(self, message: str) -> None: ...


class SilentReporter:
    """Reports nothing: the default for library calls."""

    def task(self, description: str, total: int) -> Callable[[int], None]:
        return lambda n=1: None

    def log(self, message: str) -> None:
        return None


class RichReporter:
    """Progress bars on a TTY; on a pipe or in CI only the plain ``log`` lines appear."""

    def __init__(self, progress: Progress | None, console: Console) -> None:
        self._progress = progress
        self._console = console

    def task(self, description: str, total: int) -> Callable[[int], None]:
        if self._progress is None:
            return lambda n=1: None
        progress = self._progress
        task_id = progress.add_task(description, total=total)
        done = 0

        def advance(n: int = 1) -> None:
            # Counted here: `Progress.tasks` is a list that shrinks as finished tasks are removed, not a map by id.
            nonlocal done
            if done >= total and done > 0:
                return  # already full and taken away: a late advance has nothing to move
            progress.advance(task_id, n)
            done += n
            if done >= total:
                progress.remove_task(task_id)

        return advance

    def log(self, message: str) -> None:
        line = one_line(message)  # notes quote paths and labels: a line break or an escape sequence stays text
        (self._progress.console if self._progress else self._console).print(
            line, markup=False, highlight=False, soft_wrap=True
        )


@contextlib.contextmanager
def reporter(console: Console, *, quiet: bool = False) -> Iterator[Reporter]:
    """A reporter bound to ``console`` (stderr in the CLI); bars only when it is an interactive terminal."""
    if quiet:
        yield SilentReporter()
        return
    if not console.is_terminal:
        yield RichReporter(None, console)
        return
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=True) as progress:
        yield RichReporter(progress, console)
