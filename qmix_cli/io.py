"""Atomic output (a reader never sees a half-written file or directory, and a failure leaves nothing behind), and
the tolerant reader of the one file written line by line instead: a run's ``metrics.jsonl``."""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import json
import os
import re
import shutil
import stat
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

from qmix_cli.errors import ConfigError, DataError, NoSpaceError, QmixError, UnwritableError

# What a write on a full disk or past a quota fails with.
NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})
# What `qmix train` writes in a run directory (`engine.trainer`), besides its checkpoints folder: no other output
# may replace them (a report written over ``model.pt`` loses the run).
RUN_FILES = ("config.yaml", "metrics.jsonl", "separation.json", "run.json", "model.pt")
RUN_CHECKPOINTS = "checkpoints"
# The checkpoint `qmix train --resume` continues from.
RUN_CHECKPOINT = f"{RUN_CHECKPOINTS}/last.pt"


def is_stream(path: object) -> bool:
    """Whether an input or output argument is ``"-"``, standard input or output. Only the string says so: a
    `pathlib.Path` is always a file (``Path("./-")`` prints as ``-``), and ``./-`` on the command line names a file
    called ``-``, as it does to every shell tool."""
    return isinstance(path, str) and path == "-"


def is_pipe_or_device(path: str | Path) -> bool:
    """Whether ``path`` exists as something to stream rather than a file to read: a pipe (what a shell's ``<(...)``
    or ``/dev/stdin`` gives) or a device. Reading a table needs to seek, and a manifest's paths need a folder."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISCHR(mode) or stat.S_ISSOCK(mode)


def stopped_before_first_checkpoint(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a run killed before it saved a checkpoint: nothing to resume, only to restart."""
    return (run_dir / RUN_CHECKPOINTS).is_dir() and not (run_dir / RUN_CHECKPOINT).is_file()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def path_names(path: str | Path) -> set[str]:
    """The names a list of absolute, normalised paths may hold ``path`` under: as written, and with symlinks
    resolved (to tell whether an output would overwrite one of them)."""
    return {os.path.normpath(os.path.abspath(path)), os.path.realpath(path)}


def is_one_of(path: str | Path, paths: Iterable[str], *, root: str | Path | None = None) -> bool:
    """Whether output ``path`` names one of ``paths`` (absolute, or relative to ``root`` or else the current
    directory), as written or through symlinks (`path_names`). Only the entries with one of its file names are
    normalised, so a list of a million images costs a string comparison per entry."""
    names = path_names(path)
    basenames = {os.path.basename(name) for name in names}
    for entry in paths:
        if os.path.basename(entry) in basenames:
            full = entry if root is None else os.path.join(root, entry)  # an absolute entry stays as it is
            if os.path.normpath(os.path.abspath(full)) in names:
                return True
    return False


# A path naming one of this process's descriptors rather than a file: `/dev/stdout`, `/dev/fd/3`, `/proc/self/fd/2`.
_DESCRIPTOR_PATH = re.compile(r"/dev/(?:std(?:in|out|err)|fd/\d+)|/proc/(?:self|thread-self|\d+)/fd/\d+")
# The message for an output that is a stream of the process, or a pipe or a device, whichever command refuses it.
_STREAM_OUT = "write to a file (qmix audit streams a report with --out -)"


def standard_stream(path: str | Path) -> int | None:
    """Which of this process's standard streams (1, 2, 0) goes to the file ``path`` names (``/dev/stdout``,
    ``/dev/fd/2``, or the file the shell redirected it to), or None: written as a file, it would be replaced under
    the shell's redirection, and whatever the script writes to it afterwards lost."""
    try:
        named = os.stat(path)
    except (OSError, ValueError):
        return None
    for fd in (1, 2, 0):
        try:
            stream = os.fstat(fd)
        except OSError:  # closed
            continue
        if (named.st_dev, named.st_ino) == (stream.st_dev, stream.st_ino):
            return fd
    return None


