"""Decoded-image cache: every image decoded once, resized to the training size, stored as a uint8 ``.npy``.

Later epochs (and later runs on the same files) memory-map it instead of decoding again. The key covers each
file's path, size and modification time plus the target size, channels and JPEG decoding rule, so an edited image
is re-read (by the next dataset made: one made with ``decode_to`` reads its files as its check found them).

A dataset whose images are checked for the first time can fill the cache in the same pass (`CacheFill`, through
``create_dataset(decode_to=...)``): every image is then decoded once, not once to check it and again to cache it.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from qmix_cli.data.builtin import cache_root
from qmix_cli.data.images import GRAY_MODES, default_workers, fit_image, read_image, threaded_map
from qmix_cli.data.scan_cache import files_digest
from qmix_cli.errors import NoSpaceError, QmixError, UnwritableError, count_of
from qmix_cli.io import (
    ABANDONED_PARTIAL_SECONDS,
    STALE_PARTIAL_SECONDS,
    atomic_path,
    hold_partial,
    holding_partial,
    partial_held,
    reserve_space,
)

if TYPE_CHECKING:  # manifest.py imports this module when it checks images
    from qmix_cli.data.manifest import Dataset

CACHE_VERSION = "1"
# Rows copied at once when skipped images leave a subset to store (about 150 MB at 224 px RGB).
_COPY_ROWS = 1024


def cache_key(
    paths: Sequence[str | Path],
    *,
    size: int,
    channels: int,
    stats: Sequence[tuple[int, int]] | None = None,
    jpeg_scale: bool = True,
) -> str:
    """The cache file's name for ``paths`` decoded at ``size`` and ``channels`` (``stats``: see `files_digest`;
    ``jpeg_scale``: see `read_image`; whole decodes keep the names they had before that option)."""
    rule = "|dct" if jpeg_scale else ""
    return files_digest(paths, salt=f"v{CACHE_VERSION}|{size}|{channels}{rule}", stats=stats)


def _decoded_folder(cache_dir: str | Path | None) -> Path:
    return cache_root(cache_dir) / "decoded"


def _cache_file(
    folder: Path, paths: Sequence[str | Path], stats: Sequence | None, *, size: int, channels: int, jpeg_scale: bool
) -> Path:
    """Where ``folder`` holds (or would hold) ``paths`` decoded so (see `cache_key`)."""
    return folder / f"{cache_key(paths, size=size, channels=channels, stats=stats, jpeg_scale=jpeg_scale)}.npy"


def decode_all(
    paths: Sequence[str | Path],
    *,
    size: int,
    channels: int,
    out: np.ndarray,
    workers: int | None = None,
    progress: Callable[[int], None] | None = None,
    jpeg_scale: bool = True,
) -> None:
    """Decode ``paths`` into ``out`` of shape (N, channels, size, size), uint8, in parallel threads."""

    def work(i: int) -> None:
        out[i] = read_image(paths[i], channels=channels, size=size, jpeg_scale=jpeg_scale).transpose(2, 0, 1)

    with threaded_map(work, len(paths), workers=workers or default_workers()) as done:
        for _ in done:
            if progress:
                progress(1)


def _remove_stale_partials(folder: Path) -> None:
    """Remove the partial decodes in ``folder`` that killed processes left (decoded arrays run to gigabytes): held by
    no process and quiet for a minute, or untouched for a day (a live writer touches its file as it writes)."""
    now = time.time()
    for tmp in folder.glob(".*.npy.*.tmp"):
        with contextlib.suppress(OSError):  # another process may clean it up at the same moment
            quiet = now - tmp.stat().st_mtime
            if quiet > STALE_PARTIAL_SECONDS or (quiet > ABANDONED_PARTIAL_SECONDS and not partial_held(tmp)):
                tmp.unlink()


def _new_rows(path: Path, shape: tuple[int, ...]) -> np.memmap:
    """A writable uint8 ``.npy`` memory map of ``shape`` at ``path``, its disk space reserved first
    (`reserve_space`: a memory map written on a full disk would otherwise kill the process without a word)."""
    rows = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=shape)
    try:
        reserve_space(path)
    except BaseException:
        del rows  # unmapped, so that the caller can remove the file
        raise
    return rows


def cached_images(
    dataset: Dataset,
    *,
    size: int,
    channels: int,
    cache_dir: str | Path | None = None,
    workers: int | None = None,
    progress: Callable[[int], None] | None = None,
    jpeg_scale: bool = True,
) -> np.ndarray:
    """All images of ``dataset`` as a read-only memory-mapped uint8 array of shape (N, channels, size, size).

    Where the dataset kept its files' `Dataset.file_stats` (``create_dataset(decode_to=...)``), the cache is looked
    up under them without stat'ing every file again: the images its check filled in are the ones checked. Anything
    decoded here is stored under the files as they are now, since that is what is read. ``jpeg_scale`` False
    decodes JPEGs whole, as runs trained before DCT-scale decoding read them (`read_image`).
    """
    paths = dataset.file_paths
    kept = dataset.file_stats
    folder = _decoded_folder(cache_dir)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _unwritable(folder, e.strerror or str(e)) from None
    _remove_stale_partials(folder)
    decoded = {"size": size, "channels": channels, "jpeg_scale": jpeg_scale}
    # The kept stats fit the paths unless the caller edited ``dataset.frame`` since: then they are not used.
    shape = (len(paths), channels, size, size)
    if kept is not None and len(kept) == len(paths):
        found = _open_cache(_cache_file(folder, paths, kept.tolist(), **decoded), shape)
        if found is not None:
            return _done(found, progress)
    target = _cache_file(folder, paths, None, **decoded)
    found = _open_cache(target, shape)
    if found is not None:
        return _done(found, progress)
    try:
        _decode_to(target, dataset, shape, workers=workers, progress=progress, jpeg_scale=jpeg_scale)
    except UnwritableError as e:  # a cache folder another user made read-only
        raise _unwritable(folder, e.reason) from None
    return np.load(target, mmap_mode="r")


def _done(images: np.ndarray, progress: Callable[[int], None] | None) -> np.ndarray:
    """``images`` found decoded in the cache, with ``progress`` told they all are: a bar made for the decoding
    otherwise stays at 0 % for the rest of the command, and looks stuck in its longest silent phase."""
    if progress is not None:
        progress(len(images))
    return images


def _decode_to(
    target: Path,
    dataset: Dataset,
    shape: tuple[int, ...],
    *,
    workers: int | None,
    progress: Callable[[int], None] | None,
    jpeg_scale: bool,
) -> None:
    """Decode ``dataset``'s images into a new cache file at ``target`` (published whole, or not at all)."""
    paths, (_, channels, size, _) = dataset.file_paths, shape
    with atomic_path(target) as tmp, holding_partial(tmp):
        try:
            arr = _new_rows(tmp, shape)
        except NoSpaceError as e:
            raise NoSpaceError(
                f"no disk space for the decoded images of {dataset.source or 'the dataset'} ({len(paths):,} at "
                f"{size} px, {count_of(channels, 'channel')}): {e}; free some space or point "
                "--cache-dir (or QMIX_CACHE_DIR) at a larger disk"
            ) from None
        decode_all(
            paths, size=size, channels=channels, out=arr, workers=workers, progress=progress, jpeg_scale=jpeg_scale
        )
        arr.flush()
        del arr


