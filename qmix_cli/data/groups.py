"""Which images belong together, as a manifest column says: a patient, a lesion, a video.

Read by `qmix train --group-column` (the audit keeps each group together: `qmix_cli.engine.groups`) and by
`qmix corrupt --group-column` (a group's images of one class get one noisy label, as a patient's diagnosis is wrong
on all of their images at once). Each group value becomes a 64-bit key; cells with no value are no group.
"""

from __future__ import annotations

import hashlib
import math
import numbers

import numpy as np
import pandas as pd

from qmix_cli.errors import ConfigError

# The columns every dataset has: none of them says which images belong together.
_IMAGE_COLUMNS = ("sample_id", "path", "label")


def group_text(value: object) -> str | None:
    """The group ``value`` of a manifest cell as text, or None for no group (missing, NaN, blank). An integral
    float is written as an integer: a Parquet column of ids with a missing value is float (``17.0``), and must
    name the same group as the integer column of the same ids (``17``)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        if math.isnan(value):
            return None
        if float(value).is_integer():
            return str(int(value))
    if value is pd.NA or value is pd.NaT:
        return None
    return str(value).strip()


def group_keys(values: pd.Series, *, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A 64-bit key of each row's group, a stable function of ``seed`` and the value's text (`group_text`).

    Returns
    -------
    tuple[np.ndarray, np.ndarray]
        (N,) int64 keys (0 where there is no group) and (N,) bool whether the row has a group.
    """
    texts = [group_text(v) for v in values.tolist()]
    salt = f"qmix-group\0{seed}\0".encode()
    known: dict[str, int] = {}
    keys = np.zeros(len(texts), dtype=np.int64)
    for i, text in enumerate(texts):
        if text is None:
            continue
        if text not in known:
            digest = hashlib.blake2b(salt + text.encode(), digest_size=8).digest()
            known[text] = int.from_bytes(digest, "little", signed=True)
        keys[i] = known[text]
    return keys, np.array([t is not None for t in texts], dtype=bool)


def check_group_column(frame: pd.DataFrame, column: str) -> tuple[np.ndarray, np.ndarray]:
    """``frame[column]``'s `group_keys`, or a `ConfigError` for a column the manifest lacks, the label column or a
    column with no value."""
    option = f"--group-column {column}"
    if column not in frame.columns:
        others = [c for c in frame.columns if c not in _IMAGE_COLUMNS]
        where = (
            f"its columns besides the image's: {', '.join(map(str, others))}" if others else "it has no other column"
        )
        raise ConfigError(f"{option}: the dataset has no such column ({where}; an image folder has none)")
    if column == "label":
        raise ConfigError(f"{option}: the label is not a group (every image of a class would be one group)")
    keys, has_group = group_keys(frame[column])
    if not has_group.any():
        raise ConfigError(f"{option}: the column has no value")
    return keys, has_group


# Words in the names of the columns that usually say which images belong together, in medical and other
# collections (patient_id, SubjectID, case, study_uid, series, lesion_id, video, participant, ...).
GROUP_WORDS = ("patient", "subject", "case", "study", "series", "lesion", "video", "participant", "individual")


def group_column_hint(frame: pd.DataFrame) -> str | None:
    """A note naming a column of ``frame`` whose name suggests groups and that groups some images (fewer distinct
    values than rows), for a run trained without ``--group-column``; None when there is none."""
    for column in frame.columns:
        name = str(column).lower()
        if column in _IMAGE_COLUMNS or not any(word in name for word in GROUP_WORDS):
            continue
        keys, has_group = group_keys(frame[column])
        if has_group.sum() > len(np.unique(keys[has_group])):
            return (
                f"note: the column {column} looks like it says which images belong together; pass --group-column "
                f"{column} so that the audit judges each image without the others of its group"
            )
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
