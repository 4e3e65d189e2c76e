"""The metrics-log reader shared by resume, `qmix show` and the benchmarks."""

from __future__ import annotations

import json

from qmix_cli.io import read_metrics


def test_read_metrics_keeps_epoch_rows_and_drops_what_a_kill_leaves(tmp_path):
    path = tmp_path / "metrics.jsonl"
    rows = [{"epoch": 1, "loss": 2.0}, {"epoch": 2, "loss": 1.5}]
    torn = json.dumps({"epoch": 3, "loss": 1.2})[:-5]  # the last line of a run killed mid-write
    noise = ["", "[1, 2]", json.dumps({"loss": 1.0}), json.dumps({"epoch": "4"}), json.dumps({"epoch": True})]
    path.write_text("\n".join([json.dumps(r) for r in rows] + noise + [torn]), encoding="utf-8")
    assert read_metrics(path) == rows


def test_read_metrics_of_a_missing_file_is_empty(tmp_path):
    assert read_metrics(tmp_path / "nope.jsonl") == []
    assert read_metrics(tmp_path) == []  # a directory is unreadable as text, not an error
