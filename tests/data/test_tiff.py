"""TIFF layouts read from their tags: named where Pillow refuses them, and the refusal of a set saying what it reads."""

from __future__ import annotations

import io
import os
import struct
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import qmix_cli.data.images as images
from qmix_cli.data import manifest, scan_cache
from qmix_cli.data.images import NOT_AN_IMAGE, inspect_image, unreadable_reason
from qmix_cli.data.manifest import create_dataset
from qmix_cli.data.tiff import PILLOW_READS, TiffLayout, tiff_layout
from qmix_cli.errors import QmixError


def write_tiff(
    path: Path, pixels: np.ndarray, *, order: str = "<", sample_format: bool = True, bits: int | None = None
) -> Path:
    """A one-strip, uncompressed TIFF of ``pixels`` ((H, W) or (H, W, samples)), written tag by tag so that any
    sample type can be stored, whatever Pillow or another library would write. ``sample_format=False`` leaves
    SampleFormat out, as many writers of unsigned integers do; ``bits`` 1, 2 or 4 packs one-channel uint8 pixels
    that many bits each, rows starting on a byte."""
    height, width = pixels.shape[:2]
    samples = 1 if pixels.ndim == 2 else pixels.shape[2]
    if bits is None:
        bits = pixels.dtype.itemsize * 8
        data = pixels.astype(pixels.dtype.newbyteorder(order)).tobytes()
    else:
        data = _packed(pixels, bits)
    alpha = samples in (2, 4)  # grey or RGB with an alpha channel, said by ExtraSamples
    tags = 9 + alpha + sample_format
    extra_at = 8 + 2 + 12 * tags + 4  # after the directory: BitsPerSample when it does not fit its entry
    apart = 2 * samples > 4
    inline = ([bits] * samples + [0])[:2]
    bits_field = struct.pack(order + "I", extra_at) if apart else struct.pack(order + "HH", *inline)
    pixels_at = extra_at + (2 * samples if apart else 0)
    entries = [
        (256, 4, 1, struct.pack(order + "I", width)),
        (257, 4, 1, struct.pack(order + "I", height)),
        (258, 3, samples, bits_field),
        (259, 3, 1, struct.pack(order + "HH", 1, 0)),  # no compression
        (262, 3, 1, struct.pack(order + "HH", 2 if samples >= 3 else 1, 0)),  # RGB, or black is zero
        (273, 4, 1, struct.pack(order + "I", pixels_at)),
        (277, 3, 1, struct.pack(order + "HH", samples, 0)),
        (278, 4, 1, struct.pack(order + "I", height)),
        (279, 4, 1, struct.pack(order + "I", len(data))),
    ]
    if alpha:
        entries.append((338, 3, 1, struct.pack(order + "HH", 2, 0)))  # unassociated alpha
    if sample_format:
        entries.append((339, 3, 1, struct.pack(order + "HH", {"u": 1, "i": 2, "f": 3}[pixels.dtype.kind], 0)))
    out = (b"II" if order == "<" else b"MM") + struct.pack(order + "HI", 42, 8) + struct.pack(order + "H", tags)
    out += b"".join(struct.pack(order + "HHI", tag, typ, n) + value for tag, typ, n, value in entries)
    out += struct.pack(order + "I", 0)
    if apart:
        out += struct.pack(order + "H" * samples, *[bits] * samples)
    path.write_bytes(out + data)
    return path


def _packed(pixels: np.ndarray, bits: int) -> bytes:
    """(H, W) uint8 values below ``2 ** bits``, ``8 // bits`` to a byte, the first in the high bits."""
    per_byte = 8 // bits
    padded = np.pad(pixels, ((0, 0), (0, (-pixels.shape[1]) % per_byte))).reshape(pixels.shape[0], -1, per_byte)
    shifts = (np.arange(per_byte)[::-1] * bits).astype(np.uint8)
    return (padded.astype(np.uint8) << shifts).sum(axis=2).astype(np.uint8).tobytes()


def layout_of(path: Path) -> TiffLayout | None:
    with open(path, "rb") as f:
        return tiff_layout(f)


