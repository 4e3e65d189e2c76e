"""``qmix demo`` end to end: on corrupted digits the audit beats an all-clean and a random report by far."""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from sklearn.metrics import f1_score
from typer.testing import CliRunner

from qmix_cli.cli.app import app
from qmix_cli.reporting.report import REPORT_SCHEMA
from tests.cli.helpers import assert_one_line_error
from tests.cli.helpers import stderr_of as _stderr

CATEGORIES = ["clean", "mislabeled_hq", "mislabeled_lq"]


def _scores(truth: np.ndarray, predicted: np.ndarray) -> tuple[float, float]:
    """(mislabeled-detection F1, 3-way macro-F1) of predicted categories against the true ones."""
    detection = f1_score(truth != "clean", predicted != "clean", zero_division=0)
    macro = f1_score(truth, predicted, labels=CATEGORIES, average="macro", zero_division=0)
    return float(detection), float(macro)


@pytest.mark.slow
def test_demo_beats_all_clean_and_random_reports(tmp_path):
    out = tmp_path / "demo"
    start = time.perf_counter()
    # A wide console, so that rich does not shorten the long pytest paths in the "where everything is" table.
    result = CliRunner().invoke(app, ["demo", "--out", str(out)], env={"COLUMNS": "300"})
    seconds = time.perf_counter() - start
    err = _stderr(result)
    assert result.exit_code == 0, (result.output, err)
    assert result.stdout == ""  # everything human-facing on stderr

    data, run, report_path = out / "noisy-digits", out / "run", out / "report.parquet"
    # The files it lists exist.
    flat = " ".join(err.split())
    for listed in (data, run, report_path):
        assert str(listed) in flat
    for path in (
        data / "manifest.parquet",
        data / "noise.json",
        data / "images",
        run / "config.yaml",
        run / "metrics.jsonl",
        run / "model.pt",
        run / "checkpoints" / "last.pt",
        report_path,
    ):
        assert path.exists(), path
    # The page is always written and listed (it is the demo's last step, not an optional one).
    assert "HTML page" in flat and str(out / "report.html") in flat
    assert "<svg" in (out / "report.html").read_text()
    assert "macro-F1" in flat

    # The loop's last step: the manifest to train on next holds far fewer wrong labels than the corrupted one.
    fixed, source = pd.read_parquet(out / "fixed.parquet"), pd.read_parquet(data / "manifest.parquet")
    assert "new manifest" in flat and str(out / "fixed.parquet") in flat
    assert f"qmix train {out / 'fixed.parquet'} --out {out / 'run2'} --method ce" in flat
    wrong_before, wrong_after = (source["label"] != source["true_label"]).mean(), fixed["is_label_noisy"].mean()
    assert wrong_after < wrong_before / 5, (wrong_before, wrong_after)

    report = pd.read_parquet(report_path)
    truth = pd.read_parquet(data / "manifest.parquet")[["sample_id", "category"]]
    joined = report.merge(truth, on="sample_id", suffixes=("", "_truth"), validate="1:1")
    assert len(joined) == len(truth) == len(report) == 1797
    y_true = joined["category_truth"].to_numpy(dtype=object)
    assert set(y_true) == set(CATEGORIES)

    audit = _scores(y_true, joined["category"].to_numpy(dtype=object))
    assert (joined["is_label_issue"] == (joined["category"] != "clean")).all()
    all_clean = _scores(y_true, np.full(len(y_true), "clean", dtype=object))
    # Random report with exactly the truth's category proportions (a seeded shuffle of the true categories).
    random = _scores(y_true, np.random.default_rng(0).permutation(y_true))

    counts = pd.Series(y_true).value_counts().to_dict()
    print(f"\ndemo: {seconds:.0f} s; truth {counts}")
    for name, (det, macro) in (("audit", audit), ("all-clean", all_clean), ("random", random)):
        print(f"demo {name:>9}: detection F1 {det:.3f}, 3-way macro-F1 {macro:.3f}")

    best_det = max(all_clean[0], random[0])
    best_macro = max(all_clean[1], random[1])
    assert audit[0] >= 0.8, audit
    assert audit[0] >= best_det + 0.4, (audit, all_clean, random)
    assert audit[1] >= best_macro + 0.3, (audit, all_clean, random)


@pytest.mark.parametrize("args", [["--epochs", "0"], ["--seed", "-1"]], ids=["epochs-0", "seed-negative"])
def test_a_bad_option_fails_before_anything_is_written(tmp_path, args):
    result = CliRunner().invoke(app, ["demo", "--out", str(tmp_path / "demo"), *args])
    assert_one_line_error(result, args[0].lstrip("-"))
    assert not (tmp_path / "demo").exists()


def test_an_earlier_demo_is_replaced_and_a_folder_of_other_files_is_not(tmp_path):
    out = tmp_path / "demo"
    (out / "run").mkdir(parents=True)
    (out / "run" / "config.yaml").write_text("an earlier demo's run\n")
    earlier = REPORT_SCHEMA.empty_table().replace_schema_metadata({b"qmix.version": b"0.0.1"})
    pq.write_table(earlier, out / "report.parquet")  # an earlier demo's report and page: replaced
    (out / "report.html").write_text("<!DOCTYPE html><title>qmix report — report.parquet</title>")
    (out / ".report.parquet.x1y2.tmp").write_bytes(b"what a killed demo left")
    result = CliRunner().invoke(app, ["demo", "--out", str(out), "--epochs", "1"])  # no --force: the README's command
    assert result.exit_code == 0, _stderr(result)
    assert pd.read_parquet(out / "report.parquet")["sample_id"].nunique() == 1797
    assert "<title>qmix report" in (out / "report.html").read_text()
    (out / "notes.txt").write_text("the user's own file")
    assert_one_line_error(CliRunner().invoke(app, ["demo", "--out", str(out)]), "--force")
    assert (out / "notes.txt").read_text() == "the user's own file"
    (out / "notes.txt").unlink()
    (out / "report.html").write_text("the user's own page, under a name the demo uses")
    result = CliRunner().invoke(app, ["demo", "--out", str(out), "--epochs", "1"])
    assert_one_line_error(result, "report.html already exists and is not a page qmix show wrote")
    assert "1/5" not in _stderr(result)  # refused before any work
    assert (out / "report.html").read_text() == "the user's own page, under a name the demo uses"


def test_a_device_the_machine_lacks_is_refused_before_the_demo_writes(tmp_path, monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)  # a CPU-only machine, even on a GPU one
    for device, said in (("cuda", "CUDA is not available"), ("mps", "not on mps")):
        result = CliRunner().invoke(app, ["demo", "--out", str(tmp_path / "demo"), "--device", device])
        assert_one_line_error(result, said)
        assert "1/5" not in _stderr(result) and not (tmp_path / "demo").exists()
