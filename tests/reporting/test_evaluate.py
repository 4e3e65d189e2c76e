"""Tests for qmix_cli/reporting/evaluate.py against hand-computed answers."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
from rich.console import Console

from qmix_cli.categories import CATEGORIES
from qmix_cli.errors import QmixError
from qmix_cli.reporting.evaluate import PER_CLASS_ROWS, evaluate_report, ids_by_path, render_evaluation

C, H, L = CATEGORIES  # clean, mislabeled_hq, mislabeled_lq

# Ten images. Truth: 5 clean, 3 mislabeled_hq, 2 mislabeled_lq.
TRUTH_CATS = [C, C, C, C, C, H, H, H, L, L]
PRED_CATS = [C, C, C, C, H, H, H, C, L, H]
# p_clean ranks truth-clean images above every issue except one (s07, predicted clean with p_clean 0.7 > 0.6).
P_CLEAN = [0.9, 0.8, 0.95, 0.85, 0.6, 0.1, 0.2, 0.7, 0.05, 0.3]
P_LQ = [0.01, 0.02, 0.01, 0.03, 0.1, 0.2, 0.1, 0.1, 0.9, 0.4]


def make_frames(
    truth_cats: list[str] = TRUTH_CATS, pred_cats: list[str] = PRED_CATS
) -> tuple[pd.DataFrame, pd.DataFrame]:
    n = len(truth_cats)
    ids = [f"s{i:02d}" for i in range(n)]
    report = pd.DataFrame(
        {
            "sample_id": ids,
            "category": pred_cats,
            "is_label_issue": [c != C for c in pred_cats],
            "p_clean": np.asarray(P_CLEAN[:n], dtype=np.float32),
            "p_mislabeled_lq": np.asarray(P_LQ[:n], dtype=np.float32),
            "loss": np.asarray([1 - p for p in P_CLEAN[:n]], dtype=np.float32),
            "uncertainty": np.asarray(P_LQ[:n], dtype=np.float32),
            "label_score": np.asarray(P_CLEAN[:n], dtype=np.float32),
        }
    )
    # The truth comes in another order: the join must not depend on row order.
    truth = pd.DataFrame({"sample_id": ids, "category": truth_cats}).iloc[::-1].reset_index(drop=True)
    return report, truth


def test_hand_computed_metrics() -> None:
    report, truth = make_frames()
    result = evaluate_report(report=report, truth=truth)
    json.dumps(result, allow_nan=False)  # JSON-able, no NaN

    assert result["n"] == 10
    assert result["counts"] == {"truth": {C: 5, H: 3, L: 2}, "predicted": {C: 5, H: 4, L: 1}}
    # Confusion (rows truth, cols predicted):
    #   clean: 4 clean, 1 hq;  hq: 1 clean, 2 hq;  lq: 0 clean, 1 hq, 1 lq.
    assert result["confusion_matrix"]["labels"] == list(CATEGORIES)
    assert result["confusion_matrix"]["matrix"] == [[4, 1, 0], [1, 2, 0], [0, 1, 1]]

    per = result["per_category"]
    # clean: tp 4, predicted 5, actual 5 -> P = R = F1 = 0.8
    assert per[C] == pytest.approx({"precision": 0.8, "recall": 0.8, "f1": 0.8, "support": 5})
    # hq: tp 2, predicted 4, actual 3 -> P 0.5, R 2/3, F1 = 2*0.5*(2/3)/(0.5+2/3) = 4/7
    assert per[H] == pytest.approx({"precision": 0.5, "recall": 2 / 3, "f1": 4 / 7, "support": 3})
    # lq: tp 1, predicted 1, actual 2 -> P 1, R 0.5, F1 2/3
    assert per[L] == pytest.approx({"precision": 1.0, "recall": 0.5, "f1": 2 / 3, "support": 2})
    assert result["macro_f1"] == pytest.approx((0.8 + 4 / 7 + 2 / 3) / 3)
    assert result["macro_f1_over"] == list(CATEGORIES)
    assert result["accuracy"] == pytest.approx(7 / 10)

    # Detection: flagged = predicted != clean = {s04, s05, s06, s08, s09}; truth issues = s05..s09.
    # tp 4 (s05, s06, s08, s09), fp 1 (s04), fn 1 (s07) -> P = R = F1 = 0.8
    det = result["detection"]
    assert det == pytest.approx({"precision": 0.8, "recall": 0.8, "f1": 0.8, "support": 5, "flagged": 5})

    # AUC of 1 - p_clean for truth != clean: 25 (issue, clean) pairs; only s07 (p_clean 0.7) is out-ranked,
    # by the clean s04 (p_clean 0.6) -> 24/25.
    assert result["roc_auc"]["mislabeled"] == pytest.approx(24 / 25)
    # AUC of p_mislabeled_lq for truth == lq: s08 (0.9) beats all 8; s09 (0.4) beats all 8 -> 1.0.
    assert result["roc_auc"]["low_quality"] == pytest.approx(1.0)
    assert result["targets"] == {
        "mislabeled": "category != clean",
        "low_quality": "category == mislabeled_lq",
    }
    by_score = result["roc_auc_by_score"]
    assert by_score["mislabeled"]["loss"] == pytest.approx(24 / 25)
    assert by_score["mislabeled"]["1 - label_score"] == pytest.approx(24 / 25)
    assert "label_noisy" not in by_score


def test_perfect_report_scores_one() -> None:
    report, truth = make_frames(pred_cats=TRUTH_CATS)
    report["p_clean"] = np.where(np.array(TRUTH_CATS) == C, 0.9, 0.1).astype(np.float32)
    report["p_mislabeled_lq"] = np.where(np.array(TRUTH_CATS) == L, 0.8, 0.1).astype(np.float32)
    result = evaluate_report(report=report, truth=truth)
    assert result["macro_f1"] == 1.0
    assert result["accuracy"] == 1.0
    assert all(row["f1"] == 1.0 for row in result["per_category"].values())
    assert result["detection"]["f1"] == 1.0
    assert result["roc_auc"] == {"mislabeled": 1.0, "low_quality": 1.0}


def test_single_class_truth_gives_undefined_auc() -> None:
    clean = [C] * 4
    report, truth = make_frames(truth_cats=clean, pred_cats=[C, C, H, C])
    result = evaluate_report(report=report, truth=truth)
    json.dumps(result, allow_nan=False)
    assert result["roc_auc"] == {"mislabeled": None, "low_quality": None}
    assert all(value is None for value in result["roc_auc_by_score"]["mislabeled"].values())
    # Nothing is truly mislabeled, so detection recall is undefined and precision is 0 (one false alarm).
    assert result["detection"]["recall"] is None
    assert result["detection"]["precision"] == 0.0
    # mislabeled_lq is absent from truth and prediction: undefined, and left out of the macro average.
    assert result["per_category"][L]["f1"] is None
    assert result["macro_f1"] == pytest.approx((2 * 1.0 * 0.75 / 1.75 + 0.0) / 2)
    assert result["macro_f1_over"] == [C, H]  # said, so that it is not compared with a 3-way one unawares
    console = Console(record=True, width=200)
    render_evaluation(result, console)
    assert "macro-F1 (2-way: clean, mislabeled_hq)" in console.export_text()


def test_tiny_scores_keep_their_order_in_the_aucs() -> None:
    """A p_clean of 1e-30 is common in a report; ``1 - p`` in float64 makes every value below 1e-16 one tie at 1.0,
    so the AUC would not be that of the ranking the report gives (its ``rank``: p_clean ascending)."""
    report, truth = make_frames()
    tiny = np.asarray([1e-20, 3e-33, 1e-25, 1e-22, 1e-18, 1e-33, 1e-31, 1e-32, 1e-36, 1e-34], dtype=np.float32)
    report = report.assign(p_clean=tiny, label_score=tiny)  # issues below clean images but s06, s07 above s01
    truth = truth.assign(is_label_noisy=truth["category"] == H)
    result = evaluate_report(report=report, truth=truth)
    assert result["roc_auc"]["mislabeled"] == pytest.approx(23 / 25)  # one tie would say 0.5
    assert result["roc_auc_by_score"]["mislabeled"]["1 - label_score"] == pytest.approx(23 / 25)
    # Noisy s05 (1e-33) beats the five clean images but s08, s09; s06 (1e-31) and s07 (1e-32) four each.
    assert result["roc_auc_by_score"]["label_noisy"]["1 - p_clean"] == pytest.approx(13 / 21)


def test_optional_truth_columns_are_used() -> None:
    report, truth = make_frames()
    order = truth["sample_id"].str[1:].astype(int)
    # Low quality by the truth flag: only s09 (p_lq 0.4), which s08 (0.9, now high quality) out-ranks.
    truth["is_low_quality"] = order == 9
    truth["is_label_noisy"] = order.isin([5, 6, 7])
    result = evaluate_report(report=report, truth=truth)
    assert result["targets"]["low_quality"] == "is_low_quality"
    assert result["roc_auc"]["low_quality"] == pytest.approx(8 / 9)
    # label_score = p_clean here. Noisy s05 (0.1), s06 (0.2), s07 (0.7) against the other 7
    # (0.9, 0.8, 0.95, 0.85, 0.6, 0.05, 0.3): each beats those with a higher label_score -> (6 + 6 + 4) / 21.
    assert result["roc_auc_by_score"]["label_noisy"]["1 - label_score"] == pytest.approx(16 / 21)


def test_suggested_relabels_are_scored_against_the_true_labels() -> None:
    report, truth = make_frames()
    order = truth["sample_id"].str[1:].astype(int)
    # Predicted mislabeled_hq: s04 (truly clean, so any relabel breaks it), s05, s06 (truly hq) and s09 (truly lq).
    report["suggested_label"] = ["a", "b", "c", "d", "x", "y", "z", "h", None, "lq"]
    truth["true_label"] = np.array(["a", "b", "c", "d", "e", "y", "q", "h", "i", "lq"])[order]
    relabel = evaluate_report(report=report, truth=truth)["relabel"]
    # Right: s05 and s09 of 4 proposals; of the 3 truly mislabeled_hq images (s05-s07) only s05 is fixed: s07's
    # suggestion matches its true label, but a row called clean proposes no relabel, so it does not count.
    assert relabel == {"proposed": 4, "correct": 2, "precision": 0.5, "wrong_labels": 3, "recall": pytest.approx(1 / 3)}


def test_relabels_are_not_scored_without_true_labels() -> None:
    report, truth = make_frames()
    report["suggested_label"] = "a"
    assert evaluate_report(report=report, truth=truth)["relabel"] is None
    report["true_label"] = "a"  # a column the report carries along is not the truth
    assert evaluate_report(report=report, truth=truth)["relabel"] is None
    truth["true_label"] = "b"
    assert evaluate_report(report=report, truth=truth)["relabel"]["correct"] == 0


def test_booleans_read_as_text_are_accepted() -> None:
    report, truth = make_frames()
    expected = evaluate_report(report=report, truth=truth)
    report["is_label_issue"] = report["is_label_issue"].map({True: "true", False: "false"})
    assert evaluate_report(report=report, truth=truth)["detection"] == expected["detection"]


def test_mismatched_ids_are_reported() -> None:
    report, truth = make_frames()
    truth = pd.concat([truth[truth["sample_id"] != "s03"], pd.DataFrame({"sample_id": ["extra"], "category": [C]})])
    with pytest.raises(QmixError) as info:
        evaluate_report(report=report, truth=truth)
    message = str(info.value)
    assert "1 report row missing from the truth: s03" in message
    assert "1 truth row missing from the report: extra" in message


def test_a_truth_of_part_of_the_images_is_scored_on_those_when_asked() -> None:
    report, truth = make_frames()
    given = [f"class{i % 2}" for i in range(10)]
    report = report.assign(given_label=given)
    part = truth.assign(label=given[::-1])[truth["sample_id"] != "s03"]  # as a corrupt manifest's rows carry it
    with pytest.raises(QmixError, match=r"1 report row missing from the truth: s03 .*--on-unchecked skip"):
        evaluate_report(report=report, truth=part)
    both = evaluate_report(report=report, truth=part, on_unchecked="skip", on_missing="skip")
    assert (both["n"], both["unchecked"], both["left_out"]) == (9, 1, 0)
    keep = [i for i in range(10) if i != 3]
    alone = evaluate_report(report=report.iloc[keep], truth=truth[truth["sample_id"] != "s03"])
    assert both["macro_f1"] == alone["macro_f1"] and both["confusion_matrix"] == alone["confusion_matrix"]
    other = part.assign(label="class9")  # the truth of another labelling of the same images: still refused
    with pytest.raises(QmixError, match="given label in the report is not the truth manifest's"):
        evaluate_report(report=report, truth=other, on_unchecked="skip")
    with pytest.raises(QmixError, match="share no image"):
        evaluate_report(report=report, truth=part.assign(sample_id="x" + part["sample_id"]), on_unchecked="skip")
    # Ids a spreadsheet shortened ("s03" is no number: the report's ids here are made numbers padded with zeros).
    padded = report.assign(sample_id=[f"{i:03d}" for i in range(10)])
    saved = truth.assign(sample_id=[str(int(i[1:])) for i in truth["sample_id"]])
    with pytest.raises(QmixError, match=r"^the report and the truth share no image \(sample_id\); 10 ids of the truth "
                       r"are the report's without leading zeros \(0 is 000\): a spreadsheet drops them"):  # fmt: skip
        evaluate_report(report=padded, truth=saved)
    one = saved.assign(sample_id=[f"{i:03d}" if i != 5 else "5" for i in range(10)])
    said = r"do not cover the same images; 1 id of the truth is the report's without leading zeros \(5 is 005\)"
    for skip in ({}, {"on_missing": "skip", "on_unchecked": "skip"}):  # skipping would score 9 of 10 without a word
        with pytest.raises(QmixError, match=said):
            evaluate_report(report=padded, truth=one, **skip)
    # The other way round: the report is the file a spreadsheet shortened.
    shortened = padded.assign(sample_id=[i if i != "005" else "5" for i in padded["sample_id"]])
    full = truth.assign(sample_id=[f"{int(i[1:]):03d}" for i in truth["sample_id"]])
    with pytest.raises(QmixError, match=r"1 id of the report is the truth's without leading zeros \(5 is 005\)"):
        evaluate_report(report=shortened, truth=full)
    for empty_report, empty_truth, what in ((True, False, "report"), (False, True, "truth")):
        with pytest.raises(QmixError, match=f"^the {what} is empty: nothing to evaluate$"):
            evaluate_report(
                report=report.iloc[:0] if empty_report else report,
                truth=truth.iloc[:0] if empty_truth else truth,
                on_unchecked="skip",
                on_missing="skip",
            )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r, t: (r.drop(columns="p_clean"), t), "report lacks column"),
        (lambda r, t: (r, t.drop(columns="category")), "truth lacks column"),
        (lambda r, t: (r, t.replace({"category": {C: "good"}})), "unknown categories"),
        (lambda r, t: (pd.concat([r, r.iloc[:1]]), t), "1 duplicate sample id in the report"),
    ],
)
def test_bad_inputs_raise(change, message: str) -> None:
    report, truth = change(*make_frames())
    with pytest.raises(QmixError, match=message):
        evaluate_report(report=report, truth=truth)


def test_render_evaluation_prints_every_table() -> None:
    report, truth = make_frames()
    report["suggested_label"] = "a"
    truth["true_label"] = "a"
    result = evaluate_report(report=report, truth=truth)
    console = Console(record=True, width=120, color_system=None)
    render_evaluation(json.loads(json.dumps(result)), console)
    text = console.export_text()
    for fragment in (
        "macro-F1",
        "mislabeled_lq",
        "Confusion matrix",
        "ROC-AUC",
        "0.960",
        "Mislabeled detection",
        "Suggested relabels",
    ):
        assert fragment in text


# Given labels of the ten images: class "a" holds s00-s02 (clean), s05 (hq) and s08 (lq); class "b" the rest.
GIVEN = ["a", "a", "a", "b", "b", "a", "b", "b", "a", "b"]


def test_detection_by_given_label() -> None:
    report, truth = make_frames()
    report["given_label"] = GIVEN
    per_class = evaluate_report(report=report, truth=truth)["per_class"]
    assert list(per_class) == ["a", "b"]
    # a: truth issues s05, s08; flagged s05, s08 (both hits); its 3 clean images none flagged.
    assert per_class["a"] == pytest.approx(
        {
            "n": 5,
            "mislabeled": 2,
            "flagged": 2,
            "precision": 1.0,
            "recall": 1.0,
            "false_alarms": 0.0,
            "correct_flagged": 0,
        }
    )
    # b: truth issues s06, s07, s09; flagged s04 (clean: a false alarm), s06, s09; s07 missed.
    assert per_class["b"] == pytest.approx(
        {
            "n": 5,
            "mislabeled": 3,
            "flagged": 3,
            "precision": 2 / 3,
            "recall": 2 / 3,
            "false_alarms": 0.5,
            "correct_flagged": 1,
        }
    )
    # The classes add up to the whole.
    assert sum(row["flagged"] for row in per_class.values()) == 5


def test_detection_by_given_label_undefined_ratios_and_absence() -> None:
    report, truth = make_frames()
    report["given_label"] = ["a"] * 5 + ["b"] * 5  # b holds only truth issues, a only clean images
    report["is_label_issue"] = [False] * 10
    per_class = evaluate_report(report=report, truth=truth)["per_class"]
    assert per_class["a"]["precision"] is None and per_class["a"]["recall"] is None  # nothing flagged, no issue
    assert per_class["a"]["false_alarms"] == 0.0
    assert per_class["b"]["false_alarms"] is None and per_class["b"]["recall"] == 0.0  # no clean image in b
    report, truth = make_frames()
    assert evaluate_report(report=report, truth=truth)["per_class"] is None  # no given labels: nothing to group


@pytest.mark.parametrize(
    ("n_classes", "per_class", "rows"),
    [
        (2, None, 2),
        (PER_CLASS_ROWS + 5, None, PER_CLASS_ROWS),
        (PER_CLASS_ROWS + 5, True, PER_CLASS_ROWS + 5),
        (2, False, 0),
    ],
)
def test_per_class_table_puts_the_classes_losing_most_correct_labels_first(n_classes: int, per_class, rows) -> None:
    report, truth = make_frames()
    report["given_label"] = GIVEN
    result = evaluate_report(report=report, truth=truth)
    row = result["per_class"]["b"]  # 2 of its 4 correct labels flagged
    quiet = {**row, "false_alarms": 0.0, "correct_flagged": 0}
    # Every third class loses correct labels; the rest lose none: those are what the table must not hide.
    result["per_class"] = {f"class{i:02d}": row if i % 3 == 2 else quiet for i in range(n_classes)}
    console = Console(record=True, width=200, color_system=None)
    render_evaluation(result, console, per_class=per_class)
    text = console.export_text()
    shown = re.findall(r"class(\d\d)", text)
    assert len(shown) == rows
    losing = [f"{i:02d}" for i in range(n_classes) if i % 3 == 2]
    assert shown[: len(losing)] == losing[:rows]  # the losing classes first, by name among equals
    # Cut for its size only, the table says so, so that a user knows where the rest are.
    assert (f"of {n_classes} classes; all with --per-class" in " ".join(text.split())) == (0 < rows < n_classes)


def degraded_frames() -> tuple[pd.DataFrame, pd.DataFrame]:
    """make_frames with s08 degraded by blur at severity 4 (named mislabeled_lq, p_mislabeled_lq 0.9) and s09 by
    blur and noise at 5 (named mislabeled_hq, 0.15: below one good image's 0.2, above the seven others)."""
    report, truth = make_frames()
    report.loc[report["sample_id"] == "s09", "p_mislabeled_lq"] = 0.15
    kinds, levels = {"s08": "blur", "s09": "blur+noise"}, {"s08": 4, "s09": 5}
    truth["is_low_quality"] = truth["sample_id"].isin(kinds)
    truth["degradation"] = truth["sample_id"].map(kinds).fillna("")
    truth["severity"] = truth["sample_id"].map(levels).fillna(0).astype(int)
    return report, truth


def test_degraded_images_by_degradation_and_severity() -> None:
    report, truth = degraded_frames()
    result = evaluate_report(report=report, truth=truth)
    lq_only, hq_only = {C: 0, H: 0, L: 1}, {C: 0, H: 1, L: 0}
    # An image degraded two ways counts under each; AUCs against the eight good images' p_mislabeled_lq.
    assert result["per_degradation"] == {
        "blur": {"n": 2, "named": {C: 0, H: 1, L: 1}, "lq_recall": 0.5, "flagged": 1.0, "roc_auc": 15 / 16},
        "noise": {"n": 1, "named": hq_only, "lq_recall": 0.0, "flagged": 1.0, "roc_auc": 7 / 8},
    }
    assert result["per_severity"] == {
        "4": {"n": 1, "named": lq_only, "lq_recall": 1.0, "flagged": 1.0, "roc_auc": 1.0},
        "5": {"n": 1, "named": hq_only, "lq_recall": 0.0, "flagged": 1.0, "roc_auc": 7 / 8},
    }
    console = Console(record=True, width=160, color_system=None)
    render_evaluation(result, console)
    first_cells = [line.split("│")[1].strip() for line in console.export_text().splitlines() if "│" in line]
    kinds = [cell for cell in first_cells if cell in ("blur", "noise") or cell.startswith("severity")]
    assert kinds == ["noise", "blur", "severity 4", "severity 5"]  # the kinds named low quality least often first


def test_degraded_images_from_a_truth_as_a_spreadsheet_keeps_it() -> None:
    report, truth = degraded_frames()
    # As a CSV reads back: empty cells NaN, severities floats; a degraded image whose kind and level were left out.
    truth["degradation"] = truth["degradation"].replace("", np.nan)
    truth["severity"] = truth["severity"].where(truth["is_low_quality"]).astype(float)
    truth.loc[truth["sample_id"] == "s09", ["degradation", "severity"]] = np.nan
    result = evaluate_report(report=report, truth=truth)
    assert list(result["per_degradation"]) == ["(not named)", "blur"]
    assert list(result["per_severity"]) == ["4", "(not named)"]
    assert result["per_degradation"]["(not named)"]["named"] == {C: 0, H: 1, L: 0}


def test_a_degraded_image_left_unflagged_lowers_its_kinds_share_flagged() -> None:
    report, truth = degraded_frames()
    # s07 too (named clean, not flagged, p_mislabeled_lq 0.1, tied with two of the seven good images): noise, 4.
    truth.loc[truth["sample_id"] == "s07", ["is_low_quality", "degradation", "severity"]] = [True, "noise", 4]
    result = evaluate_report(report=report, truth=truth)
    noise, level4 = result["per_degradation"]["noise"], result["per_severity"]["4"]
    assert noise.pop("roc_auc") == pytest.approx((5 + 6) / 14)
    assert noise == {"n": 2, "named": {C: 1, H: 1, L: 0}, "lq_recall": 0.0, "flagged": 0.5}
    assert level4.pop("roc_auc") == pytest.approx((5 + 7) / 14)
    assert level4 == {"n": 2, "named": {C: 1, H: 0, L: 1}, "lq_recall": 0.5, "flagged": 0.5}


def test_untidy_degradation_names_count_under_the_names_they_hold() -> None:
    report, truth = degraded_frames()
    truth.loc[truth["sample_id"] == "s08", "degradation"] = "blur + noise"
    truth.loc[truth["sample_id"] == "s09", "degradation"] = "blur+"
    per_degradation = evaluate_report(report=report, truth=truth)["per_degradation"]
    assert {key: row["n"] for key, row in per_degradation.items()} == {"blur": 2, "noise": 1}
    truth.loc[truth["sample_id"] == "s09", "degradation"] = " + "  # names nothing
    per_degradation = evaluate_report(report=report, truth=truth)["per_degradation"]
    assert {key: row["n"] for key, row in per_degradation.items()} == {"(not named)": 1, "blur": 1, "noise": 1}


def test_severities_sort_as_numbers_then_as_text() -> None:
    report, truth = degraded_frames()
    levels = {"s04": 10, "s05": 2, "s06": "high", "s07": 4.5, "s08": np.inf, "s09": np.nan}
    degraded = truth["sample_id"].isin(levels)
    truth["is_low_quality"] = degraded
    truth["degradation"] = np.where(degraded, "blur", "")
    truth["severity"] = truth["sample_id"].map(levels).astype(object)
    per_severity = evaluate_report(report=report, truth=truth)["per_severity"]
    # 2 before 10 (text would sort "10" first); an infinite level is text, not a number: no crash, no bogus number.
    assert list(per_severity) == ["2", "4.5", "10", "high", "inf", "(not named)"]
    assert all(row["n"] == 1 for row in per_severity.values())
    # Levels told apart to their last digit, a blank cell as an empty one.
    truth["severity"] = truth["sample_id"].map({"s04": 1000001, "s05": 1000002, "s06": " "}).astype(object)
    per_severity = evaluate_report(report=report, truth=truth)["per_severity"]
    assert {key: row["n"] for key, row in per_severity.items()} == {"1000001": 1, "1000002": 1, "(not named)": 4}


def test_a_severity_without_a_degradation_column_is_not_read() -> None:
    # A medical truth's "severity" is likelier a disease grade than the level of a corruption.
    report, truth = degraded_frames()
    result = evaluate_report(report=report, truth=truth.drop(columns="degradation"))
    assert result["per_degradation"] is None and result["per_severity"] is None
    result = evaluate_report(report=report, truth=truth.drop(columns="severity"))
    assert list(result["per_degradation"]) == ["blur", "noise"] and result["per_severity"] is None


def test_a_truth_without_degraded_images_gives_empty_tables() -> None:
    report, truth = degraded_frames()
    truth["is_low_quality"] = False
    result = evaluate_report(report=report, truth=truth)
    assert result["per_degradation"] == {} and result["per_severity"] == {}
    console = Console(record=True, width=160, color_system=None)
    render_evaluation(result, console)
    assert "Degraded images" not in console.export_text()


def test_no_degraded_breakdown_without_the_truth_columns() -> None:
    report, truth = make_frames()
    result = evaluate_report(report=report, truth=truth)
    assert result["per_degradation"] is None and result["per_severity"] is None
    console = Console(record=True, width=160, color_system=None)
    render_evaluation(result, console)
    assert "Degraded images" not in console.export_text()


def test_class_names_are_printed_as_written() -> None:
    report, truth = make_frames()
    report["given_label"] = ["[/]" if g == "a" else "[red]b" for g in GIVEN]  # rich markup, as a name
    console = Console(record=True, width=160, color_system=None)
    render_evaluation(evaluate_report(report=report, truth=truth), console)
    text = console.export_text()
    assert "[/]" in text and "[red]b" in text


def test_units_by_group_are_scored_by_how_their_issue_score_ranks_the_wrong_ones() -> None:
    report, truth = make_frames()
    report["given_label"] = GIVEN
    report["suggested_label"] = None
    # Patients (given labels GIVEN, truth TRUTH_CATS, p_clean P_CLEAN):
    #   P1 = s05 (a, hq, 0.1), s06 (b, hq, 0.2): two units, both wrong, scores 0.9 and 0.8;
    #   Z2 = s00, s01, s02 (a, clean) and s08 (a, lq, 0.05): one unit, right (a degraded image is no wrong label),
    #        score the median of 0.1, 0.2, 0.05, 0.95 = 0.15;
    #   P3 = s09 (b, lq): degraded only, not scored;
    #   P4 = s03 (b, clean, 0.85), s07 (b, hq, 0.7): wrong, score 0.225;
    #   P5 = s04 (b, clean, 0.6): right, score 0.4, ranked above the wrong P4.
    # (Z2 sorts last by name, not by score: the units' scores must be matched to their truth by name.)
    patients = {"s00": "Z2", "s01": "Z2", "s02": "Z2", "s03": "P4", "s04": "P5", "s05": "P1", "s06": "P1",
                "s07": "P4", "s08": "Z2", "s09": "P3"}  # fmt: skip
    truth["patient"] = truth["sample_id"].map(patients)
    groups = evaluate_report(report=report, truth=truth, group_column="patient")["groups"]
    assert groups["column"] == "patient"
    assert (groups["units"], groups["wrong"], groups["unscored"], groups["ungrouped"]) == (5, 3, 1, 0)
    # Wrong 0.9, 0.8, 0.225 against right 0.4, 0.15: 5 of 6 pairs in order; precision at each wrong unit down the
    # list (0.9 W, 0.8 W, 0.4 R, 0.225 W, 0.15 R) 1, 1, 3/4.
    assert groups["roc_auc"] == pytest.approx(5 / 6)
    assert groups["average_precision"] == pytest.approx((1 + 1 + 3 / 4) / 3)
    no_patient = truth.assign(patient=truth["patient"].where(truth["sample_id"] != "s04"))  # P5 has no group now
    fewer = evaluate_report(report=report, truth=no_patient, group_column="patient")["groups"]
    assert (fewer["units"], fewer["ungrouped"], fewer["roc_auc"]) == (4, 1, 1.0)
    with pytest.raises(QmixError, match="ward: the truth has no such column"):
        evaluate_report(report=report, truth=truth, group_column="ward")
    with pytest.raises(QmixError, match="has no value"):
        evaluate_report(report=report, truth=truth.assign(ward=None), group_column="ward")
    assert evaluate_report(report=report, truth=truth)["groups"] is None


def test_a_truth_keyed_by_path_finds_the_ids_a_windows_manifest_gave(tmp_path) -> None:
    from qmix_cli.api import evaluate

    report, truth = make_frames()
    report["sample_id"] = [f"images\\{i}.png" for i in range(10)]  # default ids: the paths as the manifest wrote them
    report["path"] = [f"images/{i}.png" for i in range(10)]  # the paths as read
    by_path = truth.assign(path=[f"images/{9 - i}.png" for i in range(10)]).drop(columns="sample_id")
    by_path.loc[0, "path"] = "./images//9.png"  # written another way, the same file
    by_path.to_csv(tmp_path / "checked.csv", index=False)
    result = evaluate(report, truth=tmp_path / "checked.csv")
    assert result == evaluate_report(report=report, truth=truth.assign(sample_id=report["sample_id"].iloc[::-1].values))
    twice = report.assign(path=["a.png"] * 2 + report["path"].tolist()[2:])  # one file listed under two ids
    assert ids_by_path(twice, pd.Series(["x.png"])).tolist() == ["x.png"]  # not held: left for the join to name
    with pytest.raises(QmixError, match=r"1 truth path the report holds under several ids: a\.png .*sample_id"):
        ids_by_path(twice, pd.Series(["a.png", "x.png"]))


def test_a_row_without_an_id_is_refused_in_one_line() -> None:
    report, truth = make_frames()
    truth.loc[truth["sample_id"] == "s03", "sample_id"] = np.nan  # an empty cell of a hand-made truth
    with pytest.raises(QmixError, match=r"^the truth has 1 row without a sample_id$"):
        evaluate_report(report=report, truth=truth)


def test_categories_read_as_bytes_are_scored_as_the_text_they_hold() -> None:
    report, truth = make_frames()
    expected = evaluate_report(report=report, truth=truth)
    report["category"] = report["category"].map(str.encode).astype(object)  # a binary column, read as bytes
    assert evaluate_report(report=report, truth=truth) == expected
