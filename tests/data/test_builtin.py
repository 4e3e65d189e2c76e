"""Built-in datasets: digits (scikit-learn) and fashion-mnist (Debian package), materialised once."""

from __future__ import annotations

import errno
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from qmix_cli.api import corrupt
from qmix_cli.data import builtin
from qmix_cli.data.builtin import default_cache_dir, is_builtin, materialise_builtin
from qmix_cli.data.manifest import create_dataset
from qmix_cli.errors import DataError, NoSpaceError, QmixError


def _mtimes(root):
    return {p: p.stat().st_mtime_ns for p in sorted(root.rglob("*"))}


def test_cache_dir_comes_from_the_environment(qmix_cache_dir):
    assert default_cache_dir() == qmix_cache_dir


def test_digits_dataset(digits_dir, qmix_cache_dir):
    from sklearn.datasets import load_digits

    assert digits_dir == qmix_cache_dir / "datasets" / "digits"
    ds = create_dataset("digits")
    assert ds.root == digits_dir
    assert len(ds) == 1797
    assert ds.classes == tuple(str(i) for i in range(10))
    assert ds.channels == 1
    assert np.bincount(ds.labels).tolist() == np.bincount(load_digits().target).tolist()
    for p in ds.abs_paths[::300]:
        with Image.open(p) as img:
            assert img.mode == "L"
            assert img.size == (32, 32)


def test_digits_pixels_match_scikit_learn(digits_dir):
    from sklearn.datasets import load_digits

    bunch = load_digits()
    with Image.open(digits_dir / str(bunch.target[0]) / "0000.png") as img:
        arr = np.asarray(img, dtype=np.float64)
    # Downsampling the 32×32 PNG back to 8×8 recovers sklearn's image (0..16 scaled to 0..255).
    small = arr.reshape(8, 4, 8, 4).mean(axis=(1, 3))
    expected = bunch.images[0] / 16.0 * 255.0
    assert np.corrcoef(small.ravel(), expected.ravel())[0, 1] > 0.95


def test_digits_materialised_once(digits_dir, monkeypatch):
    before = _mtimes(digits_dir)
    assert (digits_dir / ".complete").is_file()

    def boom():
        raise AssertionError("digits were loaded again")

    monkeypatch.setitem(builtin.BUILTINS, "digits", boom)
    assert materialise_builtin("digits") == digits_dir
    assert len(create_dataset("digits", check_images=False)) == 1797
    assert _mtimes(digits_dir) == before


def test_incomplete_materialisation_is_redone(tmp_path, monkeypatch):
    calls = []

    def tiny():
        calls.append(1)
        imgs = np.stack([np.full((4, 4), v, dtype=np.uint8) for v in (0, 100, 200)])
        return imgs, np.array([0, 1, 1]), ("p", "q")

    monkeypatch.setitem(builtin.BUILTINS, "digits", tiny)
    stale = tmp_path / "datasets" / "digits"
    (stale / "junk").mkdir(parents=True)  # a previous, interrupted run without .complete
    root = materialise_builtin("digits", cache_dir=tmp_path)
    assert root == stale
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*")) == [
        ".complete", "p", "p/0.png", "q", "q/1.png", "q/2.png",
    ]  # fmt: skip
    materialise_builtin("digits", cache_dir=tmp_path)
    assert len(calls) == 1


