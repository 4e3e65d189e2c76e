"""The mixed-noise protocol: planning (pure) and writing a corrupted copy (atomic, reproducible, source untouched)."""

from __future__ import annotations

import io
import itertools
import json
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from rich.console import Console

import qmix_cli
from qmix_cli.api import corrupt
from qmix_cli.data.images import native_array
from qmix_cli.data.manifest import create_dataset
from qmix_cli.errors import ConfigError, QmixError
from qmix_cli.noise import protocol
from qmix_cli.noise.degrade import DEGRADATIONS, degrade
from qmix_cli.noise.protocol import PRESETS, CorruptSpec, corrupt_dataset, plan_corruption, resolve_spec
from qmix_cli.progress import SilentReporter

K = 10
CLASSES = [f"c{i}" for i in range(K)]


@pytest.fixture(scope="module")
def labels() -> np.ndarray:
    return np.random.default_rng(123).integers(0, K, size=10_000)


def _within_3_sigma(count: int, n: int, p: float) -> bool:
    return abs(count - n * p) <= 3 * np.sqrt(n * p * (1 - p))


# --------------------------------------------------------------------------------------------------------------
# plan_corruption


def test_grouped_label_noise_is_one_draw_per_group_and_class():
    """1,000 patients of 5 images of one class: drawn per image, a fifth of their labels change and almost every
    patient with a changed label keeps correct ones too; drawn per patient, a patient's images are all wrong or
    all right, and about a fifth of the patients are wrong."""
    units = np.repeat(np.arange(1000), 5)
    labels = np.repeat(np.random.default_rng(4).integers(0, K, size=1000), 5)
    spec = CorruptSpec(label_rate=0.2, quality_rate=0.0, seed=3)
    for grouped in (False, True):
        plan = plan_corruption(labels, classes=CLASSES, spec=spec, units=units if grouped else None)
        wrong_per_patient = plan["is_label_noisy"].to_numpy().reshape(1000, 5).sum(axis=1)
        given_per_patient = plan.groupby(units)["label"].nunique()
        if grouped:
            assert set(wrong_per_patient.tolist()) <= {0, 5} and (given_per_patient == 1).all()
            assert _within_3_sigma(int((wrong_per_patient == 5).sum()), 1000, 0.2)
        else:
            assert ((wrong_per_patient > 0) & (wrong_per_patient < 5)).sum() > 500


def test_grouped_label_noise_leaves_degraded_images_their_own_labels():
    units = np.repeat(np.arange(400), 5)
    labels = np.repeat(np.arange(400) % K, 5)
    plan = plan_corruption(labels, classes=CLASSES, spec=CorruptSpec(quality_rate=0.5, seed=5), units=units)
    hq = ~plan["is_low_quality"].to_numpy()
    assert (plan[hq].groupby(units[hq])["label"].nunique() == 1).all()
    # Degraded images' labels are drawn one by one (random: another class each), so patients' differ.
    assert (plan[~hq].groupby(units[~hq])["label"].nunique() > 1).any()


@pytest.mark.parametrize("quality_rate", [0.0, 0.15, 0.3333, 0.75, 1.0])
def test_lq_count_is_exact(labels, quality_rate):
    plan = plan_corruption(labels, classes=CLASSES, spec=CorruptSpec(quality_rate=quality_rate, seed=1))
    assert len(plan) == len(labels)
    assert int(plan["is_low_quality"].sum()) == round(quality_rate * len(labels))


@pytest.mark.parametrize("label_rate", [0.1, 0.2, 0.45])
def test_hq_label_noise_rate_is_binomial(labels, label_rate):
    plan = plan_corruption(labels, classes=CLASSES, spec=CorruptSpec(label_rate=label_rate, quality_rate=0.2, seed=2))
    hq = ~plan["is_low_quality"]
    n_hq = int(hq.sum())
    flipped = int(plan.loc[hq, "is_label_noisy"].sum())
    assert _within_3_sigma(flipped, n_hq, label_rate), (flipped, n_hq * label_rate)
    # symmetric-exclusive: the wrong labels spread evenly over the other classes.
    wrong = plan.loc[hq & plan["is_label_noisy"]]
    shift = (wrong["label"].str[1:].astype(int) - wrong["true_label"].str[1:].astype(int)) % K
    counts = np.bincount(shift, minlength=K)
    assert counts[0] == 0
    assert all(_within_3_sigma(int(c), len(wrong), 1 / (K - 1)) for c in counts[1:])


def test_no_label_noise(labels):
    plan = plan_corruption(labels, classes=CLASSES, spec=CorruptSpec(label_noise="none", quality_rate=0.1, seed=0))
    hq = ~plan["is_low_quality"]
    assert not plan.loc[hq, "is_label_noisy"].any()
    assert (plan.loc[hq, "category"] == "clean").all()


