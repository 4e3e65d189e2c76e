"""``qmix audit``: the per-image report."""

from __future__ import annotations

import itertools
import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table
from rich.text import Text

from qmix_cli.categories import CATEGORIES, CLEAN, SMALL_CLASS, rare_class_verdicts
from qmix_cli.cli.common import CACHE_DEFAULT, guarded, load_engine, state
from qmix_cli.errors import first_few

if TYPE_CHECKING:
    import pandas as pd


@guarded
def audit_command(
    ctx: typer.Context,
    data: Annotated[
        str, typer.Argument(help="Labelled data to audit: the training set or any manifest with the run's classes.")
    ],
    run: Annotated[Path, typer.Option("--run", "-r", help="Run directory written by qmix train.")],
    out: Annotated[str, typer.Option("--out", "-o", help="Report file (.parquet, .csv, .jsonl) or - for stdout.")],
    format: Annotated[
        str | None,
        typer.Option("--format", "-f", help="parquet, csv or jsonl.", show_default="from the suffix; csv for -"),
    ] = None,
    batch_size: Annotated[int, typer.Option(help="Images per forward pass.")] = 512,
    tta: Annotated[int, typer.Option(help="Extra augmented views averaged into each prediction.")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    on_bad_image: Annotated[str, typer.Option(help="error or skip unreadable images.")] = "error",
    cache_dir: Annotated[
        Path | None, typer.Option(help="Cache of decoded images and image checks.", show_default=CACHE_DEFAULT)
    ] = None,
    workers: Annotated[int, typer.Option(help="DataLoader workers for caches too big to keep in memory.")] = 0,
    sort: Annotated[
        str, typer.Option(help="Row order: sample_id, or rank (most likely issues first, for | head).")
    ] = "sample_id",
    recompute: Annotated[
        bool,
        typer.Option(help="Run the nets on the run's own training images too, instead of what the run kept of them."),
    ] = False,
    group_column: Annotated[
        str | None,
        typer.Option(
            help="Manifest column saying which images belong together (a patient), for the summary by group. The "
            "run's folds stay as trained.",
            show_default="the run's --group-column",
        ),
    ] = None,
    groups_out: Annotated[
        str | None,
        typer.Option(
            help="Also write one row per group and given label (.parquet, .csv, .jsonl, or -): images per verdict, "
            "issue score (median of 1 − p_clean), the majority suggested label, rank."
        ),
    ] = None,
    force: Annotated[
        bool,
        typer.Option(
            help="Replace an existing --out / --groups-out that is not a table qmix audit wrote (an earlier report "
            "is replaced without it)."
        ),
    ] = False,
) -> None:
    """Write a report that says, for every image, clean / mislabeled_hq / mislabeled_lq and what to do."""
    load_engine()
    from qmix_cli.api import audit
    from qmix_cli.reporting.report import infer_format

    st = state(ctx)
    frame = audit(
        data, run=run, out=out, fmt=format, batch_size=batch_size, tta=tta, device=device,
        on_bad_image=on_bad_image, cache_dir=cache_dir, workers=workers, sort_by=sort, recompute=recompute,
        group_column=group_column, groups_out=groups_out, force=force, console=st.err, quiet=st.quiet,
    )  # fmt: skip
    if frame is None or frame.attrs.get("pipe_closed") or st.quiet:
        return
    counts = frame["category"].value_counts()
    title = Text(f"audit of {len(frame)} images" + ("" if out == "-" else f" → {out}"))  # Text: a path is not markup
    table = Table(title=title, title_justify="left")
    for col in ("category", "images", "share"):
        table.add_column(col, justify="left" if col == "category" else "right")
    for cat in CATEGORIES:
        n = int(counts.get(cat, 0))
        table.add_row(cat, str(n), f"{n / len(frame):.1%}")
    st.err.print(table)
    if groups := frame.attrs.get("groups"):
        written = "" if groups_out in (None, "-") else f" → {groups_out} (one row per group and given label)"
        st.err.print(
            Text(
                f"{groups['flagged']:,} of {groups['groups']:,} groups by {groups['column']} have an image the audit "
                f"flags{written}"
            )
        )
    if groups and groups["top"]:
        st.err.print(_top_groups_table(groups["top"]))
    flagged = (frame["category"] != CATEGORIES[CLEAN]).to_numpy()
    top = frame[flagged].sort_values("rank").head(5)
    if top.empty:
        left_out = len(frame.attrs.get("skipped", ()))  # unreadable, left out by --on-bad-image skip: issues too
        st.err.print(
            f"no issues: every image audited is judged clean ({left_out:,} unreadable left out)"
            if left_out
            else "no issues: every image is judged clean"
        )
    else:
        st.err.print(_top_issues_table(top))
    rare = 0
    if frame.attrs.get("qmix", {}).get("training_set") == "true":  # the class sizes the verdicts rest on
        rare, classes = rare_class_verdicts(frame["given_label"].to_numpy(), flagged)
        if rare:
            st.err.print(
                Text(
                    f"note: {rare:,} of the flagged images are of classes of fewer than {SMALL_CLASS} images "
                    f"({first_few(classes)}): each is judged by the other images of its class, so these verdicts say "
                    "little; check them by hand (qmix apply keeps them as they are)"
                )
            )
    if out != "-":
        # The images --on-bad-image skip left out have no row: the suggested command must say what to do with them.
        skipped = " --on-missing drop" if len(frame.attrs.get("skipped", ())) else ""
        # A CSV or JSON Lines report cannot say it is the training set's, which apply asks about rare classes.
        keep_rare = " --rare-classes keep" if rare and infer_format(out, format) != "parquet" else ""
        fixed = shlex.quote(fixed_manifest_name(data))
        command = (
            f"qmix apply {shlex.quote(str(data))} --report {shlex.quote(str(out))}{skipped}{keep_rare} --out {fixed}"
        )
        st.err.print(Text(f"next: {command}  (relabel mislabeled_hq, drop mislabeled_lq)"))


def _top_issues_table(top: pd.DataFrame) -> Table:
    """The best-ranked images the audit flags."""
    issues = Table(title="top issues", title_justify="left")
    for col in ("rank", "sample_id", "given", "suggested", "category", "p_clean"):
        issues.add_column(col)
    for row in top.itertuples():
        suggestion = row.suggested_label if isinstance(row.suggested_label, str) else "— (fix or drop image)"
        cells = (str(row.rank), row.sample_id, row.given_label, suggestion, row.category, f"{row.p_clean:.3f}")
        issues.add_row(*(Text(str(c)) for c in cells))  # Text: labels and ids are not markup
    return issues


def _top_groups_table(rows: list[dict]) -> Table:
    """The likeliest wrong labels by group (`summarise_groups`' first rows)."""
    table = Table(title="top groups", title_justify="left")
    for col in ("rank", "group", "given", "flagged", "suggested", "issue score"):
        table.add_column(col)
    for row in rows:
        flagged = f"{row['images'] - row['clean']} of {row['images']}"
        suggestion = row["suggested_label"] if isinstance(row["suggested_label"], str) else "—"
        cells = (row["rank"], row["group"], row["given_label"], flagged, suggestion, f"{row['issue_score']:.3f}")
        table.add_row(*(Text(str(c)) for c in cells))  # Text: group names and labels are not markup
    return table


def fixed_manifest_name(data: str | Path) -> str:
    """A name for the manifest `qmix apply` would write, that says which dataset it fixes and is not yet taken
    here: ``noisy-fixed.parquet``, then ``noisy-fixed-2.parquet``, ... (audits of a test split and of its training
    split get two names, and neither replaces a manifest a run was trained on)."""
    stem = Path(str(data).rstrip("/")).stem.replace(":", "-") or "data"
    names = (f"{stem}-fixed{'' if n == 1 else f'-{n}'}.parquet" for n in itertools.count(1))
    return next(name for name in names if not Path(name).exists())


def register(app: typer.Typer) -> None:
    app.command("audit")(audit_command)
