"""Tests for qmix_cli.categories: the one category order that posteriors, reports and manifests share."""

from __future__ import annotations

import numpy as np

from qmix_cli.categories import (
    CATEGORIES,
    CLEAN,
    MIS_H,
    MIS_L,
    SMALL_CLASS,
    holds_verdicts,
    rare_class_verdicts,
    small_classes,
)


def test_indices_name_the_report_schema_categories():
    # DESIGN.md's report schema spells the categories this way; every (N, 3) array is indexed by these constants.
    assert [CATEGORIES[i] for i in (CLEAN, MIS_H, MIS_L)] == ["clean", "mislabeled_hq", "mislabeled_lq"]
    assert sorted((CLEAN, MIS_H, MIS_L)) == list(range(len(CATEGORIES)))


def test_only_a_column_of_verdicts_is_read_as_truth():
    assert holds_verdicts(["clean", "mislabeled_lq", "clean"]) and holds_verdicts(np.array(CATEGORIES, dtype=object))
    assert not holds_verdicts(["clean", "animal"])  # a user's own "category" column
    assert not holds_verdicts(["clean", None]) and not holds_verdicts(["Clean"])


def test_flagged_images_of_rare_classes_are_counted_with_their_classes():
    given = np.array(["a"] * 10 + ["b"] * 2 + ["c"] + ["d"] * 4)
    flagged = np.array([True] * 3 + [False] * 7 + [True, True] + [True] + [False, True, False, False])
    assert rare_class_verdicts(given, flagged) == (4, ["c (1)", "b (2)", "d (4)"])  # smallest first
    assert rare_class_verdicts(given[:10], flagged[:10]) == (0, [])  # no class under SMALL_CLASS


def test_a_class_of_exactly_small_class_images_is_not_rare():
    given = np.array(["a"] * SMALL_CLASS + ["b"] * (SMALL_CLASS - 1) + ["c"])
    assert small_classes(given) == {"c": 1, "b": SMALL_CLASS - 1}  # smallest first; "a" is not rare
