"""Manifests: ImageFolder / CSV / Parquet reading and every way user data can be wrong."""

from __future__ import annotations

import csv
import os
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from qmix_cli.cli.common import quiet_pillow_warnings
from qmix_cli.data.images import read_image
from qmix_cli.data.manifest import check_output_file, create_dataset, label_notes, read_manifest
from qmix_cli.errors import ConfigError, DataError


def _csv(path: Path, rows: list[dict], columns: list[str] | None = None) -> Path:
    pd.DataFrame(rows, columns=columns).to_csv(path, index=False)
    return path


def _folder_rows(root: Path) -> list[dict]:
    return [{"path": p.relative_to(root).as_posix(), "label": p.parent.name} for p in sorted(root.rglob("*.png"))]


# --------------------------------------------------------------------------------------------------------------
# Reading


def test_image_folder_reads_sorted_classes_and_paths(make_image_folder):
    root = make_image_folder(classes=("zebra", "ant", "moth"), per_class=4)
    (root / ".hidden").mkdir()  # ignored
    (root / "ant" / "notes.txt").write_text("not an image")  # ignored: not an image suffix
    ds = create_dataset(root)
    assert ds.classes == ("ant", "moth", "zebra")
    assert len(ds) == 12
    assert list(ds.frame.index) == list(range(12))
    assert ds.frame["sample_id"].tolist() == ds.frame["path"].tolist()
    assert ds.frame["path"].iloc[0] == "ant/0.png"
    assert ds.labels.dtype == np.int64
    expected = [ds.classes.index(p.split("/")[0]) for p in ds.frame["path"]]
    assert ds.labels.tolist() == expected
    assert all(p.is_file() for p in ds.abs_paths)
    assert ds.channels == 3
    assert ds.truth() is None
    assert ds.ignored == {".txt": 1}  # passed over, but counted: the user is told


def test_image_folder_recurses_into_subfolders(make_image_folder, write_image):
    root = make_image_folder(classes=("a", "b"), per_class=2)
    write_image(root / "a" / "deeper" / "x.png")
    ds = create_dataset(root)
    assert "a/deeper/x.png" in set(ds.frame["path"])
    assert ds.frame.set_index("path").loc["a/deeper/x.png", "label"] == "a"


def test_csv_manifest_defaults_sample_id_and_keeps_extra_columns(tmp_path, make_image_folder):
    root = make_image_folder("imgs", classes=("b", "a"), per_class=3)
    rows = [
        {"path": f"imgs/{r['path']}", "label": r["label"], "site": f"s{i}"} for i, r in enumerate(_folder_rows(root))
    ]
    csv = _csv(tmp_path / "m.csv", rows)
    ds = create_dataset(csv)
    assert ds.root == tmp_path  # relative paths resolve against the manifest's directory
    assert ds.classes == ("a", "b")
    assert ds.frame["sample_id"].tolist() == [r["path"] for r in rows]
    assert ds.frame["site"].tolist() == [r["site"] for r in rows]
    assert ds.labels.tolist() == [ds.classes.index(r["label"]) for r in rows]


def test_parquet_manifest_with_sample_ids_and_absolute_paths(tmp_path, make_image_folder):
    root = make_image_folder("imgs", classes=("cat", "dog"), per_class=3)
    rows = _folder_rows(root)
    frame = pd.DataFrame(
        {
            "sample_id": [f"id-{i}" for i in range(len(rows))],
            "path": [str(root / r["path"]) for r in rows],  # absolute paths are allowed
            "label": [r["label"] for r in rows],
            "weight": np.arange(len(rows), dtype=np.float64),
        }
    )
    frame.to_parquet(tmp_path / "m.parquet", index=False)
    ds = create_dataset(tmp_path / "m.parquet")
    assert ds.sample_ids == [f"id-{i}" for i in range(6)]
    assert ds.classes == ("cat", "dog")
    assert ds.frame["weight"].tolist() == list(range(6))
    assert ds.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert [p.resolve() for p in ds.abs_paths] == [(root / r["path"]).resolve() for r in rows]


def test_parquet_integer_labels_become_strings(tmp_path, make_image_folder):
    root = make_image_folder("imgs", classes=("0", "1"), per_class=2)
    rows = _folder_rows(root)
    pd.DataFrame({"path": [f"imgs/{r['path']}" for r in rows], "label": [int(r["label"]) for r in rows]}).to_parquet(
        tmp_path / "m.parquet"
    )
    ds = create_dataset(tmp_path / "m.parquet")
    assert ds.classes == ("0", "1")
    assert ds.labels.tolist() == [0, 0, 1, 1]


def test_directory_with_manifest_parquet_is_read_as_that_manifest(tmp_path, make_image_folder):
    root = make_image_folder("ds", classes=("a", "b"), per_class=2)
    rows = _folder_rows(root)
    # Labels deliberately disagree with the folder names: the manifest wins over an ImageFolder scan.
    pd.DataFrame(
        {"path": [r["path"] for r in rows], "label": ["x", "y", "y", "x"], "true_label": ["a", "a", "b", "b"]}
    ).to_parquet(root / "manifest.parquet", index=False)
    raw, manifest_root = read_manifest(root)
    assert manifest_root == root
    assert raw["label"].tolist() == ["x", "y", "y", "x"]
    ds = create_dataset(root)
    assert ds.classes == ("x", "y")
    assert ds.frame["true_label"].tolist() == ["a", "a", "b", "b"]
    assert len(ds) == 4


def test_check_images_false_does_not_open_images(tmp_path):
    csv = _csv(tmp_path / "m.csv", [{"path": "nope1.png", "label": "a"}, {"path": "nope2.png", "label": "b"}])
    ds = create_dataset(csv, check_images=False)
    assert len(ds) == 2
    assert ds.channels == 0
    assert ds.image_side == 0


# --------------------------------------------------------------------------------------------------------------
# Bad input: one DataError naming the problem, the first offenders and the total


def test_missing_images_name_first_offenders_and_total(tmp_path, make_image_folder):
    root = make_image_folder("imgs", classes=("a", "b"), per_class=2)
    rows = [{"path": f"imgs/{r['path']}", "label": r["label"]} for r in _folder_rows(root)]
    rows += [{"path": f"gone/{i}.png", "label": "a"} for i in range(7)]
    csv = _csv(tmp_path / "m.csv", rows)
    with pytest.raises(DataError) as exc:
        create_dataset(csv)
    msg = str(exc.value)
    assert msg.startswith("7 bad images")
    assert "gone/0.png: file not found" in msg
    assert "gone/4.png" in msg
    assert "gone/5.png" not in msg  # only the first five are spelled out...
    assert "(and 2 more)" in msg  # ...plus how many more
    assert "--on-bad-image skip" in msg