def is_stdout(path: str | Path) -> bool:
    """Whether ``path`` names the file this process's standard output goes to (`standard_stream`)."""
    return standard_stream(path) == 1


#: The first four bytes of every Parquet file (and its last four).
PARQUET_MAGIC = b"PAR1"
# The binary files a CSV table is most often mistaken for, by their first bytes, as an error names them.
_BINARY_TABLES = {PARQUET_MAGIC: "a Parquet file", b"PK\x03\x04": "a zip archive (an Excel workbook?)"}


def leading_bytes(path: str | Path, n: int) -> bytes:
    """The first ``n`` bytes of the file at ``path`` (fewer for a shorter file); empty where it cannot be read."""
    try:
        with Path(path).open("rb") as f:
            return f.read(n)
    except OSError:
        return b""


def binary_table(path: str | Path) -> str | None:
    """What binary table file ``path`` begins as, named for an error (``"a Parquet file"``, ``"a zip archive (an
    Excel workbook?)"``), or None: text, an unreadable file, anything else."""
    head = leading_bytes(path, 4)
    return next((kind for magic, kind in _BINARY_TABLES.items() if head.startswith(magic)), None)


def csv_header(path: str | Path) -> tuple[str, list[str]]:
    """The separator of a CSV file (a manifest, or a report edited in a spreadsheet) and its header's fields: of
    comma, semicolon (a spreadsheet's export where the comma is the decimal mark, R's ``write.csv2``) and tab, the one
    that splits the header line into the most fields (quotes respected); the comma where none splits it."""
    with open(path, encoding="utf-8-sig", newline="") as f:
        line = f.readline()
    fields = {sep: next(csv.reader([line], delimiter=sep), []) for sep in (",", ";", "\t")}
    sep = max(fields, key=lambda sep: (len(fields[sep]), sep == ","))
    return sep, fields[sep]


def read_csv_text(path: str | Path, *, what: str, key_columns: Iterable[str]) -> pd.DataFrame:
    """A CSV table (a manifest, a review sheet) as text columns, blank cells null.

    The separator is `csv_header`'s and a byte-order mark is dropped. A column of ``key_columns`` named twice is
    refused (pandas would rename the second ``label.1`` and read the first without a word), and so is a row with more
    fields than the header (pandas would make its first field the index and shift the others along); the empty,
    unnamed columns a separator at the end of every line makes are dropped. ``what`` names the file in errors.

    Raises
    ------
    DataError
        A Parquet file or a workbook (`binary_table`), a key column named twice, a row too long, text that is not
        UTF-8, or a file pandas cannot read (its first line of explanation).
    """
    import warnings

    import pandas as pd

    if kind := binary_table(path):  # said as what it is, not as text that is not UTF-8
        raise DataError(f"cannot read {what} {path}: it is {kind}, not CSV text; save it as CSV")
    try:
        sep, header = csv_header(path)
        if twice := [name for name in key_columns if header.count(name) > 1]:
            raise DataError(f"{path}: the column {twice[0]!r} is named {header.count(twice[0])} times; keep one")
        with warnings.catch_warnings():
            warnings.simplefilter("error", pd.errors.ParserWarning)  # index_col=False's "data lost": refused
            frame = pd.read_csv(
                path, sep=sep, dtype=str, keep_default_na=False, na_values=[""], encoding="utf-8-sig", index_col=False
            )
    except UnicodeDecodeError as e:
        raise DataError(
            f"cannot read {what} {path}: it is not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start}); "
            "save it as UTF-8"
        ) from None
    except pd.errors.ParserWarning:
        raise DataError(f"cannot read {what} {path}: a row has more fields than its header") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        reason = next((line for line in str(e).splitlines() if line.strip()), type(e).__name__)
        raise DataError(f"cannot read {what} {path}: {reason}") from None
    trailing = [c for c in frame.columns if str(c).startswith("Unnamed: ") and frame[c].isna().all()]
    return frame.drop(columns=trailing)


