"""Tests for qmix_cli.categories: the one category order that posteriors, reports and manifests share."""

from __future__ import annotations

from qmix_cli.categories import CATEGORIES, CLEAN, MIS_H, MIS_L


def test_indices_name_the_report_schema_categories():
    # DESIGN.md's report schema spells the categories this way; every (N, 3) array is indexed by these constants.
    assert [CATEGORIES[i] for i in (CLEAN, MIS_H, MIS_L)] == ["clean", "mislabeled_hq", "mislabeled_lq"]
    assert sorted((CLEAN, MIS_H, MIS_L)) == list(range(len(CATEGORIES)))
