"""Decoded-image cache: every image decoded once, resized to the training size, stored as a uint8 ``.npy``.

Later epochs (and later runs on the same files) memory-map it instead of decoding again. The key covers each
file's path, size and modification time plus the target size and channels, so an edited image is re-read.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from qmix_cli.data.builtin import default_cache_dir
from qmix_cli.data.images import default_workers, read_image
from qmix_cli.data.manifest import Dataset
from qmix_cli.data.scan_cache import files_digest
from qmix_cli.io import atomic_path

CACHE_VERSION = "1"


def cache_key(paths: Sequence[str | Path], *, size: int, channels: int) -> str:
    return files_digest(paths, salt=f"v{CACHE_VERSION}|{size}|{channels}")


def decode_all(
    paths: Sequence[str | Path],
    *,
    size: int,
    channels: int,
    out: np.ndarray,
    workers: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> None:
    """Decode ``paths`` into ``out`` of shape (N, channels, size, size), uint8, in parallel threads."""

    def work(i: int) -> None:
        out[i] = read_image(paths[i], channels=channels, size=size).transpose(2, 0, 1)

    with ThreadPoolExecutor(max_workers=workers or default_workers()) as pool:
        for _ in pool.map(work, range(len(paths)), chunksize=32):
            if progress:
                progress(1)


# A partial decode older than this was left by a process that was killed (SIGKILL runs no cleanup); a live one
# touches its file as it writes. Decoded arrays run to gigabytes, so they are not left to pile up.
STALE_PARTIAL_SECONDS = 24 * 3600


def _remove_stale_partials(folder: Path) -> None:
    now = time.time()
    for tmp in folder.glob(".*.npy.*.tmp"):
        with contextlib.suppress(OSError):  # another process may clean it up at the same moment
            if now - tmp.stat().st_mtime > STALE_PARTIAL_SECONDS:
                tmp.unlink()


def cached_images(
    dataset: Dataset,
    *,
    size: int,
    channels: int,
    cache_dir: str | Path | None = None,
    workers: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """All images of ``dataset`` as a read-only memory-mapped uint8 array of shape (N, channels, size, size)."""
    paths = dataset.file_paths
    folder = Path(cache_dir or default_cache_dir()) / "decoded"
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{cache_key(paths, size=size, channels=channels)}.npy"
    _remove_stale_partials(folder)
    if not target.is_file():
        with atomic_path(target) as tmp:
            arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(paths), channels, size, size))
            decode_all(paths, size=size, channels=channels, out=arr, workers=workers, progress=progress)
            arr.flush()
            del arr
    return np.load(target, mmap_mode="r")
