"""``qmix audit`` through the Typer app: the report schema in every format, stdout pipes, other manifests, errors."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

import qmix_cli
from qmix_cli.cli.app import app
from qmix_cli.cli.audit import fixed_manifest_name
from qmix_cli.reporting.groups import GROUP_SCHEMA
from tests.cli.helpers import assert_one_line_error as _assert_one_line_error
from tests.cli.helpers import stderr_of as _stderr

CATEGORIES = ("clean", "mislabeled_hq", "mislabeled_lq")

# DESIGN.md "The report": the columns, in order, and their Parquet types.
REPORT_COLUMNS: dict[str, pa.DataType] = {
    "sample_id": pa.string(),
    "path": pa.string(),
    "given_label": pa.string(),
    "predicted_label": pa.string(),
    "suggested_label": pa.string(),
    "confidence": pa.float32(),
    "label_score": pa.float32(),
    "loss": pa.float32(),
    "uncertainty": pa.float32(),
    "p_clean": pa.float32(),
    "p_mislabeled_hq": pa.float32(),
    "p_mislabeled_lq": pa.float32(),
    "category": pa.string(),
    "is_label_issue": pa.bool_(),
    "rank": pa.int32(),
}
FLOAT_COLUMNS = [name for name, kind in REPORT_COLUMNS.items() if kind == pa.float32()]
STRING_COLUMNS = [name for name, kind in REPORT_COLUMNS.items() if kind == pa.string()]
POSTERIORS = ["p_clean", "p_mislabeled_hq", "p_mislabeled_lq"]


def _audit(runner: CliRunner, data, run, *extra: str):
    return runner.invoke(app, ["audit", str(data), "--run", str(run), *extra])


def _read_csv(source) -> pd.DataFrame:
    # Class names are digits: keep every string column a string (pandas would parse "3" as an int).
    return pd.read_csv(source, dtype={name: str for name in STRING_COLUMNS})


def _read_jsonl(source) -> pd.DataFrame:
    # dtype=False: JSON strings stay strings ("3" is a label, not a number); numbers stay numbers.
    return pd.read_json(source, lines=True, dtype=False)


@pytest.fixture(scope="module")
def parquet_report(qmix_run, noisy_digits, tmp_path_factory) -> tuple[Path, str]:
    """One audit of the training set to Parquet through the CLI, shared by this module; (path, stderr)."""
    out = tmp_path_factory.mktemp("audit") / "r.parquet"
    result = CliRunner().invoke(app, ["audit", str(noisy_digits), "--run", str(qmix_run.run_dir), "--out", str(out)])
    assert result.exit_code == 0, (result.output, _stderr(result))
    return out, _stderr(result)


def _assert_same_report(frame: pd.DataFrame, reference: pd.DataFrame) -> None:
    assert list(frame.columns) == list(reference.columns)
    assert len(frame) == len(reference)
    assert frame["sample_id"].tolist() == reference["sample_id"].tolist()
    for name in ("path", "given_label", "predicted_label", "category"):
        assert frame[name].tolist() == reference[name].tolist(), name
    # Nulls (mislabeled_lq) stay nulls, not "" or "nan".
    assert frame["suggested_label"].isna().tolist() == reference["suggested_label"].isna().tolist()
    keep = reference["suggested_label"].notna()
    assert frame.loc[keep, "suggested_label"].tolist() == reference.loc[keep, "suggested_label"].tolist()
    for name in FLOAT_COLUMNS:
        np.testing.assert_allclose(
            frame[name].to_numpy(np.float64), reference[name].to_numpy(np.float64), rtol=1e-6, atol=1e-7, err_msg=name
        )
    assert frame["is_label_issue"].astype(bool).tolist() == reference["is_label_issue"].tolist()
    assert frame["rank"].astype(int).tolist() == reference["rank"].astype(int).tolist()


# ------------------------------------------------------------------------------------------------ Parquet


def test_parquet_report_follows_the_design_schema(parquet_report, noisy_digits):
    path, _ = parquet_report
    manifest = pd.read_parquet(noisy_digits / "manifest.parquet")
    n = len(manifest)

    schema = pq.read_schema(path)
    assert schema.names == list(REPORT_COLUMNS)
    for name, kind in REPORT_COLUMNS.items():
        assert schema.field(name).type == kind, (name, schema.field(name).type)

    df = pd.read_parquet(path)
    assert list(df.columns) == list(REPORT_COLUMNS)
    assert len(df) == n
    for name in FLOAT_COLUMNS:
        assert df[name].dtype == np.float32, name
    assert df["rank"].dtype == np.int32
    assert df["is_label_issue"].dtype == np.bool_

    # Rows sorted by sample_id, one per training image.
    assert df["sample_id"].tolist() == sorted(manifest["sample_id"])
    assert df["sample_id"].is_unique

    # Posteriors are probabilities summing to 1; the other scores live in [0, 1].
    post = df[POSTERIORS].to_numpy(np.float64)
    assert np.isfinite(post).all() and (post >= 0).all() and (post <= 1).all()
    np.testing.assert_allclose(post.sum(axis=1), 1.0, atol=1e-5)
    for name in ("confidence", "label_score", "loss", "uncertainty"):
        values = df[name].to_numpy(np.float64)
        assert np.isfinite(values).all() and (values >= 0).all() and (values <= 1 + 1e-6).all(), name

    # Categories and what follows from them.
    assert set(df["category"]) <= set(CATEGORIES)
    assert (df["is_label_issue"] == (df["category"] != "clean")).all()
    lq = df["category"] == "mislabeled_lq"
    assert (df["suggested_label"].isna() == lq).all()
    clean, hq = df["category"] == "clean", df["category"] == "mislabeled_hq"
    assert (df.loc[clean, "suggested_label"] == df.loc[clean, "given_label"]).all()
    # Relabels come from the out-of-fold probes, not the nets: they may differ from predicted_label, never from
    # the verdict (no mislabeled_hq row suggests its given label back).
    assert (df.loc[hq, "suggested_label"] != df.loc[hq, "given_label"]).all()

    # Labels are class names; given labels are the manifest's.
    classes = sorted(manifest["label"].unique())
    assert set(df["predicted_label"]) <= set(classes)
    by_id = manifest.set_index("sample_id")["label"]
    assert (df["given_label"].to_numpy() == by_id.loc[df["sample_id"]].to_numpy()).all()

    # rank: a permutation of 1..N, ascending in p_clean (1 = most likely issue).
    assert sorted(df["rank"].tolist()) == list(range(1, n + 1))
    by_rank = df.sort_values("rank")
    assert by_rank["p_clean"].is_monotonic_increasing


def test_parquet_metadata_records_version_method_model_classes(parquet_report, qmix_run):
    path, _ = parquet_report
    meta = {k.decode(): v.decode() for k, v in (pq.read_schema(path).metadata or {}).items()}
    run_meta = json.loads((qmix_run.run_dir / "run.json").read_text())
    assert meta["qmix.version"] == qmix_cli.__version__
    assert meta["qmix.method"] == "qmix"
    assert meta["qmix.model"] == "test_resnet"
    assert json.loads(meta["qmix.class_names"]) == run_meta["classes"] == [str(i) for i in range(10)]
    assert Path(meta["qmix.run_dir"]) == Path(qmix_run.run_dir)
    assert "qmix.created_at" in meta
    digest = hashlib.sha256((qmix_run.run_dir / "run.json").read_bytes()).hexdigest()[:16]
    assert meta["qmix.run_digest"] == digest  # which run made it, for `qmix show` to tell a run trained again


def test_summary_goes_to_stderr(parquet_report):
    _, err = parquet_report
    flat = " ".join(err.split())
    assert "audit of" in flat and "top issues" in flat
    assert "clean" in flat and "mislabeled_hq" in flat and "mislabeled_lq" in flat
    assert "next: qmix apply " in flat and "--out digits-fixed.parquet" in flat  # where a curator goes from here
    out, _ = parquet_report  # and where to look first (a Parquet report says where its run and images are)
    assert f"review them first: qmix show {out})" in flat


def test_the_suggested_manifest_name_says_what_it_fixes_and_is_free(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert fixed_manifest_name("photos/test/") == "test-fixed.parquet"
    assert fixed_manifest_name("lists/all.csv") == "all-fixed.parquet"
    assert fixed_manifest_name("fashion-mnist:test") == "fashion-mnist-test-fixed.parquet"
    (tmp_path / "train-fixed.parquet").write_bytes(b"a run was trained on it")
    (tmp_path / "train-fixed-2.parquet").write_bytes(b"and on this")
    assert fixed_manifest_name(Path("data/train")) == "train-fixed-3.parquet"


# ------------------------------------------------------------------------------------------ CSV and JSONL


@pytest.mark.parametrize(("name", "read"), [("r.csv", _read_csv), ("r.jsonl", _read_jsonl)], ids=["csv", "jsonl"])
def test_format_from_suffix_matches_parquet(runner, tmp_path, qmix_run, noisy_digits, parquet_report, name, read):
    out = tmp_path / name
    result = _audit(runner, noisy_digits, qmix_run.run_dir, "--out", str(out))
    assert result.exit_code == 0, (result.output, _stderr(result))
    assert result.stdout == ""
    if name.endswith(".csv"):
        assert out.read_text().splitlines()[0].replace('"', "").split(",") == list(REPORT_COLUMNS)
    else:
        first = json.loads(out.read_text().splitlines()[0])
        assert list(first) == list(REPORT_COLUMNS)
    _assert_same_report(read(out), pd.read_parquet(parquet_report[0]))


@pytest.mark.parametrize(("fmt", "read"), [("csv", _read_csv), ("jsonl", _read_jsonl)], ids=["csv", "jsonl"])
def test_stdout_streams_the_report_and_keeps_the_summary_on_stderr(
    runner, qmix_run, noisy_digits, parquet_report, fmt, read
):
    result = _audit(runner, noisy_digits, qmix_run.run_dir, "--out", "-", "--format", fmt)
    assert result.exit_code == 0, (result.output, _stderr(result))
    frame = read(io.StringIO(result.stdout))
    reference = pd.read_parquet(parquet_report[0])
    assert len(frame) == len(reference) == 1797
    _assert_same_report(frame, reference)
    # Human output only on stderr.
    assert "audit of" in _stderr(result) and "top issues" in _stderr(result)
    assert "audit of" not in result.stdout and "top issues" not in result.stdout


def test_stdout_defaults_to_csv(runner, qmix_run, noisy_digits):
    result = _audit(runner, noisy_digits, qmix_run.run_dir, "--out", "-")
    assert result.exit_code == 0, _stderr(result)
    assert len(_read_csv(io.StringIO(result.stdout))) == 1797


def test_out_dev_stdout_streams_into_the_shells_redirection(qmix_run, noisy_digits, tmp_path):
    """``{ qmix audit ... --out /dev/stdout; echo trailer; } > j.csv``: written as a file, the report replaced
    ``j.csv`` under the shell's redirection and the trailer was lost; streamed, both are there."""
    qmix = f"{shlex.quote(sys.executable)} -m qmix_cli -q audit {shlex.quote(str(noisy_digits))}"
    qmix += f" --run {shlex.quote(str(qmix_run.run_dir))} --out /dev/stdout --format csv"
    env = {**os.environ, "QMIX_CACHE_DIR": os.environ["QMIX_CACHE_DIR"]}
    script = f"{{ {qmix}; echo '# trailer'; }} > j.csv"
    proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = (tmp_path / "j.csv").read_text().splitlines()
    assert lines[-1] == "# trailer" and len(lines) == 1797 + 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["j.csv"]
    # A name that says Parquet, redirected to: it was streamed as CSV into a .parquet file, now refused.
    parquet = qmix.replace("--out /dev/stdout --format csv", "--out r.parquet") + " > r.parquet"
    proc = subprocess.run(["bash", "-c", parquet], capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert proc.returncode == 1 and "parquet cannot stream to stdout" in proc.stderr


def test_closed_pipe_exits_cleanly(qmix_run, noisy_digits, tmp_path):
    qmix = f"{shlex.quote(sys.executable)} -m qmix_cli audit {shlex.quote(str(noisy_digits))}"
    qmix += f" --run {shlex.quote(str(qmix_run.run_dir))} --out - --format csv"
    script = f'{qmix} | head -n 3; echo "rc=${{PIPESTATUS[0]}}" >&2'
    env = {**os.environ, "QMIX_CACHE_DIR": os.environ["QMIX_CACHE_DIR"]}
    proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    lines = proc.stdout.splitlines()
    assert len(lines) == 3, proc.stdout
    assert lines[0].replace('"', "").split(",") == list(REPORT_COLUMNS)
    frame = _read_csv(io.StringIO(proc.stdout))
    assert len(frame) == 2
    assert "rc=0" in proc.stderr.splitlines(), proc.stderr
    assert "Traceback" not in proc.stderr and "BrokenPipe" not in proc.stderr, proc.stderr
    assert "Exception ignored" not in proc.stderr, proc.stderr


# ------------------------------------------------------------------------------------------ other manifests


def test_audit_another_manifest_with_the_run_classes(runner, tmp_path, qmix_run, noisy_digits, parquet_report):
    manifest = pd.read_parquet(noisy_digits / "manifest.parquet")
    subset = manifest[manifest["label"].isin(["1", "4", "7"])].sample(n=50, random_state=0)
    csv = tmp_path / "other.csv"
    other = pd.DataFrame(
        {"path": [str((noisy_digits / p).resolve()) for p in subset["path"]], "label": subset["label"].tolist()}
    )
    other.to_csv(csv, index=False)
    out = tmp_path / "other.parquet"
    result = _audit(runner, csv, qmix_run.run_dir, "--out", str(out))
    assert result.exit_code == 0, (result.output, _stderr(result))
    df = pd.read_parquet(out)
    assert list(df.columns) == list(REPORT_COLUMNS)
    assert len(df) == 50
    assert set(df["path"]) == set(other["path"])
    assert set(df["given_label"]) <= {"1", "4", "7"}
    assert set(df["predicted_label"]) <= {str(i) for i in range(10)}
    post = df[POSTERIORS].to_numpy(np.float64)
    assert (post >= 0).all()
    np.testing.assert_allclose(post.sum(axis=1), 1.0, atol=1e-5)
    assert set(df["category"]) <= set(CATEGORIES)
    assert sorted(df["rank"]) == list(range(1, 51))
    # New images are placed on the run's saved separation: the same image gets the same scores as in training.
    full = pd.read_parquet(parquet_report[0]).set_index("sample_id")
    ids = dict(zip(other["path"], subset["sample_id"], strict=True))
    ref = full.loc[[ids[p] for p in df["path"]]]
    for name in (*POSTERIORS, "loss", "uncertainty", "confidence", "label_score"):
        np.testing.assert_allclose(df[name].to_numpy(), ref[name].to_numpy(), atol=1e-4, err_msg=name)
    assert df["category"].tolist() == ref["category"].tolist()


# -------------------------------------------------------------------------------------------------- errors


def test_missing_run_dir(runner, tmp_path, noisy_digits):
    result = _audit(runner, noisy_digits, tmp_path / "no-run", "--out", str(tmp_path / "r.parquet"))
    _assert_one_line_error(result, "run directory not found", "no-run")
    assert not (tmp_path / "r.parquet").exists()


def test_unfinished_run_points_to_resume(runner, tmp_path, noisy_digits):
    run = tmp_path / "half"
    (run / "checkpoints").mkdir(parents=True)
    result = _audit(runner, noisy_digits, run, "--out", str(tmp_path / "r.parquet"))
    _assert_one_line_error(result, "model.pt", "stopped before its first checkpoint", "--force")  # nothing to resume
    (run / "checkpoints" / "last.pt").write_bytes(b"a checkpoint")
    result = _audit(runner, noisy_digits, run, "--out", str(tmp_path / "r.parquet"))
    _assert_one_line_error(result, "model.pt", "--resume")
    assert not (tmp_path / "r.parquet").exists()


@pytest.mark.parametrize("damage", ["truncated", "evil"])
def test_unreadable_model_file_is_a_one_line_error(
    runner, tmp_path, qmix_run, noisy_digits, truncate, write_evil_checkpoint, damage
):
    # A model.pt cut short by a full disk, or one that would run code when unpickled (refused unrun).
    run = Path(shutil.copytree(qmix_run.run_dir, tmp_path / "run"))
    marker = tmp_path / "pwned"
    if damage == "truncated":
        truncate(run / "model.pt")
    else:
        write_evil_checkpoint(run / "model.pt", marker)
    result = _audit(runner, noisy_digits, run, "--out", str(tmp_path / "r.parquet"))
    _assert_one_line_error(result, "cannot read checkpoint", str(run / "model.pt"))
    assert not marker.exists()
    assert not (tmp_path / "r.parquet").exists()


def test_unknown_label_is_named(runner, tmp_path, qmix_run, noisy_digits):
    manifest = pd.read_parquet(noisy_digits / "manifest.parquet").head(6)
    csv = tmp_path / "bad.csv"
    labels = manifest["label"].tolist()
    labels[2] = "eleven"
    pd.DataFrame({"path": [str(noisy_digits / p) for p in manifest["path"]], "label": labels}).to_csv(csv, index=False)
    result = _audit(runner, csv, qmix_run.run_dir, "--out", str(tmp_path / "r.parquet"))
    _assert_one_line_error(result, "eleven", "unknown label")
    assert not (tmp_path / "r.parquet").exists()


@pytest.mark.parametrize(
    ("out", "extra", "fragments"),
    [
        ("r.parquet", ["--format", "xml"], ["unknown report format 'xml'", "parquet, csv"]),
        ("report.txt", [], ["report.txt", "--format"]),
        ("-", ["--format", "parquet"], ["parquet cannot stream to stdout"]),
    ],
    ids=["format-xml", "suffix-txt", "parquet-stdout"],
)
def test_bad_output_options(runner, tmp_path, qmix_run, noisy_digits, out, extra, fragments):
    target = out if out == "-" else str(tmp_path / out)
    result = _audit(runner, noisy_digits, qmix_run.run_dir, "--out", target, *extra)
    _assert_one_line_error(result, *fragments)
    assert list(tmp_path.iterdir()) == []


def test_quiet_suppresses_the_summary(runner, tmp_path, qmix_run, noisy_digits):
    out = tmp_path / "r.csv"
    result = runner.invoke(app, ["--quiet", "audit", str(noisy_digits), "--run", str(qmix_run.run_dir), "-o", str(out)])
    assert result.exit_code == 0, (result.output, _stderr(result))
    assert _stderr(result) == ""
    assert result.stdout == ""
    assert len(_read_csv(out)) == 1797
    # ... and with --out - the report is the only output.
    result = runner.invoke(app, ["--quiet", "audit", str(noisy_digits), "--run", str(qmix_run.run_dir), "-o", "-"])
    assert result.exit_code == 0, _stderr(result)
    assert _stderr(result) == ""
    assert len(_read_csv(io.StringIO(result.stdout))) == 1797


def test_out_that_is_the_dataset_manifest_is_refused(runner, qmix_run, noisy_digits, hash_tree):
    before = hash_tree(noisy_digits)
    result = _audit(runner, noisy_digits, qmix_run.run_dir, "--out", str(noisy_digits / "manifest.parquet"))
    _assert_one_line_error(result, "already exists and is not a table qmix audit wrote")
    result = _audit(runner, noisy_digits, qmix_run.run_dir, "--out", str(noisy_digits / "manifest.parquet"), "--force")
    _assert_one_line_error(result, "dataset's own manifest")  # --force replaces other files, never the input
    assert hash_tree(noisy_digits) == before


def test_an_existing_file_audit_did_not_write_is_kept_unless_forced(runner, qmix_run, noisy_digits, tmp_path):
    fixed = tmp_path / "fixed.csv"  # what qmix apply wrote, given as --out by mistake: a run may train on it
    fixed.write_text("path,label\nimages/0000000.png,3\n")
    before = fixed.read_bytes()
    result = _audit(runner, noisy_digits, qmix_run.run_dir, "--out", str(fixed))
    _assert_one_line_error(result, f"--out {fixed} already exists and is not a table qmix audit wrote; choose")
    assert fixed.read_bytes() == before
    result = _audit(
        runner, noisy_digits, qmix_run.run_dir, "--out", str(tmp_path / "r.csv"), "--groups-out", str(fixed)
    )
    _assert_one_line_error(result, "--groups-out")
    assert fixed.read_bytes() == before and not (tmp_path / "r.csv").exists()
    result = _audit(runner, noisy_digits, qmix_run.run_dir, "--out", str(fixed), "--force")
    assert result.exit_code == 0, _stderr(result)
    assert len(_read_csv(fixed)) == 1797
    result = _audit(runner, noisy_digits, qmix_run.run_dir, "--out", str(fixed))  # now a report: a rerun replaces it
    assert result.exit_code == 0, _stderr(result)


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_a_report_cut_down_for_a_review_is_kept_unless_forced(runner, qmix_run, noisy_digits, tmp_path, fmt):
    """``--sort rank | head > review.csv``, the flagged rows kept with pandas or jq: a report's columns, other rows.
    Judged by its header alone, a rerun of the audit with it as ``--out`` replaced the review without a word (only a
    Parquet file, whose qmix metadata pandas drops, was kept)."""
    earlier = tmp_path / f"r.{fmt}"
    assert _audit(runner, noisy_digits, qmix_run.run_dir, "--out", str(earlier)).exit_code == 0
    frame = pd.read_csv(earlier, dtype=str) if fmt == "csv" else pd.read_json(earlier, lines=True, dtype=False)
    review = tmp_path / f"review.{fmt}"
    flagged = frame[frame["category"] != "clean"]
    flagged.to_csv(review, index=False) if fmt == "csv" else flagged.to_json(review, orient="records", lines=True)
    before = review.read_bytes()
    result = _audit(runner, noisy_digits, qmix_run.run_dir, "--out", str(review))
    _assert_one_line_error(result, f"--out {review} already exists and is not a report of these images; choose")
    assert review.read_bytes() == before
    assert _audit(runner, noisy_digits, qmix_run.run_dir, "--out", str(earlier)).exit_code == 0  # a rerun: replaced
    assert _audit(runner, noisy_digits, qmix_run.run_dir, "--out", str(review), "--force").exit_code == 0


def test_sort_by_rank_puts_the_likeliest_issues_first(runner, tmp_path, qmix_run, noisy_digits, parquet_report):
    result = _audit(runner, noisy_digits, qmix_run.run_dir, "--out", "-", "--sort", "rank")
    assert result.exit_code == 0, _stderr(result)
    frame = _read_csv(io.StringIO(result.stdout))
    assert frame["rank"].tolist() == list(range(1, 1798))
    assert (frame["p_clean"].diff().dropna() >= 0).all()  # rank follows p_clean, lowest first
    # The same rows as the default report, only in another order.
    reference = pd.read_parquet(parquet_report[0])
    _assert_same_report(frame.sort_values("sample_id", ignore_index=True), reference)
    # Parquet too, across row groups (a tiny batch would not show it; the order is global).
    out = tmp_path / "ranked.parquet"
    assert _audit(runner, noisy_digits, qmix_run.run_dir, "--out", str(out), "--sort", "rank").exit_code == 0
    assert pd.read_parquet(out)["rank"].tolist() == list(range(1, 1798))


def test_unknown_sort_is_one_error_line(runner, tmp_path, qmix_run, noisy_digits):
    result = _audit(runner, noisy_digits, qmix_run.run_dir, "--out", str(tmp_path / "r.csv"), "--sort", "p_clean")
    _assert_one_line_error(result, "--sort must be sample_id or rank", "p_clean")
    assert list(tmp_path.iterdir()) == []
    # The traceback --verbose adds is in the CLI's words too, not the Python API's (sort_by).
    args = ["--verbose", "audit", str(noisy_digits), "--run", str(qmix_run.run_dir), "--out", "-", "--sort", "x"]
    err = runner.invoke(app, args).stderr
    assert "Traceback" in err and "ConfigError: --sort must be" in err and "ConfigError: sort_by" not in err


@pytest.mark.parametrize(("flag", "value"), [("--batch-size", "0"), ("--tta", "-1"), ("--workers", "-1")])
def test_impossible_batch_size_or_tta_is_one_error_line(runner, qmix_run, noisy_digits, flag, value):
    result = _audit(runner, noisy_digits, qmix_run.run_dir, flag, value, "--out", "-")
    _assert_one_line_error(result, flag)


def test_skipped_images_are_named_and_the_out_path_is_not_markup(runner, tmp_path, qmix_run, noisy_digits):
    # --on-bad-image skip leaves rows out of the report: the user is told which; and an output name with
    # brackets (valid on every file system) is printed as written, not read as rich markup.
    manifest = pd.read_parquet(noisy_digits / "manifest.parquet").head(6)
    rows = [str((noisy_digits / p).resolve()) for p in manifest["path"]] + [str(tmp_path / "gone.png")]
    csv = tmp_path / "m.csv"
    pd.DataFrame({"path": rows, "label": [*manifest["label"], "3"]}).to_csv(csv, index=False)
    out = tmp_path / "r[/x].csv"
    result = _audit(runner, csv, qmix_run.run_dir, "--out", str(out), "--on-bad-image", "skip")
    assert result.exit_code == 0, (result.output, _stderr(result))
    assert len(_read_csv(out)) == 6
    flat = "".join(_stderr(result).split())  # rich wraps long lines
    assert "skipped1unreadableimage" in flat and "gone.png" in flat
    assert "".join(str(out).split()) in flat
    # The next step it suggests must work on this report: quoted for the shell, and told what to do with the
    # skipped image the report has no row for.
    assert "--on-missingdrop" in flat and "".join(f"--report '{out}'".split()) in flat


def test_out_that_is_a_directory_is_refused_before_scoring(runner, tmp_path, qmix_run, noisy_digits, monkeypatch):
    from qmix_cli.reporting import score

    def never(*args, **kwargs):
        raise AssertionError("scored although the output could not be written")

    monkeypatch.setattr(score, "score_dataset", never)
    (tmp_path / "d.csv").mkdir()
    result = _audit(runner, noisy_digits, qmix_run.run_dir, "--out", str(tmp_path / "d.csv"))
    _assert_one_line_error(result, "d.csv is a directory")
    assert list((tmp_path / "d.csv").iterdir()) == []


def test_error_quoting_user_text_is_printed_verbatim(runner, tmp_path, write_image):
    # Labels and paths with brackets are data, not rich markup: "[/x]" once crashed the error printer itself.
    write_image(tmp_path / "a.png")
    (tmp_path / "m.csv").write_text("path,label\na.png,cat\nmissing[/x].png,[dog]\n")
    result = runner.invoke(app, ["train", str(tmp_path / "m.csv"), "--out", str(tmp_path / "run")])
    line = _assert_one_line_error(result, "missing[/x].png")
    assert "Traceback" not in line


def test_recompute_runs_the_nets_and_agrees_with_what_the_run_kept(
    runner, tmp_path, qmix_run, noisy_digits, monkeypatch
):
    """By default the training images are scored from the read-outs the run kept; ``--recompute`` runs the nets on
    all of them, and the two reports agree row by row."""
    from qmix_cli.reporting import score

    asked, original = [], score._read_nets

    def spy(*args, rows, **kwargs):
        asked.append(rows)
        return original(*args, rows=rows, **kwargs)

    monkeypatch.setattr(score, "_read_nets", spy)
    reports = {}
    for name, extra in (("kept", []), ("recomputed", ["--recompute"])):
        out = tmp_path / f"{name}.parquet"
        result = _audit(runner, noisy_digits, qmix_run.run_dir, "-o", str(out), *extra)
        assert result.exit_code == 0, result.output
        reports[name] = pd.read_parquet(out)
        assert asked == ([] if name == "kept" else [None])  # None: every image
    kept, recomputed = reports["kept"], reports["recomputed"]
    assert kept["category"].tolist() == recomputed["category"].tolist()
    assert kept["suggested_label"].tolist() == recomputed["suggested_label"].tolist()
    np.testing.assert_allclose(kept["loss"], recomputed["loss"], atol=1e-5)


@pytest.mark.parametrize("name", ["model.pt", "metrics.jsonl", "checkpoints/report.csv"])
def test_an_output_among_the_runs_own_files_is_refused(runner, qmix_run, noisy_digits, hash_tree, name):
    before = hash_tree(qmix_run.run_dir)
    fmt = "jsonl" if name.endswith(".jsonl") else "csv"  # a format the name does not contradict
    result = _audit(runner, noisy_digits, qmix_run.run_dir, "--out", str(qmix_run.run_dir / name), "-f", fmt)
    _assert_one_line_error(result, f"is one of the run's own files ({name}); write the report to another file")
    assert hash_tree(qmix_run.run_dir) == before


# -------------------------------------------------------------------------------------------------- groups


@pytest.fixture(scope="module")
def grouped_manifest(noisy_digits, tmp_path_factory) -> Path:
    """The noisy digits as a CSV manifest elsewhere with a ``patient`` column: three images a patient, one without."""
    manifest = pd.read_parquet(noisy_digits / "manifest.parquet")
    patients = [f"p{i // 3}" for i in range(len(manifest))]
    patients[0] = ""  # an image of no patient
    frame = pd.DataFrame(
        {
            "sample_id": manifest["sample_id"],
            "path": [str((noisy_digits / p).resolve()) for p in manifest["path"]],
            "label": manifest["label"],
            "patient": patients,
            "category": manifest["category"],  # the truth, for qmix evaluate
        }
    )
    out = tmp_path_factory.mktemp("grouped") / "grouped.csv"
    frame.to_csv(out, index=False)
    return out


@pytest.mark.parametrize(("name", "read"), [("g.csv", _read_csv), ("g.parquet", pd.read_parquet)], ids=["csv", "pq"])
def test_groups_out_writes_one_row_per_patient_and_label(runner, tmp_path, qmix_run, grouped_manifest, name, read):
    from qmix_cli.reporting.groups import GROUP_SCHEMA, summarise_groups

    report, groups = tmp_path / "r.parquet", tmp_path / name
    extra = ["--group-column", "patient", "--groups-out", str(groups)]
    result = _audit(runner, grouped_manifest, qmix_run.run_dir, "--out", str(report), *extra)
    assert result.exit_code == 0, (result.output, _stderr(result))
    frame = pd.read_parquet(report)
    table = read(groups) if name.endswith(".parquet") else pd.read_csv(groups, dtype={"group": str, "given_label": str})
    assert list(table.columns) == GROUP_SCHEMA.names
    assert table["images"].sum() == len(frame) - 1  # every image of a patient, once
    assert (table[list(CATEGORIES)].sum(axis=1) == table["images"]).all()
    patient = pd.read_csv(grouped_manifest, dtype=str).set_index("sample_id")["patient"]
    expected = summarise_groups(frame, groups=frame["sample_id"].map(patient))
    assert table["group"].tolist() == expected["group"].tolist()
    np.testing.assert_allclose(table["issue_score"], expected["issue_score"], atol=1e-6)
    flagged = (table["images"] > table["clean"]).groupby(table["group"]).any()
    line = " ".join(_stderr(result).split())
    assert f"{flagged.sum()} of {flagged.size} groups by patient have an image the audit flags → {groups}" in line
    first = table.iloc[0]
    assert "top groups" in line
    assert (
        f"{first['group']} │ {first['given_label']} │ {first['images'] - first['clean']} of {first['images']}" in line
    )
    if name.endswith(".parquet"):
        meta = pq.read_schema(groups).metadata
        assert meta[b"qmix.group_column"] == b"patient" and pq.read_schema(report).metadata[b"qmix.group_column"]


def test_groups_out_can_take_stdout_while_the_report_goes_to_a_file(runner, tmp_path, qmix_run, grouped_manifest):
    extra = ["--group-column", "patient", "--groups-out", "-"]
    result = _audit(runner, grouped_manifest, qmix_run.run_dir, "--out", str(tmp_path / "r.csv"), *extra)
    assert result.exit_code == 0, _stderr(result)
    table = pd.read_csv(io.StringIO(result.stdout))
    assert table["rank"].tolist() == list(range(1, len(table) + 1))
    # The same table as one written to a file, and the report beside it is the whole per-image report.
    extra[-1] = str(tmp_path / "g.csv")
    again = _audit(runner, grouped_manifest, qmix_run.run_dir, "--out", str(tmp_path / "r2.csv"), *extra)
    assert again.exit_code == 0, _stderr(again)
    pd.testing.assert_frame_equal(table, pd.read_csv(tmp_path / "g.csv"))
    assert list(table.columns) == GROUP_SCHEMA.names
    assert len(pd.read_csv(tmp_path / "r.csv")) == len(pd.read_csv(grouped_manifest))


@pytest.mark.parametrize(
    ("extra", "fragments"),
    [
        (["--groups-out", "g.csv"], ["--groups-out needs a column", "name one with --group-column"]),
        (["--group-column", "ward", "--groups-out", "g.csv"], ["no such column", "patient"]),
        (["--group-column", "patient", "--groups-out", "r.csv"], ["is the report's own file"]),
        (["--group-column", "patient", "--groups-out", "g.txt"], ["--groups-out g.txt: name a .parquet, .csv"]),
        (["--group-column", "patient", "--groups-out", "."], [". is a directory"]),
    ],
    ids=["no-column", "unknown-column", "same-file", "suffix", "directory"],
)
def test_groups_out_errors_are_one_line_and_write_nothing(
    runner, tmp_path, qmix_run, grouped_manifest, monkeypatch, extra, fragments
):
    monkeypatch.chdir(tmp_path)
    result = _audit(runner, grouped_manifest, qmix_run.run_dir, "--out", "r.csv", *extra)
    _assert_one_line_error(result, *fragments)
    assert list(tmp_path.iterdir()) == []


def test_groups_out_and_out_cannot_share_stdout(runner, qmix_run, grouped_manifest):
    result = _audit(
        runner, grouped_manifest, qmix_run.run_dir, "--out", "-", "--group-column", "patient", "--groups-out", "-"
    )
    _assert_one_line_error(result, "would share stdout")


@pytest.mark.parametrize("target", ["manifest", "run-file"])
def test_groups_out_never_replaces_the_dataset_or_the_run(
    runner, tmp_path, qmix_run, grouped_manifest, hash_tree, target
):
    path = grouped_manifest if target == "manifest" else qmix_run.run_dir / "metrics.jsonl"
    before = (hash_tree(grouped_manifest.parent), hash_tree(qmix_run.run_dir))
    extra = ["--group-column", "patient", "--groups-out", str(path), "--force"]  # not even with --force
    result = _audit(runner, grouped_manifest, qmix_run.run_dir, "--out", str(tmp_path / "r.csv"), *extra)
    _assert_one_line_error(result, f"--groups-out {path} is")
    assert (hash_tree(grouped_manifest.parent), hash_tree(qmix_run.run_dir)) == before
    assert not (tmp_path / "r.csv").exists()


def test_a_group_table_that_cannot_be_written_leaves_no_report(runner, tmp_path, qmix_run, grouped_manifest):
    (tmp_path / "blocker").write_text("a file where a folder is needed")
    extra = ["--group-column", "patient", "--groups-out", str(tmp_path / "blocker" / "g.csv")]
    result = _audit(runner, grouped_manifest, qmix_run.run_dir, "--out", str(tmp_path / "r.csv"), *extra)
    _assert_one_line_error(result, "cannot write")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocker"]  # the report is not left half-done


class _PipeClosedAfterOneWrite(io.StringIO):
    """A stdout whose reader goes away after the first batch of rows (``| head``)."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        if self.writes > 1:
            raise BrokenPipeError
        return super().write(text)


@pytest.mark.parametrize("groups_out", [True, False])
def test_a_closed_pipe_still_leaves_a_whole_group_table(tmp_path, qmix_run, grouped_manifest, monkeypatch, groups_out):
    import functools

    from qmix_cli.api import audit
    from qmix_cli.reporting import score

    # Batches of 200 rows, so that the pipe closes with most of the report unwritten.
    monkeypatch.setattr(score, "report_batches", functools.partial(score.report_batches, rows_per_batch=200))
    out = tmp_path / "g.csv" if groups_out else None
    stream = _PipeClosedAfterOneWrite()
    frame = audit(
        grouped_manifest,
        run=qmix_run.run_dir,
        out="-",
        stream=stream,
        group_column="patient",
        groups_out=out,
        quiet=True,
    )
    assert frame.attrs["pipe_closed"] and stream.getvalue().count("\n") == 201  # the header and one batch
    patients = pd.read_csv(grouped_manifest, dtype=str)["patient"]
    if groups_out:
        table = pd.read_csv(out, dtype={"group": str, "given_label": str})
        assert table["images"].sum() == patients.notna().sum()  # every patient's every image, not the first 200
        assert frame.attrs["groups"]["groups"] == table["group"].nunique()
    else:
        assert "groups" not in frame.attrs  # counts of the first 200 rows would be wrong, not partial


def test_a_group_table_is_not_taken_for_a_report(runner, tmp_path, qmix_run, grouped_manifest):
    from qmix_cli.errors import QmixError
    from qmix_cli.reporting.report import read_report

    groups = tmp_path / "g.parquet"
    extra = ["--group-column", "patient", "--groups-out", str(groups)]
    assert _audit(runner, grouped_manifest, qmix_run.run_dir, "--out", str(tmp_path / "r.csv"), *extra).exit_code == 0
    assert pq.read_schema(groups).metadata[b"qmix.table"] == b"groups"
    with pytest.raises(QmixError, match=r"is the audit by group .* give the per-image report"):
        read_report(groups)


def test_evaluate_scores_the_units_of_an_audit_by_group(runner, tmp_path, qmix_run, grouped_manifest):
    report = tmp_path / "r.parquet"
    assert (
        _audit(runner, grouped_manifest, qmix_run.run_dir, "--out", str(report), "--group-column", "patient").exit_code
        == 0
    )
    # The column comes from the report's metadata; the truth (here the audited manifest) has it.
    result = runner.invoke(app, ["evaluate", str(report), "--truth", str(grouped_manifest), "--json"])
    assert result.exit_code == 0, _stderr(result)
    groups = json.loads(result.stdout)["groups"]
    truth = pd.read_csv(grouped_manifest, dtype=str).dropna(subset=["patient"])
    units = truth.groupby(["patient", "label"])["category"]
    good = units.apply(lambda c: (c != "mislabeled_lq").any())
    assert (groups["units"], groups["unscored"]) == (good.sum(), (~good).sum())
    assert groups["wrong"] == units.apply(lambda c: (c == "mislabeled_hq").any())[good].sum()
    assert groups["roc_auc"] > 0.9  # three digits a patient, judged image by image: the table ranks them well
    table = runner.invoke(app, ["evaluate", str(report), "--truth", str(grouped_manifest)])
    assert "Units by patient and given label" in " ".join(table.stdout.split())


def test_the_top_groups_are_groups_with_a_flagged_image(tmp_path, qmix_run, grouped_manifest, monkeypatch):
    from qmix_cli.api import audit
    from qmix_cli.reporting import groups

    real = groups.summarise_groups

    def clean_groups_ranked_first(frame, **kwargs):  # uncertain but clean subjects can outrank a flagged one
        table = real(frame, **kwargs)
        flagged = table["images"] > table["clean"]
        return pd.concat([table[~flagged], table[flagged]], ignore_index=True).assign(rank=lambda t: t.index + 1)

    monkeypatch.setattr(groups, "summarise_groups", clean_groups_ranked_first)
    frame = audit(grouped_manifest, run=qmix_run.run_dir, group_column="patient", quiet=True)
    top = frame.attrs["groups"]["top"]
    assert top and all(row["images"] > row["clean"] for row in top)
    assert len(top) == min(5, frame.attrs["groups"]["flagged"])


def test_the_next_command_keeps_rare_classes_where_the_report_cannot_say_whose_it_is(
    runner, parquet_report, monkeypatch, tmp_path
):
    import qmix_cli.api

    path, _ = parquet_report
    frame = pd.read_parquet(path)
    flagged = frame[frame["category"] != "clean"].head(2).index
    frame.loc[flagged, "given_label"] = "rare_finding"  # two images, both flagged: a class the probe hardly saw
    frame.attrs["qmix"] = {"training_set": "true"}
    monkeypatch.setattr(qmix_cli.api, "audit", lambda *args, **kwargs: frame)  # the summary is the API's to print
    args = ["audit", "data", "--run", "run", "--out", str(tmp_path / "r.parquet")]
    said = " ".join(_stderr(runner.invoke(app, args)).split())
    assert "next: qmix apply" in said and "--rare-classes" not in said  # a Parquet report says whose it is
    csv_args = ["audit", "data", "--run", "run", "--out", str(tmp_path / "r.csv")]
    said = " ".join(_stderr(runner.invoke(app, csv_args)).split())
    assert "--report " + str(tmp_path / "r.csv") + " --rare-classes keep --out" in said  # a CSV report cannot say
    frame.attrs["qmix"] = {"training_set": "false"}  # another set: apply applies them, no flag needed
    assert "--rare-classes" not in _stderr(runner.invoke(app, csv_args))