def check_out_file(path: str | Path, *, probe: bool = True) -> Path:
    """The regular file to write for output ``path`` (before any work is spent on its content).

    A symlink is followed, so that the file it names is replaced and the link kept. A directory, a name ending in
    ``/``, one of the process's streams (standard output or error, ``/dev/fd/N``), or anything else that is not a
    regular file (a pipe, a device) is refused: an atomic write would replace it with a file instead of writing into
    it. With ``probe``, the folder the file goes in must be one this user can write in (a temporary file is made
    there and removed), so that a command finds out before its work, not after.
    """
    if str(path).endswith(("/", os.sep)):  # a Path has lost the slash already; the CLI hands over what was typed
        raise QmixError(f"{path} names a folder (it ends with /); give a file name to write")
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        mode = None
    except OSError as exc:
        raise QmixError(f"cannot write {path}: {exc.strerror or exc}") from None
    if mode is not None and stat.S_ISDIR(mode):
        raise QmixError(f"{path} is a directory; give a file name to write")
    if _DESCRIPTOR_PATH.fullmatch(os.path.abspath(path)) or standard_stream(path) is not None:
        raise QmixError(f"{path} is a stream of this command (standard output or error, a descriptor); {_STREAM_OUT}")
    if mode is not None and not stat.S_ISREG(mode):
        raise QmixError(f"{path} is not a regular file (a pipe or a device); {_STREAM_OUT}")
    target = Path(os.path.realpath(path)) if path.is_symlink() else path
    if probe:
        _probe_folder(target)
    return target


