"""Score an audit report against the ground truth that ``qmix corrupt`` records.

Metrics (all JSON-able; an undefined value, e.g. an AUC with one class present, is ``None``):

* three-way classification of each image into :data:`CATEGORIES`: per-category precision / recall / F1,
  macro-F1, accuracy, confusion matrix (rows = truth, columns = prediction);
* mislabeled detection, binary: ``is_label_issue`` against ``truth.category != "clean"``;
* ROC-AUC of the continuous scores, which need no threshold: ``1 - p_clean`` for "mislabeled" and
  ``p_mislabeled_lq`` for "low quality", plus the raw axes and ``label_score`` for comparison;
* the suggested relabels, when the truth has ``true_label`` and the report ``suggested_label``: how many of the
  labels the report proposes to change it gets right, and how many of the wrong labels on good images it fixes;
* mislabeled detection class by class (by given label): on a long-tailed dataset the overall figures are the
  large classes', and a rare class can lose most of its correct labels to the audit unseen;
* what the report calls the degraded images, by degradation and by severity (from the truth's ``degradation``
  and ``severity``, as ``qmix corrupt`` writes them): which kinds of damage it names low quality, and which it
  reads as an image like any other;
* for an audit by group (a patient column), how well the table by group (`qmix_cli.reporting.groups`) ranks the
  units whose label is wrong: ROC-AUC and average precision of the table's order (its ``rank``).
"""

from __future__ import annotations

import math
import posixpath
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table
from rich.text import Text
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
    roc_auc_score,
)

from qmix_cli.categories import CATEGORIES
from qmix_cli.data.groups import check_group_column
from qmix_cli.errors import QmixError, summarise_offenders, zeros_lost
from qmix_cli.reporting.groups import report_groups, summarise_groups, units_of_rows
from qmix_cli.reporting.report import as_bool, check_verdict_rows, given_label_mismatches

_REPORT_COLUMNS = ("sample_id", "category", "is_label_issue", "p_clean", "p_mislabeled_lq")
_TRUTH_COLUMNS = ("sample_id", "category")
# Classes up to which `render_evaluation` prints the per-class table unasked.
PER_CLASS_ROWS = 20
# The key of degraded images whose truth leaves their degradation or severity empty.
_NOT_NAMED = "(not named)"


