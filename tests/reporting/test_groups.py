"""The audit by group (`qmix_cli.reporting.groups`): counts, scores, suggestions and ranks of each subject's label."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from qmix_cli.reporting.groups import GROUP_SCHEMA, group_counts, summarise_groups


def _report(rows: list[tuple[str, str, float, str | None]]) -> pd.DataFrame:
    """Report rows from (given_label, category, p_clean, suggested_label)."""
    return pd.DataFrame(rows, columns=["given_label", "category", "p_clean", "suggested_label"])


def test_each_group_and_given_label_is_one_row_with_its_verdicts_counted():
    report = _report(
        [
            ("a", "mislabeled_hq", 0.1, "b"),  # patient 17, label a: three images
            ("a", "mislabeled_hq", 0.2, "c"),
            ("a", "clean", 0.9, "a"),
            ("b", "clean", 0.95, "b"),  # patient 17, label b: its own unit
            ("b", "mislabeled_lq", 0.3, None),  # patient 8
            ("a", "clean", 0.99, "a"),  # no patient
        ]
    )
    table = summarise_groups(report, groups=[17, 17.0, "17", "17", "8", None])
    assert list(table.columns) == GROUP_SCHEMA.names
    rows = {(r.group, r.given_label): r for r in table.itertuples()}
    assert set(rows) == {("17", "a"), ("17", "b"), ("8", "b")}  # 17, 17.0 and "17" are one patient
    first = rows["17", "a"]
    assert (first.images, first.clean, first.mislabeled_hq, first.mislabeled_lq) == (3, 1, 2, 0)
    assert first.issue_score == pytest.approx(0.8)  # median of 0.9, 0.8, 0.1
    assert first.suggested_label == "b"  # b and c once each: the tie goes by name
    assert pd.isna(rows["8", "b"].suggested_label)  # nothing mislabeled_hq, nothing to suggest
    assert rows["17", "b"].issue_score == pytest.approx(0.05)
    assert table["rank"].tolist() == [1, 2, 3]
    assert table[["group", "given_label"]].apply(tuple, axis=1).tolist() == [("17", "a"), ("8", "b"), ("17", "b")]
    assert table.attrs["ungrouped"] == 1
    assert group_counts(table) == (2, 2)  # patient 8's one image is flagged too (low quality)


def test_the_majority_suggestion_wins_and_one_poor_image_does_not_make_a_patient_suspect():
    report = _report(
        [
            *[("a", "clean", 0.97, "a")] * 4,
            ("a", "mislabeled_lq", 0.02, None),  # patient p: four good views and one unreadable
            ("a", "mislabeled_hq", 0.1, "c"),  # patient q: the subject's label is wrong on most views
            ("a", "mislabeled_hq", 0.05, "b"),
            ("a", "mislabeled_hq", 0.2, "b"),
            ("a", "clean", 0.6, "a"),
        ]
    )
    table = summarise_groups(report, groups=["p"] * 5 + ["q"] * 4).set_index("group")
    assert table.loc["q", "suggested_label"] == "b"
    assert table.loc["q", "rank"] == 1
    # A maximum of 1 − p_clean would make p as suspect as q (0.98); the median keeps it low.
    assert table.loc["p", "issue_score"] == pytest.approx(0.03)
    assert table.loc["p", "mislabeled_lq"] == 1


def test_ties_in_score_go_to_the_unit_with_more_images_flagged():
    report = _report([("a", "clean", 0.5, "a"), ("a", "mislabeled_hq", 0.5, "b"), ("a", "mislabeled_hq", 0.5, "b")])
    table = summarise_groups(report, groups=["x", "y", "y"])
    assert table["group"].tolist() == ["y", "x"]


def test_ranks_follow_the_median_p_clean_unrounded_then_names():
    # Medians of 1e-30, 1e-12 and 2e-8: issue_score (1 - p in float32) shows 1.0 for all three, but the ranking is
    # by p_clean itself, not by name.
    report = _report([("a", "mislabeled_hq", p, "b") for p in (2e-8, 1e-12, 1e-30)])
    table = summarise_groups(report, groups=["aa", "mm", "zz"])
    assert table["group"].tolist() == ["zz", "mm", "aa"]
    assert (table["issue_score"] == np.float32(1.0)).all()
    # One patient, two labels, the same score and count: the given label decides.
    report = _report([("b", "mislabeled_hq", 0.2, "a"), ("a", "mislabeled_hq", 0.2, "b")])
    assert summarise_groups(report, groups=["p", "p"])["given_label"].tolist() == ["a", "b"]


def test_true_and_1_are_two_groups_as_training_reads_them():
    report = _report([("a", "clean", 0.9, "a")] * 4)
    table = summarise_groups(report, groups=pd.Series([True, 1, 1.0, "True"], dtype=object))
    assert dict(zip(table["group"], table["images"], strict=True)) == {"True": 2, "1": 2}


def test_no_group_at_all_gives_an_empty_table_of_the_schema():
    report = _report([("a", "clean", 0.9, "a"), ("b", "mislabeled_lq", 0.1, None)])
    table = summarise_groups(report, groups=pd.Series([np.nan, "NA"]))
    assert table.empty and list(table.columns) == GROUP_SCHEMA.names
    assert table.attrs["ungrouped"] == 2
    assert group_counts(table) == (0, 0)


def test_groups_must_align_with_the_report():
    with pytest.raises(ValueError, match="2 values for 1 report rows"):
        summarise_groups(_report([("a", "clean", 0.9, "a")]), groups=["x", "y"])


def test_units_with_a_planted_wrong_label_rank_far_above_chance(noisy_digits, qmix_run):
    """Patients of three images with one given and one true label each, from the audit of the noisy digits: units
    whose label is wrong on good images are ranked first (the images were judged one by one; the table only
    gathers them)."""
    from qmix_cli.api import audit

    report = audit(noisy_digits, run=qmix_run.run_dir, quiet=True)
    truth = pd.read_parquet(noisy_digits / "manifest.parquet").set_index("sample_id").loc[report["sample_id"]]
    rng = np.random.default_rng(0)
    order = rng.permutation(len(report))
    # Images of one true and one given label, three by three: a patient whose label is right or wrong on all views.
    key = truth["true_label"].astype(str) + "|" + truth["label"].astype(str)
    patient = pd.Series(index=report.index, dtype=object)
    for name, members in pd.Series(order).groupby(key.to_numpy()[order]):
        patient.iloc[members.to_numpy()] = [f"{name}#{i // 3}" for i in range(len(members))]
    table = summarise_groups(report, groups=patient)
    assert table["images"].sum() == len(report)
    wrong = table["group"].map(lambda g: g.split("|")[0] != g.split("|")[1].split("#")[0])
    auc = roc_auc_score(wrong, table["issue_score"])
    assert auc > 0.95, auc
    top = table.head(int(wrong.sum()))
    assert wrong[top.index].mean() > 0.9 > 2 * wrong.mean()  # the top of the list is nearly all wrong labels
