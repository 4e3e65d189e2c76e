"""Manifests: one row per image with ``sample_id``, ``path`` and ``label``.

`create_dataset` accepts an ImageFolder directory, a CSV or Parquet manifest, a directory holding a
``manifest.parquet`` / ``manifest.csv`` (what ``qmix corrupt`` writes) or a built-in name, validates it, and
returns a `Dataset`. Everything that can be wrong with user data is reported here, before any training starts.
"""

from __future__ import annotations

import contextlib
import os
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from qmix_cli.categories import holds_verdicts
from qmix_cli.data.images import IMAGE_SUFFIXES, UNREADABLE_TIFF, WIDE_MODES, ImageInfo, scan_images
from qmix_cli.data.scan_cache import cached_scan, file_stats
from qmix_cli.data.tiff import PILLOW_READS
from qmix_cli.errors import ConfigError, DataError, count_of, first_few, summarise_offenders
from qmix_cli.io import is_one_of, is_pipe_or_device, read_csv_text
from qmix_cli.progress import Reporter, SilentReporter

if TYPE_CHECKING:
    from qmix_cli.data.cache import DecodeTarget

REQUIRED_COLUMNS = ("path", "label")
MANIFEST_NAMES = ("manifest.parquet", "manifest.csv")
# What a manifest file may be called: a table, not an image folder.
MANIFEST_SUFFIXES = frozenset({".csv", ".parquet", ".pq"})
OnBadImage = Literal["error", "skip"]


@dataclass(frozen=True)
class Dataset:
    """A validated manifest.

    Attributes
    ----------
    root
        Directory that relative paths resolve against.
    frame
        One row per usable image: ``sample_id``, ``path`` (as given), ``label`` (str) and any extra columns of
        the manifest (e.g. the truth columns written by ``qmix corrupt``). Index is 0..N-1.
    classes
        Sorted class names; ``labels`` index into it.
    skipped
        Rows left out with ``on_bad_image="skip"``: ``sample_id``, ``path``, ``reason``.
    channels
        1 when every image is grayscale, else 3 (0 when images were not inspected).
    image_side
        The median of the images' shorter sides in pixels, as stored (0 when images were not inspected): what
        training at a larger size would enlarge.
    source
        How the user named the dataset (recorded in run configs).
    ignored
        Files an ImageFolder's class folders hold that are not read as images (their suffix is not one of
        `IMAGE_SUFFIXES`: DICOM, text, ...), counted by suffix; empty for a manifest, which names its images.
    notes
        Lines about what the user probably did not mean: an ImageFolder's empty class folders (`layout_notes`),
        images not read as they are (strips, pages, transparency: `pixel_notes`), files named by several rows
        (`repeat_notes`), labels written alike (`label_notes`).
    file_stats
        (N, 2) int64: each image file's size and modification time in nanoseconds as the check found them, kept
        by ``create_dataset(decode_to=...)``, whose caller reads the images next: `cached_images` looks up what
        the check filled in under them instead of stat'ing every file again (so reads the images as checked; an
        edit since then is seen by the next `create_dataset`). What it must decode itself, it stats first. None:
        `cached_images` stats the files.
    """

    root: Path
    frame: pd.DataFrame
    classes: tuple[str, ...]
    skipped: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["sample_id", "path", "reason"]))
    channels: int = 0
    source: str = ""
    file_stats: np.ndarray | None = field(default=None, repr=False, compare=False)
    ignored: dict[str, int] = field(default_factory=dict, compare=False)
    notes: tuple[str, ...] = field(default=(), compare=False)
    image_side: int = 0

    def __len__(self) -> int:
        return len(self.frame)

    @property
    def labels(self) -> np.ndarray:
        """Given labels as int64 indices into ``classes``, shape (N,)."""
        index = {c: i for i, c in enumerate(self.classes)}
        return self.frame["label"].map(index).to_numpy(dtype=np.int64)

    @property
    def abs_paths(self) -> list[Path]:
        return [Path(p) for p in self.file_paths]

    @property
    def file_paths(self) -> list[str]:
        """Every image's absolute path as a string: what the hot paths use (no `Path` object per image)."""
        return absolute_paths(self.root, self.frame["path"])

    @property
    def sample_ids(self) -> list[str]:
        return self.frame["sample_id"].tolist()

    def truth(self) -> np.ndarray | None:
        """(N,) str: the ``category`` column of a manifest with truth (``qmix corrupt``'s, or written by hand), or
        None where there is none or the column is the user's own (not verdicts: `holds_verdicts`)."""
        if "category" not in self.frame.columns or not holds_verdicts(self.frame["category"]):
            return None
        return self.frame["category"].astype(str).to_numpy()


def paths_for_manifest(paths: Iterable[str], *, folder: str | Path | None) -> list[str]:
    """Absolute image ``paths`` as a manifest in ``folder`` should hold them: relative to it where they lie under
    it (the manifest and its images move together), absolute elsewhere and wherever ``folder`` is None (a
    manifest reached through a symlink resolves its paths from the link's folder, not its target's)."""
    items = [os.path.normpath(p) for p in paths]
    if folder is None:
        return items
    prefix = os.path.join(os.path.normpath(os.path.abspath(folder)), "")
    return [p[len(prefix) :] if p.startswith(prefix) else p for p in items]