def test_categories_are_consistent(labels):
    plan = plan_corruption(labels, classes=CLASSES, spec=CorruptSpec(quality_rate=0.3, lq_labels="prior", seed=4))
    lq, noisy = plan["is_low_quality"], plan["is_label_noisy"]
    assert (noisy == (plan["label"] != plan["true_label"])).all()
    assert ((plan["category"] == "mislabeled_lq") == lq).all()
    assert ((plan["category"] == "mislabeled_hq") == (~lq & noisy)).all()
    assert ((plan["category"] == "clean") == (~lq & ~noisy)).all()
    assert (plan["true_label"] == np.asarray(CLASSES)[labels]).all()
    assert set(plan["label"]) <= set(CLASSES)


def test_degradation_and_severity_columns(labels):
    spec = CorruptSpec(quality_rate=0.2, degradations="blur,jpeg,haze", severity="2-4", per_image=2, seed=5)
    plan = plan_corruption(labels, classes=CLASSES, spec=spec)
    lq = plan["is_low_quality"]
    assert (plan.loc[~lq, "degradation"] == "").all()
    assert (plan.loc[~lq, "severity"] == 0).all()
    sev = plan.loc[lq, "severity"]
    assert sev.between(2, 4).all() and set(sev) == {2, 3, 4}
    parts = plan.loc[lq, "degradation"].str.split("+")
    assert all(len(p) == 2 and len(set(p)) == 2 and set(p) <= {"blur", "jpeg", "haze"} for p in parts)


def test_all_degradations_are_used(labels):
    plan = plan_corruption(labels, classes=CLASSES, spec=CorruptSpec(quality_rate=0.2, seed=6))
    used = set(plan.loc[plan["is_low_quality"], "degradation"])
    assert used == set(DEGRADATIONS)


def test_lq_labels_random_never_equals_true(labels):
    plan = plan_corruption(labels, classes=CLASSES, spec=CorruptSpec(quality_rate=0.4, lq_labels="random", seed=7))
    lq = plan.loc[plan["is_low_quality"]]
    assert (lq["label"] != lq["true_label"]).all()
    assert lq["is_label_noisy"].all()
    assert lq["label"].nunique() == K


def test_lq_labels_keep_always_equals_true(labels):
    plan = plan_corruption(labels, classes=CLASSES, spec=CorruptSpec(quality_rate=0.4, lq_labels="keep", seed=8))
    lq = plan.loc[plan["is_low_quality"]]
    assert (lq["label"] == lq["true_label"]).all()
    assert not lq["is_label_noisy"].any()
    assert (lq["category"] == "mislabeled_lq").all()  # LQ counts as mislabeled whatever label it keeps


def test_lq_labels_prior_follows_class_frequencies():
    skewed = np.repeat(np.arange(3), [6000, 3000, 1000])
    plan = plan_corruption(skewed, classes=["a", "b", "c"], spec=CorruptSpec(quality_rate=0.5, lq_labels="prior"))
    lq = plan.loc[plan["is_low_quality"], "label"]
    for name, p in zip("abc", (0.6, 0.3, 0.1), strict=True):
        assert _within_3_sigma(int((lq == name).sum()), len(lq), p)


def test_plan_is_reproducible_by_seed(labels):
    spec = CorruptSpec(quality_rate=0.25, seed=11)
    a = plan_corruption(labels, classes=CLASSES, spec=spec)
    b = plan_corruption(labels, classes=CLASSES, spec=spec)
    pd.testing.assert_frame_equal(a, b)
    c = plan_corruption(labels, classes=CLASSES, spec=CorruptSpec(quality_rate=0.25, seed=12))
    assert not a["is_low_quality"].equals(c["is_low_quality"])
    assert not a["label"].equals(c["label"])


# --------------------------------------------------------------------------------------------------------------
# Specs and presets


def test_presets_resolve():
    spec = resolve_spec("paper-35")
    assert spec.quality_rate == 0.35
    assert spec.label_rate == 0.2
    assert spec.severity == "4-5"
    assert spec.lq_labels == "random"
    assert set(PRESETS) == {"paper-15", "paper-35", "paper-45", "paper-55", "paper-75"}
    assert resolve_spec("paper-75").quality_rate == 0.75


def test_explicit_options_override_preset_values():
    spec = resolve_spec("paper-35", quality_rate=0.1, severity="2", seed=9, label_rate=None)
    assert spec.quality_rate == 0.1
    assert spec.severity == "2"
    assert spec.seed == 9
    assert spec.label_rate == 0.2  # None means "not given": the preset's value stays
    assert spec.preset == "paper-35"  # recorded in noise.json, so a reader knows the protocol by name
    assert resolve_spec(None) == CorruptSpec()