@pytest.mark.parametrize(
    ("dtype", "samples", "order", "named"),
    [
        ("float64", 1, "<", "64-bit floating-point samples"),
        ("float64", 1, ">", "64-bit floating-point samples"),
        ("float16", 1, "<", "16-bit floating-point samples"),
        ("float32", 3, "<", "3 × 32-bit floating-point samples a pixel"),
        ("int16", 3, ">", "3 × 16-bit signed integer samples a pixel"),
        ("uint64", 1, ">", "64-bit unsigned integer samples"),
    ],
)
def test_a_tiff_pillow_cannot_read_is_named_by_how_it_stores_its_pixels(tmp_path, dtype, samples, order, named):
    shape = (6, 5) if samples == 1 else (6, 5, samples)
    path = write_tiff(tmp_path / "scan.tif", np.linspace(0, 1, 30 * samples).reshape(shape).astype(dtype), order=order)
    assert layout_of(path).describe() == named
    assert inspect_image(path).error == f"a TIFF of {named}, which Pillow cannot read"


@pytest.mark.parametrize("samples", [1, 2, 3, 4])
@pytest.mark.parametrize("dtype", ["uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "float16",
                                   "float32", "float64"])  # fmt: skip
def test_what_the_layout_says_pillow_reads_is_what_pillow_reads(tmp_path, dtype, samples):
    # The same writer for every layout, so a refusal is the layout's: Pillow's own answer, file by file, against
    # the rule that decides whether a refusal names the layout.
    shape = (6, 5) if samples == 1 else (6, 5, samples)
    path = write_tiff(tmp_path / "scan.tif", (np.arange(30 * samples) % 100).reshape(shape).astype(dtype))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reads = inspect_image(path).error is None
    assert layout_of(path).pillow_reads == reads


@pytest.mark.parametrize("bits", [1, 2, 4])
def test_greyscale_of_fewer_bits_than_a_byte_is_read_and_not_blamed(tmp_path, bits):
    values = (np.arange(30).reshape(6, 5) % (2**bits)).astype(np.uint8)
    path = write_tiff(tmp_path / "scan.tif", values, bits=bits, sample_format=False)
    assert layout_of(path) == TiffLayout(samples=1, bits=bits, sample_format=1)
    assert layout_of(path).pillow_reads
    assert inspect_image(path).error is None


def test_a_directory_without_bits_per_sample_is_one_bit(tmp_path):
    # BitsPerSample defaults to 1 (a bilevel scan often leaves it out), SamplesPerPixel to 1.
    raw = bytearray(write_tiff(tmp_path / "whole.tif", np.zeros((4, 4), dtype=np.uint8)).read_bytes())
    at = raw.find(struct.pack("<HHI", 258, 3, 1))
    raw[at : at + 2] = struct.pack("<H", 65000)  # the tag renamed: a private one, ignored
    path = tmp_path / "bilevel.tif"
    path.write_bytes(bytes(raw))
    assert layout_of(path) == TiffLayout(samples=1, bits=1, sample_format=1)


def test_a_directory_without_width_or_height_is_no_image(tmp_path):
    raw = bytearray(write_tiff(tmp_path / "whole.tif", np.zeros((4, 4), dtype=np.float64)).read_bytes())
    at = raw.find(struct.pack("<HHI", 257, 4, 1))
    raw[at : at + 2] = struct.pack("<H", 65000)
    path = tmp_path / "no-height.tif"
    path.write_bytes(bytes(raw))
    assert layout_of(path) is None


@pytest.mark.parametrize(
    ("layout", "plausible"),
    [
        (TiffLayout(samples=1, bits=64, sample_format=3), True),
        (TiffLayout(samples=1, bits=24, sample_format=3), True),
        (TiffLayout(samples=1, bits=1, sample_format=3), False),  # no file has 1-bit floats: a damaged directory
        (TiffLayout(samples=1, bits=12, sample_format=6), False),
        (TiffLayout(samples=40, bits=8, sample_format=1), False),
        (TiffLayout(samples=1, bits=8, sample_format=5), False),  # no such sample format
    ],
)
def test_only_layouts_files_have_are_named(layout, plausible):
    assert layout.plausible == plausible


def test_a_missing_file_or_a_folder_is_no_tiff(tmp_path):
    assert unreadable_reason(tmp_path / "gone.tif") == NOT_AN_IMAGE
    assert unreadable_reason(tmp_path) == NOT_AN_IMAGE


