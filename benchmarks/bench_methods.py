"""qmix vs dividemix vs ce on the same engine, on a corrupted Fashion-MNIST subset.

What it measures, for each method trained with identical settings on the same corrupted training set:

* test accuracy on the clean Fashion-MNIST test split (ensemble prediction of the run's nets);
* the separation AUCs of the final audit (``p_clean`` vs clean, ``p_clean + p_mislabeled_hq`` vs high quality),
  the 3-way macro-F1 and the mislabeled-detection F1 against the planted truth;
* seconds per epoch after warm-up (the part where the methods differ) and their ratios, measured in this run.

Usage::

    python benchmarks/bench_methods.py --train-size 12000 --epochs 20 --json results.json

Everything is written under ``--work`` (a temporary directory by default).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import roc_auc_score

from qmix_cli import __version__
from qmix_cli.api import audit, corrupt, evaluate, train
from qmix_cli.data.manifest import create_dataset


def stratified_subset(source: str, *, size: int, seed: int, out: Path) -> Path:
    """A CSV manifest of ``size`` images of ``source`` with the class balance kept (absolute paths)."""
    ds = create_dataset(source, check_images=False)
    frame = ds.frame.assign(path=[str(p) for p in ds.abs_paths])
    rng = np.random.default_rng(seed)
    per_class = size // len(ds.classes)
    parts = [g.iloc[rng.permutation(len(g))[:per_class]] for _, g in frame.groupby("label")]
    pd.concat(parts)[["sample_id", "path", "label"]].to_csv(out, index=False)
    return out


def markdown_table(table: pd.DataFrame) -> str:
    head = "| method | " + " | ".join(table.columns) + " |"
    rule = "|---|" + "---:|" * len(table.columns)
    body = ["| " + " | ".join([str(i), *(f"{v:.4g}" for v in row)]) + " |" for i, row in table.iterrows()]
    return "\n".join([head, rule, *body])


def post_warmup_epoch_seconds(metrics: list[dict]) -> float:
    rows = [m["seconds"] for m in metrics if m["phase"] == "train"] or [m["seconds"] for m in metrics]
    return float(np.median(rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-size", type=int, default=12000)
    parser.add_argument("--label-rate", type=float, default=0.2)
    parser.add_argument("--quality-rate", type=float, default=0.15)
    parser.add_argument("--label-noise", default="symmetric-exclusive")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--warmup-epochs", type=int, default=None)
    parser.add_argument("--model", default="test_resnet")
    parser.add_argument("--img-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--methods", default="ce,dividemix,qmix")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--set", action="append", default=[], help="extra KEY=VALUE training options for all methods")
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    import yaml

    extra = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in args.set)}
    work = args.work or Path(tempfile.mkdtemp(prefix="qmix-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    subset = stratified_subset("fashion-mnist", size=args.train_size, seed=args.seed, out=work / "subset.csv")
    noisy = work / "noisy"
    corrupt(subset, noisy, label_noise=args.label_noise, label_rate=args.label_rate,
            quality_rate=args.quality_rate, seed=args.seed, force=True, quiet=True)  # fmt: skip
    truth = pd.read_parquet(noisy / "manifest.parquet")[["sample_id", "category"]].rename(columns={"category": "truth"})

    common = dict(model=args.model, img_size=args.img_size, batch_size=args.batch_size, epochs=args.epochs,
                  warmup_epochs=args.warmup_epochs, seed=args.seed, device=args.device, **extra)  # fmt: skip
    rows = []
    for method in args.methods.split(","):
        start = time.perf_counter()
        result = train(noisy, work / f"run-{method}", method=method, force=True, quiet=True, **common)
        wall = time.perf_counter() - start
        report_path = work / f"report-{method}.parquet"
        report = audit(noisy, run=result.run_dir, out=report_path, device=args.device, quiet=True)
        ev = evaluate(report_path, truth=noisy)
        merged = report.merge(truth, on="sample_id")
        test = audit("fashion-mnist:test", run=result.run_dir, device=args.device, quiet=True)
        rows.append(
            {
                "method": method,
                "test_acc": float((test["predicted_label"] == test["given_label"]).mean()),
                "auc_clean": float(roc_auc_score(merged["truth"] == "clean", merged["p_clean"])),
                "auc_hq": float(
                    roc_auc_score(merged["truth"] != "mislabeled_lq", merged["p_clean"] + merged["p_mislabeled_hq"])
                ),
                "macro_f1": ev["macro_f1"],
                "detection_f1": ev["detection"]["f1"],
                "epoch_s": post_warmup_epoch_seconds(result.metrics),
                "train_wall_s": wall,
                "images_per_s": float(np.median([m["images_per_s"] for m in result.metrics[-3:]])),
            }
        )
        print(json.dumps(rows[-1]), flush=True)

    table = pd.DataFrame(rows).set_index("method")
    ratios = {}
    if {"qmix", "dividemix"} <= set(table.index):
        ratios["qmix/dividemix epoch"] = table.loc["qmix", "epoch_s"] / table.loc["dividemix", "epoch_s"]
    if {"qmix", "ce"} <= set(table.index):
        ratios["qmix/ce epoch"] = table.loc["qmix", "epoch_s"] / table.loc["ce", "epoch_s"]
    command = "python " + " ".join(sys.argv)
    cpu = platform.processor() or platform.machine()
    env = (
        f"{cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}, device {args.device}, qmix {__version__}"
    )
    env += f", {time.strftime('%Y-%m-%d')}"
    print(f"\n`{command}`  ({env})\n")
    print(markdown_table(table))
    for key, value in ratios.items():
        print(f"- {key}: {value:.2f}")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "ratios": ratios, "command": command, "env": env}, indent=1))
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
