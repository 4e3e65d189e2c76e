"""``qmix train``: train qmix, dividemix or ce on a (noisy) dataset."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console
from rich.text import Text

from qmix_cli.cli.common import CACHE_DEFAULT, bold, folder_out, guarded, load_engine, state
from qmix_cli.config import TrainConfig, check_config_keys
from qmix_cli.errors import ConfigError, count_of, interrupted_status
from qmix_cli.io import RUN_CHECKPOINT


def parse_sets(items: list[str], *, flags: dict[str, Any] | None = None) -> dict[str, Any]:
    """``["lambda_con=0", "hflip=false"]`` → typed values (YAML scalars; text that is no YAML stays text).

    ``flags`` are the command's own options by config key, None where not given: a key set both ways is refused,
    since which one wins cannot be read off the command line.
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects KEY=VALUE (got {item!r})")
        key = key.strip().replace("-", "_")
        if not value.strip():  # `--set model=$MODEL` with the variable unset: not the default, silently
            raise ConfigError(f"--set {key}= has no value; give one (null for none)")
        out[key] = _yaml_value(value)
    # Now, not in the config: a key such as out= or resume= would otherwise reach the command's own arguments.
    check_config_keys(out)
    given = sorted(key for key in out if (flags or {}).get(key) is not None)
    if given:
        key = given[0]
        raise ConfigError(f"--set {key} and --{key.replace('_', '-')} both set {key}; give one")
    return out


def _yaml_value(text: str) -> Any:
    """A ``--set`` value as YAML reads it (``0`` an int, ``false`` a bool, ``null`` None), or the text itself where
    it is no YAML (``@file``, ``%TEMP%``, an unclosed ``[``): the option's own check then says what it takes."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def _default(name: str) -> str:
    """How ``--help`` shows `TrainConfig`'s default of ``name`` (the options default to None: unset, so that a
    config file or a resumed run's settings are not overridden)."""
    value = TrainConfig.__dataclass_fields__[name].default
    if name == "warmup_epochs" and value is None:
        return "epochs/3"
    return {True: "on", False: "off"}.get(value, str(value)) if isinstance(value, bool) else str(value)