def test_a_tiff_without_sample_format_holds_unsigned_integers(tmp_path):
    path = write_tiff(tmp_path / "scan.tif", np.zeros((4, 4), dtype=np.uint64), sample_format=False)
    assert layout_of(path) == TiffLayout(samples=1, bits=64, sample_format=1)
    assert inspect_image(path).error == "a TIFF of 64-bit unsigned integer samples, which Pillow cannot read"


def test_a_tiff_refused_for_another_cause_than_its_layout_is_not_blamed_on_it(tmp_path):
    # Bits no image has (a damaged directory): a TIFF, but no layout to name, nor advice to save it so.
    raw = bytearray(write_tiff(tmp_path / "whole.tif", np.zeros((4, 4), dtype=np.uint8)).read_bytes())
    at = raw.find(struct.pack("<HHI", 258, 3, 1))
    raw[at + 8 : at + 10] = struct.pack("<H", 0)
    damaged = tmp_path / "damaged.tif"
    damaged.write_bytes(bytes(raw))
    assert not layout_of(damaged).plausible
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert inspect_image(damaged).error == "a TIFF Pillow cannot read"


@pytest.mark.filterwarnings("ignore:Corrupt EXIF")  # Pillow on the cut directory, which it reads as damaged EXIF
def test_a_file_that_is_no_tiff_or_stops_in_its_directory_is_not_named_one(tmp_path):
    other = tmp_path / "notes.tif"
    other.write_bytes(b"not an image at all")
    whole = write_tiff(tmp_path / "whole.tif", np.zeros((4, 4))).read_bytes()
    cut = tmp_path / "cut.tif"
    cut.write_bytes(whole[:40])  # the directory's first entries only: no sample layout read
    header = tmp_path / "header.tif"
    header.write_bytes(whole[:3])
    for path in (other, cut, header):
        assert layout_of(path) is None
        assert inspect_image(path).error == NOT_AN_IMAGE


@pytest.mark.parametrize(
    "head",
    [
        b"II+\x00\x08\x00\x00\x00" + struct.pack("<Q", 2**64 - 1),  # BigTIFF: the directory past any seek
        b"II+\x00\x08\x00\x00\x00" + struct.pack("<QQ", 16, 2**64 - 1),  # a count no file holds
        b"II+\x00\x08\x00\x00\x00" + struct.pack("<QQ", 16, 2**36),  # read in full, 1.4 TB of entries
        b"II*\x00" + struct.pack("<I", 2**32 - 1),  # past the end
        b"II*\x00" + struct.pack("<IH", 8, 65535),  # a count past the end
    ],
    ids=["bigtiff-offset", "bigtiff-count", "bigtiff-large-count", "offset", "count"],
)
def test_a_directory_past_the_end_or_of_impossible_size_is_no_layout(tmp_path, head):
    path = tmp_path / "odd.tif"
    path.write_bytes(head)
    assert layout_of(path) is None
    with io.FileIO(path) as unbuffered:  # whose seek raises OverflowError rather than ValueError past its range
        assert tiff_layout(unbuffered) is None


def test_a_value_stored_past_the_end_is_no_layout(tmp_path):
    raw = bytearray(write_tiff(tmp_path / "rgb.tif", np.zeros((4, 4, 3), dtype=np.float32)).read_bytes())
    at = raw.find(struct.pack("<HHI", 258, 3, 3))
    raw[at + 8 : at + 12] = struct.pack("<I", 10**6)  # BitsPerSample's values, far past the end
    path = tmp_path / "cut.tif"
    path.write_bytes(bytes(raw))
    assert layout_of(path) is None


def test_a_bigtiff_is_named_too(tmp_path):
    tifffile = pytest.importorskip("tifffile")  # scikit-image's: BigTIFF's 8-byte offsets, by another writer
    path = tmp_path / "big.tif"
    tifffile.imwrite(path, np.zeros((8, 8)), bigtiff=True)
    assert inspect_image(path).error == "a TIFF of 64-bit floating-point samples, which Pillow cannot read"


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes")
def test_a_pipe_named_as_a_tiff_is_not_waited_on(tmp_path):
    pipe = tmp_path / "scan.tif"
    os.mkfifo(pipe)
    answers: list[str] = []
    thread = threading.Thread(target=lambda: answers.append(unreadable_reason(pipe)), daemon=True)
    thread.start()
    thread.join(timeout=10)
    assert answers == [NOT_AN_IMAGE]


