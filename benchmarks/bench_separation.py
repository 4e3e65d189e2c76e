"""Separation rules compared on fixed audit scores: how much of a run's macro-F1 is the rule, not the nets.

For every audit report (``report-*.parquet``) under a ``bench_baselines.py`` / ``bench_ablation.py`` work
directory, the 3-way separation is refitted on the report's own ``loss`` and ``uncertainty`` columns (the two
nets' scores, averaged) with several rules, and each is scored against the planted truth. The audit as shipped
fits one separation per net and averages their posteriors, so the ``report`` column (the audit's own verdicts)
is not exactly any row here; what the table shows is how far the choice of rule alone moves a run whose scores
are fixed. Rules: K-component 2-D GMM named by ``name_components`` (K = 3, the paper's; 10, qmix's default;
20), and K = 10 with the non-clean samples re-split in two by a 2-component GMM on (loss, uncertainty).

Usage::

    python benchmarks/bench_separation.py --work /tmp/bb7 --seeds 3

Results are means over ``--seeds`` GMM seeds per report, then over reports per preset and method; ``rule
spread`` is, per report, the best rule's macro-F1 minus the worst's (its mean and its largest value).
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np
import pandas as pd
from _common import markdown_table, with_truth
from sklearn.metrics import f1_score
from sklearn.mixture import GaussianMixture

from qmix_cli.categories import CATEGORIES, CLEAN, MIS_H, MIS_L
from qmix_cli.engine.separation import fit_quality_separation, hard_groups

NAMES = np.array(CATEGORIES, dtype=object)  # indexed by group
RESPLIT = "10 + non-clean re-split"
RULES = ("3 Gaussians", "10 Gaussians", "20 Gaussians", RESPLIT)


def gmm_groups(loss: np.ndarray, unc: np.ndarray, *, components: int, seed: int) -> np.ndarray:
    """(N,) group index from a K-component separation fitted on these scores, as the engine names it."""
    sep = fit_quality_separation(loss, unc, components=components, seed=seed)
    return hard_groups(sep.posteriors(loss, unc), p_threshold=0.5)


def resplit_non_clean(loss: np.ndarray, unc: np.ndarray, groups: np.ndarray, *, seed: int) -> np.ndarray:
    """``groups`` with its non-clean samples re-split by a 2-component GMM: the more uncertain side is Mis-L."""
    out = groups.copy()
    rest = groups != CLEAN
    if rest.sum() < 4:
        return out
    x = np.column_stack([loss[rest], unc[rest]])
    gm = GaussianMixture(2, random_state=seed).fit(x)
    out[rest] = np.where(gm.predict(x) == np.argmax(gm.means_[:, 1]), MIS_L, MIS_H)
    return out


def score_report(path: Path, *, seeds: int) -> dict:
    """Macro-F1 of the shipped verdicts and of each rule (mean over GMM seeds) for one report."""
    merged = with_truth(pd.read_parquet(path), path.parent / "noisy")
    y = merged["truth"].to_numpy()
    loss, unc = merged["loss"].to_numpy(), merged["uncertainty"].to_numpy()

    def f1(groups: np.ndarray) -> float:
        return float(f1_score(y, NAMES[groups], average="macro"))

    per_seed: dict[str, list[float]] = {rule: [] for rule in RULES}
    for s in range(seeds):
        for k in (3, 10, 20):
            groups = gmm_groups(loss, unc, components=k, seed=s)
            per_seed[f"{k} Gaussians"].append(f1(groups))
            if k == 10:  # the re-split starts from the default rule's verdicts of the same seed
                per_seed[RESPLIT].append(f1(resplit_non_clean(loss, unc, groups, seed=s)))
    row = {"report": float(f1_score(y, merged["category"], average="macro"))}
    return row | {rule: float(np.mean(values)) for rule, values in per_seed.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="a bench_baselines.py / bench_ablation.py work dir")
    parser.add_argument("--seeds", type=int, default=3, help="GMM seeds per report")
    args = parser.parse_args()

    rows = []
    for path in sorted(args.work.glob("*-seed*/report-*.parquet")):
        preset = re.sub(r"-seed\d+$", "", path.parent.name)
        method = path.stem.removeprefix("report-")
        family = "qmix (every variant)" if method.startswith("qmix") else method
        rows.append({"preset": preset, "method": family, **score_report(path, seeds=args.seeds)})
    if not rows:
        raise SystemExit(f"no report-*.parquet under {args.work}/*-seed*/")
    frame = pd.DataFrame(rows)
    frame["rule spread"] = frame[list(RULES)].max(axis=1) - frame[list(RULES)].min(axis=1)  # same scores, another rule
    groups = frame.groupby(["method", "preset"])
    means = groups.mean(numeric_only=True)
    means.insert(0, "reports", groups.size())
    means["largest rule spread"] = groups["rule spread"].max()
    print(markdown_table(means.reset_index(level="preset").round(3), first="method"))


if __name__ == "__main__":
    main()
