"""A reviewer's decisions on a report's verdicts, laid over the report before `qmix apply` acts on it.

A review sheet is the CSV the page of ``qmix show`` downloads (or one written by hand, or a DataFrame in Python):
one row per image a person looked at, with the verdict they reached in the report's own terms, ``sample_id``,
``category`` (``clean``, ``mislabeled_hq`` or ``mislabeled_lq``) and ``suggested_label`` (the label to give a
``mislabeled_hq`` image; blank otherwise), and optionally ``given_label`` (checked against the report's, so that a
review of another labelling is refused). Every other column is ignored. Reading is here; the overlay is pure.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from qmix_cli.categories import CATEGORIES, MIS_H, MIS_L
from qmix_cli.errors import QmixError, summarise_offenders
from qmix_cli.io import csv_header, is_pipe_or_device
from qmix_cli.reporting.report import check_verdict_rows, given_label_mismatches

#: The columns a review sheet must have; ``suggested_label`` and ``given_label`` may be left out.
REVIEW_COLUMNS = ("sample_id", "category")
# Columns of a report that no review sheet has: a report (or a copy of it) given as the review would make every one of
# its rows a person's decision, carried out whatever --rare-classes, --hq and --lq say.
_REPORT_ONLY = ("p_clean", "rank", "loss", "uncertainty")
# The first bytes of the files a sheet is often mistaken for.
_NOT_CSV = {b"PAR1": "a Parquet file", b"PK\x03\x04": "a zip archive (an Excel workbook?)"}


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
        even for a class too rare for the audit's own verdicts (`qmix_cli.reporting.apply.apply_verdicts`).
    overruled
        How many of those rows now have another verdict, or another suggested label for a ``mislabeled_hq`` image,
        than the audit gave.
    """

    report: pd.DataFrame
    ids: list[str]
    overruled: int


