"""Decoding and validating images with Pillow.

Every image is decoded fully once during validation: a truncated file often opens fine and only fails when its
pixel data is read, so checking the header alone would let it through to training.

A JPEG that will be shrunk is decoded straight to the smallest of its DCT scales (1/2, 1/4 or 1/8) still at least
the target size (Pillow's ``draft``, as its ``thumbnail`` does): libjpeg still reads every coefficient, so a
truncated or corrupt file fails as before, but skips most of the inverse transform and the resize has less to do.
A first load of 900-1,411-px fundus photographs at 224 px is 2.7 times faster (docs/decisions.md, "Twenty-first
round"). `qmix train --set jpeg_scale=false` decodes them whole, as runs saved before it did.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, TypeVar

import numpy as np
from PIL import Image
from PIL.JpegImagePlugin import JpegImageFile

from qmix_cli.data.tiff import tiff_layout
from qmix_cli.io import finish_despite_interrupts

T = TypeVar("T")

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm"})

# The size a JPEG is decoded for when only its readability is asked (no image kept): its smallest DCT scale, 1/8.
_CHECK_ONLY = 1
# Modes of more than 8 bits a pixel, scaled by each image's own range (`to_array`), all of them grey.
WIDE_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "F"})
# Modes whose pixels carry no colour: they become one-channel images.
GRAY_MODES = frozenset({"1", "L", "LA", *WIDE_MODES})


@dataclass(frozen=True)
class ImageInfo:
    """What a scan learns about one file: ``error`` is None for a good image."""

    error: str | None
    mode: str = ""
    size: tuple[int, int] = (0, 0)
    frames: int = 1  # a multi-page TIFF's pages, an animation's frames: only the first is read
    see_through: bool = False  # some pixel not fully opaque: the colour channels are read, the transparency not
    turned: bool = False  # an EXIF orientation other than upright: read as stored, not as photo viewers show it

    @property
    def is_gray(self) -> bool:
        return self.mode in GRAY_MODES


def _see_through(img: Image.Image) -> bool:
    """Whether a decoded image has a pixel that is not fully opaque (an alpha channel, or a palette's or colour
    key's transparency)."""
    if not img.has_transparency_data:
        return False
    band = next((b for b in ("A", "a") if b in img.getbands()), None)  # "a": premultiplied (RGBa, La)
    alpha = img.getchannel(band) if band else img.convert("RGBA").getchannel("A")
    return alpha.getextrema()[0] < 255


# The EXIF tag saying how a camera held the picture: 2-8 a rotation and/or mirroring to apply; 1 is upright, and
# other values (0, 9, ...) are read as upright by Pillow's `ImageOps.exif_transpose` and by photo viewers.
_ORIENTATION = 0x0112
_TURNED = range(2, 9)


def _extras(img: Image.Image) -> tuple[int, bool, bool]:
    """An image's pages or frames, whether it is see-through and whether its EXIF orientation turns it, for
    `pixel_notes`; (1, False, False) where Pillow cannot tell: a damaged later page, a mode it cannot convert or
    damaged EXIF data must not cost the first page its verdict (Pillow raises TypeError, IndexError, OSError, ...
    for those)."""
    try:
        see_through = _see_through(img)
    except Exception:
        see_through = False
    try:
        turned = img.getexif().get(_ORIENTATION) in _TURNED  # Pillow turns TIFFs upright as it loads them
    except Exception:
        turned = False
    try:  # last: counting the frames of a GIF or a TIFF seeks through the file, past the pixels just read
        frames = getattr(img, "n_frames", 1)
    except Exception:
        frames = 1
    return frames, see_through, turned


# The most decoding threads used by default, however many CPUs there are.
MAX_DEFAULT_WORKERS = 8


def default_workers() -> int:
    """Threads for decoding: Pillow releases the GIL while decoding, so threads scale."""
    return min(MAX_DEFAULT_WORKERS, os.cpu_count() or 1)


@contextlib.contextmanager
def threaded_map(fn: Callable[[int], T], count: int, *, workers: int) -> Iterator[Iterator[T]]:
    """``fn(0)``, ..., ``fn(count - 1)``, in that order, computed by ``workers`` threads; iterate in the block.

    Left early (an error, Ctrl-C, SIGTERM), the calls not yet begun are cancelled and the block ends only once the
    threads have finished the ones they were in, however many more interrupts arrive meanwhile: what the caller
    removes next (a partial output folder) must not have a thread write into it after.
    """
    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        yield pool.map(fn, range(count))
    finally:
        finish_despite_interrupts(lambda: pool.shutdown(wait=True, cancel_futures=True))


def _load(img: Image.Image, size: int | None) -> None:
    """Decode ``img``; a JPEG to be resized to ``size × size`` at its smallest DCT scale still that large."""
    if size is not None and isinstance(img, JpegImageFile):  # MPO (cameras' multi-picture JPEG) too
        img.draft(None, (size, size))  # colour handling unchanged: only the scale
    img.load()


# The environment variable the CLI reads Pillow's pixel limit from (`qmix_cli.cli.common.apply_pixel_limit`).
PIXEL_LIMIT_VARIABLE = "QMIX_MAX_IMAGE_PIXELS"


def too_large(size: tuple[int, int]) -> str | None:
    """Why an image of ``size`` (W, H) is not decoded, or None: more pixels than Pillow's limit
    (``PIL.Image.MAX_IMAGE_PIXELS``, None for no limit), beyond which it warns of a decompression bomb and, at twice
    the limit, refuses. Tested here rather than by turning Pillow's warning into an error: warning filters are the
    process's, and changing them from decoding threads races (one thread restores what another set)."""
    limit = Image.MAX_IMAGE_PIXELS
    pixels = size[0] * size[1]
    if limit is None or pixels <= limit:
        return None
    return _past_limit(f"{size[0]} × {size[1]} = {pixels:,} pixels")


def _past_limit(what: str) -> str:
    limit = Image.MAX_IMAGE_PIXELS
    return (
        f"unreadable ({what}, more than Pillow's limit of {int(limit or 0):,}; to read such images set "
        f"{PIXEL_LIMIT_VARIABLE}, or PIL.Image.MAX_IMAGE_PIXELS in Python)"
    )


def inspect_image(
    path: str | Path, *, keep: Callable[[Image.Image], None] | None = None, size: int | None = None
) -> ImageInfo:
    """Decode one image fully (a JPEG read for ``size``: every coefficient, at its DCT scale) and describe it, or
    say why it cannot be used.

    ``keep``, if given, receives the decoded image of a good file before it is closed (`scan_images` uses it to
    fill the decoded-image cache in the same pass); it must not raise, since any error would count against the
    image. ``size``: the size ``keep`` resizes images to, so a JPEG is decoded as `read_image` decodes it for
    that size (the description keeps the file's own size). Without ``keep`` a JPEG is decoded at 1/8 scale: every
    coefficient is still read, so a truncated or corrupt file fails alike, for a fraction of the work.
    """
    try:
        with open_image_file(path) as file, Image.open(file) as img:
            full_size = img.size  # a JPEG's shrinks with its decoding scale
            if refused := too_large(full_size):
                return ImageInfo(error=refused)
            _load(img, size if keep is not None else _CHECK_ONLY)
            if keep is not None:
                keep(img)
            frames, see_through, turned = _extras(img)
            return ImageInfo(
                error=None, mode=img.mode, size=full_size, frames=frames, see_through=see_through, turned=turned
            )
    except Image.DecompressionBombError as e:  # twice the limit or more: Pillow refuses to open it at all
        pixels = re.search(r"\((\d+) pixels\)", str(e))
        return ImageInfo(error=_past_limit(f"{int(pixels[1]):,} pixels" if pixels else str(e)))
    except NotAFile:
        return ImageInfo(error="not a regular file (a pipe or a device)")
    except FileNotFoundError:
        return ImageInfo(error="file not found")
    except IsADirectoryError:
        return ImageInfo(error="is a directory")
    except Image.UnidentifiedImageError:
        empty = _size(path) == 0  # a copy or download that never finished
        return ImageInfo(error="empty file (0 bytes)" if empty else unreadable_reason(path))
    except (
        OSError,
        SyntaxError,
        ValueError,
    ) as e:
        # Pillow reports truncated and corrupt data as OSError ("image file is truncated", "broken PNG file").
        return ImageInfo(error=f"unreadable ({e})")


class NotAFile(Exception):
    """A path that names a pipe or a device, not an image file."""


def open_image_file(path: str | Path) -> BinaryIO:
    """``path`` opened for reading without waiting: an ordinary open of a pipe (listed as an image by a manifest or
    a report) waits for a writer that never comes. A pipe or a device raises `NotAFile`, a folder
    `IsADirectoryError`. Told by the open file's own status, so that a check costs no second look-up by name (a
    stat per file is what a network file system charges for)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))  # no effect on a regular file's reads
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, "is a directory", str(path))
        raise NotAFile(str(path))
    return os.fdopen(fd, "rb")


# The reason for a file Pillow cannot identify, and how the reason begins when it names a TIFF's layout.
NOT_AN_IMAGE = "not an image Pillow can read"
UNREADABLE_TIFF = "a TIFF of "


def unreadable_reason(path: str | Path) -> str:
    """Why Pillow cannot read the file at ``path``, which it could not identify: the layout of a TIFF it does not
    read ("a TIFF of 64-bit floating-point samples, which Pillow cannot read"), "a TIFF Pillow cannot read" for one
    refused for another cause (compression, colour space, a damaged directory), else `NOT_AN_IMAGE`. Opened as
    `open_image_file` opens images, so a pipe named as one is not waited on."""
    try:
        with open_image_file(path) as file:
            layout = tiff_layout(file)
    except (OSError, NotAFile):
        return NOT_AN_IMAGE
    if layout is None:
        return NOT_AN_IMAGE
    if layout.plausible and not layout.pillow_reads:
        return f"{UNREADABLE_TIFF}{layout.describe()}, which Pillow cannot read"
    return "a TIFF Pillow cannot read"


def _size(path: str | Path) -> int | None:
    try:
        return os.path.getsize(path)
    except OSError:
        return None


def to_array(img: Image.Image, *, channels: int) -> np.ndarray:
    """Convert a Pillow image to uint8 ``(H, W, channels)``, channels in {1, 3}."""
    if img.mode in WIDE_MODES:
        # 16-bit and float images (common in medical imaging) are rescaled by their own range, not clipped. A float
        # map's NaN or infinite pixels (masked or outside the scan) take its lowest value rather than blanking it.
        arr = np.asarray(img, dtype=np.float64)
        finite = np.isfinite(arr)
        lo, hi = (float(arr[finite].min()), float(arr[finite].max())) if finite.any() else (0.0, 0.0)
        arr = np.where(finite, arr, lo)
        arr = np.zeros_like(arr) if hi <= lo else (arr - lo) / (hi - lo) * 255.0
        img = Image.fromarray(arr.round().astype(np.uint8), mode="L")
    target = "L" if channels == 1 else "RGB"
    if img.mode != target:
        img = img.convert(target)
    arr = np.asarray(img, dtype=np.uint8)
    return arr[:, :, None] if arr.ndim == 2 else arr


def native_array(img: Image.Image) -> np.ndarray:
    """A Pillow image as uint8 ``(H, W)`` when its mode carries no colour, else ``(H, W, 3)``, as Pillow's own
    arrays are shaped (`to_array`: 16-bit and float images rescaled by their own range)."""
    gray = img.mode in GRAY_MODES
    arr = to_array(img, channels=1 if gray else 3)
    return arr[:, :, 0] if gray else arr


def fit_image(img: Image.Image, *, channels: int, size: int | None = None) -> np.ndarray:
    """A decoded image as uint8 ``(H, W, channels)``, optionally resized to ``size × size`` (bilinear)."""
    if size is not None and img.size != (size, size):
        if img.mode not in {"L", "RGB"}:
            img = Image.fromarray(to_array(img, channels=channels).squeeze(-1 if channels == 1 else None))
        img = img.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=3.0)
    return to_array(img, channels=channels)


def read_image(path: str | Path, *, channels: int, size: int | None = None, jpeg_scale: bool = True) -> np.ndarray:
    """Decode an image to uint8 ``(H, W, channels)``, optionally resized to ``size × size`` (bilinear; a JPEG
    decoded at its smallest DCT scale still that large, or whole with ``jpeg_scale`` False)."""
    with Image.open(path) as img:
        _load(img, size if jpeg_scale else None)
        return fit_image(img, channels=channels, size=size)


def scan_images(
    paths: Sequence[str | Path],
    *,
    workers: int | None = None,
    progress: Callable[[int], None] | None = None,
    keep: Callable[[int, Image.Image], None] | None = None,
    size: int | None = None,
) -> list[ImageInfo]:
    """Inspect every image in parallel threads; results are in the order of ``paths``.

    ``keep(i, image)``, if given, receives each good image, decoded, with its index in ``paths`` (called from the
    decoding threads, so it must be safe to call from several at once), decoded for ``size`` (`inspect_image`).
    """

    def inspect(i: int) -> ImageInfo:
        return inspect_image(paths[i], keep=None if keep is None else lambda img: keep(i, img), size=size)

    workers = workers or default_workers()
    if workers <= 1 or len(paths) < 64:
        out = []
        for i in range(len(paths)):
            out.append(inspect(i))
            if progress:
                progress(1)
        return out
    results: list[ImageInfo] = []
    with threaded_map(inspect, len(paths), workers=workers) as infos:
        for info in infos:
            results.append(info)
            if progress:
                progress(1)
    return results
