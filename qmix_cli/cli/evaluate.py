"""``qmix evaluate``: a report against the truth."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from qmix_cli.cli.common import StdoutConsole, guarded, reader_may_leave


@guarded
def evaluate_command(
    ctx: typer.Context,  # for @guarded: --verbose
    report: Annotated[str, typer.Argument(help="Report written by qmix audit.")],
    truth: Annotated[
        str,
        typer.Option(
            "--truth",
            "-t",
            help="The truth: a qmix corrupt output, or a CSV/Parquet file of sample_id (or path) and category "
            "(or is_low_quality and is_label_noisy), such as a sample checked by hand.",
        ),
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print the metrics as JSON on stdout.")] = False,
    on_missing: Annotated[
        str,
        typer.Option(
            help="Truth rows the report lacks: error, or skip them and score the images the report covers "
            "(a report written with --on-bad-image skip)."
        ),
    ] = "error",
    on_unchecked: Annotated[
        str,
        typer.Option(
            help="Report rows the truth lacks: error, or skip them and score the images the truth covers "
            "(a truth of the images checked by hand)."
        ),
    ] = "error",
    per_class: Annotated[
        bool | None,
        typer.Option(
            "--per-class/--no-per-class",
            help="Print detection by given label (images, flagged, precision, recall, correct labels flagged) for "
            "every class; by default the 20 that lose the most correct labels. --json always has every class.",
            show_default=False,
        ),
    ] = None,
    group_column: Annotated[
        str | None,
        typer.Option(
            help="Truth column saying which images belong together (a patient): scores the ranking of wrongly "
            "labelled units by issue score.",
            show_default="the column a Parquet report's audit grouped by",
        ),
    ] = None,
) -> None:
    """Per-category precision, recall and F1, macro-F1, confusion matrix and ROC-AUCs of a report."""
    from qmix_cli.api import evaluate
    from qmix_cli.reporting.evaluate import render_evaluation

    result = evaluate(report, truth=truth, on_missing=on_missing, on_unchecked=on_unchecked, group_column=group_column)
    with reader_may_leave():
        if as_json:
            typer.echo(json.dumps(result, indent=2))
        else:
            render_evaluation(result, StdoutConsole(), per_class=per_class)  # the requested output: under --quiet too


def register(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate_command)
