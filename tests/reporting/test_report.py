"""Tests for qmix_cli/reporting/report.py: the report schema, row derivation, writers and reader."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import qmix_cli
from qmix_cli.errors import DataError, QmixError
from qmix_cli.reporting.report import (
    CATEGORIES,
    REPORT_SCHEMA,
    build_report,
    compute_ranks,
    holds_images,
    infer_format,
    open_report_writer,
    read_report,
    read_report_metadata,
    report_format,
    report_metadata,
    suggest_labels,
    write_report,
    written_by_audit,
)

CLASSES = ("cat", "dog", "fox", "owl")
STRING_COLUMNS = ("sample_id", "path", "given_label", "predicted_label", "suggested_label", "category")
FLOAT_COLUMNS = (
    "confidence",
    "label_score",
    "loss",
    "uncertainty",
    "p_clean",
    "p_mislabeled_hq",
    "p_mislabeled_lq",
)


def make_inputs(n: int, *, seed: int = 0) -> dict[str, Any]:
    """Random but valid build_report arguments; ids deliberately shuffled, some p_clean values tied."""
    rng = np.random.default_rng(seed)
    k = len(CLASSES)
    posteriors = rng.dirichlet(np.ones(3), size=n)
    posteriors[: n // 10] = [0.2, 0.5, 0.3]  # exact ties in p_clean exercise the tie-breaks
    return {
        "sample_ids": [f"img/{i:06d}.png" for i in rng.permutation(n)],
        "paths": [f"images/{i:06d}.png" for i in range(n)],
        "given_labels": rng.integers(0, k, size=n),
        "probs": rng.dirichlet(np.ones(k), size=n),
        "loss": rng.random(n),
        "uncertainty": rng.random(n),
        "posteriors": posteriors,
        "categories": rng.integers(0, 3, size=n),
        "class_names": CLASSES,
    }


@pytest.fixture
def report() -> pa.Table:
    return build_report(**make_inputs(60))


def metadata() -> dict[bytes, bytes]:
    return report_metadata(method="qmix", model="resnet18", class_names=CLASSES, run_dir="runs/a")


# --------------------------------------------------------------------------------------------------- schema


def test_schema_matches_the_design_table() -> None:
    expected = [
        ("sample_id", pa.string()),
        ("path", pa.string()),
        ("given_label", pa.string()),
        ("predicted_label", pa.string()),
        ("suggested_label", pa.string()),
        ("confidence", pa.float32()),
        ("label_score", pa.float32()),
        ("loss", pa.float32()),
        ("uncertainty", pa.float32()),
        ("p_clean", pa.float32()),
        ("p_mislabeled_hq", pa.float32()),
        ("p_mislabeled_lq", pa.float32()),
        ("category", pa.string()),
        ("is_label_issue", pa.bool_()),
        ("rank", pa.int32()),
    ]
    assert [(f.name, f.type) for f in REPORT_SCHEMA] == expected
    assert [f.name for f in REPORT_SCHEMA if f.nullable] == ["suggested_label"]


def test_build_report_rows_follow_the_contract(report: pa.Table) -> None:
    assert report.schema.equals(REPORT_SCHEMA)
    df = report.to_pandas()
    n = len(df)
    assert n == 60

    sums = df[["p_clean", "p_mislabeled_hq", "p_mislabeled_lq"]].sum(axis=1).to_numpy()
    np.testing.assert_allclose(sums, 1.0, atol=1e-5)
    assert set(df["category"]) <= set(CATEGORIES)
    assert (df["suggested_label"].isna() == (df["category"] == "mislabeled_lq")).all()
    clean = df["category"] == "clean"
    hq = df["category"] == "mislabeled_hq"
    assert (df.loc[clean, "suggested_label"] == df.loc[clean, "given_label"]).all()
    assert (df.loc[hq, "suggested_label"] != df.loc[hq, "given_label"]).all()
    disagree = hq & (df["predicted_label"] != df["given_label"])
    assert (df.loc[disagree, "suggested_label"] == df.loc[disagree, "predicted_label"]).all()
    assert (df["is_label_issue"] == (df["category"] != "clean")).all()
    assert df["sample_id"].tolist() == sorted(df["sample_id"])

    assert sorted(df["rank"]) == list(range(1, n + 1))
    by_rank = df.sort_values("rank")
    assert by_rank["p_clean"].is_monotonic_increasing


def test_build_report_derives_labels_and_scores_from_probs() -> None:
    inputs = make_inputs(30, seed=3)
    df = build_report(**inputs).to_pandas().set_index("sample_id")
    order = [inputs["sample_ids"].index(sid) for sid in df.index]
    probs = inputs["probs"][order]
    given = inputs["given_labels"][order]
    assert df["predicted_label"].tolist() == [CLASSES[i] for i in probs.argmax(axis=1)]
    assert df["given_label"].tolist() == [CLASSES[i] for i in given]
    np.testing.assert_array_equal(df["confidence"], probs.max(axis=1).astype(np.float32))
    np.testing.assert_array_equal(df["label_score"], probs[np.arange(30), given].astype(np.float32))
    assert df["path"].tolist() == [inputs["paths"][i] for i in order]


def test_mislabeled_hq_never_suggests_its_given_label_back() -> None:
    # Rows the nets agree with (argmax = given label) but the separation calls mislabeled_hq: the suggestion is
    # the runner-up class, not the label the verdict says is wrong; clean and mislabeled_lq rows are unaffected.
    probs = np.array([[0.6, 0.3, 0.1], [0.6, 0.1, 0.3], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1], [0.6, 0.3, 0.1]])
    df = build_report(
        sample_ids=list("abcde"),
        paths=list("abcde"),
        given_labels=np.array([0, 0, 0, 0, 0]),
        probs=probs,
        loss=np.zeros(5),
        uncertainty=np.zeros(5),
        posteriors=np.full((5, 3), 1 / 3),
        categories=np.array([1, 1, 1, 0, 2]),
        class_names=["cat", "dog", "fox"],
    ).to_pandas()
    assert df["predicted_label"].tolist() == ["cat", "cat", "dog", "cat", "cat"]
    assert df["suggested_label"].tolist()[:4] == ["dog", "fox", "dog", "cat"]
    assert df["suggested_label"].isna().tolist() == [False, False, False, False, True]
    np.testing.assert_allclose(df["confidence"], [0.6, 0.6, 0.7, 0.6, 0.6])  # still the prediction's probability


def test_suggest_labels_follows_the_verdict() -> None:
    probs = np.array([[0.5, 0.3, 0.2], [0.5, 0.3, 0.2], [0.1, 0.2, 0.7], [0.5, 0.3, 0.2]])
    suggested = suggest_labels(probs=probs, given_labels=np.array([0, 0, 0, 2]), categories=np.array([0, 1, 1, 2]))
    # clean keeps 0; mislabeled_hq takes the runner-up 1 when the argmax is the given label, else the argmax 2;
    # mislabeled_lq gets none.
    assert suggested.tolist() == [0, 1, 2, -1]


def test_suggestions_can_come_from_other_probabilities() -> None:
    inputs = make_inputs(40, seed=5)
    # Suggestion scores whose argmax is class (given + 1) mod K: every mislabeled_hq row must suggest it, whatever
    # predicted_label and confidence (still from probs) say.
    k = len(CLASSES)
    target = (inputs["given_labels"] + 1) % k
    suggestion = np.full((40, k), 0.1)
    suggestion[np.arange(40), target] = 0.9
    df = build_report(**inputs, suggestion_probs=suggestion).to_pandas().set_index("sample_id")
    order = [inputs["sample_ids"].index(sid) for sid in df.index]
    hq = inputs["categories"][order] == 1
    assert df.loc[hq, "suggested_label"].tolist() == [CLASSES[i] for i in target[order][hq]]
    assert df["predicted_label"].tolist() == [CLASSES[i] for i in inputs["probs"][order].argmax(axis=1)]
    with pytest.raises(ValueError, match="suggestion_probs"):
        build_report(**inputs, suggestion_probs=suggestion[:, :2])


def test_ranks_break_ties_by_loss_then_sample_id() -> None:
    ranks = compute_ranks(
        p_clean=np.array([0.5, 0.1, 0.5, 0.5, 0.9]),
        loss=np.array([0.2, 0.0, 0.7, 0.2, 1.0]),
        sample_ids=["d", "e", "c", "a", "b"],
    )
    # e (lowest p_clean) first; then among p_clean 0.5: c (highest loss), then a before d (same loss); b last.
    assert ranks.dtype == np.int32
    assert ranks.tolist() == [4, 1, 2, 3, 5]


def test_build_report_uses_a_precomputed_global_rank() -> None:
    inputs = make_inputs(10)
    given_rank = np.arange(101, 111)
    df = build_report(**inputs, rank=given_rank).to_pandas()
    expected = dict(zip(inputs["sample_ids"], given_rank, strict=True))
    assert df["rank"].tolist() == [expected[sid] for sid in df["sample_id"]]


def test_posteriors_are_renormalised_in_float32() -> None:
    inputs = make_inputs(20)
    inputs["posteriors"] = inputs["posteriors"] * 3.7
    df = build_report(**inputs).to_pandas()
    sums = df[["p_clean", "p_mislabeled_hq", "p_mislabeled_lq"]].to_numpy().sum(axis=1, dtype=np.float32)
    np.testing.assert_allclose(sums, 1.0, atol=1e-6)


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("probs", np.full((20, 3), 1 / 3), ValueError),
        ("posteriors", np.full((20, 2), 0.5), ValueError),
        ("posteriors", -np.ones((20, 3)), ValueError),
        ("loss", np.ones(19), ValueError),
        ("uncertainty", np.full(20, np.nan), ValueError),
        ("categories", np.full(20, 3), ValueError),
        ("given_labels", np.full(20, 0.5), ValueError),
        ("paths", ["x"] * 19, ValueError),
        ("sample_ids", ["same"] * 20, DataError),
    ],
)
def test_build_report_validates_inputs(field: str, value: Any, error: type[Exception]) -> None:
    inputs = make_inputs(20)
    inputs[field] = value
    with pytest.raises(error):
        build_report(**inputs)


def test_build_report_handles_no_rows() -> None:
    inputs = make_inputs(0)
    inputs["probs"] = np.zeros((0, len(CLASSES)))
    inputs["posteriors"] = np.zeros((0, 3))
    table = build_report(**inputs)
    assert table.num_rows == 0
    assert table.schema.equals(REPORT_SCHEMA)


# --------------------------------------------------------------------------------------------------- formats


@pytest.mark.parametrize(
    ("out", "fmt", "expected"),
    [
        ("r.parquet", None, "parquet"),
        ("r.PQ", None, "parquet"),
        ("dir/r.csv", None, "csv"),
        ("r.jsonl", None, "jsonl"),
        ("r.ndjson", None, "jsonl"),
        ("r.json-lines", None, "jsonl"),
        ("-", None, "csv"),
        ("-", "jsonl", "jsonl"),
        ("r.csv", "csv", "csv"),
        ("report", "CSV", "csv"),
        ("report.txt", "jsonl", "jsonl"),
        (Path("r.parquet"), None, "parquet"),
    ],
)
def test_infer_format(out: str, fmt: str | None, expected: str) -> None:
    assert infer_format(out, fmt) == expected


@pytest.mark.parametrize(
    ("out", "fmt", "message"),
    [
        ("r.xlsx", None, "suffix"),
        ("report", None, "suffix"),
        ("r.csv", "feather", "unknown report format"),
        ("-", "parquet", "parquet cannot stream to stdout; use --format csv or jsonl"),
        # Readers go by the suffix, so a file named for another format could not be read back.
        ("r.csv", "parquet", r"--format parquet contradicts the suffix of 'r.csv', a csv file's"),
        ("r.PARQUET", "jsonl", "--format jsonl contradicts"),
    ],
)
def test_infer_format_errors(out: str, fmt: str | None, message: str) -> None:
    with pytest.raises(QmixError, match=message):
        infer_format(out, fmt)


# --------------------------------------------------------------------------------------------------- writing


def write_batches(table: pa.Table, out: str | Path, *, sizes: tuple[int, ...] = (7, 30), **kwargs: Any) -> None:
    """Write ``table`` in batches cut at ``sizes`` (the last batch takes the rest)."""
    with open_report_writer(out, **kwargs) as writer:
        start = 0
        for size in (*sizes, table.num_rows):
            writer.write(table.slice(start, size))
            start += size
        assert writer.rows_written == table.num_rows


def assert_same_rows(actual: pd.DataFrame, expected: pd.DataFrame) -> None:
    """Equal values whatever dtypes the reader picked (float32 compared exactly, missing as missing)."""
    assert list(actual.columns) == list(expected.columns)
    for column in STRING_COLUMNS:
        got = [None if pd.isna(v) else v for v in actual[column]]
        want = [None if pd.isna(v) else v for v in expected[column]]
        assert got == want, column
    for column in FLOAT_COLUMNS:
        np.testing.assert_array_equal(actual[column].to_numpy(np.float32), expected[column].to_numpy(), column)
    assert actual["is_label_issue"].astype(bool).tolist() == expected["is_label_issue"].tolist()
    assert actual["rank"].astype(int).tolist() == expected["rank"].tolist()


PANDAS_READERS = {
    "parquet": pd.read_parquet,
    "csv": pd.read_csv,
    "jsonl": lambda path: pd.read_json(path, lines=True),
}


@pytest.mark.parametrize(("fmt", "suffix"), [("parquet", ".parquet"), ("csv", ".csv"), ("jsonl", ".jsonl")])
def test_batches_round_trip_through_pandas(report: pa.Table, tmp_path: Path, fmt: str, suffix: str) -> None:
    out = tmp_path / f"report{suffix}"
    write_batches(report, out, metadata=metadata())
    expected = report.to_pandas()
    assert expected["suggested_label"].isna().any()  # the fixture has nulls to preserve

    assert_same_rows(PANDAS_READERS[fmt](out), expected)
    pd.testing.assert_frame_equal(read_report(out), expected)
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # no temporary files left


def test_parquet_gets_one_row_group_per_write_and_metadata(report: pa.Table, tmp_path: Path) -> None:
    out = tmp_path / "report.parquet"
    write_batches(report, out, sizes=(10, 20), metadata=metadata())
    parquet = pq.ParquetFile(out)
    assert parquet.num_row_groups == 3
    assert parquet.schema_arrow.equals(REPORT_SCHEMA, check_metadata=False)

    meta = read_report_metadata(out)
    assert meta["version"] == qmix_cli.__version__
    assert json.loads(meta["class_names"]) == list(CLASSES)
    assert meta["method"] == "qmix"
    assert meta["model"] == "resnet18"
    assert meta["run_dir"] == "runs/a"
    assert meta["created_at"].endswith("Z")
    assert pd.Timestamp(meta["created_at"]).tzinfo is not None
    assert read_report(out).attrs["qmix"] == meta


def test_report_metadata_adds_extra_entries() -> None:
    meta = report_metadata(method="ce", model="m", class_names=["a"], run_dir=None, extra={"tta": 2, "note": "x"})
    assert meta[b"qmix.tta"] == b"2"
    assert meta[b"qmix.note"] == b"x"
    assert b"qmix.run_dir" not in meta


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_stdout_stream_round_trips(report: pa.Table, fmt: str) -> None:
    stream = io.StringIO()
    write_batches(report, "-", fmt=fmt, stream=stream)
    text = stream.getvalue()
    assert text.count("\n") == report.num_rows + (1 if fmt == "csv" else 0)
    reader = pd.read_csv if fmt == "csv" else lambda buf: pd.read_json(buf, lines=True)
    assert_same_rows(reader(io.StringIO(text)), report.to_pandas())


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".jsonl"])
def test_awkward_strings_round_trip(tmp_path: Path, suffix: str) -> None:
    inputs = make_inputs(4)
    inputs["sample_ids"] = ['a,b "quoted"', "ñandú/é.png", "back\\slash", "line\nbreak"]
    inputs["class_names"] = ["chat, gris", 'say "hi"', "日本", "tab\there"]
    table = build_report(**inputs)
    out = tmp_path / f"report{suffix}"
    write_batches(table, out, sizes=(1,))
    pd.testing.assert_frame_equal(read_report(out), table.to_pandas())


def test_default_stdout_is_utf8_whatever_the_locale(tmp_path: Path) -> None:
    script = tmp_path / "child.py"
    script.write_text(
        "import sys, pyarrow as pa\n"
        "from qmix_cli.reporting.report import open_report_writer\n"
        "table = pa.ipc.open_file(sys.argv[1]).read_all()\n"
        "print('before')\n"
        "with open_report_writer('-', fmt='jsonl') as writer:\n"
        "    writer.write(table)\n"
    )
    inputs = make_inputs(3)
    inputs["sample_ids"] = ["é", "ü", "日"]
    table = build_report(**inputs)
    arrow_file = tmp_path / "rows.arrow"
    with pa.ipc.new_file(arrow_file, table.schema) as sink:
        sink.write_table(table)
    env = {**child_env(), "PYTHONIOENCODING": "ascii"}
    done = subprocess.run(
        [sys.executable, str(script), str(arrow_file)], capture_output=True, env=env, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.decode("utf-8").splitlines()
    assert lines[0] == "before"
    assert [json.loads(line)["sample_id"] for line in lines[1:]] == ["é", "ü", "日"]


def test_jsonl_uses_json_literals(report: pa.Table) -> None:
    stream = io.StringIO()
    with open_report_writer("-", fmt="jsonl", stream=stream) as writer:
        writer.write(report)
    rows = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert list(rows[0]) == REPORT_SCHEMA.names
    lq = [row for row in rows if row["category"] == "mislabeled_lq"]
    assert lq
    assert all(row["suggested_label"] is None for row in lq)
    assert {type(row["is_label_issue"]) for row in rows} == {bool}
    assert {type(row["rank"]) for row in rows} == {int}


def test_empty_outputs_are_valid(tmp_path: Path) -> None:
    for name in ("empty.parquet", "empty.csv"):
        with open_report_writer(tmp_path / name):
            pass
        frame = read_report(tmp_path / name)
        assert list(frame.columns) == REPORT_SCHEMA.names
        assert frame.empty
    stream = io.StringIO()
    with open_report_writer("-", stream=stream):
        pass
    assert stream.getvalue() == ",".join(f'"{name}"' for name in REPORT_SCHEMA.names) + "\n"


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".jsonl"])
def test_failure_inside_the_writer_leaves_nothing(report: pa.Table, tmp_path: Path, suffix: str) -> None:
    out = tmp_path / f"report{suffix}"
    with pytest.raises(RuntimeError, match="boom"), open_report_writer(out, metadata=metadata()) as writer:
        writer.write(report)
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_failure_keeps_the_previous_report(report: pa.Table, tmp_path: Path) -> None:
    out = tmp_path / "report.csv"
    out.write_text("previous\n")
    with pytest.raises(KeyboardInterrupt), open_report_writer(out) as writer:
        writer.write(report)
        raise KeyboardInterrupt
    assert out.read_text() == "previous\n"
    assert list(tmp_path.iterdir()) == [out]


def child_env() -> dict[str, str]:
    """Environment for a child Python that imports qmix_cli from this checkout."""
    repo_root = str(Path(qmix_cli.__file__).resolve().parents[1])
    path = os.pathsep.join(filter(None, [repo_root, os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path}


PIPE_CHILD = textwrap.dedent(
    """
    import sys
    import numpy as np
    from qmix_cli.reporting.report import build_report, open_report_writer

    n = 200_000
    rng = np.random.default_rng(0)
    table = build_report(
        sample_ids=[f"img{i:07d}" for i in range(n)],
        paths=[f"images/img{i:07d}.png" for i in range(n)],
        given_labels=rng.integers(0, 2, n),
        probs=rng.dirichlet([1, 1], n),
        loss=rng.random(n),
        uncertainty=rng.random(n),
        posteriors=rng.dirichlet([1, 1, 1], n),
        categories=rng.integers(0, 3, n),
        class_names=["a", "b"],
    )
    with open_report_writer("-", fmt=sys.argv[1]) as writer:
        for start in range(0, n, 10_000):
            writer.write(table.slice(start, 10_000))
            if writer.pipe_closed:
                break
    print(f"pipe_closed={writer.pipe_closed} rows={writer.rows_written}", file=sys.stderr)
    print("later output, as a CLI summary would be")  # must go to the null device, not raise
    """
)


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_closed_pipe_ends_cleanly(tmp_path: Path, fmt: str) -> None:
    script = tmp_path / "child.py"
    script.write_text(PIPE_CHILD)
    env = child_env()
    # `exit ${PIPESTATUS[0]}` reports the writer's exit status, not head's.
    command = f'"{sys.executable}" "{script}" {fmt} | head -n 3; exit ${{PIPESTATUS[0]}}'
    done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, env=env, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.splitlines()) == 3
    assert "Traceback" not in done.stderr
    assert "BrokenPipeError" not in done.stderr
    assert "Exception ignored" not in done.stderr
    assert "pipe_closed=True" in done.stderr
    rows = int(done.stderr.split("rows=")[1].split()[0])
    assert rows < 200_000  # it stopped early instead of formatting everything for nobody


class _ShortPipe:
    """stdout's binary buffer as CPython's `BufferedWriter` behaves when the reader exits during a large write:
    the write returns the bytes the pipe took, without an error; only the next write raises."""

    def __init__(self, capacity: int) -> None:
        self.capacity, self.taken = capacity, 0

    def write(self, data: bytes) -> int:
        if self.taken >= self.capacity:
            raise BrokenPipeError(32, "Broken pipe")
        n = min(len(data), self.capacity - self.taken)
        self.taken += n
        return n

    def flush(self) -> None:
        pass

    def fileno(self) -> int:
        raise io.UnsupportedOperation("fileno")


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_a_pipe_closed_during_the_only_batch_is_noticed(monkeypatch, fmt: str) -> None:
    # A report under one batch is one write: the short count must not pass for success.
    pipe = _ShortPipe(capacity=65_536)
    stdout = type("Stdout", (), {"buffer": pipe, "flush": lambda self: None})()
    monkeypatch.setattr(sys, "stdout", stdout)
    table = build_report(**make_inputs(2_000))
    with open_report_writer("-", fmt=fmt) as writer:
        writer.write(table)
    assert pipe.taken == 65_536
    assert writer.pipe_closed


# --------------------------------------------------------------------------------------------------- reading


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".jsonl"])
def test_read_report_names_missing_columns(report: pa.Table, tmp_path: Path, suffix: str) -> None:
    frame = report.drop_columns(["rank", "p_clean"]).to_pandas()
    out = tmp_path / f"partial{suffix}"
    if suffix == ".parquet":
        frame.to_parquet(out)
    elif suffix == ".csv":
        frame.to_csv(out, index=False)
    else:
        frame.to_json(out, orient="records", lines=True)
    with pytest.raises(QmixError, match=r"missing column\(s\) p_clean, rank"):
        read_report(out)


def test_read_report_names_columns_left_empty(report: pa.Table, tmp_path: Path) -> None:
    # A CSV report edited in a spreadsheet: a score deleted from a cell.
    frame = report.to_pandas()
    frame.loc[3, "p_clean"] = None
    frame.to_csv(tmp_path / "edited.csv", index=False)
    with pytest.raises(QmixError, match=r"empty values in column\(s\) p_clean"):
        read_report(tmp_path / "edited.csv")


def test_read_report_keeps_string_ids_and_extra_columns(tmp_path: Path) -> None:
    inputs = make_inputs(5)
    inputs["sample_ids"] = ["001", "002", "NA", "1e3", "010"]
    frame = build_report(**inputs).to_pandas().assign(note="x")
    out = tmp_path / "edited.csv"
    frame.to_csv(out, index=False)  # as re-saved by another tool: unquoted strings
    read = read_report(out)
    assert read["sample_id"].tolist() == sorted(["001", "002", "NA", "1e3", "010"])
    assert read["note"].tolist() == ["x"] * 5
    assert read["rank"].dtype == np.int32


def test_read_report_errors(tmp_path: Path) -> None:
    with pytest.raises(QmixError, match="not found"):
        read_report(tmp_path / "nope.parquet")
    bad = tmp_path / "bad.parquet"
    bad.write_text("not parquet")
    with pytest.raises(QmixError, match="cannot read report"):
        read_report(bad)
    with pytest.raises(QmixError, match="not found"):
        read_report(tmp_path / "report.txt")
    workbook = tmp_path / "r.xlsx"
    workbook.write_bytes(b"PK\x03\x04" + os.urandom(2048))  # a zip: no report in any of our formats
    with pytest.raises(QmixError, match=r"cannot read report .*r\.xlsx \(read as csv: its suffix does not say\)"):
        read_report(workbook)


def test_a_csv_report_with_line_breaks_in_its_ids_reads_back_whatever_its_size(tmp_path: Path) -> None:
    """Ids and labels may hold a line break (a scanner's two-line name), quoted in the CSV. pyarrow splits a CSV over
    1 MiB into blocks at raw line breaks unless told that values may hold them: past that size an id came back cut
    (``4-1247"``), and `apply` refused the report as of other images."""
    inputs = make_inputs(12_000)
    inputs["sample_ids"] = [sid.replace("/", "\n") for sid in inputs["sample_ids"]]
    table = build_report(**inputs)
    write_report(table, tmp_path / "r.csv")
    assert (tmp_path / "r.csv").stat().st_size > 2**20  # more than one of pyarrow's blocks
    back = read_report(tmp_path / "r.csv")
    assert back["sample_id"].tolist() == table.column("sample_id").to_pylist()
    assert holds_images(tmp_path / "r.csv", inputs["sample_ids"])  # what a rerun reads to replace it


@pytest.mark.parametrize("decimal", [".", ","])
def test_a_csv_report_saved_by_a_spreadsheet_with_semicolons_reads_as_written(tmp_path: Path, report, decimal) -> None:
    """The README says to overrule a verdict in a CSV copy of the report; a spreadsheet where the comma is the decimal
    mark saves it with `;` and decimal commas. It was "not a qmix report: missing column(s)" (all fifteen)."""
    write_report(report, tmp_path / "r.csv")
    edited = pd.read_csv(tmp_path / "r.csv", dtype=str, keep_default_na=False)
    floats = [f.name for f in REPORT_SCHEMA if pa.types.is_floating(f.type)]
    edited[floats] = edited[floats].apply(lambda column: column.str.replace(".", decimal, regex=False))
    edited.to_csv(tmp_path / "semicolon.csv", sep=";", index=False)
    back, original = read_report(tmp_path / "semicolon.csv"), read_report(tmp_path / "r.csv")
    pd.testing.assert_frame_equal(back, original)
    assert back["p_clean"].between(0, 1).all() and back["p_clean"].nunique() > 1  # numbers, not text or NaN


@pytest.mark.parametrize("fmt", ["parquet", "csv", "jsonl"])
def test_holds_images_is_true_of_a_report_of_exactly_those_images(tmp_path: Path, fmt: str) -> None:
    inputs = make_inputs(50)
    inputs["sample_ids"] = [f"{i:04d}" for i in range(50)]  # ids that read as numbers: still text ("0042", not 42)
    path = tmp_path / f"r.{fmt}"
    write_report(build_report(**inputs), path)
    ids = inputs["sample_ids"]
    assert holds_images(path, ids[::-1])  # in any order
    assert not holds_images(path, ids[:-1]) and not holds_images(path, [*ids, "0050"])
    assert not holds_images(tmp_path / "missing.csv", ids)


def test_a_report_from_a_pipe_is_said_to_be_one(tmp_path: Path) -> None:
    """``qmix evaluate <(cat r.csv)`` said the report was not found."""
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(QmixError, match="is a pipe or a device, not a file; save it to a file first"):
        read_report(tmp_path / "fifo")


def test_read_report_refuses_stdin_with_a_reason(report: pa.Table, tmp_path: Path, monkeypatch) -> None:
    with pytest.raises(QmixError, match="stdin is not supported"):
        read_report("-")
    # A Path is always a file: Path("./-") prints as "-", and is the file called "-".
    monkeypatch.chdir(tmp_path)
    pq.write_table(report, tmp_path / "-")
    assert len(read_report(Path("./-"))) == report.num_rows


@pytest.mark.parametrize("fmt", ["parquet", "csv", "jsonl"])
def test_a_report_under_a_name_that_does_not_say_its_format_is_read_back(
    report: pa.Table, tmp_path: Path, fmt: str
) -> None:
    """``qmix audit --out findings.txt --format csv`` (or a download saved without its suffix): what the readers of
    reports (``evaluate``, ``show``, ``apply``) take back, by its first bytes, as the same report."""
    named = tmp_path / f"r.{'pq' if fmt == 'parquet' else fmt}"
    write_batches(report, named, metadata=metadata())
    expected = read_report(named)
    for name in ("findings.txt", "findings"):
        write_batches(report, tmp_path / name, fmt=fmt, metadata=metadata())
        assert report_format(tmp_path / name) == fmt
        got = read_report(tmp_path / name)
        pd.testing.assert_frame_equal(got, expected)
        assert got.attrs == expected.attrs  # the qmix.* metadata of a Parquet report; none for text
        assert read_report_metadata(tmp_path / name) == read_report_metadata(named)
    if fmt == "parquet":  # renamed as text: still read as what it is, not refused as text that is not UTF-8
        (tmp_path / "findings").rename(tmp_path / "renamed.csv")
        pd.testing.assert_frame_equal(read_report(tmp_path / "renamed.csv"), expected)


def test_a_table_audit_wrote_is_told_from_other_files_by_its_content(tmp_path, report):
    """What lets a rerun of ``qmix audit`` replace its earlier report but not a manifest given as ``--out``."""
    from qmix_cli.reporting.groups import GROUP_SCHEMA

    for name, fmt in (("r.parquet", None), ("r.csv", None), ("r.jsonl", None), ("r.txt", "csv")):
        write_batches(report, tmp_path / name, fmt=fmt, metadata=metadata())
        assert written_by_audit(tmp_path / name), name  # by content: a report under any name
    (tmp_path / "excel.csv").write_bytes(b"\xef\xbb\xbf" + (tmp_path / "r.csv").read_bytes().replace(b"\n", b"\r\n"))
    groups = pd.DataFrame({name: ["x"] for name in GROUP_SCHEMA.names})
    groups.to_csv(tmp_path / "groups.csv", index=False)
    for name in ("excel.csv", "groups.csv"):
        assert written_by_audit(tmp_path / name), name
    frame = report.to_pandas()
    frame.assign(reviewed="yes").to_csv(tmp_path / "edited.csv", index=False)  # the user's work on a report
    frame[["sample_id", "category"]].to_csv(tmp_path / "checked.csv", index=False)  # a truth cut from one
    frame.to_parquet(tmp_path / "copied.parquet")  # the columns, but no qmix metadata
    frame.head(0).assign(path=[]).to_parquet(tmp_path / "manifest.parquet")
    (tmp_path / "mac.csv").write_bytes(b"sample_id,category\rx,clean\r")  # CR-only lines: csv.Error
    (tmp_path / "nul.csv").write_bytes(b"sample_id,\x00category\n")
    (tmp_path / "deep.jsonl").write_text("{" + '"a":[' * 100_000 + "\n")
    (tmp_path / "blob.bin").write_bytes(os.urandom(4096))
    names = ("edited.csv", "checked.csv", "copied.parquet", "manifest.parquet", "mac.csv", "nul.csv", "deep.jsonl")
    for name in (*names, "blob.bin"):
        assert not written_by_audit(tmp_path / name), name
