"""Decoding and checking single images: Pillow's limits and warnings, without touching the process's filters."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from qmix_cli.cli.common import quiet_pillow_warnings
from qmix_cli.data.images import inspect_image, scan_images


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


def test_images_past_pillows_pixel_limit_are_refused_before_decoding(tmp_path, monkeypatch):
    _noise((12, 12)).save(tmp_path / "warned.png")  # 144 pixels: past a limit of 100, Pillow only warns
    _noise((20, 20)).save(tmp_path / "refused.png")  # 400: past twice the limit, Pillow refuses to open it
    _noise((8, 8)).save(tmp_path / "fine.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        warned, refused, fine = (inspect_image(tmp_path / f"{n}.png") for n in ("warned", "refused", "fine"))
    assert warned.error == (
        "unreadable (12 × 12 = 144 pixels, more than Pillow's limit of 100; raise PIL.Image.MAX_IMAGE_PIXELS if "
        "such images are expected)"
    )
    assert refused.error is not None and refused.error.startswith("unreadable (")
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
