"""Which images belong together, as a manifest column says: a patient, a lesion, a video.

Read by `qmix train --group-column` (the audit keeps a group's images of one label together:
`qmix_cli.engine.groups`) and by `qmix corrupt --group-column` (a group's images of one class get one noisy label,
as a patient's diagnosis is wrong on all of their images at once). Each group value becomes a 64-bit key; cells
with no value are no group.
"""

from __future__ import annotations

import hashlib
import math
import numbers
import re
from collections.abc import Sequence

import numpy as np
import pandas as pd

from qmix_cli.errors import ConfigError

# The columns every dataset has: none of them says which images belong together.
_IMAGE_COLUMNS = ("sample_id", "path", "label")


# Cell texts that say "no value" in exported tables (a CSV's NA, pandas' NaN, a database's NULL): no group, rather
# than one group of every image lacking an id.
_MISSING_TEXTS = frozenset({"na", "n/a", "nan", "none", "null"})
# The text a float column of integer ids exports to (``17.0``): the same id as ``17``.
_INTEGRAL_FLOAT = re.compile(r"-?\d+\.0+")


def group_text(value: object) -> str | None:
    """The group ``value`` of a manifest cell as text, or None for no group (missing, NaN, blank, or a text such as
    ``NA`` or ``null`` that tables export for "no value"). Integral floats read as integers: a Parquet column of
    ids with a missing value is float (``17.0``), and its CSV export writes ``17.0``; both name the group ``17``, as
    the integer column of the same ids does. (Ids beyond 2^53 stored as floats have lost digits already.)"""
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        if math.isnan(value):
            return None
        if float(value).is_integer():
            return str(int(value))
    text = str(value).strip()
    if not text or text.lower() in _MISSING_TEXTS:
        return None
    if _INTEGRAL_FLOAT.fullmatch(text):
        return str(int(text.split(".", 1)[0]))
    return text


# Kinds of column (`pandas.api.types.infer_dtype`) whose values compare equal exactly when group_text reads them
# alike, so that each distinct value need be read once: text, and numbers where 17 == 17.0 both read "17".
_HASHABLE_AS_TEXT = frozenset({"empty", "string", "integer", "floating", "mixed-integer-float"})


def group_texts(values: pd.Series | Sequence[object]) -> np.ndarray:
    """``(N,)`` object array: each value's group as `group_text` reads it, None for no group."""
    codes, texts = _coded_texts(values)
    return texts[codes]


def group_keys(values: pd.Series, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A 64-bit key of each row's group, a stable function of ``seed`` and the value's text (`group_text`).

    Returns
    -------
    tuple[np.ndarray, np.ndarray]
        (N,) int64 keys (0 where there is no group) and (N,) bool whether the row has a group.
    """
    codes, texts = _coded_texts(values)
    salt = f"qmix-group\0{seed}\0".encode()
    hashed = [
        0
        if text is None
        else int.from_bytes(hashlib.blake2b(salt + text.encode(), digest_size=8).digest(), "little", signed=True)
        for text in texts
    ]
    return np.array(hashed, dtype=np.int64)[codes], np.array([t is not None for t in texts], dtype=bool)[codes]


def _coded_texts(values: pd.Series | Sequence[object]) -> tuple[np.ndarray, np.ndarray]:
    """``(N,)`` codes into ``(M,)`` texts (`group_text`, None last for no group): one text per distinct value, as a
    million rows hold far fewer patients."""
    cells = values.to_numpy(dtype=object) if isinstance(values, pd.Series) else np.asarray(values, dtype=object)
    if pd.api.types.infer_dtype(cells, skipna=True) not in _HASHABLE_AS_TEXT:
        # A hash table takes values that compare equal for one (True and 1, Decimal 17.50 and 17.5) where group_text
        # tells them apart: columns of other kinds, rare in a manifest, are read value by value.
        return np.arange(len(cells)), np.array([group_text(value) for value in cells], dtype=object)
    codes, uniques = pd.factorize(cells, use_na_sentinel=True)  # -1, a missing value, takes the last text: None
    return codes, np.array([group_text(value) for value in uniques] + [None], dtype=object)


def check_group_column(frame: pd.DataFrame, column: str, *, what: str = "the dataset") -> tuple[np.ndarray, np.ndarray]:
    """``frame[column]``'s `group_keys`, or a `ConfigError` for a column the manifest lacks, the label column or a
    column with no value. ``what`` names the table in the message (``"the truth"`` for `qmix evaluate`'s)."""
    option = f"--group-column {column}"
    if column not in frame.columns:
        others = [c for c in frame.columns if c not in _IMAGE_COLUMNS]
        where = (
            f"its columns besides the image's: {', '.join(map(str, others))}" if others else "it has no other column"
        )
        raise ConfigError(f"{option}: {what} has no such column ({where}; image folders have no columns)")
    if column == "label":
        raise ConfigError(f"{option}: the label is not a group (every image of a class would be one group)")
    keys, has_group = group_keys(frame[column])
    if not has_group.any():
        raise ConfigError(f"{option}: the column has no value")
    return keys, has_group


# Words in the names of the columns that usually say which images belong together, in medical and other
# collections (patient_id, SubjectID, case, study_uid, series, lesion_id, video, participant, ...).
GROUP_WORDS = ("patient", "subject", "case", "study", "series", "lesion", "video", "participant", "individual")


def likely_group_column(frame: pd.DataFrame, *, min_groups: int) -> str | None:
    """The first column of ``frame`` whose name suggests groups (a word of it starts with one of `GROUP_WORDS`:
    ``patient_id``, ``SubjectID``, ``study-uid``) and that gathers some images into at least ``min_groups`` groups,
    for a hint to name it; None when there is none."""
    for column in frame.columns:
        words = re.split(r"[^a-z0-9]+", str(column).lower())
        if column in _IMAGE_COLUMNS or not any(w.startswith(GROUP_WORDS) for w in words):
            continue
        keys, has_group = group_keys(frame[column])
        groups = len(np.unique(keys[has_group]))
        if min_groups <= groups < has_group.sum():
            return str(column)
    return None


def group_units(keys: np.ndarray, has_group: np.ndarray) -> np.ndarray:
    """(N,) int64 a unit id per image: one per group (`group_keys`), and one of its own for each image with no
    group. Ids are dense, ``[0, units)``."""
    keys, has_group = np.asarray(keys, dtype=np.int64), np.asarray(has_group, dtype=bool)
    units = np.empty(len(keys), dtype=np.int64)
    _, units[has_group] = np.unique(keys[has_group], return_inverse=True)
    start = units[has_group].max(initial=-1) + 1
    units[~has_group] = start + np.arange(int((~has_group).sum()))
    return units