def absolute_paths(root: Path, paths: Iterable[str]) -> list[str]:
    """``paths`` made absolute against ``root``, as strings (no `Path` object per image: cheap for 100k rows)."""
    base = os.path.abspath(root)
    items = paths.tolist() if isinstance(paths, pd.Series) else list(paths)  # not row by row out of Arrow
    if os.name == "posix":  # what os.path.isabs tests there, without its per-call overhead (5x faster at 100k)
        return [p if p.startswith("/") else os.path.join(base, p) for p in items]
    return [p if os.path.isabs(p) else os.path.join(base, p) for p in items]


def manifest_file(source: str | Path) -> Path | None:
    """The manifest file behind ``source`` (a .csv/.parquet, or a directory holding one); None for an
    ImageFolder or a built-in name."""
    path = Path(source)
    if path.is_dir():
        return next((path / n for n in MANIFEST_NAMES if (path / n).is_file()), None)
    return path if path.is_file() else None


def integer_key_columns(dataset: Dataset) -> dict[str, np.dtype]:
    """The key columns (``sample_id``, ``label``) the dataset's Parquet manifest stores as integers, which a
    `Dataset` holds as text, with their integer types; none for a CSV manifest, an image folder or a built-in set."""
    found = manifest_file(dataset.source) if Path(dataset.source).exists() else None
    if found is None or found.suffix.lower() == ".csv":
        return {}
    try:
        schema = pq.read_schema(found)
    except (OSError, pa.ArrowException):
        return {}
    fields = [schema.field(c) for c in ("sample_id", "label") if c in schema.names]
    return {f.name: np.dtype(f.type.to_pandas_dtype()) for f in fields if pa.types.is_integer(f.type)}


def check_output_dir(dataset: Dataset, out: str | Path) -> None:
    """Refuse an output folder that would change ``dataset``: one holding the dataset or any of its images
    (``--force`` would delete them), or one inside an ImageFolder (its files would join the dataset).

    Raises
    ------
    ConfigError
        Naming the flag ``--out`` and what it would have touched. Nothing is created or deleted.
    """
    src, dst = dataset.root.resolve(), Path(out).resolve()
    if dst == src or dst in src.parents:
        raise ConfigError(f"--out {out} contains the source dataset {dataset.root}; choose another folder")
    if Path(dataset.source).is_dir() and manifest_file(dataset.source) is None and src in dst.parents:
        raise ConfigError(f"--out {out} is inside the source dataset {dataset.root}; choose a folder outside it")
    # Lexical prefix test on normalised strings (the folder as written and as resolved): one pass over the
    # paths without resolving each one, which matters for manifests with a million rows.
    prefixes = tuple({os.path.join(os.path.abspath(out), ""), os.path.join(str(dst), "")})
    paths = pd.Series(dataset.file_paths, dtype=object).map(os.path.normpath)
    inside = paths[paths.str.startswith(prefixes)]
    if len(inside) == 0 and dst.is_dir():
        # ``--force`` deletes what is there: images reached through a symlinked folder or file are not found
        # by their names, so compare the files themselves (only when there is something to delete).
        inside = _files_stored_under(dst, paths)
    if len(inside):
        raise ConfigError(f"--out {out} contains source images (e.g. {inside.iloc[0]}); choose another folder")


def _files_stored_under(folder: Path, paths: pd.Series) -> pd.Series:
    """The ``paths`` whose files (symlinks followed) are stored under ``folder`` (symlinks in it not followed)."""
    stored = set()
    for dirpath, _, filenames in os.walk(folder):
        for name in filenames:
            with contextlib.suppress(OSError):
                st = os.stat(os.path.join(dirpath, name), follow_symlinks=False)
                stored.add((st.st_dev, st.st_ino))
    if not stored:
        return paths.iloc[:0]

    def stored_here(path: str) -> bool:
        try:
            st = os.stat(path)
        except OSError:
            return False
        return (st.st_dev, st.st_ino) in stored

    return paths[paths.map(stored_here).astype(bool)]


def check_output_file(dataset: Dataset, out: str | Path, *, option: str = "--out") -> None:
    """Refuse an output file that would change ``dataset``: its own manifest, one of its images, or a manifest
    name in the folder it is read as (an image folder, a built-in's or a ``qmix corrupt`` output would then be read
    as that manifest; ``manifest.parquet`` is read before ``manifest.csv``). Names are compared without case, as a
    case-insensitive file system would. A dataset named by its manifest file is not read as a folder. Errors name
    the output by ``option``."""
    target = Path(out).resolve()
    manifest = manifest_file(dataset.source)
    if manifest is not None and target == manifest.resolve():
        raise ConfigError(f"{option} {out} is the dataset's own manifest; write to another file")
    read_as_folder = manifest is None or Path(dataset.source).is_dir()
    if read_as_folder and target.parent == dataset.root.resolve() and target.name.lower() in MANIFEST_NAMES:
        raise ConfigError(f"{option} {out} would change what the dataset folder {dataset.root} reads as")
    if is_one_of(out, dataset.file_paths):
        raise ConfigError(f"{option} {out} is one of the dataset's images; write to another file")