def test_a_matrix_replaces_the_preset_label_rate_instead_of_recording_it():
    # The matrix's rows are the rates: noise.json must not claim the preset's 0.2 was applied.
    spec = resolve_spec("paper-35", label_noise="matrix:m.csv")
    assert spec.label_rate is None
    assert spec.quality_rate == 0.35
    assert asdict(spec)["label_rate"] is None


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"preset": "paper-99"}, "unknown preset"),
        ({"label_rate": 1.5}, "label-rate must be between 0 and 1"),
        ({"quality_rate": -0.1}, "quality-rate must be between 0 and 1"),
        ({"severity": "7"}, "severity must be within 1..5"),
        ({"severity": "bad"}, "severity must be 1..5"),
        ({"severity": "5-3"}, "severity must be within 1..5"),
        ({"degradations": "blur,sparkle"}, "unknown degradation 'sparkle'"),
        ({"lq_labels": "maybe"}, "lq-labels must be one of"),
        ({"per_image": 0}, "per-image must be at least 1"),
        ({"image_format": "tiff"}, "image-format must be one of keep, png"),
        # Options that would otherwise be recorded in noise.json yet change nothing, or repeat a degradation:
        ({"class_map": "a=b"}, "--class-map applies to --label-noise asymmetric only"),
        ({"label_noise": "matrix:m.csv", "class_map": "a=b"}, "--class-map applies to --label-noise asymmetric"),
        ({"label_noise": "matrix:m.csv", "label_rate": 0.3}, "--label-rate does not apply to --label-noise matrix"),
        ({"degradations": "blur", "per_image": 2}, r"per-image 2 composes different degradations.*\(blur\)"),
        ({"label_noise": "none", "label_rate": 0.5}, "--label-rate 0.5 changes no label with --label-noise none"),
    ],
)
def test_invalid_specs(options, message):
    preset = options.pop("preset", None)
    with pytest.raises(ConfigError, match=message):
        resolve_spec(preset, **options)


def test_no_label_noise_takes_a_zero_rate_and_a_presets_rate_it_leaves_unused():
    assert resolve_spec(None, label_noise="none", label_rate=0).label_noise == "none"
    assert resolve_spec("paper-15", label_noise="none").label_rate == 0.2  # the preset's, not given: no conflict


# --------------------------------------------------------------------------------------------------------------
# corrupt_dataset / api.corrupt on digits


@pytest.fixture(scope="module")
def digits_run(digits_dir, tmp_path_factory):
    """digits corrupted once with 4 threads, and once more with the same seed and 1 thread."""
    base = tmp_path_factory.mktemp("corrupt")
    a = corrupt("digits", base / "a", label_rate=0.2, quality_rate=0.15, seed=1, workers=4)
    b = corrupt("digits", base / "b", label_rate=0.2, quality_rate=0.15, seed=1, workers=1)
    return a, b


def test_truth_counts_match_requested_rates(digits_run):
    result, _ = digits_run
    m = result.manifest
    n = len(m)
    assert n == 1797
    assert int(m["is_low_quality"].sum()) == round(0.15 * n)
    hq = ~m["is_low_quality"]
    assert _within_3_sigma(int(m.loc[hq, "is_label_noisy"].sum()), int(hq.sum()), 0.2)
    counts = m["category"].value_counts().to_dict()
    assert counts["mislabeled_lq"] == 270
    assert counts["mislabeled_hq"] == int(m.loc[hq, "is_label_noisy"].sum())
    assert counts["clean"] == n - 270 - counts["mislabeled_hq"]


def test_manifest_is_readable_with_truth(digits_run):
    result, _ = digits_run
    ds = create_dataset(result.out)
    assert len(ds) == 1797
    assert ds.truth() is not None
    assert ds.classes == tuple(str(i) for i in range(10))
    assert ds.channels == 1
    on_disk = pd.read_parquet(result.out / "manifest.parquet")
    assert list(on_disk.columns) == [
        "sample_id", "path", "label", "true_label", "is_label_noisy", "is_low_quality", "degradation", "severity",
        "category", "source_id",
    ]  # fmt: skip
    pd.testing.assert_frame_equal(on_disk, result.manifest)
    assert on_disk["path"].str.startswith("images/").all()
    # the true label is the class folder of the source image, which the source's id names
    assert (on_disk["true_label"] == on_disk["source_id"].str.split("/").str[0]).all()


def test_ids_and_file_numbers_do_not_give_the_true_class_away(digits_run):
    # A reviewer of a benchmark sees ids and paths on every report and page: the source's id names the class
    # folder, and files numbered in the source's order (class by class) would too, by their neighbours.
    result, _ = digits_run
    m = result.manifest
    assert (m["sample_id"] == m["path"]).all()
    assert not m["sample_id"].str.contains("|".join(f"^{c}/" for c in m["true_label"].unique())).any()
    numbers = m["path"].str.extract(r"images/(\d{7})\.")[0].astype(int).to_numpy()
    assert sorted(numbers) == list(range(len(m)))
    # files in number order: the next file is of the same true class about as often as chance (0.1 for ten
    # balanced classes), not about 0.99 as for files numbered class by class
    by_number = m["true_label"].to_numpy()[np.argsort(numbers)]
    same_as_next = (by_number[1:] == by_number[:-1]).mean()
    assert same_as_next < 0.15, same_as_next
    # the source's order and ids are kept for traceability
    assert m["source_id"].tolist() == sorted(m["source_id"], key=lambda sid: (int(sid.split("/")[0]), sid))


