"""`qmix_cli.reporting.apply`: what each verdict does to a manifest row, and the reports it refuses."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from qmix_cli.categories import CATEGORIES
from qmix_cli.errors import QmixError
from qmix_cli.reporting.apply import (
    GIVEN_COLUMN,
    REVIEWED_COLUMN,
    VERDICT_COLUMN,
    apply_verdicts,
    check_actions,
    integers_restored,
)

C, H, L = CATEGORIES

# Six images: two clean, two with a wrong label on a good image, two degraded (one of them labelled right).
IDS = ["s0", "s1", "s2", "s3", "s4", "s5"]
GIVEN = ["cat", "dog", "cat", "dog", "dog", "cat"]
TRUE = ["cat", "dog", "dog", "cat", "cat", "cat"]
LQ = [False, False, False, False, True, True]
VERDICTS = [C, C, H, H, L, L]
SUGGESTED = [None, None, "dog", "cat", None, None]


def manifest(**extra) -> pd.DataFrame:
    return pd.DataFrame({"sample_id": IDS, "path": [f"{i}.png" for i in IDS], "label": GIVEN, "site": "a", **extra})


def report(ids: list[str] = IDS, **changes) -> pd.DataFrame:
    rows = pd.DataFrame({"sample_id": IDS, "category": VERDICTS, "given_label": GIVEN, "suggested_label": SUGGESTED})
    rows = rows.assign(**changes)
    return rows.set_index("sample_id").loc[ids].reset_index().iloc[::-1]  # another order: joined by id


def test_default_relabels_wrong_labels_and_drops_unusable_images() -> None:
    applied = apply_verdicts(manifest(), report())
    out = applied.frame
    assert out["sample_id"].tolist() == ["s0", "s1", "s2", "s3"]  # the dataset's order, the two LQ rows gone
    assert out["label"].tolist() == ["cat", "dog", "dog", "cat"]
    assert out[GIVEN_COLUMN].tolist() == GIVEN[:4]
    assert out[VERDICT_COLUMN].tolist() == VERDICTS[:4]
    assert out["site"].tolist() == ["a"] * 4 and out["path"].tolist() == [f"s{i}.png" for i in range(4)]
    assert applied.counts == {
        "images": 6, "kept": 4, "relabelled": 2, "dropped_hq": 0, "dropped_lq": 2, "missing": 0,
        "dropped_missing": 0, "kept_missing": 0, "kept_rare": 0, "changed": 4, "unreviewed": 4,
    }  # fmt: skip
    assert applied.emptied == []


@pytest.mark.parametrize(
    ("hq", "lq", "kept", "labels"),
    [
        ("drop", "drop", ["s0", "s1"], ["cat", "dog"]),
        ("keep", "keep", IDS, GIVEN),
        ("relabel", "keep", IDS, ["cat", "dog", "dog", "cat", "dog", "cat"]),
        ("drop", "keep", ["s0", "s1", "s4", "s5"], ["cat", "dog", "dog", "cat"]),
    ],
)
def test_each_action(hq: str, lq: str, kept: list[str], labels: list[str]) -> None:
    out = apply_verdicts(manifest(), report(), hq=hq, lq=lq).frame
    assert out["sample_id"].tolist() == kept
    assert out["label"].tolist() == labels


def test_truth_columns_follow_the_new_labels() -> None:
    # A qmix corrupt manifest: after relabelling, its truth must describe the labels it now holds. From a CSV the
    # booleans arrive as text.
    truth = manifest(true_label=TRUE, is_low_quality=[str(v) for v in LQ], is_label_noisy=True, category=C)
    out = apply_verdicts(truth, report(), lq="keep").frame
    assert out["is_label_noisy"].tolist() == [False, False, False, False, True, False]
    assert out["category"].tolist() == [C, C, C, C, L, L]
    without_truth = apply_verdicts(manifest(category="x"), report()).frame
    assert set(without_truth["category"]) == {"x"}  # not a qmix corrupt manifest: its columns are its own
    own = ["animal", "animal", "vehicle", "animal", "vehicle", "animal"]  # a column of the user's, and true labels
    kept = apply_verdicts(manifest(true_label=TRUE, category=own), report(), lq="keep").frame
    assert kept["category"].tolist() == own


def test_images_without_a_verdict() -> None:
    partial = report(ids=["s0", "s2", "s3", "s4", "s5"])
    with pytest.raises(QmixError, match=r"1 dataset image the report has no verdict for.*s1.*--on-missing"):
        apply_verdicts(manifest(), partial)
    dropped = apply_verdicts(manifest(), partial, on_missing="drop")
    assert "s1" not in set(dropped.frame["sample_id"]) and dropped.counts["dropped_missing"] == 1
    # Dropped for having no verdict is a change no reviewer made, however many verdicts were reviewed.
    reviewed = apply_verdicts(manifest(), partial, on_missing="drop", reviewed=["s0", "s2", "s3", "s4", "s5"])
    assert reviewed.counts["changed"] == dropped.counts["changed"] and reviewed.counts["unreviewed"] == 1
    kept = apply_verdicts(manifest(), partial, on_missing="keep").frame.set_index("sample_id")
    assert kept.loc["s1", "label"] == "dog" and kept.loc["s1", VERDICT_COLUMN] == ""


@pytest.mark.parametrize(
    ("bad_report", "message"),
    [
        (report().replace({"sample_id": {"s5": "x9"}}), "1 report row of images the dataset"),
        (report(given_label=["dog", *GIVEN[1:]]), "given label in the report is not the dataset"),
        (report(category=[C, C, H, H, L, "maybe"]), "unknown categories"),
        (report(suggested_label=[None] * 6), "mislabeled_hq rows without a suggested label"),
        (pd.concat([report(), report().iloc[:1]]), "1 duplicate sample id "),
    ],
    ids=["unknown-id", "other-labels", "category", "no-suggestion", "duplicate"],
)
def test_reports_that_do_not_fit_are_refused(bad_report: pd.DataFrame, message: str) -> None:
    with pytest.raises(QmixError, match=message):
        apply_verdicts(manifest(), bad_report)


def test_report_ids_a_spreadsheet_shortened_are_said_to_be_so() -> None:
    padded = manifest().assign(sample_id=[f"{i:03d}" for i in range(6)])
    saved = report().assign(sample_id=[str(i) for i in range(6)])  # "000" read back as 0, "005" as 5: all six
    with pytest.raises(QmixError) as caught:
        apply_verdicts(padded, saved)
    assert str(caught.value).endswith(
        "; 6 ids of the report are the dataset's without leading zeros (0 is 000): a spreadsheet drops them; edit the "
        "report as text, or import its sample_id column as text"
    )
    # The other way round: the manifest is the file a spreadsheet shortened.
    with pytest.raises(QmixError, match=r"; 1 id of the manifest is the report's without leading zeros \(5 is 005\)"):
        apply_verdicts(
            padded.assign(sample_id=[*padded["sample_id"][:5], "5"]), report().assign(sample_id=padded["sample_id"])
        )


def test_a_report_frame_lacking_columns_is_refused_by_name() -> None:
    with pytest.raises(QmixError, match=r"the report lacks column\(s\) given_label, suggested_label"):
        apply_verdicts(manifest(), report().drop(columns=["given_label", "suggested_label"]))


@pytest.mark.parametrize(("option", "value"), [("hq", "fix"), ("lq", "relabel"), ("on_missing", "skip")])
def test_unknown_actions(option: str, value: str) -> None:
    with pytest.raises(QmixError, match="must be one of"):
        apply_verdicts(manifest(), report(), **{option: value})


def test_an_unknown_rare_classes_action_is_refused_before_anything_is_read() -> None:
    with pytest.raises(QmixError, match=r"rare-classes must be one of auto, keep, apply \(got 'drop'\)"):
        check_actions(hq="relabel", lq="drop", on_missing="error", rare_classes="drop")


def test_truth_given_by_category_alone_is_updated_too() -> None:
    # Truth written by hand (category and true_label, no is_low_quality): the degraded images are those it names.
    truth = manifest(true_label=TRUE, category=[C, C, H, H, L, L])
    out = apply_verdicts(truth, report(), lq="keep").frame
    assert out["category"].tolist() == [C, C, C, C, L, L]


def test_suggestions_must_be_classes() -> None:
    edited = report(suggested_label=[None, None, "dog ", "3.0", None, None])  # a report edited in a spreadsheet
    with pytest.raises(QmixError, match=r"2 suggested labels outside the classes of the dataset and the run.*3\.0"):
        apply_verdicts(manifest(), edited)
    # A class of the run that this dataset happens not to hold is a fine suggestion.
    run_class = report(suggested_label=[None, None, "bird", "cat", None, None])
    out = apply_verdicts(manifest(), run_class, classes=["bird", "cat", "dog"]).frame
    assert out["label"].tolist() == ["cat", "dog", "bird", "cat"]


def test_nothing_left_and_classes_emptied() -> None:
    with pytest.raises(QmixError, match="every image would be dropped"):
        apply_verdicts(manifest(), report(category=[H, H, H, H, L, L], suggested_label=["cat"] * 6), hq="drop")
    # Every image given "dog" (s1, s3, s4) is relabelled to "cat" or dropped: one class left, which no run can
    # train on, so nothing is written.
    no_dogs = report(category=[C, H, C, H, L, L], suggested_label=[None, "cat", None, "cat", None, None])
    with pytest.raises(QmixError, match=r"would leave one class \(cat\) and a run needs two; nothing written"):
        apply_verdicts(manifest(), no_dogs)
    # With a third class (s5, an owl judged clean) two are left: written, and the emptied class named.
    labels = ["cat", "dog", "cat", "dog", "dog", "owl"]
    owl = report(
        category=[C, H, C, H, L, C], given_label=labels, suggested_label=[None, "cat", None, "cat", None, None]
    )
    applied = apply_verdicts(manifest(label=labels), owl)
    assert set(applied.frame["label"]) == {"cat", "owl"} and applied.emptied == ["dog"]


def test_what_each_class_gains_and_loses() -> None:
    changes = apply_verdicts(manifest(), report()).by_class
    # cat: s2 relabelled to dog, s5 dropped, s3 relabelled from dog; dog the mirror image (s3 away, s4 dropped, s2 in).
    assert changes.to_dict(orient="index") == {
        "cat": {"before": 3, "kept": 1, "relabelled_away": 1, "dropped": 1, "relabelled_to": 1, "after": 2},
        "dog": {"before": 3, "kept": 1, "relabelled_away": 1, "dropped": 1, "relabelled_to": 1, "after": 2},
    }


def test_a_class_left_with_less_than_half_its_images_is_named() -> None:
    # Eight normal scans judged clean; of four abnormal ones, one relabelled normal and two dropped as unusable.
    ids = [f"n{i}" for i in range(8)] + [f"a{i}" for i in range(4)]
    given = ["normal"] * 8 + ["abnormal"] * 4
    rows = pd.DataFrame({"sample_id": ids, "path": [f"{i}.png" for i in ids], "label": given})
    verdicts = pd.DataFrame(
        {
            "sample_id": ids,
            "category": [C] * 8 + [H, L, L, C],
            "given_label": given,
            "suggested_label": [None] * 8 + ["normal", None, None, None],
        }
    )
    applied = apply_verdicts(rows, verdicts)
    assert applied.shrunk == ["abnormal"] and applied.emptied == []
    assert applied.by_class.loc["abnormal"].to_dict() == {
        "before": 4, "kept": 1, "relabelled_away": 1, "dropped": 2, "relabelled_to": 0, "after": 1,
    }  # fmt: skip
    assert applied.by_class.loc["normal", "after"] == 9
    # Half kept is not less than half: with one more abnormal image judged clean, nothing is named.
    verdicts.loc[10, "category"] = C
    assert apply_verdicts(rows, verdicts).shrunk == []


def test_a_class_is_judged_by_its_own_images_and_the_worst_kept_share_comes_first() -> None:
    # a: 6 images, 4 dropped (a third kept). b: 10 images, 6 relabelled to c, and 6 of c's relabelled to b (same size,
    # 40 % of its own kept). c: 12 images, 6 relabelled to b, 6 of b's in (half its own kept: not named). d: every
    # image dropped, emptied, so named as emptied and not here.
    given = ["a"] * 6 + ["b"] * 10 + ["c"] * 12 + ["d"] * 2
    category = [L] * 4 + [C] * 2 + [H] * 6 + [C] * 4 + [H] * 6 + [C] * 6 + [L] * 2
    suggested = [None] * 6 + ["c"] * 6 + [None] * 4 + ["b"] * 6 + [None] * 8
    ids = [f"s{i}" for i in range(len(given))]
    rows = pd.DataFrame({"sample_id": ids, "path": [f"{i}.png" for i in ids], "label": given})
    verdicts = pd.DataFrame(
        {"sample_id": ids, "category": category, "given_label": given, "suggested_label": suggested}
    )
    applied = apply_verdicts(rows, verdicts)
    assert applied.emptied == ["d"]
    assert applied.shrunk == ["a", "b"]  # a keeps 2 of 6, b 4 of 10 (its size unchanged), c exactly half
    assert applied.by_class.loc["b"].to_dict() == {
        "before": 10, "kept": 4, "relabelled_away": 6, "dropped": 0, "relabelled_to": 6, "after": 10,
    }  # fmt: skip


def test_images_of_the_classes_to_keep_stay_as_they_are_whatever_their_verdict() -> None:
    labels = ["cat", "dog", "cat", "owl", "owl", "cat"]  # s3 (mislabeled_hq) and s4 (mislabeled_lq): owls
    rows = report(given_label=labels, suggested_label=[None, None, "dog", "cat", None, None])
    applied = apply_verdicts(manifest(label=labels), rows, keep_classes=["owl", "emu"])  # no emu flagged
    out = applied.frame.set_index("sample_id")
    assert out.index.tolist() == ["s0", "s1", "s2", "s3", "s4"]  # s5, a degraded cat, dropped as before
    assert out.loc[["s2", "s3", "s4"], "label"].tolist() == ["dog", "owl", "owl"]
    assert out.loc[["s3", "s4"], VERDICT_COLUMN].tolist() == [H, L]  # the verdicts are still recorded
    assert applied.counts["kept_rare"] == 2 and applied.counts["relabelled"] == 1
    assert applied.counts["dropped_lq"] == 1 and applied.emptied == []
    assert applied.kept_classes == ["owl"]
    clean_owls = report(
        given_label=labels, suggested_label=[None, None, "dog", None, None, None], category=[C, C, H, C, C, L]
    )
    clean_owls = apply_verdicts(manifest(label=labels), clean_owls, keep_classes=["owl"])
    assert clean_owls.counts["kept_rare"] == 0 and clean_owls.kept_classes == []  # only flagged images count


def test_a_reviewers_verdict_on_a_rare_class_is_carried_out() -> None:
    # The audit's verdict on an owl says little (too few owls); a person's does: s3 is relabelled, s4 still kept.
    labels = ["cat", "dog", "cat", "owl", "owl", "cat"]
    rows = report(given_label=labels, suggested_label=[None, None, "dog", "cat", None, None])
    applied = apply_verdicts(manifest(label=labels), rows, keep_classes=["owl"], reviewed=["s3"])
    out = applied.frame.set_index("sample_id")
    assert out.loc[["s3", "s4"], "label"].tolist() == ["cat", "owl"]
    assert applied.counts["kept_rare"] == 1 and applied.counts["relabelled"] == 2


@pytest.mark.parametrize(("hq", "lq"), [("drop", "drop"), ("keep", "keep"), ("relabel", "keep")])
def test_a_reviewers_verdict_is_carried_out_whatever_the_actions_for_the_audits(hq: str, lq: str) -> None:
    # s2 (mislabeled_hq) and s4 (mislabeled_lq) as a person decided: relabelled and dropped; the others by the rules.
    applied = apply_verdicts(manifest(), report(), hq=hq, lq=lq, reviewed=["s2", "s4"])
    out = applied.frame.set_index("sample_id")
    assert out.loc["s2", "label"] == "dog" and "s4" not in out.index
    # The changes left on trust: s3 (relabelled or dropped unless kept) and s5 (dropped unless kept).
    assert applied.counts["unreviewed"] == (hq != "keep") + (lq == "drop")
    assert out[REVIEWED_COLUMN].to_dict() == {i: i == "s2" for i in out.index}  # who decided each verdict
    assert ("s3" in out.index) == (hq != "drop") and ("s5" in out.index) == (lq == "keep")
    if "s3" in out.index:
        assert out.loc["s3", "label"] == ("cat" if hq == "relabel" else "dog")


def test_a_second_round_keeps_the_first_given_label() -> None:
    first = apply_verdicts(manifest(), report(), lq="keep").frame
    # Round two: s2 (relabelled dog) is flagged again and relabelled back; its first label stays traceable.
    again = report(
        given_label=first["label"].tolist(),
        category=[C, C, H, C, C, C],
        suggested_label=[None, None, "cat", *[None] * 3],
    )
    second = apply_verdicts(first, again).frame.set_index("sample_id")
    assert second.loc["s2", "label"] == "cat" and second.loc["s2", GIVEN_COLUMN] == "cat"
    assert second.loc["s3", GIVEN_COLUMN] == "dog"  # relabelled in round one, kept in round two
    # The same report twice is refused with the reason: the rows it dropped are gone.
    with pytest.raises(QmixError, match="written by qmix apply"):
        apply_verdicts(apply_verdicts(manifest(), report()).frame, report())


def test_counts_and_dtypes_a_caller_may_hand_over() -> None:
    # A DataFrame built by hand: categories as a pandas Categorical, a missing row kept, and a "suggestion" equal to
    # the given label (no change, so not counted as relabelled).
    rows = report(ids=IDS[1:], suggested_label=[None, None, "dog", "dog", None, None])  # s3: "dog" is its label
    rows = rows.assign(category=pd.Categorical(rows["category"]))
    applied = apply_verdicts(manifest(), rows, on_missing="keep")
    assert applied.counts["relabelled"] == 1 and applied.counts["kept_missing"] == 1
    assert applied.frame.set_index("sample_id").loc["s0", VERDICT_COLUMN] == ""


def test_integer_key_columns_are_restored_only_where_every_value_is_that_integer() -> None:
    frame = pd.DataFrame(
        {"sample_id": ["1", "2", "3"], "label": ["007", "7", "8"], "qmix_given_label": ["7", "7", "8"], "x": ["1"] * 3}
    )
    int64 = np.dtype("int64")
    restored = integers_restored(frame, {"sample_id": int64, "label": int64})
    assert restored["sample_id"].tolist() == [1, 2, 3] and restored["sample_id"].dtype == "int64"
    assert restored["label"].tolist() == ["007", "7", "8"]  # "007" is no integer's text: all of it stays text
    assert restored["qmix_given_label"].tolist() == ["7", "7", "8"]  # follows label
    assert restored["x"].tolist() == ["1"] * 3  # not a key column
    assert integers_restored(frame.assign(label=["7", "7", "8"]), {"label": int64})["qmix_given_label"].dtype == int64
    # The type it was stored as, exactly: no wrap-around, no float on the way, no widening.
    big = pd.DataFrame({"sample_id": ["18446744073709551615", "1"], "label": ["3", "200"]})
    kept = integers_restored(big, {"sample_id": np.dtype("uint64"), "label": np.dtype("uint8")})
    assert kept["sample_id"].tolist() == [18446744073709551615, 1] and kept["sample_id"].dtype == "uint64"
    assert kept["label"].dtype == "uint8"
    assert integers_restored(big, {"sample_id": int64})["sample_id"].tolist() == ["18446744073709551615", "1"]
