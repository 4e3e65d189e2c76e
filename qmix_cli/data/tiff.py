"""How a TIFF stores its pixels, read from the tags of its first image directory.

Pillow refuses some TIFF layouts that scientific and medical exports use (64-bit or half floats, 64-bit integers,
colour in floats or signed integers) with the same error as a file that is no image at all. Reading the few tags
that say the layout lets the image check name it, and say what Pillow does read. Classic TIFF and BigTIFF, either
byte order; anything else, or a directory that cannot be read, is not a layout.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import BinaryIO

# What Pillow 13 reads (checked layout by layout with files tifffile wrote), said once for a set's refusal.
PILLOW_READS = (
    "Pillow reads TIFFs of one channel of 8-, 16- or 32-bit integers or 32-bit floats, and colour of 8-bit (or "
    "16-bit, read at 8 bits) unsigned integers: save them so"
)
_SAMPLE_FORMATS = {1: "unsigned integer", 2: "signed integer", 3: "floating-point", 6: "complex floating-point"}
_MAX_TAGS = 4096  # a directory claiming more is damaged; the tags that matter come first (they are sorted)
# Numeric field types: type -> (struct format, size). Text and fractions are not needed and skipped.
_FIELD_TYPES = {1: ("B", 1), 3: ("H", 2), 4: ("I", 4), 16: ("Q", 8)}
_WIDTH, _HEIGHT, _BITS, _SAMPLES, _FORMAT = 256, 257, 258, 277, 339
# Sample format -> the bits a sample of it has in files that exist.
_PLAUSIBLE_BITS = {1: range(1, 65), 2: range(1, 65), 3: (16, 24, 32, 64), 6: (32, 64, 128)}
# Sample format -> the bits of one-channel images Pillow 13 reads (unsigned 12-bit as it reads it, little-endian).
_READ_ONE_CHANNEL = {1: (1, 2, 4, 8, 12, 16, 32), 2: (8, 16, 32), 3: (32,)}
# Magic number -> (offset format, entry's tag / type / count format, directory's count format): classic, BigTIFF.
_VARIANTS = {42: ("I", "HHI", "H"), 43: ("Q", "HHQ", "Q")}


@dataclass(frozen=True)
class TiffLayout:
    """``samples`` a pixel of ``bits`` each, of the kind ``sample_format`` says (1 unsigned integer, 2 signed, 3
    float, 6 complex float; TIFF's SampleFormat, 1 when absent)."""

    samples: int
    bits: int
    sample_format: int

    @property
    def plausible(self) -> bool:
        """Whether the tags describe a layout files have, rather than a damaged directory (1-bit floats)."""
        bits = _PLAUSIBLE_BITS.get(self.sample_format, ())
        return 1 <= self.samples <= 16 and self.bits in bits

    @property
    def pillow_reads(self) -> bool:
        """Whether Pillow reads images of this layout, as far as the samples go (so a refusal has another cause:
        compression, colour space). Errs towards yes: a layout it cannot place is not blamed."""
        if self.samples == 1:
            return self.bits in _READ_ONE_CHANNEL.get(self.sample_format, ())
        return self.sample_format == 1 and (self.bits == 8 or (self.bits == 16 and self.samples in (3, 4)))

    def describe(self) -> str:
        """E.g. ``"64-bit floating-point samples"``, ``"3 × 32-bit signed integer samples a pixel"``."""
        kind = _SAMPLE_FORMATS.get(self.sample_format, "unknown-format")
        if self.samples == 1:
            return f"{self.bits}-bit {kind} samples"
        return f"{self.samples} × {self.bits}-bit {kind} samples a pixel"


def tiff_layout(file: BinaryIO) -> TiffLayout | None:
    """The layout of the first image of the TIFF ``file`` (open for binary reading, at its start), or None for a
    file that is not a TIFF or whose first directory cannot be read (cut short, offsets past its end). Reads the
    header and one directory: at most about 80 KB, whatever the file's size."""
    try:
        tags = _first_directory(file)
    except (OSError, ValueError, OverflowError, struct.error):  # offsets past the end, or past what seek takes
        return None
    if tags is None or not {_WIDTH, _HEIGHT} <= set(tags):  # no width and height: not an image's directory
        return None
    return TiffLayout(samples=tags.get(_SAMPLES, 1), bits=tags.get(_BITS, 1), sample_format=tags.get(_FORMAT, 1))


def _first_directory(f: BinaryIO) -> dict[int, int] | None:
    """The first value of each numeric tag of a TIFF's (or BigTIFF's) first image directory, or None if the file
    does not start as a TIFF. A value too large for its entry lies elsewhere, at the offset the entry holds
    (BitsPerSample of a colour image): its first value is read there."""
    head = f.read(16)
    order = {b"II": "<", b"MM": ">"}.get(head[:2])
    if order is None or len(head) < 8:
        return None
    variant = _VARIANTS.get(struct.unpack(order + "H", head[2:4])[0])
    if variant is None:
        return None
    pointer, entry_fmt, count_fmt = variant
    at = 4 if pointer == "I" else 8  # where the first directory's offset lies in the header
    (offset,) = struct.unpack(order + pointer, head[at : at + struct.calcsize(pointer)])
    f.seek(offset)
    (count,) = struct.unpack(order + count_fmt, f.read(struct.calcsize(order + count_fmt)))
    field_at = struct.calcsize(order + entry_fmt)  # where an entry's value (or the offset of its values) starts
    entry_size = field_at + struct.calcsize(pointer)
    n_read = min(count, _MAX_TAGS)
    data = f.read(entry_size * n_read)
    tags: dict[int, int] = {}
    for i in range(n_read):
        entry = data[i * entry_size : (i + 1) * entry_size]  # short when the file is cut: struct.error
        tag, typ, n = struct.unpack(order + entry_fmt, entry[:field_at])
        if typ not in _FIELD_TYPES or n < 1:
            continue
        fmt, size = _FIELD_TYPES[typ]
        field = entry[field_at:]
        if size * n <= len(field):
            tags[tag] = struct.unpack(order + fmt, field[:size])[0]
        else:  # the entries are all read already: the file's position is free to move
            f.seek(struct.unpack(order + pointer, field)[0])
            tags[tag] = struct.unpack(order + fmt, f.read(size))[0]
    return tags
