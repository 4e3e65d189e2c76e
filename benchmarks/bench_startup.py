"""A `qmix audit` command end to end in a fresh process, with the engine imported under a paused collector or not.

`qmix train`, `qmix audit` and `qmix demo` import torch, timm and scikit-learn with Python's cyclic garbage
collector paused and then freeze what the imports made (`qmix_cli.cli.common.load_engine`). This runs the same
command line in fresh processes with that step and with it replaced by nothing (the imports then happen as the
command reaches them, collector on), alternated, and prints the medians: on a training set whose read-outs the run
kept, the audit runs no network, so what is timed is mostly starting up, loading the run and writing the report.

Usage::

    python benchmarks/bench_startup.py --run /tmp/rq --data /tmp/bb16/paper-15-seed1/noisy --repeats 5
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DRIVER = """
import sys
from qmix_cli.cli import common
if sys.argv[1] == "plain":
    common.load_engine = lambda: None
from qmix_cli.cli.app import main
sys.argv = ["qmix", *sys.argv[2:]]
main()
"""


def command_seconds(arm: str, args: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", DRIVER, arm, *args], check=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--data", required=True, help="data to audit (the run's training set for a start-up bound)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="qmix-bench-startup-") as tmp:
        audit = ["-q", "audit", args.data, "--run", str(args.run), "--out", str(Path(tmp) / "r.parquet")]
        command_seconds("frozen", audit)  # once, so both arms find the caches and compiled bytecode made
        arms = {"frozen": "imports under a paused collector, then frozen", "plain": "imports as the command goes"}
        timings: dict[str, list[float]] = {arm: [] for arm in arms}
        for _ in range(args.repeats):
            for arm in arms:
                timings[arm].append(command_seconds(arm, audit))

    median = {arm: float(np.median(v)) for arm, v in timings.items()}
    print(f"qmix audit {args.data} --run {args.run}, fresh process each, median of {args.repeats}")
    print("| engine import | s |\n|---|---:|")
    for arm, label in arms.items():
        print(f"| {label} | {median[arm]:.2f} |")
    print(f"\nplain / frozen = {median['plain'] / median['frozen']:.2f}x")
    print(json.dumps({"median_s": median, "seconds": timings, "run": str(args.run), "data": args.data}))


if __name__ == "__main__":
    main()