def evaluate_report(
    *,
    report: pd.DataFrame,
    truth: pd.DataFrame,
    on_missing: str = "error",
    on_unchecked: str = "error",
    group_column: str | None = None,
) -> dict[str, Any]:
    """Compare a report with the truth, image by image (joined on ``sample_id``).

    Parameters
    ----------
    report
        A report (see :func:`qmix_cli.reporting.report.read_report`), at least ``sample_id``, ``category``,
        ``is_label_issue``, ``p_clean``, ``p_mislabeled_lq``; ``loss``, ``uncertainty``, ``label_score`` are
        used when present.
    truth
        ``sample_id`` and ``category`` (values in :data:`CATEGORIES`); optional ``is_low_quality`` (then the
        low-quality target, instead of ``category == "mislabeled_lq"``), ``is_label_noisy`` (adds AUCs for
        "the given label is wrong") and ``true_label`` (scores the suggested labels).
    on_missing
        Truth rows the report lacks: ``"error"``, or ``"skip"`` to score the report on the images it covers (a
        report of part of the images, e.g. an audit with ``on_bad_image="skip"``). Report rows the truth lacks
        are governed by ``on_unchecked``.
    on_unchecked
        Report rows the truth lacks: ``"error"``, or ``"skip"`` to score the report on the images the truth covers
        (a truth of part of the images: those checked by hand). Either way the two must share an image.
    group_column
        A column of ``truth`` saying which images belong together (a patient): adds ``groups``.

    Returns
    -------
    dict
        ``n``; ``left_out`` (truth rows not in the report, 0 unless ``on_missing="skip"``); ``unchecked`` (report
        rows not in the truth, 0 unless ``on_unchecked="skip"``); ``counts``
        (``truth`` / ``predicted`` per category); ``per_category`` (category →
        ``precision``, ``recall``, ``f1``, ``support``); ``macro_f1``; ``macro_f1_over`` (the categories it averages);
        ``accuracy``; ``confusion_matrix``
        (``labels``, ``matrix`` as nested lists, rows truth, columns predicted); ``detection`` (``precision``,
        ``recall``, ``f1``, ``support``, ``flagged``); ``roc_auc`` (``mislabeled``, ``low_quality``);
        ``roc_auc_by_score`` (target → score expression → AUC); ``targets`` (how each AUC target is defined);
        ``relabel`` (``proposed``, ``correct``, ``precision``, ``wrong_labels``, ``recall``: the ``mislabeled_hq``
        rows' suggested labels against ``truth.true_label``; ``None`` without it or ``report.suggested_label``);
        ``per_class`` (given label → ``n``, ``mislabeled``, ``flagged``, ``precision``, ``recall``, ``false_alarms``:
        the share of the class's correct labels flagged, ``correct_flagged``: their count; ``None`` when the report
        has no given labels);
        ``per_degradation`` and ``per_severity`` (degradation name, or severity as text → ``n``: degraded images,
        ``named``: how many the report calls each category, ``lq_recall``: the share called ``mislabeled_lq``,
        ``flagged``: the share flagged, ``roc_auc``: of ``p_mislabeled_lq``, these images against the good ones;
        an image degraded several ways counts under each; ``{}`` with no degraded image; both ``None`` when the
        truth has no ``degradation`` column, ``per_severity`` when it has no ``severity``);
        ``groups`` (``column``, ``units`` scored, ``wrong``: units whose label is wrong on a good image, ``unscored``:
        units of degraded images only, ``ungrouped``: images with no group, ``roc_auc`` and ``average_precision`` of
        the units' order in the table (``rank``) for the wrong ones; ``None`` without ``group_column``). Undefined
        metrics are ``None``. A category absent from both truth and prediction gets ``f1 = None`` and is left out of
        the macro average (and of ``macro_f1_over``).

    Raises
    ------
    QmixError
        Missing columns, unknown categories, duplicate ids, ids present on one side only where not skipped, or no
        image in common.
    """
    for name, value in (("on-missing", on_missing), ("on-unchecked", on_unchecked)):
        if value not in ("error", "skip"):
            raise QmixError(f"{name} must be error or skip (got {value!r})")
    _require_columns(report, _REPORT_COLUMNS, what="report")
    _require_columns(truth, _TRUTH_COLUMNS, what="truth")
    joined = _join(report=report, truth=truth, skip_missing=on_missing == "skip", skip_unchecked=on_unchecked == "skip")

    labels = list(CATEGORIES)
    # Categories as their index in CATEGORIES: sklearn sorts its inputs to find their classes, and sorting a million
    # strings was most of a million-row evaluation (18 s); the checked categories are all among CATEGORIES.
    codes = list(range(len(labels)))
    clean, lq = labels.index("clean"), labels.index("mislabeled_lq")
    # As text, the values check_verdict_rows checked: astype(str) decodes bytes, which Categorical would not match.
    y_true = pd.Categorical(joined["category_truth"].astype(str), categories=labels).codes
    y_pred = pd.Categorical(joined["category_report"].astype(str), categories=labels).codes

    # zero_division=nan: a precision or recall with nothing to divide by is undefined (None), not 0, and
    # sklearn then leaves that category out of the macro average instead of dragging it down.
    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=codes, zero_division=np.nan)
    per_category = {
        name: {
            "precision": _num(precision[i]),
            "recall": _num(recall[i]),
            "f1": _num(f1[i]),
            "support": int(support[i]),
        }
        for i, name in enumerate(labels)
    }
    macro_f1 = f1_score(y_true, y_pred, labels=codes, average="macro", zero_division=np.nan)

    true_issue = y_true != clean
    flagged = as_bool(joined["is_label_issue"], name="is_label_issue")
    det_p, det_r, det_f1, _ = precision_recall_fscore_support(
        true_issue, flagged, average="binary", pos_label=True, zero_division=np.nan
    )

    if "is_low_quality" in joined.columns:
        true_lq = as_bool(joined["is_low_quality"], name="is_low_quality")
        lq_target = "is_low_quality"
    else:
        true_lq = y_true == lq
        lq_target = "category == mislabeled_lq"

    p_lq = _scores(joined, "p_mislabeled_lq")  # a required column
    by_score: dict[str, dict[str, float | None]] = {
        "mislabeled": _aucs(
            true_issue,
            {
                "1 - p_clean": _neg_scores(joined, "p_clean"),
                "loss": _scores(joined, "loss"),
                "1 - label_score": _neg_scores(joined, "label_score"),
            },
        ),
        "low_quality": _aucs(
            true_lq,
            {
                "p_mislabeled_lq": p_lq,
                "uncertainty": _scores(joined, "uncertainty"),
            },
        ),
    }
    targets = {"mislabeled": "category != clean", "low_quality": lq_target}
    if "is_label_noisy" in joined.columns:
        by_score["label_noisy"] = _aucs(
            as_bool(joined["is_label_noisy"], name="is_label_noisy"),
            {
                "1 - label_score": _neg_scores(joined, "label_score"),
                "1 - p_clean": _neg_scores(joined, "p_clean"),
            },
        )
        targets["label_noisy"] = "is_label_noisy"

    return {
        "n": len(joined),
        "left_out": len(truth) - len(joined),
        "unchecked": len(report) - len(joined),
        "counts": {
            "truth": dict(zip(labels, np.bincount(y_true, minlength=len(labels)).tolist(), strict=True)),
            "predicted": dict(zip(labels, np.bincount(y_pred, minlength=len(labels)).tolist(), strict=True)),
        },
        "per_category": per_category,
        "macro_f1": _num(macro_f1),
        # The categories that average is over: all three unless one is absent from truth and prediction alike (a
        # set with no degraded image, a hand-checked sample), which a comparison across sets must know.
        "macro_f1_over": [name for name, row in per_category.items() if row["f1"] is not None],
        "accuracy": _num(accuracy_score(y_true, y_pred)),
        "confusion_matrix": {
            "labels": labels,
            "rows": "truth",
            "columns": "predicted",
            "matrix": confusion_matrix(y_true, y_pred, labels=codes).tolist(),
        },
        "detection": {
            "precision": _num(det_p),
            "recall": _num(det_r),
            "f1": _num(det_f1),
            "support": int(true_issue.sum()),
            "flagged": int(flagged.sum()),
        },
        "roc_auc": {
            "mislabeled": by_score["mislabeled"]["1 - p_clean"],
            "low_quality": by_score["low_quality"]["p_mislabeled_lq"],
        },
        "roc_auc_by_score": by_score,
        "targets": targets,
        "relabel": _relabel_metrics(joined) if {"suggested_label", "true_label"} <= set(joined.columns) else None,
        "per_class": _per_class_detection(joined, true_issue=true_issue, flagged=flagged),
        **_degraded_detection(joined, true_lq=true_lq, flagged=flagged, p_lq=p_lq),
        "groups": None if group_column is None else _group_detection(joined, truth, group_column),
    }


