"""User-facing errors.

Anything the user can fix (bad input, bad options, a run that cannot resume) raises a `QmixError`. The CLI turns
it into one styled line and exit code 1; every other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import difflib
import functools
import json
import re
import signal
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any


class QmixError(Exception):
    """An error the user can act on; its message is shown as is, without a traceback.

    Messages name options as the CLI spells them (``--label-rate``, or ``label-rate`` where a config key is meant).
    The Python API re-spells them as its own keywords for its callers (`respell`); ``cli_message`` keeps the CLI's.
    """

    @property
    def cli_message(self) -> str:
        """The message as the CLI prints it, whatever spelling ``str(self)`` has been given since."""
        return self.__dict__.get("_cli_message", str(self))

    def respell(self, names: Mapping[str, str], *, values: Collection[str] = ()) -> None:
        """Name options in the message by ``names`` and ``values`` (`respell_options`), once: an error passing
        through two API functions keeps the inner one's spelling, the function the caller's keywords went to."""
        if "_cli_message" in self.__dict__:
            return
        self._cli_message = message = str(self)
        self.args = (respell_options(message, names, values=values), *self.args[1:])


class DataError(QmixError):
    """The dataset or manifest is unusable (missing files, bad columns, one class, ...)."""


class ConfigError(QmixError):
    """Options or a config file are invalid."""


class NoSpaceError(QmixError):
    """The disk (or the user's quota) cannot hold a file qmix must write."""


class UnwritableError(QmixError):
    """A file cannot be created where it must go (no permission, a read-only file system); ``reason`` says why."""

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled as its class called with the message alone, which a required ``reason`` refuses: an error raised
        # in a worker process could not be sent back to the parent.
        return functools.partial(type(self), reason=self.reason), self.args, self.__dict__


class TrainingError(QmixError):
    """Training cannot go on (NaN loss, incompatible checkpoint, ...)."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill PID``, a scheduler's time limit, ``docker stop``), unwound as Ctrl-C is: temporary files
    removed, a run stopped after its last complete checkpoint."""


# An option as a message names it: ``--name`` or a config key written ``hyphen-joined``, not inside a path, a file
# name or a word (a full stop after it ends a sentence); and the word after it, which may be its value.
_OPTION = re.compile(
    r"(?<![\w\-/\\.])(?P<dashes>--)?(?P<option>[a-z][a-z0-9]*(?:-[a-z0-9]+)*)(?![\w\-/\\]|\.\w)"
    r"(?: (?P<value>'(?:[^'\n]|'\\'')*'|[\w.:]+?)(?=[.,;:)]?(?:\s|$)))?"
)
# A command line a message quotes (``qmix train --force``), up to a ``)`` or ``;``: its options are another command's.
_COMMAND_LINE = re.compile(r"\bqmix [a-z]+\b[^);]*")
# Values a hint writes after an option, as they are passed in Python: a placeholder (``FILE``, ``N``) and a number as
# they are, a file name (no folder: a path may hold spaces) or ``matrix:FILE`` quoted.
_PLACEHOLDER = re.compile(r"[A-Z][A-Z_]*")
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
_QUOTED = re.compile(r"[\w-]+\.[a-z]{2,7}|matrix:[\w.:-]+")


# How a shell word single-quoted by `shell_word` writes an apostrophe: close the quote, an escaped one, reopen.
_QUOTED_APOSTROPHE = "'\\''"


def shell_word(value: str) -> str:
    """``value`` (a column or class name a hint writes after an option) single-quoted as a shell reads it, so that
    a name with a space pastes whole, and so that `respell_options` knows it for a value: ``'patient id'``."""
    return "'" + value.replace("'", _QUOTED_APOSTROPHE) + "'"


def _python_text(word: str) -> str:
    """A `shell_word` as a Python string literal: ``'patient'\\''s id'`` → ``"patient's id"``."""
    return json.dumps(word[1:-1].replace(_QUOTED_APOSTROPHE, "'"), ensure_ascii=False)


def respell_options(message: str, names: Mapping[str, str], *, values: Collection[str] = ()) -> str:
    """``message`` with the options ``names`` knows spelled its way, looked up as written: ``--label-rate`` as
    ``names["--label-rate"]``, a config key ``label-rate`` as ``names["label-rate"]``. A value written after a
    ``--`` option becomes the keyword's (``--on-missing skip`` → ``on_missing="skip"``, ``--top N`` → ``top=N``)
    when it is a placeholder, a number, a file name, one of ``values`` (the words the options take) or quoted as
    `shell_word` quotes it (``--group-column 'patient id'`` → ``group_column="patient id"``); any other word after
    it is prose and stays. Options ``names`` does not know (the CLI's own, ``--verbose``) stay as they
    are, and so do plain words without dashes, which read the same in both spellings or are prose, and the options
    of a command line the message quotes (``qmix train --force``: another function's keywords, if any)."""

    def one(match: re.Match[str]) -> str:
        dashes, option, value = match.group("dashes", "option", "value")
        if not dashes and "-" not in option:
            return match.group(0)
        keyword = names.get(f"{dashes or ''}{option}")
        if keyword is None:
            return match.group(0)
        if value is None:
            return keyword
        if dashes and "=" not in keyword:
            if value.startswith("'"):
                return f"{keyword}={_python_text(value)}"
            if _PLACEHOLDER.fullmatch(value) or _NUMBER.fullmatch(value):
                return f"{keyword}={value}"
            if value in values or _QUOTED.fullmatch(value):
                return f'{keyword}="{value}"'
        return f"{keyword} {value}"

    pieces, start = [], 0
    for line in _COMMAND_LINE.finditer(message):
        pieces += [_OPTION.sub(one, message[start : line.start()]), line.group(0)]
        start = line.end()
    return "".join([*pieces, _OPTION.sub(one, message[start:])])


# How alike a misspelt name and the one meant are (difflib's ratio): ``group_col`` and ``group_column`` 0.86,
# ``warmup_epoch`` and ``warmup_epochs`` 0.96, ``sort`` and ``report`` 0.6, which a hint should not pair.
CLOSE_ENOUGH = 0.75


def closest(word: str, choices: Iterable[str]) -> str | None:
    """The one of ``choices`` that ``word`` is a misspelling of, for a "did you mean" (None when none is close)."""
    return next(iter(difflib.get_close_matches(word, sorted(choices), n=1, cutoff=CLOSE_ENOUGH)), None)


def interrupted_status(exc: KeyboardInterrupt) -> int:
    """The exit status of a command that ``exc`` stopped: 128 plus the signal's number, as a shell reports a process
    the signal ended (130 for Ctrl-C, 143 for SIGTERM), so that a scheduler or ``timeout`` tells the two apart."""
    return 128 + (signal.SIGTERM if isinstance(exc, Terminated) else signal.SIGINT)


def count_of(n: int, noun: str, plural: str | None = None) -> str:
    """``"1 image"``, ``"0 images"``, ``"1,797 images"``; ``plural`` where adding an ``s`` is wrong (``classes``)."""
    return f"{n:,} {noun if n == 1 else plural or noun + 's'}"


def zeros_lost(unknown: Iterable[str], known: Iterable[str], *, whose: str, file: str) -> str:
    """A hint for ``unknown`` ids that are ``known`` ones without their leading zeros (``7`` for ``007``): what a
    spreadsheet does to a column of numbers when a table is opened and saved there. ``whose`` names the ids'
    owner (``"the report's"``), ``file`` the table that lost them (``"the sheet"``). Empty where no id is such."""
    unknown = [str(sid) for sid in unknown]
    if not unknown:  # nothing to explain: the other side's ids are not read
        return ""
    by_number = {sid.lstrip("0") or "0": sid for sid in map(str, known) if sid[:1] == "0" and sid[1:].isdigit()}
    found = [(sid, by_number[sid]) for sid in unknown if sid in by_number]
    if not found:
        return ""
    sid, full = found[0]
    many = len(found) > 1
    return (
        f"; {count_of(len(found), 'id')} of {file} {'are' if many else 'is'} {whose} without leading zeros ({sid} is "
        f"{full}): a spreadsheet drops them; edit {file} as text, or import its sample_id column as text"
    )


def first_few(names: Sequence[str], *, show: int = 5) -> str:
    """``"a, b, c, d, e, and 7 more"``: the first ``show`` of ``names``, and how many are left unnamed."""
    more = f", and {len(names) - show:,} more" if len(names) > show else ""
    return ", ".join(names[:show]) + more


def summarise_offenders(what: str, offenders: Sequence[str], *, total: int | None = None, show: int = 5) -> str:
    """One message naming the first few offending items and how many there are in all.

    Parameters
    ----------
    what
        What is wrong, e.g. ``"unreadable images"``.
    offenders
        Human-readable descriptions of the offending rows, in dataset order.
    total
        Total number of offenders if ``offenders`` is a truncated list.
    show
        How many to spell out.
    """
    total = len(offenders) if total is None else total
    head = "; ".join(offenders[:show])
    more = f" (and {total - show} more)" if total > show else ""
    return f"{total} {_singular(what) if total == 1 else what}: {head}{more}"


# The plural nouns the messages count, and their singular: a single bad image is the commonest case of all.
_SINGULAR = {"images": "image", "rows": "row", "ids": "id", "sample_ids": "sample_id", "labels": "label",
             "paths": "path", "names": "name"}  # fmt: skip


def _singular(what: str) -> str:
    """``what`` said of one offender: its first counted noun in the singular, and the verb of a ``that are`` clause
    after it (``"suggested labels that are not classes"`` → ``"suggested label that is not classes"``)."""
    words = what.split(" ")
    for i, word in enumerate(words):
        if word in _SINGULAR:
            words[i] = _SINGULAR[word]
            return " ".join(words).replace(" that are ", " that is ", 1)
    return what


# C0 and C1 control characters, DEL included: a line break or a terminal's escape sequence.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def one_line(message: str) -> str:
    """``message`` with its control characters written as Python escapes (``\\n``, ``\\x1b``): user text it quotes
    (a path with a line break, a label with a terminal's colour codes) can neither split the error's line nor
    act on the terminal."""
    return _CONTROL.sub(lambda found: repr(found.group())[1:-1], message)
