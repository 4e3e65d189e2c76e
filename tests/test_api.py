"""The Python API as a notebook uses it (`qmix_cli.api`): what it returns and what it leaves as it found it."""

from __future__ import annotations

import io
import json
import warnings

import pandas as pd
import pytest
import torch
from rich.console import Console

import qmix_cli
from qmix_cli import QmixError, audit, evaluate, show, train
from qmix_cli.config import load_config_file
from tests.conftest import TINY_TRAIN


def test_the_audit_table_saves_and_combines_like_any_dataframe(qmix_run, noisy_digits, tmp_path):
    first = audit(noisy_digits, run=qmix_run.run_dir)
    second = audit(noisy_digits, run=qmix_run.run_dir)
    first.to_parquet(tmp_path / "mine.parquet")  # pandas writes attrs into the file's metadata as JSON
    assert pd.read_parquet(tmp_path / "mine.parquet")["sample_id"].tolist() == first["sample_id"].tolist()
    assert len(pd.concat([first, second])) == 2 * len(first)  # concat compares the inputs' attrs
    assert len(first.merge(second, on="sample_id")) == len(first)
    assert first.attrs["skipped"] == [] and json.dumps(first.attrs["qmix"])


def test_evaluate_takes_the_audit_table_as_apply_does(qmix_run, noisy_digits, tmp_path):
    frame = audit(noisy_digits, run=qmix_run.run_dir, out=tmp_path / "r.parquet")
    assert evaluate(frame, truth=noisy_digits) == evaluate(tmp_path / "r.parquet", truth=noisy_digits)


def test_show_takes_the_audit_table_as_evaluate_does(qmix_run, noisy_digits, tmp_path):
    frame = audit(noisy_digits, run=qmix_run.run_dir, out=tmp_path / "r.parquet")
    from_table = show(frame, out=tmp_path / "table.html").read_text()
    from_file = show(tmp_path / "r.parquet", out=tmp_path / "file.html").read_text()
    assert from_table.count("data:image/") == from_file.count("data:image/") > 0
    assert "Training curves" in from_table  # the run, from the table's metadata
    with pytest.raises(QmixError, match=r"not a qmix report: missing column.s. .*p_clean"):
        show(frame.drop(columns="p_clean"), out=tmp_path / "cut.html")
    with pytest.raises(QmixError, match=r"unknown categories .'maybe'."):
        show(frame.assign(category="maybe"), out=tmp_path / "edited.html")


def test_a_table_given_as_the_dataset_is_one_clear_error(noisy_digits, tmp_path):
    table = pd.read_parquet(noisy_digits / "manifest.parquet")
    with pytest.raises(QmixError, match=r"not a DataFrame; write a table to a \.csv or \.parquet manifest"):
        train(table, tmp_path / "run", epochs=1, **TINY_TRAIN)


def test_training_gives_the_callers_random_stream_back(noisy_digits, tmp_path):
    torch.manual_seed(1234)
    expected = torch.rand(3)
    torch.manual_seed(1234)
    result = train(noisy_digits, tmp_path / "run", method="ce", epochs=1, warmup_epochs=1, **TINY_TRAIN)
    assert torch.equal(torch.rand(3), expected)  # the run seeded its own generators, not the notebook's
    assert "run_dir=" in repr(result) and len(repr(result)) < 600  # a cell ending in train(...) stays short


def test_trainings_notes_on_a_console_name_the_keywords_and_its_epoch_lines_stay(noisy_digits, tmp_path):
    # A longer rerun of a recorded config keeps its warm-up, and says so: in the keywords a notebook passes.
    first = train(noisy_digits, tmp_path / "short", method="ce", epochs=2, quiet=True, **TINY_TRAIN)
    log = io.StringIO()
    config = first.run_dir / "config.yaml"
    train(noisy_digits, tmp_path / "long", config=config, epochs=3, console=Console(file=log, width=400))
    said = log.getvalue()
    assert "note: epochs=3 keeps the warm-up of 1 epoch the config sets" in said
    assert "pass warmup_epochs=N to change it" in said and "--" not in said
    assert "epoch 3/3" in said  # the per-epoch lines are the CLI's, untouched