def ids_by_path(report: pd.DataFrame, paths: pd.Series) -> np.ndarray:
    """``(N,)`` object: the report's ``sample_id`` of the image each of ``paths`` names, for a truth keyed by path.

    Paths are compared with ``/`` as the separator and normalised, since a report's paths are (a manifest made on
    Windows keeps its backslashes in its default ids, not in its paths). A path the report does not hold stays as
    it is, to be named as missing when the two are joined.

    Raises
    ------
    QmixError
        A path the report holds under several ids (a file the manifest lists twice): a truth by path cannot say
        which of them it judges.
    """

    def key(path: object) -> str:
        return posixpath.normpath(str(path).replace("\\", "/"))

    keys = pd.Series([key(p) for p in report["path"]], dtype=object)
    twice = keys.duplicated(keep=False).to_numpy()
    wanted = {key(p) for p in paths}
    ambiguous = sorted(set(keys[twice]) & wanted)
    if ambiguous:
        raise QmixError(
            summarise_offenders("truth paths the report holds under several ids", ambiguous)
            + " (a file the manifest lists twice): give the truth a sample_id column"
        )
    lookup = dict(zip(keys[~twice], report["sample_id"].astype(str).to_numpy()[~twice], strict=True))
    return np.array([lookup.get(key(p), p) for p in paths], dtype=object)


