"""``qmix corrupt``: a corrupted copy of a clean dataset, with the truth kept."""

from __future__ import annotations

from typing import Annotated

import typer

from qmix_cli.cli.common import bold, folder_out, guarded, state
from qmix_cli.errors import count_of


@guarded
def corrupt_command(
    ctx: typer.Context,
    src: Annotated[
        str, typer.Argument(help="Clean dataset: ImageFolder dir, .csv/.parquet manifest, or built-in name.")
    ],
    out: Annotated[
        str,
        typer.Option(
            "--out",
            "-o",
            help="Output directory: new, empty, or an earlier qmix corrupt output with --force.",
        ),
    ],
    preset: Annotated[
        str | None,
        typer.Option(help="Paper protocol: paper-15, paper-35, paper-45, paper-55 or paper-75."),
    ] = None,
    label_noise: Annotated[
        str | None,
        typer.Option(
            help="none, symmetric (redraw over all classes), symmetric-exclusive (always another class), "
            "pairflip, asymmetric (needs --class-map) or matrix:FILE (K×K, .npy/.csv/.json; CSV and JSON may name the "
            "classes).",
            show_default="symmetric-exclusive",
        ),
    ] = None,
    label_rate: Annotated[
        float | None,
        typer.Option(
            help="Chance that a high-quality image's label is changed; a matrix:FILE sets its own.", show_default="0.2"
        ),
    ] = None,
    quality_rate: Annotated[
        float | None, typer.Option(help="Fraction of images degraded to low quality.", show_default="0.15")
    ] = None,
    degradations: Annotated[
        str | None,
        typer.Option(
            help="Comma list of blur,motion,dark,bright,contrast,noise,jpeg,occlusion,haze,vignette or 'all'.",
            show_default="all",
        ),
    ] = None,
    severity: Annotated[
        str | None, typer.Option(help="Severity 1..5, or a range drawn per image.", show_default="3-5")
    ] = None,
    per_image: Annotated[
        int | None, typer.Option(help="Different degradations composed on each low-quality image.", show_default="1")
    ] = None,
    lq_labels: Annotated[
        str | None,
        typer.Option(
            help="Labels of low-quality images: random (another class), prior or keep.", show_default="random"
        ),
    ] = None,
    class_map: Annotated[
        str | None,
        typer.Option(
            help="Class→class map for asymmetric noise, e.g. 'cat=dog,truck=car', or @FILE (.json object or .csv of "
            "source,target) for names with commas; other classes keep labels."
        ),
    ] = None,
    group_column: Annotated[
        str | None,
        typer.Option(
            help="Manifest column of images that belong together (a patient): one noisy label per group and class."
        ),
    ] = None,
    image_format: Annotated[
        str | None,
        typer.Option(
            help="keep (copy untouched images as they are; degraded ones are 8-bit PNG) or png (write every image as "
            "8-bit PNG, so that no file type or bit depth tells the degraded ones: for benchmarks).",
            show_default="keep",
        ),
    ] = None,
    seed: Annotated[
        int | None, typer.Option(help="Random seed; the same seed gives the same output.", show_default="0")
    ] = None,
    workers: Annotated[
        int | None, typer.Option(help="Threads (does not change the output).", show_default="CPUs, at most 8")
    ] = None,
    on_bad_image: Annotated[str, typer.Option(help="error or skip unreadable source images.")] = "error",
    force: Annotated[
        bool, typer.Option(help="Replace an earlier qmix corrupt output (a folder with noise.json) at --out.")
    ] = False,
) -> None:
    """Corrupt a clean dataset with reproducible label noise and image degradations, keeping the truth."""
    from qmix_cli.api import corrupt

    folder_out(out, what="qmix corrupt's output")
    st = state(ctx)
    result = corrupt(
        src,
        out,
        preset=preset,
        label_noise=label_noise,
        label_rate=label_rate,
        quality_rate=quality_rate,
        degradations=degradations,
        severity=severity,
        per_image=per_image,
        lq_labels=lq_labels,
        class_map=class_map,
        group_column=group_column,
        image_format=image_format,
        seed=seed,
        workers=workers,
        on_bad_image=on_bad_image,
        force=force,
        console=st.err,
        quiet=st.quiet,
    )
    counts = result.summary["counts"]
    skipped = len(result.summary["skipped"])
    st.err.print(
        f"wrote {count_of(result.summary['num_images'], 'image')} to {bold(out)}: {counts['clean']:,} clean, "
        f"{counts['mislabeled_hq']:,} mislabeled_hq, {counts['mislabeled_lq']:,} mislabeled_lq"
        + (f"; skipped {count_of(skipped, 'unreadable source image')}" if skipped else ""),
        highlight=False,
    )


def register(app: typer.Typer) -> None:
    app.command("corrupt")(corrupt_command)
