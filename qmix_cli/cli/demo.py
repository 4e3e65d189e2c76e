"""``qmix demo``: the whole loop on the built-in digits, in about a minute on a laptop CPU."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from qmix_cli.cli.common import folder_out, guarded, load_engine, state
from qmix_cli.progress import plain

# Everything the demo writes in its folder (`run.previous`: the run a rerun replaces, until it is done).
DEMO_OUTPUTS = frozenset({"noisy-digits", "run", "run.previous", "report.parquet", "report.html", "fixed.parquet"})
# Small enough for a CPU minute, big enough to show the method working: timm's smallest ResNet at 32 px.
DEMO_TRAIN = {"model": "test_resnet", "img_size": 32, "hflip": False, "batch_size": 64, "warmup_aug": "weak"}


@guarded
def demo_command(
    ctx: typer.Context,
    out: Annotated[
        str, typer.Option("--out", "-o", help="Folder for the demo's dataset, run and report.")
    ] = "qmix-demo",
    epochs: Annotated[int, typer.Option(help="Training epochs (the first 60% are warm-up).")] = 10,
    seed: Annotated[int, typer.Option(help="Seed for the corruption and the training.")] = 1,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    force: Annotated[
        bool, typer.Option(help="Write into a folder holding other files too (an earlier demo's is replaced anyway).")
    ] = False,
) -> None:
    """The whole loop on the built-in digits: corrupt, train qmix, audit, evaluate, show and apply the verdicts."""
    folder_out(out, what="the demo's output")
    out_dir = Path(out)
    load_engine()
    from qmix_cli.api import apply, audit, corrupt, evaluate, show, train
    from qmix_cli.config import config_from_dict
    from qmix_cli.engine.device import resolve_device
    from qmix_cli.io import check_out_dir, check_out_file, check_replaceable
    from qmix_cli.reporting.evaluate import render_evaluation
    from qmix_cli.reporting.html import written_by_show
    from qmix_cli.reporting.report import written_by_audit

    st = state(ctx)
    # A folder holding only what an earlier demo wrote (and hidden files, such as a killed run's partials) is that
    # demo's: running the README's command again replaces it; anything else there needs --force.
    earlier = out_dir.is_dir() and all(e.name in DEMO_OUTPUTS or e.name.startswith(".") for e in out_dir.iterdir())
    check_out_dir(out_dir, force=force or earlier, forcing="write into it (its other files are kept)")
    warmup = max(1, round(epochs * 0.6))
    options = {"method": "qmix", "epochs": epochs, "warmup_epochs": warmup, "seed": seed, "device": device}
    config_from_dict({**options, **DEMO_TRAIN})  # every option checked before anything is written,
    resolve_device(device)  # the device too: one this machine lacks was refused only once the digits were corrupted
    data, run, report = out_dir / "noisy-digits", out_dir / "run", out_dir / "report.parquet"
    # Named as the demo's, but perhaps not its: said now, not after the training (audit and show check them again).
    check_replaceable(report, ours=written_by_audit, force=force, option="--out", what="a table qmix audit wrote")
    check_replaceable(
        out_dir / "report.html", ours=written_by_show, force=force, option="--out", what="a page qmix show wrote"
    )
    check_out_file(report)  # a folder this user can write in (not under a file, not read-only), before any work
    st.err.rule("1/5 corrupt: 20 % wrong labels, 15 % degraded images")
    corrupt("digits", data, label_rate=0.2, quality_rate=0.15, seed=seed, force=True, console=st.err, quiet=st.quiet)
    st.err.rule("2/5 train qmix")
    train(data, run, force=True, console=st.err, quiet=st.quiet, **options, **DEMO_TRAIN)
    st.err.rule("3/5 audit")
    audit(data, run=run, out=report, device=device, force=True, console=st.err, quiet=True)  # checked above
    st.err.rule("4/5 evaluate against the truth")
    result = evaluate(report, truth=data)
    render_evaluation(result, st.err)
    html = show(report, out=out_dir / "report.html", run=run, data=data, force=force, console=st.err, quiet=st.quiet)
    st.err.rule("5/5 apply the verdicts: relabel mislabeled_hq, drop mislabeled_lq")
    fixed = apply(data, report=report, out=out_dir / "fixed.parquet", force=True)  # out was checked above
    files = Table(title="where everything is", title_justify="left", show_header=False)
    files.add_column("what", no_wrap=True)
    files.add_column("where", overflow="fold")  # whole paths, so they can be copied from a log
    rows = {
        "corrupted dataset": f"{data}/ (manifest.parquet, noise.json, images/)",
        "training run": f"{run}/ (config.yaml, metrics.jsonl, model.pt, checkpoints/)",
        "report": str(report),
        "HTML page": f"{html} (open it to review the verdicts; its review sheet goes to qmix apply --review)",
        "new manifest": f"{fixed['out']} ({fixed['kept']:,} of {fixed['images']:,} images, "
        f"{fixed['relabelled']:,} relabelled)",
        # Few wrong labels are left: plain cross-entropy trains the better classifier (benchmarks/APPLY.md).
        "next": f"qmix train {fixed['out']} --out {out_dir / 'run2'} --method ce",
    }
    for what, where in rows.items():
        files.add_row(what, plain(where))  # paths are not markup
    st.err.print(files)


def register(app: typer.Typer) -> None:
    app.command("demo")(demo_command)
