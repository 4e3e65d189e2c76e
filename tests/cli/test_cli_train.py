"""``qmix train`` through the Typer app: config precedence (flag > file > default), ``--set``, and refusals."""

from __future__ import annotations

import io
import json

import pandas as pd
import pytest
import torch
import yaml
from typer.testing import CliRunner

from qmix_cli.cli.app import app
from qmix_cli.config import TrainConfig
from qmix_cli.io import read_metrics
from tests.cli.helpers import assert_one_line_error as _assert_one_line_error
from tests.cli.helpers import stderr_of as _stderr

# TINY_TRAIN of conftest as flags, with the cheapest method: a couple of seconds of CPU.
TINY_FLAGS = ["--model", "test_resnet", "--img-size", "32", "--no-hflip", "--epochs", "2", "--warmup-epochs", "1"]
TINY_FLAGS += ["--batch-size", "64", "--method", "ce"]


def _train(runner: CliRunner, data, out, *extra: str):
    return runner.invoke(app, ["train", str(data), "--out", str(out), *extra])


def test_config_precedence_flag_over_file_over_default(runner, tmp_path, noisy_digits, qmix_cache_dir):
    cfg_file = tmp_path / "cfg.yaml"
    # epochs, warmup: the file says 5 / 3, the flags 2 / 1 (flags win); lr and seed: only in the file (file beats
    # the default); lambda_con: file 0.9, --set 0.3.
    cfg_file.write_text(yaml.safe_dump({"epochs": 5, "warmup_epochs": 3, "lr": 0.05, "seed": 7, "lambda_con": 0.9}))
    out = tmp_path / "run"
    result = _train(
        runner, noisy_digits, out, *TINY_FLAGS, "--config", str(cfg_file), "--set", "lambda_con=0.3",
        "--cache-dir", str(qmix_cache_dir), "--device", "cpu",
    )  # fmt: skip
    assert result.exit_code == 0, (result.output, _stderr(result))
    assert result.stdout == ""
    assert "run saved in" in " ".join(_stderr(result).split())

    saved = yaml.safe_load((out / "config.yaml").read_text())
    defaults = TrainConfig()
    assert set(saved) == set(defaults.to_dict())
    # flags
    assert saved["method"] == "ce"
    assert saved["model"] == "test_resnet"
    assert saved["img_size"] == 32
    assert saved["hflip"] is False
    assert saved["epochs"] == 2
    assert saved["warmup_epochs"] == 1
    assert saved["batch_size"] == 64
    assert saved["device"] == "cpu"
    # file beats default
    assert saved["lr"] == 0.05 != defaults.lr
    assert saved["seed"] == 7 != defaults.seed
    # --set beats the file
    assert saved["lambda_con"] == 0.3
    # untouched options keep their defaults
    assert saved["weight_decay"] == defaults.weight_decay
    assert saved["mixup_alpha"] == defaults.mixup_alpha

    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1, 2]
    assert (out / "model.pt").is_file() and (out / "checkpoints" / "last.pt").is_file()


@pytest.mark.parametrize(
    ("file_values", "flags", "expected"),
    [
        # epochs 1 < warmup 2 in the file alone; --epochs 2 makes the resolved config valid.
        ({"epochs": 1, "warmup_epochs": 2}, ["--epochs", "2"], (2, 2)),
        # No warm-up anywhere: a third of the FINAL epochs (3 -> 1), not of the file's 6 (-> 2).
        ({"epochs": 6}, ["--epochs", "3"], (3, 1)),
    ],
    ids=["flag-fixes-file", "derived-warmup"],
)
def test_config_file_is_resolved_after_the_flags(
    runner, tmp_path, noisy_digits, qmix_cache_dir, file_values, flags, expected
):
    cfg_file = tmp_path / "cfg.yaml"
    cfg_file.write_text(yaml.safe_dump(file_values))
    out = tmp_path / "run"
    base = ["--model", "test_resnet", "--img-size", "32", "--no-hflip", "--method", "ce"]
    result = _train(
        runner, noisy_digits, out, *base, *flags, "--config", str(cfg_file), "--cache-dir", str(qmix_cache_dir)
    )
    assert result.exit_code == 0, _stderr(result)
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert (saved["epochs"], saved["warmup_epochs"]) == expected