_KEY_COLUMNS = ("sample_id", *REQUIRED_COLUMNS)


def _read_parquet(path: Path) -> pd.DataFrame:
    """A Parquet manifest; columns pandas saved as the index (``df.set_index("sample_id").to_parquet()``) come
    back as columns, not dropped: the ids are the user's."""
    frame = pd.read_parquet(path)
    named = [name for name in frame.index.names if name is not None and name not in frame.columns]
    frame = frame.reset_index(level=named) if named else frame
    for col in (*_KEY_COLUMNS, "true_label"):
        if col in frame.columns:
            frame[col] = _whole_numbers_as_integers(frame[col])
    return frame


def _whole_numbers_as_integers(column: pd.Series) -> pd.Series:
    """A float column whose values are all whole numbers as the integers' text (``"1"``; nulls kept), else the
    column as it is.

    pandas turns an integer column holding a missing value into floats, so class ``1`` is saved as ``1.0``; read as
    text it would become a class ``"1.0"`` that matches no ``1`` in a truth, a class map or an earlier report.
    Python's integers have no range to overflow (``1e19`` is ``"10000000000000000000"``).
    """
    if not pd.api.types.is_float_dtype(column):
        return column
    values = column.dropna().to_numpy()
    if not (np.isfinite(values).all() and (values == np.round(values)).all()):
        return column
    return column.map(lambda v: v if pd.isna(v) else str(int(v)), na_action="ignore").astype(object)


def _read_table(path: Path) -> pd.DataFrame:
    try:
        if path.suffix.lower() == ".csv":
            return read_csv_text(path, what="manifest", key_columns=_KEY_COLUMNS)
        return _read_parquet(path)
    except FileNotFoundError:
        raise DataError(f"manifest not found: {path}") from None
    except DataError:
        raise
    except Exception as e:  # pyarrow raises many types for malformed files; their first line says what
        reason = next((line for line in str(e).splitlines() if line.strip()), type(e).__name__)
        raise DataError(f"cannot read manifest {path}: {reason}") from None


def _scan_image_folder(root: Path) -> pd.DataFrame:
    """The images under ``root/<class>/``; the files passed over for their suffix are counted by suffix in the
    frame's ``attrs["ignored"]`` (`Dataset.ignored`), so that a folder of DICOM files is not silently empty."""
    rows = []
    ignored: Counter[str] = Counter()
    # Per class folder: whether it holds images itself, and the subfolders (first level) that hold them.
    layout: dict[str, tuple[bool, set[str]]] = {}
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        direct, subfolders = False, set()
        for dirpath, dirnames, filenames in os.walk(class_dir):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            found = len(rows)
            for name in sorted(filenames):
                if name.startswith("."):
                    continue
                suffix = Path(name).suffix.lower()
                if suffix not in IMAGE_SUFFIXES:
                    ignored[suffix or "(no suffix)"] += 1
                    continue
                rel = Path(dirpath, name).relative_to(root).as_posix()
                rows.append((rel, rel, class_dir.name))
            if len(rows) > found:  # this folder holds images: the class folder itself, or under one subfolder
                inner = Path(dirpath).relative_to(class_dir).parts
                direct = direct or not inner
                subfolders.update(inner[:1])
        layout[class_dir.name] = (direct, subfolders)
    # Names the file system holds as bytes that are not UTF-8 reach Python with surrogates, which no report,
    # Parquet file or JSON can hold: refuse them here, by name, rather than fail in a writer later.
    undecodable = [ascii(rel)[1:-1] for rel, _, _ in rows if not rel.isascii() and _has_surrogates(rel)]
    if undecodable:
        raise DataError(
            summarise_offenders(f"file names in {root} that are not valid UTF-8 (rename them)", undecodable)
        )
    frame = pd.DataFrame(rows, columns=["sample_id", "path", "label"])
    frame.attrs["ignored"] = dict(ignored.most_common())
    frame.attrs["nested_splits"] = _check_not_splits(layout, root=root)
    frame.attrs["notes"] = layout_notes(layout) + _unread_tables_note(root)
    return frame


# Files at the top of an image folder that look like a table of labels (``labels.csv``, ``train.parquet``).
_TABLE_SUFFIXES = (*MANIFEST_SUFFIXES, ".tsv", ".xlsx", ".xls", ".json")


def _unread_tables_note(root: Path) -> list[str]:
    """A note naming the tables at the top of an image folder read by its class folders: a ``labels.csv`` there
    (relabelled by hand, say) is not read, and its labels would be lost without a word. Only a file named
    `MANIFEST_NAMES` is read as the folder's manifest."""
    tables = sorted(
        p.name
        for p in root.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in _TABLE_SUFFIXES
    )
    if not tables:
        return []
    return [
        f"labels are read from the class folders; {', '.join(tables[:3])}{', ...' * (len(tables) > 3)} at the top "
        "of the folder is not read (give a manifest of path and label columns as the dataset to use one)"
    ]


