"""The audit by group: one row per subject and given label, for teams that review patients rather than images.

A label error in a collection of several images per subject (both eyes, follow-up scans, the slides of one lesion)
is usually the subject's: a wrong diagnosis sits on all of their images. The per-image report says so image by
image; :func:`summarise_groups` gathers it by *unit*, a group's images of one given label (the unit the audit's
folds use, `qmix_cli.engine.groups`), and ranks the units.

A unit's score is the **median** of its images' ``1 − p_clean``: a subject's wrong label shows on most of its
images, while a single unreadable image (its own ``mislabeled_lq`` row) or a single odd view moves a median little
and a maximum all the way. On 1,500 Fashion-MNIST "patients" with planted per-patient label errors
(`benchmarks/bench_groups.py`, GROUPS.md) the two rank wrong patients alike (ROC-AUC 0.95–0.97) until degraded views
keep their patient's (true) label, as a blurred scan keeps its patient's diagnosis; then the median ranks them
better on every run (+0.010 to +0.031; docs/decisions.md, "Twenty-seventh round").
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import pyarrow as pa

from qmix_cli.categories import CATEGORIES, CLEAN, MIS_H
from qmix_cli.data.groups import group_texts

GROUP_SCHEMA: pa.Schema = pa.schema(
    [
        pa.field("group", pa.string(), nullable=False),
        pa.field("given_label", pa.string(), nullable=False),
        pa.field("images", pa.int32(), nullable=False),
        *(pa.field(category, pa.int32(), nullable=False) for category in CATEGORIES),
        pa.field("issue_score", pa.float32(), nullable=False),
        pa.field("suggested_label", pa.string(), nullable=True),
        pa.field("rank", pa.int32(), nullable=False),
    ]
)


def summarise_groups(report: pd.DataFrame, *, groups: pd.Series | Sequence[object]) -> pd.DataFrame:
    """One row per unit (a group's images of one given label), the likeliest wrong labels first.

    Parameters
    ----------
    report
        The per-image report (`qmix audit`'s rows, any order): ``given_label``, ``category``, ``p_clean`` and
        ``suggested_label`` are read.
    groups
        ``(N,)`` each report row's group, aligned by position (a manifest column, reordered to the report's rows).
        Values are read as `qmix_cli.data.groups.group_text` reads them (``17``, ``17.0`` and ``"17"`` are one
        group); rows without a group are left out.

    Returns
    -------
    pandas.DataFrame
        :data:`GROUP_SCHEMA`'s columns, sorted by ``rank``: ``group`` and ``given_label``; ``images`` and how many
        of them fall in each category (``clean``, ``mislabeled_hq``, ``mislabeled_lq``, summing to ``images``);
        ``issue_score`` in [0, 1], the median of the images' ``1 − p_clean``; ``suggested_label``, the suggestion
        most of the unit's ``mislabeled_hq`` images make (ties by name), null when none is ``mislabeled_hq``;
        ``rank``, 1 for the likeliest wrong label: ascending median ``p_clean`` (``issue_score`` before it is
        rounded to float32, which makes every median below about 3e-8 a tie), then more images flagged, then
        ``group`` and ``given_label``. ``attrs["ungrouped"]`` counts the rows left out.
    """
    units = units_of_rows(report, groups=groups)
    has = units["group"].notna().to_numpy()
    category = report["category"].to_numpy()[has]
    rows = pd.DataFrame(
        {
            "group": units["group"].to_numpy()[has].astype(str),
            "given_label": units["given_label"].to_numpy()[has],
            "category": category,
            "p_clean": report["p_clean"].to_numpy(dtype=np.float64)[has],
            "suggested": np.where(category == CATEGORIES[MIS_H], report["suggested_label"].to_numpy()[has], None),
        }
    )
    if rows.empty:
        table = GROUP_SCHEMA.empty_table().to_pandas()
        table.attrs["ungrouped"] = int((~has).sum())
        return table
    keys = ["group", "given_label"]
    units = rows.groupby(keys, sort=True)
    # groupby-size-unstack, not crosstab: crosstab counts group by group in Python (11 s for a million rows).
    table = rows.groupby([*keys, "category"], sort=True).size().unstack(fill_value=0)
    table = table.reindex(columns=list(CATEGORIES), fill_value=0)
    table.insert(0, "images", units.size())
    # Ranked by the median p_clean itself: as 1 - p (float32, as stored) every median below 3e-8 would be one tie.
    median_p_clean = units["p_clean"].median()
    table["issue_score"] = (1.0 - median_p_clean).astype(np.float32)
    table["suggested_label"] = _majority_suggestion(rows, keys).reindex(table.index)
    table = table.reset_index()
    flagged = table["images"] - table[CATEGORIES[CLEAN]]
    order = np.lexsort(
        (
            table["given_label"].to_numpy(dtype=str),
            table["group"].to_numpy(dtype=str),
            -flagged.to_numpy(dtype=np.int64),
            median_p_clean.reindex(pd.MultiIndex.from_frame(table[keys])).to_numpy(dtype=np.float64),
        )
    )
    table = table.iloc[order].reset_index(drop=True)
    table["rank"] = np.arange(1, len(table) + 1, dtype=np.int32)
    table = table[GROUP_SCHEMA.names].astype({f.name: np.int32 for f in GROUP_SCHEMA if f.type == pa.int32()})
    table.columns.name = None
    table.attrs["ungrouped"] = int((~has).sum())
    return table


def units_of_rows(report: pd.DataFrame, *, groups: pd.Series | Sequence[object]) -> pd.DataFrame:
    """Each report row's unit: ``group`` (its group's text, `qmix_cli.data.groups.group_text`, None for no group)
    and ``given_label`` (text), one row per report row in its order, ``groups`` (N,) aligned by position."""
    if len(groups) != len(report):
        raise ValueError(f"groups has {len(groups)} values for {len(report)} report rows")
    return pd.DataFrame({"group": group_texts(groups), "given_label": report["given_label"].astype(str).to_numpy()})


def report_groups(report: pd.DataFrame, manifest: pd.DataFrame, column: str) -> pd.Series:
    """``(N,)`` each report row's value of the manifest's ``column``, matched by ``sample_id`` (a manifest without
    that column names its images by ``path``, as the dataset reader does); NaN for an id the manifest lacks."""
    ids = manifest["sample_id"] if "sample_id" in manifest.columns else manifest["path"]
    values = pd.Series(manifest[column].to_numpy(), index=ids.astype(str).to_numpy())
    return report["sample_id"].astype(str).map(values[~values.index.duplicated()])


def _majority_suggestion(rows: pd.DataFrame, keys: list[str]) -> pd.Series:
    """The suggestion most of each unit's ``mislabeled_hq`` rows make (ties by name), indexed by ``keys``."""
    hq = rows[rows["suggested"].notna()]
    counts = hq.groupby([*keys, "suggested"], sort=False).size().rename("n").reset_index()
    counts = counts.sort_values([*keys, "n", "suggested"], ascending=[True, True, False, True], kind="stable")
    return counts.drop_duplicates(keys).set_index(keys)["suggested"]


def group_counts(table: pd.DataFrame) -> tuple[int, int]:
    """How many groups of a :func:`summarise_groups` table have an image flagged, and how many groups it has."""
    flagged = (table["images"] - table[CATEGORIES[CLEAN]]).groupby(table["group"]).sum()
    return int((flagged > 0).sum()), len(flagged)
