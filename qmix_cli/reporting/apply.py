"""Apply a report's verdicts to the dataset it audits: the manifest a curator trains on next.

What happens to each image follows its verdict: ``mislabeled_hq`` images are relabelled with the report's
suggested label (or dropped, or kept as they are), ``mislabeled_lq`` images are dropped (or kept), ``clean``
images are kept. Images the report has no row for (an audit with ``--on-bad-image skip`` left them out) are an
error unless the caller says to drop or keep them. Nothing here reads or writes a file: `qmix_cli.api.apply`
does the I/O.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from qmix_cli.categories import CATEGORIES, MIS_H, MIS_L, holds_verdicts, truth_categories
from qmix_cli.errors import QmixError, summarise_offenders, zeros_lost
from qmix_cli.reporting.report import as_bool, given_label_mismatches, verdict_columns

HQ_ACTIONS = ("relabel", "drop", "keep")
LQ_ACTIONS = ("drop", "keep")
ON_MISSING = ("error", "drop", "keep")
# Images of the classes too small for their verdicts to say much (`qmix_cli.categories.SMALL_CLASS`): kept as they
# are whatever their verdict, or treated as any other image; "auto" decides by whether the report is of the run's
# training set (`qmix_cli.api.apply`).
RARE_ACTIONS = ("auto", "keep", "apply")
# A class that keeps less than this share of its images is named (`Applied.shrunk`).
SHRINK_NOTE = 0.5
# Columns the new manifest gains: the label the image had and the verdict that changed it (or not).
GIVEN_COLUMN = "qmix_given_label"
VERDICT_COLUMN = "qmix_verdict"
# Whether that verdict was a person's (a review sheet's) rather than the audit's: who decided a change.
REVIEWED_COLUMN = "qmix_reviewed"


@dataclass(frozen=True)
class Applied:
    """The new manifest's rows and what was done.

    Attributes
    ----------
    frame
        The dataset's rows that stay, in their order, every column kept; ``label`` is the new label;
        `GIVEN_COLUMN` the label before qmix first changed it (kept from an earlier round), `VERDICT_COLUMN`
        the report's category ("" where it has none) and `REVIEWED_COLUMN` whether that verdict was a person's
        (``reviewed``). Truth columns written by ``qmix corrupt`` (``category``,
        ``is_label_noisy``) describe the new labels.
    counts
        ``images`` (in the dataset), ``kept`` (rows of the new manifest), ``relabelled``, ``dropped_hq``,
        ``dropped_lq``, ``missing`` (rows the report lacks), ``dropped_missing``, ``kept_missing``, ``kept_rare``
        (flagged images kept as they are, their class being one of ``keep_classes``, that their action would have
        changed), ``changed`` (images relabelled or dropped) and ``unreviewed`` (of those, the ones not in
        ``reviewed``).
    emptied
        Classes the dataset had that no image of the new manifest carries.
    kept_classes
        Of the ``keep_classes`` asked for, those that had flagged images kept as they are.
    by_class
        One row per label of the dataset or the new manifest (index ``label``, text): ``before`` (images given it),
        ``kept`` (of those, the ones that keep it), ``relabelled_away``, ``dropped``, ``relabelled_to`` (images
        given another label and relabelled to it) and ``after`` (images the new manifest gives it: kept +
        relabelled to it).
    shrunk
        Classes that keep less than `SHRINK_NOTE` of the images given them (whatever they gain by relabelling), not
        emptied, the smallest share kept first: on an imbalanced set the verdicts fall hardest on the small class
        (README, two-class sets where one class outnumbers the other), and a manifest that quietly halves it trains
        a different problem. Counted within this application: a manifest applied again is compared with itself.
    """

    frame: pd.DataFrame
    counts: dict[str, int]
    emptied: list[str] = field(default_factory=list)
    kept_classes: list[str] = field(default_factory=list)
    by_class: pd.DataFrame = field(default_factory=pd.DataFrame)
    shrunk: list[str] = field(default_factory=list)


def apply_verdicts(
    frame: pd.DataFrame,
    report: pd.DataFrame,
    *,
    hq: str = "relabel",
    lq: str = "drop",
    on_missing: str = "error",
    classes: Sequence[str] = (),
    keep_classes: Collection[str] = (),
    reviewed: Collection[str] = (),
) -> Applied:
    """The manifest rows that follow from a report's verdicts.

    Parameters
    ----------
    frame
        The dataset's manifest rows: ``sample_id``, ``path``, ``label`` (str) and any other columns.
    report
        A report of that dataset (`qmix_cli.reporting.report.read_report`): ``sample_id``, ``category``,
        ``given_label`` and ``suggested_label`` (used with ``hq="relabel"``).
    hq
        What to do with ``mislabeled_hq`` images: ``"relabel"`` (to ``suggested_label``), ``"drop"`` or ``"keep"``.
    lq
        What to do with ``mislabeled_lq`` images: ``"drop"`` or ``"keep"`` (their label unchanged).
    on_missing
        Dataset rows the report lacks: ``"error"``, ``"drop"`` or ``"keep"`` (unchanged).
    classes
        The run's classes, when known (a Parquet report records them): a suggested label must be one of them or of
        the dataset's labels.
    keep_classes
        Given labels whose images stay as they are whatever their verdict: classes too small for the audit to judge
        (`qmix_cli.categories.small_classes` of the training set).
    reviewed
        Ids of images whose verdict a person gave (`qmix_cli.reporting.review.overrule`): carried out as given
        (``mislabeled_hq`` relabelled, ``mislabeled_lq`` dropped) whatever ``hq``, ``lq`` and ``keep_classes`` say,
        which are rules for the audit's verdicts, a reviewer's decision not being the audit's guess.

    Returns
    -------
    Applied

    Raises
    ------
    QmixError
        An unknown action; report rows of images the dataset lacks, or with another given label than the
        dataset's (a report of another dataset or labelling); duplicate ids; unknown categories; a
        ``mislabeled_hq`` row to relabel without a suggested label, or with one that is no class (an edited
        report); dataset rows the report lacks, with ``on_missing="error"``; nothing left to write.
    """
    check_actions(hq=hq, lq=lq, on_missing=on_missing)
    ids, given = frame["sample_id"].astype(str), frame["label"].astype(str).to_numpy()
    rep, missing = _aligned_report(
        report, ids=ids, given=given, on_missing=on_missing, reapplied=VERDICT_COLUMN in frame
    )

    verdict = rep["category"].fillna("").astype(str).to_numpy()
    # Kept as they are: the images of those classes that their verdict's action would change.
    acted_on = ((verdict == CATEGORIES[MIS_H]) & (hq != "keep")) | ((verdict == CATEGORIES[MIS_L]) & (lq == "drop"))
    person = ids.isin(set(reviewed)).to_numpy()  # a person's verdict is carried out as given, whatever the options say
    rare = np.isin(given, list(keep_classes)) & acted_on & ~person
    is_hq, is_lq = (verdict == CATEGORIES[MIS_H]) & ~rare, (verdict == CATEGORIES[MIS_L]) & ~rare
    drop = (is_hq & (hq == "drop") & ~person) | (is_lq & ((lq == "drop") | person)) | (missing & (on_missing == "drop"))
    relabel = is_hq & ((hq == "relabel") | person)
    suggested = rep["suggested_label"].to_numpy(dtype=object)
    unsure = relabel & pd.isna(suggested)
    suggested = np.where(pd.isna(suggested), None, suggested.astype(str))  # labels are text, as in the manifest
    if unsure.any():
        raise QmixError(
            summarise_offenders("mislabeled_hq rows without a suggested label", ids[unsure].tolist())
            + " (pass --hq drop or keep)"
        )
    known = set(given) | set(classes)
    foreign = sorted(set(suggested[relabel]) - known)
    if foreign:
        raise QmixError(
            summarise_offenders("suggested labels outside the classes of the dataset and the run", foreign)
            + " (an edited report?)"
        )
    labels = np.where(relabel, suggested, given).astype(object)
    moved = relabel & (labels != given)  # relabelled to another label than the one given
    if drop.all():
        raise QmixError("every image would be dropped; nothing written")

    first_given = frame[GIVEN_COLUMN].astype(str).to_numpy() if GIVEN_COLUMN in frame else given
    out = frame.assign(label=labels, **{GIVEN_COLUMN: first_given, VERDICT_COLUMN: verdict, REVIEWED_COLUMN: person})
    out = _updated_truth(out)[~drop].reset_index(drop=True)
    counts = {
        "images": len(frame),
        "kept": len(out),
        "relabelled": int(moved.sum()),
        "dropped_hq": int((is_hq & drop).sum()),
        "dropped_lq": int((is_lq & drop).sum()),
        "missing": int(missing.sum()),
        "dropped_missing": int((missing & drop).sum()),
        "kept_missing": int((missing & ~drop).sum()),
        "kept_rare": int(rare.sum()),
        # The changes no person decided (images dropped for having no verdict too): what a reviewer who gave a sheet
        # still takes on trust.
        "changed": int((moved | drop).sum()),
        "unreviewed": int(((moved | drop) & ~person).sum()),
    }
    by_class = class_changes(given, labels, drop=drop)
    left, had = by_class.index[by_class["after"] > 0], by_class["before"] > 0
    if len(left) < 2 <= had.sum():  # no run can train on it: refused as an all-dropped manifest is
        raise QmixError(
            f"the verdicts would leave one class ({left[0]}) and a run needs two; nothing written (pass "
            "--hq keep to keep the labels the report calls wrong)"
        )
    emptied = by_class.index[had & (by_class["after"] == 0)].tolist()
    kept_classes = [c for c in keep_classes if c in set(given[rare])]  # in the order asked
    # Its own images, not its size: a class that loses most of its images and gains as many has still lost them.
    shrinks = (by_class["after"] > 0) & (by_class["kept"] < SHRINK_NOTE * by_class["before"])
    shrunk = (by_class["kept"] / by_class["before"])[shrinks].sort_values(kind="stable").index.tolist()
    return Applied(
        frame=out, counts=counts, emptied=emptied, kept_classes=kept_classes, by_class=by_class, shrunk=shrunk
    )


def class_changes(given: np.ndarray, labels: np.ndarray, *, drop: np.ndarray) -> pd.DataFrame:
    """What the verdicts do to each class: (N,) text ``given`` labels, (N,) text new ``labels`` and (N,) bool
    ``drop`` in, `Applied.by_class` out (sorted by label)."""
    given, labels = given.astype(str), labels.astype(str)
    changes = pd.DataFrame({"given": given, "new": labels, "kept": ~drop, "moved": (labels != given) & ~drop})
    count = {
        "before": changes.groupby("given").size(),
        "kept": changes[changes["kept"] & ~changes["moved"]].groupby("given").size(),
        "relabelled_away": changes[changes["moved"]].groupby("given").size(),
        "dropped": changes[~changes["kept"]].groupby("given").size(),
        "relabelled_to": changes[changes["moved"]].groupby("new").size(),
        "after": changes[changes["kept"]].groupby("new").size(),
    }
    table = pd.DataFrame(count).fillna(0).astype(np.int64).sort_index()
    table.index.name = "label"
    return table


def integers_restored(frame: pd.DataFrame, columns: Mapping[str, np.dtype]) -> pd.DataFrame:
    """``frame`` with each of ``columns`` (the key columns a Parquet manifest stored as integers, read as text to be
    labels and ids, with the integer type it stored them as) in that type again, the first-given-label column with
    ``label``; a column holding anything else now (``007``, an edited label, a number outside the type) stays text.

    A downstream ``df.label == 3`` on the manifest apply wrote would otherwise match nothing, without a word.
    """

    def as_integers(column: str, dtype: np.dtype) -> np.ndarray | None:
        texts = frame[column].astype(str).tolist()
        if not all(t.lstrip("-").isdigit() and str(int(t)) == t for t in texts):
            return None
        values = [int(t) for t in texts]  # exact, whatever the width: no float on the way
        info = np.iinfo(dtype)
        if values and not info.min <= min(values) <= max(values) <= info.max:
            return None
        return np.array(values, dtype=dtype)

    converted = {
        c: n for c, dtype in columns.items() if c in frame.columns and (n := as_integers(c, dtype)) is not None
    }
    if "label" in converted and GIVEN_COLUMN in frame.columns:
        given = as_integers(GIVEN_COLUMN, converted["label"].dtype)
        if given is not None:
            converted[GIVEN_COLUMN] = given  # the labels it was given, alike
    return frame.assign(**converted)


def check_actions(*, hq: str, lq: str, on_missing: str, rare_classes: str = "auto") -> None:
    """Refuse an unknown action (`HQ_ACTIONS`, `LQ_ACTIONS`, `ON_MISSING`, `RARE_ACTIONS`) before any file is
    read."""
    for value, allowed, name in (
        (hq, HQ_ACTIONS, "hq"),
        (lq, LQ_ACTIONS, "lq"),
        (on_missing, ON_MISSING, "on-missing"),
        (rare_classes, RARE_ACTIONS, "rare-classes"),
    ):
        if value not in allowed:
            raise QmixError(f"{name} must be one of {', '.join(allowed)} (got {value!r})")


def _aligned_report(
    report: pd.DataFrame, *, ids: pd.Series, given: np.ndarray, on_missing: str, reapplied: bool
) -> tuple[pd.DataFrame, np.ndarray]:
    """The report's verdict columns in the dataset's row order (its ``ids``, (N,) text) and a (N,) bool mask of the
    rows it lacks, once it is known to be a report of this dataset: every row one of its images, with the label
    the dataset gives it (``given``, (N,) text). ``reapplied``: the dataset was written by `apply_verdicts`."""
    rep = verdict_columns(report)
    missing = rep.index.get_indexer(ids) < 0  # by its hash table: Series.isin of Arrow strings loops in Python
    unknown = rep.index.difference(pd.Index(ids)).tolist()
    if unknown:
        again = " (this manifest was written by qmix apply: audit it afresh first)" if reapplied else ""
        raise QmixError(
            summarise_offenders("report rows of images the dataset does not have", sorted(unknown))
            + (
                zeros_lost(unknown, ids, whose="the dataset's", file="the report")
                or zeros_lost(ids[missing], rep.index, whose="the report's", file="the manifest")
                or again
            )
        )
    if missing.any() and on_missing == "error":
        raise QmixError(
            summarise_offenders("dataset images the report has no verdict for", ids[missing].tolist())
            + " (pass --on-missing drop or keep)"
        )
    differ = given_label_mismatches(rep["given_label"], pd.Series(given, index=ids.to_numpy()))
    if differ:
        raise QmixError(
            summarise_offenders("images whose given label in the report is not the dataset's", differ)
            + "; is this the report of this dataset?"
        )
    return rep.reindex(ids), missing


def _updated_truth(frame: pd.DataFrame) -> pd.DataFrame:
    """Truth columns of a ``qmix corrupt`` manifest recomputed for the new labels (`truth_categories`), so that
    training's separation AUCs and ``qmix evaluate`` score against what the new manifest says."""
    if not {"true_label", "category"} <= set(frame.columns) or not holds_verdicts(frame["category"]):
        return frame
    if "is_low_quality" in frame.columns:
        is_lq = as_bool(frame["is_low_quality"], name="is_low_quality")
    else:  # truth written by hand with the category alone: the low-quality images are the ones it names so
        is_lq = frame["category"].astype(str).to_numpy() == CATEGORIES[MIS_L]
    noisy = frame["label"].astype(str).to_numpy() != frame["true_label"].astype(str).to_numpy()
    updated = frame.assign(category=truth_categories(is_low_quality=is_lq, is_label_noisy=noisy))
    return updated.assign(is_label_noisy=noisy) if "is_label_noisy" in frame.columns else updated