def _probe_folder(path: Path) -> None:
    """Refuse output ``path`` when the nearest existing folder on its way is a file, or not one this user can create
    files in (no permission, a read-only or virtual file system): a temporary file is made there and removed."""
    existing = next(p for p in (path.parent, *path.parent.parents) if os.path.lexists(p))
    if not existing.is_dir():
        raise QmixError(f"cannot write {path}: {existing} is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".qmix-probe.", suffix=".tmp", dir=existing)
    except OSError as exc:
        raise _cannot_write(path, exc) from None
    try:
        os.close(fd)
    finally:
        finish_despite_interrupts(lambda: Path(probe).unlink(missing_ok=True))


def check_replaceable(path: str | Path, *, ours: Callable[[Path], bool], force: bool, option: str, what: str) -> None:
    """Refuse to replace an existing, non-empty file at output ``path`` unless ``ours(path)`` says this command
    wrote it (an earlier report, an earlier page: rerunning a command replaces its own output) or ``force`` is
    set: a manifest, another command's table or a user's document given as ``--out`` by mistake is not lost.

    ``what`` names what this command writes (``"a page qmix show wrote"``); errors name the output by ``option``.
    """
    path = Path(path)
    try:
        if force or not path.is_file() or path.stat().st_size == 0 or ours(path):
            return
    except OSError:
        pass  # unreadable: not known to be ours
    raise ConfigError(
        f"{option} {path} already exists and is not {what}; choose another file, or pass --force to replace it"
    )


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path`` in one rename.

    The temporary file lives in the same directory so that ``os.replace`` is atomic. On an exception the
    temporary file is removed and ``path`` is untouched.
    """
    path = check_out_file(path, probe=False)  # the temporary file below is the probe
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise _cannot_write(path, exc) from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates the file readable by its owner only; give the result the mode any new file gets.
        os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def _cannot_write(path: Path, exc: OSError) -> QmixError:
    """Why ``path`` (or the folder it goes in) could not be created, in one line."""
    if exc.errno in NO_SPACE:
        return NoSpaceError(f"no space left on the device writing {path}: free some space or write elsewhere")
    if isinstance(exc, FileExistsError | NotADirectoryError):
        blocker = next((p for p in path.parents if p.exists() and not p.is_dir()), path.parent)
        return QmixError(f"cannot write {path}: {blocker} is a file, not a folder")
    reason = exc.strerror or str(exc)  # a read-only or virtual file system, no permission
    return UnwritableError(f"cannot write {path}: {reason}", reason=reason)


def run_file_named(path: str | Path, run_dir: str | Path) -> str | None:
    """Which of the run's own files (`RUN_FILES`, or anything in its checkpoints folder) ``path`` would replace,
    relative to ``run_dir`` and with symlinks resolved; None when it is none of them."""
    try:
        relative = Path(os.path.realpath(path)).relative_to(os.path.realpath(run_dir))
    except ValueError:
        return None
    parts = relative.parts
    if parts and (parts[0] == RUN_CHECKPOINTS or (len(parts) == 1 and parts[0] in RUN_FILES)):
        return relative.as_posix()
    return None


def format_bytes(n: float) -> str:
    """``n`` bytes in the largest binary unit that keeps it at least 1 (``"7.4 MiB"``)."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def reserve_space(path: str | Path) -> None:
    """Allocate the disk blocks of the whole file at ``path`` (as long as it is now) before anything is written.

    A sparse file written through a memory map takes its blocks when each page is first written, and a full disk
    then kills the process with SIGBUS, without a word or a traceback. Reserved blocks cannot run out; what
    cannot be reserved is a `NoSpaceError` naming what is needed and what is free. Where the system cannot
    reserve blocks (no ``posix_fallocate``, or a file system that refuses it) the free space is compared instead.
    """
    path = Path(path)
    size = path.stat().st_size
    free = shutil.disk_usage(path.parent).free  # before: a reservation that fails may keep what it took
    try:
        if not hasattr(os, "posix_fallocate"):
            raise OSError(errno.EOPNOTSUPP, "no posix_fallocate")
        with path.open("r+b") as f:
            os.posix_fallocate(f.fileno(), 0, size)
        return
    except OSError as e:
        if e.errno not in NO_SPACE | {errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS}:
            raise
        if e.errno == errno.EDQUOT:  # the disk's free space says nothing of the user's quota
            raise NoSpaceError(f"{format_bytes(size)} needed in {path.parent}, past your disk quota") from None
        if e.errno not in NO_SPACE and free >= size:
            return
    raise NoSpaceError(f"{format_bytes(size)} needed in {path.parent}, {format_bytes(free)} free")


def send_to_null(stream: Any) -> None:
    """Point the file descriptor under ``stream`` at the null device, once the pipe it wrote to has lost its reader
    (``qmix ... | head``): what is still buffered for it, or printed later, then goes nowhere instead of raising
    `BrokenPipeError` again (at interpreter exit, "Exception ignored ... BrokenPipeError"). Streams without a
    descriptor are left as they are."""
    with contextlib.suppress(AttributeError, OSError, ValueError, io.UnsupportedOperation):
        fd = stream.fileno()
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, fd)
        finally:
            os.close(devnull)


def finish_despite_interrupts(cleanup: Callable[[], object]) -> None:
    """Run ``cleanup`` to its end, starting it again after each Ctrl-C or SIGTERM that arrives meanwhile (a second
    Ctrl-C, a scheduler's repeated signal, GNU ``timeout`` signalling the process and its group): the interrupt that
    began the cleanup is already on its way out, and a cleanup cut short leaves what it was removing (a dataset-sized
    partial folder, threads still writing into it). ``cleanup`` must be safe to start again."""
    while True:
        try:
            cleanup()
            return
        except KeyboardInterrupt:
            continue


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (UTF-8)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def check_out_dir(out: str | Path, *, force: bool, forcing: str = "replace it") -> Path:
    """Refuse an existing, non-empty output directory unless ``force`` is set; the error says that ``--force``
    would ``forcing``."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise QmixError(f"{out} exists and is not a directory")
    if out.exists() and any(out.iterdir()) and not force:
        raise QmixError(f"{out} already exists; choose another --out or pass --force to {forcing}")
    return out


# A partial output (a hidden ``.NAME.*.tmp`` file beside what it becomes, or a lock file inside such a folder) is
# locked by the process that builds it, so that a later command can tell one left by a killed process (SIGKILL or
# the OOM killer run no cleanup) from one being built, and remove only the first. Regular files, opened for
# writing: NFS grants an exclusive flock on the server to writers only, and a folder cannot be opened on Windows.


def hold_partial(fd: int) -> None:
    """Mark the partial output open at ``fd`` as being built, until ``fd`` is closed (`partial_held`)."""
    with contextlib.suppress(ImportError, OSError):  # no fcntl (Windows), or a file system without locks
        import fcntl

        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


@contextlib.contextmanager
def holding_partial(path: Path) -> Iterator[None]:
    """`hold_partial` the partial file at ``path`` while the block builds it."""
    fd = os.open(path, os.O_RDWR)
    try:
        hold_partial(fd)
        yield
    finally:
        os.close(fd)


def partial_held(path: Path) -> bool:
    """Whether a live process holds the partial file at ``path`` (True where that cannot be told)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        return True
    try:
        fd = os.open(path, os.O_RDWR)
    except OSError:  # another user's (theirs to clean up), or gone
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # BlockingIOError: held; anything else: cannot tell
        return True
    finally:
        os.close(fd)
    return False