def test_when_no_image_can_be_read_the_paths_are_questioned_not_skipping_suggested(tmp_path, make_image_folder):
    make_image_folder("imgs", classes=("a", "b"), per_class=2)
    csv = _csv(tmp_path / "m.csv", [{"path": f"elsewhere/{i}.png", "label": "ab"[i % 2]} for i in range(4)])
    with pytest.raises(DataError) as exc:
        create_dataset(csv)
    assert str(exc.value).endswith(f"(none of the images could be read: are the paths relative to {tmp_path}?)")
    rows = [{"path": str(tmp_path / f"gone{i}.png"), "label": "ab"[i % 2]} for i in range(4)]
    absolute = _csv(tmp_path / "a.csv", rows)
    with pytest.raises(DataError) as exc:
        create_dataset(absolute)
    assert str(exc.value).endswith("(none of the images could be read)")  # nothing relative to ask about
    for i in range(4):  # files that are there, every one unreadable (over a pixel limit, say): no path to doubt
        (tmp_path / "elsewhere").mkdir(exist_ok=True)
        (tmp_path / "elsewhere" / f"{i}.png").write_bytes(b"not a png")
    with pytest.raises(DataError) as exc:
        create_dataset(csv)
    assert str(exc.value).endswith("(none of the images could be read)") and "relative" not in str(exc.value)


@pytest.mark.skipif(os.sep != "/", reason="Windows reads its own separators")
def test_windows_separators_in_a_manifest_are_read_and_a_file_so_named_is_kept(tmp_path, write_image):
    write_image(tmp_path / "images" / "a" / "1.png")
    write_image(tmp_path / "images" / "b" / "2.png", seed=1)
    write_image(tmp_path / "odd\\name.png", seed=2)  # one file whose name holds a backslash: a legal name here
    rows = [
        {"path": "images\\a\\1.png", "label": "a"},
        {"path": "images\\b\\2.png", "label": "b"},
        {"path": "odd\\name.png", "label": "b"},
    ]
    ds = create_dataset(_csv(tmp_path / "m.csv", rows))
    assert ds.frame["path"].tolist() == ["images/a/1.png", "images/b/2.png", "odd\\name.png"]
    assert ds.frame["sample_id"].tolist() == [r["path"] for r in rows]  # ids as written
    escaping = _csv(tmp_path / "up.csv", [*rows[:2], {"path": "..\\..\\x.png", "label": "a"}])
    with pytest.raises(DataError, match="1 path escaping the dataset root"):
        create_dataset(escaping)


def test_unreadable_random_bytes(make_image_folder):
    root = make_image_folder(classes=("a", "b"), per_class=2)
    (root / "a" / "junk.png").write_bytes(np.random.default_rng(0).bytes(500))
    with pytest.raises(DataError) as exc:
        create_dataset(root)
    msg = str(exc.value)
    assert msg.startswith("1 bad image:")
    assert "a/junk.png: not an image Pillow can read" in msg


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_truncated_image_is_caught(make_image_folder, write_image, truncate, suffix):
    root = make_image_folder(classes=("a", "b"), per_class=2)
    bad = truncate(write_image(root / "b" / f"cut{suffix}", size=48, seed=3))
    with Image.open(bad) as img:  # the header still parses: only a full decode finds the damage
        assert img.size == (48, 48)
    with pytest.raises(DataError) as exc:
        create_dataset(root)
    msg = str(exc.value)
    assert f"b/cut{suffix}: unreadable" in msg
    assert msg.startswith("1 bad image:")


def test_missing_columns(tmp_path):
    csv = _csv(tmp_path / "m.csv", [{"file": "a.png", "class": "a"}])
    with pytest.raises(DataError) as exc:
        create_dataset(csv)
    msg = str(exc.value)
    assert "missing column(s) path, label" in msg
    assert "found: file, class" in msg


def test_missing_label_column_only(tmp_path):
    csv = _csv(tmp_path / "m.csv", [{"path": "a.png", "klass": "a"}])
    with pytest.raises(DataError, match=r"missing column\(s\) label;"):
        create_dataset(csv)


def test_a_manifests_problems_are_all_said_at_once(tmp_path, make_image_folder):
    # An empty label, an id listed twice and a path climbing out: one refusal naming all three, not one per run.
    root = make_image_folder("imgs", classes=("a", "b"), per_class=3)
    rows = [
        {"sample_id": f"s{i}", "path": f"imgs/{r['path']}", "label": r["label"]}
        for i, r in enumerate(_folder_rows(root))
    ]
    rows[1]["label"] = ""
    rows[3]["sample_id"] = "s2"
    rows[4]["path"] = "../x.png"
    with pytest.raises(DataError) as err:
        create_dataset(_csv(tmp_path / "m.csv", rows))
    parts = str(err.value).split("; also ")
    assert len(parts) == 3
    assert parts[0].startswith(f"1 row with an empty 'label' in {tmp_path / 'm.csv'}: {rows[1]['path']} (row 2)")
    assert parts[1] == f"1 duplicate sample_id in {tmp_path / 'm.csv'}: s2"
    assert parts[2].startswith(f"1 path escaping the dataset root {tmp_path} in {tmp_path / 'm.csv'}: s4 (../x.png)")


def test_empty_labels(tmp_path, make_image_folder):
    root = make_image_folder("imgs", classes=("a", "b"), per_class=2)
    rows = [{"path": f"imgs/{r['path']}", "label": r["label"]} for r in _folder_rows(root)]
    rows[1]["label"] = ""
    rows[3]["label"] = "   "
    csv = _csv(tmp_path / "m.csv", rows)
    with pytest.raises(DataError) as exc:
        create_dataset(csv)
    msg = str(exc.value)
    assert msg.startswith("2 rows with an empty 'label'")
    # Named by path, what a user searches the file for, and by row after the header.
    assert f"{rows[1]['path']} (row 2); {rows[3]['path']} (row 4) (rows counted after the header)" in msg
    rows[1]["label"] = rows[3]["label"] = "a"
    rows[2]["path"] = ""  # no sample_id column: the ids are the paths, but it is the path that is missing
    with pytest.raises(DataError, match=r"^1 row with an empty 'path' .*row 3"):
        create_dataset(_csv(tmp_path / "m.csv", rows))
    rows[2]["label"] = ""  # both empty: the label's line names the row alone, there is no path to name it by
    with pytest.raises(DataError) as exc:
        create_dataset(_csv(tmp_path / "m.csv", rows))
    assert str(exc.value).split("; also ")[1].startswith(f"1 row with an empty 'label' in {tmp_path / 'm.csv'}: row 3 ")