def _unwritable(folder: Path, reason: str) -> QmixError:
    """The one line for a cache folder that cannot be written: what to point elsewhere."""
    return QmixError(
        f"cannot write the decoded-image cache in {folder} ({reason}); point --cache-dir (or QMIX_CACHE_DIR) at a "
        "folder you can write"
    )


def _open_cache(path: Path, shape: tuple[int, ...]) -> np.ndarray | None:
    """The cache file at ``path`` memory-mapped, or None where there is none. One that cannot be read whole (cut
    short by a full disk or a copy, say: the rename that publishes it is atomic, what happens later is not) is
    removed, so that it is decoded again instead of failing every run that reads it."""
    if not path.is_file():
        return None
    try:
        arr = np.load(path, mmap_mode="r")
        if arr.shape == shape and arr.dtype == np.uint8:
            return arr
    except (OSError, ValueError):
        pass
    with contextlib.suppress(OSError):  # in a read-only cache it stays; decoding anew then says where to write
        path.unlink(missing_ok=True)
    return None


@dataclass(frozen=True)
class DecodeTarget:
    """The size images are decoded to for the cache, and their channels: 1 or 3, or None for what
    ``channels: auto`` makes of the dataset (1 when every image is grayscale, else 3); ``jpeg_scale`` False decodes
    JPEGs whole (`qmix_cli.data.images.read_image`)."""

    size: int
    channels: int | None = None
    jpeg_scale: bool = True

    @property
    def jpeg_draft(self) -> int | None:
        """The size a JPEG is decoded for (`qmix_cli.data.images.read_image`): ``size``, or None for whole."""
        return self.size if self.jpeg_scale else None


