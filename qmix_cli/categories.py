"""The three verdicts qmix gives an image, in the one order every array, table and manifest uses.

The separation's groups (METHOD.md: Correct, Mis-H, Mis-L), the report's ``category`` column and the truth that
``qmix corrupt`` writes are the same three things, so they share these names and indices.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

CATEGORIES: tuple[str, str, str] = ("clean", "mislabeled_hq", "mislabeled_lq")
"""Category names; column ``i`` of every (N, 3) posterior array belongs to ``CATEGORIES[i]``."""

CLEAN, MIS_H, MIS_L = 0, 1, 2
"""Indices into `CATEGORIES`: Correct, mislabeled high-quality (Mis-H), mislabeled low-quality (Mis-L)."""

SMALL_CLASS = 5
"""Classes of fewer training images than this get verdicts that say little: each image is judged by the other
images of its class (an out-of-fold probe, a vote of neighbours), and a class of one or two has none or one to
offer, so most of their images are flagged whatever their labels."""


def small_classes(given: np.ndarray) -> dict[str, int]:
    """The classes of fewer than `SMALL_CLASS` images among ``given`` ((N,) each image's given label, as text),
    with their sizes, smallest first."""
    names, sizes = np.unique(np.asarray(given, dtype=object).astype(str), return_counts=True)
    small = [(str(n), int(c)) for n, c in zip(names, sizes, strict=True) if c < SMALL_CLASS]
    return dict(sorted(small, key=lambda item: (item[1], item[0])))


def rare_class_verdicts(given: np.ndarray, flagged: np.ndarray) -> tuple[int, list[str]]:
    """Of the images of a training set flagged by its audit, how many are of classes of fewer than `SMALL_CLASS`
    images, and those classes (with their sizes, smallest first).

    Parameters
    ----------
    given
        (N,) str, each image's given label (the training set's: its class sizes are what the verdicts rest on).
    flagged
        (N,) bool, the verdict is not ``clean``.
    """
    small = small_classes(given)
    in_small = np.isin(np.asarray(given, dtype=object).astype(str), list(small))
    count = int((in_small & np.asarray(flagged, dtype=bool)).sum())
    return count, [f"{n} ({c})" for n, c in small.items()]


def truth_categories(*, is_low_quality: np.ndarray, is_label_noisy: np.ndarray) -> np.ndarray:
    """The true category of each image, by ``qmix corrupt``'s rule: a degraded image is ``mislabeled_lq`` whatever
    label it carries; a good one is ``mislabeled_hq`` when its label is wrong, else ``clean``.

    Parameters
    ----------
    is_low_quality, is_label_noisy
        (N,) bool.

    Returns
    -------
    np.ndarray
        (N,) str, values in `CATEGORIES`.
    """
    index = np.where(is_low_quality, MIS_L, np.where(is_label_noisy, MIS_H, CLEAN))
    return np.asarray(CATEGORIES)[index]


def holds_verdicts(values: Sequence[object] | np.ndarray) -> bool:
    """Whether every value of a manifest's ``category`` column is one of `CATEGORIES`: a truth written by ``qmix
    corrupt`` or by hand, rather than a column of the user's own that happens to bear the name (animal / vehicle),
    which training must not score against and ``qmix apply`` must not overwrite."""
    return bool(np.isin(np.asarray(values, dtype=object).astype(str), CATEGORIES).all())