def test_duplicate_sample_ids(tmp_path, make_image_folder):
    root = make_image_folder("imgs", classes=("a", "b"), per_class=2)
    rows = [{"sample_id": sid, "path": f"imgs/{r['path']}", "label": r["label"]} for sid, r in
            zip(["x", "y", "x", "z"], _folder_rows(root), strict=True)]  # fmt: skip
    csv = _csv(tmp_path / "m.csv", rows)
    with pytest.raises(DataError) as exc:
        create_dataset(csv)
    msg = str(exc.value)
    assert msg.startswith("1 duplicate sample_id ")
    assert msg.endswith(": x")  # only the duplicated id is listed


def test_path_escaping_the_root_is_refused(tmp_path, write_image):
    write_image(tmp_path / "x.png")
    write_image(tmp_path / "ds" / "a.png")
    write_image(tmp_path / "ds" / "b.png")
    csv = _csv(
        tmp_path / "ds" / "m.csv",
        [
            {"path": "a.png", "label": "a"},
            {"path": "b.png", "label": "b"},
            {"path": "../x.png", "label": "a"},
            {"path": "sub/../../x.png", "label": "b"},
        ],
    )
    with pytest.raises(DataError) as exc:
        create_dataset(csv)
    msg = str(exc.value)
    assert msg.startswith("2 paths escaping the dataset root")
    assert ": ../x.png; sub/../../x.png" in msg  # each once: the ids are the paths here
    assert msg.endswith("put the manifest in a folder above the images, or give absolute paths)")


def test_path_with_dotdot_staying_inside_root_is_accepted(tmp_path, write_image):
    write_image(tmp_path / "a.png")
    write_image(tmp_path / "b.png", seed=1)
    write_image(tmp_path / "c..d.png", seed=2)  # ".." inside a name is not a parent-directory segment
    (tmp_path / "sub").mkdir()
    rows = [{"path": "sub/../a.png", "label": "a"}, {"path": "b.png", "label": "b"}, {"path": "c..d.png", "label": "b"}]
    assert len(create_dataset(_csv(tmp_path / "m.csv", rows))) == 3


def test_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty"):
        create_dataset(tmp_path / "empty")


def test_images_loose_in_the_root_are_pointed_to_class_folders(tmp_path, write_image):
    write_image(tmp_path / "flat" / "x.png")
    with pytest.raises(DataError, match=r"empty.*root/<class>/<image>"):
        create_dataset(tmp_path / "flat")


def test_folder_with_class_dirs_but_no_images(tmp_path):
    (tmp_path / "ds" / "a").mkdir(parents=True)
    (tmp_path / "ds" / "a" / "readme.txt").write_text("x")
    with pytest.raises(DataError, match="empty"):
        create_dataset(tmp_path / "ds")


def test_a_folder_of_files_qmix_cannot_read_says_what_they_are(tmp_path):
    # A DICOM folder is the common case: "no images found" alone would leave the user guessing.
    for label in ("normal", "nodule"):
        for i in range(3):
            (tmp_path / "scans" / label).mkdir(parents=True, exist_ok=True)
            (tmp_path / "scans" / label / f"{i}.DCM").write_bytes(b"DICM" * 8)
    (tmp_path / "scans" / "normal" / "README").write_text("x")
    (tmp_path / "scans" / "normal" / ".DS_Store").write_text("x")  # hidden: not counted
    with pytest.raises(DataError) as err:
        create_dataset(tmp_path / "scans")
    message = str(err.value)
    assert "7 files qmix does not read as images (.dcm 6, (no suffix) 1)" in message
    assert ".png" in message and "DICOM" in message


def test_one_class_left_says_what_else_the_folder_held(make_image_folder):
    # The missing class is often a folder of DICOM files: the refusal names them and the folder left empty.
    root = make_image_folder(classes=("normal",), per_class=3)
    (root / "abnormal").mkdir()
    for i in range(2):
        (root / "abnormal" / f"{i}.dcm").write_bytes(b"DICM")
    with pytest.raises(DataError) as err:
        create_dataset(root)
    assert str(err.value) == (
        f"{root}: found 1 class (normal); at least 2 are needed to tell wrong labels from right ones; ignored 2 files "
        "qmix does not read as images (.dcm 2); class folders with no image, so no class: abnormal"
    )


def test_ignored_files_are_counted_for_folders_only(make_image_folder):
    root = make_image_folder(classes=("a", "b"), per_class=2)
    for i in range(3):
        (root / "b" / f"{i}.dcm").write_bytes(b"x")
    assert create_dataset(root).ignored == {".dcm": 3}
    assert create_dataset(_csv(root / "m.csv", _folder_rows(root))).ignored == {}  # a manifest names its images


@pytest.mark.parametrize("flat_val", [False, True])
def test_a_folder_of_splits_is_refused_with_the_split_to_name(make_image_folder, flat_val, tmp_path):
    # Read as classes, train/ and test/ would teach the nets to tell the splits apart: refused before any training.
    val = ("val",) if flat_val else ("val/a", "val/b")  # a validation split kept flat, as some datasets ship it
    root = make_image_folder(classes=("test/a", "test/b", "train/a", "train/b", *val), per_class=2)
    with pytest.raises(DataError) as err:
        create_dataset(root)
    assert str(err.value) == (
        f"{root}: the class folders test, train, val are named like a dataset's splits, with class folders inside; "
        f"name one split as the dataset (e.g. {root / 'train'}), or list the images in a manifest (path, label) if "
        "these really are the classes"
    )
    assert create_dataset(root / "train").classes == ("a", "b")  # what the message says to do works
    rows = [{"path": r["path"], "label": r["path"].split("/")[0]} for r in _folder_rows(root)]
    assert create_dataset(_csv(root / "m.csv", rows)).classes == ("test", "train", "val")  # a manifest means it