def _group_detection(joined: pd.DataFrame, truth: pd.DataFrame, column: str) -> dict[str, Any]:
    """How well the table by group ranks the units (a group's images of one given label) whose label is wrong on
    a good image; units of degraded images only are neither right nor wrong to see, and are left out."""
    check_group_column(truth, column, what="the truth")  # one that names groups, as the audit requires
    _require_columns(joined, ("given_label",), what="report")
    rows = joined.rename(columns={"category_report": "category"})
    if "suggested_label" not in rows.columns:
        rows = rows.assign(suggested_label=None)
    groups = report_groups(rows, truth, column)
    table = summarise_groups(rows, groups=groups)  # its attrs["ungrouped"]: the images with no group, left out
    truth_category = rows["category_truth"].to_numpy(dtype=object)
    units = units_of_rows(rows, groups=groups).assign(
        wrong=truth_category == "mislabeled_hq", good=truth_category != "mislabeled_lq"
    )
    units = units.dropna(subset=["group"])
    seen = units.groupby(["group", "given_label"]).agg(wrong=("wrong", "any"), good=("good", "any"))
    seen = seen.reindex(pd.MultiIndex.from_frame(table[["group", "given_label"]]))
    scored = seen["good"].to_numpy(dtype=bool)
    wrong = seen["wrong"].to_numpy(dtype=bool)[scored]
    # The table's order: its rank follows the unrounded scores, where issue_score ties below about 3e-8.
    score = -table["rank"].to_numpy(dtype=np.float64)[scored]
    # Average precision, like the AUC (`_auc`), is undefined with one kind of unit or a score missing.
    both = 0 < wrong.sum() < len(wrong) and np.isfinite(score).all()
    return {
        "column": column,
        "units": int(scored.sum()),
        "wrong": int(wrong.sum()),
        "unscored": int((~scored).sum()),
        "ungrouped": int(table.attrs["ungrouped"]),
        "roc_auc": _auc(wrong, score),
        "average_precision": _num(average_precision_score(wrong, score)) if both else None,
    }


def _per_class_detection(
    joined: pd.DataFrame, *, true_issue: np.ndarray, flagged: np.ndarray
) -> dict[str, dict[str, Any]] | None:
    """Mislabeled detection within each given label (the report's ``given_label``, or ``label`` in a report
    written by another tool).

    Returns
    -------
    dict or None
        Class name (sorted) → ``n`` (images given that label), ``mislabeled`` (of those, truth not clean),
        ``flagged`` (``is_label_issue``), ``precision``, ``recall``, ``false_alarms`` (flagged among the truly
        clean, over the truly clean) and ``correct_flagged`` (that count: correct labels the audit flagged);
        ratios are ``None`` when their denominator is 0. ``None`` when the report has no given labels.
    """
    column = next((c for c in ("given_label", "label") if c in joined.columns), None)
    if column is None:
        return None
    frame = pd.DataFrame(
        {
            "label": joined[column].astype(str).to_numpy(),
            "issue": true_issue,
            "flagged": flagged,
            "hit": true_issue & flagged,
            "false_alarm": ~true_issue & flagged,
        }
    )
    sums = frame.groupby("label", sort=True).agg(
        n=("issue", "size"), mislabeled=("issue", "sum"), flagged=("flagged", "sum"), hit=("hit", "sum"),
        false_alarm=("false_alarm", "sum"),
    )  # fmt: skip

    def ratio(num: int, den: int) -> float | None:
        return _num(num / den) if den else None

    return {
        str(label): {
            "n": int(row.n),
            "mislabeled": int(row.mislabeled),
            "flagged": int(row.flagged),
            "precision": ratio(row.hit, row.flagged),
            "recall": ratio(row.hit, row.mislabeled),
            "false_alarms": ratio(row.false_alarm, row.n - row.mislabeled),
            "correct_flagged": int(row.false_alarm),
        }
        for label, row in sums.iterrows()
    }


