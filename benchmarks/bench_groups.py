"""Groups of near-duplicate images sharing one wrong label: does ``--group-column`` help the audit find them?

Medical datasets hold several images of one patient (both eyes, follow-up scans, slides of one lesion) that carry
one label, so a wrong label is wrong on all of them. Without groups, the audit's out-of-fold probes learn from a
patient's other images and its neighbour vote asks them: they vouch for the wrong label. This benchmark plants
exactly that: ``--groups`` Fashion-MNIST images, each the "patient" of 1 to ``2 × views − 1`` near-duplicate views
(shifted up to 2 px, brightness within ±15 %, Gaussian noise of σ 6 grey levels), corrupted by ``qmix corrupt
--group-column patient``: a share ``--label-rate`` of the patients given one wrong label (uniform over the other
classes) on every view, and, for each of ``--quality-rates``, that share of the views strongly degraded (severity
4-5), image by image, with random labels (``0.15``) or keeping their true label (``0.15:keep``, ``qmix corrupt
--lq-labels keep``: an unreadable view of a rightly labelled patient then sits among the patient's other views, in
one unit of the audit by group, as a blurred scan carries its patient's diagnosis). Each method is trained and
audited twice on the same data and seed, without and with ``group_column="patient"`` (training is the same; only
the audit's folds and votes differ), and the audits are compared seed by seed; every audit's table by patient
(``qmix audit --groups-out``) is scored too.

Usage (only the engine runs)::

    python benchmarks/bench_groups.py --work /tmp/groups --out benchmarks/GROUPS.md
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from _common import (
    add_engine_args,
    add_reuse_arg,
    engine_options,
    markdown_table,
    run_engine_method,
    stratified_subset,
    with_truth,
)
from PIL import Image
from sklearn.metrics import roc_auc_score

from qmix_cli.api import corrupt
from qmix_cli.data.groups import group_texts
from qmix_cli.reporting.groups import summarise_groups

SHIFT = 2
BRIGHTNESS = 0.15
NOISE_SD = 6.0


def near_duplicate(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A view of ``image`` (H, W) uint8 as a second scan of the same thing might look: shifted, brighter or
    darker, with sensor noise."""
    dy, dx = rng.integers(-SHIFT, SHIFT + 1, size=2)
    shifted = np.zeros_like(image)
    h, w = image.shape
    shifted[max(0, dy) : h + min(0, dy), max(0, dx) : w + min(0, dx)] = image[
        max(0, -dy) : h + min(0, -dy), max(0, -dx) : w + min(0, -dx)
    ]
    view = shifted * rng.uniform(1 - BRIGHTNESS, 1 + BRIGHTNESS) + rng.normal(0.0, NOISE_SD, size=image.shape)
    return np.clip(np.rint(view), 0, 255).astype(np.uint8)


def grouped_views(source: str, out: Path, *, groups: int, views: int, seed: int) -> Path:
    """``out/manifest.parquet`` and its PNGs: near-duplicate views of ``groups`` images of ``source``, each view's
    ``patient`` and true ``label``."""
    rng = np.random.default_rng(seed)
    (out / "images").mkdir(parents=True, exist_ok=True)
    bases = pd.read_csv(stratified_subset(source, size=groups, seed=seed, out=out / "bases.csv"))
    rows = []
    for i, base in enumerate(bases.itertuples()):
        image = np.asarray(Image.open(base.path).convert("L"))
        for v in range(int(rng.integers(1, 2 * views))):
            path = f"images/p{i:05d}_{v}.png"
            Image.fromarray(near_duplicate(image, rng)).save(out / path)
            rows.append({"sample_id": f"p{i:05d}_{v}", "path": path, "label": str(base.label), "patient": f"p{i:05d}"})
    pd.DataFrame(rows).to_parquet(out / "manifest.parquet", index=False)
    return out / "manifest.parquet"


def wrong_label_auc(report: Path, noisy: Path) -> float:
    """ROC-AUC of ``1 - p_clean`` for the wrong labels among the images that are not degraded: how well the audit
    ranks the label errors a group column is about, apart from the degraded images it also finds."""
    merged = with_truth(pd.read_parquet(report), noisy)
    good = merged[merged["truth"] != "mislabeled_lq"]
    # -p_clean ranks as 1 - p_clean does, without rounding every p_clean below 1e-16 into one tie.
    return float(roc_auc_score(good["truth"] == "mislabeled_hq", -good["p_clean"]))