def test_group_column_hints_on_a_console_read_as_the_keyword_to_pass(noisy_digits, qmix_run, tmp_path):
    # A column name is no word the options take: the hint quotes it, so that it reads group_column="...", not
    # the bare `group_column patient_id` of the CLI's text, which is no Python; a name with a space stays whole.
    frame = pd.read_parquet(noisy_digits / "manifest.parquet")
    frame = frame.assign(path=[str(noisy_digits / p) for p in frame["path"]], **{"patient id": frame.index // 3})
    frame[["sample_id", "path", "label", "patient id"]].to_csv(tmp_path / "m.csv", index=False)
    log = io.StringIO()
    train(
        tmp_path / "m.csv", tmp_path / "run", method="ce", epochs=1, console=Console(file=log, width=400), **TINY_TRAIN
    )
    assert 'pass group_column="patient id" so that the audit judges each image' in log.getvalue()
    frame.rename(columns={"patient id": "subject"})[["sample_id", "path", "label", "subject"]].to_csv(
        tmp_path / "s.csv", index=False
    )
    log = io.StringIO()
    audit(tmp_path / "s.csv", run=qmix_run.run_dir, console=Console(file=log, width=400))
    assert 'group_column="subject" groups_out=FILE lists the audit by subject too' in log.getvalue()


def test_the_package_lists_its_api_and_its_error_for_completion():
    names = dir(qmix_cli)
    assert {"train", "audit", "evaluate", "corrupt", "show", "apply", "QmixError", "TrainConfig"} <= set(names)
    assert issubclass(qmix_cli.errors.DataError, QmixError)
    assert qmix_cli.TrainConfig(epochs=3).epochs == 3  # what train(config=...) takes, from the package itself
    assert set(qmix_cli.__all__) <= set(names)


def _documented_parameters(doc: str) -> list[str]:
    """The names a NumPy-style ``Parameters`` section lists (its unindented lines), in order."""
    section = doc.split("Parameters\n----------\n", 1)[1].split("\nReturns\n-------", 1)[0]
    return [line.lstrip("*") for line in section.splitlines() if line and not line[0].isspace()]


@pytest.mark.parametrize("name", ["corrupt", "train", "audit", "evaluate", "show", "apply"])
def test_every_api_function_documents_each_of_its_parameters_and_what_it_returns(name):
    import inspect

    function = getattr(qmix_cli, name)
    doc = inspect.getdoc(function)
    assert "Parameters\n----------" in doc and "Returns\n-------" in doc
    assert _documented_parameters(doc) == list(inspect.signature(function).parameters)


def test_audit_given_a_console_prints_what_the_cli_prints_of_its_findings(qmix_run, noisy_digits, tmp_path):
    """The README: a console "shows what the CLI prints"; the audit's summary (counts, top issues, the note on rare
    classes) was the CLI's alone, so a notebook never saw it."""
    import io

    from rich.console import Console

    from tests.cli.helpers import stderr_of

    said = io.StringIO()
    frame = audit(noisy_digits, run=qmix_run.run_dir, out=tmp_path / "r.parquet", console=Console(file=said, width=200))
    text = said.getvalue()
    flagged = frame[frame["category"] != "clean"].sort_values("rank")
    squeezed = "".join(text.split())  # the table's title wraps to the table's width
    assert f"auditof{len(frame)}images→{tmp_path / 'r.parquet'}" in squeezed
    assert "top issues" in text and flagged["sample_id"].iloc[0] in text
    for category, count in frame["category"].value_counts().items():
        assert f"{category} {count}" in " ".join(text.replace("│", " ").split())
    quiet = io.StringIO()
    audit(noisy_digits, run=qmix_run.run_dir, console=Console(file=quiet), quiet=True)
    assert quiet.getvalue() == ""

    from typer.testing import CliRunner

    from qmix_cli.cli.app import app

    result = CliRunner().invoke(app, ["audit", str(noisy_digits), "--run", str(qmix_run.run_dir), "--out", "-"])
    cli_said = stderr_of(result)
    assert "top issues" in cli_said and cli_said.count("top issues") == 1  # printed once, by the API


def test_arguments_of_another_type_are_one_clear_error_naming_them(noisy_digits, tmp_path):
    """What a notebook passes by mistake met pathlib's or numpy's TypeError deep inside, naming nothing."""
    from qmix_cli import apply, corrupt
    from qmix_cli.errors import ConfigError

    calls = [
        (lambda: corrupt("digits", 5), r"out must be a path \(str or pathlib.Path\), not int 5"),
        (lambda: train(noisy_digits, 3, epochs=1), "out must be a path"),
        (lambda: audit(noisy_digits, run=1), "run must be a path"),
        (lambda: evaluate([1, 2], truth=noisy_digits), r"report must be a path .* or a DataFrame, not list"),
        (lambda: show(tmp_path / "r.parquet", out=["x"]), "out must be a path"),
        (lambda: apply(noisy_digits, report={"a": 1}, out=tmp_path / "f.csv"), "report must be a path"),
        (lambda: train(noisy_digits, tmp_path / "r", config=7), "config must be a path"),
        (lambda: corrupt("digits", tmp_path / "o", seed=1.5), "seed must be an integer"),
        (lambda: corrupt("digits", tmp_path / "o", quality_rate="lots"), "quality_rate must be a number"),
        (lambda: corrupt("digits", tmp_path / "o", workers=-1), r"^workers must be 0 or more"),
        (lambda: evaluate(pd.DataFrame(), truth="digits"), "built-in dataset without a truth"),
    ]
    for call, message in calls:
        with pytest.raises(QmixError, match=message):
            call()
    assert not any(tmp_path.iterdir())  # nothing made on the way
    assert issubclass(ConfigError, QmixError)


def test_errors_name_the_keywords_a_notebook_passed(noisy_digits, tmp_path):
    """The checks are the CLI's and speak of its options; through the API they name this function's keywords."""
    from qmix_cli import corrupt

    calls = [
        (lambda: audit(noisy_digits, run=tmp_path, sort_by="size"), "^sort_by must be sample_id or rank"),
        (lambda: audit(noisy_digits, run=tmp_path, out="-", groups_out="-"), "^groups_out - and out - would share"),
        (lambda: train(noisy_digits, tmp_path / "r", epochs=3, warmup_epochs=5), "^warmup_epochs must be between"),
        (lambda: train(noisy_digits, tmp_path / "r", warmup_epoch=1), r"warmup_epoch \(did you mean warmup_epochs\?\)"),
        (lambda: corrupt("digits", tmp_path / "o", class_map="1=7"), "^class_map applies to label_noise=.asym"),
        (lambda: train(noisy_digits, tmp_path / "r", resume=True, force=True), "resume=True continues .* not both"),
    ]
    for call, message in calls:
        with pytest.raises(QmixError, match=message) as raised:
            call()
        error = raised.value
        assert "--" not in str(error)
        assert error.cli_message != str(error) or "did you mean" in str(error)  # the CLI's spelling, kept for it
    assert not any(tmp_path.iterdir())


def test_a_hint_with_a_value_reads_as_the_keyword_to_pass(qmix_run, noisy_digits, tmp_path):
    report = audit(noisy_digits, run=qmix_run.run_dir)
    with pytest.raises(QmixError, match=r'pass on_unchecked="skip"\)') as raised:
        evaluate(report, truth=pd.read_parquet(noisy_digits / "manifest.parquet").iloc[:100])
    assert "pass --on-unchecked skip)" in raised.value.cli_message
    with pytest.raises(QmixError, match=r'use fmt="csv"'):
        audit(noisy_digits, run=qmix_run.run_dir, out="-", fmt="parquet")


def test_a_keyword_the_function_does_not_take_says_which_was_meant(noisy_digits):
    from qmix_cli import apply

    calls = [
        (lambda: audit(noisy_digits, run="r", sort="rank"), r"audit\(\) .* 'sort' \(did you mean sort_by\?\)"),
        (lambda: audit(noisy_digits, run="r", format="csv"), r"'format' \(did you mean fmt\?\)"),
        (lambda: apply(noisy_digits, report="r", out="o.csv", on_mising="drop"), r"did you mean on_missing\?"),
        (lambda: show("r", out="p.html", sort="rank"), r"unexpected keyword argument 'sort'$"),  # not "report"
    ]
    for call, message in calls:
        with pytest.raises(TypeError, match=message):
            call()


def test_a_missing_path_is_named_and_optional_ones_may_be_none(noisy_digits, tmp_path):
    from qmix_cli import apply, corrupt

    with pytest.raises(QmixError, match=r"^out must be a path .* not NoneType None"):
        corrupt("digits", None)
    with pytest.raises(QmixError, match=r"^out must be a path"):
        apply(noisy_digits, report=tmp_path / "r.parquet", out=None)
    with pytest.raises(QmixError, match=r"^truth must be a path .* or a DataFrame, not NoneType"):
        evaluate(tmp_path / "r.parquet", truth=None)
    with pytest.raises(QmixError, match=r"^report not found"):  # run and data may be None: the report is looked for
        show(tmp_path / "r.parquet", out=tmp_path / "p.html", run=None, data=None)


def test_a_page_without_its_images_is_a_warning_when_nothing_prints(qmix_run, noisy_digits, tmp_path, monkeypatch):
    """A table that lost its metadata (a merge) names no dataset: the page has placeholders, and a notebook with no
    console hears it as a warning raised at its own line, naming the keyword that fixes it."""
    monkeypatch.chdir(tmp_path)  # the report's relative paths are not found from here
    table = audit(noisy_digits, run=qmix_run.run_dir)
    table.attrs = {}
    said = r"images shown as thumbnails are not found .*: give the dataset .* as data=DATASET$"
    with pytest.warns(UserWarning, match=said) as caught:
        show(table, out=tmp_path / "p.html", run=qmix_run.run_dir)
    assert caught[0].filename == __file__
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # with the dataset named, or quiet: no warning
        show(table, out=tmp_path / "q.html", run=qmix_run.run_dir, data=noisy_digits)
        show(table, out=tmp_path / "r.html", run=qmix_run.run_dir, quiet=True)
    assert "data:image/" in (tmp_path / "q.html").read_text()


def test_a_warning_names_the_callers_line_however_deep_it_was_found():
    from qmix_cli.api import _python_warning

    warn = _python_warning(show)
    library = {"__name__": "qmix_cli.reporting.deep"}  # frames of qmix's own modules, as many as a check takes
    exec("def outer(warn):\n    def inner():\n        warn('pass --data DIR')\n    inner()\n", library)
    with pytest.warns(UserWarning, match="^pass data=DIR$") as caught:
        library["outer"](warn)
    assert caught[0].filename == __file__


def test_python_spellings_of_options_are_taken(noisy_digits, tmp_path, qmix_run):
    """A list of degradations, a dict class map or config, a truth held as a DataFrame: Python's natural forms."""
    from qmix_cli import corrupt

    spec = corrupt(
        "digits", tmp_path / "o", label_noise="asymmetric", class_map={"1": "7", "7": "1"},
        degradations=["blur", "noise"], quality_rate="0.1", seed="2", severity=4,
    ).summary  # fmt: skip
    assert spec["options"]["degradations"] == "blur,noise" and spec["options"]["class_map"] == "1=7,7=1"
    assert spec["options"]["quality_rate"] == 0.1 and spec["seed"] == 2
    report = audit(noisy_digits, run=qmix_run.run_dir)
    truth = pd.read_parquet(noisy_digits / "manifest.parquet")
    assert evaluate(report, truth=truth) == evaluate(report, truth=noisy_digits)
    killed = tmp_path / "run"
    result = train(noisy_digits, killed, config={"method": "ce", "epochs": 1, **TINY_TRAIN}, quiet=True)
    assert result.metrics[-1]["epoch"] == 1
    resolved = load_config_file(killed / "config.yaml")  # every key of the dict taken, not only the epochs
    assert resolved["method"] == "ce" and all(resolved[key] == value for key, value in TINY_TRAIN.items())


def test_skipped_images_are_counted_and_the_first_five_named(noisy_digits, qmix_run, tmp_path):
    manifest = pd.read_parquet(noisy_digits / "manifest.parquet").head(20)
    gone = [str(tmp_path / f"gone{i}.png") for i in range(7)]
    rows = pd.DataFrame(
        {"path": [str(noisy_digits / p) for p in manifest["path"]] + gone, "label": [*manifest["label"], *"0123456"]}
    )
    rows.to_csv(tmp_path / "m.csv", index=False)
    log = io.StringIO()
    report = audit(tmp_path / "m.csv", run=qmix_run.run_dir, on_bad_image="skip", console=Console(file=log, width=500))
    assert len(report) == 20
    (line,) = [line for line in log.getvalue().splitlines() if line.startswith("skipped ")]
    assert line == f"skipped 7 unreadable images: {', '.join(gone[:5])}, and 2 more"


def test_an_empty_path_is_refused_by_its_keyword_not_read_as_the_working_directory(tmp_path, noisy_digits):
    # Path("") is "."; a notebook variable left empty would otherwise read, or write, the working directory.
    from qmix_cli import apply, corrupt

    for call, keyword in [
        (lambda: corrupt("", tmp_path / "o"), "source"),
        (lambda: corrupt("digits", " "), "out"),
        (lambda: train("", tmp_path / "r", **TINY_TRAIN), "data"),
        (lambda: train(noisy_digits, tmp_path / "r", cache_dir="", **TINY_TRAIN), "cache_dir"),
        (lambda: audit(noisy_digits, run=""), "run"),
        (lambda: show(tmp_path / "report.parquet", data=""), "data"),
        (lambda: evaluate(tmp_path / "report.parquet", truth=""), "truth"),
        (lambda: apply("", report=tmp_path / "report.parquet", out=tmp_path / "m.csv"), "data"),
    ]:
        with pytest.raises(QmixError, match=rf"^{keyword} is an empty path"):
            call()
    assert sorted(p.name for p in tmp_path.iterdir()) == []