def test_same_seed_is_byte_identical_whatever_the_threads(digits_run, hash_tree):
    a, b = digits_run
    assert (a.out / "manifest.parquet").read_bytes() == (b.out / "manifest.parquet").read_bytes()
    assert hash_tree(a.out / "images") == hash_tree(b.out / "images")
    ja = json.loads((a.out / "noise.json").read_text())
    jb = json.loads((b.out / "noise.json").read_text())
    assert ja == jb


def test_different_seed_differs(digits_run, tmp_path):
    a, _ = digits_run
    c = corrupt("digits", tmp_path / "c", label_rate=0.2, quality_rate=0.15, seed=2)
    assert not c.manifest["is_low_quality"].equals(a.manifest["is_low_quality"])


def test_degraded_images_differ_and_clean_ones_are_copies(digits_run, digits_dir):
    result, _ = digits_run
    m = result.manifest
    for row in m.itertuples():
        src, dst = digits_dir / row.source_id, result.out / row.path
        if row.is_low_quality:
            assert dst.suffix == ".png"
            a, b = np.asarray(Image.open(src)), np.asarray(Image.open(dst))
            assert b.shape == a.shape == (32, 32)
            assert not np.array_equal(a, b), row
        else:
            assert src.read_bytes() == dst.read_bytes(), row
    n_files = sum(1 for p in (result.out / "images").rglob("*") if p.is_file())
    assert n_files == len(m)


def test_degraded_images_are_what_their_recorded_degradation_and_severity_give(digits_run, digits_dir):
    # The manifest's degradation and severity columns, with the per-image generator seeded by (seed, index), must
    # rebuild every degraded image exactly: the record says what was done, and the damage is reproducible.
    result, _ = digits_run
    seed = json.loads((result.out / "noise.json").read_text())["seed"]
    lq = result.manifest[result.manifest["is_low_quality"]]
    for index, row in lq.iterrows():
        source = np.asarray(Image.open(digits_dir / row.source_id))
        expected = degrade(
            source,
            names=row.degradation.split("+"),
            severity=int(row.severity),
            rng=np.random.default_rng([seed, index]),
        )
        np.testing.assert_array_equal(np.asarray(Image.open(result.out / row.path)), expected, err_msg=row.path)
    assert len(set(lq["degradation"])) == len(DEGRADATIONS)  # every degradation was rebuilt at least once


def test_composed_degradations_are_applied_in_their_recorded_order(digits_dir, tmp_path):
    # "a+b" means a, then b: most pairs do not commute (noise then blur is not blur then noise), so the record must
    # give the order, and rebuilding it reversed must not match.
    result = corrupt("digits", tmp_path / "out", label_rate=0.0, quality_rate=0.05, per_image=2, seed=4)
    lq = result.manifest[result.manifest["is_low_quality"]]
    order_mattered = 0
    for index, row in lq.iterrows():
        names = row.degradation.split("+")
        assert len(names) == 2 and names[0] != names[1]
        source = np.asarray(Image.open(digits_dir / row.source_id))

        def rebuilt(order: list[str], index=index, row=row, source=source) -> np.ndarray:
            rng = np.random.default_rng([4, index])
            return degrade(source, names=order, severity=int(row.severity), rng=rng)

        written = np.asarray(Image.open(result.out / row.path))
        np.testing.assert_array_equal(written, rebuilt(names), err_msg=row.path)
        order_mattered += not np.array_equal(written, rebuilt(names[::-1]))
    assert order_mattered > len(lq) // 2


def test_noise_json_records_options_matrix_and_counts(digits_run):
    result, _ = digits_run
    info = json.loads((result.out / "noise.json").read_text())
    m = result.manifest
    assert info == result.summary
    assert info["tool_version"] == qmix_cli.__version__
    assert info["seed"] == 1
    assert info["source"] == "digits"
    assert info["num_images"] == 1797
    assert info["classes"] == [str(i) for i in range(10)]
    assert info["options"] == asdict(CorruptSpec(label_rate=0.2, quality_rate=0.15, seed=1))
    assert info["counts"] == {c: int((m["category"] == c).sum()) for c in ("clean", "mislabeled_hq", "mislabeled_lq")}
    hq = m.loc[~m["is_low_quality"]]
    realised = np.asarray(info["realised_transition_matrix"])
    expected = pd.crosstab(hq["true_label"], hq["label"], normalize="index").reindex(
        index=info["classes"], columns=info["classes"], fill_value=0.0
    )
    assert realised.shape == (10, 10)
    np.testing.assert_allclose(realised, expected.to_numpy(), atol=1e-6)
    requested = np.asarray(info["requested_transition_matrix"])
    np.testing.assert_allclose(np.diag(requested), 0.8)
    np.testing.assert_allclose(requested.sum(axis=1), 1.0, atol=1e-5)
    assert info["realised_label_noise_rate_hq"] == pytest.approx(hq["is_label_noisy"].mean())
    assert info["realised_quality_rate"] == pytest.approx(270 / 1797)
    lq = m.loc[m["is_low_quality"], "degradation"].value_counts().to_dict()
    assert info["degradation_counts"] == lq
    assert info["unchanged_low_quality"] == []  # every planted low-quality digit is visibly degraded
    assert info["skipped"] == []