def wrong_patient_aucs(report: Path, noisy: Path) -> dict[str, float]:
    """ROC-AUC of each unit's score (`qmix audit --groups-out`: the median of its images' ``1 - p_clean``; and, for
    comparison, their maximum) for the units (a patient's images of one given label) whose label is wrong on their
    good images; units of degraded images only are left out (their label is neither right nor wrong to see)."""
    manifest = pd.read_parquet(noisy / "manifest.parquet", columns=["sample_id", "patient"])
    frame = with_truth(pd.read_parquet(report), noisy).merge(manifest, on="sample_id")
    frame["patient"] = group_texts(frame["patient"])  # as the table names them (an integer id is text there)
    table = summarise_groups(frame, groups=frame["patient"]).set_index(["group", "given_label"])
    good = frame[frame["truth"] != "mislabeled_lq"]
    wrong = (good["truth"] == "mislabeled_hq").groupby([good["patient"], good["given_label"]]).any()
    worst = (-frame["p_clean"]).groupby([frame["patient"], frame["given_label"]]).max()  # as 1 - p_clean ranks
    units = wrong.index  # the units with a good image
    return {
        "AUC wrong patient": float(roc_auc_score(wrong, -table["rank"].reindex(units))),  # the table's order
        "AUC wrong patient, max": float(roc_auc_score(wrong, worst.reindex(units))),
    }


