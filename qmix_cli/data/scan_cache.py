"""Remembering image checks, so that unchanged files are not decoded again only to be validated.

`create_dataset` decodes every image to prove it readable. Training, auditing and the benchmarks load the same
files again and again; a check of a file set whose paths, sizes and modification times are unchanged would give
the same answer, so its result is stored next to the decoded-image cache and reused. Any edited, added, removed
or missing file changes the key, and the files are checked again.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from PIL import Image

from qmix_cli.data.images import NOT_AN_IMAGE, ImageInfo, unreadable_reason
from qmix_cli.errors import QmixError
from qmix_cli.io import atomic_write_text

SCAN_CACHE_VERSION = "4"  # 3: frames and transparency recorded; 4: EXIF orientation


def file_stats(paths: Sequence[str | Path]) -> list[tuple[int, int]]:
    """Each file's size and modification time in nanoseconds: what `files_digest` keys on.

    Raises `OSError` when a file cannot be stat'ed (missing, no permission).
    """
    out = []
    for p in paths:
        st = os.stat(p)
        out.append((st.st_size, st.st_mtime_ns))
    return out


def files_digest(paths: Sequence[str | Path], *, salt: str = "", stats: Sequence[tuple[int, int]] | None = None) -> str:
    """A digest of each file's absolute path, size and modification time (in order), plus ``salt``.

    ``stats`` are the files' `file_stats` when they were read earlier (by default they are read now). Raises
    `OSError` when a file cannot be stat'ed (missing, no permission).
    """
    if stats is None:
        stats = file_stats(paths)
    parts = [salt]
    for p, (size, mtime_ns) in zip(paths, stats, strict=True):
        p = os.fspath(p)
        parts.append(f"|{p if os.path.isabs(p) else os.path.abspath(p)}|{size}|{mtime_ns}")
    return hashlib.sha256("".join(parts).encode()).hexdigest()[:24]


def cached_scan(
    paths: Sequence[str | Path],
    *,
    cache_dir: Path,
    scan: Callable[[Sequence[str | Path]], list[ImageInfo]],
    stats: Sequence[tuple[int, int]] | None = None,
) -> list[ImageInfo]:
    """``scan(paths)``, or its stored result when the same unchanged files were scanned before.

    ``stats`` are the files' `file_stats` where the caller has just read them (by default they are read here).
    Only complete results over files that all exist are stored: a missing file is always reported afresh.
    """
    try:
        # Pillow's pixel limit decides a verdict too: raised, it must let the images it refused be checked again.
        salt = f"scan-v{SCAN_CACHE_VERSION}|pixels<={Image.MAX_IMAGE_PIXELS}"
        key = files_digest(paths, salt=salt, stats=stats)
    except OSError:
        return scan(paths)
    target = cache_dir / "checked" / f"{key}.json"
    stored = _read(target, len(paths))
    if stored is not None:
        return _reasons_renewed(stored, paths)
    infos = scan(paths)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(target, json.dumps(_runs(infos), separators=(",", ":")))
    except (OSError, QmixError):
        pass  # a read-only cache only costs the next run a re-check
    return infos


def _reasons_renewed(infos: list[ImageInfo], paths: Sequence[str | Path]) -> list[ImageInfo]:
    """Remembered checks with the reasons a check gives today where they were worded otherwise before: a TIFF
    remembered as "not an image" has its layout named (a header read each), rather than every remembered check being
    thrown away by a new `SCAN_CACHE_VERSION` for them. Other files that are no image, a folder of which may hold
    thousands, are not opened again."""
    return [
        replace(info, error=unreadable_reason(path))
        if info.error == NOT_AN_IMAGE and os.fspath(path).lower().endswith((".tif", ".tiff"))
        else info
        for info, path in zip(infos, paths, strict=True)
    ]


def _runs(infos: list[ImageInfo]) -> list[list]:
    """Run-length encoding: ``[error, mode, width, height, frames, see_through, turned, count]`` per run of
    identical results.

    A dataset of same-sized images of one mode is one run, so a 100k-image record stays a few bytes.
    """
    runs: list[list] = []
    for info in infos:
        size, extras = [int(info.size[0]), int(info.size[1])], [int(info.frames), info.see_through, info.turned]
        key = [info.error, info.mode, *size, *extras]
        if runs and runs[-1][:-1] == key:
            runs[-1][-1] += 1
        else:
            runs.append([*key, 1])
    return runs


def _read(target: Path, n: int) -> list[ImageInfo] | None:
    try:
        runs = json.loads(target.read_text(encoding="utf-8"))
        infos: list[ImageInfo] = []
        for error, mode, width, height, frames, see_through, turned, count in runs:
            info = ImageInfo(
                error=error,
                mode=mode,
                size=(int(width), int(height)),
                frames=int(frames),
                see_through=bool(see_through),
                turned=bool(turned),
            )
            infos.extend([info] * int(count))
    except (OSError, ValueError, TypeError):
        return None
    return infos if len(infos) == n else None
