"""Ablations of qmix's options, paired by seed, on the benchmark presets of ``bench_baselines.py``.

Each variant is qmix with some `TrainConfig` options changed (``--variant "lambda_con=0"``, several options
comma-separated). Every variant and the default are trained on the same corrupted subsets, one per preset and
seed, and judged by the audit against the planted truth. Because one run's macro-F1 moves by a few hundredths
with the seed alone, the table reports each variant's mean ± standard deviation over seeds *and* its paired
difference from the default, seed by seed: a change is worth keeping only when the difference has the same sign
on (nearly) every preset and seed. Column ``ceiling`` is ``bench_baselines.py``'s: the macro-F1 of a classifier
fitted on the truth over the run's two separation scores. A variant that moves it changed what the nets' scores
can tell apart; one that moves only the macro-F1 moved where the mixture drew its boundaries.

Usage (``pip install -e '.[bench]'`` is not needed: only the engine runs)::

    python benchmarks/bench_ablation.py --seeds 1,2,3 --variant "lambda_con=0" --variant "mixup_alpha=0.5" \\
        --work /tmp/ablation --out ablation.md

``--work`` may be a ``bench_baselines.py`` work directory: its corrupted subsets are used as they are, and with
``--reuse`` (default) its finished ``run-qmix`` runs count as the default arm when their options match (training
is deterministic on CPU), so only the variants are trained.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd
from _common import add_reuse_arg, engine_options, markdown_table, mean_sd_text, parse_variant, run_engine_method
from bench_baselines import PRESETS, add_preset_args, corrupted_subset

COLUMNS = {
    "macro_f1": "macro-F1",
    "ceiling_macro_f1": "ceiling",
    "detection_f1": "detect F1",
    "relabel_precision": "relabel precision",
    "relabel_fixed": "wrong labels fixed",
    "auc_clean": "AUC clean",
    "auc_hq": "AUC high quality",
    "test_acc": "test acc",
}  # no timings: reused runs were timed in other runs, and this VM's speed drifts (bench_methods.py times side by side)
DEFAULT = "default"


def variant_tag(options: dict[str, Any]) -> str:
    """Run-directory tag of a variant; the default arm is ``qmix``, as in ``bench_baselines.py``."""
    return "qmix" + "".join(f"-{k}={v}" for k, v in options.items())


def paired_summary(rows: pd.DataFrame) -> pd.DataFrame:
    """Per variant and preset: mean ± sd over seeds of every column, and of the paired macro-F1 difference.

    ``rows`` has one row per (variant, preset, seed) with the `COLUMNS` keys; the default arm is ``DEFAULT``.
    Presets are kept apart: their levels differ by more than most variants move them.
    """
    base = rows[rows["variant"] == DEFAULT].set_index(["preset", "seed"])["macro_f1"]

    def mean_sd(x: pd.Series, sign: str = "") -> str:
        return mean_sd_text(x.mean(), x.std(ddof=1), sign=sign)  # std of one value is NaN: the mean alone

    out = []
    for (name, preset), group in rows.groupby(["variant", "preset"], sort=False):
        g = group.set_index(["preset", "seed"])
        diff = g["macro_f1"] - base.reindex(g.index)
        entry: dict[str, Any] = {"variant": name, "preset": preset}
        entry.update({label: mean_sd(g[key]) for key, label in COLUMNS.items()})
        is_base = name == DEFAULT
        entry["Δ macro-F1"] = "—" if is_base else mean_sd(diff, "+")
        entry["better / seeds"] = "—" if is_base else f"{int((diff > 0).sum())} / {int(diff.notna().sum())}"
        out.append(entry)
    return pd.DataFrame(out).sort_values("preset", kind="stable").set_index("variant")


def per_run_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Macro-F1 of every variant (rows) on every preset and seed (columns)."""
    wide = rows.pivot_table(index="variant", columns=["preset", "seed"], values="macro_f1", sort=False)
    wide.columns = [f"{p} s{s}" for p, s in wide.columns]
    return wide.map(lambda v: f"{v:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", type=parse_variant, action="append", default=[], required=True)
    add_preset_args(parser, seeds=[1, 2, 3])
    add_reuse_arg(parser)
    parser.add_argument("--out", type=Path, default=Path("ablation.md"))
    args = parser.parse_args()

    work = args.work or Path(tempfile.mkdtemp(prefix="qmix-bench-ablation-"))
    arms = [(DEFAULT, {})] + [(", ".join(f"{k}={v}" for k, v in opts.items()), opts) for opts in args.variant]
    start = time.perf_counter()
    runs = [(name, seed, work / f"{name}-seed{seed}") for name in args.presets.split(",") for seed in args.seeds]
    for name, seed, seed_work in runs:
        if not (seed_work / "noisy" / "manifest.parquet").is_file():
            corrupted_subset(PRESETS[name], seed_work, size=args.train_size, seed=seed)
    rows = []
    # Variant by variant: the rows printed before a stop cover every seed of the variants finished, and a rerun
    # (``--reuse``) trains only what is missing.
    for label, extra in arms:
        for name, seed, seed_work in runs:
            options = engine_options(args, seed=seed, epochs=args.epochs) | extra
            r = run_engine_method("qmix", seed_work / "noisy", seed_work, test=args.test, device=args.device,
                                  tag=variant_tag(extra), reuse=args.reuse, **options)  # fmt: skip
            rows.append({"variant": label, "preset": name, "seed": seed, **{k: r[k] for k in COLUMNS},
                         "reused": r["reused"]})  # fmt: skip
            print(json.dumps(rows[-1]), flush=True)
    frame = pd.DataFrame(rows)
    minutes = (time.perf_counter() - start) / 60
    text = "\n".join(
        [
            "# qmix ablations, paired by seed",
            "",
            f"Command: `python {' '.join(sys.argv)}` ({minutes:.0f} min; {len(frame) - frame['reused'].sum()} runs "
            f"trained, {frame['reused'].sum()} finished runs reused). qmix defaults otherwise; "
            f"{args.train_size} images, {args.epochs} epochs, `{args.model}` at {args.img_size} px.",
            "",
            markdown_table(paired_summary(frame), first="variant"),
            "",
            "Macro-F1 per preset and seed:",
            "",
            markdown_table(per_run_table(frame), first="variant"),
        ]
    )
    args.out.write_text(text + "\n", encoding="utf-8")
    args.out.with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