@pytest.mark.parametrize(
    ("extra", "fragments"),
    [
        (["--set", "foo=1"], ["unknown config key(s): foo"]),
        (["--set", "warmup_epoch=1"], ["unknown config key(s): warmup_epoch (did you mean warmup_epochs?)"]),
        (["--resume", "--force"], ["--resume continues the run in", "--force starts it over", "not both"]),
        (["--set", "out=elsewhere"], ["unknown config key(s): out"]),
        (["--seed", "-1"], ["seed must be between 0 and 4294967295", "-1"]),
        (["--lr", "inf"], ["lr must be positive", "inf"]),
        (["--set", "lambda_con"], ["--set expects KEY=VALUE"]),
        (["--method", "nope"], ["unknown method 'nope'", "qmix, dividemix, ce"]),
        (["--epochs", "0"], ["epochs must be at least 1"]),
        (["--warmup-epochs", "5"], ["warmup-epochs must be between 0 and epochs"]),
        (["--group-column", "patient"], ["--group-column patient: the dataset has no such column", "true_label"]),
        (["--group-column", "label"], ["the label is not a group"]),
        (["--group-column", "x", "--set", "audit_scores=classifier"], ["group-column groups the audit's probes"]),
        (["--group-column", " "], ["group-column must name a column"]),
        # A flag and --set for one option: which wins cannot be read off the line (TINY_FLAGS gives --epochs 2).
        (["--set", "epochs=10"], ["--set epochs and --epochs both set epochs; give one"]),
        (["--set", "model="], ["--set model= has no value"]),  # `model=$MODEL`, unset: not resnet18, silently
        (["--set", "cache_dir=''"], ["cache-dir is an empty path"]),
        (["--cache-dir", ""], ["cache-dir is an empty path"]),  # not the working directory
        (["--weights", ""], ["weights is an empty path"]),
        (["--val", ""], ["val is an empty path"]),
        (["--set", "rotation=@x"], ["rotation must be a number (got '@x')"]),  # no YAML: read as text, then checked
        (["--set", "proj_dim=[1"], ["proj-dim must be an integer (got '[1')"]),
        (["--lr", "1e39"], ["lr 1e+39 is more than a 32-bit float holds"]),
    ],
    ids=[
        "set-unknown",
        "set-misspelt",
        "resume-and-force",
        "set-out",
        "seed-negative",
        "lr-inf",
        "set-no-value",
        "method",
        "epochs-0",
        "warmup-too-long",
        "group-missing",
        "group-label",
        "group-no-probes",
        "group-blank",
        "set-and-flag",
        "set-empty",
        "set-empty-path",
        "cache-dir-empty",
        "weights-empty",
        "val-empty",
        "set-no-yaml",
        "set-unclosed",
        "lr-past-float32",
    ],
)
def test_bad_options_are_one_line_errors(runner, tmp_path, noisy_digits, extra, fragments):
    out = tmp_path / "run"
    result = _train(runner, noisy_digits, out, *TINY_FLAGS, *extra)
    _assert_one_line_error(result, *fragments)
    assert not out.exists()


def test_unknown_model_is_named(runner, tmp_path, noisy_digits):
    out = tmp_path / "run"
    result = _train(runner, noisy_digits, out, *TINY_FLAGS, "--model", "not_a_model")
    _assert_one_line_error(result, "not_a_model", "unknown timm model")


