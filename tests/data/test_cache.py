"""The decoded-image cache: same pixels as a direct decode, reused across calls, invalidated by edits."""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from PIL.JpegImagePlugin import JpegImageFile

from qmix_cli.data import cache
from qmix_cli.data.cache import DecodeTarget, cache_key, cached_images
from qmix_cli.data.images import inspect_image, read_image
from qmix_cli.data.manifest import create_dataset
from qmix_cli.errors import DataError, NoSpaceError, QmixError
from qmix_cli.io import ABANDONED_PARTIAL_SECONDS, partial_held


@pytest.fixture
def rgb_dataset(make_image_folder):
    return create_dataset(make_image_folder("rgb", classes=("a", "b", "c"), per_class=4, size=16))


def _count_stats(monkeypatch):
    """The paths `os.stat` is called on from now until ``monkeypatch.undo()``."""
    calls = []
    real = os.stat

    def counting(path, *args, **kwargs):
        calls.append(os.fspath(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(os, "stat", counting)
    return calls


def _rewrite(path):
    """Overwrite an image with pixels of 7, with a later modification time (coarse file systems keep the old)."""
    st = path.stat()
    Image.fromarray(np.full((16, 16, 3), 7, dtype=np.uint8)).save(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


def _npy_files(folder):
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_cached_images_equal_a_direct_decode(rgb_dataset, tmp_path):
    arr = cached_images(rgb_dataset, size=8, channels=3, cache_dir=tmp_path / "c", workers=2)
    assert isinstance(arr, np.memmap)
    assert arr.shape == (12, 3, 8, 8) and arr.dtype == np.uint8
    assert not arr.flags.writeable
    for i, p in enumerate(rgb_dataset.abs_paths):
        assert np.array_equal(arr[i], read_image(p, channels=3, size=8).transpose(2, 0, 1))
        with Image.open(p) as img:  # an independent Pillow decode + bilinear resize agrees
            direct = np.asarray(img.convert("RGB").resize((8, 8), Image.Resampling.BILINEAR)).transpose(2, 0, 1)
        assert np.abs(arr[i].astype(int) - direct.astype(int)).max() <= 1


def test_cached_gray_from_rgb_and_at_native_size(rgb_dataset, tmp_path):
    gray = cached_images(rgb_dataset, size=16, channels=1, cache_dir=tmp_path)
    assert gray.shape == (12, 1, 16, 16)
    with Image.open(rgb_dataset.abs_paths[5]) as img:
        assert np.array_equal(gray[5, 0], np.asarray(img.convert("L")))


def test_second_call_reuses_the_file(rgb_dataset, tmp_path, monkeypatch):
    first = cached_images(rgb_dataset, size=8, channels=3, cache_dir=tmp_path)
    target = tmp_path / "decoded" / f"{cache_key(rgb_dataset.abs_paths, size=8, channels=3)}.npy"
    assert str(first.filename) == str(target)
    mtime = target.stat().st_mtime_ns

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again")

    monkeypatch.setattr(cache, "decode_all", no_decoding)
    told: list[int] = []
    second = cached_images(rgb_dataset, size=8, channels=3, cache_dir=tmp_path, progress=told.append)
    assert sum(told) == len(rgb_dataset)  # a bar made for the decoding ends: it stayed at 0 % for the whole run
    assert str(second.filename) == str(first.filename)
    assert target.stat().st_mtime_ns == mtime
    assert np.array_equal(first, second)
    assert _npy_files(tmp_path / "decoded") == [target.name]  # no temp files left over


def test_default_cache_dir_is_the_environment_one(rgb_dataset, qmix_cache_dir):
    arr = cached_images(rgb_dataset, size=4, channels=1)
    assert os.path.dirname(arr.filename) == str(qmix_cache_dir / "decoded")


def test_key_depends_on_size_channels_and_paths(rgb_dataset):
    paths = rgb_dataset.abs_paths
    base = cache_key(paths, size=8, channels=3)
    assert cache_key(paths, size=8, channels=3) == base
    assert cache_key(paths, size=16, channels=3) != base
    assert cache_key(paths, size=8, channels=1) != base
    assert cache_key(paths[:-1], size=8, channels=3) != base
    assert cache_key(paths[::-1], size=8, channels=3) != base


def test_touching_an_image_changes_the_key(rgb_dataset):
    paths = rgb_dataset.abs_paths
    before = cache_key(paths, size=8, channels=3)
    st = paths[3].stat()
    os.utime(paths[3], ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    assert cache_key(paths, size=8, channels=3) != before


def test_a_cache_file_cut_short_is_decoded_again(rgb_dataset, tmp_path):
    first = np.array(cached_images(rgb_dataset, size=8, channels=3, cache_dir=tmp_path))
    (cached,) = (tmp_path / "decoded").glob("*.npy")
    cached.write_bytes(cached.read_bytes()[:-100])  # e.g. a disk that filled up while it was copied
    again = cached_images(rgb_dataset, size=8, channels=3, cache_dir=tmp_path)
    np.testing.assert_array_equal(again, first)


def test_modified_image_is_decoded_again(rgb_dataset, tmp_path):
    old = np.array(cached_images(rgb_dataset, size=8, channels=3, cache_dir=tmp_path))
    p = rgb_dataset.abs_paths[0]
    _rewrite(p)
    new = cached_images(rgb_dataset, size=8, channels=3, cache_dir=tmp_path)
    assert (new[0] == 7).all()
    assert not np.array_equal(old[0], new[0])
    assert np.array_equal(old[1:], new[1:])
    assert len(_npy_files(tmp_path / "decoded")) == 2


def test_failed_decode_leaves_no_cache_file(rgb_dataset, tmp_path):
    rgb_dataset.abs_paths[2].write_bytes(b"garbage")  # broken after validation
    with pytest.raises(OSError):
        cached_images(rgb_dataset, size=8, channels=3, cache_dir=tmp_path)
    assert _npy_files(tmp_path / "decoded") == []


def test_partials_left_by_a_killed_decode_are_removed_once_stale(rgb_dataset, tmp_path):
    folder = tmp_path / "decoded"
    folder.mkdir()
    stale, fresh = folder / ".abc.npy.k1ll3d.tmp", folder / ".def.npy.wr1t1ng.tmp"
    for path in (stale, fresh):
        path.write_bytes(b"\0" * 64)
    old = stale.stat().st_mtime - cache.STALE_PARTIAL_SECONDS - 60
    os.utime(stale, (old, old))
    cached_images(rgb_dataset, size=8, channels=3, cache_dir=tmp_path)
    assert not stale.exists()
    assert fresh.exists()  # may belong to a decode still running in another process


def test_a_partial_no_writer_holds_goes_within_minutes_and_a_held_one_stays(rgb_dataset, tmp_path):
    import fcntl

    folder = tmp_path / "decoded"
    folder.mkdir()
    killed, writing = folder / ".abc.npy.k1ll3d.tmp", folder / ".def.npy.wr1t1ng.tmp"
    minutes_ago = killed.parent.stat().st_mtime - ABANDONED_PARTIAL_SECONDS - 5
    for path in (killed, writing):
        path.write_bytes(b"\0" * 64)
        os.utime(path, (minutes_ago, minutes_ago))  # a sweep's job SIGKILLed minutes ago, and a quiet live one
    fd = os.open(writing, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a live writer holds its partial
        cached_images(rgb_dataset, size=8, channels=3, cache_dir=tmp_path)
        assert not killed.exists() and writing.exists()
    finally:
        os.close(fd)


def test_the_partial_a_decode_writes_is_held_while_it_is_written(rgb_dataset, tmp_path, monkeypatch):
    held = []
    real = cache.decode_all

    def watching(paths, **kwargs):  # what another process's cleanup would see mid-decode
        (partial,) = (tmp_path / "decoded").glob(".*.npy.*.tmp")
        held.append(partial_held(partial))
        return real(paths, **kwargs)

    monkeypatch.setattr(cache, "decode_all", watching)
    cached_images(rgb_dataset, size=8, channels=3, cache_dir=tmp_path)
    assert held == [True]
    fill = cache.CacheFill(
        rgb_dataset.file_paths, DecodeTarget(8, 3), tmp_path / "decoded", [(0, 0)] * len(rgb_dataset)
    )
    try:
        assert partial_held(fill.tmp)
    finally:
        fill.close()
    assert not fill.tmp.exists()


# --- Filling the cache while the images are checked (create_dataset(decode_to=...)) ---


def _decoding_refused(monkeypatch):
    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded a second time")

    monkeypatch.setattr(cache, "decode_all", no_decoding)


def _no_partials(folder):
    return [name for name in _npy_files(folder) if name.endswith(".tmp")] == []


def _cached_as_decoded(ds, cache_dir, *, size, channels):
    """``cached_images`` of ``ds``, checked row by row against a direct decode of each file."""
    arr = cached_images(ds, size=size, channels=channels, cache_dir=cache_dir)
    assert arr.shape == (len(ds), channels, size, size)
    for i, p in enumerate(ds.abs_paths):
        assert np.array_equal(arr[i], read_image(p, channels=channels, size=size).transpose(2, 0, 1))
    return arr


def test_checked_images_fill_the_cache_in_the_same_pass(make_image_folder, tmp_path, monkeypatch):
    root = make_image_folder("rgb", per_class=5, size=16)
    ds = create_dataset(root, cache_dir=tmp_path, decode_to=DecodeTarget(8, 3))
    _decoding_refused(monkeypatch)
    assert len(_cached_as_decoded(ds, tmp_path, size=8, channels=3)) == 15
    assert _no_partials(tmp_path / "decoded")


@pytest.mark.parametrize("workers", [1, 4])
@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_auto_channels_fill_grey_and_colour_datasets_alike(make_image_folder, tmp_path, monkeypatch, mode, workers):
    root = make_image_folder(mode, per_class=30, size=16, mode=mode)
    ds = create_dataset(root, cache_dir=tmp_path, workers=workers, decode_to=DecodeTarget(8, None))
    assert ds.channels == (1 if mode == "L" else 3)
    assert _no_partials(tmp_path / "decoded")
    _decoding_refused(monkeypatch)  # the images the run will read, at the channels it will read, are there already
    _cached_as_decoded(ds, tmp_path, size=8, channels=ds.channels)


@pytest.mark.parametrize("first", ["RGB", "L"])
def test_auto_channels_with_grey_and_colour_images_mixed(make_image_folder, tmp_path, monkeypatch, first):
    """Colour first: grey images are stored as three equal channels, as the dataset is read. Grey first: the fill
    is given up (the one-channel rows would be of no use) and the images are decoded again, in colour."""
    second = "L" if first == "RGB" else "RGB"
    make_image_folder("mixed", classes=("a",), per_class=3, size=16, mode=first)
    root = make_image_folder("mixed", classes=("b",), per_class=3, size=16, mode=second)
    ds = create_dataset(root, cache_dir=tmp_path, workers=1, decode_to=DecodeTarget(8, None))
    assert ds.channels == 3
    assert _no_partials(tmp_path / "decoded")
    if first == "RGB":
        _decoding_refused(monkeypatch)
    else:
        assert not any(name.endswith(".npy") for name in _npy_files(tmp_path / "decoded"))
    arr = _cached_as_decoded(ds, tmp_path, size=8, channels=3)
    grey = 3 if first == "RGB" else 0
    assert (arr[grey, 0] == arr[grey, 1]).all() and (arr[grey, 1] == arr[grey, 2]).all()


def test_skipped_images_leave_the_filled_cache_to_the_good_ones(make_image_folder, truncate, tmp_path, monkeypatch):
    root = make_image_folder("rgb", per_class=5, size=16)
    truncate(root / "b" / "2.png")
    ds = create_dataset(root, cache_dir=tmp_path, on_bad_image="skip", decode_to=DecodeTarget(8, 3))
    assert len(ds) == 14 and list(ds.skipped["path"]) == ["b/2.png"]
    _decoding_refused(monkeypatch)
    assert len(_cached_as_decoded(ds, tmp_path, size=8, channels=3)) == 14
    assert _no_partials(tmp_path / "decoded")


def test_a_refused_dataset_leaves_no_cache_behind(make_image_folder, truncate, tmp_path):
    root = make_image_folder("rgb", per_class=5, size=16)
    truncate(root / "a" / "0.png")
    with pytest.raises(DataError, match=r"^1 bad image: "):
        create_dataset(root, cache_dir=tmp_path, decode_to=DecodeTarget(8, 3))
    assert _npy_files(tmp_path / "decoded") == []


def test_a_dataset_made_to_be_decoded_reads_its_files_as_checked_and_the_next_one_sees_an_edit(
    make_image_folder, tmp_path, monkeypatch
):
    """``decode_to`` keeps the check's one stat of each file for `cached_images`: the run reads the pixels that
    were checked, without a second stat pass, and an edit made since is decoded by the next dataset made."""
    root = make_image_folder("rgb", per_class=5, size=16)
    ds = create_dataset(root, cache_dir=tmp_path, decode_to=DecodeTarget(8, 3))
    checked = np.array(cached_images(ds, size=8, channels=3, cache_dir=tmp_path))
    p = ds.abs_paths[4]
    _rewrite(p)
    stat_calls = _count_stats(monkeypatch)
    assert np.array_equal(cached_images(ds, size=8, channels=3, cache_dir=tmp_path), checked)
    assert not set(stat_calls) & set(map(str, ds.abs_paths))
    monkeypatch.undo()
    again = create_dataset(root, cache_dir=tmp_path, decode_to=DecodeTarget(8, 3))
    arr = cached_images(again, size=8, channels=3, cache_dir=tmp_path)
    assert (arr[4] == 7).all() and np.array_equal(np.delete(arr, 4, axis=0), np.delete(checked, 4, axis=0))
    assert len([n for n in _npy_files(tmp_path / "decoded") if n.endswith(".npy")]) == 2


def test_what_a_kept_dataset_decodes_anew_is_stored_under_the_files_as_they_are_now(make_image_folder, tmp_path):
    """The kept stats only find what the check filled in; an image decoded later (another size) is read as it is
    now, so it must be named by its new stats, never by the checked ones."""
    root = make_image_folder("rgb", per_class=5, size=16)
    ds = create_dataset(root, cache_dir=tmp_path, decode_to=DecodeTarget(8, 3))
    p = ds.abs_paths[4]
    _rewrite(p)
    assert (cached_images(ds, size=12, channels=3, cache_dir=tmp_path)[4] == 7).all()
    names = {n for n in _npy_files(tmp_path / "decoded") if n.endswith(".npy")}
    assert f"{cache_key(ds.abs_paths, size=12, channels=3)}.npy" in names  # stat'ed now
    assert f"{cache_key(ds.abs_paths, size=12, channels=3, stats=ds.file_stats.tolist())}.npy" not in names


def test_a_dataset_kept_without_decode_to_is_decoded_again_after_an_edit(make_image_folder, tmp_path):
    root = make_image_folder("rgb", per_class=5, size=16)
    ds = create_dataset(root, cache_dir=tmp_path)
    assert ds.file_stats is None
    cached_images(ds, size=8, channels=3, cache_dir=tmp_path)
    p = ds.abs_paths[4]
    _rewrite(p)
    assert (cached_images(ds, size=8, channels=3, cache_dir=tmp_path)[4] == 7).all()


def test_each_file_is_stat_ed_once_per_dataset_made_and_read(make_image_folder, tmp_path, monkeypatch):
    root = make_image_folder("rgb", per_class=5, size=16)
    for _ in range(2):  # a first load (check, fill, read) and a remembered one (no check, no decode)
        paths = set(map(str, sorted(root.glob("*/*.png"))))
        calls = _count_stats(monkeypatch)
        ds = create_dataset(root, cache_dir=tmp_path, decode_to=DecodeTarget(8, 3))
        cached_images(ds, size=8, channels=3, cache_dir=tmp_path)
        monkeypatch.undo()
        counted = [c for c in calls if c in paths]
        assert sorted(counted) == sorted(paths)


def test_an_unwritable_cache_does_not_stop_the_check(make_image_folder, tmp_path):
    root = make_image_folder("rgb", per_class=2, size=16)
    blocked = tmp_path / "cache"
    blocked.mkdir()
    (blocked / "decoded").write_text("a file where the cache folder should be")
    ds = create_dataset(root, cache_dir=blocked, decode_to=DecodeTarget(8, 3))
    assert len(ds) == 6 and ds.channels == 3


def test_the_fill_is_keyed_on_the_files_as_they_were_before_the_check_decoded_them(
    make_image_folder, tmp_path, monkeypatch
):
    """An image rewritten while the check runs (after it was decoded) must not be served from the cache as its
    old pixels under its new modification time: this dataset reads what was checked, the next one decodes it
    again."""
    root = make_image_folder("rgb", per_class=4, size=16)
    first = sorted(root.glob("*/*.png"))[0]
    put = cache.CacheFill.put

    def rewrite_first_after_the_last(self, i, img):
        put(self, i, img)
        if i == len(self.paths) - 1:
            _rewrite(first)

    monkeypatch.setattr(cache.CacheFill, "put", rewrite_first_after_the_last)
    ds = create_dataset(root, cache_dir=tmp_path, workers=1, decode_to=DecodeTarget(8, 3))
    monkeypatch.undo()
    assert ds.abs_paths[0] == first
    assert not (cached_images(ds, size=8, channels=3, cache_dir=tmp_path)[0] == 7).all()  # as checked
    again = create_dataset(root, cache_dir=tmp_path, decode_to=DecodeTarget(8, 3))
    assert (cached_images(again, size=8, channels=3, cache_dir=tmp_path)[0] == 7).all()


def test_the_threaded_check_fills_every_row(make_image_folder, tmp_path, monkeypatch):
    root = make_image_folder("gray", classes=("a", "b"), per_class=40, size=12, mode="L")
    ds = create_dataset(root, cache_dir=tmp_path, workers=4, decode_to=DecodeTarget(8, None))
    _decoding_refused(monkeypatch)
    assert len(_cached_as_decoded(ds, tmp_path, size=8, channels=1)) == 80


def test_an_image_the_fill_cannot_convert_is_still_judged_by_the_check_alone(make_image_folder, tmp_path, monkeypatch):
    root = make_image_folder("rgb", per_class=3, size=16)

    def unconvertible(*args, **kwargs):
        raise ValueError("conversion not supported")

    monkeypatch.setattr(cache, "fit_image", unconvertible)
    ds = create_dataset(root, cache_dir=tmp_path, decode_to=DecodeTarget(8, 3))
    assert len(ds) == 9 and ds.skipped.empty  # the check's verdict, remembered as such
    assert not any(name.endswith(".npy") or name.endswith(".tmp") for name in _npy_files(tmp_path / "decoded"))
    monkeypatch.undo()
    assert len(create_dataset(root, cache_dir=tmp_path)) == 9


def test_a_dataset_refused_for_its_classes_leaves_no_cache_behind(make_image_folder, tmp_path):
    root = make_image_folder("one", classes=("a",), per_class=4, size=16)
    with pytest.raises(DataError, match="at least 2 are needed"):
        create_dataset(root, cache_dir=tmp_path, decode_to=DecodeTarget(8, 3))
    assert _npy_files(tmp_path / "decoded") == []


def test_a_fill_that_cannot_make_its_file_leaves_none(make_image_folder, tmp_path, monkeypatch):
    root = make_image_folder("rgb", per_class=2, size=16)

    def too_large(*args, **kwargs):
        raise OSError(27, "File too large")

    monkeypatch.setattr(np.lib.format, "open_memmap", too_large)
    ds = create_dataset(root, cache_dir=tmp_path, decode_to=DecodeTarget(8, 3))
    assert len(ds) == 6
    assert _npy_files(tmp_path / "decoded") == []


def test_a_jpeg_to_be_shrunk_is_decoded_at_its_dct_scale_by_the_check_and_by_a_decode_alike(
    make_image_folder, tmp_path, monkeypatch
):
    root = make_image_folder("jpeg", per_class=3, size=256, suffix=".jpg")
    path = sorted(root.glob("*/*.jpg"))[0]
    seen = []
    info = inspect_image(path, keep=lambda img: seen.append(img.size), size=32)
    assert seen == [(32, 32)] and info.size == (256, 256) and info.error is None  # 1/8 scale, file's own size
    inspect_image(path, keep=lambda img: seen.append(img.size))
    assert seen[-1] == (256, 256)  # no target size: decoded whole
    drafts = []
    draft = JpegImageFile.draft
    monkeypatch.setattr(JpegImageFile, "draft", lambda img, mode, size: drafts.append(size) or draft(img, mode, size))
    assert inspect_image(path) == info  # only its readability asked: read at the smallest scale, same description
    assert drafts == [(1, 1)]
    monkeypatch.undo()
    png = make_image_folder("png", per_class=1, size=256)
    inspect_image(sorted(png.glob("*/*.png"))[0], keep=lambda img: seen.append(img.size), size=32)
    assert seen[-1] == (256, 256)  # only JPEGs have DCT scales
    ds = create_dataset(root, cache_dir=tmp_path, decode_to=DecodeTarget(32, 3))
    _decoding_refused(monkeypatch)
    arr = _cached_as_decoded(ds, tmp_path, size=32, channels=3)  # the fill's pixels are `read_image`'s
    with Image.open(path) as img:  # and as close to a whole decode, then resized, as two resamplings get
        whole = np.asarray(img.convert("RGB").resize((32, 32), Image.Resampling.BILINEAR, reducing_gap=3.0))
    assert np.abs(arr[0].transpose(1, 2, 0).astype(int) - whole.astype(int)).mean() < 8
    np.testing.assert_array_equal(read_image(path, channels=3, size=32, jpeg_scale=False), whole)  # runs before it


def test_a_truncated_jpeg_is_refused_when_decoded_at_its_dct_scale(make_image_folder, truncate, tmp_path):
    root = make_image_folder("jpeg", per_class=3, size=256, suffix=".jpg")
    truncate(root / "b" / "1.jpg")
    with pytest.raises(DataError, match=r"^1 bad image: "):
        create_dataset(root, cache_dir=tmp_path, decode_to=DecodeTarget(32, 3))
    with pytest.raises(DataError, match=r"^1 bad image: "):  # a check alone reads every JPEG at 1/8 scale
        create_dataset(root, cache_dir=tmp_path / "check-only")
    assert _npy_files(tmp_path / "decoded") == []
    with pytest.raises(OSError, match="truncated"):
        read_image(root / "b" / "1.jpg", channels=3, size=32)


def _disk_full(monkeypatch):
    """Every block reservation fails as on a full disk (what a real one makes `posix_fallocate` do)."""

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full, raising=False)


def test_a_full_disk_is_an_error_naming_the_space_before_any_pixel_is_written(rgb_dataset, tmp_path, monkeypatch):
    # Unreserved, the memory map's first page written on a full disk kills the process with SIGBUS, no message.
    _disk_full(monkeypatch)
    with pytest.raises(NoSpaceError) as err:
        cached_images(rgb_dataset, size=64, channels=3, cache_dir=tmp_path)
    message = str(err.value)
    assert "no disk space for the decoded images of" in message and "(12 at 64 px, 3 channels)" in message
    assert f"144.1 KiB needed in {tmp_path / 'decoded'}" in message  # 12 × 3 × 64 × 64 bytes and the header
    assert "--cache-dir (or QMIX_CACHE_DIR)" in message
    assert list((tmp_path / "decoded").iterdir()) == []  # the partial file is gone too


def test_a_fill_on_a_full_disk_is_abandoned_and_the_decode_then_says_why(make_image_folder, tmp_path, monkeypatch):
    root = make_image_folder("rgb", per_class=2, size=16)
    _disk_full(monkeypatch)
    ds = create_dataset(root, cache_dir=tmp_path, decode_to=DecodeTarget(8, 3))  # the check itself goes on
    assert len(ds) == 6 and list((tmp_path / "decoded").iterdir()) == []
    with pytest.raises(NoSpaceError, match="no disk space for the decoded images"):
        cached_images(ds, size=8, channels=3, cache_dir=tmp_path)
    monkeypatch.undo()
    assert cached_images(ds, size=8, channels=3, cache_dir=tmp_path).shape == (6, 3, 8, 8)  # space freed: it works


def test_a_cache_that_cannot_be_written_is_one_line_saying_where_to_point_it(rgb_dataset, tmp_path, monkeypatch):
    hint = re.escape("point --cache-dir (or QMIX_CACHE_DIR) at a folder you can write")
    (tmp_path / "a-file").write_text("not a folder")
    with pytest.raises(QmixError, match=rf"^cannot write the decoded-image cache in .*a-file/decoded \(.*\); {hint}$"):
        cached_images(rgb_dataset, size=8, channels=3, cache_dir=tmp_path / "a-file")

    def denied(*args, **kwargs):  # what another user's read-only cache folder gives (tests may run as root)
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(cache.tempfile, "mkstemp", denied)
    monkeypatch.setattr("qmix_cli.io.tempfile.mkstemp", denied)
    with pytest.raises(QmixError, match=rf"^cannot write the decoded-image cache in .* \(Permission denied\); {hint}$"):
        cached_images(rgb_dataset, size=8, channels=3, cache_dir=tmp_path / "shared")
    # The image check's record is a shortcut: a cache that cannot hold it costs a re-check, not the run.
    assert len(create_dataset(rgb_dataset.root, cache_dir=tmp_path / "shared")) == len(rgb_dataset)


def test_a_damaged_entry_in_a_read_only_cache_is_passed_over_not_fatal(tmp_path, monkeypatch):
    entry = tmp_path / "k.npy"
    entry.write_bytes(b"\x93NUMPY cut short")  # cut short by a copy, in a folder another user owns
    real_unlink = Path.unlink

    def denied(self, missing_ok=False):
        if self == entry:
            raise PermissionError(13, "Permission denied")
        return real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", denied)
    assert cache._open_cache(entry, (1, 1, 2, 2)) is None and entry.exists()