def test_splits_beside_other_folders_are_refused_and_a_single_split_is_named(make_image_folder):
    # The pneumonia archive as some ship it: the splits beside a copy of the whole set and an archiver's folder.
    root = make_image_folder(
        classes=("train/NORMAL", "train/PNEUMONIA", "test/NORMAL", "val/PNEUMONIA", "chest_xray/train/NORMAL",
                 "__MACOSX"),
        per_class=2,
    )  # fmt: skip
    with pytest.raises(DataError, match=r"the class folders test, train, val are named like a dataset's splits"):
        create_dataset(root)
    # One split given as the dataset: one class, and the message says which folder to give instead.
    single = make_image_folder("single", classes=("train/a", "train/b"), per_class=2)
    with pytest.raises(DataError) as err:
        create_dataset(single)
    assert f"train looks like a dataset's split: name {single / 'train'} as the dataset" in str(err.value)


@pytest.mark.parametrize(
    "classes",
    [
        ("train/steam", "train/diesel", "bus/a"),  # one split-like name among real classes: a class called train
        ("train", "test"),  # images straight in train/ and test/: no class folders inside, read as named
    ],
)
def test_split_names_without_a_split_layout_are_read_as_classes(make_image_folder, classes):
    root = make_image_folder(classes=classes, per_class=2)
    assert create_dataset(root).classes == tuple(sorted({c.split("/")[0] for c in classes}))


def test_other_nesting_is_no_note_and_a_class_folder_without_images_is(make_image_folder):
    # Images grouped by patient, or by side, inside each class: layouts users mean, even with shared names.
    root = make_image_folder(classes=("sick/p1", "sick/p2", "well/p3", "well/p4"), per_class=2)
    assert create_dataset(root).notes == ()
    sides = make_image_folder("sides", classes=("benign/left", "benign/right", "malignant/left"), per_class=2)
    assert create_dataset(sides).notes == ()
    (root / "unused").mkdir()
    (root / "unused" / "scan.dcm").write_bytes(b"x")
    ds = create_dataset(root)
    assert ds.classes == ("sick", "well")
    assert ds.notes == ("class folders with no image, so no class: unused",)
    assert create_dataset(_csv(root / "m.csv", _folder_rows(root))).notes == ()  # a manifest names its images


def test_a_table_of_labels_beside_the_class_folders_is_named_as_unread(make_image_folder):
    # A labels.csv corrected by hand at the top of the folder: the class folders give the labels, so say it is unread.
    root = make_image_folder(classes=("a", "b"), per_class=2)
    (root / "labels.csv").write_text("path,label\na/0.png,b\nb/0.png,a\n")
    (root / "README.txt").write_text("not a table")
    ds = create_dataset(root)
    assert ds.labels.tolist() == [0, 0, 1, 1]  # the folders' labels, as before
    assert ds.notes == (
        "labels are read from the class folders; labels.csv at the top of the folder is not read (give a manifest "
        "of path and label columns as the dataset to use one)",
    )
    (root / "labels.csv").rename(root / "manifest.csv")  # the name a folder's manifest has: read, not named unread
    listed = create_dataset(root)
    assert listed.labels.tolist() == [1, 0] and not any("is not read" in note for note in listed.notes)


def test_strips_pages_and_transparency_not_read_as_they_are_are_named_and_remembered(tmp_path, write_image):
    root = tmp_path / "ds"
    write_image(root / "a" / "plain.png")
    (root / "b").mkdir(parents=True)
    first, second = Image.new("L", (8, 8), 0), Image.new("L", (8, 8), 255)
    first.save(root / "a" / "stack.tif", save_all=True, append_images=[second])  # a two-page TIFF
    first.convert("P").save(root / "b" / "cine.gif", save_all=True, append_images=[second.convert("P")])
    opaque = Image.new("RGBA", (8, 8), (10, 200, 30, 255))
    opaque.save(root / "b" / "opaque.png")  # an alpha channel that hides nothing: no note
    drawn_in_alpha = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    drawn_in_alpha.putpixel((3, 3), (0, 0, 0, 255))  # black strokes on a transparent background
    drawn_in_alpha.save(root / "b" / "stroke.png")
    keyed = Image.new("P", (8, 8), 0)
    keyed.putpalette([0, 0, 0, 255, 255, 255])
    keyed.putpixel((0, 0), 1)
    keyed.save(root / "a" / "keyed.png", transparency=1)  # a palette entry that is see-through
    Image.new("L", (48, 12), 90).save(root / "a" / "strip.png")  # an ECG-like strip, 4:1, squashed to a square
    Image.new("L", (47, 12), 90).save(root / "b" / "wide.png")  # just under: no note
    strip = (
        "images at least 4 times as long as they are wide: 1 (e.g. a/strip.png); each image is resized to a "
        "square, so cut such strips into tiles first if their detail matters"
    )
    layered = "images with several pages or frames, of which only the first is read: 2 (e.g. a/stack.tif)"
    clear = (
        "partly transparent images, read as stored beneath the transparency: 2 (e.g. a/keyed.png); flatten them "
        "first if what they show is in the transparency"
    )
    assert create_dataset(root).notes == (strip, layered, clear)
    assert create_dataset(root).notes == (strip, layered, clear)  # the same from the remembered check
    assert create_dataset(root, check_images=False).notes == ()


def test_images_of_several_bit_depths_are_named(tmp_path):
    # A scanner's 16-bit PNGs beside a PACS export's 8-bit ones: each 16-bit image is scaled by its own range, the
    # 8-bit ones are read as stored, so brightness says which export an image came from.
    root = tmp_path / "ds"
    for name in ("normal", "abnormal"):
        (root / name).mkdir(parents=True)
    Image.fromarray(np.full((8, 8), 3000, dtype=np.uint16)).save(root / "normal" / "scan16.png")
    Image.new("L", (8, 8), 90).save(root / "normal" / "scan8.png")
    Image.new("L", (8, 8), 200).save(root / "abnormal" / "a8.png")
    assert Image.open(root / "normal" / "scan16.png").mode in ("I;16", "I")
    assert create_dataset(root).notes == (
        "images of more than 8 bits a pixel, each scaled by its own range, beside 8-bit ones read as stored: 1 of 3 "
        "(e.g. normal/scan16.png); bring them to one bit depth first if they show the same kind of picture",
    )
    (root / "normal" / "scan8.png").unlink()
    (root / "abnormal" / "a8.png").unlink()
    Image.fromarray(np.full((8, 8), 9000, dtype=np.uint16)).save(root / "abnormal" / "a16.png")
    assert create_dataset(root).notes == ()  # all 16-bit: read alike, nothing to say