def test_noise_json_matrix_can_be_reused(digits_run, tmp_path):
    result, _ = digits_run
    info = json.loads((result.out / "noise.json").read_text())
    matrix_file = tmp_path / "matrix.json"
    matrix_file.write_text(json.dumps(info["requested_transition_matrix"]))
    spec = CorruptSpec(label_noise=f"matrix:{matrix_file}", quality_rate=0.0, seed=1)
    plan = plan_corruption(np.arange(1000) % 10, classes=[str(i) for i in range(10)], spec=spec)
    assert _within_3_sigma(int(plan["is_label_noisy"].sum()), 1000, 0.2)


def test_matrices_of_many_classes_go_to_npy_files_named_in_noise_json(make_image_folder, tmp_path, monkeypatch):
    monkeypatch.setattr(protocol, "INLINE_MATRIX_CLASSES", 2)  # three classes count as many here
    src = make_image_folder("src", classes=("a", "b", "c"), per_class=20, size=8)
    spec = CorruptSpec(label_rate=0.4, quality_rate=0.0, seed=3)
    result = corrupt_dataset(create_dataset(src), tmp_path / "out", spec=spec)
    info = json.loads((result.out / "noise.json").read_text())
    assert info == result.summary
    assert info["realised_transition_matrix"] == "realised_transition_matrix.npy"
    realised = np.load(result.out / info["realised_transition_matrix"], allow_pickle=False)
    m = result.manifest
    expected = pd.crosstab(m["true_label"], m["label"], normalize="index").reindex(
        index=info["classes"], columns=info["classes"], fill_value=0.0
    )
    np.testing.assert_allclose(realised, expected.to_numpy())
    requested = result.out / info["requested_transition_matrix"]
    np.testing.assert_allclose(np.diag(np.load(requested)), 0.6)
    again = CorruptSpec(label_noise=f"matrix:{requested}", quality_rate=0.0, seed=3)  # fed back as it is
    assert plan_corruption(np.arange(30) % 3, classes=info["classes"], spec=again)["is_label_noisy"].any()


def test_top_level_api_functions_survive_subpackage_imports():
    # Importing the subpackages (as every API call does) must not shadow the top-level functions.
    import qmix_cli.noise.protocol
    import qmix_cli.reporting.report

    assert qmix_cli.corrupt is corrupt
    assert callable(qmix_cli.audit)
    assert callable(qmix_cli.evaluate)
    assert callable(qmix_cli.train)


# --------------------------------------------------------------------------------------------------------------
# Safety: output handling, source untouched, atomic failure


def _small(make_image_folder):
    return make_image_folder("src", classes=("a", "b", "c"), per_class=4, size=24)


def test_source_is_unchanged(make_image_folder, tmp_path, hash_tree):
    src = _small(make_image_folder)
    before = hash_tree(src)
    result = corrupt(src, tmp_path / "out", quality_rate=0.5, label_rate=0.5, seed=3)
    assert hash_tree(src) == before
    assert int(result.manifest["is_low_quality"].sum()) == 6
    assert sorted(p.name for p in result.out.iterdir()) == ["images", "manifest.parquet", "noise.json"]


def test_an_earlier_output_is_refused_without_force_and_replaced_with_it(make_image_folder, tmp_path):
    src = _small(make_image_folder)
    out = tmp_path / "out"
    corrupt(src, out, seed=0)
    before = (out / "noise.json").read_text()
    with pytest.raises(QmixError, match=r"already exists.*force=True"):
        corrupt(src, out, seed=1)
    assert (out / "noise.json").read_text() == before
    corrupt(src, out, seed=1, force=True)
    assert json.loads((out / "noise.json").read_text())["seed"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "src"]  # no leftover old/temp dirs


def test_force_never_replaces_a_folder_that_is_no_earlier_output(make_image_folder, tmp_path, hash_tree):
    """A project folder, a run or another dataset named as --out by mistake: --force would have deleted it whole."""
    src = _small(make_image_folder)
    out = tmp_path / "project"
    (out / "results").mkdir(parents=True)
    (out / "analysis.ipynb").write_text("{}")
    (out / "results" / "table.csv").write_text("a\n1\n")
    before = hash_tree(out)
    with pytest.raises(ConfigError, match=r"^out .*project holds files but no qmix corrupt output"):
        corrupt(src, out, seed=0, force=True)
    assert hash_tree(out) == before