def unlisted_notes(frame: pd.DataFrame, *, root: Path, manifest: Path) -> list[str]:
    """A note when a folder read through the manifest it holds (``frame``, its rows) has image files in its class
    folders (what `_scan_image_folder` would read instead) that the manifest does not list: a folder of class folders
    with a stray or partial ``manifest.csv`` would otherwise lose them unsaid."""
    try:
        found = _scan_image_folder(root)["path"].tolist()
    except DataError:  # file names the folder reading refuses: nothing to compare with, and not this dataset's fault
        return []
    base = os.path.join(os.path.abspath(root), "")
    listed = set()
    for p in frame["path"].astype(str):
        p = os.path.normpath(p.replace("\\", "/"))
        if os.path.isabs(p):
            if not p.startswith(base):
                continue  # elsewhere on the disk (or another drive): no file under the folder
            p = p[len(base) :]
        listed.add(os.path.normcase(p))
    unlisted = [p for p in found if os.path.normcase(os.path.normpath(p)) not in listed]
    if not unlisted:
        return []
    return [
        f"{root} is read through the {manifest.name} in it, which leaves out {len(unlisted):,} image file(s) in its "
        f"subfolders ({first_few(unlisted, show=3)}); to read its class folders instead, move {manifest.name} away"
    ]


# Folder names that name a split of a dataset rather than a class.
SPLIT_NAMES = frozenset({"train", "training", "val", "valid", "validation", "test", "testing", "dev", "eval"})


# A label that is a plain decimal number (``1``, ``01``, ``1.0``, ``-2.50``): written alike when equal in value.
_DECIMAL = re.compile(r"[+-]?\d+(?:\.\d+)?")


def _plain_number(number: str) -> str:
    """A decimal number (`_DECIMAL`) written one way: no ``+``, no leading zeros, no trailing fractional zeros
    (``+01.50`` → ``1.5``, ``-0.0`` → ``0``), every digit kept, however many (a float or a `decimal.Decimal` rounds
    a long id)."""
    sign, digits = (number[0], number[1:]) if number[0] in "+-" else ("", number)
    whole, _, fraction = digits.partition(".")
    plain = (whole.lstrip("0") or "0") + ("." + fraction.rstrip("0") if fraction.rstrip("0") else "")
    return plain if sign != "-" or plain == "0" else "-" + plain


def label_notes(labels: Iterable[str]) -> list[str]:
    """Distinct labels that differ only in case, surrounding spaces, spaces, ``_`` and ``-`` between words, the
    Unicode form of their accents, or the way a number is written (``'Cat '`` and ``'cat'``, ``'t-shirt'`` and
    ``'T_shirt'``, ``é`` as one character or as ``e`` and an accent, as two programs saved it, ``'1'``, ``'01'`` and
    ``'1.0'`` from a spreadsheet's formats): each is a class of its own, which a curator rarely means; one line
    naming up to three such sets, or none. Names that print alike are written with escapes."""
    spellings: dict[tuple[str, str], list[str]] = {}
    for label in sorted(set(labels)):
        if _DECIMAL.fullmatch(number := label.strip()):
            key = ("number", _plain_number(number))
        else:
            key = ("text", unicodedata.normalize("NFKC", re.sub(r"[\s_-]+", " ", label)).strip().casefold())
        spellings.setdefault(key, []).append(label)
    alike = [names for names in spellings.values() if len(names) > 1]
    if not alike:
        return []

    def written(names: list[str]) -> str:
        alike_on_screen = len({unicodedata.normalize("NFC", name) for name in names}) < len(names)
        show = ascii if alike_on_screen else repr
        return " and ".join(show(name) for name in names)

    shown = "; ".join(written(names) for names in alike[:3])
    more = f"; and {len(alike) - 3} more" if len(alike) > 3 else ""
    return [f"labels written alike are separate classes: {shown}{more} (make them one in the data if they are)"]


def repeat_notes(frame: pd.DataFrame, root: Path) -> list[str]:
    """Image files that several rows name (under their own ``sample_id``, or spelled ``a/x.png`` and ``./a/x.png``,
    relative and absolute; links are not followed): one line saying how many, and how many of them carry
    different labels, which is itself a label disagreement a curator wants to see; or none."""
    paths = frame["path"]
    base = os.path.normpath(os.path.abspath(root))
    keys = os.path.join(base, "") + paths  # the root "/" ends in its separator already
    # Only a path that is absolute or has "." or ".." segments or doubled separators can be spelled otherwise.
    odd = paths.str.startswith("/") | paths.str.contains(r"(?:^|/)\.\.?(?:/|$)|//", regex=True)
    if odd.any():
        keys = keys.copy()
        keys[odd] = [os.path.normpath(os.path.join(base, p)) for p in paths[odd]]
    repeated = keys.duplicated(keep=False)
    if not repeated.any():
        return []
    labels = frame.loc[repeated, "label"].groupby(keys[repeated]).nunique()
    example = paths[repeated].iloc[0]
    files = len(labels)
    differ = f", {int((labels > 1).sum()):,} of them with different labels" if (labels > 1).any() else ""
    return [f"image files named by more than one row: {files:,}{differ} (e.g. {example}); each row is judged apart"]


# Images are squashed to a square for training: one this many times as long as it is wide loses most of its length.
_LONG_ASPECT = 4


