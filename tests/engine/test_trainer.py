"""End-to-end training on corrupted digits: separation quality, resume, and failure handling."""

from __future__ import annotations

import io
import itertools
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image
from rich.console import Console
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score

from qmix_cli.api import audit, train
from qmix_cli.config import config_from_dict, load_config_file
from qmix_cli.data.cache import cached_images
from qmix_cli.data.manifest import create_dataset
from qmix_cli.engine import trainer
from qmix_cli.engine.checkpoint import load_checkpoint
from qmix_cli.engine.trainer import size_hint, small_classes_note
from qmix_cli.errors import ConfigError, DataError, QmixError, TrainingError
from qmix_cli.io import read_metrics
from qmix_cli.reporting.score import audit_keys, group_note, load_run, score_dataset
from tests.conftest import TINY_TRAIN
from tests.engine.helpers import assert_same_metrics

pytestmark = pytest.mark.slow


def _interrupt(row: dict) -> None:
    raise KeyboardInterrupt  # as if the process were killed right after this epoch's checkpoint


def _truth(noisy_digits: Path) -> pd.DataFrame:
    return pd.read_parquet(noisy_digits / "manifest.parquet")[["sample_id", "category"]].rename(
        columns={"category": "truth"}
    )


def test_qmix_separates_planted_noise_far_above_chance(qmix_run, noisy_digits):
    final = json.loads((qmix_run.run_dir / "run.json").read_text())["final_summary"]
    # Measured on this setup: auc_clean ≈ 0.99, auc_hq ≈ 0.85. A method that did not separate would sit near 0.5.
    assert final["auc_clean"] > 0.95
    assert final["auc_hq"] > 0.75
    train_rows = [m for m in qmix_run.metrics if m["phase"] == "train"]
    assert train_rows, "the run never left warm-up"
    assert all(r["auc_clean"] > 0.9 for r in train_rows)
    assert all(r["n_clean"] + r["n_mis_h"] + r["n_mis_l"] == 1797 for r in train_rows)


def test_mislabeled_low_quality_is_more_uncertain_than_high_quality(qmix_run, noisy_digits):
    report = audit(noisy_digits, run=qmix_run.run_dir).merge(_truth(noisy_digits), on="sample_id")
    unc = report.groupby("truth")["uncertainty"].mean()
    # Degraded images carry no readable class, so the nets are unsure; mislabeled good images are confidently
    # "wrong". Measured gap ≈ 0.4 on the normalised axis.
    assert unc["mislabeled_lq"] > unc["mislabeled_hq"] + 0.2
    assert unc["mislabeled_lq"] > unc["clean"] + 0.2


def test_run_directory_holds_everything_audit_and_resume_need(qmix_run):
    run = qmix_run.run_dir
    for name in ("config.yaml", "metrics.jsonl", "checkpoints/last.pt", "model.pt", "run.json", "separation.json"):
        assert (run / name).is_file(), name
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == list(range(1, 11))
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert state["epoch"] == 10 and len(state["nets"]) == 2
    meta = json.loads((run / "run.json").read_text())
    assert meta["classes"] == [str(i) for i in range(10)] and meta["channels"] == 1
    readouts = torch.load(run / "model.pt", weights_only=True)["readouts"]
    n = meta["num_samples"]
    assert readouts["probs"].shape == readouts["scored"].shape == (2, len(readouts["keys"]), 10)
    assert 0.95 * n <= len(readouts["keys"]) <= n  # one row per distinct training image
    np.testing.assert_allclose(readouts["probs"].sum(-1).numpy(), 1.0, atol=1e-5)