# A partial its builder holds no lock on and has not touched for this long was left by a killed process (a sweep
# whose jobs are killed again and again would otherwise pile up dataset-sized ones): the wait spares the moment
# between its creation and its lock.
ABANDONED_PARTIAL_SECONDS = 60
# A partial with no lock to test (made by an older qmix, or whose lock file is gone: a folder about to be renamed)
# is removed only once nothing can still be building it.
STALE_PARTIAL_SECONDS = 24 * 3600
# The file inside an `atomic_dir` partial folder that its builder holds locked; removed just before the rename, so
# that it never reaches the output.
PARTIAL_LOCK = ".qmix-building"


def remove_abandoned_partials(out: Path) -> list[Path]:
    """Remove the partial folders of ``out`` (`atomic_dir`'s ``.<name>.XXXXXXXX.tmp`` beside it) that no live
    process builds; returns what was removed. A ``qmix corrupt`` killed midway would otherwise leave a hidden,
    dataset-sized folder for every try.

    A folder goes when its lock file (`PARTIAL_LOCK`) is held by no process and the folder has not changed for
    `ABANDONED_PARTIAL_SECONDS`; without a lock file, only after `STALE_PARTIAL_SECONDS`. Another user's lock file
    cannot be opened for writing, so their folders stay.
    """
    name = re.compile(rf"\.{re.escape(out.name)}\.[a-z0-9_]{{8}}\.tmp")
    removed = []
    now = time.time()
    with contextlib.suppress(OSError):  # a folder that cannot be listed has nothing of ours to remove
        for entry in os.scandir(out.parent):
            if not name.fullmatch(entry.name) or not entry.is_dir(follow_symlinks=False):
                continue
            path = Path(entry.path)
            with contextlib.suppress(OSError):  # another process may remove it at the same moment
                quiet = now - entry.stat(follow_symlinks=False).st_mtime
                lock = path / PARTIAL_LOCK
                if os.path.lexists(lock):
                    abandoned = quiet > ABANDONED_PARTIAL_SECONDS and not partial_held(lock)
                else:
                    abandoned = quiet > STALE_PARTIAL_SECONDS
                if abandoned:
                    shutil.rmtree(path)
                    removed.append(path)
    return removed


