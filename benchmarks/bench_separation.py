"""Separation rules compared on fixed audit scores: how much of a run's macro-F1 is the rule, not the nets.

For every audit report (``report-*.parquet``) under a ``bench_baselines.py``, ``bench_ablation.py`` or
``bench_conditions.py`` work directory, the 3-way separation is refitted on the report's own ``loss`` and
``uncertainty`` columns (the two nets' scores, averaged) with several rules, and each is scored against the
planted truth. The audit as shipped fits one separation per net and averages their posteriors, so the ``report``
column (the audit's own verdicts) is not exactly any row here; what the table shows is how far the choice of
rule alone moves a run whose scores are fixed. Rules: K-component 2-D GMM named by ``name_components`` (K = 3,
the paper's; 10, qmix's default; 20); K = 10 with the non-clean samples re-split in two by a 2-component GMM on
(loss, uncertainty); the posteriors of the 3- and 10-component fits averaged; and clean-or-not from DivideMix's
2-component loss GMM with the rest named Mis-L or Mis-H by the 10-component fit.

Usage::

    python benchmarks/bench_separation.py --work /tmp/bb7 --seeds 3

Results are means over ``--seeds`` GMM seeds per report, then over reports per preset and method; ``rule
spread`` is, per report, the best rule's macro-F1 minus the worst's (its mean and its largest value). A rule that
wins here by a few hundredths is not yet better than the audit's: 20 Gaussians gained 0.02 in this refit on
averaged scores and nothing when refitted per net as the audit does (docs/decisions.md, "Ninth round").
"""

from __future__ import annotations

import argparse
import json
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
from _common import markdown_table, with_truth
from sklearn.metrics import f1_score
from sklearn.mixture import GaussianMixture

from qmix_cli.categories import CATEGORIES, CLEAN, MIS_H, MIS_L
from qmix_cli.config import load_config_file
from qmix_cli.engine.separation import axes_tied, fit_loss_separation, fit_quality_separation, hard_groups
from qmix_cli.reporting.report import read_report_metadata

NAMES = np.array(CATEGORIES, dtype=object)  # indexed by group


def gmm_posteriors(
    loss: np.ndarray, unc: np.ndarray, *, components: int, seed: int, tied_axes: bool = False
) -> np.ndarray:
    """(N, 3) group posteriors of a K-component separation fitted on these scores, named as the engine names it
    (``tied_axes``: a two-class set's, along its one curve)."""
    fitted = fit_quality_separation(loss, unc, components=components, seed=seed, tied_axes=tied_axes)
    return fitted.posteriors(loss, unc)


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


def loss_split_then_quality(loss: np.ndarray, post10: np.ndarray, *, seed: int) -> np.ndarray:
    """Clean or not from DivideMix's 2-component loss GMM; the rest Mis-L or Mis-H by the 10-component posteriors."""
    clean = fit_loss_separation(loss, max_iter=10, seed=seed).posteriors(loss)[:, CLEAN] > 0.5  # DivideMix's
    noisy = np.where(post10[:, MIS_L] > post10[:, MIS_H], MIS_L, MIS_H)
    return np.where(clean, CLEAN, noisy).astype(np.int8)


def rule_groups(loss: np.ndarray, unc: np.ndarray, *, seed: int, tied_axes: bool = False) -> dict[str, np.ndarray]:
    """(N,) group index of every sample under each separation rule (keyed by its name), for one GMM seed."""
    post = {k: gmm_posteriors(loss, unc, components=k, seed=seed, tied_axes=tied_axes) for k in (3, 10, 20)}
    groups = {f"{k} Gaussians": hard_groups(p) for k, p in post.items()}
    groups["10 + non-clean re-split"] = resplit_non_clean(loss, unc, groups["10 Gaussians"], seed=seed)
    groups["3 and 10 averaged"] = hard_groups((post[3] + post[10]) / 2)
    groups["loss split + 10's quality"] = loss_split_then_quality(loss, post[10], seed=seed)
    return groups


def report_axes_tied(path: Path) -> bool:
    """Whether the run behind the report at ``path`` names its mixture along one curve (`axes_tied`): its class
    count from the report, its uncertainty from the run's ``config.yaml`` (the default where that is gone)."""
    meta = read_report_metadata(path)
    config = Path(meta["run_dir"]) / "config.yaml" if "run_dir" in meta else None
    uncertainty = load_config_file(config).get("uncertainty", "entropy") if config and config.is_file() else "entropy"
    return axes_tied(num_classes=len(json.loads(meta["class_names"])), uncertainty=uncertainty)


def score_report(path: Path, *, seeds: int) -> dict:
    """Macro-F1 of the shipped verdicts and of each rule (mean over GMM seeds) for one report."""
    merged = with_truth(pd.read_parquet(path), path.parent / "noisy")
    y = merged["truth"].to_numpy()
    loss, unc = merged["loss"].to_numpy(), merged["uncertainty"].to_numpy()
    tied = report_axes_tied(path)
    per_seed: dict[str, list[float]] = defaultdict(list)
    for s in range(seeds):
        for rule, groups in rule_groups(loss, unc, seed=s, tied_axes=tied).items():
            per_seed[rule].append(float(f1_score(y, NAMES[groups], average="macro")))
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
    rules = frame.columns.drop(["preset", "method", "report"])
    frame["rule spread"] = frame[rules].max(axis=1) - frame[rules].min(axis=1)  # same scores, another rule
    groups = frame.groupby(["method", "preset"])
    means = groups.mean(numeric_only=True)
    means.insert(0, "reports", groups.size())
    means["largest rule spread"] = groups["rule spread"].max()
    print(markdown_table(means.reset_index(level="preset").round(3), first="method"))


if __name__ == "__main__":
    main()
