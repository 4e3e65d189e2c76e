"""A reviewer's decisions on a report's verdicts, laid over the report before `qmix apply` acts on it.

A review sheet is the CSV the page of ``qmix show`` downloads (or one written by hand, or a DataFrame in Python):
one row per image a person looked at, with the verdict they reached in the report's own terms, ``sample_id``,
``category`` (``clean``, ``mislabeled_hq`` or ``mislabeled_lq``) and ``suggested_label`` (the label to give a
``mislabeled_hq`` image; blank otherwise), and optionally ``given_label`` (checked against the report's, so that a
review of another labelling is refused). Other columns are ignored, but for a report's own (``p_clean``, ``rank``...):
a report given as a sheet is refused. Reading is here; the overlay is pure.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from qmix_cli.categories import CATEGORIES, MIS_H, MIS_L
from qmix_cli.errors import QmixError, summarise_offenders, zeros_lost
from qmix_cli.io import is_pipe_or_device, read_csv_text
from qmix_cli.reporting.report import check_verdict_rows, given_label_mismatches, verdict_columns

#: The columns a review sheet must have; ``suggested_label`` and ``given_label`` may be left out.
REVIEW_COLUMNS = ("sample_id", "category")
# Columns of a report that no review sheet has: a report (or a copy of it) given as the review would make every one of
# its rows a person's decision, carried out whatever --rare-classes, --hq and --lq say.
_REPORT_ONLY = ("p_clean", "rank", "loss", "uncertainty")
# What each verdict does when a person gives it, for the errors a sheet written by hand meets.
_MEANINGS = (
    "a category is clean (the label is right: keep it), mislabeled_hq (relabel to suggested_label) or mislabeled_lq "
    "(the image is too poor: drop it)"
)


@dataclass(frozen=True)
class Reviewed:
    """A report with a review's verdicts in place of its own.

    Attributes
    ----------
    report
        The report's rows, in its order, ``category`` and ``suggested_label`` replaced on the rows the review decides
        (``suggested_label`` null where the review leaves it blank).
    ids
        The ``sample_id`` (text) of the rows the review decides: a person's decision, which `qmix apply` carries out
        as given, whatever its rules for the audit's verdicts say (`qmix_cli.reporting.apply.apply_verdicts`).
    rows
        ``(len(ids),)`` int: where those rows are in ``report`` (and in the report given), positionally.
    overruled
        How many of those rows now have another verdict, or another suggested label for a ``mislabeled_hq`` image,
        than the audit gave.
    """

    report: pd.DataFrame
    ids: list[str]
    rows: np.ndarray
    overruled: int


def read_review(path: str | Path) -> pd.DataFrame:
    """A review sheet (CSV, separated by commas, semicolons or tabs) as text columns, blank cells null
    (`qmix_cli.io.read_csv_text`, as a CSV manifest is read).

    Raises
    ------
    QmixError
        The file is missing, a folder, a pipe, a Parquet file or a workbook, not UTF-8 text, or not a table.
    """
    path = Path(path)
    if is_pipe_or_device(path):
        raise QmixError(f"cannot read review {path}: it is a pipe or a device, not a file; save it to a file first")
    if path.is_dir():
        raise QmixError(f"review {path} is a folder; give the review sheet (a CSV file)")
    if not path.is_file():
        raise QmixError(f"review not found: {path}")
    return read_csv_text(path, what="review", key_columns=(*REVIEW_COLUMNS, "suggested_label", "given_label"))


def overrule(report: pd.DataFrame, review: pd.DataFrame) -> Reviewed:
    """``report`` with the verdicts of ``review`` in place of its own.

    Parameters
    ----------
    report
        A report (``sample_id``, ``given_label``, ``category``, ``suggested_label``; `verdict_columns`), its class
        names in ``attrs["qmix"]`` where it records them.
    review
        A review sheet (`read_review`, or a DataFrame): ``sample_id`` and ``category``, optionally
        ``suggested_label`` and ``given_label``; at most one row per image.

    Raises
    ------
    QmixError
        The report's (as `verdict_columns`); the review's: a column missing, or a report's columns (a report given as
        the review); no rows; a row without an id or a category, a duplicate id or an unknown category; rows of images
        the report does not have, or with another given label than the report's; a ``mislabeled_hq`` row without a
        suggested label, relabelling an image to the label it has, or to a label that is no class of the report or
        its run.
    """
    rep = verdict_columns(report)
    review = _checked_sheet(review)
    where = rep.index.get_indexer(review["sample_id"])
    if (where < 0).any():
        unknown = review["sample_id"][where < 0].tolist()
        raise QmixError(
            summarise_offenders("review rows of images the report does not have", unknown)
            + (
                zeros_lost(unknown, rep.index, whose="the report's", file="the sheet")
                or zeros_lost(
                    rep.index.difference(review["sample_id"]), unknown, whose="the sheet's", file="the report"
                )
            )
        )
    given = rep["given_label"].astype(str).to_numpy()[where]
    if "given_label" in review.columns:  # checked where written: a sheet made by hand may leave it blank
        stated = review["given_label"].notna().to_numpy()
        if differ := given_label_mismatches(
            pd.Series(review["given_label"].to_numpy()[stated], index=review["sample_id"].to_numpy()[stated]),
            pd.Series(given, index=review["sample_id"].to_numpy()),
        ):
            raise QmixError(
                summarise_offenders("review rows whose given label is not the report's", differ)
                + "; is this a review of this report?"
            )
    category = review["category"].astype(str).to_numpy()
    relabelled = category == CATEGORIES[MIS_H]
    stated = review["suggested_label"] if "suggested_label" in review.columns else pd.Series([None] * len(review))
    # A blank cell is no label, whether a CSV left it empty (null) or a DataFrame holds "".
    labelled = stated.notna().to_numpy() & (stated.astype(str).str.strip() != "").to_numpy()
    if (stray := labelled & ~relabelled).any():  # "clean, 3" most likely means "this is a 3": not to be dropped quietly
        raise QmixError(
            summarise_offenders("review rows with a suggested_label on a clean or mislabeled_lq verdict",
                                review["sample_id"][stray].tolist())
            + "; a label is given only to relabel (mislabeled_hq)"
        )  # fmt: skip
    suggested = np.where(labelled, stated.astype(str).to_numpy(), None)
    classes = set(rep["given_label"].astype(str)) | set(
        json.loads(report.attrs.get("qmix", {}).get("class_names", "[]"))
    )
    for problem, rows, advice in (
        ("of mislabeled_hq without a suggested label", relabelled & pd.isna(suggested), "give the label to give them"),
        ("relabelling an image to the label it has", relabelled & (suggested == given), "call them clean"),
    ):
        if rows.any():  # a person's verdict is carried out as given, so it must name a label that changes something
            raise QmixError(
                summarise_offenders(f"review rows {problem}", review["sample_id"][rows].tolist()) + f"; {advice}"
            )
    if foreign := sorted(set(suggested[labelled].astype(str)) - classes):
        # Named by the labels, which is what is wrong: a float column of a sheet read without dtype=str reads "3.0".
        floats = " (a sheet read with pandas: read it with dtype=str)" if any(f.endswith(".0") for f in foreign) else ""
        raise QmixError(
            summarise_offenders("labels in the review that are no class of the report or its run", foreign)
            + f"; check the spelling{floats}"
        )

    before = rep.iloc[where]
    changed = (before["category"].astype(str).to_numpy() != category) | (
        relabelled & (before["suggested_label"].where(before["suggested_label"].notna(), None).to_numpy() != suggested)
    )
    out = report.copy()
    out["category"] = out["category"].astype(object)
    suggestions = out["suggested_label"].astype(object)
    out["suggested_label"] = suggestions.where(suggestions.notna(), None)  # one null, whatever the column held
    out.iloc[where, out.columns.get_loc("category")] = category
    out.iloc[where, out.columns.get_loc("suggested_label")] = suggested
    return Reviewed(report=out, ids=review["sample_id"].tolist(), rows=where, overruled=int(changed.sum()))


def _checked_sheet(review: pd.DataFrame) -> pd.DataFrame:
    """``review`` with its ids as text, once it has the columns of a sheet (and none of a report's), rows, and a
    category on each of them (`check_verdict_rows`: ids unique, categories verdicts)."""
    if missing := [c for c in REVIEW_COLUMNS if c not in review.columns]:
        found = ", ".join(map(str, review.columns[:8])) or "none"
        raise QmixError(
            f"the review lacks column(s) {', '.join(missing)} (it has {found}); a review sheet has sample_id, "
            "category and suggested_label, as qmix show's page downloads it"
        )
    if report_only := [c for c in _REPORT_ONLY if c in review.columns]:
        raise QmixError(
            f"the review has a report's columns ({', '.join(report_only)}): a review sheet lists only the images a "
            "person decided; keep only sample_id, category and suggested_label (and given_label) of the rows you "
            "changed, or give an edited report as --report"
        )
    if review.empty:
        raise QmixError("the review has no rows; give the images you decided, one row each")
    if blank := int(review["category"].isna().sum()):
        raise QmixError(f"the review has {blank} row{'s' * (blank != 1)} without a category; {_MEANINGS}")
    if unknown := sorted(set(review["category"].astype(str)) - set(CATEGORIES)):
        raise QmixError(f"the review has categories no verdict is called: {', '.join(map(repr, unknown))}; {_MEANINGS}")
    return check_verdict_rows(review, what="review")


def page_verdicts(report: pd.DataFrame, review: pd.DataFrame) -> dict[str, dict[str, str]]:
    """The verdicts of ``review`` as the page of ``qmix show --review`` starts its review with them (``review.js``):
    ``{sample_id: {"value": ..., "given": ..., "flagged": ...}}``, ``value`` the reviewer's decision and ``flagged``
    the one that agrees with the audit, each ``"clean"``, ``"lq"`` or ``"hq:LABEL"`` (``""``: a wrong label the
    audit suggests nothing for).

    Raises
    ------
    QmixError
        As `overrule`.
    """
    reviewed = overrule(report, review)  # the reviewed rows by position: no second pass over the whole report
    person, audit = reviewed.report.iloc[reviewed.rows], report.iloc[reviewed.rows]
    return {
        sample_id: {"value": _decision(mine), "given": str(mine["given_label"]), "flagged": _decision(theirs)}
        for sample_id, (_, mine), (_, theirs) in zip(reviewed.ids, person.iterrows(), audit.iterrows(), strict=True)
    }


def _decision(row: pd.Series) -> str:
    """A report row's verdict as the page's script writes a decision."""
    if row["category"] == CATEGORIES[MIS_H]:
        return "" if pd.isna(row["suggested_label"]) else f"hq:{row['suggested_label']}"
    return "lq" if row["category"] == CATEGORIES[MIS_L] else "clean"
