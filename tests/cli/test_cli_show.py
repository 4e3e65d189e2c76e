"""``qmix show`` through the Typer app: the page is written, stdout stays clean, errors are one line."""

from __future__ import annotations

import pytest

from qmix_cli.cli.app import app
from tests.cli.helpers import assert_one_line_error as _assert_one_line_error
from tests.cli.helpers import stderr_of as _stderr
from tests.reporting.test_html import make_report, make_run


def test_show_writes_the_page(runner, tmp_path, write_image):
    report, data, rows = make_report(tmp_path, write_image)
    run = make_run(tmp_path)
    out = tmp_path / "out" / "report.html"
    args = ["show", str(report), "--out", str(out), "--run", str(run), "--data", str(data), "--top", "2"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert "wrote" in _stderr(result) and "report.html" in _stderr(result)
    page = out.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>")
    assert page.count("<circle") == len(rows)
    assert page.count('<figure class="thumb"') == 6  # 2 per issue group, 2 of the clean images
    result = runner.invoke(app, [*args, "--sample", "5"])
    assert result.exit_code == 0, result.output
    assert out.read_text(encoding="utf-8").count('<figure class="thumb"') == 9  # the sample's size is its own
    assert page.count('<svg class="curve"') == 2


def test_show_starts_the_pages_review_from_a_sheet_and_refuses_one_of_other_images(runner, tmp_path, write_image):
    import json
    import re

    import pandas as pd

    report, data, rows = make_report(tmp_path, write_image)
    flagged = rows[rows["category"] == "mislabeled_lq"].iloc[0]
    pd.DataFrame({"sample_id": [flagged["sample_id"]], "category": ["clean"]}).to_csv(tmp_path / "s.csv", index=False)
    out = tmp_path / "r.html"
    args = ["show", str(report), "--data", str(data), "--out", str(out), "--review"]
    result = runner.invoke(app, [*args, str(tmp_path / "s.csv")])
    assert result.exit_code == 0, _stderr(result)
    found = re.search(r'id="qmix-review-data">(.*?)</script>', out.read_text(encoding="utf-8")).group(1)
    assert json.loads(found)["decisions"][flagged["sample_id"]]["value"] == "clean"
    pd.DataFrame({"sample_id": ["nope"], "category": ["clean"]}).to_csv(tmp_path / "s.csv", index=False)
    refused = runner.invoke(app, [*args, str(tmp_path / "s.csv")])
    _assert_one_line_error(refused, "1 review row of images the report does not have: nope")


def test_show_quiet_prints_nothing(runner, tmp_path, write_image):
    report, _, _ = make_report(tmp_path, write_image)
    result = runner.invoke(app, ["--quiet", "show", str(report), "--out", str(tmp_path / "r.html"), "--top", "0"])
    assert result.exit_code == 0, result.output
    assert result.stdout == "" and _stderr(result) == ""
    assert '<figure class="thumb"' not in (tmp_path / "r.html").read_text()


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [([], "report not found"), (["--run", "nope-run"], "report not found")],
)
def test_show_missing_report_is_one_error_line(runner, tmp_path, extra, fragment):
    out = tmp_path / "r.html"
    result = runner.invoke(app, ["show", str(tmp_path / "missing.parquet"), "--out", str(out), *extra])
    assert result.exit_code == 1, result.output
    err = _stderr(result)
    error_lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and fragment in error_lines[0], err
    assert "Traceback" not in err and result.stdout == ""
    assert not out.exists()


def test_show_missing_run_is_one_error_line(runner, tmp_path, write_image):
    report, _, _ = make_report(tmp_path, write_image)
    result = runner.invoke(app, ["show", str(report), "--out", str(tmp_path / "r.html"), "--run", str(tmp_path / "x")])
    assert result.exit_code == 1
    error_lines = [line for line in _stderr(result).splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and "run directory not found" in error_lines[0]


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (["--top", "-1"], "--top must be 0 or more (got -1)"),  # exit 1 as every refused value, not click's 2
        (["--run", ""], "run is an empty path"),  # `--run "$RUN"` unset: not the working directory
        (["--data", ""], "data is an empty path"),
        (["--run", "EMPTY"], "is not a folder qmix train wrote"),  # was taken for a run "trained again since"
    ],
    ids=["top-negative", "run-empty", "data-empty", "run-not-a-run"],
)
def test_show_refuses_values_in_one_line(runner, tmp_path, write_image, extra, fragment):
    report, _, _ = make_report(tmp_path, write_image)
    (tmp_path / "empty").mkdir()
    extra = [str(tmp_path / "empty") if arg == "EMPTY" else arg for arg in extra]
    result = runner.invoke(app, ["show", str(report), "--out", str(tmp_path / "r.html"), *extra])
    _assert_one_line_error(result, fragment)
    assert not (tmp_path / "r.html").exists()


