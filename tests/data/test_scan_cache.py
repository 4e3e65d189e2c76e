"""Remembered image checks: reused for unchanged files, never for edited, truncated or missing ones."""

from __future__ import annotations

import pytest

from qmix_cli.data import manifest
from qmix_cli.data.manifest import create_dataset
from qmix_cli.data.scan_cache import files_digest
from qmix_cli.errors import DataError


@pytest.fixture
def count_scans(monkeypatch):
    calls: list[int] = []
    real = manifest.scan_images

    def counting(paths, **kwargs):
        calls.append(len(paths))
        return real(paths, **kwargs)

    monkeypatch.setattr(manifest, "scan_images", counting)
    return calls


def test_unchanged_files_are_checked_once(make_image_folder, tmp_path, count_scans):
    root = make_image_folder("gray", mode="L")
    first = create_dataset(root, cache_dir=tmp_path / "c")
    second = create_dataset(root, cache_dir=tmp_path / "c")
    assert count_scans == [12]
    assert first.channels == second.channels == 1
    assert first.frame.equals(second.frame)


def test_a_file_truncated_after_its_check_is_caught(make_image_folder, tmp_path, truncate, count_scans):
    root = make_image_folder()
    create_dataset(root, cache_dir=tmp_path / "c")
    truncate(root / "b" / "2.png")
    with pytest.raises(DataError, match=r"b/2\.png"):
        create_dataset(root, cache_dir=tmp_path / "c")
    assert count_scans == [12, 12]


def test_skipped_images_are_remembered_with_their_reason(make_image_folder, tmp_path, truncate, count_scans):
    root = make_image_folder()
    truncate(root / "a" / "0.png")
    first = create_dataset(root, on_bad_image="skip", cache_dir=tmp_path / "c")
    second = create_dataset(root, on_bad_image="skip", cache_dir=tmp_path / "c")
    assert count_scans == [12]
    assert list(second.skipped["path"]) == list(first.skipped["path"]) == ["a/0.png"]
    assert list(second.skipped["reason"]) == list(first.skipped["reason"])
    # The remembered check still honours the caller's policy.
    with pytest.raises(DataError, match=r"a/0\.png"):
        create_dataset(root, cache_dir=tmp_path / "c")


def test_missing_files_are_never_remembered(make_image_folder, tmp_path, count_scans):
    root = make_image_folder()
    frame_csv = tmp_path / "m.csv"
    frame_csv.write_text("path,label\n" + "".join(f"{root}/a/{i}.png,a\n" for i in range(4)) + f"{root}/zz.png,b\n")
    for _ in range(2):
        with pytest.raises(DataError, match="file not found"):
            create_dataset(frame_csv, cache_dir=tmp_path / "c")
    assert count_scans[-2:] == [5, 5]


def test_a_damaged_record_means_a_fresh_check(make_image_folder, tmp_path, count_scans):
    root = make_image_folder()
    create_dataset(root, cache_dir=tmp_path / "c")
    for record in (tmp_path / "c" / "checked").iterdir():
        record.write_text("[[null, 'L'")
    assert create_dataset(root, cache_dir=tmp_path / "c").channels == 3
    assert count_scans == [12, 12]


def test_digest_follows_content_changes_and_order(make_image_folder, write_image):
    root = make_image_folder()
    paths = sorted(root.rglob("*.png"))
    base = files_digest(paths)
    assert files_digest(paths) == base
    assert files_digest(paths[::-1]) != base
    assert files_digest(paths, salt="x") != base
    write_image(paths[0], size=20, seed=7)
    assert files_digest(paths) != base
