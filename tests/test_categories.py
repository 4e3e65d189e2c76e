"""Tests for qmix_cli.categories: the one category order that posteriors, reports and manifests share."""

from __future__ import annotations

import numpy as np

from qmix_cli.categories import CATEGORIES, CLEAN, MIS_H, MIS_L, holds_verdicts


def test_indices_name_the_report_schema_categories():
    # DESIGN.md's report schema spells the categories this way; every (N, 3) array is indexed by these constants.
    assert [CATEGORIES[i] for i in (CLEAN, MIS_H, MIS_L)] == ["clean", "mislabeled_hq", "mislabeled_lq"]
    assert sorted((CLEAN, MIS_H, MIS_L)) == list(range(len(CATEGORIES)))


def test_only_a_column_of_verdicts_is_read_as_truth():
    assert holds_verdicts(["clean", "mislabeled_lq", "clean"]) and holds_verdicts(np.array(CATEGORIES, dtype=object))
    assert not holds_verdicts(["clean", "animal"])  # a user's own "category" column
    assert not holds_verdicts(["clean", None]) and not holds_verdicts(["Clean"])