def test_show_refuses_to_write_over_its_report(runner, tmp_path, write_image):
    report, _, _ = make_report(tmp_path, write_image)
    before = report.read_bytes()
    result = runner.invoke(app, ["show", str(report), "--out", str(report)])
    _assert_one_line_error(result, "is the report being read")
    assert report.read_bytes() == before


def test_thumbnails_not_found_are_said_with_what_to_pass(runner, tmp_path, write_image):
    report, data, rows = make_report(tmp_path, write_image, fmt="csv")  # a CSV report records no dataset folder
    shown = len(rows)  # 10 of each verdict: all of them, under --top 12
    result = runner.invoke(app, ["show", str(report), "--out", str(tmp_path / "a.html")])
    assert result.exit_code == 0, _stderr(result)
    text = " ".join(_stderr(result).split())
    assert f"{shown} of the {shown} images shown as thumbnails are not found from the current directory: " in text
    assert "give the dataset the report's paths are relative to as --data DATASET" in text
    result = runner.invoke(app, ["show", str(report), "--out", str(tmp_path / "b.html"), "--data", str(data)])
    assert result.exit_code == 0, _stderr(result)
    # Only the one image make_report leaves out.
    assert f"1 of the {shown} images shown as thumbnails are not found under {data}" in " ".join(
        _stderr(result).split()
    )


def test_the_runs_own_files_are_not_an_output(runner, tmp_path, write_image):
    report, _, _ = make_report(tmp_path, write_image)
    run = make_run(tmp_path)
    before = (run / "metrics.jsonl").read_bytes()
    result = runner.invoke(app, ["show", str(report), "--run", str(run), "--out", str(run / "metrics.jsonl")])
    _assert_one_line_error(result, "is one of the run's own files (metrics.jsonl)")
    assert (run / "metrics.jsonl").read_bytes() == before


def test_an_existing_file_show_did_not_write_is_kept_unless_forced(runner, tmp_path, write_image):
    report, data, _ = make_report(tmp_path, write_image)
    notes = tmp_path / "notes.html"  # a page of the user's own, given as --out by mistake
    notes.write_text("<!DOCTYPE html><title>ward round</title>")
    result = runner.invoke(app, ["show", str(report), "--out", str(notes)])
    _assert_one_line_error(result, f"--out {notes} already exists and is not a page qmix show wrote; choose")
    assert notes.read_text() == "<!DOCTYPE html><title>ward round</title>"
    page = tmp_path / "page.html"
    for _ in range(2):  # written, then replaced by a rerun: its own earlier page
        result = runner.invoke(app, ["show", str(report), "--out", str(page), "--data", str(data)])
        assert result.exit_code == 0, _stderr(result)
    result = runner.invoke(app, ["show", str(report), "--out", str(notes), "--force"])
    assert result.exit_code == 0, _stderr(result)
    assert "<title>qmix report" in notes.read_text()


def test_a_page_is_never_written_over_a_file_named_as_data(runner, tmp_path, write_image):
    report, _, _ = make_report(tmp_path, write_image)
    manifest = tmp_path / "manifest.csv"  # the dataset's manifest, not known to show without --data
    manifest.write_text("path,label\na.png,cat\n")
    (tmp_path / "link.html").symlink_to(manifest)  # so no --force goes through a link either
    for out in (manifest, tmp_path / "report", tmp_path / "link.html"):
        result = runner.invoke(app, ["show", str(report), "--out", str(out), "--force"])
        _assert_one_line_error(result, f"--out {out}: the page is HTML; name it .html")
    assert manifest.read_text() == "path,label\na.png,cat\n" and not (tmp_path / "report").exists()