@contextlib.contextmanager
def atomic_dir(out: str | Path, *, force: bool = False) -> Iterator[Path]:
    """Build a directory under a temporary name and move it to ``out`` only when the block succeeds.

    With ``force`` an existing ``out`` is replaced, but only after the new one is complete: a failed run never
    destroys the previous output. The partial folder holds a locked `PARTIAL_LOCK` file while it is built, so that
    a later call can remove it if this process is killed (`remove_abandoned_partials`).
    """
    out = check_out_dir(out, force=force).absolute()
    try:  # a parent that is a file, or a folder this user cannot write in: one line, as for a file output
        out.parent.mkdir(parents=True, exist_ok=True)
        remove_abandoned_partials(out)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    except OSError as exc:
        raise _cannot_write(out, exc) from None
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it private; the output is an ordinary directory
    lock = None
    try:
        lock = os.open(tmp / PARTIAL_LOCK, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        hold_partial(lock)
        yield tmp
        # Out of the output. Without its lock file the folder counts as stale only after a day: the rename below
        # is a moment away.
        os.close(lock)
        lock = None
        os.unlink(tmp / PARTIAL_LOCK)
        if force and out.exists():
            # A name of its own: a PID can repeat (in containers, always), and a leftover would block the rename.
            old = out.with_name(f".{out.name}.old-{os.getpid()}-{os.urandom(4).hex()}")
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            try:  # a rename onto a directory that is not empty fails: what another process wrote meanwhile stays
                os.replace(tmp, out)
            except OSError as e:
                if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
                raise QmixError(
                    f"{out} was written by another process meanwhile; choose another --out or pass --force to "
                    "replace it"
                ) from None
    finally:
        if lock is not None:
            os.close(lock)
        if tmp.exists():
            finish_despite_interrupts(lambda: shutil.rmtree(tmp, ignore_errors=True))


@contextlib.contextmanager
def run_lock(run_dir: str | Path) -> Iterator[None]:
    """Hold ``run_dir`` for this process: a second one that asks while it is held (two runs of a sweep given the
    same ``--out``) is refused instead of moving or mixing a live run's files.

    The lock is an advisory ``flock`` on ``.<name>.lock`` beside the directory (its symlinks resolved), released by
    the system whatever ends the process; the file is removed when the block ends. One left by a process killed
    under another user's name is used read-only (a lock needs no write access, except on NFS). Where ``fcntl`` is
    missing (Windows) nothing is locked.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    run_dir = Path(run_dir).resolve()
    path = run_dir.with_name(f".{run_dir.name}.lock")
    # The lock file is written (the holder's pid): a link planted in its place (a run folder unpacked from an
    # archive) would have the file it points to truncated. Refused, and never followed.
    if path.is_symlink():
        raise QmixError(f"{path}, the run's lock file, is a symbolic link; remove it (qmix makes its own)")
    nofollow = getattr(os, "O_NOFOLLOW", 0)
    while True:
        try:
            run_dir.parent.mkdir(parents=True, exist_ok=True)
            try:
                fd, writable = os.open(path, os.O_RDWR | os.O_CREAT | nofollow, 0o666 & ~_umask()), True
            except PermissionError as denied:  # another user's, left by a killed run: locking needs no write access
                try:
                    fd, writable = os.open(path, os.O_RDONLY | nofollow), False
                except FileNotFoundError:  # no lock file, and none can be made: the parent is not the user's
                    raise QmixError(
                        f"cannot create the lock file {path} beside the run folder ({denied.strerror}): a run is "
                        f"locked from the folder that holds it; name a folder inside one you can write, e.g. --out "
                        f"{run_dir / 'run'}"
                    ) from None
        except OSError as e:  # a folder the user cannot write, or a file where a folder should be
            raise _cannot_write(run_dir, e) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            raise QmixError(
                f"{run_dir} is in use by another qmix process{f' (pid {holder})' if holder else ''}; wait for it "
                "or choose another --out"
            ) from None
        with contextlib.suppress(FileNotFoundError):
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                break  # the file still at that name: a holder that let go may have removed the one we opened
        os.close(fd)
    try:
        if writable:
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        with contextlib.suppress(OSError):  # gone already, or another user's in a folder that keeps it
            os.unlink(path)  # before letting go, so that a waiting opener retries on a fresh file
        os.close(fd)


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a run's ``metrics.jsonl``: each line that is a JSON object with an integer ``epoch``.

    Other lines are skipped, a line cut short by a kill or a full disk included (the checkpoint, not this log, is
    the truth about where a run stands); a missing or unreadable file gives no rows.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError:
        return []
    rows = []
    for line in text.splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and isinstance(row.get("epoch"), int) and not isinstance(row["epoch"], bool):
            rows.append(row)
    return rows
