"""What applying an audit buys: the same net trained on the corrupted manifest and on ``qmix apply``'s.

For every ``<preset>-seed<k>`` folder of a ``bench_baselines.py`` work directory (its ``noisy/`` dataset and the
``report-<method>.parquet`` audit), ``qmix apply`` writes the manifest with the verdicts applied twice (``--hq
relabel``, the default, and ``--hq drop``; ``mislabeled_lq`` dropped in both), then the same network (``--train``,
the run's seed and options) is trained on the corrupted manifest and on each applied one. Per manifest it prints the
images kept, the share of wrong labels among them (label other than the true label, the degraded images' random
labels included) and the test accuracy on the clean test split after the last epoch, then the means over folders.

Usage (after ``bench_baselines.py --work W``; only the engine runs)::

    python benchmarks/bench_apply.py --work W --out /tmp/apply.md
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd
from _common import add_engine_args, engine_options, markdown_table

from qmix_cli.api import apply, train

MANIFESTS = {"corrupted": None, "apply (relabel)": "relabel", "apply --hq drop": "drop"}


def run_folder(folder: Path, args: argparse.Namespace) -> list[dict]:
    """One row per manifest of one corrupted subset."""
    noisy, report = folder / "noisy", folder / f"report-{args.method}.parquet"
    seed = int(folder.name.rsplit("seed", 1)[1])
    rows = []
    for name, hq in MANIFESTS.items():
        data = noisy
        if hq is not None:
            data = folder / f"applied-{args.method}-{hq}.parquet"
            apply(noisy, report=report, out=data, hq=hq, force=True)  # a rerun replaces its own manifests
        manifest = pd.read_parquet(data / "manifest.parquet" if data.is_dir() else data)
        options = engine_options(args, seed=seed, epochs=args.epochs)
        run_dir = folder / f"run-{args.train}-on-{hq or 'corrupted'}"
        run = train(
            data, run_dir, method=args.train, val=args.test, force=True, quiet=True, device=args.device, **options
        )
        rows.append({"subset": folder.name, "manifest": name, "images": len(manifest),
                     "wrong labels": float((manifest["label"] != manifest["true_label"]).mean()),
                     "test acc": run.metrics[-1]["val_acc"]})  # fmt: skip
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_engine_args(parser)
    parser.add_argument("--method", default="qmix", help="whose report to apply (report-<method>.parquet)")
    parser.add_argument("--train", default="ce", help="the method trained on each manifest")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--test", default="fashion-mnist:test")
    parser.add_argument("--out", type=Path, default=None, help="also write the tables as Markdown here")
    args = parser.parse_args()
    if args.work is None:
        parser.error("--work: a bench_baselines.py work directory")
    folders = sorted(p for p in args.work.iterdir() if (p / f"report-{args.method}.parquet").is_file())
    if not folders:
        parser.error(f"no report-{args.method}.parquet under {args.work}/*/")
    start = time.perf_counter()
    frame = pd.DataFrame([row for folder in folders for row in run_folder(folder, args)])
    columns = ["images", "wrong labels", "test acc"]
    means = frame.groupby("manifest", sort=False)[columns].mean()
    table = frame.set_index(frame["subset"] + " · " + frame["manifest"])[columns]
    text = "\n".join(
        [
            f"Command: `python {' '.join(sys.argv)}` ({(time.perf_counter() - start) / 60:.0f} min). "
            f"`{args.train}` trained on each manifest, `{args.model}` at {args.img_size} px, {args.epochs} epochs.",
            "",
            markdown_table(table.round(4), first="subset · manifest"),
            "",
            "Means over subsets:",
            "",
            markdown_table(means.round(4), first="manifest"),
        ]
    )
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