def test_a_full_disk_while_materialising_names_the_dataset_and_the_cache_and_leaves_nothing(tmp_path, monkeypatch):
    imgs = np.stack([np.full((4, 4), v, dtype=np.uint8) for v in (0, 100, 200)])
    monkeypatch.setitem(builtin.BUILTINS, "digits", lambda: (imgs, np.array([0, 1, 1]), ("p", "q")))
    real_save = Image.Image.save
    saved = []

    def save(self, fp, *args, **kwargs):
        if saved:
            raise OSError(errno.ENOSPC, "No space left on device")
        saved.append(fp)
        return real_save(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", save)
    with pytest.raises(NoSpaceError) as err:
        materialise_builtin("digits", cache_dir=tmp_path)
    assert str(err.value) == (
        f"no disk space to write the built-in dataset digits (3 images) in {tmp_path / 'datasets'}: free some space "
        "or point --cache-dir (or QMIX_CACHE_DIR) at a larger disk"
    )
    assert list((tmp_path / "datasets").iterdir()) == []  # the partial folder is gone


def test_a_cache_the_user_cannot_write_is_one_line_naming_the_option(tmp_path, monkeypatch):
    """A read-only cache, or the HOME of a compute node jobs may not write: was "unexpected PermissionError"."""
    real_mkdir = Path.mkdir

    def read_only(self, *args, **kwargs):
        if tmp_path / "ro" in (self, *self.parents):
            raise PermissionError(13, "Permission denied", str(self))
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", read_only)
    with pytest.raises(QmixError) as err:
        materialise_builtin("digits", cache_dir=tmp_path / "ro")
    assert str(err.value) == (
        f"cannot write the built-in dataset digits in {tmp_path / 'ro' / 'datasets'} (Permission denied); point "
        "--cache-dir (or QMIX_CACHE_DIR) at a folder you can write"
    )


def test_local_path_named_like_a_builtin_wins(tmp_path, make_image_folder, monkeypatch):
    make_image_folder("digits", classes=("x", "y"), per_class=2)
    monkeypatch.chdir(tmp_path)
    assert not is_builtin("digits")
    ds = create_dataset("digits")
    assert ds.classes == ("x", "y")
    assert len(ds) == 4


@pytest.mark.skipif(not builtin.fashion_mnist_dir().is_dir(), reason="dataset-fashion-mnist is not installed")
def test_fashion_mnist_test_split():
    ds = create_dataset("fashion-mnist:test", check_images=False)
    assert len(ds) == 10_000
    assert ds.classes == tuple(sorted(builtin.FASHION_MNIST_CLASSES))
    assert np.bincount(ds.labels).tolist() == [1000] * 10  # the test split is balanced
    assert ds.root.name == "fashion-mnist-test"
    with Image.open(ds.abs_paths[0]) as img:
        assert img.mode == "L" and img.size == (28, 28)


def test_fashion_mnist_missing_says_how_to_install(tmp_path, monkeypatch):
    monkeypatch.delenv("QMIX_FASHION_MNIST_DIR", raising=False)
    monkeypatch.setattr(builtin, "FASHION_MNIST_DIR", tmp_path / "not-installed")
    cache = tmp_path / "cache"
    with pytest.raises(DataError) as exc:
        create_dataset("fashion-mnist", cache_dir=cache)
    msg = str(exc.value)
    assert "fashion-mnist is not installed" in msg
    assert "apt-get install dataset-fashion-mnist" in msg and "QMIX_FASHION_MNIST_DIR" in msg
    assert not (cache / "datasets" / "fashion-mnist").exists()  # nothing half-written


def test_fashion_mnist_is_read_from_the_folder_the_environment_names(tmp_path, monkeypatch):
    # Systems without the Debian package point QMIX_FASHION_MNIST_DIR at the original idx files.
    import gzip

    def idx(path, array):
        header = bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
        with gzip.open(path, "wb") as f:
            f.write(header + array.tobytes())

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(20, 28, 28), dtype=np.uint8)
    labels = rng.permutation(np.arange(20, dtype=np.uint8) % 10)
    # Each image carries its own index (top-left pixel) and its class (the top row), so that a file in the wrong
    # class folder, or the images and labels read out of step, cannot pass unseen.
    images[:, 0, :] = labels[:, None] * 25
    images[:, 0, 0] = np.arange(20)
    idx(tmp_path / "t10k-images-idx3-ubyte.gz", images)
    idx(tmp_path / "t10k-labels-idx1-ubyte.gz", labels)
    monkeypatch.setattr(builtin, "FASHION_MNIST_DIR", tmp_path / "not-installed")
    monkeypatch.setenv("QMIX_FASHION_MNIST_DIR", str(tmp_path))
    ds = create_dataset("fashion-mnist:test", cache_dir=tmp_path / "cache")
    assert len(ds) == 20 and np.bincount(ds.labels).tolist() == [2] * 10
    seen = set()
    for path, label in zip(ds.abs_paths, ds.labels, strict=True):
        with Image.open(path) as img:
            pixels = np.asarray(img)
        i = int(pixels[0, 0])
        np.testing.assert_array_equal(pixels, images[i])  # the very image, not only one of its class
        assert ds.classes[label] == builtin.FASHION_MNIST_CLASSES[labels[i]] == path.parent.name
        seen.add(i)
    assert seen == set(range(20))
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\.gz or train-labels-idx1-ubyte\.gz missing"):
        create_dataset("fashion-mnist", cache_dir=tmp_path / "cache")


def test_a_cache_under_home_is_expanded_everywhere(tmp_path, monkeypatch):
    """``cache_dir="~/qc"`` from Python (no shell to expand it): `train` expanded it, `corrupt` and `audit` made a
    folder literally named ``~`` in the working directory, a trap for ``rm -rf ~``. Each reads a dataset through
    `create_dataset`, which `corrupt` stands for here (`audit` needs a trained run)."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    imgs = np.stack([np.full((4, 4), v, dtype=np.uint8) for v in (0, 100, 200)])
    monkeypatch.setitem(builtin.BUILTINS, "digits", lambda: (imgs, np.array([0, 1, 1]), ("p", "q")))
    create_dataset("digits", cache_dir="~/qc")
    assert (tmp_path / "home" / "qc" / "datasets" / "digits").is_dir()
    corrupt("digits", tmp_path / "o", cache_dir="~/qc2", label_rate=0, quality_rate=0, quiet=True)
    assert (tmp_path / "home" / "qc2" / "datasets" / "digits").is_dir()
    assert not (tmp_path / "~").exists()
    monkeypatch.setenv("QMIX_CACHE_DIR", "~/env-cache")  # quoted in a shell, or set from Python
    assert default_cache_dir() == tmp_path / "home" / "env-cache"