def read_review(path: str | Path) -> pd.DataFrame:
    """A review sheet (CSV, separated by commas, semicolons or tabs) as text columns, blank cells null.

    Raises
    ------
    QmixError
        The file is missing, a pipe, not UTF-8 text, or not a table.
    """
    path = Path(path)
    if is_pipe_or_device(path):
        raise QmixError(f"cannot read review {path}: it is a pipe or a device, not a file; save it to a file first")
    if path.is_dir():
        raise QmixError(f"review {path} is a folder; give the review sheet (a CSV file)")
    if not path.is_file():
        raise QmixError(f"review not found: {path}")
    with open(path, "rb") as f:
        start = f.read(4)
    for magic, kind in _NOT_CSV.items():
        if start.startswith(magic):
            raise QmixError(f"review {path} is {kind}; a review sheet is a CSV file (save it as CSV)")
    try:
        sep, header = csv_header(path)
        if twice := sorted({name for name in header if header.count(name) > 1}):
            raise QmixError(f"review {path} names column(s) {', '.join(twice)} twice; keep one of each")
        # A row with more fields than the header is an error, not a first column made the index (pandas' default) or
        # fields dropped with a warning (index_col=False's).
        with warnings.catch_warnings():
            warnings.simplefilter("error", pd.errors.ParserWarning)
            return pd.read_csv(
                path, sep=sep, dtype=str, keep_default_na=False, na_values=[""], encoding="utf-8-sig", index_col=False
            )
    except pd.errors.ParserWarning:
        raise QmixError(f"cannot read review {path}: a row has more fields than its header") from None
    except (UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise QmixError(f"cannot read review {path}: {str(exc).strip().splitlines()[0]}") from exc


def overrule(report: pd.DataFrame, review: pd.DataFrame) -> Reviewed:
    """``report`` with the verdicts of ``review`` in place of its own.

    Parameters
    ----------
    report
        A report (``sample_id``, ``given_label``, ``category``, ``suggested_label``), its ids unique.
    review
        A review sheet (`read_review`, or a DataFrame): ``sample_id`` and ``category``, optionally
        ``suggested_label`` and ``given_label``; at most one row per image.

    Raises
    ------
    QmixError
        A column missing, or a report's columns (a report given as the review); no rows; a row without an id or a
        category, a duplicate id or an unknown category; rows of images the report does not have, or with another
        given label than the report's; a ``mislabeled_hq`` row without a suggested label, or relabelling an image to
        the label it has.
    """
    if missing := [c for c in REVIEW_COLUMNS if c not in review.columns]:
        found = ", ".join(map(str, review.columns[:8])) or "none"
        raise QmixError(
            f"the review lacks column(s) {', '.join(missing)} (it has {found}); a review sheet has sample_id, "
            "category and suggested_label, as qmix show's page downloads it"
        )
    if report_only := [c for c in _REPORT_ONLY if c in review.columns]:
        raise QmixError(
            f"the review has a report's columns ({', '.join(report_only)}): a review sheet lists only the images a "
            "person decided (sample_id, category, suggested_label); keep the rows you changed, or give an edited "
            "report as --report"
        )
    if review.empty:
        raise QmixError("the review has no rows; give the images you decided, one row each")
    if blank := int(review["category"].isna().sum()):
        raise QmixError(f"the review has {blank} row{'s' * (blank != 1)} without a category")
    review = check_verdict_rows(review, what="review")
    ids = pd.Index(report["sample_id"].astype(str))
    where = ids.get_indexer(review["sample_id"])
    if (where < 0).any():
        unknown = review["sample_id"][where < 0].tolist()
        raise QmixError(summarise_offenders("review rows of images the report does not have", unknown))
    if "given_label" in review.columns:  # checked where written: a sheet made by hand may leave it blank
        stated = review["given_label"].notna().to_numpy()
        given = pd.Series(review["given_label"].to_numpy()[stated], index=review["sample_id"].to_numpy()[stated])
        mine = pd.Series(report["given_label"].to_numpy()[where], index=review["sample_id"].to_numpy())
        if differ := given_label_mismatches(given, mine):
            raise QmixError(
                summarise_offenders("review rows whose given label is not the report's", differ)
                + "; is this a review of this report?"
            )
    category = review["category"].astype(str).to_numpy()
    stated = review["suggested_label"] if "suggested_label" in review.columns else pd.Series([None] * len(review))
    suggested = np.where(pd.isna(stated.to_numpy(dtype=object)), None, stated.astype(str).to_numpy())
    # A suggestion means something only on a wrong label of a good image; on the others it is cleared, as audit does.
    suggested = np.where(category == CATEGORIES[MIS_H], suggested, None)
    relabelled = category == CATEGORIES[MIS_H]
    if (unsure := relabelled & pd.isna(suggested)).any():  # a person's verdict is carried out: it needs its label
        raise QmixError(
            summarise_offenders(
                "review rows of mislabeled_hq without a suggested label", review["sample_id"][unsure].tolist()
            )
            + "; give the label to relabel them to"
        )
    given = report["given_label"].astype(str).to_numpy()[where]
    if (own := relabelled & (suggested == given)).any():
        raise QmixError(
            summarise_offenders(
                "review rows relabelling an image to the label it has", review["sample_id"][own].tolist()
            )
            + "; call them clean"
        )

    before_category = report["category"].astype(str).to_numpy()[where]
    before = np.array([None if pd.isna(v) else str(v) for v in report["suggested_label"].to_numpy(dtype=object)[where]])
    changed = (before_category != category) | ((category == CATEGORIES[MIS_H]) & (before != suggested))
    out = report.copy()
    out["category"] = out["category"].astype(object)
    suggestions = out["suggested_label"].astype(object)
    out["suggested_label"] = suggestions.where(suggestions.notna(), None)  # one null, whatever the column held
    out.iloc[where, out.columns.get_loc("category")] = category
    out.iloc[where, out.columns.get_loc("suggested_label")] = suggested
    out.attrs = dict(report.attrs)
    return Reviewed(report=out, ids=review["sample_id"].tolist(), overruled=int(changed.sum()))


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
    reviewed = overrule(report, review)
    before = report.assign(sample_id=report["sample_id"].astype(str)).set_index("sample_id").loc[reviewed.ids]
    after = reviewed.report.assign(sample_id=reviewed.report["sample_id"].astype(str)).set_index("sample_id")
    after = after.loc[reviewed.ids]
    return {
        sample_id: {"value": _decision(verdict), "given": str(verdict["given_label"]), "flagged": _decision(audit)}
        for (sample_id, verdict), (_, audit) in zip(after.iterrows(), before.iterrows(), strict=True)
    }


def _decision(row: pd.Series) -> str:
    """A report row's verdict as the page's script writes a decision."""
    if row["category"] == CATEGORIES[MIS_H]:
        return "" if pd.isna(row["suggested_label"]) else f"hq:{row['suggested_label']}"
    return "lq" if row["category"] == CATEGORIES[MIS_L] else "clean"