def test_existing_empty_out_is_accepted(make_image_folder, tmp_path):
    src = _small(make_image_folder)
    (tmp_path / "out").mkdir()
    corrupt(src, tmp_path / "out", seed=0)
    assert (tmp_path / "out" / "noise.json").is_file()


def test_out_inside_the_source_is_refused(make_image_folder, tmp_path, hash_tree):
    src = _small(make_image_folder)
    before = hash_tree(src)
    for out in (src / "noisy", src, tmp_path):
        with pytest.raises(ConfigError, match=r"^out .* the source dataset"):
            corrupt(src, out, seed=0)
    assert hash_tree(src) == before


def test_failure_midway_leaves_nothing_behind(make_image_folder, tmp_path, monkeypatch, hash_tree):
    src = _small(make_image_folder)
    before = hash_tree(src)
    original = protocol._process_image
    lock, calls = threading.Lock(), []

    def flaky(*args, **kwargs):
        with lock:
            calls.append(1)
            n = len(calls)
        if n == 5:
            raise RuntimeError("disk on fire")
        return original(*args, **kwargs)

    monkeypatch.setattr(protocol, "_process_image", flaky)
    parent = tmp_path / "outputs"
    parent.mkdir()
    with pytest.raises(RuntimeError, match="disk on fire"):
        corrupt(src, parent / "out", seed=0, workers=2)
    assert list(parent.iterdir()) == []  # neither the output nor its temp dir
    assert hash_tree(src) == before


def test_out_next_to_a_manifest_file_is_accepted(make_image_folder, tmp_path, hash_tree):
    # A manifest with absolute paths lives in its own folder; writing beside it touches no source file.
    root = make_image_folder("imgs")
    frame = create_dataset(root).frame
    manifest = tmp_path / "lists" / "subset.csv"
    manifest.parent.mkdir()
    frame.assign(path=[str(root / p) for p in frame["path"]]).to_csv(manifest, index=False)
    before = hash_tree(root)
    result = corrupt(manifest, tmp_path / "lists" / "noisy", quality_rate=0.5, seed=0, quiet=True)
    assert len(result.manifest) == len(frame)
    assert hash_tree(root) == before


def test_out_around_source_images_of_a_manifest_is_refused(make_image_folder, tmp_path, hash_tree):
    root = make_image_folder("imgs")
    frame = create_dataset(root).frame
    manifest = tmp_path / "subset.csv"
    frame.assign(path=[str(root / p) for p in frame["path"]]).to_csv(manifest, index=False)
    before = hash_tree(root)
    with pytest.raises(ConfigError, match="contains source images"):
        corrupt(manifest, root.parent / "imgs", force=True, seed=0, quiet=True)
    assert hash_tree(root) == before


@pytest.mark.parametrize("link", ["folder", "file"])
def test_force_never_deletes_source_images_reached_through_symlinks(make_image_folder, tmp_path, hash_tree, link):
    # A dataset assembled from symlinks: its images live in ``store``, which --out then names. Their paths never
    # mention ``store``, so only the files themselves tell.
    store = make_image_folder("store")
    ds = tmp_path / "ds"
    ds.mkdir()
    if link == "folder":
        (ds / "a").symlink_to(store / "a", target_is_directory=True)
    else:
        (ds / "a").mkdir()
        (ds / "a" / "kept.png").symlink_to(next((store / "a").iterdir()))
    for cls in ("b", "c"):
        shutil.copytree(store / cls, ds / cls)
    before = hash_tree(store)
    with pytest.raises(ConfigError, match="contains source images"):
        corrupt(ds, store, force=True, seed=0, quiet=True)
    assert hash_tree(store) == before


def test_failure_with_force_keeps_the_previous_output(make_image_folder, tmp_path, monkeypatch, hash_tree):
    src = _small(make_image_folder)
    out = tmp_path / "outputs" / "out"
    corrupt(src, out, seed=0)
    previous = hash_tree(out)

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(protocol, "_process_image", broken)
    with pytest.raises(RuntimeError):
        corrupt(src, out, seed=1, force=True)
    assert hash_tree(out) == previous
    assert [p.name for p in out.parent.iterdir()] == ["out"]


