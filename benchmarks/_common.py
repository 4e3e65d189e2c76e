"""Helpers shared by the benchmark scripts (not part of the package): subsets, tables, one engine method."""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import yaml
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.metrics import f1_score, roc_auc_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict

from qmix_cli.api import audit, evaluate, train
from qmix_cli.config import load_config_file, resolve_config
from qmix_cli.data.cache import DecodeTarget, cached_images
from qmix_cli.data.manifest import create_dataset
from qmix_cli.engine.trainer import RESUMABLE
from qmix_cli.io import read_metrics


def sync(device: torch.device) -> None:
    """Wait for the device's queued work, so that a timer read next counts it (no-op off CUDA)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def first_load(source: str | Path, *, target: DecodeTarget, fill: bool = True) -> tuple[float, np.ndarray]:
    """Seconds from a dataset's manifest to its cached array at ``target`` with an empty cache directory, and the
    array: every image checked and, with ``fill``, decoded into the cache in the same pass (what `qmix train` and
    `qmix audit` do), else decoded again afterwards by `cached_images`."""
    with tempfile.TemporaryDirectory(prefix="qmix-bench-first-load-") as cache:
        start = time.perf_counter()
        ds = create_dataset(source, cache_dir=cache, decode_to=target if fill else None)
        channels = target.channels or ds.channels or 3
        arr = cached_images(ds, size=target.size, channels=channels, cache_dir=cache, jpeg_scale=target.jpeg_scale)
        seconds = time.perf_counter() - start
        return seconds, np.array(arr)


def class_sizes(n_classes: int, *, size: int, imbalance: float = 1.0) -> np.ndarray:
    """Images per class for a subset of about ``size``: equal, or falling geometrically from the largest class to
    the smallest, ``imbalance`` times fewer (a long tail, as in most medical and curated datasets).

    Returns
    -------
    np.ndarray
        (n_classes,) int, largest first; sums to ``size`` up to rounding.
    """
    if imbalance < 1:
        raise ValueError(f"imbalance must be >= 1 (largest class / smallest), got {imbalance}")
    shares = imbalance ** -(np.arange(n_classes) / max(n_classes - 1, 1))
    return np.maximum(1, np.round(size * shares / shares.sum())).astype(int)


def stratified_subset(
    source: str, *, size: int, seed: int, out: Path, imbalance: float = 1.0, classes: tuple[str, ...] = ()
) -> Path:
    """A CSV manifest of ``size`` images of ``source`` (absolute paths): the class balance kept, or with
    ``imbalance`` > 1 a long tail (`class_sizes`) whose order of classes the seed draws; only ``classes`` where
    some are named (a two-class set cut from a ten-class one)."""
    ds = create_dataset(source, check_images=False)
    frame = ds.frame.assign(path=ds.file_paths)
    if missing := set(classes) - set(frame["label"]):
        raise SystemExit(f"{source} has no class {', '.join(sorted(missing))}")
    if classes:
        frame = frame[frame["label"].isin(classes)]
    rng = np.random.default_rng(seed)
    groups = [g for _, g in frame.groupby("label")]
    sizes = class_sizes(len(groups), size=size, imbalance=imbalance)
    if imbalance == 1:
        sizes[:] = size // len(groups)  # the balanced subsets every earlier benchmark drew, unchanged
    else:
        sizes = sizes[rng.permutation(len(groups))]
    parts = [g.iloc[rng.permutation(len(g))[:n]] for g, n in zip(groups, sizes, strict=True)]
    pd.concat(parts)[["sample_id", "path", "label"]].to_csv(out, index=False)
    return out


def markdown_table(table: pd.DataFrame, *, first: str = "method") -> str:
    def cell(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float | np.floating) else str(v)

    head = f"| {first} | " + " | ".join(table.columns) + " |"
    rule = "|---|" + "---:|" * len(table.columns)
    body = ["| " + " | ".join([str(i), *(cell(v) for v in row)]) + " |" for i, row in table.iterrows()]
    return "\n".join([head, rule, *body])


def mean_sd_text(mean: float, sd: float, *, sign: str = "") -> str:
    """``"mean ± sd"`` (the mean alone where ``sd`` is NaN); seconds to the second, scores and rates to a
    thousandth. ``sign="+"`` writes the mean's sign (paired differences)."""
    if np.isnan(mean):
        return "nan"
    digits = 0 if abs(mean) >= 10 else 3
    text = f"{mean:{sign}.{digits}f}"
    return text if np.isnan(sd) else f"{text} ± {sd:.{digits}f}"


def parse_variant(text: str) -> dict[str, Any]:
    """``"a=1,b=x"`` → ``{"a": 1, "b": "x"}`` (values parsed as YAML scalars)."""
    pairs = [item.split("=", 1) for item in text.split(",") if item.strip()]
    if not pairs or any(len(p) != 2 for p in pairs):
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE[,KEY=VALUE...], got {text!r}")
    return {k.strip(): yaml.safe_load(v) for k, v in pairs}


