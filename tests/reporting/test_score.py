"""Scoring a dataset with a trained run (`load_run` + `score_dataset`) on the shared short qmix run."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score

from qmix_cli.data.cache import cache_key
from qmix_cli.data.manifest import create_dataset
from qmix_cli.engine.separation import entropy, hard_groups
from qmix_cli.errors import QmixError
from qmix_cli.reporting.score import AuditScores, is_training_set, load_run, score_dataset


@pytest.fixture(scope="module")
def trained(qmix_run):
    return load_run(qmix_run.run_dir, device="cpu")


@pytest.fixture(scope="module")
def dataset(trained, noisy_digits):
    return create_dataset(noisy_digits, classes=trained.classes, min_classes=1)


@pytest.fixture(scope="module")
def scores(trained, dataset) -> AuditScores:
    return score_dataset(trained, dataset)


def _fields(s: AuditScores) -> dict[str, np.ndarray]:
    return {
        "probs": s.probs,
        "loss": s.loss,
        "uncertainty": s.uncertainty,
        "posteriors": s.posteriors,
        "categories": s.categories,
    }


def test_a_run_whose_read_outs_do_not_match_its_nets_is_refused(qmix_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(qmix_run.run_dir, run_dir)
    state = torch.load(run_dir / "model.pt", weights_only=True)
    readouts = dict(state["readouts"])
    state["readouts"]["probs"] = readouts["probs"][:1]  # damaged: arrays that do not fit each other
    torch.save(state, run_dir / "model.pt")
    with pytest.raises(QmixError, match="training read-outs are damaged"):
        load_run(run_dir, device="cpu")
    state["readouts"] = {**readouts, "probs": readouts["probs"][:1], "scored": readouts["scored"][:1]}
    torch.save(state, run_dir / "model.pt")  # one net's read-outs for a two-net run
    with pytest.raises(QmixError, match="training read-outs do not match its nets"):
        load_run(run_dir, device="cpu")
    state["readouts"] = None  # runs without read-outs (saved before them, or too large) are audited by the nets
    torch.save(state, run_dir / "model.pt")
    assert load_run(run_dir, device="cpu").readouts is None


def test_a_run_whose_votes_do_not_match_its_probes_is_refused(qmix_run, tmp_path):
    """A vote reads the features of its net's final and warm-up probes side by side; a model.pt holding votes
    without the warm-up probes (edited or damaged) must fail at loading, with the file named."""
    run_dir = tmp_path / "run"
    shutil.copytree(qmix_run.run_dir, run_dir)
    state = torch.load(run_dir / "model.pt", weights_only=True)
    state["warmup_nets"], state["warmup_probes"] = [], []
    torch.save(state, run_dir / "model.pt")
    with pytest.raises(QmixError, match="neighbour votes do not match its probes"):
        load_run(run_dir, device="cpu")
    state["votes"] = []  # the same run without its votes is a valid run: final probes alone
    torch.save(state, run_dir / "model.pt")
    alone = load_run(run_dir, device="cpu")
    assert alone.votes == [] and alone.readouts is None  # what training read with them is not what it now reads


def test_load_run(trained, qmix_run):
    assert trained.run_dir == Path(qmix_run.run_dir)
    assert trained.classes == [str(i) for i in range(10)]
    assert len(trained.nets) == 2 and len(trained.separations) == 2
    assert trained.meta["audit_scores"] == "probe"
    assert [(p.folds, p.stages) for p in trained.probes] == [(5, 2), (5, 2)]
    assert all(not net.training for net in trained.nets)
    assert trained.meta["method"] == "qmix" and trained.meta["model"] == "test_resnet"


@pytest.mark.parametrize("recompute", [False, True])
def test_audit_of_the_training_set_reproduces_the_final_separation(trained, dataset, scores, recompute):
    """The audit reads the nets as training's last step did (final and warm-up probes averaged, and each net's
    vote, net by net), so its groups of the training images are the ones training ended with, whether it looks up
    what training read or runs the nets again; without the warm-up probes or the votes they are not (below)."""
    final = trained.meta["final_summary"]
    if recompute:
        scores = score_dataset(trained, dataset, recompute=True)
    counts = np.bincount(scores.categories, minlength=3)
    assert trained.meta["audit_warmup"] and len(trained.warmup_nets) == len(trained.warmup_probes) == 2
    assert len(trained.votes) == 2 and trained.meta["audit_neighbours"] == 10
    assert counts.tolist() == [final["n_clean"], final["n_mis_h"], final["n_mis_l"]]


@pytest.mark.parametrize(
    "dropped",
    [
        {"votes": []},
        # The votes read the snapshot's features too: without the snapshot, none can be asked.
        {"warmup_nets": [], "warmup_probes": [], "votes": []},
    ],
)
def test_without_its_votes_or_warmup_probes_the_audit_scores_otherwise(dropped, trained, dataset, scores):
    assert all(getattr(trained, name) for name in dropped)
    other = score_dataset(dataclasses.replace(trained, **dropped), dataset, recompute=True)
    assert np.abs(other.loss - scores.loss).max() > 1e-3
    np.testing.assert_array_equal(other.probs, scores.probs)  # the classifier is the final nets' in both


def test_shapes_and_ranges(scores, dataset):
    n, k = len(dataset), 10
    assert n == 1797
    assert scores.probs.shape == (n, k)
    assert scores.loss.shape == scores.uncertainty.shape == (n,)
    assert scores.posteriors.shape == (n, 3)
    assert scores.categories.shape == (n,)
    np.testing.assert_allclose(scores.probs.sum(axis=1), 1.0, atol=1e-5)
    assert (scores.probs >= 0).all()
    for values in (scores.loss, scores.uncertainty):
        assert np.isfinite(values).all() and values.min() >= 0 and values.max() <= 1 + 1e-6
    assert set(np.unique(scores.categories)) <= {0, 1, 2}


def test_posteriors_are_probabilities(scores):
    post = scores.posteriors
    assert np.isfinite(post).all() and (post >= 0).all()
    np.testing.assert_allclose(post.sum(axis=1), 1.0, atol=1e-6)


def test_categories_are_the_hard_groups_of_the_posteriors(scores, trained):
    expected = hard_groups(scores.posteriors, p_threshold=trained.meta["p_threshold"])
    np.testing.assert_array_equal(scores.categories, expected)
    # All three groups occur on 20 % noisy labels + 15 % degraded images.
    assert set(np.unique(scores.categories)) == {0, 1, 2}


def test_scoring_is_deterministic(trained, dataset):
    first, again = (score_dataset(trained, dataset, recompute=True) for _ in range(2))
    for name, values in _fields(again).items():
        np.testing.assert_array_equal(values, _fields(first)[name], err_msg=name)


def test_the_training_set_is_audited_from_what_the_run_kept_without_running_a_net(
    trained, dataset, scores, monkeypatch
):
    """Training read every training image at its end; the audit looks those read-outs up by pixel key, and they
    are what running the nets again gives (the same groups, scores equal to float precision)."""
    from qmix_cli.reporting import score

    recomputed = score_dataset(trained, dataset, recompute=True)
    assert trained.readouts is not None and len(trained.readouts.keys) == len(dataset)

    def no_nets(*args, **kwargs):
        raise AssertionError("a net was run on an image the run was trained on")

    monkeypatch.setattr(score, "_read_nets", no_nets)
    kept = score_dataset(trained, dataset)
    np.testing.assert_array_equal(kept.categories, recomputed.categories)
    for name, values in _fields(kept).items():
        np.testing.assert_allclose(values, _fields(recomputed)[name], atol=1e-5, err_msg=name)
    for name, values in _fields(scores).items():
        np.testing.assert_array_equal(values, _fields(kept)[name], err_msg=name)


def test_only_images_the_run_does_not_know_are_read_by_the_nets(trained, dataset, scores, noisy_digits, tmp_path):
    """A manifest mixing training images with changed ones (mirrored: other pixels) runs the nets on the changed
    images alone, batch boundaries falling between them, and every row gets what running the nets on all gives."""
    from qmix_cli.reporting import score

    frame = dataset.frame.iloc[:30]
    changed = [3, 7, 8, 21]
    paths = [str((Path(noisy_digits) / p).resolve()) for p in frame["path"]]
    for i in changed:
        with Image.open(paths[i]) as img:
            img.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(tmp_path / f"mirrored{i}.png")
        paths[i] = str(tmp_path / f"mirrored{i}.png")
    manifest = tmp_path / "mixed.csv"
    rows = pd.DataFrame({"sample_id": frame["sample_id"], "path": paths, "label": frame["label"]})
    rows.to_csv(manifest, index=False)
    mixed = create_dataset(manifest, classes=trained.classes, min_classes=1)

    asked = []
    original = score._read_nets

    def spy(*args, rows, **kwargs):
        asked.append(rows)
        return original(*args, rows=rows, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(score, "_read_nets", spy)
        out = score_dataset(trained, mixed, batch_size=3)
    assert len(asked) == 1 and asked[0].tolist() == changed
    recomputed = score_dataset(trained, mixed, batch_size=3, recompute=True)
    for name, values in _fields(out).items():
        np.testing.assert_allclose(values, _fields(recomputed)[name], atol=1e-5, err_msg=name)
    known = np.setdiff1d(np.arange(30), changed)
    np.testing.assert_array_equal(out.loss[known], scores.loss[known])
    assert np.abs(out.loss[changed] - scores.loss[changed]).max() > 1e-3  # scored as the images they now are


def test_a_subset_is_placed_on_the_saved_separation(trained, dataset, scores, noisy_digits, tmp_path):
    """New images are scored against the run's saved normalisers and GMMs, not a separation refitted on them."""
    frame = dataset.frame
    rng = np.random.default_rng(0)
    picked = np.sort(rng.choice(len(frame), size=200, replace=False))
    rows = frame.iloc[picked]
    manifest = tmp_path / "subset.csv"
    pd.DataFrame(
        {
            "sample_id": rows["sample_id"].to_numpy(),
            "path": [str((Path(noisy_digits) / p).resolve()) for p in rows["path"]],
            "label": rows["label"].to_numpy(),
        }
    ).to_csv(manifest, index=False)
    subset = create_dataset(manifest, classes=trained.classes, min_classes=1)
    assert subset.sample_ids == rows["sample_id"].tolist()

    sub = score_dataset(trained, subset, batch_size=64, recompute=True)  # read by the nets, not looked up
    full = {name: values[picked] for name, values in _fields(scores).items()}
    for name, values in _fields(sub).items():
        if name == "categories":
            np.testing.assert_array_equal(values, full[name])
        else:
            np.testing.assert_allclose(values, full[name], atol=1e-4, err_msg=name)


