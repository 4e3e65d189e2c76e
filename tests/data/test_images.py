"""Decoding and checking single images: Pillow's limits and warnings, without touching the process's filters."""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from qmix_cli.cli.common import apply_pixel_limit, quiet_pillow_warnings
from qmix_cli.data.images import inspect_image, scan_images
from qmix_cli.data.manifest import create_dataset
from qmix_cli.errors import QmixError


def _noise(size: tuple[int, int], seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def _jpeg_with_damaged_exif(path: Path) -> Path:
    """A photo whose EXIF says it is turned and names a description longer than the file (a cut-off export)."""
    exif = Image.Exif()
    exif[0x0112] = 6
    exif[0x010E] = "x" * 200
    raw = bytearray(exif.tobytes())  # big-endian ("MM") as Pillow writes it
    at = raw.find(b"\x01\x0e\x00\x02")  # tag 270 (ImageDescription), type ASCII
    raw[at + 4 : at + 8] = (100_000).to_bytes(4, "big")  # its byte count, past the end of the file
    buffer = io.BytesIO()
    _noise((32, 32)).save(buffer, "JPEG", exif=bytes(raw))
    path.write_bytes(buffer.getvalue())
    return path


def test_a_pipe_listed_as_an_image_is_refused_without_waiting_on_it(tmp_path):
    """Opening a pipe blocks until something writes to it: `train` of a manifest listing one hung until killed."""
    os.mkfifo(tmp_path / "x.png")
    assert inspect_image(tmp_path / "x.png").error == "not a regular file (a pipe or a device)"


def test_images_past_pillows_pixel_limit_are_refused_before_decoding(tmp_path, monkeypatch):
    _noise((12, 12)).save(tmp_path / "warned.png")  # 144 pixels: past a limit of 100, Pillow only warns
    _noise((20, 20)).save(tmp_path / "refused.png")  # 400: past twice the limit, Pillow refuses to open it
    _noise((8, 8)).save(tmp_path / "fine.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        warned, refused, fine = (inspect_image(tmp_path / f"{n}.png") for n in ("warned", "refused", "fine"))
    how = "to read such images set QMIX_MAX_IMAGE_PIXELS, or PIL.Image.MAX_IMAGE_PIXELS in Python"
    assert warned.error == f"unreadable (12 × 12 = 144 pixels, more than Pillow's limit of 100; {how})"
    assert refused.error == f"unreadable (400 pixels, more than Pillow's limit of 100; {how})"
    assert fine.error is None
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # the user lifted the limit
    assert inspect_image(tmp_path / "refused.png").error is None


def test_the_threaded_check_leaves_the_processs_warning_filters_as_they_were(tmp_path):
    paths = []
    for i in range(400):  # enough files for every thread to enter and leave a filter context many times
        paths.append(tmp_path / f"{i}.png")
        _noise((8, 8), seed=i).save(paths[-1])
    paths.append(_jpeg_with_damaged_exif(tmp_path / "photo.jpg"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow's own warning about the photo is not what is tested here
        before = list(warnings.filters)
        for _ in range(3):
            infos = scan_images(paths, workers=8)
            assert list(warnings.filters) == before
    assert all(info.error is None for info in infos)
    assert infos[-1].turned  # the orientation is still read past the damaged tag


def test_the_cli_keeps_pillows_warnings_about_judged_images_off_the_terminal(tmp_path, monkeypatch):
    photo = _jpeg_with_damaged_exif(tmp_path / "photo.jpg")
    _noise((50, 50)).save(tmp_path / "large.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2000)  # the photo's 32 × 32 within it, 50 × 50 past it

    def check_both() -> list[str]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if quiet:
                quiet_pillow_warnings()
            assert inspect_image(photo).turned
            assert inspect_image(tmp_path / "large.png").error is not None
        return [str(w.message) for w in caught]

    quiet = False
    assert len(check_both()) == 2  # Pillow does warn about both (the test would prove nothing otherwise)
    quiet = True
    assert check_both() == []


def test_raising_the_pixel_limit_checks_the_refused_images_again(make_image_folder, tmp_path, monkeypatch):
    root = make_image_folder("scans", classes=("a", "b"), per_class=3, size=8)
    _noise((12, 12)).save(root / "a" / "large.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        refused = create_dataset(root, cache_dir=tmp_path / "cache", on_bad_image="skip")
    assert len(refused) == 6 and refused.skipped["path"].tolist() == ["a/large.png"]
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # what QMIX_MAX_IMAGE_PIXELS=none does
    assert len(create_dataset(root, cache_dir=tmp_path / "cache")) == 7  # not the remembered verdict


@pytest.mark.parametrize(("value", "limit"), [("none", None), ("250000000", 250_000_000), (" ", "default")])
def test_the_pixel_limit_is_read_from_the_environment(monkeypatch, value, limit):
    default = Image.MAX_IMAGE_PIXELS
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", default)  # given back after the test
    apply_pixel_limit({"QMIX_MAX_IMAGE_PIXELS": value})
    now = Image.MAX_IMAGE_PIXELS
    assert now == (default if limit == "default" else limit)


@pytest.mark.parametrize("value", ["lots", "-5", "0", "1e9"])
def test_a_pixel_limit_that_is_no_number_is_one_line(monkeypatch, value):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)
    with pytest.raises(QmixError, match=r"QMIX_MAX_IMAGE_PIXELS=.*a whole number of pixels, or 'none'"):
        apply_pixel_limit({"QMIX_MAX_IMAGE_PIXELS": value})
