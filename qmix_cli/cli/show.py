"""``qmix show``: a report as one self-contained HTML page."""

from __future__ import annotations

from typing import Annotated

import typer

from qmix_cli.cli.common import bold, guarded, state


@guarded
def show_command(
    ctx: typer.Context,
    report: Annotated[str, typer.Argument(help="Report written by qmix audit (.parquet, .csv or .jsonl).")],
    out: Annotated[str, typer.Option("--out", "-o", help="HTML file to write.")] = "report.html",
    run: Annotated[
        str | None,
        typer.Option(
            "--run",
            "-r",
            help="Run directory: adds the GMM means and the training curves.",
            show_default="the run a Parquet report records, if it still exists",
        ),
    ] = None,
    data: Annotated[
        str | None,
        typer.Option(
            "--data",
            "-d",
            help="The dataset (folder or manifest) the report's paths are relative to.",
            show_default="the dataset a Parquet report records, if it still exists",
        ),
    ] = None,
    top: Annotated[
        int,
        typer.Option(
            "--top",
            "-n",  # no min=: click's range error exits 2, where every value qmix refuses exits 1
            help="Thumbnails shown per kind of issue, most likely first, and of a random sample of the images called "
            "clean (to see what the audit missed); also patients (groups) shown by an audit by group.",
        ),
    ] = 12,
    sample: Annotated[
        int | None,
        typer.Option(
            help="Images called clean shown at random, to review and estimate what the audit missed (more narrow the "
            "estimate without more cards of each issue).",
            show_default="--top",
        ),
    ] = None,
    group_column: Annotated[
        str | None,
        typer.Option(
            help="Manifest column saying which images belong together (a patient), for the section by group.",
            show_default="the column a Parquet report's audit grouped by",
        ),
    ] = None,
    review: Annotated[
        str | None,
        typer.Option(
            help="Review sheet (as qmix apply --review takes it) whose verdicts the page's review starts with: a "
            "colleague's, or your own from another browser."
        ),
    ] = None,
    force: Annotated[
        bool,
        typer.Option(
            help="Replace an existing --out that is not a page qmix show wrote; an earlier page is replaced anyway."
        ),
    ] = False,
) -> None:
    """Write a self-contained HTML page of a report: look at its verdicts, review them, download the review sheet."""
    from qmix_cli.api import show

    st = state(ctx)
    path = show(
        report, out=out, run=run, data=data, top=top, sample=sample, force=force, group_column=group_column,
        review=review, console=st.err, quiet=st.quiet,
    )  # fmt: skip
    st.err.print(f"wrote {bold(path)}", highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command("show")(show_command)
