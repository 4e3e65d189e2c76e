"""What an audit found, in a few lines for a person: counts by category, the audit by group when there is one, the
best-ranked issues, the classes it flags far more of than of the rest, and the flagged images of rare classes.
`qmix audit` prints it, and so does `qmix_cli.audit` given a console."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

from qmix_cli.categories import CATEGORIES, CLEAN, SMALL_CLASS, rare_class_verdicts
from qmix_cli.errors import first_few
from qmix_cli.progress import plain


def rare_flagged(frame: pd.DataFrame) -> tuple[int, list[str]]:
    """How many images the audit ``frame`` (a report as `qmix_cli.audit` returns it) flags in classes of fewer than
    `SMALL_CLASS` images, and those classes with their sizes; nothing unless it is an audit of the run's training
    set (``attrs["qmix"]["training_set"]``), whose class sizes are the ones the verdicts rest on."""
    if frame.attrs.get("qmix", {}).get("training_set") != "true":
        return 0, []
    flagged = (frame["category"] != CATEGORIES[CLEAN]).to_numpy()
    return rare_class_verdicts(frame["given_label"].to_numpy(), flagged)


# A class is pointed out when the audit flags at least this share of its images and at least twice the share of the
# other images: on an imbalanced set that is the small class, whose correct images the nets hesitate over
# (README, two-class sets where one class outnumbers the other), and a curator acting on those verdicts would
# thin it out.
STANDOUT_SHARE = 0.25
STANDOUT_RATIO = 2.0


def standout_classes(frame: pd.DataFrame) -> list[tuple[str, int, int, float]]:
    """The classes of at least `SMALL_CLASS` images whose flagged share stands out (`STANDOUT_SHARE`,
    `STANDOUT_RATIO`), highest share first: (given label, flagged images, images, flagged share of the other
    images), from a report ``frame`` (``given_label``, ``category``)."""
    flagged = (frame["category"] != CATEGORIES[CLEAN]).to_numpy()
    # Hashed, so fast at a million rows; a missing label (a hand-made frame) is a class of its own, not -1.
    which, names = pd.factorize(frame["given_label"].astype(str), sort=True, use_na_sentinel=False)
    sizes = np.bincount(which, minlength=len(names))
    hits = np.bincount(which, weights=flagged, minlength=len(names))  # one pass, whatever the number of classes
    others = len(flagged) - sizes
    with np.errstate(invalid="ignore", divide="ignore"):
        share, rest = hits / sizes, (flagged.sum() - hits) / others
    # A lone class has no rest: its share of nothing is NaN, which no comparison passes.
    stands = (sizes >= SMALL_CLASS) & (share >= STANDOUT_SHARE) & (share >= STANDOUT_RATIO * rest)
    out = [(str(names[k]), int(hits[k]), int(sizes[k]), float(rest[k])) for k in np.flatnonzero(stands)]
    return sorted(out, key=lambda row: (-row[1] / row[2], row[0]))


def print_audit_summary(
    frame: pd.DataFrame, console: Console, *, out: str | Path | None, groups_out: str | Path | None
) -> None:
    """Print what the audit ``frame`` found on ``console``; ``out`` and ``groups_out`` name where its report and
    table by group went (``"-"``: stdout; None: nowhere)."""
    counts = frame["category"].value_counts()
    written = "" if out in (None, "-") else f" → {out}"
    table = Table(title=plain(f"audit of {len(frame)} images{written}"), title_justify="left")  # a path: as written
    for col in ("category", "images", "share"):
        table.add_column(col, justify="left" if col == "category" else "right")
    for cat in CATEGORIES:
        n = int(counts.get(cat, 0))
        table.add_row(cat, str(n), f"{n / len(frame):.1%}")
    console.print(table)
    if groups := frame.attrs.get("groups"):
        where = "" if groups_out in (None, "-") else f" → {groups_out} (one row per group and given label)"
        console.print(
            plain(
                f"{groups['flagged']:,} of {groups['groups']:,} groups by {groups['column']} have an image the audit "
                f"flags{where}"
            )
        )
    if groups and groups["top"]:
        console.print(_top_groups_table(groups["top"]))
    top = frame[frame["category"] != CATEGORIES[CLEAN]].sort_values("rank").head(5)
    if top.empty:
        left_out = len(frame.attrs.get("skipped", ()))  # unreadable, left out by --on-bad-image skip: issues too
        console.print(
            f"no issues: every image audited is judged clean ({left_out:,} unreadable left out)"
            if left_out
            else "no issues: every image is judged clean"
        )
    else:
        console.print(_top_issues_table(top))
    if standout := standout_classes(frame):
        shares = [
            f"{name} {flagged:,} of {size:,} ({flagged / size:.0%}; others {rest:.0%})"
            for name, flagged, size, rest in standout
        ]
        console.print(
            plain(
                f"note: the audit flags far more of {'these classes' if len(standout) > 1 else 'this class'} than of "
                f"the rest: {first_few(shares)}; a small class the nets hesitate over, or one many wrong labels "
                f"carry: look at {'their' if len(standout) > 1 else 'its'} flagged images (qmix show) before acting "
                "on them"
            )
        )
    rare, classes = rare_flagged(frame)
    if rare:
        console.print(
            plain(
                f"note: {rare:,} of the flagged images are of classes of fewer than {SMALL_CLASS} images "
                f"({first_few(classes)}): each is judged by the other images of its class, so these verdicts say "
                "little; check them by hand (qmix apply keeps them as they are)"
            )
        )


def _top_issues_table(top: pd.DataFrame) -> Table:
    """The best-ranked images the audit flags."""
    issues = Table(title="top issues", title_justify="left")
    for col in ("rank", "sample_id", "given", "suggested", "category", "p_clean"):
        # An id cut short (``images/0000174…``) cannot be found: a narrow terminal folds it onto more lines instead.
        issues.add_column(col, overflow="fold" if col == "sample_id" else "ellipsis")
    for row in top.itertuples():
        suggestion = row.suggested_label if isinstance(row.suggested_label, str) else "— (fix or drop image)"
        cells = (str(row.rank), row.sample_id, row.given_label, suggestion, row.category, f"{row.p_clean:.3f}")
        issues.add_row(*(plain(str(c)) for c in cells))  # labels and ids as written
    return issues


def _top_groups_table(rows: list[dict]) -> Table:
    """The likeliest wrong labels by group (`summarise_groups`' first rows)."""
    table = Table(title="top groups", title_justify="left")
    for col in ("rank", "group", "given", "flagged", "suggested", "issue score"):
        table.add_column(col, overflow="fold" if col == "group" else "ellipsis")
    for row in rows:
        flagged = f"{row['images'] - row['clean']} of {row['images']}"
        suggestion = row["suggested_label"] if isinstance(row["suggested_label"], str) else "—"
        cells = (row["rank"], row["group"], row["given_label"], flagged, suggestion, f"{row['issue_score']:.3f}")
        table.add_row(*(plain(str(c)) for c in cells))  # group names and labels as written
    return table