def pixel_notes(paths: Sequence[str], infos: Sequence[ImageInfo]) -> list[str]:
    """What the images hold that is not read as it is, one line each: long strips (squashed to a square), pages or
    frames after the first, transparency (the colour channels are read as stored beneath it), images of more than
    8 bits beside 8-bit ones (scaled by their own range, the others not) and EXIF orientation
    (the pixels are read as stored, not turned upright as photo viewers show them), the last two as torchvision's
    and timm's loaders read them."""
    notes = []
    long = [path for path, info in zip(paths, infos, strict=True) if max(info.size) >= _LONG_ASPECT * min(info.size)]
    if long:
        notes.append(
            f"images at least {_LONG_ASPECT} times as long as they are wide: {len(long):,} (e.g. {long[0]}); each "
            "image is resized to a square, so cut such strips into tiles first if their detail matters"
        )
    layered = [path for path, info in zip(paths, infos, strict=True) if info.frames > 1]
    if layered:
        notes.append(
            f"images with several pages or frames, of which only the first is read: {len(layered):,} "
            f"(e.g. {layered[0]})"
        )
    clear = [path for path, info in zip(paths, infos, strict=True) if info.see_through]
    if clear:
        notes.append(
            f"partly transparent images, read as stored beneath the transparency: {len(clear):,} (e.g. {clear[0]}); "
            "flatten them first if what they show is in the transparency"
        )
    wide = [path for path, info in zip(paths, infos, strict=True) if info.mode in WIDE_MODES]
    if wide and len(wide) < len(paths):
        # Two exports of one modality (a scanner's 16-bit PNGs, a PACS's 8-bit ones) then differ in brightness by
        # file type alone, which the nets can learn as readily as the finding.
        notes.append(
            f"images of more than 8 bits a pixel, each scaled by its own range, beside 8-bit ones read as stored: "
            f"{len(wide):,} of {len(paths):,} (e.g. {wide[0]}); bring them to one bit depth first if they show the "
            "same kind of picture"
        )
    turned = [path for path, info in zip(paths, infos, strict=True) if info.turned]
    if turned:
        notes.append(
            f"photos whose EXIF orientation says to turn them, read as stored (sideways or mirrored, not as a photo "
            f"viewer shows them): {len(turned):,} (e.g. {turned[0]}); turn them upright first (exiftran -ai, "
            "mogrify -auto-orient) if some of your photos are turned and others not"
        )
    return notes


def layout_notes(layout: dict[str, tuple[bool, set[str]]]) -> list[str]:
    """What an image folder's layout suggests the user did not mean, one line each: class folders with no image (no
    class is made of them).

    ``layout`` maps each class folder's name to whether it holds images itself and which of its subfolders do."""
    empty = [name for name, (direct, subs) in layout.items() if not direct and not subs]
    if not empty:
        return []
    return [f"class folders with no image, so no class: {', '.join(empty[:5])}{', ...' * (len(empty) > 5)}"]


def _check_not_splits(layout: dict[str, tuple[bool, set[str]]], *, root: Path) -> list[str]:
    """Refuse class folders of which two or more are named like a dataset's splits, one of those with class folders
    of its own (``train/<class>``, ``test/<class>``, as public chest X-ray sets ship, sometimes beside a copy of the
    whole set or an archiver's ``__MACOSX``): read as classes, they would train a net to tell the splits apart, which
    no one means, and a run would be spent before the verdicts showed it. Nesting inside real classes
    (``benign/left``) is left alone; a set whose classes really are so named can be given as a manifest.

    Returns the class folders named like splits that hold class folders (at most one, or the folder is refused): a
    dataset left with one class, that one, was given a level too high (`create_dataset` says so)."""
    splits = [name for name, (direct, subs) in layout.items() if (direct or subs) and name.lower() in SPLIT_NAMES]
    nested = [name for name in splits if layout[name][1]]
    if len(splits) >= 2 and nested:
        meant = next((name for name in splits if name.lower().startswith("train")), splits[0])
        raise DataError(
            f"{root}: the class folders {', '.join(splits)} are named like a dataset's splits, with class folders "
            f"inside; name one split as the dataset (e.g. {root / meant}), or list the images in a manifest "
            "(path, label) if these really are the classes"
        )
    return nested


def describe_ignored(ignored: dict[str, int]) -> str:
    """``"7 files qmix does not read as images (.dcm 6, .txt 1)"`` for `Dataset.ignored`."""
    n = sum(ignored.values())
    kinds = ", ".join(f"{suffix} {count}" for suffix, count in list(ignored.items())[:5])
    more = ", ..." if len(ignored) > 5 else ""
    return f"{count_of(n, 'file')} qmix does not read as images ({kinds}{more})"