def _float64_folder(root: Path) -> Path:
    for label in ("a", "b"):
        (root / label).mkdir(parents=True)
        for i in range(3):
            write_tiff(root / label / f"{i}.tif", np.full((8, 8), i, dtype=np.float64))
    return root


def test_a_set_of_unreadable_tiffs_says_once_what_pillow_reads(tmp_path):
    root = _float64_folder(tmp_path / "scans")
    with pytest.raises(QmixError) as caught:
        create_dataset(root)
    message = str(caught.value)
    assert message.startswith("6 bad images: a/0.tif: a TIFF of 64-bit floating-point samples, which Pillow cannot")
    assert message.count(PILLOW_READS) == 1
    assert message.endswith(f". {PILLOW_READS} (none of the images could be read)")  # after the list, then the hint


def _no_scan(*args, **kwargs):
    raise AssertionError("the remembered check should have been used")


def test_a_check_remembered_before_layouts_were_named_names_them_now(tmp_path, monkeypatch):
    root = _float64_folder(tmp_path / "scans")
    cache = tmp_path / "cache"
    with monkeypatch.context() as older:  # the check as an earlier release remembered it
        older.setattr(images, "unreadable_reason", lambda path: NOT_AN_IMAGE)
        older.setattr(scan_cache, "unreadable_reason", lambda path: NOT_AN_IMAGE)
        with pytest.raises(QmixError, match=r"a/0\.tif: not an image Pillow can read"):
            create_dataset(root, cache_dir=cache)

    monkeypatch.setattr(manifest, "scan_images", _no_scan)
    with pytest.raises(QmixError, match=r"a/0\.tif: a TIFF of 64-bit floating-point samples") as caught:
        create_dataset(root, cache_dir=cache)
    assert PILLOW_READS in str(caught.value)


def test_pillows_reading_of_the_writers_float32_file_keeps_its_values(tmp_path):
    # The writer is a real TIFF writer: what Pillow reads back is what was written.
    values = np.linspace(-1, 1, 30, dtype=np.float32).reshape(6, 5)
    with Image.open(write_tiff(tmp_path / "scan.tif", values, order=">")) as img:
        assert np.array_equal(np.asarray(img, dtype=np.float32), values)


def test_a_remembered_tiff_refused_for_another_reason_keeps_it(tmp_path, monkeypatch):
    root = _float64_folder(tmp_path / "scans")
    whole = write_tiff(root / "a" / "cut.tif", np.arange(64, dtype=np.uint8).reshape(8, 8)).read_bytes()
    (root / "a" / "cut.tif").write_bytes(whole[:-20])  # its pixels cut short: Pillow opens it, then fails
    reasons = []
    for remembered in (False, True):  # checked, then remembered
        if remembered:
            monkeypatch.setattr(manifest, "scan_images", _no_scan)
        with warnings.catch_warnings(), pytest.raises(QmixError) as caught:
            warnings.simplefilter("ignore")
            create_dataset(root, cache_dir=tmp_path / "cache", on_bad_image="error")
        reasons.append(str(caught.value))
    assert reasons[0] == reasons[1]
    assert "a/cut.tif: unreadable" in reasons[1]


def test_other_files_a_remembered_check_called_no_image_are_not_opened_again(tmp_path, monkeypatch):
    root = _float64_folder(tmp_path / "scans")
    (root / "a" / "notes.png").write_bytes(b"not an image at all")
    cache = tmp_path / "cache"
    with monkeypatch.context() as older, pytest.raises(QmixError):  # remembered as an earlier release did
        older.setattr(images, "unreadable_reason", lambda path: NOT_AN_IMAGE)
        older.setattr(scan_cache, "unreadable_reason", lambda path: NOT_AN_IMAGE)
        create_dataset(root, cache_dir=cache)
    asked: list[str] = []
    monkeypatch.setattr(scan_cache, "unreadable_reason", lambda path: asked.append(Path(path).name) or NOT_AN_IMAGE)
    with pytest.raises(QmixError):
        create_dataset(root, cache_dir=cache)
    assert sorted(asked) == ["0.tif", "0.tif", "1.tif", "1.tif", "2.tif", "2.tif"]  # the six TIFFs, not the PNG
