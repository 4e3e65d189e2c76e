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

import pandas as pd
import torch
from _common import (
    add_engine_args,
    engine_options,
    markdown_table,
    parse_variant,
    run_engine_method,
    stratified_subset,
)

from qmix_cli import __version__
from qmix_cli.api import corrupt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-size", type=int, default=12000)
    parser.add_argument("--label-rate", type=float, default=0.2)
    parser.add_argument("--quality-rate", type=float, default=0.15)
    parser.add_argument("--label-noise", default="symmetric-exclusive")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--warmup-epochs", type=int, default=None)
    parser.add_argument("--methods", default="ce,dividemix,qmix")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--set", type=parse_variant, action="append", default=[],
                        help="extra KEY=VALUE[,KEY=VALUE] training options for all methods (repeatable)")  # fmt: skip
    parser.add_argument("--json", type=Path, default=None)
    add_engine_args(parser)
    args = parser.parse_args()

    extra = {k: v for options in args.set for k, v in options.items()}
    work = args.work or Path(tempfile.mkdtemp(prefix="qmix-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    subset = stratified_subset("fashion-mnist", size=args.train_size, seed=args.seed, out=work / "subset.csv")
    noisy = work / "noisy"
    corrupt(subset, noisy, label_noise=args.label_noise, label_rate=args.label_rate,
            quality_rate=args.quality_rate, seed=args.seed, force=True, quiet=True)  # fmt: skip

    common = engine_options(args, seed=args.seed, epochs=args.epochs) | dict(warmup_epochs=args.warmup_epochs, **extra)
    rows = []
    for method in args.methods.split(","):
        row = run_engine_method(method, noisy, work, test="fashion-mnist:test", device=args.device, **common)
        row.pop("evaluation")
        rows.append(row)
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