@guarded
def train_command(
    ctx: typer.Context,
    data: Annotated[
        str,
        typer.Argument(help="Training data: ImageFolder dir, .csv/.parquet manifest, corrupt output, built-in."),
    ],
    out: Annotated[str, typer.Option("--out", "-o", help="Run directory for config, metrics, checkpoints and model.")],
    method: Annotated[str | None, typer.Option(help="qmix, dividemix or ce.", show_default=_default("method"))] = None,
    model: Annotated[str | None, typer.Option(help="Any timm model name.", show_default=_default("model"))] = None,
    pretrained: Annotated[
        bool | None,
        typer.Option(
            "--pretrained/--no-pretrained",
            help="Start from timm's pretrained weights (online).",
            show_default=_default("pretrained"),
        ),
    ] = None,
    weights: Annotated[
        str | None, typer.Option(help="Local weights file for the backbone (offline --pretrained).")
    ] = None,
    img_size: Annotated[
        int | None, typer.Option(help="Training image size in pixels.", show_default=_default("img_size"))
    ] = None,
    epochs: Annotated[
        int | None, typer.Option(help="Total epochs, warm-up included.", show_default=_default("epochs"))
    ] = None,
    warmup_epochs: Annotated[
        int | None, typer.Option(help="Warm-up epochs.", show_default=_default("warmup_epochs"))
    ] = None,
    batch_size: Annotated[int | None, typer.Option(help="Batch size.", show_default=_default("batch_size"))] = None,
    lr: Annotated[
        float | None, typer.Option(help="Learning rate (SGD, momentum 0.9).", show_default=_default("lr"))
    ] = None,
    device: Annotated[
        str | None, typer.Option(help="auto, cpu, cuda or cuda:N.", show_default=_default("device"))
    ] = None,
    amp: Annotated[
        bool | None,
        typer.Option(
            "--amp/--no-amp", help="Mixed precision on CUDA (bf16 where supported).", show_default=_default("amp")
        ),
    ] = None,
    compile: Annotated[
        bool | None,
        typer.Option("--compile/--no-compile", help="torch.compile the nets.", show_default=_default("compile")),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(help="DataLoader workers for caches too big to keep in memory.", show_default=_default("workers")),
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed.", show_default=_default("seed"))] = None,
    hflip: Annotated[
        bool | None,
        typer.Option(
            "--hflip/--no-hflip",
            help="Horizontal flips in the views; pass --no-hflip for digits, text and other images a mirror changes.",
            show_default=_default("hflip"),
        ),
    ] = None,
    val: Annotated[
        str | None, typer.Option(help="Clean labelled data to report accuracy on after every epoch.")
    ] = None,
    group_column: Annotated[
        str | None,
        typer.Option(
            help="Manifest column of images that belong together (patient, lesion, video): the audit judges each "
            "image without the others of its group that share its label."
        ),
    ] = None,
    config: Annotated[
        str | None, typer.Option("--config", "-c", help="YAML file of options; flags override it.")
    ] = None,
    set_: Annotated[
        list[str],
        typer.Option(
            "--set", metavar="KEY=VALUE", help="Any config option as KEY=VALUE (e.g. lambda_con=0); repeatable."
        ),
    ] = [],  # noqa: B006
    cache_dir: Annotated[
        str | None, typer.Option(help="Cache of decoded images and image checks.", show_default=CACHE_DEFAULT)
    ] = None,
    on_bad_image: Annotated[
        str | None, typer.Option(help="error or skip unreadable images.", show_default=_default("on_bad_image"))
    ] = None,
    resume: Annotated[bool, typer.Option(help="Continue the run in --out from its last checkpoint.")] = False,
    force: Annotated[
        bool,
        typer.Option(
            help="Start over in an existing --out; the old run is kept as OUT.previous until this one finishes."
        ),
    ] = False,
) -> None:
    """Train QMix (or the dividemix / ce baselines) and save everything audit needs."""
    folder_out(out, what="a run")
    load_engine()
    from qmix_cli.api import train

    st = state(ctx)
    options: dict[str, Any] = {
        "method": method, "model": model, "pretrained": pretrained, "weights": weights,
        "img_size": img_size, "epochs": epochs, "warmup_epochs": warmup_epochs, "batch_size": batch_size, "lr": lr,
        "device": device, "amp": amp, "compile": compile, "workers": workers, "seed": seed, "hflip": hflip,
        "val": val, "group_column": group_column, "cache_dir": cache_dir,
        "on_bad_image": on_bad_image,
    }  # fmt: skip
    options.update(parse_sets(set_, flags=options))
    checkpoint = Path(out) / RUN_CHECKPOINT
    before = _stamp(checkpoint)  # a finished run keeps its last checkpoint: a restart's own is a new one
    try:
        result = train(data, out, config=config, resume=resume, force=force, console=st.err, quiet=st.quiet, **options)
    except KeyboardInterrupt as e:
        if _stamp(checkpoint) not in (None, before) or (resume and before is not None):  # this run saved an epoch
            command = f"qmix train {shlex.quote(data)} --out {shlex.quote(str(out))} --resume"
            # On stderr whatever --quiet says, as the errors are: the command is what to do next.
            line = Text.assemble(("interrupted", "bold red"), f"; to continue from the last checkpoint: {command}")
            Console(stderr=True).print(line, soft_wrap=True)  # one line: a log holds the command whole
            raise typer.Exit(interrupted_status(e)) from None
        raise
    last = result.metrics[-1] if result.metrics else {}
    epochs = last.get("epoch", 0)
    st.err.print(f"run saved in {bold(result.run_dir)} after {count_of(epochs, 'epoch')}", highlight=False)


def _stamp(path: Path) -> tuple[int, int] | None:
    """A file's (mtime_ns, inode), or None where there is none: what tells a file written anew."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_ino


def register(app: typer.Typer) -> None:
    app.command("train")(train_command)
