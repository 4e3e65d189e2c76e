"""``qmix audit``: the per-image report."""

from __future__ import annotations

import itertools
import shlex
from pathlib import Path
from typing import Annotated

import typer

from qmix_cli.cli.common import CACHE_DEFAULT, guarded, load_engine, state
from qmix_cli.progress import plain


@guarded
def audit_command(
    ctx: typer.Context,
    data: Annotated[
        str, typer.Argument(help="Labelled data to audit: the training set or any manifest with the run's classes.")
    ],
    run: Annotated[str, typer.Option("--run", "-r", help="Run directory written by qmix train.")],
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
        str | None, typer.Option(help="Cache of decoded images and image checks.", show_default=CACHE_DEFAULT)
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
            help="Replace an existing --out / --groups-out that is not a table qmix audit wrote, or a report of other "
            "images or cut down (an earlier report of the same images is replaced without it)."
        ),
    ] = False,
) -> None:
    """Write a report that says, for every image, clean / mislabeled_hq / mislabeled_lq and what to do."""
    load_engine()
    from qmix_cli.api import audit
    from qmix_cli.reporting.report import infer_format
    from qmix_cli.reporting.summary import rare_flagged

    st = state(ctx)
    frame = audit(
        data, run=run, out=out, fmt=format, batch_size=batch_size, tta=tta, device=device,
        on_bad_image=on_bad_image, cache_dir=cache_dir, workers=workers, sort_by=sort, recompute=recompute,
        group_column=group_column, groups_out=groups_out, force=force, console=st.err, quiet=st.quiet,
    )  # fmt: skip
    if frame is None or frame.attrs.get("pipe_closed") or st.quiet:
        return
    rare, _ = rare_flagged(frame)  # printed with the summary (by `audit`, given a console)
    if out != "-":
        # The images --on-bad-image skip left out have no row: the suggested command must say what to do with them.
        skipped = " --on-missing drop" if len(frame.attrs.get("skipped", ())) else ""
        # A CSV or JSON Lines report cannot say it is the training set's, which apply asks about rare classes.
        keep_rare = " --rare-classes keep" if rare and infer_format(out, format) != "parquet" else ""
        fixed = shlex.quote(fixed_manifest_name(data))
        command = (
            f"qmix apply {shlex.quote(str(data))} --report {shlex.quote(str(out))}{skipped}{keep_rare} --out {fixed}"
        )
        # Only a Parquet report records where its run and images are; the page needs them to show the images.
        where = (
            ""
            if infer_format(out, format) == "parquet"
            else f" --run {shlex.quote(str(run))} --data {shlex.quote(str(data))}"
        )
        look = f"qmix show {shlex.quote(str(out))}{where}"
        st.err.print(plain(f"next: {command}  (relabel mislabeled_hq, drop mislabeled_lq; review them first: {look})"))


def fixed_manifest_name(data: str | Path) -> str:
    """A name for the manifest `qmix apply` would write, that says which dataset it fixes and is not yet taken
    here: ``noisy-fixed.parquet``, then ``noisy-fixed-2.parquet``, ... (audits of a test split and of its training
    split get two names, and neither replaces a manifest a run was trained on)."""
    stem = Path(str(data).rstrip("/")).stem.replace(":", "-") or "data"
    names = (f"{stem}-fixed{'' if n == 1 else f'-{n}'}.parquet" for n in itertools.count(1))
    return next(name for name in names if not Path(name).exists())


def register(app: typer.Typer) -> None:
    app.command("audit")(audit_command)