def _exif(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif


def test_photos_a_camera_marked_as_turned_are_named_and_remembered(tmp_path):
    root = tmp_path / "ds"
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
    photo = Image.new("RGB", (16, 8), (200, 30, 30))
    photo.save(root / "a" / "phone.jpg", exif=_exif(6))  # a phone held upright: the pixels are to be turned
    photo.save(root / "b" / "mirrored.png", exif=_exif(2))
    photo.save(root / "a" / "upright.jpg", exif=_exif(1))  # orientation 1, or none: no note
    photo.save(root / "a" / "zero.jpg", exif=_exif(0))  # 0 and 9 mean nothing: upright to Pillow and viewers
    photo.save(root / "a" / "nine.jpg", exif=_exif(9))
    photo.save(root / "b" / "plain.jpg")
    photo.save(root / "b" / "scan.tif", exif=_exif(6))  # Pillow turns a TIFF upright as it reads it
    note = (
        "photos whose EXIF orientation says to turn them, read as stored (sideways or mirrored, not as a photo viewer "
        "shows them): 2 (e.g. a/phone.jpg); turn them upright first (exiftran -ai, mogrify -auto-orient) if some of "
        "your photos are turned and others not"
    )
    assert create_dataset(root).notes == (note,)
    assert create_dataset(root).notes == (note,)  # the same from the remembered check
    assert read_image(root / "a" / "phone.jpg", channels=3).shape[:2] == (8, 16)  # as stored, as torchvision reads
    assert read_image(root / "b" / "scan.tif", channels=3).shape[:2] == (16, 8)  # turned: nothing to say


@pytest.mark.parametrize("sep", [";", "\t"])
def test_a_spreadsheets_semicolon_or_tab_csv_is_read_by_its_separator(make_image_folder, sep):
    root = make_image_folder(classes=("a", "b"), per_class=2)
    rows = _folder_rows(root)
    notes = ["x", "y", "0,5", "z"]  # a comma in a later row only (a decimal comma), which a comma parse trips on
    pd.DataFrame(rows).assign(note=notes).to_csv(root / "m.csv", sep=sep, index=False)
    ds = create_dataset(root / "m.csv")
    assert ds.frame["path"].tolist() == [r["path"] for r in rows] and ds.classes == ("a", "b")
    assert ds.frame["note"].tolist() == notes
    pd.DataFrame(rows).to_csv(root / "quoted.csv", sep=sep, index=False, quoting=csv.QUOTE_ALL)  # "path";"label"
    assert create_dataset(root / "quoted.csv").frame["path"].tolist() == ds.frame["path"].tolist()
    pd.DataFrame({"file": ["x"], "class": ["a"]}).to_csv(root / "other.csv", sep=sep, index=False)
    with pytest.raises(DataError, match="missing column"):  # other columns: still named as they are
        create_dataset(root / "other.csv")


def test_labels_written_alike_are_pointed_out_and_kept_apart(make_image_folder):
    root = make_image_folder(classes=("Cat", "cat", "dog", "t-shirt", "T_shirt"), per_class=2)
    rows = _folder_rows(root)
    rows[0]["label"] = "cat "  # a trailing space, as spreadsheets keep them
    ds = create_dataset(_csv(root / "m.csv", rows))
    assert ds.classes == ("Cat", "T_shirt", "cat", "cat ", "dog", "t-shirt")  # nothing merged behind the user's back
    assert ds.notes == (
        "labels written alike are separate classes: 'Cat' and 'cat' and 'cat '; 'T_shirt' and 't-shirt' "
        "(make them one in the data if they are)",
    )
    assert create_dataset(make_image_folder("plain", classes=("cat", "dog"), per_class=2)).notes == ()
    long = "1234567890123456789012345678901"  # past a float's digits and a Decimal's 28: still told apart
    numbers = ["1", "01", "1.0", "-1", "2", "10", "1e1", long, long[:-1] + "2", "Number 1"]
    assert label_notes(numbers) == [  # a spreadsheet's formats; -1, 10 and the long ids are other numbers
        "labels written alike are separate classes: '01' and '1' and '1.0' (make them one in the data if they are)"
    ]
    composed, decomposed = "cr\u00e8me", "cre\u0300me"  # one spelling per program that saved it: alike on screen
    assert label_notes([composed, decomposed, "other"]) == [
        f"labels written alike are separate classes: {decomposed!a} and {composed!a} (make them one in "
        "the data if they are)"
    ]


def test_ids_pandas_saved_as_a_parquet_index_are_read_as_the_ids(make_image_folder):
    root = make_image_folder(classes=("a", "b"), per_class=2)
    rows = pd.DataFrame(_folder_rows(root)).assign(sample_id=["s0", "s1", "s2", "s3"])
    rows.set_index("sample_id").to_parquet(root / "m.parquet")  # the index is stored as a column, named
    ds = create_dataset(root / "m.parquet")
    assert ds.sample_ids == ["s0", "s1", "s2", "s3"]
    rows.to_parquet(root / "plain.parquet")  # a default index is no column
    assert list(create_dataset(root / "plain.parquet").frame.columns) == ["path", "label", "sample_id"]


def test_whole_number_floats_in_a_parquet_manifest_are_read_as_integers(make_image_folder):
    # pandas stores an integer column that once held a missing value as floats: class 1 arrives as 1.0
    root = make_image_folder(classes=("a", "b"), per_class=2)
    rows = pd.DataFrame(_folder_rows(root)).assign(
        label=[0.0, 0.0, 1.0, 1.0], sample_id=[10.0, 11.0, 12.0, 13.0], true_label=[0.0, 1.0, 1.0, None], weight=1.0
    )
    rows.to_parquet(root / "m.parquet")
    ds = create_dataset(root / "m.parquet")
    assert ds.classes == ("0", "1")
    assert ds.sample_ids == ["10", "11", "12", "13"]
    frame, _ = read_manifest(root / "m.parquet")
    assert frame["true_label"].iloc[:3].astype(str).tolist() == ["0", "1", "1"]
    assert pd.isna(frame["true_label"].iloc[3])
    assert frame["weight"].dtype == np.float64  # the user's own columns are theirs: untouched
    rows.assign(label=[0.5, 0.5, 1.0, 1.0]).to_parquet(root / "halves.parquet")  # not whole numbers: kept as written
    assert create_dataset(root / "halves.parquet").classes == ("0.5", "1.0")
    rows.assign(sample_id=[1e19, 2.0, 3.0, 4.0]).to_parquet(root / "huge.parquet")  # past int64: still whole
    assert create_dataset(root / "huge.parquet").sample_ids == ["10000000000000000000", "2", "3", "4"]


def test_spreadsheet_csv_quirks_are_read_or_named(make_image_folder):
    root = make_image_folder(classes=("a", "b"), per_class=2)
    body = "".join(f"{r['path']},{r['label']},\n" for r in _folder_rows(root))
    (root / "trailing.csv").write_text("path,label,\n" + body)  # every line ends in a separator
    assert list(create_dataset(root / "trailing.csv").frame.columns) == ["sample_id", "path", "label"]
    (root / "twice.csv").write_text("path,label,label\n" + body.replace(",\n", ",x\n"))
    with pytest.raises(DataError, match="the column 'label' is named 2 times; keep one"):
        create_dataset(root / "twice.csv")
    # A separator at the end of the data lines only: pandas took each path for the index and read labels as paths.
    (root / "ragged.csv").write_text("path,label\n" + body)
    assert create_dataset(root / "ragged.csv").frame["label"].tolist() == ["a", "a", "b", "b"]
    # A field more than the header that holds something is refused rather than guessed at.
    (root / "long.csv").write_text("path,label\n" + body.replace(",\n", ",x\n"))
    with pytest.raises(DataError, match=r"long\.csv: a row has more fields than its header"):
        create_dataset(root / "long.csv")
    (root / "own.csv").write_text("path,label,label.1\n" + body.replace(",\n", ",x\n"))  # a column of that name
    assert create_dataset(root / "own.csv").frame["label.1"].tolist() == ["x"] * 4
    pd.DataFrame(_folder_rows(root)).to_csv(root / "indexed.csv")  # pandas' index: a column with no name, kept
    assert create_dataset(root / "indexed.csv").frame["Unnamed: 0"].tolist() == ["0", "1", "2", "3"]
    (root / "latin1.csv").write_bytes(
        ("path,label\n" + body.replace(",\n", "\n").replace(",a", ",caf\u00e9")).encode("latin-1")
    )
    with pytest.raises(DataError, match=r"not UTF-8 text \(byte 0xe9 at offset \d+\); save it as UTF-8$"):
        create_dataset(root / "latin1.csv")
    # A binary table named .csv is said as what it is, not as text in another encoding.
    pd.DataFrame(_folder_rows(root)).to_parquet(root / "parquet.csv")
    with pytest.raises(DataError, match=r"parquet\.csv: it is a Parquet file, not CSV text; save it as CSV$"):
        create_dataset(root / "parquet.csv")
    (root / "book.csv").write_bytes(b"PK\x03\x04" + bytes(200))
    with pytest.raises(DataError, match=r"it is a zip archive \(an Excel workbook\?\), not CSV text"):
        create_dataset(root / "book.csv")
    (root / "named.csv").write_text("Image Path,Class\n" + body.replace(",\n", "\n"))
    with pytest.raises(
        DataError, match=r"found: Image Path, Class \(rename 'Image Path' to 'path', 'Class' to 'label'\)$"
    ):
        create_dataset(root / "named.csv")


def test_a_parquet_error_is_one_line(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_arrays(
        [pa.array(["x.png"]), pa.array(["a"]), pa.array(["b"])], names=["path", "label", "label"]
    )
    pq.write_table(table, tmp_path / "m.parquet")
    with pytest.raises(DataError) as exc:
        create_dataset(tmp_path / "m.parquet")
    assert str(exc.value).startswith(f"cannot read manifest {tmp_path / 'm.parquet'}: ") and "\n" not in str(exc.value)


def test_a_file_named_by_several_rows_is_counted_with_its_labels(make_image_folder, monkeypatch):
    root = make_image_folder(classes=("a", "b"), per_class=2)
    rows = _folder_rows(root)
    with pytest.raises(DataError, match=r"^1 path listed more than once in .*: a/0\.png \(each row is an image"):
        create_dataset(_csv(root / "twice.csv", [*rows, rows[0]]))
    again = [
        {**rows[0], "sample_id": "second look", "label": "b"},  # the same file, another id and label
        {"sample_id": "dotted", "path": "./" + rows[1]["path"], "label": rows[1]["label"]},
        {"sample_id": "absolute", "path": str(root / rows[1]["path"]), "label": rows[1]["label"]},
    ]
    ds = create_dataset(_csv(root / "m.csv", [*({**r, "sample_id": r["path"]} for r in rows), *again]))
    assert len(ds) == 7
    assert ds.notes == (
        "image files named by more than one row: 2, 1 of them with different labels (e.g. a/0.png); each row is "
        "judged apart",
    )
    assert create_dataset(_csv(root / "once.csv", rows)).notes == ()
    monkeypatch.chdir(root.parent)  # the manifest named relative to the working directory, as on a command line
    assert create_dataset(Path(root.name) / "m.csv").notes == ds.notes


@pytest.mark.parametrize("path", ["https://example.org/x.png", "s3://bucket/x.png", "~/scans/x.png"])
def test_urls_and_home_paths_are_said_to_be_unsupported(make_image_folder, path):
    root = make_image_folder(classes=("a", "b"), per_class=2)
    with pytest.raises(DataError, match=r"URLs are not downloaded and ~ is not expanded\)$"):
        create_dataset(_csv(root / "m.csv", [*_folder_rows(root), {"path": path, "label": "a"}]))


def test_a_category_column_of_the_users_own_is_no_truth(make_image_folder):
    root = make_image_folder(classes=("a", "b"), per_class=2)
    rows = pd.DataFrame(_folder_rows(root)).assign(true_label=["a", "a", "b", "b"])
    truth = create_dataset(_csv(root / "t.csv", rows.assign(category="clean").to_dict("records"))).truth()
    assert truth.tolist() == ["clean"] * 4
    own = rows.assign(category=["animal", "animal", "vehicle", "vehicle"]).to_dict("records")
    assert create_dataset(_csv(root / "own.csv", own)).truth() is None


def test_a_damaged_later_page_leaves_the_first_pages_verdict(tmp_path, write_image):
    import struct

    write_image(tmp_path / "ds" / "b" / "fine.png")
    pages = [Image.new("L", (8, 8), v) for v in (0, 120, 240)]
    pages[0].save(tmp_path / "stack.tif", save_all=True, append_images=pages[1:])
    data = bytearray((tmp_path / "stack.tif").read_bytes())
    first = struct.unpack("<I", data[4:8])[0]
    pointer = first + 2 + 12 * struct.unpack("<H", data[first : first + 2])[0]
    data[pointer : pointer + 4] = struct.pack("<I", len(data) + 1000)  # the second page lies past the file's end
    (tmp_path / "ds" / "a").mkdir(parents=True)
    (tmp_path / "ds" / "a" / "stack.tif").write_bytes(bytes(data))
    with warnings.catch_warnings(record=True) as caught:
        quiet_pillow_warnings()  # as every command does
        ds = create_dataset(tmp_path / "ds")  # Pillow raises TypeError counting its pages: not the image's fault
    assert len(ds) == 2 and ds.notes == ()
    assert not [w for w in caught if "EXIF" in str(w.message)]  # nor a warning about its damage on the terminal


def test_a_folder_read_through_a_partial_manifest_names_the_images_it_leaves_out(make_image_folder):
    root = make_image_folder("fundus", classes=("glaucoma", "healthy", "other"), per_class=4)
    rows = [r for r in _folder_rows(root) if not r["path"].startswith("glaucoma/")]
    rows[0]["path"] = rows[0]["path"].replace("/", "\\")  # a Windows export: still the same file
    rows[1]["path"] = str(root / rows[1]["path"])  # and an absolute path to one under the folder
    _csv(root / "manifest.csv", rows)
    ds = create_dataset(root)
    assert len(ds) == 8 and ds.source == str(root)
    assert ds.notes == (
        f"{root} is read through the manifest.csv in it, which leaves out 4 image file(s) in its subfolders "
        "(glaucoma/0.png, glaucoma/1.png, glaucoma/2.png, and 1 more); to read its class folders instead, move "
        "manifest.csv away",
    )
    (root / "cover.png").write_bytes((root / "healthy" / "0.png").read_bytes())  # beside the manifest: no class
    assert create_dataset(root).notes == ds.notes
    _csv(root / "manifest.csv", _folder_rows(root))  # every image listed: nothing to say
    assert create_dataset(root).notes == ()
    _csv(root / "manifest.csv", [{"path": r["path"], "label": "healthy"} for r in _folder_rows(root)])
    with pytest.raises(DataError, match=f"^{re.escape(str(root / 'manifest.csv'))}: found 1 class"):
        create_dataset(root)  # the error names the file that says so, not the folder


def test_header_only_csv(tmp_path):
    csv = tmp_path / "m.csv"
    csv.write_text("path,label\n")
    with pytest.raises(DataError, match="the dataset is empty"):
        create_dataset(csv)


def test_single_class(make_image_folder):
    root = make_image_folder(classes=("only",), per_class=3)
    with pytest.raises(DataError) as exc:
        create_dataset(root)
    msg = str(exc.value)
    assert "found 1 class (only)" in msg
    assert "at least 2" in msg


def test_unknown_labels_when_classes_given(make_image_folder):
    root = make_image_folder(classes=("a", "b", "c", "d"), per_class=1)
    with pytest.raises(DataError) as exc:
        create_dataset(root, classes=["a", "b"])
    msg = str(exc.value)
    assert msg.startswith("2 unknown labels")
    assert "2 known classes" in msg
    assert ": c; d" in msg
    rows = _folder_rows(root)
    rows[0]["label"] = "a "  # a space a spreadsheet kept: not the class 'a', and the message must show it
    with pytest.raises(DataError, match=r"1 unknown label .*: 'a '$"):
        create_dataset(_csv(root / "m.csv", rows[:2]), classes=["a", "b"])


def test_given_classes_are_kept_even_when_absent(make_image_folder):
    root = make_image_folder(classes=("b", "c"), per_class=2)
    ds = create_dataset(root, classes=["a", "b", "c"])
    assert ds.classes == ("a", "b", "c")
    assert ds.labels.tolist() == [1, 1, 2, 2]


def test_missing_source_and_unknown_file_type(tmp_path):
    with pytest.raises(DataError, match="dataset not found"):
        create_dataset(tmp_path / "nowhere")
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(DataError, match="cannot read"):
        create_dataset(tmp_path / "x.txt")
    os.mkfifo(tmp_path / "fifo")  # what `qmix train <(...)` hands over: said as such, never opened (it would block)
    with pytest.raises(DataError, match="is a pipe or a device, not a file; save it to a file first"):
        create_dataset(tmp_path / "fifo")


def test_malformed_parquet(tmp_path):
    (tmp_path / "m.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match="cannot read manifest"):
        create_dataset(tmp_path / "m.parquet")


# --------------------------------------------------------------------------------------------------------------
# Skipping bad images


def test_skip_drops_bad_rows_and_lists_them(tmp_path, make_image_folder, write_image, truncate):
    root = make_image_folder("imgs", classes=("a", "b", "c"), per_class=4)
    (root / "a" / "junk.png").write_bytes(b"\x89PNG but not really")
    (root / "c" / "never_copied.png").write_bytes(b"")
    truncate(write_image(root / "b" / "cut.jpg", size=48))
    rows = [{"path": f"imgs/{r['path']}", "label": r["label"]} for r in _folder_rows(root)]
    rows.append({"path": "imgs/b/cut.jpg", "label": "b"})
    rows.insert(2, {"path": "imgs/c/missing.png", "label": "c"})
    csv = _csv(tmp_path / "m.csv", rows)

    ds = create_dataset(csv, on_bad_image="skip")
    assert len(ds) == 12
    assert list(ds.frame.index) == list(range(12))
    assert ds.classes == ("a", "b", "c")
    skipped = ds.skipped.set_index("path")["reason"].to_dict()
    assert set(skipped) == {"imgs/a/junk.png", "imgs/c/missing.png", "imgs/b/cut.jpg", "imgs/c/never_copied.png"}
    assert skipped["imgs/c/missing.png"] == "file not found"
    assert skipped["imgs/a/junk.png"] == "not an image Pillow can read"
    assert skipped["imgs/c/never_copied.png"] == "empty file (0 bytes)"
    assert skipped["imgs/b/cut.jpg"].startswith("unreadable")
    assert not set(ds.frame["path"]) & set(skipped)
    assert ds.labels.tolist() == [ds.classes.index(lab) for lab in ds.frame["label"]]


def test_skip_everything_is_an_error(tmp_path):
    csv = _csv(tmp_path / "m.csv", [{"path": "a.png", "label": "a"}, {"path": "b.png", "label": "b"}])
    with pytest.raises(DataError, match="no usable images left after skipping 2"):
        create_dataset(csv, on_bad_image="skip")


# --------------------------------------------------------------------------------------------------------------
# Channels and decoding


def test_channels_grayscale_rgb_and_mixed(tmp_path, make_image_folder, write_image):
    gray = make_image_folder("gray", classes=("a", "b"), per_class=2, mode="L")
    assert create_dataset(gray).channels == 1
    rgb = make_image_folder("rgb", classes=("a", "b"), per_class=2, mode="RGB")
    assert create_dataset(rgb).channels == 3
    write_image(gray / "a" / "colour.png", mode="RGB")
    assert create_dataset(gray).channels == 3


def test_image_side_is_the_median_shorter_side_whether_checked_or_remembered(tmp_path):
    for label, (width, height) in zip("aab", [(10, 40), (30, 20), (50, 60)], strict=True):
        (tmp_path / label).mkdir(exist_ok=True)
        Image.new("RGB", (width, height), (9, 9, 9)).save(tmp_path / label / f"{width}.png")
    # Shorter sides 10, 20, 50: the median, not the mean (26) nor the largest side.
    assert create_dataset(tmp_path).image_side == 20
    assert create_dataset(tmp_path).image_side == 20  # the second check is remembered from the first


def test_16bit_grayscale_png_is_rescaled_not_clipped(tmp_path, write_image):
    arr = np.linspace(1000, 3000, 16 * 16).reshape(16, 16).astype(np.uint16)
    (tmp_path / "a").mkdir()
    Image.fromarray(arr).save(tmp_path / "a" / "x16.png")
    write_image(tmp_path / "b" / "y.png", mode="L")
    with Image.open(tmp_path / "a" / "x16.png") as img:
        assert img.mode.startswith("I")  # really a 16-bit file
    ds = create_dataset(tmp_path)
    assert ds.channels == 1
    out = read_image(tmp_path / "a" / "x16.png", channels=1)
    assert out.dtype == np.uint8 and out.shape == (16, 16, 1)
    assert out.min() == 0 and out.max() == 255  # clipping would make every pixel 255
    assert np.all(np.diff(out[:, :, 0].ravel().astype(int)) >= 0)  # the ramp's order survives
    small = read_image(tmp_path / "a" / "x16.png", channels=3, size=8)
    assert small.shape == (8, 8, 3)
    assert small.min() < 40 and small.max() > 215


def test_a_float_map_with_nan_and_infinite_pixels_keeps_its_picture(tmp_path):
    arr = np.linspace(-2.0, 6.0, 16 * 16, dtype=np.float32).reshape(16, 16)
    arr[0, :4] = np.nan  # masked pixels, as a float TIFF of a scan often has
    arr[1, :4] = [np.inf, -np.inf, np.inf, -np.inf]
    Image.fromarray(arr).save(tmp_path / "map.tif")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # casting NaN to uint8 warns and gives an undefined value
        out = read_image(tmp_path / "map.tif", channels=1)[:, :, 0]
    assert (out[:2, :4] == 0).all()  # what cannot be scaled takes the lowest value
    assert out[0, 4] == 0 and out[-1, -1] == 255  # the finite pixels keep their full range
    assert np.all(np.diff(out[2:].ravel().astype(int)) >= 0)
    empty = np.full((8, 8), np.nan, dtype=np.float32)
    Image.fromarray(empty).save(tmp_path / "empty.tif")
    assert (read_image(tmp_path / "empty.tif", channels=1) == 0).all()


def test_file_names_that_are_not_utf8_are_named(tmp_path, write_image):
    root = tmp_path / "ds"
    write_image(root / "a" / "good.png")
    write_image(root / "b" / "fine.png")
    Image.new("RGB", (8, 8)).save(os.fsencode(root / "a") + b"/bad\xff.png", format="PNG")
    with pytest.raises(DataError, match=r"not valid UTF-8.*bad\\udcff\.png"):
        create_dataset(root)


@pytest.mark.parametrize("target", ["image", "manifest-name", "manifest-name-capitals"])
def test_report_file_that_would_change_the_dataset_is_refused(make_image_folder, target):
    root = make_image_folder("imgs")
    ds = create_dataset(root)
    out = {"image": root / ds.frame["path"].iloc[0], "manifest-name": root / "manifest.csv"}.get(
        target, root / "MANIFEST.CSV"
    )
    with pytest.raises(ConfigError, match="dataset's images" if target == "image" else "change what the dataset"):
        check_output_file(ds, out)
    check_output_file(ds, root.parent / "report.csv")  # beside the dataset: fine


def test_a_manifest_beside_the_dataset_manifest_is_refused(tmp_path, make_image_folder):
    # A folder read through its manifest.csv would be read through a new manifest.parquet instead (it comes first).
    root = make_image_folder("imgs")
    _csv(root / "manifest.csv", _folder_rows(root))
    ds = create_dataset(root)
    with pytest.raises(ConfigError, match="change what the dataset folder"):
        check_output_file(ds, root / "manifest.parquet")
    check_output_file(ds, root / "fixed.parquet")  # another name in the same folder: fine
    # Named by its manifest file, the dataset is not read as a folder: a manifest name beside it changes nothing.
    check_output_file(create_dataset(root / "manifest.csv"), root / "manifest.parquet")


def test_paths_for_a_manifest_are_relative_under_its_folder_and_absolute_elsewhere(tmp_path):
    from qmix_cli.data.manifest import paths_for_manifest

    paths = [str(tmp_path / "data" / "a" / "1.png"), str(tmp_path / "other" / "2.png"), str(tmp_path / "data2.png")]
    assert paths_for_manifest(paths, folder=tmp_path / "data") == ["a/1.png", paths[1], paths[2]]  # not "data2"
    assert paths_for_manifest(paths, folder=None) == paths  # a manifest reached through a link: absolute
