"""qmix against cleanlab + cleanvision, CE and DivideMix on corrupted Fashion-MNIST; writes RESULTS.md.

For each noise preset the same corrupted training subset is given to:

* ``qmix``, ``dividemix``, ``ce``: trained on the qmix engine, then ``qmix audit`` + ``qmix evaluate``; the
  ``… classifier read-out`` rows fit the final separation on each net's own classifier (``audit_scores:
  classifier``, the paper's read-out) instead of the default out-of-fold probes;
* ``cleanlab``: out-of-fold softmax from k-fold cross-validation of the same backbone trained with CE (our ``ce``
  method, same settings), then ``cleanlab.filter.find_label_issues`` and
  ``cleanlab.rank.get_label_quality_scores``; its test accuracy is that of the k fold models' mean softmax;
* ``cleanvision``: ``Imagelab`` image-quality issues on the same image files;
* ``cleanlab+cleanvision``: the 3-way verdict a user would build from both: label issue and quality issue →
  mislabeled_lq, label issue only → mislabeled_hq, otherwise clean (the issue's rule); ``…+quality→lq`` also
  calls a quality issue alone mislabeled_lq (our protocol counts every low-quality image as mislabeled);
* ``oof-ce + 2-D GMM``: the QMix separation (the paper's 3-component GMM, and qmix's default 10 components, on
  normalised loss and entropy) fitted on the cleanlab out-of-fold softmax, a reference for what separation alone
  achieves without co-training.

Column ``ceiling``: the macro-F1 of a classifier fitted on the truth over each row's two separation axes
(cross-validated): how much of a row's shortfall a better separation could recover, and how much needs better
scores, i.e. better-trained nets.

Usage (needs ``pip install -e '.[bench]'``)::

    python benchmarks/bench_baselines.py --train-size 5000 --epochs 12 --out benchmarks/RESULTS.md

With ``--seeds 1,2,3`` every preset is run once per seed (a new training subset, corruption, initialisation and
fold split each time) and the tables give the mean ± standard deviation over seeds, each seed's macro-F1, and
qmix's margin over the best baseline seed by seed: one run's macro-F1 moves by a few hundredths with the seed
alone, so method comparisons need several. ``--no-readouts`` skips the classifier read-out rows (an ablation
that trains qmix and ce a second time). Every row of every seed also goes to a JSON file next to ``--out``.

Wall times are measured on this machine in this run; cleanlab's includes its k trainings.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from _common import (
    add_engine_args,
    engine_options,
    markdown_table,
    mean_sd_text,
    run_engine_method,
    separation_ceiling,
    stratified_subset,
)
from sklearn.model_selection import StratifiedKFold

from qmix_cli import __version__
from qmix_cli.api import corrupt, train
from qmix_cli.categories import CATEGORIES
from qmix_cli.data.manifest import create_dataset
from qmix_cli.engine.scoring import compute_scores, fit_separation
from qmix_cli.engine.separation import hard_groups
from qmix_cli.reporting.evaluate import evaluate_report
from qmix_cli.reporting.report import suggest_labels
from qmix_cli.reporting.score import load_run, score_dataset

# Fashion-MNIST's usual asymmetric noise: confusable garments and shoes flip into each other.
FMNIST_ASYMMETRIC = "t-shirt=shirt,shirt=t-shirt,pullover=coat,coat=pullover,sandal=sneaker,sneaker=sandal"

# `qmix corrupt`'s paper presets (20 % label noise on good images, strongly degraded images at severity 4-5 with
# random labels), the second with Fashion-MNIST's asymmetric label noise instead of symmetric.
PRESETS: dict[str, dict[str, Any]] = {
    "paper-15": {"preset": "paper-15"},
    "paper-35-asym": {
        "preset": "paper-35",
        "label_noise": "asymmetric",
        "class_map": FMNIST_ASYMMETRIC,
    },
}

# (row label, method, options): the three methods as shipped, then the paper's read-out of the final separation,
# each net's own classifier, for qmix (the ablation of the audit probe) and for ce (the strongest baseline).
ENGINE_RUNS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("qmix", "qmix", {}),
    ("dividemix", "dividemix", {}),
    ("ce", "ce", {}),
)
READOUT_RUNS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("qmix, classifier read-out", "qmix", {"audit_scores": "classifier"}),
    ("ce, classifier read-out", "ce", {"audit_scores": "classifier"}),
)
# What the issue calls the baselines qmix must beat: the user's cleanlab + cleanvision verdict (either way of
# combining the two), and ce and dividemix on the same engine.
BASELINES = ("dividemix", "ce", "cleanlab+cleanvision", "cleanlab+cleanvision, quality→lq")
SUMMARY_COLS = ["macro-F1", "ceiling", "detect F1", "relabel precision", "wrong labels fixed", "AUC mislabeled",
                "AUC low quality", "test acc", "wall s"]  # fmt: skip

# cleanvision issue types that describe image quality (duplicates are not; grayscale is every Fashion-MNIST image).
QUALITY_ISSUES = ("dark", "light", "blurry", "low_information", "odd_aspect_ratio", "odd_size")
CATEGORY_NAMES = np.array(CATEGORIES, dtype=object)  # indexed by separation group (0 clean, 1 Mis-H, 2 Mis-L)


def verdict_frame(
    ids: np.ndarray,
    *,
    label_issue: np.ndarray,
    quality_issue: np.ndarray,
    label_score: np.ndarray,
    lq_score: np.ndarray,
    quality_alone_is_lq: bool,
) -> pd.DataFrame:
    """A minimal report (the columns `evaluate_report` needs) from a label-issue and a quality-issue flag."""
    category = np.where(label_issue, np.where(quality_issue, "mislabeled_lq", "mislabeled_hq"), "clean")
    if quality_alone_is_lq:
        category = np.where(quality_issue, "mislabeled_lq", category)
    return pd.DataFrame(
        {
            "sample_id": ids,
            "category": category,
            "is_label_issue": category != "clean",
            "p_clean": label_score,
            "p_mislabeled_lq": lq_score,
        }
    )


def with_suggestions(frame: pd.DataFrame, oof: dict) -> pd.DataFrame:
    """``frame`` (a minimal report in ``oof``'s row order) with the label each verdict suggests, from the
    out-of-fold probabilities by qmix's rule (`suggest_labels`), so its relabels are scored like qmix's."""
    codes = pd.Categorical(frame["category"], categories=CATEGORIES).codes
    suggested = suggest_labels(probs=oof["probs"], given_labels=oof["labels"], categories=codes)
    names = np.array(oof["classes"], dtype=object)
    return frame.assign(suggested_label=np.where(suggested >= 0, names[suggested.clip(min=0)], None))


def cleanlab_oof(noisy: Path, work: Path, *, folds: int, device: str, test: str, **options: Any) -> dict:
    """Out-of-fold softmax (N, K) of the ``ce`` method, and the fold models' mean softmax on ``test``."""
    ds = create_dataset(noisy, check_images=False)
    frame = ds.frame.assign(path=ds.file_paths)
    labels = ds.labels
    oof = np.zeros((len(frame), len(ds.classes)), dtype=np.float64)
    test_ds = create_dataset(test, classes=ds.classes, min_classes=1)
    test_probs = np.zeros((len(test_ds), len(ds.classes)))
    split = StratifiedKFold(n_splits=folds, shuffle=True, random_state=options["seed"])
    start = time.perf_counter()
    for k, (fit_idx, held_idx) in enumerate(split.split(np.zeros(len(labels)), labels)):
        fold_csv = work / f"fold{k}.csv"
        frame.iloc[fit_idx][["sample_id", "path", "label"]].to_csv(fold_csv, index=False)
        result = train(fold_csv, work / f"run-fold{k}", method="ce", device=device, force=True, quiet=True, **options)
        run = load_run(result.run_dir, device=device)
        held_csv = work / f"held{k}.csv"
        frame.iloc[held_idx][["sample_id", "path", "label"]].to_csv(held_csv, index=False)
        held = create_dataset(held_csv, classes=ds.classes, min_classes=1)
        oof[held_idx] = score_dataset(run, held).probs
        test_probs += score_dataset(run, test_ds).probs / folds
    return {
        "probs": oof,
        "labels": labels,
        "ids": frame["sample_id"].to_numpy(dtype=object),
        "classes": list(ds.classes),
        "paths": frame["path"].tolist(),
        "test_acc": float((test_probs.argmax(1) == test_ds.labels).mean()),
        "train_s": time.perf_counter() - start,
    }


def cleanlab_flags(oof: dict) -> tuple[np.ndarray, np.ndarray, float]:
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    start = time.perf_counter()
    issues = find_label_issues(oof["labels"], oof["probs"])
    scores = get_label_quality_scores(oof["labels"], oof["probs"])
    return issues, scores, time.perf_counter() - start


def cleanvision_flags(paths: list[str]) -> tuple[np.ndarray, np.ndarray, float]:
    from cleanvision import Imagelab

    start = time.perf_counter()
    lab = Imagelab(filepaths=paths)
    lab.find_issues(issue_types={name: {} for name in QUALITY_ISSUES}, n_jobs=1 if sys.platform == "darwin" else None)
    issues = lab.issues.reindex(paths)
    flag_cols = [f"is_{n}_issue" for n in QUALITY_ISSUES if f"is_{n}_issue" in issues.columns]
    score_cols = [f"{n}_score" for n in QUALITY_ISSUES if f"{n}_score" in issues.columns]
    flags = issues[flag_cols].fillna(False).to_numpy(dtype=bool).any(axis=1)
    worst = issues[score_cols].fillna(1.0).to_numpy(dtype=np.float64).min(axis=1)  # cleanvision: low = bad
    return flags, 1.0 - worst, time.perf_counter() - start


def oof_gmm_frame(oof: dict, *, components: int, seed: int) -> pd.DataFrame:
    scores = compute_scores(oof["probs"][None], oof["labels"])
    sep = fit_separation(scores.loss[0], scores.uncertainty[0], kind="quality", components=components, seed=seed)
    post = sep.posteriors(scores.loss[0], scores.uncertainty[0])
    groups = hard_groups(post, p_threshold=0.5)
    return pd.DataFrame(
        {
            "sample_id": oof["ids"],
            "category": CATEGORY_NAMES[groups],
            "is_label_issue": groups != 0,
            "p_clean": post[:, 0],
            "p_mislabeled_lq": post[:, 2],
        }
    )


def summary_row(name: str, ev: dict, **extra: Any) -> dict:
    per = ev["per_category"]
    row = {"method": name}
    for cat, short in (("clean", "clean"), ("mislabeled_hq", "hq"), ("mislabeled_lq", "lq")):
        row[f"P {short}"] = per[cat]["precision"]
        row[f"R {short}"] = per[cat]["recall"]
        row[f"F1 {short}"] = per[cat]["f1"]
    row["macro-F1"] = ev["macro_f1"]
    row["detect F1"] = ev["detection"]["f1"]
    row["relabel precision"] = ev["relabel"]["precision"]
    row["wrong labels fixed"] = ev["relabel"]["recall"]
    row["AUC mislabeled"] = ev["roc_auc"]["mislabeled"]
    row["AUC low quality"] = ev["roc_auc"]["low_quality"]
    row.update(extra)
    return row


def corrupted_subset(
    spec: dict,
    work: Path,
    *,
    size: int,
    seed: int,
    source: str = "fashion-mnist",
    imbalance: float = 1.0,
    classes: tuple[str, ...] = (),
) -> Path:
    """``work/noisy``: a subset of ``size`` images of ``source`` (class-balanced, or long-tailed by
    ``imbalance``; of ``classes`` only where some are named: `stratified_subset`) corrupted by the preset ``spec``."""
    work.mkdir(parents=True, exist_ok=True)
    out = work / "subset.csv"
    subset = stratified_subset(source, size=size, seed=seed, out=out, imbalance=imbalance, classes=classes)
    noisy = work / "noisy"
    corrupt(subset, noisy, seed=seed, force=True, quiet=True, **spec)
    return noisy


def run_preset(name: str, spec: dict, args: argparse.Namespace, work: Path, *, seed: int) -> pd.DataFrame:
    """Every row of one preset for one seed: subset, corruption, the engine methods and the cleanlab family."""
    noisy = corrupted_subset(spec, work, size=args.train_size, seed=seed)
    truth = pd.read_parquet(noisy / "manifest.parquet")
    options = engine_options(args, seed=seed, epochs=args.epochs)
    rows = []
    for label, method, extra in ENGINE_RUNS + (READOUT_RUNS if args.readouts else ()):
        tag = method if not extra else f"{method}-{'-'.join(map(str, extra.values()))}"
        r = run_engine_method(method, noisy, work, test=args.test, device=args.device, tag=tag, **options, **extra)
        extra_cols = {"ceiling": r["ceiling_macro_f1"], "test acc": r["test_acc"], "wall s": r["wall_s"]}
        rows.append(summary_row(label, r["evaluation"], **extra_cols))
        print(json.dumps({"preset": name, "seed": seed, **rows[-1]}), flush=True)

    oof = cleanlab_oof(noisy, work, folds=args.folds, device=args.device, test=args.test, **options)
    label_issue, label_score, cl_s = cleanlab_flags(oof)
    quality_issue, lq_score, cv_s = cleanvision_flags(oof["paths"])
    cl_wall = oof["train_s"] + cl_s
    common = dict(ids=oof["ids"], label_score=label_score, lq_score=lq_score)
    no_quality = np.zeros_like(quality_issue)
    variants = {
        "cleanlab": (dict(label_issue=label_issue, quality_issue=no_quality, quality_alone_is_lq=False), cl_wall),
        "cleanlab+cleanvision": (
            dict(label_issue=label_issue, quality_issue=quality_issue, quality_alone_is_lq=False),
            cl_wall + cv_s,
        ),
        "cleanlab+cleanvision, quality→lq": (
            dict(label_issue=label_issue, quality_issue=quality_issue, quality_alone_is_lq=True),
            cl_wall + cv_s,
        ),
    }
    for label, (flags, wall) in variants.items():
        ev = evaluate_report(report=with_suggestions(verdict_frame(**common, **flags), oof), truth=truth)
        rows.append(summary_row(label, ev, **{"ceiling": np.nan, "test acc": oof["test_acc"], "wall s": wall}))
        print(json.dumps({"preset": name, "seed": seed, **rows[-1]}), flush=True)
    oof_scores = compute_scores(oof["probs"][None], oof["labels"])
    oof_truth = truth.set_index("sample_id").loc[oof["ids"], "category"].to_numpy()
    ceiling = separation_ceiling(oof_scores.loss[0], oof_scores.uncertainty[0], oof_truth, seed=seed)
    # The paper's three Gaussians, and the ten that qmix uses by default (docs/decisions.md).
    for components in (3, 10):
        report = with_suggestions(oof_gmm_frame(oof, components=components, seed=seed), oof)
        ev = evaluate_report(report=report, truth=truth)
        label = f"oof-ce + 2-D GMM ({components} comp.)"
        rows.append(summary_row(label, ev, **{"ceiling": ceiling, "test acc": oof["test_acc"], "wall s": cl_wall}))
    noise = json.loads((noisy / "noise.json").read_text())
    table = pd.DataFrame(rows).set_index("method")
    table.attrs["noise"] = noise
    return table


def seed_statistics(tables: dict[int, pd.DataFrame]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Mean and standard deviation (ddof 1; NaN for one seed) over seeds of every cell, rows in table order."""
    stacked = pd.concat(tables.values(), keys=list(tables), names=["seed", "method"])
    order = next(iter(tables.values())).index
    grouped = stacked.groupby(level="method", sort=False)
    return grouped.mean().reindex(order), grouped.std(ddof=1).reindex(order)


def margin_over_baselines(tables: dict[int, pd.DataFrame]) -> pd.Series:
    """Per seed: qmix's macro-F1 minus the best baseline's (`BASELINES`) in the same run."""
    margins = {}
    for seed, table in tables.items():
        baselines = [b for b in BASELINES if b in table.index]
        margins[seed] = table.at["qmix", "macro-F1"] - table.loc[baselines, "macro-F1"].max()
    return pd.Series(margins)


def _mean_sd(mean: pd.DataFrame, sd: pd.DataFrame) -> pd.DataFrame:
    """Cells as 'mean ± sd' strings (mean alone where the sd is NaN)."""
    return pd.DataFrame(
        {col: [mean_sd_text(m, s) for m, s in zip(mean[col], sd[col], strict=True)] for col in mean.columns},
        index=mean.index,
    )


def render(tables: dict[str, dict[int, pd.DataFrame]], args: argparse.Namespace, seconds: float) -> str:
    versions = ", ".join(
        f"{p} {version(p)}" for p in ("torch", "timm", "scikit-learn", "cleanlab", "cleanvision") if _has(p)
    )
    seeds = args.seeds
    several = len(seeds) > 1
    lines = [
        "# Benchmark results: qmix vs cleanlab + cleanvision, CE and DivideMix",
        "",
        "Produced by `benchmarks/bench_baselines.py` (see its docstring for what each row is). Command:",
        "",
        f"    python {' '.join(sys.argv)}",
        "",
        f"- qmix {__version__}; {versions}",
        f"- machine: {platform.machine()}, {torch.get_num_threads()} torch threads, device {args.device}; "
        f"{time.strftime('%Y-%m-%d')}; total {seconds / 60:.0f} min",
        f"- data: Fashion-MNIST train, stratified subset of {args.train_size} images; seeds "
        f"{', '.join(map(str, seeds))} (each seed draws its own subset, corruption, initialisation and folds); "
        f"test accuracy on `{args.test}`",
        f"- training: `{args.model}` at {args.img_size} px, {args.epochs} epochs, batch {args.batch_size}, "
        f"{args.folds}-fold cross-validation for cleanlab",
        "- P / R / F1 per category (clean, mislabeled-HQ, mislabeled-LQ), 3-way macro-F1, mislabeled-detection F1,"
        " ROC-AUCs of the scores (mislabeled: 1 − p_clean or cleanlab's label quality; low quality: p_mislabeled_lq"
        " or cleanvision's worst quality score), wall time of training + audit",
        "- relabel precision / wrong labels fixed: of the labels the verdict would change (mislabeled-HQ rows, the"
        " most probable other class suggested: the out-of-fold probes' for the engine methods, the out-of-fold CE"
        " model's for the cleanlab rows), the share changed to the true label; and the share of wrong labels on"
        " good images fixed",
        "- ceiling: the macro-F1 a classifier fitted on the truth reaches from the same two separation axes (loss,"
        " uncertainty; gradient-boosted trees, 5-fold cross-validated): roughly the best any separation of those"
        " scores can do",
    ]
    if several:
        lines.append(f"- cells: mean ± standard deviation over the {len(seeds)} seeds")
    lines.append("")
    for name, by_seed in tables.items():
        mean, sd = seed_statistics(by_seed)
        noise = next(iter(by_seed.values())).attrs.get("noise", {})
        lines += [
            f"## {name}",
            "",
            f"`qmix corrupt` options: `{json.dumps(PRESETS.get(name, {}))}` "
            f"(severity {noise.get('options', {}).get('severity', '?')}). "
            f"Realised noise (seed {seeds[0]}): {noise.get('realised_label_noise_rate_hq', float('nan')):.1%} wrong "
            f"labels among high-quality images, {noise.get('realised_quality_rate', float('nan')):.1%} degraded "
            f"images (counts: `{json.dumps(noise.get('counts', {}))}`).",
            "",
            markdown_table(_mean_sd(mean, sd)[SUMMARY_COLS] if several else mean[SUMMARY_COLS]),
            "",
        ]
        if several:
            per_seed = pd.DataFrame({f"seed {s}": t["macro-F1"] for s, t in by_seed.items()})
            margin = margin_over_baselines(by_seed)
            lines += [
                "Macro-F1 by seed:",
                "",
                markdown_table(per_seed),
                "",
                f"qmix's macro-F1 minus the best baseline's ({', '.join(BASELINES)}), seed by seed: "
                + ", ".join(f"{m:+.3f}" for m in margin)
                + f" (mean {margin.mean():+.3f}).",
                "",
            ]
        lines += [
            "Per category (P = precision, R = recall" + (", means over seeds):" if several else "):"),
            "",
            markdown_table(mean.drop(columns=SUMMARY_COLS)),
            "",
        ]
    return "\n".join(lines)


def _seed_list(text: str) -> list[int]:
    seeds = [int(part) for part in text.split(",") if part.strip()]
    if not seeds or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"need distinct integer seeds, got {text!r}")
    return seeds


def add_preset_args(parser: argparse.ArgumentParser, *, seeds: list[int]) -> None:
    """Options that fix the corrupted subsets and how every engine run trains (shared with bench_ablation.py)."""
    add_engine_args(parser)
    parser.add_argument("--train-size", type=int, default=5000)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--presets", default=",".join(PRESETS))
    parser.add_argument("--test", default="fashion-mnist:test")
    parser.add_argument("--seeds", type=_seed_list, default=seeds, help="comma-separated, e.g. 1,2,3")


def _has(package: str) -> bool:
    try:
        version(package)
    except Exception:
        return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_preset_args(parser, seeds=[1])
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--readouts", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/RESULTS.md"))
    args = parser.parse_args()

    work = args.work or Path(tempfile.mkdtemp(prefix="qmix-bench-baselines-"))
    start = time.perf_counter()
    tables: dict[str, dict[int, pd.DataFrame]] = {}
    for name in args.presets.split(","):
        tables[name] = {
            seed: run_preset(name, PRESETS[name], args, work / f"{name}-seed{seed}", seed=seed) for seed in args.seeds
        }
    text = render(tables, args, time.perf_counter() - start)
    args.out.write_text(text + "\n", encoding="utf-8")
    rows = [
        {"preset": name, "seed": seed, **{k: None if pd.isna(v) else v for k, v in row.items()}}  # NaN is not JSON
        for name, by_seed in tables.items()
        for seed, table in by_seed.items()
        for row in table.reset_index().to_dict(orient="records")
    ]
    text_json = json.dumps(rows, indent=1, default=float, allow_nan=False)
    args.out.with_suffix(".json").write_text(text_json + "\n", encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
