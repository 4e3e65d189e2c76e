"""``qmix evaluate`` through the Typer app: JSON metrics that agree with sklearn, the table, and errors."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support, roc_auc_score

from qmix_cli.cli.app import app
from tests.cli.helpers import assert_one_line_error as _assert_one_line_error
from tests.cli.helpers import stderr_of as _stderr

CATEGORIES = ["clean", "mislabeled_hq", "mislabeled_lq"]


@pytest.fixture(scope="module")
def joined(report, noisy_digits) -> pd.DataFrame:
    rep = pd.read_parquet(report)
    truth = pd.read_parquet(noisy_digits / "manifest.parquet")
    return rep.merge(truth, on="sample_id", how="inner", suffixes=("", "_truth"), validate="1:1")


def test_json_metrics_agree_with_sklearn(runner, report, noisy_digits, joined):
    result = runner.invoke(app, ["evaluate", str(report), "--truth", str(noisy_digits), "--json"])
    assert result.exit_code == 0, (result.output, _stderr(result))
    metrics = json.loads(result.stdout)
    assert {"macro_f1", "per_category", "confusion_matrix", "roc_auc"} <= set(metrics)

    y_true = joined["category_truth"].to_numpy(dtype=object)
    y_pred = joined["category"].to_numpy(dtype=object)
    assert metrics["n"] == len(joined) == 1797
    assert set(y_true) == set(CATEGORIES)  # every category present: no undefined F1 to worry about

    assert metrics["macro_f1"] == pytest.approx(f1_score(y_true, y_pred, labels=CATEGORIES, average="macro"))
    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=CATEGORIES, zero_division=0)
    assert list(metrics["per_category"]) == CATEGORIES
    for i, name in enumerate(CATEGORIES):
        row = metrics["per_category"][name]
        assert row["support"] == int(support[i])
        assert row["f1"] == pytest.approx(f1[i])
        assert row["recall"] == pytest.approx(recall[i])
        if (y_pred == name).any():
            assert row["precision"] == pytest.approx(precision[i])

    cm = metrics["confusion_matrix"]
    assert cm["labels"] == CATEGORIES
    assert cm["matrix"] == confusion_matrix(y_true, y_pred, labels=CATEGORIES).tolist()
    assert np.asarray(cm["matrix"]).sum() == len(joined)

    true_issue = y_true != "clean"
    assert metrics["roc_auc"]["mislabeled"] == pytest.approx(
        roc_auc_score(true_issue, -joined["p_clean"].to_numpy(np.float64))  # the report's ranking: rank 1 first
    )
    assert metrics["roc_auc"]["low_quality"] == pytest.approx(
        roc_auc_score(joined["is_low_quality"].to_numpy(bool), joined["p_mislabeled_lq"].to_numpy(np.float64))
    )
    assert metrics["detection"]["f1"] == pytest.approx(f1_score(true_issue, joined["is_label_issue"].to_numpy(bool)))
    assert metrics["detection"]["support"] == int(true_issue.sum())
    assert metrics["accuracy"] == pytest.approx((y_true == y_pred).mean())

    # Relabels: the mislabeled_hq rows' suggestions against the true labels; right far more often than a guess
    # among the nine other digits would be (1/9).
    proposed = y_pred == "mislabeled_hq"
    right = (joined["suggested_label"] == joined["true_label"]).to_numpy(bool)
    relabel = metrics["relabel"]
    assert relabel["proposed"] == int(proposed.sum()) > 0
    assert relabel["correct"] == int((proposed & right).sum())
    assert relabel["recall"] == pytest.approx((proposed & right)[y_true == "mislabeled_hq"].mean())
    assert relabel["precision"] > 0.8

    # Detection by given label, recomputed with pandas: adds up to the whole, class by class.
    flagged = joined["is_label_issue"].to_numpy(bool)
    frame = pd.DataFrame({"label": joined["given_label"], "issue": true_issue, "flagged": flagged})
    per_class = metrics["per_class"]
    assert list(per_class) == sorted(frame["label"].unique())
    for label, group in frame.groupby("label"):
        row, clean = per_class[label], ~group["issue"]
        assert row["n"] == len(group) and row["flagged"] == int(group["flagged"].sum())
        assert row["mislabeled"] == int(group["issue"].sum())
        assert row["false_alarms"] == pytest.approx(group["flagged"][clean].mean())
        assert row["recall"] == pytest.approx(group["flagged"][group["issue"]].mean())
    assert sum(row["flagged"] for row in per_class.values()) == metrics["detection"]["flagged"]

    # The degraded images by degradation and severity, recomputed with pandas from the corruption's own columns.
    degraded = joined[joined["is_low_quality"].astype(bool)]
    good_lq = joined.loc[~joined["is_low_quality"].astype(bool), "p_mislabeled_lq"].to_numpy(np.float64)
    for key, column in (("per_degradation", "degradation"), ("per_severity", "severity")):
        table = metrics[key]
        assert sorted(table) == sorted(degraded[column].astype(str).unique())
        for value, group in degraded.groupby(degraded[column].astype(str)):
            row = table[value]
            assert row["n"] == len(group)
            assert row["named"] == {name: int((group["category"] == name).sum()) for name in CATEGORIES}
            assert row["lq_recall"] == pytest.approx((group["category"] == "mislabeled_lq").mean())
            assert row["flagged"] == pytest.approx(group["is_label_issue"].astype(bool).mean())
            target = np.r_[np.ones(len(group)), np.zeros(len(good_lq))]
            scores = np.r_[group["p_mislabeled_lq"].to_numpy(np.float64), good_lq]
            assert row["roc_auc"] == pytest.approx(roc_auc_score(target, scores))
        # One degradation per image (the default): the rows add up to the degraded images, as they name them.
        assert sum(row["n"] for row in table.values()) == len(degraded)
        named_lq = sum(row["named"]["mislabeled_lq"] for row in table.values())
        assert named_lq == int((degraded["category"] == "mislabeled_lq").sum())


@pytest.mark.parametrize("quiet", [[], ["--quiet"]], ids=["plain", "quiet"])
def test_table_output(runner, report, noisy_digits, quiet):
    # The tables are what the command was asked for: --quiet (nothing but errors and requested output) keeps them.
    args = [*quiet, "evaluate", str(report), "--truth", str(noisy_digits / "manifest.parquet")]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, (result.output, _stderr(result))
    text = " ".join(result.stdout.split())
    assert "macro-F1" in text
    assert "Confusion matrix" in text and "ROC-AUC" in text
    assert "Mislabeled detection by given label" in text  # ten classes: shown unasked
    assert "Degraded images: what the report names them" in text and "severity 5" in text  # within 80 columns
    for name in CATEGORIES:
        assert name in text


def test_truth_without_category_column(runner, report, noisy_digits, tmp_path):
    manifest = pd.read_parquet(noisy_digits / "manifest.parquet")[["sample_id", "path", "label"]]
    plain = tmp_path / "plain.parquet"
    manifest.to_parquet(plain)
    result = runner.invoke(app, ["evaluate", str(report), "--truth", str(plain), "--json"])
    _assert_one_line_error(result, "category")


def test_mismatched_ids(runner, report, noisy_digits, tmp_path):
    manifest = pd.read_parquet(noisy_digits / "manifest.parquet")
    partial = tmp_path / "partial.parquet"
    manifest.iloc[10:].to_parquet(partial)
    result = runner.invoke(app, ["evaluate", str(report), "--truth", str(partial), "--json"])
    _assert_one_line_error(result, "do not cover the same images", "10 report rows missing from the truth")


def test_a_report_of_part_of_the_images_is_scored_on_those_when_asked(runner, report, noisy_digits, tmp_path, joined):
    # What `qmix audit --on-bad-image skip` writes: fewer rows than the truth. Refused by default (a report of the
    # wrong dataset looks the same), scored on the shared images with --on-missing skip, the rest counted.
    part = tmp_path / "part.parquet"
    pd.read_parquet(report).iloc[10:].to_parquet(part)
    args = ["evaluate", str(part), "--truth", str(noisy_digits)]
    refused = runner.invoke(app, [*args, "--json"])
    _assert_one_line_error(refused, "10 truth rows missing from the report", "--on-missing skip")

    result = runner.invoke(app, [*args, "--json", "--on-missing", "skip"])
    assert result.exit_code == 0, (result.output, _stderr(result))
    metrics = json.loads(result.stdout)
    kept = joined.set_index("sample_id").loc[pd.read_parquet(part)["sample_id"]]
    assert (metrics["n"], metrics["left_out"]) == (len(joined) - 10, 10)
    assert metrics["macro_f1"] == pytest.approx(
        f1_score(kept["category_truth"], kept["category"], labels=CATEGORIES, average="macro")
    )
    table = runner.invoke(app, [*args, "--on-missing", "skip"])
    assert "10 of the truth's not in the report, left out" in " ".join(table.stdout.split())

    # Report rows the truth lacks are another matter (--on-unchecked): --on-missing does not skip them.
    truth_part = tmp_path / "truth_part.parquet"
    pd.read_parquet(noisy_digits / "manifest.parquet").iloc[10:].to_parquet(truth_part)
    result = runner.invoke(app, ["evaluate", str(report), "--truth", str(truth_part), "--on-missing", "skip"])
    _assert_one_line_error(result, "10 report rows missing from the truth", "--on-unchecked skip")
    result = runner.invoke(app, [*args, "--on-missing", "maybe"])
    _assert_one_line_error(result, "on-missing must be error or skip")


def test_a_truth_written_by_hand_for_part_of_the_images_scores_those(runner, report, noisy_digits, tmp_path, joined):
    # What a team that re-graded a sample writes: ids and verdicts, nothing else, for 60 of the report's images.
    checked = joined.sample(60, random_state=0)
    hand = tmp_path / "hand.csv"
    verdicts = checked[["sample_id", "category_truth"]].rename(columns={"category_truth": "category"})
    verdicts.to_csv(hand, index=False, sep=";")  # as a spreadsheet where the comma is the decimal mark saves it
    args = ["evaluate", str(report), "--truth", str(hand)]
    _assert_one_line_error(runner.invoke(app, args), "report rows missing from the truth", "--on-unchecked skip")
    result = runner.invoke(app, [*args, "--on-unchecked", "skip", "--json"])
    assert result.exit_code == 0, (result.output, _stderr(result))
    metrics = json.loads(result.stdout)
    assert (metrics["n"], metrics["unchecked"], metrics["left_out"]) == (60, len(joined) - 60, 0)
    assert metrics["macro_f1"] == pytest.approx(
        f1_score(checked["category_truth"], checked["category"], labels=CATEGORIES, average="macro")
    )
    table = runner.invoke(app, [*args, "--on-unchecked", "skip"])
    assert f"{len(joined) - 60} of the report's not in the truth, left out" in " ".join(table.stdout.split())
    # The flags qmix corrupt writes say the same as the category; a truth of other images is still refused.
    flags = checked[["sample_id", "is_low_quality", "is_label_noisy"]]
    flags.to_csv(tmp_path / "flags.csv", index=False)
    result = runner.invoke(app, ["evaluate", str(report), "--truth", str(tmp_path / "flags.csv"), "--json",
                                 "--on-unchecked", "skip"])  # fmt: skip
    assert json.loads(result.stdout)["macro_f1"] == pytest.approx(metrics["macro_f1"])
    spelled = flags.assign(
        **{c: flags[c].map({True: "Yes", False: "no"}) for c in ("is_low_quality", "is_label_noisy")}
    )
    spelled.to_csv(tmp_path / "spelled.csv", index=False)  # as a person marks a sheet checked by hand
    result = runner.invoke(app, ["evaluate", str(report), "--truth", str(tmp_path / "spelled.csv"), "--json",
                                 "--on-unchecked", "skip"])  # fmt: skip
    assert json.loads(result.stdout)["macro_f1"] == pytest.approx(metrics["macro_f1"])
    checked.assign(sample_id="other-" + checked["sample_id"])[["sample_id", "category_truth"]].rename(
        columns={"category_truth": "category"}
    ).to_csv(tmp_path / "other.csv", index=False)
    other = runner.invoke(
        app, ["evaluate", str(report), "--truth", str(tmp_path / "other.csv"), "--on-unchecked", "skip"]
    )
    _assert_one_line_error(other, "share no image")
    for name, text in (("bare.csv", "sample_id,verdict\nx,clean\n"), ("no_ids.csv", "category\nclean\n")):
        (tmp_path / name).write_text(text)
        bare = runner.invoke(app, ["evaluate", str(report), "--truth", str(tmp_path / name)])
        _assert_one_line_error(bare, "needs a sample_id (or path) column and a category column of clean")


def test_truth_of_another_corruption_is_refused(runner, report, noisy_digits, tmp_path):
    # Same images and ids, other noisy labels (another seed's corruption): the verdicts would be scored against
    # labels the audit never saw.
    manifest = pd.read_parquet(noisy_digits / "manifest.parquet")
    other = manifest.copy()
    flip = other.index[:3]
    other.loc[flip, "label"] = ["0" if v != "0" else "1" for v in other.loc[flip, "label"]]
    other.to_parquet(tmp_path / "other.parquet")
    result = runner.invoke(app, ["evaluate", str(report), "--truth", str(tmp_path / "other.parquet"), "--json"])
    _assert_one_line_error(
        result, "3 images whose given label in the report is not the truth", manifest["sample_id"].iloc[0]
    )


@pytest.mark.parametrize("as_json", [False, True])
def test_a_reader_that_stops_early_ends_evaluate_quietly_and_with_success(report, noisy_digits, tmp_path, as_json):
    """``qmix evaluate ... | head -1`` in a ``set -o pipefail`` script: rich's own handler exited with status 1."""
    import os
    import shlex
    import subprocess
    import sys

    qmix = f"{shlex.quote(sys.executable)} -m qmix_cli evaluate {shlex.quote(str(report))}"
    qmix += f" --truth {shlex.quote(str(noisy_digits))}" + (" --json" if as_json else "")
    # A reader that closes its end without reading anything, so the JSON too finds the pipe closed.
    script = f'{qmix} | (exec 0<&-; sleep 2); echo "rc=${{PIPESTATUS[0]}}" >&2'
    env = {**os.environ, "QMIX_CACHE_DIR": os.environ["QMIX_CACHE_DIR"]}
    proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert proc.stderr.splitlines() == ["rc=0"], proc.stderr


