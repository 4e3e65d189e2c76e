"""Shared fixtures: an isolated cache directory, the built-in digits, and tiny real image datasets."""

from __future__ import annotations

import errno
import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


@pytest.fixture(scope="session")
def qmix_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache directory for the whole session, so built-ins are materialised once."""
    return tmp_path_factory.mktemp("qmix-cache")


@pytest.fixture(autouse=True)
def _isolated_cache(qmix_cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    # Never touch ~/.cache: every test (and every CLI call it makes) uses the session's cache directory.
    monkeypatch.setenv("QMIX_CACHE_DIR", str(qmix_cache_dir))
    return qmix_cache_dir


@pytest.fixture(scope="session")
def digits_dir(qmix_cache_dir: Path) -> Path:
    """Root of the materialised built-in ``digits`` ImageFolder."""
    from qmix_cli.data.builtin import materialise_builtin

    return materialise_builtin("digits", cache_dir=qmix_cache_dir)


def _random_image(rng: np.random.Generator, size: int, mode: str) -> Image.Image:
    if mode == "L":
        return Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8), mode="L")
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), mode="RGB")


@pytest.fixture
def write_image() -> Callable[..., Path]:
    """``write_image(path, size=16, mode="RGB", seed=0)``: a random real image saved by Pillow (format by suffix)."""

    def write(path: Path, *, size: int = 16, mode: str = "RGB", seed: int = 0) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        _random_image(np.random.default_rng(seed), size, mode).save(path)
        return path

    return write


@pytest.fixture
def make_image_folder(tmp_path: Path) -> Callable[..., Path]:
    """``make_image_folder(name, classes=("a","b","c"), per_class=4, size=16, mode="RGB", suffix=".png")``.

    Writes ``tmp_path/name/<class>/<i>.png`` with random pixels (distinct per file) and returns the root.
    """
    counter = iter(range(10**6))

    def make(
        name: str = "folder",
        *,
        classes: Sequence[str] = ("a", "b", "c"),
        per_class: int = 4,
        size: int = 16,
        mode: str = "RGB",
        suffix: str = ".png",
    ) -> Path:
        root = tmp_path / name
        rng = np.random.default_rng(next(counter))
        for c in classes:
            (root / c).mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                _random_image(rng, size, mode).save(root / c / f"{i}{suffix}")
        root.mkdir(parents=True, exist_ok=True)
        return root

    return make


@pytest.fixture
def truncate() -> Callable[[Path], Path]:
    """Cut a file to half its size (a real image becomes a truncated one)."""

    def cut(path: Path) -> Path:
        data = Path(path).read_bytes()
        Path(path).write_bytes(data[: len(data) // 2])
        return Path(path)

    return cut


class _Payload:
    """Unpickling this calls ``Path.touch(marker)``: the stand-in for any code a malicious checkpoint runs."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


@pytest.fixture
def write_evil_checkpoint() -> Callable[[Path, Path], Path]:
    """``write_evil_checkpoint(path, marker)``: a checkpoint-shaped file (``torch.save`` of a dict) that creates
    ``marker`` when it is unpickled without ``weights_only``."""
    import torch

    def write(path: Path, marker: Path) -> Path:
        torch.save({"epoch": 1, "nets": [], "payload": _Payload(Path(marker))}, path)
        return Path(path)

    return write


class _FullAfter:
    """A file opened for writing that fails as a full disk does once ``room`` bytes are written."""

    def __init__(self, file, room: int) -> None:
        self.file, self.room = file, room

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.file.close()

    def write(self, data: bytes) -> int:
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= len(data)
        return self.file.write(data)

    def flush(self) -> None:
        self.file.flush()


@pytest.fixture
def disk_full_at_checkpoint(monkeypatch: pytest.MonkeyPatch) -> Callable[[int | None], None]:
    """``disk_full_at_checkpoint(n)``: from the ``n``-th checkpoint written on (1 = the first), the disk is full
    a kilobyte into the file (the temporary file `atomic_path` opens for ``last.pt``); ``None``: space again."""
    real_open = Path.open

    def arm(n: int | None) -> None:
        count = 0

        def opening(self, mode="r", *args, **kwargs):
            nonlocal count
            file = real_open(self, mode, *args, **kwargs)
            if mode != "wb" or not self.name.startswith(".last.pt."):
                return file
            count += 1
            return _FullAfter(file, 1024) if count >= n else file

        monkeypatch.setattr(Path, "open", real_open if n is None else opening)

    return arm


def tree_digest(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` (including hidden ones), keyed by relative path."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(Path(root).rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def hash_tree() -> Callable[[Path], dict[str, str]]:
    """``hash_tree(root)``: sha256 of every file under root, to prove a source was left untouched."""
    return tree_digest


# Small but real settings for training tests: timm's smallest ResNet at 32 px trains at ~1,700 images/s on 2 cores.
TINY_TRAIN = {"model": "test_resnet", "img_size": 32, "hflip": False, "batch_size": 64}


@pytest.fixture(scope="session")
def noisy_digits(tmp_path_factory: pytest.TempPathFactory, qmix_cache_dir: Path) -> Path:
    """Built-in digits corrupted with 20 % label noise and 15 % degraded images (seed 1)."""
    from qmix_cli.api import corrupt

    out = tmp_path_factory.mktemp("noisy") / "digits"
    corrupt("digits", out, label_rate=0.2, quality_rate=0.15, seed=1, cache_dir=qmix_cache_dir, quiet=True)
    return out


@pytest.fixture(scope="session")
def qmix_run(tmp_path_factory: pytest.TempPathFactory, noisy_digits: Path, qmix_cache_dir: Path):
    """A short qmix run on `noisy_digits`, shared by the engine, audit and CLI tests."""
    from qmix_cli.api import train

    out = tmp_path_factory.mktemp("runs") / "qmix"
    result = train(
        noisy_digits, out, method="qmix", epochs=10, warmup_epochs=6, cache_dir=str(qmix_cache_dir), **TINY_TRAIN
    )
    return result