def add_engine_args(parser: argparse.ArgumentParser) -> None:
    """How every engine run of a benchmark trains, and where it works (see `engine_options`)."""
    parser.add_argument("--model", default="test_resnet")
    parser.add_argument("--img-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--hflip", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--work", type=Path, default=None)


def add_reuse_arg(parser: argparse.ArgumentParser) -> None:
    """``--reuse`` / ``--no-reuse`` for `run_engine_method`."""
    parser.add_argument("--reuse", action=argparse.BooleanOptionalAction, default=True,
                        help="score finished runs with the same options instead of retraining them; "
                             "pass --no-reuse after changing the engine")  # fmt: skip


def engine_options(args: argparse.Namespace, *, seed: int, epochs: int) -> dict[str, Any]:
    """The `train` options of one engine run, from `add_engine_args`' options."""
    return dict(model=args.model, img_size=args.img_size, batch_size=args.batch_size, epochs=epochs, seed=seed,
                hflip=args.hflip)  # fmt: skip


def separation_ceiling(loss: np.ndarray, uncertainty: np.ndarray, truth: np.ndarray, *, seed: int = 0) -> float:
    """3-way macro-F1 of a classifier *fitted on the truth* over the two separation axes (gradient-boosted trees,
    5-fold cross-validated): about the best any decision rule on these two scores can do. The unsupervised
    separation's distance to it is what a better separation could still win; the rest needs better scores."""
    x = np.column_stack([loss, uncertainty])
    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=seed)
    pred = cross_val_predict(HistGradientBoostingClassifier(random_state=seed), x, truth, cv=folds)
    return float(f1_score(truth, pred, average="macro"))


def post_warmup_epoch_seconds(metrics: list[dict]) -> float:
    rows = [m["seconds"] for m in metrics if m["phase"] == "train"] or [m["seconds"] for m in metrics]
    return float(np.median(rows))


def finished_run_matches(run_dir: Path, **options: Any) -> bool:
    """Whether ``run_dir`` holds a finished run (its ``model.pt``) trained with the settings ``options`` resolve to,
    every other setting at today's default: a run made before a default changed or an option was added is trained
    again, not scored as if it were today's. Settings that change how a run executes, not what it computes
    (device, workers, ...), are not compared."""
    if not (run_dir / "model.pt").is_file():
        return False
    saved = load_config_file(run_dir / "config.yaml")
    wanted = resolve_config(overrides=options).to_dict()
    return all(saved.get(k) == v for k, v in wanted.items() if k == "epochs" or k not in RESUMABLE)


def with_truth(report: pd.DataFrame, noisy: Path) -> pd.DataFrame:
    """``report`` with the planted category of each image (column ``truth``) from ``noisy``'s manifest."""
    truth = pd.read_parquet(noisy / "manifest.parquet", columns=["sample_id", "category"])
    return report.merge(truth.rename(columns={"category": "truth"}), on="sample_id")


def _nan_if_none(value: float | None) -> float:
    return float("nan") if value is None else float(value)


def run_engine_method(
    method: str,
    noisy: Path,
    work: Path,
    *,
    test: str | None,
    device: str,
    tag: str | None = None,
    reuse: bool = False,
    **options: Any,
) -> dict:
    """Train ``method`` on ``noisy``, audit it, and score the audit and the test accuracy.

    ``tag`` names the run directory and report (default: the method), so variants of one method can sit side
    by side. With ``reuse``, a finished run already in that directory with the same options is scored without
    training it again (training is deterministic on CPU; ``reused`` is then True and its wall times NaN).
    Returns the row of the comparison table plus ``evaluation`` (the full `qmix evaluate` result); ``test_acc``
    is NaN when there is no ``test`` set.
    """
    tag = tag or method
    run_dir = work / f"run-{tag}"
    reused = reuse and finished_run_matches(run_dir, method=method, **options)
    if reused:
        metrics = read_metrics(run_dir / "metrics.jsonl")
        train_s = float("nan")
    else:
        start = time.perf_counter()
        result = train(noisy, run_dir, method=method, device=device, force=True, quiet=True, **options)
        train_s = time.perf_counter() - start
        metrics = result.metrics
    report_path = work / f"report-{tag}.parquet"
    start = time.perf_counter()
    report = audit(noisy, run=run_dir, out=report_path, device=device, quiet=True)
    audit_s = time.perf_counter() - start
    ev = evaluate(report_path, truth=noisy)
    merged = with_truth(report, noisy)
    test_acc = float("nan")
    if test is not None:
        test_report = audit(test, run=run_dir, device=device, quiet=True)
        test_acc = float((test_report["predicted_label"] == test_report["given_label"]).mean())
    return {
        "method": method,
        "test_acc": test_acc,
        "auc_clean": float(roc_auc_score(merged["truth"] == "clean", merged["p_clean"])),
        "auc_hq": float(
            roc_auc_score(merged["truth"] != "mislabeled_lq", merged["p_clean"] + merged["p_mislabeled_hq"])
        ),
        "macro_f1": ev["macro_f1"],
        "ceiling_macro_f1": separation_ceiling(merged["loss"], merged["uncertainty"], merged["truth"]),
        "detection_f1": ev["detection"]["f1"],
        # Of the labels the report would change, the share it changes to the true one; and the share of wrong
        # labels on good images it fixes (`qmix evaluate`'s relabel metrics).
        "relabel_precision": _nan_if_none(ev["relabel"]["precision"]),
        "relabel_fixed": _nan_if_none(ev["relabel"]["recall"]),
        "epoch_s": post_warmup_epoch_seconds(metrics),
        "train_wall_s": train_s,
        "reused": reused,
        "wall_s": train_s + audit_s,
        "images_per_s": float(np.median([m["images_per_s"] for m in metrics[-3:]])),
        "evaluation": ev,
    }
