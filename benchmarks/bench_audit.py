"""Audit throughput against a raw forward of the same nets, and peak memory on a large manifest.

* ``raw forward``: every net the audit reads (the run's two nets, and their warm-up snapshots where the run kept
  them) over the already-decoded images (eval view, batched, no_grad): the compute an audit cannot avoid.
* ``audit (warm)``: ``qmix_cli.api.audit`` end to end with the decoded cache and the image checks already made:
  manifest reading and validation, scoring, posteriors on the saved separation, report written as Parquet.
* ``audit (cold)``: the same in a fresh process with an empty cache directory: every image is checked (decoded)
  and, in the same pass, stored in the decoded cache.
* Peak RSS: ``qmix audit`` run as a child process on the whole manifest, its ``ru_maxrss``.
* ``audit of the training set``: ``qmix audit`` of the run's own training data, warm, where the run's kept
  read-outs stand in for the nets (`qmix_cli.engine.readouts`).

The manifest audits above pass ``recompute``: the cycled Fashion-MNIST images include the training subset's
unchanged ones, which would otherwise be looked up, and the ratio is that of images the run never saw.

The manifest cycles through the Fashion-MNIST images (train then test split) with unique sample ids, so that any
number of rows can be made without writing new files. The run must have been trained on Fashion-MNIST classes
(e.g. by ``benchmarks/bench_methods.py --work DIR``, then ``--run DIR/run-qmix``).

Usage::

    python benchmarks/bench_audit.py --run /tmp/fm/run-qmix --rows 100000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from qmix_cli.allocator import keep_freed_memory
from qmix_cli.api import audit
from qmix_cli.data.cache import cached_images
from qmix_cli.data.manifest import create_dataset
from qmix_cli.engine.batches import ImageStore
from qmix_cli.engine.steps import predict_probs
from qmix_cli.reporting.score import _context, load_run


def cycling_manifest(rows: int, out: Path) -> Path:
    parts = []
    for name in ("fashion-mnist", "fashion-mnist:test"):
        ds = create_dataset(name, check_images=False)
        parts.append(pd.DataFrame({"path": [str(p) for p in ds.abs_paths], "label": ds.frame["label"]}))
    pool = pd.concat(parts, ignore_index=True)
    frame = pool.iloc[np.arange(rows) % len(pool)].reset_index(drop=True)
    frame.insert(0, "sample_id", [f"r{i:07d}" for i in range(rows)])
    frame.to_csv(out, index=False)
    return out


def raw_forward_seconds(run_dir: Path, manifest: Path, batch_size: int, cache: Path) -> tuple[float, int]:
    """Seconds of a plain forward of every net the audit reads, and how many nets that is."""
    run = load_run(run_dir)
    ds = create_dataset(manifest, classes=run.classes, min_classes=1, check_images=False)
    target = run.decode_target
    images = cached_images(
        ds, size=target.size, channels=target.channels, cache_dir=cache, jpeg_scale=target.jpeg_scale
    )
    store = ImageStore(images, device=run.device)
    ctx = _context(run, seed=0)
    start = time.perf_counter()
    nets = run.nets + run.warmup_nets
    for net in nets:
        predict_probs(net, store, ctx, batch_size=batch_size)
    return time.perf_counter() - start, len(nets)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3, help="warm audits and raw forwards, alternated")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be at least 1: the ratio needs a warm audit and a raw forward")
    # As the `qmix` command does at start: without it, whichever side runs later in this process finds glibc's
    # heap settled and looks about a fifth faster (docs/decisions.md, "Eleventh round").
    keep_freed_memory()

    work = Path(tempfile.mkdtemp(prefix="qmix-bench-audit-"))
    manifest = cycling_manifest(args.rows, work / "manifest.csv")
    out = work / "report.parquet"

    # Peak memory of a cold audit in a fresh process: an empty cache, so every image is checked and decoded.
    cache = work / "cache"
    child = [sys.executable, "-m", "qmix_cli", "--quiet", "audit", str(manifest), "--run", str(args.run),
             "--out", str(out), "--batch-size", str(args.batch_size), "--cache-dir", str(cache),
             "--recompute"]  # fmt: skip
    start = time.perf_counter()
    subprocess.run(child, check=True)
    cold = time.perf_counter() - start
    peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024

    # Warm audits and raw forwards alternate, and each reports its median: this VM's speed drifts by 10-20 %.
    warm_runs, raw_runs = [], []
    for _ in range(args.repeats):
        start = time.perf_counter()
        audit(manifest, run=args.run, out=out, batch_size=args.batch_size, cache_dir=cache, quiet=True, recompute=True)
        warm_runs.append(time.perf_counter() - start)
        seconds, nets = raw_forward_seconds(args.run, manifest, args.batch_size, cache)
        raw_runs.append(seconds)
    warm, raw = float(np.median(warm_runs)), float(np.median(raw_runs))

    # The run's own training set from its kept read-outs and with the nets run on every image, both warm: the
    # first audit checks and caches the images, and the second recomputed one is the one timed.
    training = json.loads((args.run / "run.json").read_text())["dataset"]  # as given to qmix train
    training_s = {}
    for recompute in (True, False, True):
        start = time.perf_counter()
        rows = len(audit(training, run=args.run, out=out, batch_size=args.batch_size, cache_dir=cache,
                         quiet=True, recompute=recompute))  # fmt: skip
        training_s["recomputed" if recompute else "kept read-outs"] = time.perf_counter() - start

    result = {
        "rows": args.rows,
        "nets_read": nets,
        "raw_forward_s": raw,
        "audit_warm_s": warm,
        "audit_cold_s": cold,
        "audit_warm_runs_s": warm_runs,
        "raw_forward_runs_s": raw_runs,
        "raw_images_per_s": args.rows / raw,
        "audit_warm_images_per_s": args.rows / warm,
        "ratio_audit_warm_vs_raw": raw / warm,
        "training_set_rows": rows,
        "training_set_audit_s": training_s,
        "ratio_training_set_kept_vs_recomputed": training_s["recomputed"] / training_s["kept read-outs"],
        "peak_rss_mib_cold_audit": peak_mib,
        "report_mib": out.stat().st_size / 2**20,
        "threads": torch.get_num_threads(),
        "command": "python " + " ".join(sys.argv),
        "date": time.strftime("%Y-%m-%d"),
        "cpus": os.cpu_count(),
    }
    print(json.dumps(result, indent=1))
    lines = ["| what | seconds | images/s |", "|---|---:|---:|"]
    for what, seconds in ((f"raw forward, {nets} nets", raw), ("audit, warm cache", warm), ("audit, cold", cold)):
        lines.append(f"| {what} | {seconds:.1f} | {args.rows / seconds:,.0f} |")
    for how, seconds in training_s.items():
        lines.append(f"| audit of the training set ({rows:,} rows), {how} | {seconds:.1f} | {rows / seconds:,.0f} |")
    print("\n" + "\n".join(lines))
    print(f"\naudit/raw throughput = {raw / warm:.2f}; peak RSS, cold audit of {args.rows:,} rows: {peak_mib:,.0f} MiB")
    kept_ratio = result["ratio_training_set_kept_vs_recomputed"]
    print(f"training set: kept read-outs / recomputed throughput = {kept_ratio:.1f}x")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