def test_a_second_interrupt_while_cleaning_up_leaves_no_partial_output(make_image_folder, tmp_path, monkeypatch):
    """Ctrl-C twice, or SIGTERM from both ``timeout`` and its process group: the second interrupt landed while the
    writing threads were waited for, the partial folder was removed under them, and they wrote part of it back."""
    src = make_image_folder("src", classes=("a", "b"), per_class=12, size=16)
    real_process, started = protocol._process_image, []

    def slow(*args, **kwargs):
        started.append(1)
        time.sleep(0.05)  # still writing when the cleanup begins
        return real_process(*args, **kwargs)

    class CtrlCAtTheThirdImage(SilentReporter):
        def task(self, description, total):
            done = itertools.count(1)

            def advance(n=1):
                if next(done) == 3:
                    raise KeyboardInterrupt

            return advance

    real_shutdown, waits = ThreadPoolExecutor.shutdown, []

    def shutdown(self, *args, **kwargs):
        waits.append(kwargs)
        if len(waits) == 1:
            raise KeyboardInterrupt  # the second signal, while the threads are waited for
        return real_shutdown(self, *args, **kwargs)

    monkeypatch.setattr(protocol, "_process_image", slow)
    monkeypatch.setattr(ThreadPoolExecutor, "shutdown", shutdown)
    spec = CorruptSpec(quality_rate=0.5, seed=0)
    with pytest.raises(KeyboardInterrupt):
        corrupt_dataset(create_dataset(src), tmp_path / "out", spec=spec, workers=2, reporter=CtrlCAtTheThirdImage())
    time.sleep(0.2)  # a thread left running would write now
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]  # no hidden .out.*.tmp
    assert len(waits) == 2 and waits[-1]["cancel_futures"]
    assert len(started) < 24  # the images not yet begun were cancelled, not written to be thrown away


def test_corrupt_dataset_directly_with_rgb_jpeg_source(make_image_folder, tmp_path):
    src = make_image_folder("jpg", classes=("a", "b"), per_class=5, size=24, suffix=".jpg")
    ds = create_dataset(src)
    spec = CorruptSpec(quality_rate=0.4, degradations="noise", severity="5", seed=0)
    result = corrupt_dataset(ds, tmp_path / "out", spec=spec, workers=1)
    m = result.manifest
    lq = m["is_low_quality"]
    assert lq.sum() == 4
    assert m.loc[lq, "path"].str.endswith(".png").all()  # degraded images are re-encoded losslessly
    assert m.loc[~lq, "path"].str.endswith(".jpg").all()
    for p in m.loc[lq, "path"]:
        with Image.open(result.out / p) as img:
            assert img.mode == "RGB" and img.size == (24, 24)
    reread = create_dataset(result.out)
    assert reread.channels == 3 and len(reread) == 10
    assert result.summary["file_types"] == {"high_quality": {".jpg": 6}, "low_quality": {".png": 4}}


def test_a_python_caller_with_a_console_reads_the_notes_the_cli_prints_in_its_own_terms(make_image_folder, tmp_path):
    # The notes were the CLI's own: a notebook that passed a console learnt nothing of the file types; then they
    # named the CLI's options, which a notebook does not pass.
    src = make_image_folder("jpg", classes=("a", "b"), per_class=5, size=24, suffix=".jpg")
    log = io.StringIO()
    console = Console(file=log, width=300)
    result = corrupt(src, tmp_path / "out", quality_rate=0.4, lq_labels="prior", seed=0, console=console)
    assert protocol.corrupt_notes(result.summary) == [
        "note: the degraded images are .png files and the others .jpg, so the file type gives the truth away; "
        "--image-format png writes every image alike"
    ]
    assert (
        "note: the degraded images are .png files and the others .jpg, so the file type gives the truth away; "
        'image_format="png" writes every image alike'
    ) in log.getvalue()
    png = corrupt(src, tmp_path / "png", quality_rate=0.4, lq_labels="prior", seed=0, image_format="png", quiet=True)
    assert protocol.corrupt_notes(png.summary) == []
    random_labels = corrupt(src, tmp_path / "random", quality_rate=0.4, seed=0, image_format="png", console=console)
    (note,) = protocol.corrupt_notes(random_labels.summary)  # two classes: the other class's label, always
    assert note.startswith("note: with two classes, --lq-labels random")
    python = note.replace("--lq-labels random", 'lq_labels="random"').replace("--lq-labels prior", 'lq_labels="prior"')
    assert python in log.getvalue()
    assert "--" not in log.getvalue()  # the CLI's own reader still reads them as typed (tests/cli/test_cli_corrupt.py)


def test_image_format_png_writes_every_image_as_the_png_of_what_training_reads(make_image_folder, tmp_path, hash_tree):
    src = make_image_folder("jpg", classes=("a", "b"), per_class=5, size=24, suffix=".jpg")
    ds = create_dataset(src)
    spec = CorruptSpec(quality_rate=0.4, degradations="noise", severity="5", seed=0, image_format="png")
    result = corrupt_dataset(ds, tmp_path / "out", spec=spec, workers=1)
    m = result.manifest
    assert m["path"].str.endswith(".png").all()
    assert result.summary["file_types"] == {"high_quality": {".png": 6}, "low_quality": {".png": 4}}
    assert result.summary["options"]["image_format"] == "png"
    for source_id, path, lq in m[["source_id", "path", "is_low_quality"]].itertuples(index=False):
        with Image.open(src / source_id) as a, Image.open(result.out / path) as b:
            same = np.array_equal(native_array(a), np.asarray(b))
        assert same != lq  # untouched images keep their decoded pixels exactly; degraded ones do not
    # The same bytes again, whatever the threads.
    again = corrupt_dataset(ds, tmp_path / "again", spec=spec, workers=3)
    assert hash_tree(again.out) == hash_tree(result.out)
    # The same plan as with the files kept: only how the images are stored differs.
    kept = corrupt_dataset(ds, tmp_path / "kept", spec=replace(spec, image_format="keep"), workers=1)
    cols = ["source_id", "label", "true_label", "category", "degradation", "severity"]
    pd.testing.assert_frame_equal(kept.manifest[cols], m[cols])
    assert [Path(p).stem for p in kept.manifest["path"]] == [Path(p).stem for p in m["path"]]