def test_probe_read_out_finds_planted_noise_better_than_the_nets_own_classifier(scores, dataset, noisy_digits):
    """The reason for the probe read-out (docs/decisions.md, "Fifth round"): qmix's own classifier is trained on
    refined and guessed labels and made sure of what it guesses, so its entropy tells degraded images apart worse
    than that of out-of-fold probes fitted on the given labels. Measured here: low-quality AUC 0.88 against 0.85;
    wrong labels are found almost perfectly by both on digits (AUC ≈ 0.999)."""
    truth = pd.read_parquet(Path(noisy_digits) / "manifest.parquet").set_index("sample_id")["category"]
    truth = truth.loc[dataset.sample_ids].to_numpy()
    assert roc_auc_score(truth != "clean", scores.loss) > 0.95
    low_quality = truth == "mislabeled_lq"
    assert roc_auc_score(low_quality, scores.uncertainty) > roc_auc_score(low_quality, entropy(scores.probs))


def test_tta_changes_probs_slightly(trained, dataset, scores):
    tta = score_dataset(trained, dataset, tta=2)
    for name, values in _fields(tta).items():
        assert values.shape == _fields(scores)[name].shape, name
    np.testing.assert_allclose(tta.probs.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(tta.posteriors.sum(axis=1), 1.0, atol=1e-6)
    diff = np.abs(tta.probs - scores.probs)
    assert diff.max() > 1e-4  # the augmented views do something
    assert diff.mean() < 0.05  # ... but not much: the same nets on the same images
    agree = (tta.probs.argmax(axis=1) == scores.probs.argmax(axis=1)).mean()
    assert agree > 0.93  # 0.98 measured with the run's own (unflipped) views; 0.895 when digits were mirrored


def test_tta_views_follow_the_run_augmentation(trained, dataset, monkeypatch, qmix_run):
    from qmix_cli.reporting import score

    assert qmix_run.run_dir.joinpath("config.yaml").read_text().count("hflip: false") == 1
    calls = []
    original = score.weak_spec

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(score, "weak_spec", spy)
    score.score_dataset(trained, dataset, tta=1)
    assert calls and all(call.get("hflip") is False for call in calls), calls


@pytest.mark.parametrize(("recorded", "expected"), [(False, None), (True, "bfloat16"), (None, "bfloat16")])
def test_audit_scores_in_the_precision_the_final_separation_was_fitted_in(trained, monkeypatch, recorded, expected):
    # A run trained in full precision (on the CPU, or with --no-amp) is audited in full precision on a GPU too;
    # runs saved before `amp` was recorded keep the audit's mixed precision.
    import torch

    from qmix_cli.reporting.score import audit_amp_dtype

    assert trained.meta["amp"] is False  # the shared run trained on the CPU
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    meta = {k: v for k, v in trained.meta.items() if k != "amp"}
    if recorded is not None:
        meta["amp"] = recorded
    on_gpu = dataclasses.replace(trained, meta=meta, device=torch.device("cuda"))
    assert audit_amp_dtype(on_gpu) == (None if expected is None else getattr(torch, expected))


def test_a_run_trained_before_dct_scale_decoding_reads_jpegs_whole_as_it_was_trained(trained, tmp_path):
    assert trained.meta["jpeg_scale"] is True and trained.decode_target.jpeg_scale
    old = dataclasses.replace(trained, meta={k: v for k, v in trained.meta.items() if k != "jpeg_scale"})
    assert old.decode_target == dataclasses.replace(trained.decode_target, jpeg_scale=False)
    from sklearn.datasets import load_digits

    digits = load_digits()
    for i in range(12):  # 8-px digits as 96-px JPEGs: read at the run's 32 px, new runs decode them at 1/2 scale
        folder = tmp_path / "jpeg" / trained.classes[int(digits.target[i])]
        folder.mkdir(parents=True, exist_ok=True)
        pixels = (digits.images[i] * 15).astype(np.uint8)
        Image.fromarray(pixels).resize((96, 96), Image.Resampling.BICUBIC).save(folder / f"{i}.jpg", quality=90)
    cache = tmp_path / "cache"
    ds = create_dataset(tmp_path / "jpeg", classes=trained.classes, min_classes=1, cache_dir=cache)
    as_trained = {run.decode_target.jpeg_scale: score_dataset(run, ds, cache_dir=cache) for run in (old, trained)}
    stored = {p.name for p in (cache / "decoded").glob("*.npy")}
    size, channels = trained.meta["img_size"], trained.meta["channels"]
    keys = {cache_key(ds.file_paths, size=size, channels=channels, jpeg_scale=rule) for rule in (False, True)}
    assert stored == {f"{key}.npy" for key in keys} and len(keys) == 2
    assert not np.allclose(as_trained[False].probs, as_trained[True].probs)


def test_the_training_set_is_told_however_its_path_is_spelt(
    trained, noisy_digits, qmix_cache_dir, tmp_path, monkeypatch
):
    """`qmix apply` keeps a rare class's flagged images in an audit of the training set and applies them elsewhere;
    compared as typed, ``./noisy`` or an absolute path counted as other data and a rare class was relabelled away."""
    copy = tmp_path / "copy"
    shutil.copytree(noisy_digits, copy)
    frame = pd.read_parquet(noisy_digits / "manifest.parquet").assign(
        path=lambda f: [str(noisy_digits / p) for p in f["path"]]
    )
    frame.sample(frac=1.0, random_state=0).to_parquet(tmp_path / "shuffled.parquet")  # sorted otherwise by a user
    monkeypatch.chdir(noisy_digits.parent)
    spellings = [
        noisy_digits,
        f"./{noisy_digits.name}",
        f"{noisy_digits.name}/",
        noisy_digits / "manifest.parquet",
        copy,  # moved or copied elsewhere: the same images with the same labels
        tmp_path / "shuffled.parquet",  # its rows in another order
    ]
    for spelling in spellings:
        assert is_training_set(trained, create_dataset(spelling, cache_dir=qmix_cache_dir)), spelling
    monkeypatch.chdir(tmp_path)  # where "digits" is the built-in set, not a folder of that name
    frame.head(100).to_parquet(tmp_path / "subset.parquet")
    relabelled = pd.read_parquet(noisy_digits / "manifest.parquet")
    relabelled = relabelled.assign(label=np.roll(relabelled["label"].to_numpy(), 1))
    relabelled.to_parquet(copy / "manifest.parquet")
    for other in ("digits", tmp_path / "subset.parquet", copy):  # other images, fewer, other labels
        assert not is_training_set(trained, create_dataset(other, cache_dir=qmix_cache_dir)), other
    # A run saved before `members` was kept: its ordered fingerprint decides, so only the rows in training's order.
    older = dataclasses.replace(trained, meta={k: v for k, v in trained.meta.items() if k != "members"})
    assert is_training_set(older, create_dataset(noisy_digits, cache_dir=qmix_cache_dir))
    assert not is_training_set(older, create_dataset(tmp_path / "shuffled.parquet", cache_dir=qmix_cache_dir))
