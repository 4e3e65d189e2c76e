"""Atomic output files, and the metrics-log reader shared by resume, `qmix show` and the benchmarks."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from qmix_cli.errors import NoSpaceError, QmixError
from qmix_cli.io import (
    ABANDONED_PARTIAL_SECONDS,
    PARTIAL_LOCK,
    STALE_PARTIAL_SECONDS,
    atomic_dir,
    atomic_write_text,
    check_out_file,
    format_bytes,
    is_one_of,
    partial_held,
    read_metrics,
    remove_abandoned_partials,
    reserve_space,
    run_lock,
)


def test_read_metrics_keeps_epoch_rows_and_drops_what_a_kill_leaves(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = [{"epoch": 1, "loss": 2.0}, {"epoch": 2, "loss": 1.5}]
    torn = json.dumps({"epoch": 3, "loss": 1.2})[:-5]  # the last line of a run killed mid-write
    noise = ["", "[1, 2]", json.dumps({"loss": 1.0}), json.dumps({"epoch": "4"}), json.dumps({"epoch": True})]
    path.write_text("\n".join([json.dumps(r) for r in rows] + noise + [torn]), encoding="utf-8")
    assert read_metrics(path) == rows


def test_read_metrics_of_a_missing_file_is_empty(tmp_path):
    assert read_metrics(tmp_path / "nope.jsonl") == []
    assert read_metrics(tmp_path) == []  # a directory is unreadable as text, not an error


def test_an_atomic_write_through_a_symlink_replaces_its_target_and_keeps_the_link(tmp_path):
    (tmp_path / "real.csv").write_text("old")
    (tmp_path / "link.csv").symlink_to(tmp_path / "real.csv")
    atomic_write_text(tmp_path / "link.csv", "new")
    assert (tmp_path / "link.csv").is_symlink()
    assert (tmp_path / "real.csv").read_text() == "new"


@pytest.mark.parametrize("kind", ["fifo", "directory"])
def test_an_output_that_is_not_a_regular_file_is_refused_untouched(tmp_path, kind):
    # An atomic write renames a new file over its target: a pipe (or /dev/stdout) would be replaced by a file
    # and its reader left waiting; a directory cannot be replaced at all.
    target = tmp_path / "out.csv"
    os.mkfifo(target) if kind == "fifo" else target.mkdir()
    with pytest.raises(QmixError, match="regular file" if kind == "fifo" else "is a directory"):
        atomic_write_text(target, "x")
    assert target.is_fifo() if kind == "fifo" else target.is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.csv"]  # no temporary file left behind


def test_is_one_of_matches_an_output_as_written_relative_to_a_root_or_through_a_symlink(tmp_path, monkeypatch):
    images = tmp_path / "data"
    (images / "a").mkdir(parents=True)
    (images / "a" / "x.png").write_bytes(b"png")
    (tmp_path / "link.png").symlink_to(images / "a" / "x.png")
    monkeypatch.chdir(tmp_path)
    listed = [str(images / "a" / "x.png")]
    assert is_one_of("data/a/../a/x.png", listed)  # relative to the current directory, not normalised
    assert is_one_of(tmp_path / "link.png", listed)  # another name for the same file
    assert is_one_of(images / "a" / "x.png", ["a/x.png"], root=images)  # report paths are relative to the root
    assert not is_one_of(images / "a" / "x.png", ["a/x.png"])  # ...and not to the current directory
    assert not is_one_of(images / "x.png", listed)  # same file name, another file


def test_an_output_under_a_file_is_one_clear_error(tmp_path):
    (tmp_path / "notes").write_text("x")
    with pytest.raises(QmixError, match=r"cannot write .*x\.csv: .*notes is a file, not a folder"):
        atomic_write_text(tmp_path / "notes" / "sub" / "x.csv", "a")
    assert (tmp_path / "notes").read_text() == "x"


def test_an_output_in_a_folder_the_user_cannot_write_is_refused_before_any_work(tmp_path, monkeypatch):
    """``--out /sys/x.csv``, a read-only mount, a colleague's folder: refused when the output is checked (the
    audit scored every image first, then failed to write); the folder is probed where it will be made, too."""
    locked = tmp_path / "locked"
    locked.mkdir()
    real = tempfile.mkstemp

    def refused(*args, dir=None, **kwargs):
        if Path(dir) == locked:
            raise PermissionError(13, "Permission denied")
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr("qmix_cli.io.tempfile.mkstemp", refused)
    for out in (locked / "r.csv", locked / "new" / "sub" / "r.csv"):  # the nearest folder that exists decides
        with pytest.raises(QmixError, match=r"cannot write .*r\.csv: Permission denied"):
            check_out_file(out)
    assert check_out_file(tmp_path / "new" / "r.csv") == tmp_path / "new" / "r.csv"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["locked"]  # the probes leave nothing, create no folder


def test_a_folder_output_under_a_file_or_in_a_locked_folder_is_one_clear_error(tmp_path, monkeypatch):
    # `qmix corrupt --out notes/sub`: mkdir and mkdtemp raised FileExistsError / PermissionError unhandled.
    (tmp_path / "notes").write_text("x")
    under_a_file = tmp_path / "notes" / "sub"
    with pytest.raises(QmixError, match=r"cannot write .*sub: .*notes is a file"), atomic_dir(under_a_file):
        pass
    locked = tmp_path / "locked"
    locked.mkdir()

    def refused(*args, dir=None, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("qmix_cli.io.tempfile.mkdtemp", refused)
    with pytest.raises(QmixError, match=r"cannot write .*out: Permission denied"), atomic_dir(locked / "out"):
        pass
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["locked", "notes"]


def test_an_output_name_ending_in_a_slash_is_no_file(tmp_path):
    with pytest.raises(QmixError, match=r"names a folder \(it ends with /\); give a file name"):
        check_out_file(f"{tmp_path}/newdir/")
    assert not (tmp_path / "newdir").exists()


def test_standard_output_is_told_by_the_file_it_goes_to(tmp_path):
    """What `qmix audit --out /dev/stdout > j.csv` gives: the file the shell redirected stdout to, however named."""
    probe = "import sys; from qmix_cli.io import is_stdout as o; print([o(p) for p in sys.argv[1:]], file=sys.stderr)"
    redirected, other = tmp_path / "j.csv", tmp_path / "other.csv"
    other.write_text("")
    with redirected.open("w") as stdout:
        proc = subprocess.run(
            [sys.executable, "-c", probe, "/dev/stdout", str(redirected), str(other), str(tmp_path / "missing")],
            stdout=stdout, stderr=subprocess.PIPE, text=True, check=True,
        )  # fmt: skip
    assert proc.stderr.strip() == "[True, True, False, False]"
    for stream in ("/dev/stdout", "/dev/stderr", "/dev/fd/1", f"/proc/{os.getpid()}/fd/2"):  # never replaced
        with pytest.raises(QmixError, match=r"is a stream of this command .*qmix audit streams a report with --out -"):
            check_out_file(stream)


def _sparse(path, size):
    with path.open("wb") as f:
        f.truncate(size)
    return path


@pytest.mark.skipif(not hasattr(os, "posix_fallocate"), reason="no posix_fallocate here")
def test_reserve_space_allocates_the_blocks_a_sparse_file_lacks(tmp_path):
    path = _sparse(tmp_path / "rows.npy", 4 << 20)
    reserve_space(path)
    assert path.stat().st_size == 4 << 20
    assert path.stat().st_blocks * 512 >= 4 << 20  # sparse, it held almost none


@pytest.mark.parametrize("free", [1 << 20, 8 << 20])
def test_where_blocks_cannot_be_reserved_the_free_space_decides(tmp_path, monkeypatch, free):
    path = _sparse(tmp_path / "rows.npy", 4 << 20)
    monkeypatch.delattr(os, "posix_fallocate", raising=False)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: SimpleNamespace(free=free))
    if free < 4 << 20:
        with pytest.raises(NoSpaceError, match=f"4.0 MiB needed in {re.escape(str(tmp_path))}, 1.0 MiB free"):
            reserve_space(path)
    else:
        reserve_space(path)


def test_a_spent_quota_is_not_told_as_the_disks_free_space(tmp_path, monkeypatch):
    def quota(fd, offset, length):
        raise OSError(errno.EDQUOT, "Disk quota exceeded")

    monkeypatch.setattr(os, "posix_fallocate", quota, raising=False)
    with pytest.raises(NoSpaceError, match=r"^1\.0 KiB needed in .*, past your disk quota$"):
        reserve_space(_sparse(tmp_path / "rows.npy", 1024))


def test_other_reservation_failures_are_not_taken_for_a_full_disk(tmp_path, monkeypatch):
    def denied(fd, offset, length):
        raise OSError(errno.EBADF, "Bad file descriptor")

    monkeypatch.setattr(os, "posix_fallocate", denied, raising=False)
    with pytest.raises(OSError, match="Bad file descriptor"):
        reserve_space(_sparse(tmp_path / "rows.npy", 1024))


@pytest.mark.parametrize(("n", "text"), [(0, "0 B"), (1023, "1023 B"), (1536, "1.5 KiB"), (7 << 20, "7.0 MiB"),
                                         (3 << 40, "3.0 TiB")])  # fmt: skip
def test_format_bytes(n, text):
    assert format_bytes(n) == text


def test_a_run_directory_is_held_by_one_process_at_a_time(tmp_path):
    import subprocess
    import sys
    import time

    run = tmp_path / "sweep" / "run"
    lock = tmp_path / "sweep" / ".run.lock"
    refused = rf"^{re.escape(str(run))} is in use by another qmix process \(pid {os.getpid()}\)"
    with run_lock(run):
        assert lock.read_text() == str(os.getpid())
        with pytest.raises(QmixError, match=refused), run_lock(run):
            pass
    assert not lock.exists()  # let go and tidied
    with run_lock(run):  # and free again
        pass
    # Another process holding it, as a sweep's second job would find the first.
    script = f"from qmix_cli.io import run_lock\nwith run_lock({str(run)!r}):\n    print(1, flush=True)\n    input()"
    holder = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "1"
        with pytest.raises(QmixError, match=f"pid {holder.pid}"), run_lock(run):
            pass
    finally:
        holder.kill()  # killed, not let go: the system releases its lock
        holder.wait()
    deadline = time.monotonic() + 10
    while True:
        try:
            with run_lock(run):
                break
        except QmixError:
            assert time.monotonic() < deadline
            time.sleep(0.05)


def test_a_new_output_never_replaces_what_another_process_wrote_meanwhile(tmp_path):
    out = tmp_path / "noisy"
    with pytest.raises(QmixError, match="was written by another process meanwhile"), atomic_dir(out) as tmp:
        (tmp / "mine.txt").write_text("mine")
        out.mkdir()  # a concurrent `qmix corrupt --out noisy` finished first
        (out / "theirs.txt").write_text("theirs")
    assert sorted(p.name for p in out.iterdir()) == ["theirs.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["noisy"]  # nothing of ours left behind
    with atomic_dir(out, force=True) as tmp:
        (tmp / "mine.txt").write_text("mine")
    assert sorted(p.name for p in out.iterdir()) == ["mine.txt"]


def _deny_opening(monkeypatch, path, *, flags: int) -> None:
    """`os.open` of ``path`` with any of ``flags`` refused as the file system would refuse this user."""
    real_open = os.open

    def denied(target, given, *args):
        if str(target) == str(path) and given & flags:
            raise PermissionError(13, "Permission denied")
        return real_open(target, given, *args)

    monkeypatch.setattr("qmix_cli.io.os.open", denied)


def test_a_lock_file_that_is_a_link_is_refused_not_written_through(tmp_path):
    """A ``.run.lock`` planted as a link (a run folder unpacked from an archive): taking the lock truncated the file
    it pointed to and wrote a pid in it."""
    victim = tmp_path / "notes.txt"
    victim.write_text("the user's own file")
    (tmp_path / ".run.lock").symlink_to(victim)
    with (
        pytest.raises(QmixError, match=r"\.run\.lock, the run's lock file, is a symbolic link"),
        run_lock(tmp_path / "run"),
    ):
        pass
    assert victim.read_text() == "the user's own file"


def test_a_lock_file_another_user_left_is_used_read_only(tmp_path, monkeypatch):
    run, lock = tmp_path / "run", tmp_path / ".run.lock"
    lock.write_text("")  # left by a run killed under another user's name: not ours to write
    _deny_opening(monkeypatch, lock, flags=os.O_RDWR)
    with run_lock(run), pytest.raises(QmixError, match=r"in use by another qmix process; wait"), run_lock(run):
        pass


def test_a_run_folder_in_a_folder_the_user_cannot_write_says_where_the_lock_goes(tmp_path, monkeypatch):
    """``/scratch/$USER`` made by an admin inside a ``/scratch`` nobody else writes: the run folder exists and is
    the user's, its parent is not. The error said the folder did not exist."""
    run, lock = tmp_path / "me", tmp_path / ".me.lock"
    run.mkdir()
    _deny_opening(monkeypatch, lock, flags=os.O_CREAT)  # the parent is not the user's: no file can be made there
    where = r"cannot create the lock file .*\.me\.lock beside the run folder"
    with pytest.raises(QmixError, match=where) as caught, run_lock(run):
        pass
    assert f"--out {run / 'run'}" in str(caught.value) and "No such file" not in str(caught.value)