@pytest.mark.parametrize("mode", ["I;16", "I;16B"])
def test_a_degraded_16_bit_scan_stays_one_channel_and_keeps_its_contrast(tmp_path, mode):
    scan = np.full((24, 24), 1000, dtype=np.uint16)
    scan[12:] = 4000
    src = tmp_path / "scan.tif"
    Image.frombytes(mode, (24, 24), scan.astype(">u2" if mode.endswith("B") else "<u2").tobytes()).save(src)
    assert Image.open(src).mode == mode
    protocol._process_image(src, tmp_path / "out.png", names=["noise"], severity=1, seed=0, index=0)
    with Image.open(tmp_path / "out.png") as img:
        out = np.asarray(img)
    assert img.mode == "L"  # not an RGB copy of a grey scan
    assert out[:12].mean() < 60 and out[12:].mean() > 195  # scaled by the scan's range, neither clipped nor flat


def test_a_source_id_column_is_replaced_only_in_an_earlier_output(make_image_folder, tmp_path, hash_tree):
    # The output's source_id is each image's id in the source: a user's own column of that name (a site's id, a
    # group column) is refused rather than lost; an earlier qmix corrupt output's is replaced, as its category is.
    root = make_image_folder("imgs", classes=("a", "b"), per_class=6)
    frame = create_dataset(root).frame
    frame.assign(source_id=[f"site{i % 2}" for i in range(len(frame))]).to_csv(root / "manifest.csv", index=False)
    before = hash_tree(root)
    with pytest.raises(QmixError, match=r"has a column source_id, which qmix corrupt writes .*: rename that column$"):
        corrupt(root / "manifest.csv", tmp_path / "noisy", preset="paper-35", seed=3, quiet=True)
    assert hash_tree(root) == before and not (tmp_path / "noisy").exists()
    (root / "manifest.csv").unlink()
    first = corrupt(root, tmp_path / "first", preset="paper-35", seed=3, quiet=True)
    again = corrupt(tmp_path / "first", tmp_path / "again", preset="paper-35", seed=4, quiet=True)
    assert again.manifest["source_id"].tolist() == first.manifest["sample_id"].tolist()
    assert list(again.manifest.columns).count("source_id") == 1


def test_files_are_written_in_the_order_of_their_numbers(digits_run):
    # Their times then say nothing of the source's order, which runs class by class for a folder or built-in set.
    result, _ = digits_run
    m = result.manifest
    by_time = m.assign(t=[(result.out / p).stat().st_mtime_ns for p in m["path"]]).sort_values(["t", "path"])
    true = by_time["true_label"].to_numpy()
    assert (true[1:] == true[:-1]).mean() < 0.15  # about 0.1 by chance; 0.99 when written in the source's order


def test_output_paths_are_unique_when_stems_collide(tmp_path, write_image):
    for c in ("a", "b"):
        for i in range(3):
            write_image(tmp_path / "src" / c / f"x{i}.png", seed=i)
            write_image(tmp_path / "src" / c / f"x{i}.jpg", seed=10 + i)
    result = corrupt(tmp_path / "src", tmp_path / "out", quality_rate=0.5, seed=0)
    m = result.manifest
    assert not m["path"].duplicated().any(), m.loc[m["path"].duplicated(keep=False), ["sample_id", "path"]]
    assert len(list(Path(result.out, "images").rglob("*.*"))) == len(m)


def test_the_source_manifests_own_columns_follow_each_image(make_image_folder, tmp_path):
    root = make_image_folder("imgs", classes=("a", "b"), per_class=6)
    frame = create_dataset(root).frame
    source = frame.assign(
        patient_id=[f"p{i}" for i in range(len(frame))],
        category="not the truth",  # a column the corruption writes: its own replaces it
    )
    source.to_csv(root / "manifest.csv", index=False)
    result = corrupt(root, tmp_path / "noisy", preset="paper-35", seed=3, quiet=True)
    written = pd.read_parquet(tmp_path / "noisy" / "manifest.parquet")
    assert written["patient_id"].tolist() == source["patient_id"].tolist()  # row by row, in the source's order
    assert (written["source_id"] == source["sample_id"]).all()
    assert set(written["category"]) <= {"clean", "mislabeled_hq", "mislabeled_lq"}
    assert written["category"].tolist() == result.manifest["category"].tolist()
    assert list(written.columns).count("category") == 1
