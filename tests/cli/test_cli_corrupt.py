"""``qmix corrupt`` through the Typer app: success output, one-line errors, exit codes, the source untouched."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import qmix_cli
from qmix_cli.cli.app import app
from qmix_cli.data.manifest import create_dataset
from qmix_cli.noise.protocol import CorruptSpec, plan_corruption
from tests.cli.helpers import assert_one_line_error as _assert_one_line_error
from tests.cli.helpers import stderr_of as _stderr


@pytest.fixture
def source(make_image_folder):
    return make_image_folder("src", classes=("a", "b", "c"), per_class=4, size=24)


def test_version(runner):
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout.strip() == f"qmix {qmix_cli.__version__}"


def test_corrupt_digits(runner, tmp_path, digits_dir, hash_tree):
    before = hash_tree(digits_dir)
    out = tmp_path / "D"
    args = ["corrupt", "digits", "--out", str(out), "--label-rate", "0.2", "--quality-rate", "0.15", "--seed", "1"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    info = json.loads((out / "noise.json").read_text())
    manifest = pd.read_parquet(out / "manifest.parquet")
    assert len(manifest) == info["num_images"] == 1797
    counts = info["counts"]
    assert counts["mislabeled_lq"] == 270
    said = " ".join(_stderr(result).split())
    assert f"wrote 1,797 images to {out}: {counts['clean']:,} clean, {counts['mislabeled_hq']} mislabeled" in said
    # The CLI has the API's defaults: the plan is exactly what plan_corruption gives for these options.
    ds = create_dataset("digits", check_images=False)
    plan = plan_corruption(ds.labels, classes=ds.classes, spec=CorruptSpec(label_rate=0.2, quality_rate=0.15, seed=1))
    pd.testing.assert_frame_equal(manifest.drop(columns=["sample_id", "path", "source_id"]), plan)
    assert manifest["source_id"].tolist() == ds.sample_ids
    assert (out / "images").is_dir()
    assert hash_tree(digits_dir) == before


def test_corrupt_small_folder_with_options(runner, tmp_path, source, hash_tree):
    before = hash_tree(source)
    out = tmp_path / "out"
    args = ["corrupt", str(source), "-o", str(out), "--preset", "paper-35", "--degradations", "blur,dark"]
    args += ["--severity", "5", "--lq-labels", "keep", "--seed", "4", "--workers", "2"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    info = json.loads((out / "noise.json").read_text())
    assert info["options"]["quality_rate"] == 0.35
    assert info["options"]["severity"] == "5"
    assert info["options"]["lq_labels"] == "keep"
    m = pd.read_parquet(out / "manifest.parquet")
    lq = m[m["is_low_quality"]]
    assert len(lq) == round(0.35 * 12)
    assert set(lq["degradation"]) <= {"blur", "dark"} and (lq["severity"] == 5).all()
    assert (lq["label"] == lq["true_label"]).all()
    assert hash_tree(source) == before


def test_class_names_with_commas_are_mapped_from_a_file(runner, tmp_path, make_image_folder):
    names = ("tench, Tinca tinca", "goldfish, Carassius auratus", "great white shark")
    source = make_image_folder("fish", classes=names, per_class=10, size=8)
    (tmp_path / "map.csv").write_text('"tench, Tinca tinca","goldfish, Carassius auratus"\n')
    out = tmp_path / "out"
    args = ["corrupt", str(source), "-o", str(out), "--label-noise", "asymmetric", "--label-rate", "1"]
    result = runner.invoke(app, [*args, "--quality-rate", "0", "--class-map", f"@{tmp_path / 'map.csv'}"])
    assert result.exit_code == 0, result.output
    m = pd.read_parquet(out / "manifest.parquet")
    moved = m[m["label"] != m["true_label"]]
    assert set(zip(moved["true_label"], moved["label"], strict=True)) == {(names[0], names[1])}
    assert len(moved) == 10  # every tench, at rate 1
    info = json.loads((out / "noise.json").read_text())
    assert info["class_map"] == {names[0]: names[1]}  # the map as read: the file may change or go


@pytest.mark.parametrize(
    ("extra", "fragments"),
    [
        (["--label-rate", "1.5"], ["label-rate must be between 0 and 1", "1.5"]),
        (["--quality-rate", "-0.5"], ["quality-rate must be between 0 and 1"]),
        (["--degradations", "blur,sparkle"], ["unknown degradation 'sparkle'", "valid:"]),
        (["--severity", "9"], ["severity must be within 1..5"]),
        (["--severity", "high"], ["severity must be 1..5"]),
        (["--preset", "paper-99"], ["unknown preset 'paper-99'"]),
        (["--lq-labels", "maybe"], ["lq-labels must be one of"]),
        (["--label-noise", "asymmetric"], ["class map"]),
        (["--class-map", "a=b"], ["--class-map applies to --label-noise asymmetric only"]),
        (["--label-noise", "matrix:m.csv", "--label-rate", "0.3"], ["--label-rate does not apply"]),
        (["--label-noise", "asymmetric", "--class-map", "@none.json"], ["class map file none.json does not exist"]),
        (["--degradations", "blur,dark", "--per-image", "3"], ["per-image 3 composes different degradations"]),
        (["--group-column", "patient"], ["--group-column patient: the dataset has no such column"]),
    ],
    ids=[
        "label-rate",
        "quality-rate",
        "degradation",
        "severity-range",
        "severity-text",
        "preset",
        "lq",
        "asym",
        "map-without-asym",
        "rate-with-matrix",
        "map-file-missing",
        "per-image",
        "group-missing",
    ],
)
def test_bad_options(runner, tmp_path, source, hash_tree, extra, fragments):
    before = hash_tree(source)
    out = tmp_path / "out"
    result = runner.invoke(app, ["corrupt", str(source), "--out", str(out), *extra])
    _assert_one_line_error(result, *fragments)
    assert not out.exists()
    assert hash_tree(source) == before


def test_degradations_that_change_nothing_are_named(runner, tmp_path, make_image_folder):
    # Blur cannot change a blank image: planted as low quality, it looks as good as its source. The truth stays as
    # planned (the plan is drawn before any pixel is read) but noise.json and the command say which images they are.
    src = make_image_folder("blank", classes=("a", "b"), per_class=3, size=24)
    blank = src / "a" / "0.png"
    Image.new("RGB", (24, 24), (128, 128, 128)).save(blank)
    out = tmp_path / "out"
    args = ["corrupt", str(src), "--out", str(out), "--quality-rate", "1", "--degradations", "blur", "--seed", "2"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    info = json.loads((out / "noise.json").read_text())
    m = pd.read_parquet(out / "manifest.parquet").set_index("source_id")
    assert info["unchanged_low_quality"] == [m.at["a/0.png", "sample_id"]]  # named as the output names it
    assert "left 1 low-quality image unchanged" in " ".join(_stderr(result).split())
    assert (m["category"] == "mislabeled_lq").all()
    written = np.asarray(Image.open(out / m.at["a/0.png", "path"]).convert("RGB"))
    assert np.array_equal(written, np.asarray(Image.open(blank)))


def test_the_file_type_note_of_a_mixed_source_is_one_line_saying_part_of_the_truth(runner, tmp_path, write_image):
    # PNGs and JPEGs, and a file named without a suffix (a manifest may name one): the degraded images are all PNG.
    rows = []
    for i in range(12):
        suffix = (".png", ".jpg", "")[i % 3]
        name = ("a", "b")[i % 2] + f"/{i}{suffix}"
        written = write_image(tmp_path / "src" / (name + ("" if suffix else ".png")), seed=i)
        written.rename(tmp_path / "src" / name)
        rows.append({"path": name, "label": name[0]})
    pd.DataFrame(rows).to_csv(tmp_path / "src" / "manifest.csv", index=False)
    args = ["corrupt", str(tmp_path / "src" / "manifest.csv"), "--out", str(tmp_path / "out"), "--quality-rate", "0.5"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, _stderr(result)
    info = json.loads((tmp_path / "out" / "noise.json").read_text())
    assert set(info["file_types"]["high_quality"]) <= {".jpg", ".png", "no suffix"}
    assert info["file_types"]["low_quality"] == {".png": 6}
    # One line, whatever the width: into a file or a pipe rich would otherwise wrap it at 80 columns.
    (note,) = [line for line in _stderr(result).splitlines() if line.startswith("note: the degraded images")]
    assert note.endswith("so the file type gives part of the truth away; --image-format png writes every image alike")


@pytest.mark.parametrize("image_format", [None, "png"])
def test_degraded_images_told_by_their_file_type_are_noted(runner, tmp_path, make_image_folder, image_format):
    src = make_image_folder("jpg", classes=("a", "b"), per_class=4, size=24, suffix=".jpg")
    args = ["corrupt", str(src), "--out", str(tmp_path / "out"), "--quality-rate", "0.5", "--seed", "1"]
    result = runner.invoke(app, args + (["--image-format", image_format] if image_format else []))
    assert result.exit_code == 0, result.output
    said = " ".join(_stderr(result).split())
    if image_format is None:
        assert "the degraded images are .png files and the others .jpg, so the file type gives the truth away" in said
        assert "--image-format png" in said
    else:
        assert "file type" not in said
        assert {p.suffix for p in (tmp_path / "out" / "images").iterdir()} == {".png"}


@pytest.mark.parametrize(
    ("classes", "lq_labels", "noted"),
    [(("a", "b"), "random", True), (("a", "b"), "prior", False), (("a", "b", "c"), "random", False)],
)
def test_degraded_images_labelled_by_their_class_are_noted(runner, tmp_path, make_image_folder, classes, lq_labels,
                                                           noted):  # fmt: skip
    src = make_image_folder("two", classes=classes, per_class=6, size=16)
    args = ["corrupt", str(src), "--out", str(tmp_path / "out"), "--quality-rate", "0.5", "--label-rate", "0"]
    result = runner.invoke(app, [*args, "--lq-labels", lq_labels, "--seed", "1"])
    assert result.exit_code == 0, result.output
    manifest = pd.read_parquet(tmp_path / "out" / "manifest.parquet")
    degraded = manifest[manifest["is_low_quality"]]
    # The note is said exactly when every degraded image's label is fixed by its class (the other one of two).
    flipped = bool((degraded["label"] != degraded["true_label"]).all()) and len(classes) == 2
    assert flipped == noted
    said = " ".join(_stderr(result).split())
    assert ("every degraded image the other class's label" in said) == noted
    assert ("--lq-labels prior" in said) == noted


def test_grouped_noise_keeps_the_group_column_and_records_it(runner, tmp_path, source):
    rows = [(f"{c}/{i}.png", c, f"{c}-{i // 2}") for c in ("a", "b", "c") for i in range(4)]
    manifest = source / "manifest.csv"
    manifest.write_text("path,label,patient\n" + "".join(f"{p},{c},{g}\n" for p, c, g in rows), encoding="utf-8")
    out = tmp_path / "out"
    flags = ["--label-rate", "0.5", "--quality-rate", "0", "--group-column", "patient", "--seed", "2"]
    result = runner.invoke(app, ["corrupt", str(manifest), "--out", str(out), *flags])
    assert result.exit_code == 0, _stderr(result)
    written = pd.read_parquet(out / "manifest.parquet")
    assert (written.groupby("patient")["label"].nunique() == 1).all()
    assert written["is_label_noisy"].any()
    assert json.loads((out / "noise.json").read_text())["options"]["group_column"] == "patient"


def test_missing_source(runner, tmp_path):
    result = runner.invoke(app, ["corrupt", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")])
    _assert_one_line_error(result, "error: dataset not found", "nowhere")
    assert not (tmp_path / "out").exists()


def test_existing_out_without_force(runner, tmp_path, source, hash_tree):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("keep me")
    before = hash_tree(source)
    result = runner.invoke(app, ["corrupt", str(source), "--out", str(out)])
    _assert_one_line_error(result, "already exists", "--force")
    assert (out / "old.txt").read_text() == "keep me"
    result = runner.invoke(app, ["corrupt", str(source), "--out", str(out), "--force"])  # no earlier output
    _assert_one_line_error(result, "holds files but no qmix corrupt output", "--force only replaces those")
    assert (out / "old.txt").read_text() == "keep me"
    (out / "old.txt").unlink()
    assert runner.invoke(app, ["corrupt", str(source), "--out", str(out)]).exit_code == 0  # an empty folder is used
    result = runner.invoke(app, ["corrupt", str(source), "--out", str(out), "--force", "--seed", "3"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "noise.json").read_text())["seed"] == 3
    assert hash_tree(source) == before


def test_an_out_that_cannot_be_made_is_one_line(runner, tmp_path, source):
    (tmp_path / "notes").write_text("x")
    result = runner.invoke(app, ["corrupt", str(source), "--out", str(tmp_path / "notes" / "sub")])
    _assert_one_line_error(result, "notes is a file, not a folder")  # was "unexpected FileExistsError"
    _assert_one_line_error(runner.invoke(app, ["corrupt", str(source), "--out", ""]), "out is an empty path")
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != source.name) == ["notes"]


def test_out_inside_source(runner, source, hash_tree):
    before = hash_tree(source)
    result = runner.invoke(app, ["corrupt", str(source), "--out", str(source / "noisy")])
    _assert_one_line_error(result, "inside the source dataset")
    assert hash_tree(source) == before


def test_truncated_image_in_source(runner, tmp_path, source, write_image, truncate, hash_tree):
    truncate(write_image(source / "b" / "broken.jpg", size=48))
    before = hash_tree(source)
    out = tmp_path / "out"
    result = runner.invoke(app, ["corrupt", str(source), "--out", str(out)])
    _assert_one_line_error(result, "1 bad image:", "b/broken.jpg: unreadable", "--on-bad-image skip")
    assert not out.exists()
    assert hash_tree(source) == before
    # ... and with --on-bad-image skip the rest goes through, the skipped file recorded in noise.json.
    result = runner.invoke(app, ["corrupt", str(source), "--out", str(out), "--on-bad-image", "skip"])
    assert result.exit_code == 0, result.output
    info = json.loads((out / "noise.json").read_text())
    assert info["num_images"] == 12
    assert [s["path"] for s in info["skipped"]] == ["b/broken.jpg"]
    assert "skipped 1 unreadable" in " ".join(_stderr(result).split())
    assert hash_tree(source) == before


def test_csv_with_wrong_columns(runner, tmp_path, source, hash_tree):
    csv = tmp_path / "m.csv"
    pd.DataFrame({"file": ["src/a/0.png"], "class": ["a"]}).to_csv(csv, index=False)
    before = hash_tree(source)
    result = runner.invoke(app, ["corrupt", str(csv), "--out", str(tmp_path / "out")])
    _assert_one_line_error(result, "missing column(s) path, label")
    assert not (tmp_path / "out").exists()
    assert hash_tree(source) == before


def test_unexpected_error_is_one_line_too(runner, tmp_path, source, monkeypatch):
    from qmix_cli.noise import protocol

    def broken(*args, **kwargs):
        raise RuntimeError("kaboom")

    monkeypatch.setattr(protocol, "_process_image", broken)
    result = runner.invoke(app, ["corrupt", str(source), "--out", str(tmp_path / "out")])
    _assert_one_line_error(result, "unexpected RuntimeError: kaboom", "--verbose")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]  # no output, no temp dir


@pytest.mark.parametrize("command", ["corrupt", "train", "demo"])
def test_out_dash_is_no_folder(runner, tmp_path, source, monkeypatch, command):
    """``-`` is stdout to `qmix audit`; a script that gives it to a command writing a folder gets an error, not a
    folder named ``-``."""
    monkeypatch.chdir(tmp_path)
    args = {"corrupt": ["corrupt", str(source)], "train": ["train", str(source)], "demo": ["demo"]}[command]
    result = runner.invoke(app, [*args, "--out", "-"])
    _assert_one_line_error(result, "--out -:", "is a folder, not a stream to stdout; name the folder (./- for")
    assert not (tmp_path / "-").exists()


def test_out_dot_slash_dash_is_the_folder_called_dash(runner, tmp_path, source, monkeypatch):
    """What the error for ``--out -`` suggests works: ``./-`` names a folder called ``-``."""
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["corrupt", str(source), "--out", "./-", "--label-rate", "0.2", "--quality-rate", "0"])
    assert result.exit_code == 0, _stderr(result)
    assert (tmp_path / "-" / "noise.json").is_file()


def test_bad_usage_is_exit_code_2(runner, tmp_path, source):
    result = runner.invoke(app, ["corrupt", str(source), "--out", str(tmp_path / "o"), "--label-rate", "lots"])
    assert result.exit_code == 2
    assert not (tmp_path / "o").exists()
    result = runner.invoke(app, ["corrupt", str(source)])  # --out is required
    assert result.exit_code == 2


def test_verbose_shows_traceback(runner, tmp_path, source, hash_tree):
    before = hash_tree(source)
    result = runner.invoke(app, ["--verbose", "corrupt", str(source), "--out", str(tmp_path / "o"), "--severity", "9"])
    assert result.exit_code == 1
    err = _stderr(result)
    assert "severity must be within 1..5" in err
    assert "Traceback" in err
    assert hash_tree(source) == before


def test_quiet_prints_nothing_on_success(runner, tmp_path, source):
    result = runner.invoke(app, ["--quiet", "corrupt", str(source), "--out", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "o" / "manifest.parquet").is_file()
    assert _stderr(result) == ""


def test_invalid_on_bad_image_is_refused(runner, tmp_path, source, write_image, truncate):
    truncate(write_image(source / "a" / "cut.png", size=48))
    result = runner.invoke(app, ["corrupt", str(source), "--out", str(tmp_path / "o"), "--on-bad-image", "skp"])
    # The folder holds a bad image, so an ignored option would fail too: the message must name the option itself.
    _assert_one_line_error(result, "on-bad-image must be 'error' or 'skip'", "'skp'")
    assert not (tmp_path / "o").exists()


def test_api_and_cli_agree(runner, tmp_path, source):
    from qmix_cli.api import corrupt

    result = runner.invoke(app, ["corrupt", str(source), "--out", str(tmp_path / "cli"), "--seed", "3"])
    assert result.exit_code == 0, result.output
    api = corrupt(source, tmp_path / "api", seed=3)
    assert (tmp_path / "cli" / "manifest.parquet").read_bytes() == (api.out / "manifest.parquet").read_bytes()
    assert np.array_equal(
        pd.read_parquet(tmp_path / "cli" / "manifest.parquet")["is_low_quality"].to_numpy(),
        api.manifest["is_low_quality"].to_numpy(),
    )


def test_the_defaults_help_shows_are_the_ones_corrupt_uses():
    """The options default to None (a preset may fill them), so --help states each default as text: it must be
    `CorruptSpec`'s."""
    import typer.main

    from qmix_cli.data.images import MAX_DEFAULT_WORKERS
    from qmix_cli.noise.protocol import CorruptSpec

    command = typer.main.get_command(app).commands["corrupt"]
    shown = {param.name: param.show_default for param in command.params if isinstance(param.show_default, str)}
    spec = CorruptSpec()
    assert set(shown) == {"label_noise", "label_rate", "quality_rate", "degradations", "severity", "per_image",
                          "lq_labels", "image_format", "seed", "workers"}  # fmt: skip
    for name, text in shown.items():
        expected = f"CPUs, at most {MAX_DEFAULT_WORKERS}" if name == "workers" else str(getattr(spec, name))
        assert text == expected, name
