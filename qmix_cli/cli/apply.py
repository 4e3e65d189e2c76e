"""``qmix apply``: the manifest that follows from a report's verdicts."""

from __future__ import annotations

from typing import Annotated

import typer

from qmix_cli.categories import SMALL_CLASS
from qmix_cli.cli.common import bold, guarded, state
from qmix_cli.errors import count_of, first_few
from qmix_cli.progress import plain


@guarded
def apply_command(
    ctx: typer.Context,
    data: Annotated[str, typer.Argument(help="The dataset the report audits (folder, manifest or built-in name).")],
    report: Annotated[str, typer.Option("--report", help="Report written by qmix audit.")],
    out: Annotated[str, typer.Option("--out", "-o", help="New manifest to write (.csv, or .parquet / .pq).")],
    hq: Annotated[
        str, typer.Option(help="mislabeled_hq images: relabel (to the suggested label), drop or keep.")
    ] = "relabel",
    lq: Annotated[str, typer.Option(help="mislabeled_lq images: drop or keep (label unchanged).")] = "drop",
    on_missing: Annotated[
        str,
        typer.Option(help="Images the report has no row for (an audit with --on-bad-image skip): error, drop or keep."),
    ] = "error",
    rare_classes: Annotated[
        str,
        typer.Option(
            help=f"Images of classes of fewer than {SMALL_CLASS} images: keep (as they are, whatever their verdict, "
            "which says little in an audit of the training set), apply (as any other image: an audit of other "
            "images, or a class that is itself a typo) or auto (keep for a report of the training set, apply for "
            "one of other images; a CSV or JSON Lines report, which does not say, asks)."
        ),
    ] = "auto",
    review: Annotated[
        str | None,
        typer.Option(
            help="Review sheet, as qmix show's page downloads it (CSV: sample_id, category, suggested_label, "
            "optionally given_label; category clean keeps the label, mislabeled_hq relabels to suggested_label, "
            "mislabeled_lq drops the image): a person's verdicts, which overrule the report's on those images and are "
            "carried out as given, whatever --hq, --lq and --rare-classes say."
        ),
    ] = None,
    force: Annotated[bool, typer.Option(help="Replace --out if it exists (runs may have been trained on it).")] = False,
) -> None:
    """Write a new manifest with the report's verdicts applied: relabel or drop wrong labels, drop unusable images."""
    from qmix_cli.api import apply

    counts = apply(
        data,
        report=report,
        out=out,
        hq=hq,
        lq=lq,
        on_missing=on_missing,
        rare_classes=rare_classes,
        review=review,
        force=force,
    )
    dropped = counts["images"] - counts["kept"]
    parts = [f"relabelled {counts['relabelled']:,}", f"dropped {dropped:,}"]
    if dropped:
        why = {"mislabeled_lq": counts["dropped_lq"], "mislabeled_hq": counts["dropped_hq"]}
        why["no verdict"] = counts["dropped_missing"]
        parts[-1] += " (" + ", ".join(f"{n:,} {k}" for k, n in why.items() if n) + ")"
    if counts["reviewed"]:
        reviewed = f"{counts['reviewed']:,} as reviewed ({counts['overruled']:,} overruled)"
        if counts["changed"]:  # what is left on trust
            rest = counts["unreviewed"]
            reviewed += (
                f", {rest:,} of the {counts['changed']:,} changes unreviewed" if rest else ", every change reviewed"
            )
        parts.append(reviewed)
    if counts["kept_missing"]:
        parts.append(f"kept {counts['kept_missing']:,} the report has no verdict for, unchanged")
    if counts["kept_rare"]:
        parts.append(f"kept {counts['kept_rare']:,} flagged of rare classes unchanged")
    st = state(ctx)
    st.err.print(
        f"wrote {bold(out)}: {counts['kept']:,} of {counts['images']:,} images; {'; '.join(parts)}",
        highlight=False,
        soft_wrap=True,
    )
    if counts["kept_rare"]:  # class names are the user's text: printed plain
        st.err.print(
            plain(
                f"note: the verdicts on images of classes of fewer than {SMALL_CLASS} training images say little, so "
                f"{counts['kept_rare']:,} flagged of them stay as they are ({first_few(counts['rare'])}): check them "
                "by hand, or pass --rare-classes apply (a class of a few images may itself be a typo)"
            )
        )
    if emptied := counts["emptied"]:
        st.err.print(
            plain(
                f"warning: {count_of(len(emptied), 'class', 'classes')} of the dataset carr"
                f"{'y' if len(emptied) > 1 else 'ies'} no image any more: {first_few(emptied)}; a run on it will not "
                f"know {'them' if len(emptied) > 1 else 'it'} (check them by hand, or pass --hq keep)"
            )
        )
    if shrunk := counts["shrunk"]:
        many = len(shrunk) > 1
        lines = [_class_change(name, counts["by_class"][name]) for name in shrunk]
        st.err.print(
            plain(
                f"warning: {count_of(len(shrunk), 'class', 'classes')} keep{'' if many else 's'} less than half of "
                f"{'their' if many else 'its'} images: {first_few(lines)}; on an imbalanced set the verdicts fall "
                f"hardest on the small class, so check {'their' if many else 'its'} flagged images (qmix show) before "
                "training on this manifest"
            )
        )
    # Few wrong labels are left: plain cross-entropy trains the better classifier, and six times faster
    # (benchmarks/APPLY.md: 0.790 against qmix's 0.706 test accuracy on the applied manifests).
    st.err.print(f"next: qmix train {bold(out)} --out RUN --method ce", highlight=False, soft_wrap=True)


def _class_change(name: str, change: dict[str, int]) -> str:
    """``"pneumonia kept 80 of 264 (84 relabelled away, 100 dropped; 14 relabelled to it)"``."""
    gained = f"; {change['relabelled_to']:,} relabelled to it" if change["relabelled_to"] else ""
    return (
        f"{name} kept {change['kept']:,} of {change['before']:,} ({change['relabelled_away']:,} relabelled away, "
        f"{change['dropped']:,} dropped{gained})"
    )


def register(app: typer.Typer) -> None:
    app.command("apply")(apply_command)