def _degraded_detection(
    joined: pd.DataFrame, *, true_lq: np.ndarray, flagged: np.ndarray, p_lq: np.ndarray
) -> dict[str, dict[str, dict[str, Any]] | None]:
    """What the report calls the degraded images, by the truth's ``degradation`` (each of the names a ``+`` joins)
    and ``severity``: ``{"per_degradation": ..., "per_severity": ...}``, ``{}`` each when no image is degraded.

    Both are ``None`` without a ``degradation`` column: ``severity`` is read only beside it, as ``qmix corrupt``
    writes them, since a truth's ``severity`` alone is more likely a disease grade than a corruption's level.
    A degraded image the nets read as they read a good one is named clean, or mislabeled-HQ when its label is not
    the one they read: the overall low-quality recall hides which kinds of damage those are.
    """
    if "degradation" not in joined.columns:
        return {"per_degradation": None, "per_severity": None}
    category = joined["category_report"].to_numpy(dtype=object)
    good_scores = p_lq[~true_lq]
    degraded = np.flatnonzero(true_lq)

    def row(members: np.ndarray) -> dict[str, Any]:
        return _degraded_row(members, category=category, flagged=flagged, p_lq=p_lq, good_scores=good_scores)

    # The distinct values are parsed once, then spread back over the images (a few distinct values, many images).
    codes, values = pd.factorize(joined["degradation"].to_numpy(dtype=object)[degraded], use_na_sentinel=True)
    names = [_degradation_names(v) for v in values] + [[_NOT_NAMED]]  # code -1 (missing): the last
    counts = np.array([len(n) for n in names])[codes]
    rows = np.repeat(degraded, counts)  # "blur+noise" counts under blur and under noise
    keys = np.array([name for code in codes for name in names[code]], dtype=object)
    per_degradation = {key: row(rows[keys == key]) for key in sorted(set(keys))}

    per_severity: dict[str, dict[str, Any]] | None = None
    if "severity" in joined.columns:
        codes, values = pd.factorize(joined["severity"].to_numpy(dtype=object)[degraded], use_na_sentinel=True)
        levels = np.array([_severity_key(v) for v in values] + [_NOT_NAMED], dtype=object)[codes]
        per_severity = {key: row(degraded[levels == key]) for key in sorted(set(levels), key=_severity_order)}
    return {"per_degradation": per_degradation, "per_severity": per_severity}


def _degradation_names(value: Any) -> list[str]:
    """The degradations a truth's cell names: ``"blur + noise"`` → ``["blur", "noise"]``, spaces and empty parts
    dropped; a cell naming none, `_NOT_NAMED`."""
    parts = [part.strip() for part in str(value).split("+")]
    return [part for part in parts if part] or [_NOT_NAMED]


def _finite_number(value: Any) -> float | None:
    """``value`` (a number, or text that says one) as a finite float; None for other text, an infinity or NaN."""
    number = pd.to_numeric(pd.Series([value]), errors="coerce").iloc[0]
    return float(number) if pd.notna(number) and math.isfinite(number) else None


def _severity_key(value: Any) -> str:
    """A severity as its table key: a finite number as the shortest text that says it exactly (4.0 → ``"4"``, 4.5 →
    ``"4.5"``, 1000001 → ``"1000001"``), other text as written, an empty cell `_NOT_NAMED`."""
    if (number := _finite_number(value)) is not None:
        return repr(number).removesuffix(".0")
    return str(value).strip() or _NOT_NAMED


def _severity_order(key: str) -> tuple[int, float, str]:
    """Numbers in order, then text by name, then `_NOT_NAMED` (as 2 before 10, not as text sorts them)."""
    if key == _NOT_NAMED:
        return (2, 0.0, key)
    number = _finite_number(key)
    return (0, number, key) if number is not None else (1, 0.0, key)


def _degraded_row(
    members: np.ndarray, *, category: np.ndarray, flagged: np.ndarray, p_lq: np.ndarray, good_scores: np.ndarray
) -> dict[str, Any]:
    """One row of `_degraded_detection`: the degraded images at ``members`` ((M,) row positions), what the report
    names them (``category``, (N,)), how many it flags, and the AUC of their ``p_lq`` against ``good_scores``."""
    named = {name: int((category[members] == name).sum()) for name in CATEGORIES}
    target = np.r_[np.ones(len(members), dtype=bool), np.zeros(len(good_scores), dtype=bool)]
    return {
        "n": len(members),
        "named": named,
        "lq_recall": _num(named["mislabeled_lq"] / len(members)),
        "flagged": _num(flagged[members].mean()),
        "roc_auc": _auc(target, np.r_[p_lq[members], good_scores]),
    }


