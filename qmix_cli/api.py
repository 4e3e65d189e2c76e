"""The Python API: the same operations and defaults as the CLI.

>>> from qmix_cli import corrupt, train, audit, evaluate
>>> corrupt("digits", "noisy-digits", label_rate=0.2, quality_rate=0.15, seed=1)  # doctest: +SKIP
>>> train("noisy-digits", "run", model="test_byobnet", img_size=32, epochs=12)  # doctest: +SKIP
>>> audit("noisy-digits", run="run", out="report.parquet")  # doctest: +SKIP
>>> evaluate("report.parquet", truth="noisy-digits")  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from rich.console import Console

from qmix_cli.config import TrainConfig, resolve_config
from qmix_cli.progress import Reporter, reporter


@contextlib.contextmanager
def _reporter(console: Console | None, quiet: bool) -> Iterator[Reporter]:
    with reporter(console or Console(stderr=True), quiet=quiet or console is None) as rep:
        yield rep


def corrupt(
    source: str | Path,
    out: str | Path,
    *,
    preset: str | None = None,
    label_noise: str | None = None,
    label_rate: float | None = None,
    quality_rate: float | None = None,
    degradations: str | None = None,
    severity: str | int | None = None,
    per_image: int | None = None,
    lq_labels: str | None = None,
    class_map: str | None = None,
    seed: int | None = None,
    workers: int | None = None,
    on_bad_image: str = "error",
    force: bool = False,
    cache_dir: str | Path | None = None,
    console: Console | None = None,
    quiet: bool = False,
):
    """Write a corrupted copy of ``source`` to ``out`` (see ``qmix corrupt --help``); returns a `CorruptResult`.

    Options left as ``None`` take the preset's value, else the defaults of `CorruptSpec`.
    """
    from qmix_cli.corrupt.protocol import corrupt_dataset, resolve_spec
    from qmix_cli.data.manifest import create_dataset

    spec = resolve_spec(
        preset,
        label_noise=label_noise,
        label_rate=label_rate,
        quality_rate=quality_rate,
        degradations=degradations,
        severity=None if severity is None else str(severity),
        per_image=per_image,
        lq_labels=lq_labels,
        class_map=class_map,
        seed=seed,
    )
    with _reporter(console, quiet) as rep:
        dataset = create_dataset(
            source,
            on_bad_image=on_bad_image,  # type: ignore[arg-type]
            cache_dir=cache_dir,
            workers=workers,
            reporter=rep,
        )
        return corrupt_dataset(dataset, out, spec=spec, force=force, workers=workers, reporter=rep)


def train(
    data: str | Path,
    out: str | Path,
    *,
    config: str | Path | TrainConfig | None = None,
    resume: bool = False,
    force: bool = False,
    console: Console | None = None,
    quiet: bool = False,
    on_epoch_end: Callable[[dict[str, Any]], None] | None = None,
    **options: Any,
):
    """Train a method on ``data`` into the run directory ``out``; returns a `TrainResult`.

    ``options`` are `TrainConfig` fields (``method``, ``model``, ``epochs``, ...), overriding ``config`` (a YAML
    file or a `TrainConfig`). With ``resume=True`` the run continues with its saved configuration.
    """
    from qmix_cli.config import config_from_dict
    from qmix_cli.data.manifest import create_dataset
    from qmix_cli.engine.trainer import resume_config
    from qmix_cli.engine.trainer import train as run_training

    if isinstance(config, TrainConfig):
        cfg = config_from_dict({k: v for k, v in options.items() if v is not None}, base=config)
    else:
        cfg = resolve_config(config_file=config, overrides=options)
    if resume:
        cfg = resume_config(out, options)
    with _reporter(console, quiet) as rep:
        dataset = create_dataset(data, on_bad_image=cfg.on_bad_image, cache_dir=cfg.cache_dir, reporter=rep)
        if len(dataset.skipped):
            rep.log(f"skipped {len(dataset.skipped)} unreadable images: {', '.join(dataset.skipped['path'][:5])}")
        return run_training(dataset, cfg, out, resume=resume, force=force, reporter=rep, on_epoch_end=on_epoch_end)
