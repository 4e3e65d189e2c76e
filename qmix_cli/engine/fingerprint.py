"""Digests that tie a checkpoint and a report to the data they were made on: its ids and labels, and its pixels."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from qmix_cli.data.manifest import Dataset

# Images whose pixels `pixels_fingerprint` reads: enough to tell another corruption of a dataset, at any size.
_FINGERPRINT_ROWS = 256


def pixels_fingerprint(images: np.ndarray) -> str:
    """A digest of ``images`` (N, C, H, W) uint8 as decoded for training, read from up to 256 rows spread over
    them: a checkpoint resumed on the same ids and labels with other pixels (another corruption's copy, edited
    scans) would train on other data without a word."""
    rows = np.unique(np.linspace(0, len(images) - 1, min(len(images), _FINGERPRINT_ROWS)).round().astype(np.int64))
    h = hashlib.sha256(repr(images.shape).encode())
    for i in rows:
        h.update(np.ascontiguousarray(images[i]).tobytes())
    return h.hexdigest()[:16]


def dataset_fingerprint(dataset: Dataset, *, ordered: bool = True) -> str:
    """A digest of ``dataset``'s sample ids and labels. ``ordered``: in row order, as a checkpoint needs them (its
    per-image arrays follow the rows); else as a set, the same for any order of the rows (a manifest sorted or
    shuffled by a user is still the training set to the audit)."""
    pairs = (f"{sid}\0{label}\n" for sid, label in zip(dataset.frame["sample_id"], dataset.frame["label"], strict=True))
    h = hashlib.sha256()
    for pair in pairs if ordered else sorted(pairs):
        h.update(pair.encode())
    return h.hexdigest()[:16]