def _relabel_metrics(joined: pd.DataFrame) -> dict[str, Any]:
    """How far a curator can trust the suggested labels of the rows the report proposes to relabel.

    ``joined`` has ``category_report``, ``category_truth``, ``suggested_label`` and ``true_label`` (class names;
    compared as text). A proposal is a ``mislabeled_hq`` row: its suggested label replaces the given one.

    Returns
    -------
    dict
        ``proposed`` (rows the report would relabel), ``correct`` (of those, suggested = true label),
        ``precision`` (``correct / proposed``: the share of accepted suggestions that are right), ``wrong_labels``
        (images whose truth is ``mislabeled_hq``: wrong labels on good images) and ``recall`` (the share of them
        the report relabels correctly); ratios are ``None`` when their denominator is 0.
    """
    proposed = joined["category_report"].to_numpy(dtype=object) == "mislabeled_hq"
    right = joined["suggested_label"].astype(str).to_numpy() == joined["true_label"].astype(str).to_numpy()
    fixed = proposed & right
    target = joined["category_truth"].to_numpy(dtype=object) == "mislabeled_hq"
    n_proposed, n_target = int(proposed.sum()), int(target.sum())
    return {
        "proposed": n_proposed,
        "correct": int(fixed.sum()),
        "precision": _num(fixed.sum() / n_proposed) if n_proposed else None,
        "wrong_labels": n_target,
        "recall": _num((fixed & target).sum() / n_target) if n_target else None,
    }


def render_evaluation(result: Mapping[str, Any], console: Console, *, per_class: bool | None = None) -> None:
    """Print an :func:`evaluate_report` result as rich tables.

    Per-category precision / recall / F1 / support with macro-F1 and accuracy; mislabeled detection; ROC-AUCs;
    the suggested relabels (when scored); the confusion matrix; the degraded images by degradation and severity
    (when the truth names them); detection by given label, the classes losing the most correct labels first: every
    class when ``per_class`` is True, none when it is False, and when it is None the first :data:`PER_CLASS_ROWS`.
    """
    left_out, unchecked = result["left_out"], result.get("unchecked", 0)
    scored = f"{result['n']} images" + (f"; {left_out} of the truth's not in the report, left out" if left_out else "")
    scored += f"; {unchecked} of the report's not in the truth, left out" if unchecked else ""
    per_cat = Table(title=f"Categories ({scored})", title_justify="left")
    per_cat.add_column("category")
    for name in ("precision", "recall", "F1", "support"):
        per_cat.add_column(name, justify="right")
    for name, row in result["per_category"].items():
        per_cat.add_row(name, _fmt(row["precision"]), _fmt(row["recall"]), _fmt(row["f1"]), str(row["support"]))
    per_cat.add_section()
    over = result.get("macro_f1_over", list(CATEGORIES))
    macro = "macro-F1" if len(over) == len(CATEGORIES) else f"macro-F1 ({len(over)}-way: {', '.join(over)})"
    per_cat.add_row(macro, "", "", _fmt(result["macro_f1"]), "")
    per_cat.add_row("accuracy", "", "", _fmt(result["accuracy"]), "")
    console.print(per_cat)

    det = result["detection"]
    detection = Table(title="Mislabeled detection (is_label_issue vs category != clean)", title_justify="left")
    for name in ("precision", "recall", "F1", "mislabeled", "flagged"):
        detection.add_column(name, justify="right")
    detection.add_row(
        _fmt(det["precision"]), _fmt(det["recall"]), _fmt(det["f1"]), str(det["support"]), str(det["flagged"])
    )
    console.print(detection)

    aucs = Table(title="ROC-AUC", title_justify="left")
    aucs.add_column("target")
    aucs.add_column("score")
    aucs.add_column("AUC", justify="right")
    for target, scores in result["roc_auc_by_score"].items():
        definition = result["targets"].get(target, target)
        for i, (score, value) in enumerate(scores.items()):
            # The first score of each target is its headline (the one in result["roc_auc"]); the rest compare.
            text = f"[bold]{_fmt(value)}[/bold]" if i == 0 else _fmt(value)
            aucs.add_row(f"{target} ({definition})" if i == 0 else "", score, text)
    console.print(aucs)

    relabel = result.get("relabel")
    if relabel is not None:
        table = Table(title="Suggested relabels (mislabeled_hq rows vs true_label)", title_justify="left")
        for name in ("proposed", "correct", "precision", "wrong labels (truth mislabeled_hq)", "share fixed"):
            table.add_column(name, justify="right")
        table.add_row(
            str(relabel["proposed"]),
            str(relabel["correct"]),
            _fmt(relabel["precision"]),
            str(relabel["wrong_labels"]),
            _fmt(relabel["recall"]),
        )
        console.print(table)

    cm = result["confusion_matrix"]
    matrix = Table(title="Confusion matrix (rows: truth, columns: predicted)", title_justify="left")
    matrix.add_column("truth \\ predicted")
    for label in cm["labels"]:
        matrix.add_column(label, justify="right")
    for label, row in zip(cm["labels"], cm["matrix"], strict=True):
        matrix.add_row(label, *(str(value) for value in row))
    console.print(matrix)

    if groups := result.get("groups"):
        table = Table(title=f"Units by {groups['column']} and given label (by rank)", title_justify="left")
        for name in ("units scored", "wrongly labelled", "degraded only", "images with no group", "ROC-AUC"):
            table.add_column(name, justify="right")
        table.add_column("average precision", justify="right")
        counts = (str(groups[k]) for k in ("units", "wrong", "unscored", "ungrouped"))
        table.add_row(*counts, _fmt(groups["roc_auc"]), _fmt(groups["average_precision"]))
        console.print(table)

    _render_degraded(result, console)

    classes = result.get("per_class")
    if classes and per_class is not False:
        # The classes that lose the most correct labels first: where a curator would be misled (a rare class).
        order = sorted(classes, key=lambda label: (-classes[label]["correct_flagged"], label))
        title = "Mislabeled detection by given label, most correct labels flagged first"
        if per_class is None and len(order) > PER_CLASS_ROWS:
            title += f" ({PER_CLASS_ROWS} of {len(order)} classes; all with --per-class and in --json)"
            order = order[:PER_CLASS_ROWS]
        table = Table(title=title, title_justify="left")
        table.add_column("given label")
        for name in ("images", "mislabeled", "flagged", "precision", "recall", "correct labels flagged"):
            table.add_column(name, justify="right")
        for label in order:
            row = classes[label]
            counts = (str(row[k]) for k in ("n", "mislabeled", "flagged"))
            rates = (_fmt(row[k]) for k in ("precision", "recall", "false_alarms"))
            table.add_row(Text(label), *counts, *rates)  # Text: a class name is not markup
        console.print(table)


