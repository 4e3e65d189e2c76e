"""Built-in datasets, materialised once as ImageFolder PNGs in the cache directory.

* ``digits``: scikit-learn's 1,797 handwritten digits (8×8, 17 grey levels), upscaled to 32×32 so that the
  degradations of ``qmix corrupt`` (blur, JPEG, occlusion, ...) have pixels to act on.
* ``fashion-mnist`` / ``fashion-mnist:test``: the 60,000 / 10,000 images of the original idx files, from the
  Debian package ``dataset-fashion-mnist`` or from the folder ``$QMIX_FASHION_MNIST_DIR`` names (the four
  ``.gz`` files as Zalando publishes them), for systems without that package.
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from qmix_cli.errors import DataError, NoSpaceError, QmixError, UnwritableError
from qmix_cli.io import NO_SPACE, atomic_dir

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")  # where the Debian package puts the idx files
FASHION_MNIST_CLASSES = (
    "t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle-boot",
)  # fmt: skip
DIGITS_SIZE = 32


def default_cache_dir() -> Path:
    """``$QMIX_CACHE_DIR``, else ``$XDG_CACHE_HOME/qmix``, else ``~/.cache/qmix``."""
    if env := os.environ.get("QMIX_CACHE_DIR"):
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "qmix"


def cache_root(cache_dir: str | Path | None) -> Path:
    """The cache folder: ``cache_dir`` (``~`` expanded, as `train` records it: a literal ``./~`` folder is a trap
    for ``rm -rf ~``), else `default_cache_dir`."""
    return Path(cache_dir).expanduser() if cache_dir else default_cache_dir()


def _load_digits() -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = (bunch.images / 16.0 * 255.0).round().astype(np.uint8)
    big = np.stack(
        [np.asarray(Image.fromarray(im).resize((DIGITS_SIZE, DIGITS_SIZE), Image.Resampling.BICUBIC)) for im in images]
    )
    return big, bunch.target.astype(np.int64), tuple(str(i) for i in range(10))


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def fashion_mnist_dir() -> Path:
    """``$QMIX_FASHION_MNIST_DIR`` if set, else the Debian package's folder (`FASHION_MNIST_DIR`)."""
    return Path(os.environ.get("QMIX_FASHION_MNIST_DIR") or FASHION_MNIST_DIR)


def _load_fashion_mnist(split: str) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    prefix = "train" if split == "train" else "t10k"
    folder = fashion_mnist_dir()
    images_path = folder / f"{prefix}-images-idx3-ubyte.gz"
    labels_path = folder / f"{prefix}-labels-idx1-ubyte.gz"
    if not images_path.is_file() or not labels_path.is_file():
        raise DataError(
            f"fashion-mnist is not installed ({images_path.name} or {labels_path.name} missing in {folder}); "
            "install it with: sudo apt-get install dataset-fashion-mnist (Debian/Ubuntu), or set "
            "QMIX_FASHION_MNIST_DIR to a folder holding the original idx .gz files"
        )
    return _read_idx(images_path), _read_idx(labels_path).astype(np.int64), FASHION_MNIST_CLASSES


BUILTINS: dict[str, Callable[[], tuple[np.ndarray, np.ndarray, tuple[str, ...]]]] = {
    "digits": _load_digits,
    "fashion-mnist": lambda: _load_fashion_mnist("train"),
    "fashion-mnist:test": lambda: _load_fashion_mnist("test"),
}


def is_builtin(name: str) -> bool:
    return name in BUILTINS and not Path(name).exists()


def materialise_builtin(name: str, *, cache_dir: str | Path | None = None) -> Path:
    """Write a built-in dataset as ``<cache>/datasets/<name>/<class>/<index>.png`` once; return its root."""
    root = cache_root(cache_dir) / "datasets" / name.replace(":", "-")
    if (root / ".complete").is_file():
        return root
    images, labels, classes = BUILTINS[name]()
    try:
        with atomic_dir(root, force=True) as tmp:
            for c in classes:
                (tmp / c).mkdir()
            width = len(str(len(images)))
            for i, (img, y) in enumerate(zip(images, labels, strict=True)):
                Image.fromarray(img).save(tmp / classes[y] / f"{i:0{width}d}.png", optimize=False, compress_level=1)
            (tmp / ".complete").write_text("ok\n")
    except (PermissionError, UnwritableError) as e:  # a read-only cache, or a HOME a compute node does not let jobs
        # write (`atomic_dir` says so itself when its folder cannot be made; the option to change is said here)
        reason = e.reason if isinstance(e, UnwritableError) else e.strerror
        raise QmixError(
            f"cannot write the built-in dataset {name} in {root.parent} ({reason}); point --cache-dir (or "
            "QMIX_CACHE_DIR) at a folder you can write"
        ) from None
    except OSError as e:
        if e.errno not in NO_SPACE:
            raise
        raise NoSpaceError(
            f"no disk space to write the built-in dataset {name} ({len(images):,} images) in {root.parent}: free "
            "some space or point --cache-dir (or QMIX_CACHE_DIR) at a larger disk"
        ) from None
    return root