class CacheFill:
    """The decoded-image cache filled while a dataset's images are checked.

    `create_dataset` proves every image readable by decoding it; `cached_images` decodes it again at the run's
    size. Told that size and channels, the check hands each decoded image to `put` and `finish` stores the good
    rows where `cached_images` will look for them. The key is that of the files as the check stat'ed them, *before*
    they were decoded: a file edited meanwhile is decoded again by the next run.

    With ``channels`` None (``channels: auto``) the first image put decides: a grey one keeps one channel (a
    colour image after it abandons the fill: the dataset will be read in colour), a colour one three (grey images
    after it are stored as three equal channels, as the dataset will be read). Only the few datasets that mix
    both, grey first, are decoded again.

    The fill is a shortcut and never changes what the check says: an image it cannot convert or a cache it cannot
    write abandon it, and `cached_images` decodes the dataset as before.
    """

    def __init__(
        self, paths: Sequence[str], target: DecodeTarget, folder: Path, stats: Sequence[tuple[int, int]]
    ) -> None:
        self.paths = paths
        self.target = target
        self.channels = target.channels or 1
        self.folder = folder
        self.stats = stats
        folder.mkdir(parents=True, exist_ok=True)
        # Named like `atomic_path`'s partials, so that one left by a killed process is cleaned up alike.
        fd, name = tempfile.mkstemp(prefix=".fill.npy.", suffix=".tmp", dir=folder)
        hold_partial(fd)  # kept open, and held, until `close`
        self._lock_fd: int | None = fd
        self.tmp = Path(name)
        self.rows: np.memmap | None = None
        self.abandoned = False
        self._deciding = threading.Lock()
        if target.channels is not None:
            try:
                self._allocate()
            except BaseException:
                self.tmp.unlink(missing_ok=True)  # e.g. a file system that cannot hold a file that large
                os.close(fd)
                raise
        self._decided = target.channels is not None  # with ``channels: auto``, once the first image is put

    def _allocate(self) -> None:
        shape = (len(self.paths), self.channels, self.target.size, self.target.size)
        self.rows = _new_rows(self.tmp, shape)

    def _decide(self, img: Image.Image) -> None:
        """With ``channels: auto``, the channels of the first image put, and the rows at them (under a lock: the
        first of the checking threads decides, the others wait for it)."""
        with self._deciding:
            if self._decided:
                return
            self.channels = 1 if img.mode in GRAY_MODES else 3
            try:
                self._allocate()
            except (OSError, NoSpaceError):
                self.abandoned = True
            self._decided = True

    @classmethod
    def start(
        cls,
        paths: Sequence[str],
        stats: Sequence[tuple[int, int]],
        target: DecodeTarget,
        *,
        cache_dir: str | Path | None,
    ) -> CacheFill | None:
        """A fill for ``paths``, whose `file_stats` were read before any of them was decoded, or None where there
        is nothing to fill: the cache already holds them or cannot be written (`cached_images` will say)."""
        folder = _decoded_folder(cache_dir)
        try:
            for channels in [target.channels] if target.channels else [1, 3]:
                if _cache_file(
                    folder, paths, stats, size=target.size, channels=channels, jpeg_scale=target.jpeg_scale
                ).is_file():
                    return None
            return cls(paths, target, folder, stats)
        except (OSError, NoSpaceError):
            return None

    def put(self, i: int, img: Image.Image) -> None:
        """Keep image ``i`` of the paths, decoded (called from the checking threads; rows are disjoint). Never
        raises: the check, not the fill, says whether an image is usable."""
        if not self._decided:
            self._decide(img)
        if self.abandoned:
            return
        if self.channels == 1 and self.target.channels is None and img.mode not in GRAY_MODES:
            self.abandoned = True  # grey first, then colour: the dataset will be read in three channels
            return
        try:
            self.rows[i] = fit_image(img, channels=self.channels, size=self.target.size).transpose(2, 0, 1)
        except Exception:  # e.g. a mode Pillow cannot convert: cached_images will report it for what it is
            self.abandoned = True

    def finish(self, good: np.ndarray) -> None:
        """Store rows ``good`` (N,) bool, the images the dataset keeps, as the cache of their paths; a cache that
        cannot be written is left to `cached_images`."""
        if self.abandoned or self.rows is None:
            return
        keep = np.flatnonzero(good)
        paths = [self.paths[i] for i in keep]
        stats = [self.stats[i] for i in keep]
        target = _cache_file(
            self.folder, paths, stats, size=self.target.size, channels=self.channels, jpeg_scale=self.target.jpeg_scale
        )
        if target.is_file() or not len(keep):
            return
        rows, self.rows = self.rows, None
        rows.flush()
        try:
            with atomic_path(target) as tmp:
                if len(keep) == len(self.paths):
                    del rows  # unmapped before its file is renamed (Windows refuses to rename a mapped file)
                    os.replace(self.tmp, tmp)
                else:
                    out = _new_rows(tmp, (len(keep), *rows.shape[1:]))
                    for s in range(0, len(keep), _COPY_ROWS):  # a chunk at a time: the rows may not fit in memory
                        out[s : s + _COPY_ROWS] = rows[keep[s : s + _COPY_ROWS]]
                    out.flush()
                    del out
        except (OSError, QmixError):  # no space, no permission: the fill was a shortcut, `cached_images` will say
            pass

    def close(self) -> None:
        """Drop the partial file (what `finish` did not move into the cache)."""
        self.rows = None  # unmaps it
        self.tmp.unlink(missing_ok=True)
        if self._lock_fd is not None:
            fd, self._lock_fd = self._lock_fd, None  # closed once: a second close could hit a reused descriptor
            os.close(fd)