def test_a_partial_output_a_killed_process_left_goes_and_one_being_built_stays(tmp_path):
    """``qmix corrupt`` killed with SIGKILL (or by the OOM killer) runs no cleanup: the next output made beside it
    removes its hidden partial folder, but never one a live process is building, however long it has been quiet."""
    import signal
    import subprocess
    import sys

    script = (
        "import sys\nfrom qmix_cli.io import atomic_dir\n"
        f"with atomic_dir({str(tmp_path / 'noisy')!r}) as tmp:\n"
        "    (tmp / 'images').mkdir(); (tmp / 'images' / '0.png').write_bytes(b'x' * 100)\n"
        "    print(tmp, flush=True)\n    input()"
    )
    builders = [
        subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    try:
        killed, live = (Path(b.stdout.readline().strip()) for b in builders)
        builders[0].send_signal(signal.SIGKILL)
        builders[0].wait()
        assert partial_held(live / PARTIAL_LOCK) and not partial_held(killed / PARTIAL_LOCK)
        minutes_ago = time.time() - ABANDONED_PARTIAL_SECONDS - 5
        for partial in (killed, live):
            os.utime(partial, (minutes_ago, minutes_ago))
        other = tmp_path / ".noisy.x.tmp"  # not atomic_dir's name: someone else's, left alone
        other.mkdir()
        os.utime(other, (minutes_ago, minutes_ago))
        with atomic_dir(tmp_path / "noisy") as tmp:
            assert partial_held(tmp / PARTIAL_LOCK)  # while it is built
            (tmp / "done").write_text("")
        assert not killed.exists() and live.is_dir() and other.is_dir()
        assert sorted(p.name for p in (tmp_path / "noisy").iterdir()) == ["done"]  # the lock file stays behind
    finally:
        for b in builders:
            b.kill()
            b.wait()


def test_a_partial_output_without_a_lock_to_test_goes_only_after_a_day(tmp_path):
    """A folder made by an older qmix (no lock file), or one about to be renamed, may still be built: its top-level
    folder does not change while images are written below it, so only a day of quiet says it is abandoned."""
    unheld, unlocked = tmp_path / ".noisy.abcd1234.tmp", tmp_path / ".noisy.efgh5678.tmp"
    for partial in (unheld, unlocked):
        partial.mkdir()
    (unheld / PARTIAL_LOCK).write_bytes(b"")  # its builder was killed
    assert remove_abandoned_partials(tmp_path / "noisy") == []  # a moment old: perhaps not locked yet
    hours_ago = time.time() - 3 * 3600
    for partial in (unheld, unlocked):
        os.utime(partial, (hours_ago, hours_ago))
    assert remove_abandoned_partials(tmp_path / "noisy") == [unheld]
    assert unlocked.is_dir()
    days_ago = time.time() - STALE_PARTIAL_SECONDS - 60
    os.utime(unlocked, (days_ago, days_ago))
    assert remove_abandoned_partials(tmp_path / "noisy") == [unlocked]


def test_a_forced_replacement_is_not_blocked_by_a_leftover_of_an_earlier_one(tmp_path, monkeypatch):
    """The previous output is moved aside under a name of its own: a PID repeats (in containers, always), and an
    earlier replacement killed while it deleted the old copy would otherwise block the rename after a whole build."""
    out = tmp_path / "noisy"
    out.mkdir()
    (out / "old.txt").write_text("old")
    leftover = tmp_path / f".noisy.old-{os.getpid()}"
    leftover.mkdir()
    (leftover / "x").write_text("")
    with atomic_dir(out, force=True) as tmp:
        (tmp / "new.txt").write_text("new")
    assert [p.name for p in out.iterdir()] == ["new.txt"]