def test_the_group_column_hint_quotes_the_column_as_a_shell_reads_it(runner, tmp_path, noisy_digits):
    # Pasted as printed, a column name with a space must stay one word.
    frame = pd.read_parquet(noisy_digits / "manifest.parquet")
    frame = frame.assign(path=[str(noisy_digits / p) for p in frame["path"]], **{"patient id": frame.index // 3})
    frame[["sample_id", "path", "label", "patient id"]].to_csv(tmp_path / "m.csv", index=False)
    result = _train(runner, tmp_path / "m.csv", tmp_path / "run", *TINY_FLAGS)
    assert result.exit_code == 0, _stderr(result)
    assert "pass --group-column 'patient id' so that the audit judges" in " ".join(_stderr(result).split())


def test_existing_out_is_refused_and_left_unchanged(runner, tmp_path, noisy_digits, hash_tree):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("an earlier experiment")
    (out / "config.yaml").write_text("epochs: 99\n")
    before = hash_tree(out)
    result = _train(runner, noisy_digits, out, *TINY_FLAGS)
    _assert_one_line_error(result, "already exists", "--resume", "--force")
    assert hash_tree(out) == before
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "notes.txt"]


def test_a_run_whose_log_reader_goes_away_trains_on(tmp_path, noisy_digits):
    # `qmix train ... 2>&1 | head -1`, or a log collector that died: the run must not die with its pipe.
    import shlex
    import subprocess
    import sys

    out = tmp_path / "run"
    qmix = shlex.join([sys.executable, "-m", "qmix_cli", "train", str(noisy_digits), "--out", str(out), *TINY_FLAGS])
    script = f'{qmix} 2>&1 | head -n 1; echo "rc=${{PIPESTATUS[0]}}"'
    proc = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.stdout.splitlines()[-1] == "rc=0", proc.stdout + proc.stderr
    assert (out / "model.pt").is_file() and len(read_metrics(out / "metrics.jsonl")) == 2


def test_a_run_killed_before_its_first_checkpoint_is_pointed_to_force(runner, tmp_path, noisy_digits, monkeypatch):
    def killed(*args, **kwargs):  # Ctrl-C (or a scheduler's SIGTERM) while the first checkpoint was due
        raise KeyboardInterrupt

    out = tmp_path / "run"
    monkeypatch.setattr("qmix_cli.engine.trainer.save_checkpoint", killed)
    assert _train(runner, noisy_digits, out, *TINY_FLAGS).exit_code == 130
    monkeypatch.undo()
    hint = "stopped before its first checkpoint"
    _assert_one_line_error(_train(runner, noisy_digits, out, *TINY_FLAGS), hint, "pass --force to start over")
    resumed = runner.invoke(app, ["train", str(noisy_digits), "--out", str(out), "--resume"])
    _assert_one_line_error(resumed, hint, "pass --force to start over")
    audited = runner.invoke(app, ["audit", str(noisy_digits), "--run", str(out), "--out", str(tmp_path / "r.csv")])
    _assert_one_line_error(audited, hint, "qmix train --force")
    assert _train(runner, noisy_digits, out, *TINY_FLAGS, "--force").exit_code == 0


def test_a_run_interrupted_after_a_checkpoint_says_how_to_go_on(runner, tmp_path, noisy_digits, monkeypatch):
    import shlex

    from qmix_cli.engine import trainer

    saved = trainer.save_checkpoint

    def interrupted_at_the_second(path, state):  # Ctrl-C during the second epoch's checkpoint
        if (path.parent / "last.pt").exists():
            raise KeyboardInterrupt
        saved(path, state)

    out = tmp_path / "my runs" / "run 1"  # spaces: the command printed must still be one to paste
    monkeypatch.setattr(trainer, "save_checkpoint", interrupted_at_the_second)
    result = runner.invoke(app, ["-q", "train", str(noisy_digits), "--out", str(out), *TINY_FLAGS])
    assert result.exit_code == 130
    assert len(_stderr(result).strip().splitlines()) == 1  # one line in a log, however long its paths
    said = " ".join(_stderr(result).split())  # said under -q too: it is what to do next
    assert said.startswith("interrupted; to continue from the last checkpoint: qmix train ")
    command = shlex.split(said.split(": ", 1)[1])
    assert command == ["qmix", "train", str(noisy_digits), "--out", str(out), "--resume"]
    monkeypatch.undo()
    assert runner.invoke(app, command[1:]).exit_code == 0  # the command it gave, as given
    # A restart of that finished run, stopped before its own first checkpoint: the old run's is no way on.
    monkeypatch.setattr(trainer, "save_checkpoint", lambda path, state: (_ for _ in ()).throw(KeyboardInterrupt))
    restart = runner.invoke(app, ["train", str(noisy_digits), "--out", str(out), "--force", *TINY_FLAGS])
    assert restart.exit_code == 130 and "--resume" not in _stderr(restart)


def test_an_out_under_a_file_is_one_line(runner, tmp_path, noisy_digits):
    (tmp_path / "notes").write_text("a file where a folder should be")
    result = _train(runner, noisy_digits, tmp_path / "notes" / "run", *TINY_FLAGS)
    _assert_one_line_error(result, "notes is a file, not a folder")


def test_a_run_directory_in_use_by_another_train_is_refused_untouched(runner, tmp_path, noisy_digits, hash_tree):
    from qmix_cli.io import run_lock

    out = tmp_path / "run"
    out.mkdir()
    (out / "config.yaml").write_text("epochs: 99\n")  # a live run of the same sweep, given the same --out
    before = hash_tree(out)
    with run_lock(out):  # held as the other `qmix train` holds it
        for extra in ((), ("--force",)):
            result = _train(runner, noisy_digits, out, *TINY_FLAGS, *extra)
            _assert_one_line_error(result, f"{out} is in use by another qmix process", "choose another --out")
    assert hash_tree(out) == before and not (tmp_path / "run.previous").exists()


def test_cuda_on_a_cpu_only_machine(runner, tmp_path, noisy_digits, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a CPU-only machine, even on a GPU one
    out = tmp_path / "run"
    result = _train(runner, noisy_digits, out, *TINY_FLAGS, "--device", "cuda")
    _assert_one_line_error(result, "cuda", "CUDA is not available", "--device cpu")


@pytest.mark.parametrize(
    "extra",
    [["--model", "not_a_model"], ["--device", "cuda"]],
    ids=["model", "cuda"],
)
def test_failed_start_does_not_block_the_next_try(runner, tmp_path, noisy_digits, extra, qmix_cache_dir, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # "--device cuda" fails on a GPU machine too
    out = tmp_path / "run"
    result = _train(runner, noisy_digits, out, *TINY_FLAGS, *extra)
    assert result.exit_code == 1
    # The user fixes the option and reruns the same command: it must not say "already exists".
    result = _train(runner, noisy_digits, out, *TINY_FLAGS, "--epochs", "1", "--warmup-epochs", "1")
    assert result.exit_code == 0, _stderr(result)


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        (None, ["config file not found", "cfg.yaml"]),
        ("epochs: [1, 2\n", ["cfg.yaml", "is not valid YAML", "(line 2, column 1)"]),
    ],
    ids=["missing", "invalid-yaml"],
)
def test_unusable_config_file_is_a_one_line_error(runner, tmp_path, noisy_digits, text, fragments):
    cfg_file = tmp_path / "cfg.yaml"
    if text is not None:
        cfg_file.write_text(text)
    out = tmp_path / "run"
    result = _train(runner, noisy_digits, out, *TINY_FLAGS, "--config", str(cfg_file))
    _assert_one_line_error(result, *fragments)
    assert not out.exists()  # refused before the run directory is made


@pytest.mark.parametrize("grouped", [True, False])
def test_groups_of_images_are_described_or_pointed_out(grouped, runner, tmp_path, make_image_folder, qmix_cache_dir):
    root = make_image_folder(classes=("a", "b"), per_class=6, mode="L")
    rows = [(f"{c}/{i}.png", c, f"p{c}{i // 2}") for c in ("a", "b") for i in range(6)]
    manifest = root / "manifest.csv"
    manifest.write_text("path,label,patient_id\n" + "".join(f"{p},{c},{g}\n" for p, c, g in rows), encoding="utf-8")
    extra = ["--group-column", "patient_id"] if grouped else []
    result = _train(runner, manifest, tmp_path / "run", *TINY_FLAGS, "--epochs", "1", "--warmup-epochs", "1", *extra)
    assert result.exit_code == 0, _stderr(result)
    text = " ".join(_stderr(result).split())
    assert ("audit folds by patient_id and label: 6 groups, 6 of one label, the largest of 2 images" in text) == grouped
    assert ("pass --group-column 'patient_id'" in text) != grouped
    saved = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
    assert (saved["fold_keys"] is not None) == grouped
    audited = runner.invoke(app, ["audit", str(manifest), "--run", str(tmp_path / "run"), "--out", "-"])
    assert audited.exit_code == 0, _stderr(audited)
    report = pd.read_csv(io.StringIO(audited.stdout))
    patient_of = {path: patient for path, _, patient in rows}  # a manifest without ids: the path is the id
    expected = report.loc[report["category"] != "clean", "sample_id"].map(patient_of).nunique()
    summary = f"{expected} of 6 groups by patient_id have an image the audit flags"
    assert (summary in " ".join(_stderr(audited).split())) == grouped
    # An audit without a group column points out the one the manifest seems to have.
    assert ("--group-column 'patient_id' --groups-out FILE lists" in " ".join(_stderr(audited).split())) != grouped
    if grouped:  # the run's column, which another manifest of its images lacks, cannot make a table by patient
        other = root / "other.csv"
        other.write_text("path,label\n" + "".join(f"{p},{c}\n" for p, c, _ in rows), encoding="utf-8")
        result = runner.invoke(
            app,
            [
                "audit",
                str(other),
                "--run",
                str(tmp_path / "run"),
                "--out",
                "-",
                "--groups-out",
                str(tmp_path / "g.csv"),
            ],
        )
        _assert_one_line_error(result, "--groups-out: this dataset has no patient_id column, which the run groups by")


def test_files_an_image_folder_holds_besides_images_are_reported(runner, tmp_path, make_image_folder, qmix_cache_dir):
    root = make_image_folder(classes=("a", "b"), per_class=6, mode="L")
    for i in range(2):
        (root / "b" / f"scan{i}.dcm").write_bytes(b"DICM")
    (root / "c").mkdir()  # a class meant, with no image yet
    result = _train(runner, root, tmp_path / "run", *TINY_FLAGS, "--epochs", "1", "--warmup-epochs", "1")
    assert result.exit_code == 0, _stderr(result)
    text = " ".join(_stderr(result).split())
    assert "ignored 2 files qmix does not read as images (.dcm 2)" in text
    assert "note: class folders with no image, so no class: c" in text
    assert "ce: 12 images in 2 classes (the smallest, a, has 6), test_resnet at 32 px on " in text
    assert "after 1 epoch" in text and "after 1 epochs" not in text
    assert "enlarges them" not in text  # 16-px images at 32 px: nothing to say


def test_a_vit_made_for_224_px_trains_and_audits_at_the_size_asked_for(runner, tmp_path, make_image_folder):
    # Every timm net made for one input size (ViT, Swin, MaxViT, ...) failed its first batch at any other --img-size.
    root = make_image_folder(classes=("a", "b"), per_class=8, size=16, mode="L")
    run = tmp_path / "run"
    model = ["--model", "vit_tiny_patch16_224", "--epochs", "1", "--warmup-epochs", "1"]
    result = _train(runner, root, run, *TINY_FLAGS, *model)
    assert result.exit_code == 0, _stderr(result)
    # Images the run never saw are read by its nets, rebuilt for 32 px from the saved weights.
    other = make_image_folder("other", classes=("a", "b"), per_class=3, size=16, mode="L")
    result = runner.invoke(app, ["audit", str(other), "--run", str(run), "--out", str(tmp_path / "r.csv")])
    assert result.exit_code == 0, _stderr(result)
    report = pd.read_csv(tmp_path / "r.csv")
    assert len(report) == 6 and report["confidence"].between(0, 1).all()
    # A size the net cannot read is refused before any epoch, in one line.
    result = _train(runner, root, tmp_path / "bad", *TINY_FLAGS, *model, "--img-size", "8", "--model", "inception_v3")
    _assert_one_line_error(result, "inception_v3 cannot read 8-px images", "choose another --img-size")
    assert not (tmp_path / "bad" / "checkpoints").exists()


def test_training_far_above_the_images_size_says_so(runner, tmp_path, make_image_folder, qmix_cache_dir):
    root = make_image_folder(classes=("a", "b"), per_class=4, size=16, mode="L")
    result = _train(runner, root, tmp_path / "run", *TINY_FLAGS, "--img-size", "96", "--epochs", "1",
                    "--warmup-epochs", "1")  # fmt: skip
    assert result.exit_code == 0, _stderr(result)
    text = " ".join(_stderr(result).split())
    assert "note: the images are about 16 px a side; --img-size 96 enlarges them (36× the pixels" in text


def test_a_full_disk_mid_run_is_one_line_and_resume_goes_on_from_the_last_checkpoint(
    runner, tmp_path, noisy_digits, qmix_cache_dir, disk_full_at_checkpoint
):
    out = tmp_path / "run"
    disk_full_at_checkpoint(2)  # epoch 1's checkpoint is written, epoch 2's finds the disk full
    result = _train(runner, noisy_digits, out, *TINY_FLAGS)
    checkpoint = out / "checkpoints" / "last.pt"
    _assert_one_line_error(result, f"no space left on the device writing {checkpoint}: free some space")
    assert torch.load(checkpoint, weights_only=True)["epoch"] == 1
    disk_full_at_checkpoint(None)
    result = _train(runner, noisy_digits, out, *TINY_FLAGS, "--resume")
    assert result.exit_code == 0, _stderr(result)
    assert "resuming" in _stderr(result) and "at epoch 2/2" in _stderr(result)
    assert [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2]