def _has_surrogates(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def read_manifest(source: str | Path) -> tuple[pd.DataFrame, Path]:
    """Read a manifest or ImageFolder without touching the images; returns the raw frame and its root."""
    path = Path(source)
    if path.is_dir():
        found = manifest_file(path)
        if found is None:
            return _scan_image_folder(path), path
        frame = _read_table(found)
        frame.attrs["read_from"] = str(found)
        return frame, path
    if path.suffix.lower() in MANIFEST_SUFFIXES:
        return _read_table(path), path.parent
    if not path.exists():
        raise DataError(
            f"dataset not found: {source} (expected a directory, a .csv/.parquet manifest or a built-in name)"
        )
    if is_pipe_or_device(path):  # `<(...)`: a manifest's paths are relative to its folder, which a pipe has not
        raise DataError(f"cannot read {source}: it is a pipe or a device, not a file; save it to a file first")
    raise DataError(f"cannot read {source}: expected an ImageFolder directory or a .csv/.parquet manifest")


# What a manifest made elsewhere may call the columns qmix needs (matched without case, spaces, ``_`` or ``-``).
_COLUMN_ALIASES = {
    "path": ("path", "file", "filename", "filepath", "image", "imagepath", "img", "imgpath", "imagefile"),
    "label": ("label", "labels", "class", "classname", "target", "diagnosis", "y"),
}


def _rename_hint(missing: Sequence[str], columns: Sequence[str]) -> str:
    """`` (rename 'Label' to 'label')`` for the found columns that look like the missing ones, or ``""``."""
    plain = {re.sub(r"[\s_-]+", "", str(c)).casefold(): str(c) for c in columns}
    pairs = [(plain[alias], name) for name in missing for alias in _COLUMN_ALIASES[name] if alias in plain]
    return f" (rename {', '.join(f'{old!r} to {new!r}' for old, new in pairs)})" if pairs else ""


def _check_columns(frame: pd.DataFrame, source: str) -> tuple[pd.DataFrame, list[str]]:
    """The manifest's rows with ``sample_id``, ``path`` and ``label`` as text (the ids are the paths where it has
    none), and what is wrong with their cells, one line per kind: empty cells, ids listed twice. A missing column is
    refused at once (nothing else can be checked); the cell problems are gathered, so that a manifest with several
    is fixed in one round rather than one per run."""
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise DataError(
            f"{source}: missing column(s) {', '.join(missing)}; a manifest needs 'path' and 'label' "
            f"(and optionally 'sample_id'); found: {', '.join(map(str, frame.columns)) or 'none'}"
            + _rename_hint(missing, list(frame.columns))
        )
    frame = frame.reset_index(drop=True).copy()
    ids_are_paths = "sample_id" not in frame.columns
    if ids_are_paths:
        frame.insert(0, "sample_id", frame["path"])
    problems, blank = [], {}
    for col in ("path", "label", "sample_id"):
        empty = blank[col] = (frame[col].isna() | (frame[col].astype(str).str.strip() == "")).to_numpy()
        if empty.any() and not (col == "sample_id" and ids_are_paths):  # empty ids of paths: said of the paths
            # Named by their path where they have one (what a user searches the file for), and by row counted from 1
            # after the header (a CSV's line number is one more).
            rows = [
                f"row {i + 1}" if blank["path"][i] else f"{frame['path'].iat[i]} (row {i + 1})"
                for i in np.flatnonzero(empty)
            ]
            what = f"rows with an empty '{col}' in {source}"
            problems.append(summarise_offenders(what, rows) + " (rows counted after the header)")
        frame[col] = frame[col].astype(str)
    dup = frame["sample_id"].duplicated(keep=False).to_numpy() & ~blank["sample_id"]
    if dup.any():
        ids = list(dict.fromkeys(frame.loc[dup, "sample_id"]))
        if ids_are_paths:  # the user wrote no ids: say it in the terms of the file
            problems.append(
                summarise_offenders(f"paths listed more than once in {source}", ids)
                + " (each row is an image, named by its path; add a sample_id column if they are meant as several)"
            )
        else:
            problems.append(summarise_offenders(f"duplicate sample_ids in {source}", ids))
    return frame, problems


def _posix_separators(frame: pd.DataFrame, root: Path) -> pd.DataFrame:
    """``frame`` with paths written with Windows separators (``images\\cat\\1.png``, as a manifest made on
    Windows holds them) read with ``/`` where that is the separator, except where a file of that very name exists
    (a backslash is a legal file-name character there). Before the root check: ``..\\..\\x`` climbs out too."""
    if os.sep == "\\":
        return frame
    windows = frame["path"].str.contains("\\", regex=False).to_numpy()
    if not windows.any():
        return frame
    rows = np.flatnonzero(windows)
    named = frame["path"].to_numpy()[rows]
    fix = rows[np.array([not os.path.lexists(os.path.join(root, p)) for p in named], dtype=bool)]
    paths = frame["path"].to_numpy().copy()
    paths[fix] = [p.replace("\\", "/") for p in paths[fix]]
    return frame.assign(path=paths)


def _escaping_paths(frame: pd.DataFrame, root: Path, source: str) -> list[str]:
    """What is wrong with the paths of ``frame`` (text) that climb out of ``root``: one line, or none.

    Relative paths must stay under the root: "../../etc/passwd" in a shared manifest is refused. The check is lexical
    (normpath), so symlinks placed inside the root by the user still work. Joined to the root and normalised, a
    relative path can only climb out through a ".." segment, so only paths containing ".." need the per-path check
    (a vectorised filter: manifests can have millions of rows)."""
    suspect = frame["path"].str.contains("..", regex=False)
    paths = zip(frame.loc[suspect, "sample_id"], frame.loc[suspect, "path"], strict=True)
    bad = [p if sid == p else f"{sid} ({p})" for sid, p in paths if escapes_root(p, root)]
    if not bad:
        return []
    return [
        summarise_offenders(f"paths escaping the dataset root {root} in {source}", bad)
        + " (paths are relative to the manifest's folder: put the manifest in a folder above the images, or "
        "give absolute paths)"
    ]


def escapes_root(path: str, root: str | Path) -> bool:
    """Whether a relative ``path`` joined to ``root`` lands outside it (through ``..``), judged on the text alone;
    absolute paths are the user's to give and never escape."""
    if os.path.isabs(path):
        return False
    root_norm = os.path.normpath(os.path.abspath(root))
    full = os.path.normpath(os.path.join(root_norm, path))
    return os.path.commonpath([root_norm, full]) != root_norm


def _check_images(
    frame: pd.DataFrame,
    root: Path,
    *,
    on_bad_image: OnBadImage,
    workers: int | None,
    reporter: Reporter,
    cache_dir: Path,
    decode_to: DecodeTarget | None,
    min_classes: int,
) -> tuple[pd.DataFrame, pd.DataFrame, list[ImageInfo], np.ndarray | None]:
    """The good rows, the skipped ones, the good rows' image infos and their files' `file_stats` as (N, 2)
    int64 (None where a file could not be stat'ed; a dataset with such a file is refused or skips it)."""
    from qmix_cli.data.cache import CacheFill

    with contextlib.ExitStack() as stack:
        fills: list[CacheFill] = []

        paths = absolute_paths(root, frame["path"])
        # One stat of every file keys the remembered check, the fill and (through `Dataset.file_stats`) the
        # lookup of what the fill stored: on a network file system a stat pass over 100k files is seconds.
        try:
            stats = file_stats(paths)
        except OSError:  # a missing file: the check reports it, and nothing is remembered or filled
            stats = None

        def scan(paths: Sequence[str]) -> list[ImageInfo]:  # the paths above, when the check is not remembered
            fillable = decode_to is not None and stats is not None
            fill = CacheFill.start(paths, stats, decode_to, cache_dir=cache_dir) if fillable else None
            progress = reporter.task("checking images", len(paths))
            if fill is None:
                return scan_images(paths, workers=workers, progress=progress)
            stack.callback(fill.close)
            fills.append(fill)
            return scan_images(paths, workers=workers, progress=progress, keep=fill.put, size=decode_to.jpeg_draft)

        infos = cached_scan(paths, cache_dir=cache_dir, scan=scan, stats=stats)
        bad = np.array([info.error is not None for info in infos], dtype=bool)
        # Filled only for a dataset that will be accepted: no bad image refused, enough classes left.
        if (not bad.any() or on_bad_image == "skip") and frame.loc[~bad, "label"].nunique() >= min_classes:
            for fill in fills:
                fill.finish(~bad)
    skipped = pd.DataFrame(
        {
            "sample_id": frame.loc[bad, "sample_id"].to_numpy(),
            "path": frame.loc[bad, "path"].to_numpy(),
            "reason": [info.error for info in infos if info.error is not None],
        }
    )
    if bad.any() and on_bad_image == "error":
        offenders = [f"{r.path}: {r.reason}" for r in skipped.itertuples()]
        absolute = frame["path"].map(os.path.isabs).all()
        if skipped["path"].str.contains(r"^(?:[A-Za-z][A-Za-z0-9+.-]*://|~)", regex=True).any():
            hint = " (paths name files on this machine: URLs are not downloaded and ~ is not expanded)"
        elif bad.all() and skipped["reason"].str.startswith("file not found").all() and not absolute:
            # Skipping them would leave nothing: the paths, not the images, are likely what is wrong.
            hint = f" (none of the images could be read: are the paths relative to {root}?)"
        elif bad.all():
            hint = " (none of the images could be read)"
        else:
            hint = " (pass --on-bad-image skip to leave them out)"
        if skipped["reason"].str.startswith(UNREADABLE_TIFF).any():
            hint = f". {PILLOW_READS}{hint}"  # once for every such file, not after each
        raise DataError(summarise_offenders("bad images", offenders) + hint)
    good = [info for info, b in zip(infos, bad, strict=True) if not b]
    kept_stats = None if stats is None else np.asarray(stats, dtype=np.int64).reshape(-1, 2)[~bad]
    return frame.loc[~bad].reset_index(drop=True), skipped, good, kept_stats


def create_dataset(
    source: str | Path,
    *,
    on_bad_image: OnBadImage = "error",
    check_images: bool = True,
    classes: Sequence[str] | None = None,
    min_classes: int = 2,
    cache_dir: str | Path | None = None,
    workers: int | None = None,
    reporter: Reporter | None = None,
    decode_to: DecodeTarget | None = None,
) -> Dataset:
    """Load and validate a dataset.

    Parameters
    ----------
    source
        An ImageFolder directory, a ``.csv``/``.parquet`` manifest, a directory containing ``manifest.parquet``
        or ``manifest.csv``, or a built-in name (``digits``, ``fashion-mnist``, ``fashion-mnist:test``).
    on_bad_image
        ``"error"`` stops at missing, unreadable or truncated images; ``"skip"`` leaves them out and lists them
        in ``Dataset.skipped``.
    check_images
        Decode every image once to validate it (and to learn whether all are grayscale).
    classes
        The class list to use (e.g. a trained run's). Labels outside it are an error. By default the sorted
        distinct labels.
    min_classes
        Fewest distinct labels accepted (training needs 2).
    cache_dir
        Where built-in datasets are materialised and image checks are remembered (default: `default_cache_dir`):
        files unchanged since their last check are not decoded again.
    workers
        Decoding threads.
    reporter
        Receives progress (a bar while images are checked).
    decode_to
        The size and channels the images will be read at (`qmix_cli.data.cache.cached_images`): images that are
        checked now (not remembered from an earlier check) are also decoded into the cache in the same pass, so
        that each is decoded once instead of twice (with channels None, the first image checked sets them: see
        `qmix_cli.data.cache.CacheFill`; nothing is stored for a dataset that is refused).
    """
    from qmix_cli.data.builtin import cache_root, is_builtin, materialise_builtin

    if on_bad_image not in ("error", "skip"):
        raise DataError(f"on-bad-image must be 'error' or 'skip' (got {on_bad_image!r})")
    if not isinstance(source, str | os.PathLike):
        raise DataError(
            f"a dataset is named by a path or a built-in name, not a {type(source).__name__}; write a table to a "
            ".csv or .parquet manifest (path, label) and pass its path"
        )
    name = str(source)
    if is_builtin(name):
        source = materialise_builtin(name, cache_dir=cache_dir)
    raw, root = read_manifest(source)
    given = name  # what the dataset is recorded as
    if not is_builtin(name):  # a folder read through the manifest in it: errors name the file, which is what to fix
        name = raw.attrs.get("read_from", name)
    ignored = dict(raw.attrs.get("ignored", {}))
    frame, problems = _check_columns(raw, name)
    if frame.empty:
        loose = Path(source).is_dir() and any(
            f.suffix.lower() in IMAGE_SUFFIXES for f in Path(source).iterdir() if f.is_file()
        )
        hint = "; an image folder holds one folder per class (root/<class>/<image>)" if loose else ""
        if ignored:
            readable = " ".join(sorted(IMAGE_SUFFIXES))
            hint += (
                f"; its class folders hold {describe_ignored(ignored)}: it reads {readable} (convert others, "
                "e.g. DICOM, to PNG first)"
            )
        raise DataError(f"{name}: the dataset is empty (no images found){hint}")
    frame = _posix_separators(frame, root)
    problems += _escaping_paths(frame, root, name)
    if problems:  # every one the manifest has, in one line: a user fixes them in one round
        raise DataError("; also ".join(problems))
    notes = list(raw.attrs.get("notes", ()))
    if check_images and "read_from" in raw.attrs and not is_builtin(given):  # a walk, where every image is read anyway
        notes += unlisted_notes(frame, root=Path(root), manifest=Path(raw.attrs["read_from"]))

    if classes is not None:
        classes = tuple(str(c) for c in classes)
        unknown = sorted(set(frame["label"]) - set(classes))
        if unknown:
            shown = [repr(u) if u != u.strip() else u for u in unknown]  # 'Normal ' is not 'Normal': show the space
            raise DataError(
                summarise_offenders(f"unknown labels in {name} (not among the {len(classes)} known classes)", shown)
            )

    skipped = pd.DataFrame(columns=["sample_id", "path", "reason"])
    channels = image_side = 0
    stats = None
    if check_images:
        frame, skipped, infos, stats = _check_images(
            frame,
            root,
            on_bad_image=on_bad_image,
            workers=workers,
            reporter=reporter or SilentReporter(),
            cache_dir=cache_root(cache_dir),
            decode_to=decode_to,
            min_classes=min_classes,
        )
        if frame.empty:
            raise DataError(f"{name}: no usable images left after skipping {len(skipped)} bad ones")
        channels = 1 if all(info.is_gray for info in infos) else 3
        image_side = int(np.median([min(info.size) for info in infos]))
        notes += pixel_notes(frame["path"].tolist(), infos)

    present = sorted(set(frame["label"]))
    notes += repeat_notes(frame, Path(root)) + label_notes(present)  # of the images kept
    if len(present) < min_classes:
        # What the folder held besides: the class that is missing is often a folder of files qmix does not read, or
        # the one class is a split whose class folders are one level down.
        held = [f"ignored {describe_ignored(ignored)}"] if ignored else []
        if present and present[0] in raw.attrs.get("nested_splits", ()):
            held.append(f"{present[0]} looks like a dataset's split: name {Path(root) / present[0]} as the dataset")
        raise DataError(
            "; ".join(
                [
                    f"{name}: found {len(present)} class ({', '.join(present)}); at least {min_classes} are needed "
                    "to tell wrong labels from right ones",
                    *held,
                    *raw.attrs.get("notes", ()),
                ]
            )
        )
    return Dataset(
        root=Path(root),
        frame=frame,
        classes=classes if classes is not None else tuple(present),
        skipped=skipped,
        channels=channels,
        source=given,
        file_stats=None if decode_to is None else stats,
        ignored=ignored,
        notes=tuple(notes),
        image_side=image_side,
    )