def test_dot_slash_dash_names_a_report_file_called_dash(runner, report, noisy_digits, tmp_path, monkeypatch):
    """``-`` is stdin, which no reader of reports takes; ``./-`` is the file called ``-``, as to every shell tool
    (``qmix audit --out ./- --format csv`` writes one)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "-").write_bytes(report.read_bytes())
    dash = runner.invoke(app, ["evaluate", "-", "--truth", str(noisy_digits), "--json"])
    _assert_one_line_error(dash, "reading a report from stdin is not supported")
    named = runner.invoke(app, ["evaluate", "./-", "--truth", str(noisy_digits), "--json"])
    assert named.exit_code == 0, _stderr(named)
    expected = runner.invoke(app, ["evaluate", str(report), "--truth", str(noisy_digits), "--json"])
    assert json.loads(named.stdout) == json.loads(expected.stdout)


def test_missing_report(runner, noisy_digits, tmp_path):
    result = runner.invoke(app, ["evaluate", str(tmp_path / "nope.parquet"), "--truth", str(noisy_digits)])
    _assert_one_line_error(result, "report not found", "nope.parquet")


def test_per_class_flags(runner, report, noisy_digits):
    from qmix_cli.reporting.evaluate import PER_CLASS_ROWS

    args = ["evaluate", str(report), "--truth", str(noisy_digits)]
    hidden = runner.invoke(app, [*args, "--no-per-class"])
    assert hidden.exit_code == 0 and "by given label" not in hidden.stdout
    help_text = " ".join(runner.invoke(app, ["evaluate", "--help"]).stdout.replace("│", " ").split())
    assert f"by default the {PER_CLASS_ROWS} that lose the most correct labels" in help_text  # as the code does