def _render_degraded(result: Mapping[str, Any], console: Console) -> None:
    """The degraded images by degradation (the kinds the report names low quality least often first), then by
    severity in order."""
    kinds, levels = result.get("per_degradation") or {}, result.get("per_severity") or {}
    if not kinds and not levels:
        return
    title = (
        "Degraded images: what the report names them (shares of the row's images; AUC of p_mislabeled_lq "
        "against the good images)"
    )
    table = Table(title=title, title_justify="left")
    table.add_column("degradation", no_wrap=True)
    # Short headings: the table fits 80 columns, as the others do.
    for name in ("images", "clean", "mis-hq", "mis-lq", "share lq", "flagged", "AUC"):
        table.add_column(name, justify="right")

    def add(label: str, row: Mapping[str, Any]) -> None:
        named = (str(row["named"][name]) for name in CATEGORIES)
        rates = (_fmt(row[k]) for k in ("lq_recall", "flagged", "roc_auc"))
        table.add_row(Text(label), str(row["n"]), *named, *rates)

    for kind in sorted(kinds, key=lambda k: (kinds[k]["lq_recall"], k)):
        add(kind, kinds[kind])
    table.add_section()
    for level, row in levels.items():
        add(f"severity {level}", row)
    console.print(table)


# --------------------------------------------------------------------------------------------------- helpers


def _require_columns(frame: pd.DataFrame, columns: tuple[str, ...], *, what: str) -> None:
    missing = [name for name in columns if name not in frame.columns]
    if missing:
        raise QmixError(f"the {what} lacks column(s): {', '.join(missing)}")