def run_seed(args: argparse.Namespace, seed: int, setting: str) -> list[dict[str, Any]]:
    quality_rate, _, lq_labels = setting.partition(":")
    quality_rate, lq_labels = float(quality_rate), lq_labels or "random"
    work = args.work / f"q{quality_rate:g}{'' if lq_labels == 'random' else '-' + lq_labels}-seed{seed}"
    noisy = work / "noisy"
    if not (noisy / "manifest.parquet").is_file():
        views = grouped_views(args.source, work / "clean", groups=args.groups, views=args.views, seed=seed)
        corrupt(
            views, noisy, label_rate=args.label_rate, quality_rate=quality_rate, severity="4-5", lq_labels=lq_labels,
            group_column="patient", seed=seed, force=True, quiet=True,
        )  # fmt: skip
    options = engine_options(args, seed=seed, epochs=args.epochs)
    rows = []
    for method in args.methods.split(","):
        for grouped in (False, True):
            tag = f"{method}-{'grouped' if grouped else 'alone'}"
            r = run_engine_method(
                method, noisy, work, test=None, device=args.device, tag=tag, reuse=args.reuse,
                group_column="patient" if grouped else None, **options,
            )  # fmt: skip
            ev = r["evaluation"]
            detection, per_category = ev["detection"], ev["per_category"]
            rows.append(
                {
                    "degraded": quality_rate,
                    "lq labels": lq_labels,
                    "method": method,
                    "groups": "patient" if grouped else "none",
                    "seed": seed,
                    "macro-F1": r["macro_f1"],
                    "F1 hq": per_category["mislabeled_hq"]["f1"],
                    "F1 lq": per_category["mislabeled_lq"]["f1"],
                    "detect F1": detection["f1"],
                    "detect P": detection["precision"],
                    "detect R": detection["recall"],
                    "AUC mislabeled": r["auc_clean"],
                    "AUC wrong label, good images": wrong_label_auc(work / f"report-{tag}.parquet", noisy),
                    **wrong_patient_aucs(work / f"report-{tag}.parquet", noisy),
                    "relabel precision": r["relabel_precision"],
                    "wrong labels fixed": r["relabel_fixed"],
                    "wall s": r["wall_s"],
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    return rows


METRICS = [
    "macro-F1",
    "F1 hq",
    "F1 lq",
    "detect F1",
    "detect P",
    "detect R",
    "AUC mislabeled",
    "AUC wrong label, good images",
    "AUC wrong patient",
    "AUC wrong patient, max",
    "relabel precision",
    "wrong labels fixed",
]


def comparison(frame: pd.DataFrame, metrics: list[str]) -> list[str]:
    """Means over seeds, then with groups minus without, seed by seed, for one data setting."""
    # Wall time of training and audit (NaN where a run was reused): training is the same with and without groups.
    means = frame.groupby(["method", "groups"], sort=False)[[*metrics, "wall s"]].mean().reset_index()
    paired = frame.pivot_table(index=["method", "seed"], columns="groups", values=metrics)
    gain = pd.DataFrame({m: paired[(m, "patient")] - paired[(m, "none")] for m in metrics}).reset_index()
    by_seed = gain.groupby("method")[metrics].agg(["mean", "min", "max"])
    gain_rows = [
        {"method": method, **{m: f"{by_seed.loc[method, (m, 'mean')]:+.3f} ({by_seed.loc[method, (m, 'min')]:+.3f} "
                              f"to {by_seed.loc[method, (m, 'max')]:+.3f})" for m in metrics}}
        for method in by_seed.index
    ]  # fmt: skip
    return [
        "Means over seeds:",
        "",
        markdown_table(means.set_index("method").round(3)),
        "",
        "With groups minus without, seed by seed (mean, min to max):",
        "",
        markdown_table(pd.DataFrame(gain_rows).set_index("method")),
    ]


def render(frame: pd.DataFrame, args: argparse.Namespace, minutes: float) -> str:
    lines = [
        "# Groups: near-duplicate images sharing one wrong label",
        "",
        "Produced by `benchmarks/bench_groups.py` (its docstring says what is planted). Command:",
        "",
        f"    python benchmarks/bench_groups.py --groups {args.groups} --views {args.views} --label-rate "
        f"{args.label_rate} --quality-rates {args.quality_rates} --epochs {args.epochs} --seeds {args.seeds} "
        f"--methods {args.methods} --work WORK",
        "",
        f"- data: {args.source}, {args.groups} patients of 1 to {2 * args.views - 1} views; {args.label_rate:.0%} of "
        f"patients with one wrong label on every view; {args.model} at {args.img_size} px, {args.epochs} epochs",
        f"- seeds {args.seeds}; total {minutes:.0f} min (runs already trained with the same options are reused)",
        "- AUC wrong label, good images: ROC-AUC of 1 − p_clean (ranked as −p_clean, unrounded) for the wrong labels "
        "among the images not degraded",
        "- AUC wrong patient: ROC-AUC of the order of `qmix audit --groups-out`'s table (its `rank`: the median "
        "p_clean over a patient's images of one given label, ascending) for the patients whose label is wrong on "
        "their good images; `, max`: the same with the worst image instead of the median",
    ]
    for (quality_rate, lq_labels), part in frame.groupby(["degraded", "lq labels"], sort=False):
        label = "each with a random label" if lq_labels == "random" else "keeping their true label"
        degraded = "none" if quality_rate == 0 else f"{quality_rate:.0%}, {label}"
        # With no degraded image the three-way scores have no low-quality class to find, and the AUC over every
        # image is the one over good images.
        unscored = ("macro-F1", "F1 lq", "AUC mislabeled") if quality_rate == 0 else ()
        lines += [
            "",
            f"## Degraded views: {degraded}",
            "",
            *comparison(part, [m for m in METRICS if m not in unscored]),
        ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default="fashion-mnist")
    parser.add_argument("--groups", type=int, default=1500)
    parser.add_argument("--views", type=int, default=3, help="mean views per patient")
    parser.add_argument("--label-rate", type=float, default=0.2)
    parser.add_argument(
        "--quality-rates",
        default="0,0.15,0.15:keep",
        help="shares of views degraded, one setting each; RATE:keep keeps their true label",
    )
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--methods", default="ce,qmix")
    add_engine_args(parser)
    add_reuse_arg(parser)
    parser.add_argument("--out", type=Path, default=Path("groups.md"))
    args = parser.parse_args()
    args.work = args.work or Path(tempfile.mkdtemp(prefix="qmix-bench-groups-"))
    start = time.perf_counter()
    settings = [(q, int(seed)) for q in args.quality_rates.split(",") for seed in args.seeds.split(",")]
    frame = pd.DataFrame([row for quality, seed in settings for row in run_seed(args, seed, quality)])
    text = render(frame, args, (time.perf_counter() - start) / 60)
    args.out.write_text(text + "\n", encoding="utf-8")
    frame.to_json(args.out.with_suffix(".json"), orient="records", indent=1)
    print(text)


if __name__ == "__main__":
    main()