def test_learning_rate_anneals_from_the_configured_rate_by_the_cosine_schedule(qmix_run):
    cfg = load_config_file(qmix_run.run_dir / "config.yaml")
    assert cfg["schedule"] == "cosine"
    lrs = [json.loads(line)["lr"] for line in (qmix_run.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert lrs[0] == cfg["lr"]
    # Cosine annealing towards 0 over the run, set at the start of each epoch from its index (no warm-up ramp).
    epochs = cfg["epochs"]
    assert lrs == pytest.approx([cfg["lr"] * (1 + math.cos(math.pi * e / epochs)) / 2 for e in range(epochs)])
    assert all(a > b > 0 for a, b in itertools.pairwise(lrs))


@pytest.mark.parametrize(("schedule", "factor"), [("step", 0.1), ("constant", 1.0)])
def test_step_schedule_divides_the_rate_by_ten_halfway_and_constant_keeps_it(
    schedule, factor, noisy_digits, tmp_path, qmix_cache_dir
):
    result = train(noisy_digits, tmp_path / "run", method="ce", epochs=2, schedule=schedule, lr=0.05,
                   cache_dir=str(qmix_cache_dir), **TINY_TRAIN)  # fmt: skip
    assert [m["lr"] for m in result.metrics] == pytest.approx([0.05, 0.05 * factor])


@pytest.mark.parametrize("method", ["qmix", "dividemix"])
def test_killed_run_resumes_to_the_same_result(method, noisy_digits, tmp_path, qmix_cache_dir):
    opts = dict(method=method, epochs=4, warmup_epochs=2, cache_dir=str(qmix_cache_dir), **TINY_TRAIN)
    full = train(noisy_digits, tmp_path / "full", **opts)

    def kill_after_third(row: dict) -> None:
        if row["epoch"] == 3:
            raise KeyboardInterrupt  # as if killed right after epoch 3's checkpoint was written

    with pytest.raises(KeyboardInterrupt):
        train(noisy_digits, tmp_path / "killed", on_epoch_end=kill_after_third, **opts)
    assert not (tmp_path / "killed" / "model.pt").exists()
    resumed = train(noisy_digits, tmp_path / "killed", resume=True, cache_dir=str(qmix_cache_dir))

    assert_same_metrics(resumed.metrics, full.metrics)
    a = torch.load(tmp_path / "full" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "killed" / "model.pt", weights_only=True)
    # The warm-up snapshot (taken at epoch 2) came back from the checkpoint, not from the resumed nets.
    assert len(a["warmup_nets"]) == 2
    for sa, sb in zip(a["nets"] + a["warmup_nets"], b["nets"] + b["warmup_nets"], strict=True):
        for key in sa:
            torch.testing.assert_close(sa[key], sb[key], rtol=1e-4, atol=1e-5)


def _cli_env(cache: Path) -> dict[str, str]:
    """The environment of a ``qmix`` subprocess: this one's, with the test's cache directory."""
    return {**os.environ, "QMIX_CACHE_DIR": str(cache)}


def _cli_train(noisy_digits: Path, run: Path, cache: Path, *, until_epoch: int) -> subprocess.Popen:
    """``qmix train`` (ce, 6 epochs) in a subprocess, returned once its checkpoint has ``until_epoch`` epochs."""
    args = [
        *(sys.executable, "-m", "qmix_cli", "train", str(noisy_digits), "--out", str(run)),
        *("--method", "ce", "--model", "test_resnet", "--img-size", "32", "--no-hflip", "--epochs", "6"),
        *("--cache-dir", str(cache)),
    ]
    proc = subprocess.Popen(
        args, env=_cli_env(cache), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    ckpt = run / "checkpoints" / "last.pt"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if ckpt.is_file() and load_checkpoint(ckpt)["epoch"] >= until_epoch:
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the run finished before it could be stopped; make it longer"
    return proc


def _resume_cli(noisy_digits: Path, run: Path, cache: Path) -> subprocess.CompletedProcess:
    args = [sys.executable, "-m", "qmix_cli", "train", str(noisy_digits), "--out", str(run), "--resume"]
    return subprocess.run([*args, "--cache-dir", str(cache)], env=_cli_env(cache), capture_output=True, text=True)


def test_sigkill_mid_run_then_resume_completes(noisy_digits, tmp_path, qmix_cache_dir):
    run = tmp_path / "run"
    proc = _cli_train(noisy_digits, run, qmix_cache_dir, until_epoch=2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    assert not (run / "model.pt").exists()
    # What a SIGKILL during a checkpoint's save leaves: the partial file beside the last complete one.
    (run / "checkpoints" / ".last.pt.k1ll3d.tmp").write_bytes(b"\0" * 64)
    done = _resume_cli(noisy_digits, run, qmix_cache_dir)
    assert done.returncode == 0, done.stderr
    epochs = [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert epochs == list(range(1, 7))
    assert (run / "model.pt").is_file()
    assert not list(run.rglob("*.tmp"))  # the resumed run cleared it


def test_sigterm_stops_like_ctrl_c_and_leaves_no_temporary_files(noisy_digits, tmp_path, qmix_cache_dir):
    run = tmp_path / "run"
    proc = _cli_train(noisy_digits, run, qmix_cache_dir, until_epoch=1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err  # 128 + SIGTERM, as a shell reports it: a scheduler tells it from Ctrl-C
    assert "interrupted" in err and "Traceback" not in err
    assert not list(run.rglob("*.tmp"))
    done = _resume_cli(noisy_digits, run, qmix_cache_dir)
    assert done.returncode == 0, done.stderr
    assert (run / "model.pt").is_file()


def test_ce_and_dividemix_produce_auditable_runs(noisy_digits, tmp_path, qmix_cache_dir):
    runs, reports = {}, {}
    for method in ("ce", "dividemix"):
        runs[method] = train(noisy_digits, tmp_path / method, method=method, epochs=3, warmup_epochs=2,
                             cache_dir=str(qmix_cache_dir), **TINY_TRAIN)  # fmt: skip
        report = audit(noisy_digits, run=runs[method].run_dir).merge(_truth(noisy_digits), on="sample_id")
        assert len(report) == 1797
        assert np.allclose(report[["p_clean", "p_mislabeled_hq", "p_mislabeled_lq"]].sum(axis=1), 1, atol=1e-5)
        reports[method] = report
    ce_state = torch.load(tmp_path / "ce" / "model.pt", weights_only=True)
    assert len(ce_state["nets"]) == 1
    # Not only well-formed: each run finds the planted noise far above chance (0.5). ce's audit loss ranks the
    # mislabeled images (wrong label or degraded) above the clean ones...
    ce = reports["ce"]
    assert roc_auc_score(ce["truth"] != "clean", ce["loss"]) > 0.9
    # ...and dividemix's own separation (its 1-D loss mixture in the semi-supervised epoch) and the final one
    # tell clean images from the rest.
    train_rows = [m for m in runs["dividemix"].metrics if m["phase"] == "train"]
    assert len(train_rows) == 1 and train_rows[0]["auc_clean"] > 0.9
    final = json.loads((tmp_path / "dividemix" / "run.json").read_text())["final_summary"]
    assert final["auc_clean"] > 0.9
    dm = reports["dividemix"]
    assert roc_auc_score(dm["truth"] == "clean", dm["p_clean"]) > 0.9


def test_warmup_snapshot_is_the_nets_at_the_end_of_warmup(noisy_digits, tmp_path, qmix_cache_dir):
    at_epoch: dict[int, list[dict]] = {}

    def record(row: dict) -> None:
        at_epoch[row["epoch"]] = load_checkpoint(tmp_path / "qmix" / "checkpoints" / "last.pt")["nets"]

    train(noisy_digits, tmp_path / "qmix", method="qmix", epochs=4, warmup_epochs=2, on_epoch_end=record,
          cache_dir=str(qmix_cache_dir), **TINY_TRAIN)  # fmt: skip
    saved = torch.load(tmp_path / "qmix" / "model.pt", weights_only=True)
    assert len(saved["warmup_nets"]) == len(saved["warmup_probes"]) == len(saved["votes"]) == 2
    # Each net's one vote reads its final probe's features and its snapshot probe's side by side.
    for vote, final, warm in zip(saved["votes"], saved["probes"], saved["warmup_probes"], strict=True):
        assert len(vote["mean"]) == len(vote["projection"]) == len(final["mean"]) + len(warm["mean"])
    for snapshot, warm, final in zip(saved["warmup_nets"], at_epoch[2], saved["nets"], strict=True):
        assert all(torch.equal(snapshot[k], warm[k]) for k in warm)
        assert not all(torch.equal(snapshot[k], final[k]) for k in final)  # the semi-supervised epochs trained on
    assert json.loads((tmp_path / "qmix" / "run.json").read_text())["audit_warmup"] is True


@pytest.mark.parametrize("neighbours", [7, 0])
def test_each_net_has_a_neighbour_vote_unless_it_is_off(neighbours, noisy_digits, tmp_path, qmix_cache_dir):
    result = train(noisy_digits, tmp_path / "run", method="ce", epochs=2, audit_neighbours=neighbours,
                   cache_dir=str(qmix_cache_dir), **TINY_TRAIN)  # fmt: skip
    saved = torch.load(result.run_dir / "model.pt", weights_only=True)
    (probe,) = saved["probes"]
    if neighbours:
        (vote,) = saved["votes"]  # `ce` keeps no snapshot: the vote reads the final net's probe features alone
        assert vote["k"] == neighbours and len(vote["labels"]) == 1797 and len(vote["mean"]) == len(probe["mean"])
    else:
        assert saved["votes"] == []
    assert json.loads((result.run_dir / "run.json").read_text())["audit_neighbours"] == neighbours


def test_a_group_column_changes_the_audits_folds_and_votes_only(noisy_digits, tmp_path, qmix_cache_dir):
    """Training is the same with and without groups; the audit of a grouped run reads each training image with its
    group's folds and votes whether it looks up what training read, runs the nets again, or meets the images in a
    manifest without the column (found by their pixels)."""
    frame = pd.read_parquet(noisy_digits / "manifest.parquet")
    frame["path"] = [str(noisy_digits / p) for p in frame["path"]]
    grouped_manifest, bare_manifest = tmp_path / "grouped.parquet", tmp_path / "bare.parquet"
    frame.assign(patient=[f"p{i // 3}" for i in range(len(frame))]).to_parquet(grouped_manifest)
    frame.to_parquet(bare_manifest)
    options = dict(method="ce", epochs=2, cache_dir=str(qmix_cache_dir), quiet=True, **TINY_TRAIN)
    alone = load_run(train(grouped_manifest, tmp_path / "alone", **options).run_dir, device="cpu")
    grouped = load_run(
        train(grouped_manifest, tmp_path / "grouped", group_column="patient", **options).run_dir, device="cpu"
    )
    assert alone.fold_keys is None and alone.meta["group_column"] is None
    patients = frame.assign(patient=[i // 3 for i in range(len(frame))])
    units = len(patients.groupby(["patient", "label"]))  # a patient's images of one given label
    assert grouped.meta["group_column"] == "patient" and len(np.unique(grouped.fold_keys.fold)) == units < len(frame)
    for a, g in zip(alone.nets, grouped.nets, strict=True):
        for name, value in a.state_dict().items():
            assert torch.equal(value, g.state_dict()[name]), name

    dataset = create_dataset(grouped_manifest, classes=grouped.classes, min_classes=1)
    kept, recomputed = score_dataset(grouped, dataset), score_dataset(grouped, dataset, recompute=True)
    final = grouped.meta["final_summary"]
    assert np.bincount(kept.categories, minlength=3).tolist() == [final["n_clean"], final["n_mis_h"], final["n_mis_l"]]
    np.testing.assert_array_equal(kept.categories, recomputed.categories)
    np.testing.assert_allclose(kept.loss, recomputed.loss, atol=1e-5)
    bare = create_dataset(bare_manifest, classes=grouped.classes, min_classes=1)
    np.testing.assert_allclose(score_dataset(grouped, bare, recompute=True).loss, recomputed.loss, atol=1e-5)
    assert group_note(grouped, dataset) is None and "no patient column" in group_note(grouped, bare)
    assert group_note(alone, bare) is None
    assert np.abs(score_dataset(alone, dataset).loss - kept.loss).max() > 1e-3

    # An image the run never saw, a brighter copy of a training image of patient p0: with the column it takes the
    # fold of p0's training images of its label (so none of them votes for it); without it, its own pixels' fold.
    row = frame.iloc[0]
    near = tmp_path / "near.png"
    Image.fromarray(np.clip(np.asarray(Image.open(row["path"])).astype(np.int16) + 1, 0, 255).astype(np.uint8)).save(
        near
    )
    new = pd.DataFrame({"sample_id": ["near"], "path": [str(near)], "label": [row["label"]], "patient": ["p0"]})
    new.to_parquet(tmp_path / "new.parquet")
    new.drop(columns="patient").to_parquet(tmp_path / "new-bare.parquet")
    training_keys = audit_keys(grouped, dataset, cached_images(dataset, size=32, channels=1), dataset.labels)
    (mates,) = np.nonzero((dataset.frame["patient"] == "p0").to_numpy() & (dataset.labels == dataset.labels[0]))
    for manifest, its_unit in (("new.parquet", True), ("new-bare.parquet", False)):
        ds = create_dataset(tmp_path / manifest, classes=grouped.classes, min_classes=1)
        pixel, fold = audit_keys(grouped, ds, cached_images(ds, size=32, channels=1), ds.labels)
        assert pixel[0] not in training_keys[0]  # an image the run never saw
        assert (fold[0] == training_keys[1][mates]).all() == its_unit
        assert (fold[0] == pixel[0]) != its_unit

    state = torch.load(grouped.run_dir / "model.pt", weights_only=True)
    state["fold_keys"]["fold"] = state["fold_keys"]["fold"][:-1]  # damaged: pixel keys and fold keys differ
    torch.save(state, grouped.run_dir / "model.pt")
    with pytest.raises(QmixError, match=r"model\.pt: its fold keys are damaged"):
        load_run(grouped.run_dir, device="cpu")


@pytest.mark.parametrize(
    ("method", "options"),
    [
        ("ce", {}),
        ("qmix", {"audit_warmup": False}),
        ("qmix", {"audit_scores": "classifier"}),
        ("qmix", {"warmup_epochs": 3}),
    ],
)
def test_no_warmup_snapshot_where_there_is_nothing_to_read(method, options, noisy_digits, tmp_path, qmix_cache_dir):
    """``ce`` has no semi-supervised phase, the classifier read-out fits no probes, and a run that ends with its
    warm-up would read the same nets twice."""
    opts = {"epochs": 3, "warmup_epochs": 2, **options}
    result = train(noisy_digits, tmp_path / "run", method=method, cache_dir=str(qmix_cache_dir), **TINY_TRAIN, **opts)
    saved = torch.load(result.run_dir / "model.pt", weights_only=True)
    assert saved["warmup_nets"] == [] and saved["warmup_probes"] == []
    assert load_checkpoint(result.run_dir / "checkpoints" / "last.pt")["warmup_nets"] == []
    assert json.loads((result.run_dir / "run.json").read_text())["audit_warmup"] is False


@pytest.mark.parametrize("audit_scores", ["probe", "classifier"])
def test_audit_loss_comes_from_the_chosen_read_out(audit_scores, noisy_digits, tmp_path, qmix_cache_dir):
    """``classifier`` (the paper's read-out, and that of runs made before the probe) saves no probe and scores
    each image with the net's own softmax, so the audit's loss ranks images exactly as its label_score does;
    ``probe`` scores them with another model of the given label, related but not the same."""
    result = train(noisy_digits, tmp_path / audit_scores, method="ce", epochs=2, audit_scores=audit_scores,
                   cache_dir=str(qmix_cache_dir), **TINY_TRAIN)  # fmt: skip
    saved = torch.load(result.run_dir / "model.pt", weights_only=True)
    probes = saved["probes"]
    # Read-outs are kept where the audit would compute what training did: the probes' (the classifier's scores
    # are smoothed over epochs, the audit's are not).
    assert (saved["readouts"] is None) == (audit_scores == "classifier")
    report = audit(noisy_digits, run=result.run_dir)
    rho = spearmanr(report["loss"], report["label_score"]).statistic
    if audit_scores == "classifier":
        assert probes == [] and rho < -0.999
    else:
        assert len(probes) == 1 and -0.99 < rho < -0.3


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_checkpoint(noisy_digits, tmp_path, qmix_cache_dir):
    opts = dict(method="ce", epochs=3, cache_dir=str(qmix_cache_dir), **TINY_TRAIN)
    with pytest.raises(KeyboardInterrupt):
        train(noisy_digits, tmp_path / "run", on_epoch_end=_interrupt, **opts)
    # Poison the weights so that the resumed epoch diverges.
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    for key, value in state["nets"][0].items():
        if value.is_floating_point():
            state["nets"][0][key] = torch.full_like(value, float("nan"))
    torch.save(state, tmp_path / "run" / "checkpoints" / "last.pt")
    with pytest.raises(TrainingError, match="loss became nan"):
        train(noisy_digits, tmp_path / "run", resume=True, cache_dir=str(qmix_cache_dir))
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")["epoch"] == 1


def test_existing_run_is_not_overwritten_without_force(qmix_run, noisy_digits):
    before = (qmix_run.run_dir / "metrics.jsonl").read_text()
    with pytest.raises(ConfigError, match="pass resume=True to continue it or force=True to start over"):
        train(noisy_digits, qmix_run.run_dir, method="ce", epochs=1, **TINY_TRAIN)
    assert (qmix_run.run_dir / "metrics.jsonl").read_text() == before


def test_resume_without_a_checkpoint_is_a_clear_error(noisy_digits, tmp_path):
    with pytest.raises(TrainingError, match="nothing to resume"):
        train(noisy_digits, tmp_path / "never", resume=True)


def test_checkpoint_from_another_dataset_is_refused(noisy_digits, tmp_path, qmix_cache_dir, digits_dir):
    opts = dict(method="ce", epochs=2, cache_dir=str(qmix_cache_dir), **TINY_TRAIN)
    with pytest.raises(KeyboardInterrupt):
        train(noisy_digits, tmp_path / "run", on_epoch_end=_interrupt, **opts)
    with pytest.raises(TrainingError, match="another dataset"):
        train(digits_dir, tmp_path / "run", resume=True, cache_dir=str(qmix_cache_dir))


def test_checkpoint_from_other_pixels_under_the_same_ids_and_labels_is_refused(noisy_digits, tmp_path, qmix_cache_dir):
    import shutil

    opts = dict(method="ce", epochs=2, cache_dir=str(qmix_cache_dir), **TINY_TRAIN)
    with pytest.raises(KeyboardInterrupt):
        train(noisy_digits, tmp_path / "run", on_epoch_end=_interrupt, **opts)
    other = shutil.copytree(noisy_digits, tmp_path / "noisy2")  # another corruption: same ids, labels, manifest
    # Every image but the first and the last: a digest of the ends alone would not see it.
    for rel in create_dataset(other).frame["path"].iloc[1:-1]:
        with Image.open(other / rel) as img:
            inverted = Image.eval(img.convert("L"), lambda v: 255 - v)
        inverted.save(other / rel)
    with pytest.raises(TrainingError, match="made on other images: the same ids and labels, other pixels"):
        train(other, tmp_path / "run", resume=True, cache_dir=str(qmix_cache_dir))
    assert train(noisy_digits, tmp_path / "run", resume=True, cache_dir=str(qmix_cache_dir)).run_dir.is_dir()


def test_a_run_given_relative_paths_resumes_from_any_directory(noisy_digits, digits_dir, tmp_path, monkeypatch):
    # A sweep script run from the project folder, resumed by a scheduler from elsewhere.
    monkeypatch.chdir(digits_dir.parent)
    opts = dict(method="ce", epochs=2, warmup_epochs=1, **TINY_TRAIN)
    with pytest.raises(KeyboardInterrupt):
        train(noisy_digits, tmp_path / "run", val=digits_dir.name, cache_dir="cache", on_epoch_end=_interrupt, **opts)
    saved = load_config_file(tmp_path / "run" / "config.yaml")
    assert (saved["val"], saved["cache_dir"]) == (str(digits_dir), str(digits_dir.parent / "cache"))
    assert train(noisy_digits, tmp_path / "run", resume=True, val=digits_dir.name).run_dir.is_dir()  # as typed
    monkeypatch.chdir(tmp_path)
    assert train(noisy_digits, tmp_path / "run", resume=True, epochs=3).run_dir.is_dir()  # from elsewhere
    assert [row["epoch"] for row in read_metrics(tmp_path / "run" / "metrics.jsonl")] == [1, 2, 3]
    assert not (tmp_path / "cache").exists()  # the run's own cache, not one made where it was resumed


def test_val_accuracy_is_logged_every_epoch(noisy_digits, digits_dir, tmp_path, qmix_cache_dir):
    # The clean digits as validation data: accuracy must be reported and far above chance (0.1).
    result = train(noisy_digits, tmp_path / "run", method="qmix", epochs=2, val=str(digits_dir),
                   cache_dir=str(qmix_cache_dir), **TINY_TRAIN)  # fmt: skip
    accs = [m["val_acc"] for m in result.metrics]
    assert len(accs) == 2 and all(0.0 <= a <= 1.0 for a in accs)
    assert accs[-1] > 0.3
    # The two nets predict as the report's predicted_label does (METHOD.md: summed logits), not by their mean softmax.
    report = audit(digits_dir, run=tmp_path / "run", cache_dir=qmix_cache_dir)
    assert accs[-1] == pytest.approx((report["predicted_label"] == report["given_label"]).mean(), abs=5e-5)  # rounded


def test_out_holding_the_dataset_is_refused_even_with_force(noisy_digits, hash_tree):
    before = hash_tree(noisy_digits)
    for out in (noisy_digits, noisy_digits.parent):
        with pytest.raises(ConfigError, match="contains the source dataset"):
            train(noisy_digits, out, force=True, method="ce", epochs=1, **TINY_TRAIN)
    assert hash_tree(noisy_digits) == before


def test_force_replaces_runs_not_other_folders(noisy_digits, tmp_path, hash_tree):
    out = tmp_path / "photos"
    out.mkdir()
    (out / "holiday.txt").write_text("not a run")
    before = hash_tree(out)
    with pytest.raises(ConfigError, match="no qmix run"):
        train(noisy_digits, out, force=True, method="ce", epochs=1, **TINY_TRAIN)
    assert hash_tree(out) == before


def test_force_deletes_no_folder_beside_the_run_that_is_not_a_run(noisy_digits, tmp_path, hash_tree, qmix_cache_dir):
    """``--force`` keeps the run it replaces in ``OUT.previous`` and deletes whatever was there: a folder of the
    user's own under that name (a thesis) went with it."""
    run, cache = tmp_path / "run", str(qmix_cache_dir)
    train(noisy_digits, run, method="ce", epochs=1, cache_dir=cache, **TINY_TRAIN)
    (tmp_path / "run.previous").mkdir()
    (tmp_path / "run.previous" / "thesis.tex").write_text("four years")
    before = hash_tree(tmp_path / "run.previous")
    with pytest.raises(ConfigError, match=r"run\.previous, where force=True keeps the run it replaces, holds no qmix"):
        train(noisy_digits, run, force=True, method="ce", epochs=1, cache_dir=cache, **TINY_TRAIN)
    assert hash_tree(tmp_path / "run.previous") == before and (run / "model.pt").is_file()


def test_a_received_run_holding_links_is_not_resumed_through_them(noisy_digits, tmp_path, qmix_cache_dir):
    """A run folder from someone else with ``metrics.jsonl`` linked to ``~/.bashrc``: resuming wrote the run's
    metrics over the linked file (and ``run.json`` / ``separation.json`` over theirs)."""
    run, cache = tmp_path / "run", str(qmix_cache_dir)
    with pytest.raises(KeyboardInterrupt):
        train(noisy_digits, run, method="ce", epochs=2, cache_dir=cache, on_epoch_end=_interrupt, **TINY_TRAIN)
    victim = tmp_path / "bashrc"
    victim.write_text("the user's own file")
    (run / "metrics.jsonl").unlink()
    (run / "metrics.jsonl").symlink_to(victim)
    with pytest.raises(TrainingError, match=r"holds symbolic links \(metrics\.jsonl\).*cp -rL"):
        train(noisy_digits, run, resume=True, cache_dir=cache)
    assert victim.read_text() == "the user's own file"


def test_out_that_is_a_file_is_refused(noisy_digits, tmp_path):
    out = tmp_path / "run"
    out.write_text("not a run")
    with pytest.raises(ConfigError, match="is a file"):
        train(noisy_digits, out, force=True, method="ce", epochs=1, **TINY_TRAIN)
    assert out.read_text() == "not a run"


def test_bad_validation_set_leaves_no_half_made_run(noisy_digits, tmp_path, make_image_folder, qmix_cache_dir):
    val = make_image_folder("val", classes=("not-a-digit", "0"))
    with pytest.raises(DataError, match=r"^val: 1 unknown label in ") as raised:  # which set: the second
        train(noisy_digits, tmp_path / "run", method="ce", epochs=1, val=str(val), cache_dir=str(qmix_cache_dir),
              **TINY_TRAIN)  # fmt: skip
    assert raised.value.cli_message.startswith("--val: 1 unknown label in ")
    assert not (tmp_path / "run").exists()  # so the corrected command needs neither --force nor --resume


def test_resume_refuses_other_settings_and_survives_a_cut_metrics_line(noisy_digits, tmp_path, qmix_cache_dir):
    run = tmp_path / "run"
    opts = dict(method="ce", epochs=3, cache_dir=str(qmix_cache_dir), **TINY_TRAIN)
    with pytest.raises(KeyboardInterrupt):
        train(noisy_digits, run, on_epoch_end=_interrupt, **opts)
    with pytest.raises(ConfigError, match="differ from it: lr"):
        train(noisy_digits, run, resume=True, lr=0.5, cache_dir=str(qmix_cache_dir))
    # Read as "one more epoch", --epochs 2 would end the run early, its schedule unfinished, without a word.
    with pytest.raises(ConfigError, match=r"^epochs=2: this run was set to train 3 epochs.*the total, not how many"):
        train(noisy_digits, run, resume=True, epochs=2, cache_dir=str(qmix_cache_dir))
    assert "epochs: 3\n" in (run / "config.yaml").read_text()
    with (run / "metrics.jsonl").open("a", encoding="utf-8") as f:
        f.write('{"epoch": 2, "pha')  # the tail of a line a kill cut short
    # Repeating the saved settings is fine, and so is changing how the run executes (amp, device, workers).
    done = train(noisy_digits, run, resume=True, amp=False, **opts)
    assert [m["epoch"] for m in done.metrics] == [1, 2, 3]


def test_checkpoint_and_hand_edited_config_must_agree(noisy_digits, tmp_path, qmix_cache_dir):
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(noisy_digits, run, method="ce", epochs=2, cache_dir=str(qmix_cache_dir), on_epoch_end=_interrupt,
              **TINY_TRAIN)  # fmt: skip
    saved = (run / "config.yaml").read_text()
    (run / "config.yaml").write_text(saved.replace("lr: 0.02", "lr: 0.5"))
    with pytest.raises(TrainingError, match=r"other settings than config.yaml now holds \(lr\)"):
        train(noisy_digits, run, resume=True, cache_dir=str(qmix_cache_dir))


def test_a_run_saved_before_jpeg_scale_resumes_decoding_jpegs_whole(noisy_digits, tmp_path, qmix_cache_dir):
    run = tmp_path / "run"
    opts = dict(method="ce", epochs=2, cache_dir=str(qmix_cache_dir), **TINY_TRAIN)
    with pytest.raises(KeyboardInterrupt):
        train(noisy_digits, run, on_epoch_end=_interrupt, **opts)
    saved = (run / "config.yaml").read_text()
    assert "jpeg_scale: true" in saved
    (run / "config.yaml").write_text(saved.replace("jpeg_scale: true\n", ""))  # as the option's absence left it
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    del state["config"]["jpeg_scale"]
    torch.save(state, run / "checkpoints" / "last.pt")
    (run / "config.yaml").write_text(saved)  # an old run's file edited to ask for the new rule mid-run: refused
    with pytest.raises(TrainingError, match=r"other settings than config.yaml now holds \(jpeg_scale\)"):
        train(noisy_digits, run, resume=True, cache_dir=str(qmix_cache_dir))
    (run / "config.yaml").write_text(saved.replace("jpeg_scale: true\n", ""))
    # Its settings loaded into today's `TrainConfig` (which says jpeg_scale: true) resume it as it ran.
    config = config_from_dict(load_config_file(run / "config.yaml"))
    assert config.jpeg_scale is True
    train(noisy_digits, run, resume=True, config=config)
    assert json.loads(load_checkpoint(run / "model.pt")["meta"])["jpeg_scale"] is False


def test_a_run_saved_with_the_retired_extra_key_resumes_and_serves_as_a_config(noisy_digits, tmp_path, qmix_cache_dir):
    # Every config.yaml and checkpoint of an earlier release holds `extra: {}`, a key no option reads any more.
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        train(noisy_digits, run, method="ce", epochs=2, cache_dir=str(qmix_cache_dir), on_epoch_end=_interrupt,
              **TINY_TRAIN)  # fmt: skip
    saved = (run / "config.yaml").read_text()
    assert "extra" not in saved
    (run / "config.yaml").write_text(saved + "extra: {}\n")
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    torch.save({**state, "config": {**state["config"], "extra": {}}}, run / "checkpoints" / "last.pt")
    assert config_from_dict(load_config_file(run / "config.yaml")) == config_from_dict(yaml.safe_load(saved))
    # Resumed as a requeued job does it: the run's own file given again as the config.
    result = train(noisy_digits, run, resume=True, config=run / "config.yaml", cache_dir=str(qmix_cache_dir))
    assert [m["epoch"] for m in result.metrics] == [1, 2]
    with pytest.raises(ConfigError, match=r"^extra is no longer an option .*: remove it$"):  # set to something
        config_from_dict({"extra": {"note": "x"}})


def test_killed_extension_of_a_finished_run_leaves_no_stale_model(noisy_digits, tmp_path, qmix_cache_dir):
    run = tmp_path / "run"
    cache = str(qmix_cache_dir)
    train(noisy_digits, run, method="ce", epochs=1, cache_dir=cache, **TINY_TRAIN)
    assert (run / "model.pt").is_file()
    with pytest.raises(KeyboardInterrupt):
        train(noisy_digits, run, resume=True, epochs=3, cache_dir=cache, on_epoch_end=_interrupt)
    # The one-epoch model no longer matches the run; audit must say so rather than pair it with new files.
    assert not (run / "model.pt").exists()
    with pytest.raises(QmixError, match="--resume"):
        audit(noisy_digits, run=run)
    train(noisy_digits, run, resume=True, epochs=3, cache_dir=cache)
    assert len(audit(noisy_digits, run=run)) == 1797
    # Fewer epochs than it has trained: refused, and the finished run keeps its model.
    with pytest.raises(ConfigError, match="trained 3 epochs already"):
        train(noisy_digits, run, resume=True, epochs=2, cache_dir=cache)
    assert (run / "model.pt").is_file()
    # As many: nothing to resume, said so (not "resuming at epoch 4/3"), and the model kept.
    with pytest.raises(ConfigError, match="has finished its 3 epochs; to train on, resume with epochs=N"):
        train(noisy_digits, run, resume=True, cache_dir=cache)
    model = (run / "model.pt").read_bytes()
    # Killed between its last checkpoint and its final model: resuming only finishes it, with the same model.
    (run / "model.pt").unlink()
    log = io.StringIO()
    train(noisy_digits, run, resume=True, cache_dir=cache, console=Console(file=log, width=200))
    assert (run / "model.pt").read_bytes() == model
    assert f"finishing {run}: its 3 epochs are trained" in log.getvalue() and "resuming" not in log.getvalue()


def test_force_keeps_the_old_run_until_the_new_one_finishes(noisy_digits, tmp_path, qmix_cache_dir):
    run, cache = tmp_path / "run", str(qmix_cache_dir)
    train(noisy_digits, run, method="ce", epochs=1, cache_dir=cache, **TINY_TRAIN)
    old_model = (run / "model.pt").read_bytes()
    with pytest.raises(KeyboardInterrupt):
        train(noisy_digits, run, force=True, method="ce", epochs=2, seed=5, cache_dir=cache, on_epoch_end=_interrupt,
              **TINY_TRAIN)  # fmt: skip
    previous = tmp_path / "run.previous"
    assert (previous / "model.pt").read_bytes() == old_model  # a killed --force run has lost nothing
    with pytest.raises(QmixError, match=r"run\.previous"):  # audit points to the finished run kept aside
        audit(noisy_digits, run=run)
    # Killed again: the unfinished restart is what gets discarded, never the finished run kept aside.
    with pytest.raises(KeyboardInterrupt):
        train(noisy_digits, run, force=True, method="ce", epochs=2, seed=5, cache_dir=cache, on_epoch_end=_interrupt,
              **TINY_TRAIN)  # fmt: skip
    assert (previous / "model.pt").read_bytes() == old_model
    train(noisy_digits, run, resume=True, cache_dir=cache)
    assert (run / "model.pt").is_file()
    assert not previous.exists()


def _pretend_cuda(monkeypatch, *, devices: int, native_bf16: bool) -> list[dict]:
    """Make torch report ``devices`` CUDA devices; record how bf16 support is asked about."""
    asked: list[dict] = []

    def bf16_supported(including_emulation: bool = True) -> bool:
        asked.append({"including_emulation": including_emulation})
        return native_bf16 or including_emulation  # an older GPU: bf16 only by emulation

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: devices)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", bf16_supported)
    return asked


def test_a_cuda_ordinal_the_machine_lacks_is_a_config_error(monkeypatch):
    from qmix_cli.engine.device import resolve_device

    _pretend_cuda(monkeypatch, devices=1, native_bf16=True)
    assert resolve_device("cuda:0") == torch.device("cuda:0")
    assert resolve_device("cuda") == torch.device("cuda")
    with pytest.raises(ConfigError, match="has 1 CUDA device"):
        resolve_device("cuda:3")


@pytest.mark.parametrize("name", ["mps", "xpu", "meta", "cpu:0x"])
def test_a_device_the_engine_does_not_run_on_is_a_config_error(name):
    # torch parses mps, xpu and meta; each ended deep in torch once the images were decoded ("cpu:0x": no device).
    from qmix_cli.engine.device import resolve_device

    with pytest.raises(ConfigError, match="use auto, cpu, cuda or cuda:N"):
        resolve_device(name)
    assert resolve_device("cpu:0") == torch.device("cpu:0")


@pytest.mark.parametrize(("native_bf16", "expected"), [(True, torch.bfloat16), (False, torch.float16)])
def test_mixed_precision_uses_bf16_only_where_the_gpu_computes_it_natively(monkeypatch, native_bf16, expected):
    from qmix_cli.engine.device import amp_dtype

    asked = _pretend_cuda(monkeypatch, devices=1, native_bf16=native_bf16)
    assert amp_dtype(torch.device("cuda"), True) == expected
    assert asked == [{"including_emulation": False}]
    assert amp_dtype(torch.device("cuda"), False) is None
    assert amp_dtype(torch.device("cpu"), True) is None


def test_compile_covers_the_semi_supervised_training_forward(monkeypatch, noisy_digits, tmp_path, qmix_cache_dir):
    # `--compile` compiles the nets; the semi-supervised step must call the compiled module (with projection=True),
    # not a method of the module inside it, which the compiler never sees. A recording stand-in for torch.compile
    # keeps this fast; the result must be the eager run's, to the digit.
    calls: list[bool] = []

    class Recording(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x, **kwargs):
            calls.append(bool(kwargs.get("projection", False)))
            return self.net(x, **kwargs)

        def __getattr__(self, name):
            try:
                return super().__getattr__(name)
            except AttributeError:
                return getattr(self.net, name)

    monkeypatch.setattr(torch, "compile", Recording)
    # Compiled nets keep the default memory layout; the eager run must too, or its kernels round differently.
    monkeypatch.setattr("qmix_cli.engine.models.channels_last_on", lambda device, *, compiled=False: False)
    opts = dict(method="qmix", epochs=2, warmup_epochs=1, cache_dir=str(qmix_cache_dir), **TINY_TRAIN)
    compiled = train(noisy_digits, tmp_path / "compiled", compile=True, **opts)
    eager = train(noisy_digits, tmp_path / "eager", compile=False, **opts)
    assert calls.count(True) == 2 * (1797 // TINY_TRAIN["batch_size"])  # every step of both nets' epoch
    assert calls.count(False) > 0  # warm-up and scoring forwards too
    strip = [{k: v for k, v in m.items() if k not in ("seconds", "images_per_s")} for m in compiled.metrics]
    assert strip == [{k: v for k, v in m.items() if k not in ("seconds", "images_per_s")} for m in eager.metrics]


def test_the_nets_forward_traces_with_torch_compile_in_both_modes():
    # Dynamo must capture both entry points of QmixNet.forward (logits; logits with the projection).
    from qmix_cli.engine.models import create_model

    net = create_model("test_resnet", num_classes=3, in_chans=1, proj_dim=8).eval()
    compiled = torch.compile(net, backend="eager", fullgraph=True)
    x = torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), net(x))
        logits, proj = compiled(x, projection=True)
        ref_logits, ref_proj = net(x, projection=True)
    torch.testing.assert_close(logits, ref_logits)
    torch.testing.assert_close(proj, ref_proj)


@pytest.mark.parametrize(
    ("options", "side", "suggested"),
    [
        ({}, 28, 32),  # the default 224 px on Fashion-MNIST-sized images: 64 times the pixels
        ({"img_size": 224}, 100, 112),  # rounded up to a multiple of 16
        ({"img_size": 128}, 8, 32),  # never below 32
    ],
)
def test_size_hint_names_the_enlargement_and_a_size_that_fits(options, side, suggested):
    hint = size_hint(config_from_dict(options), image_side=side)
    img_size = options.get("img_size", 224)
    assert f"about {side} px a side; --img-size {img_size} enlarges them ({(img_size / side) ** 2:.0f}×" in hint
    assert hint.endswith(f"--img-size {suggested} trains on what they hold, much faster")


@pytest.mark.parametrize(
    ("options", "side"),
    [
        ({"img_size": 224}, 120),  # less than twice the images' side
        ({"img_size": 64}, 8),  # small sizes: enlarging is what the strides need, and cheap
        ({"pretrained": True}, 28),  # pretrained weights are used at the size they were trained at
        ({"weights": "w.pth"}, 28),
        ({}, 0),  # images not inspected
    ],
)
def test_size_hint_says_nothing_where_enlarging_is_cheap_usual_or_unknown(options, side):
    assert size_hint(config_from_dict(options), image_side=side) is None


def test_training_scores_against_a_category_column_only_when_it_holds_verdicts(make_image_folder):
    root = make_image_folder(classes=("a", "b"), per_class=2)
    rows = pd.DataFrame({"path": [f"{c}/{i}.png" for c in "ab" for i in range(2)], "label": list("aabb")})
    rows.assign(category=["clean", "mislabeled_hq", "clean", "mislabeled_lq"]).to_csv(root / "t.csv", index=False)
    is_clean, is_hq = trainer._truth(create_dataset(root / "t.csv"))
    assert is_clean.tolist() == [True, False, True, False] and is_hq.tolist() == [True, True, True, False]
    rows.assign(category=["animal", "animal", "vehicle", "vehicle"]).to_csv(root / "own.csv", index=False)
    assert trainer._truth(create_dataset(root / "own.csv")) == (None, None)


def test_classes_too_small_for_the_audit_to_judge_are_named_with_how_many():
    classes = [f"c{k}" for k in range(9)]
    counts = np.array([1, 50, 4, 2, 5, 3, 3, 3, 100])
    note = small_classes_note(counts, classes)
    assert note.startswith(
        "note: 6 classes of fewer than 5 images: c0 (1), c2 (4), c3 (2), c5 (3), c6 (3), and 1 more;"
    )
    assert small_classes_note(np.array([1, 9]), ["rare", "common"]).startswith(
        "note: 1 class of fewer than 5 images: rare (1);"
    )
    assert small_classes_note(np.array([5, 9]), ["a", "b"]) is None


def test_read_outs_too_large_to_keep_are_said_and_the_audit_still_scores_every_image(
    noisy_digits, tmp_path, monkeypatch, qmix_cache_dir
):
    from qmix_cli.engine import readouts

    monkeypatch.setattr(readouts, "READOUT_BYTES", 0)  # as a run of a million images of a thousand classes
    log = io.StringIO()
    run = tmp_path / "run"
    options = dict(method="ce", epochs=1, warmup_epochs=1, cache_dir=str(qmix_cache_dir), **TINY_TRAIN)
    train(noisy_digits, run, console=Console(file=log, width=300), **options)
    assert "note: what the nets read of the training images is not kept in model.pt" in log.getvalue()
    assert "fitting the audit's out-of-fold probes on 1,797 images" in log.getvalue()
    report = audit(noisy_digits, run=run)  # by running the nets again
    assert len(report) == 1797 and np.isfinite(report[["loss", "uncertainty", "p_clean"]].to_numpy()).all()
    truth = pd.read_parquet(noisy_digits / "manifest.parquet").set_index("sample_id").loc[report["sample_id"]]
    assert roc_auc_score(truth["category"] != "clean", 1 - report["p_clean"]) > 0.9  # trained nets' read


@pytest.mark.parametrize(
    ("classes", "uncertainty", "tied"),
    [(("a", "b"), "entropy", True), (("a", "b"), "collision", False), (("a", "b", "c"), "entropy", False)],
)
def test_two_class_runs_name_their_mixture_along_one_curve(
    make_image_folder, tmp_path, monkeypatch, qmix_cache_dir, classes, uncertainty, tied
):
    # Only a two-class output's entropy is a function of its loss; the collision uncertainty is not (it is lower for
    # a hesitant net than for one sure of the other class), nor is the entropy over three classes.
    spy = mock.Mock(wraps=trainer.fit_separation)
    monkeypatch.setattr(trainer, "fit_separation", spy)
    root = make_image_folder(classes=classes, per_class=8, size=16, mode="L")
    train(root, tmp_path / "run", method="qmix", epochs=2, warmup_epochs=1, cache_dir=str(qmix_cache_dir),
          config={"uncertainty": uncertainty}, **TINY_TRAIN)  # fmt: skip
    seen = [call.kwargs.get("tied_axes") for call in spy.call_args_list]
    assert seen and set(seen) == {tied}