def _join(
    *, report: pd.DataFrame, truth: pd.DataFrame, skip_missing: bool = False, skip_unchecked: bool = False
) -> pd.DataFrame:
    """Join on ``sample_id`` once both sides hold the same unique ids (the truth's may lack some of the report's
    with ``skip_unchecked``, the report's some of the truth's with ``skip_missing``) and valid categories."""
    rep, tru = check_verdict_rows(report, what="report"), check_verdict_rows(truth, what="truth")

    for frame, what in ((rep, "report"), (tru, "truth")):
        if frame.empty:
            raise QmixError(f"the {what} is empty: nothing to evaluate")
    # Membership by a hash index of the other side's ids, unique by now: Python sets of a million ids took 2.7 s,
    # and Series.isin, on pandas' Arrow-backed strings, converts every value in Python (8 s).
    in_truth = pd.Index(tru["sample_id"]).get_indexer(rep["sample_id"]) >= 0
    in_report = pd.Index(rep["sample_id"]).get_indexer(tru["sample_id"]) >= 0
    only_report, only_truth = sorted(rep["sample_id"][~in_truth]), sorted(tru["sample_id"][~in_report])
    lost = ""
    if only_report or only_truth:  # a truth or report saved by a spreadsheet may have lost its ids' leading zeros
        lost = zeros_lost(only_truth, rep["sample_id"], whose="the report's", file="the truth") or zeros_lost(
            only_report, tru["sample_id"], whose="the truth's", file="the report"
        )
    if not in_truth.any():
        raise QmixError(
            "the report and the truth share no image (sample_id)" + (lost or ": is this the truth of that dataset?")
        )
    if lost:  # whatever --on-missing and --on-unchecked say: skipping those rows would score the rest without a word
        raise QmixError("the report and the truth do not cover the same images" + lost)
    problems = []
    if only_report and not skip_unchecked:
        problems.append(
            summarise_offenders("report rows missing from the truth", only_report)
            + " (to score the report on a truth of part of its images, such as those checked by hand, pass "
            "--on-unchecked skip)"
        )
    if only_truth and not skip_missing:
        problems.append(
            summarise_offenders("truth rows missing from the report", only_truth)
            + " (to score a report of part of the images on those, pass --on-missing skip)"
        )
    if problems:
        raise QmixError("the report and the truth do not cover the same images: " + "; ".join(problems))
    if "given_label" in rep.columns and "label" in tru.columns:
        # Same ids, other labels: the truth of another corruption (another seed) of the same images, which would
        # score the report against verdicts about labels it never saw.
        shared = rep[in_truth]
        differ = given_label_mismatches(
            shared.set_index("sample_id")["given_label"], tru.set_index("sample_id")["label"]
        )
        if differ:
            raise QmixError(
                summarise_offenders("images whose given label in the report is not the truth manifest's", differ)
                + "; is this the truth of the dataset that was audited?"
            )

    # Truth columns come from the truth only, never from a report that carries a column of the same name along.
    truth_only = ("is_low_quality", "is_label_noisy", "true_label", "degradation", "severity")
    optional = [c for c in truth_only if c in tru.columns]
    rep = rep.drop(columns=[c for c in truth_only if c in rep.columns])
    return rep.merge(
        tru[["sample_id", "category", *optional]],
        on="sample_id",
        how="inner",
        suffixes=("_report", "_truth"),
        validate="1:1",
    )


def _scores(frame: pd.DataFrame, column: str) -> np.ndarray | None:
    if column not in frame.columns:
        return None
    return pd.to_numeric(frame[column], errors="coerce").to_numpy(dtype=np.float64)


def _neg_scores(frame: pd.DataFrame, column: str) -> np.ndarray | None:
    """``column`` negated: ranked as ``1 - column`` is, but without the rounding that makes every value below about
    6e-17 (a p_clean of 1e-30 is common) one tie at 1.0; only the order matters to an AUC."""
    scores = _scores(frame, column)
    return None if scores is None else -scores


def _aucs(target: np.ndarray, scores: Mapping[str, np.ndarray | None]) -> dict[str, float | None]:
    """ROC-AUC of each score for a binary target; None when undefined (one class or non-finite scores)."""
    return {name: _auc(target, values) for name, values in scores.items() if values is not None}


def _auc(target: np.ndarray, scores: np.ndarray) -> float | None:
    if len(np.unique(target)) < 2 or not np.isfinite(scores).all():
        return None
    return _num(roc_auc_score(target, scores))


def _num(value: Any) -> float | None:
    value = float(value)
    return None if math.isnan(value) else value


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
