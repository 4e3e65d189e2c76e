"""The Python API: the same operations and defaults as the CLI.

>>> from qmix_cli import audit, corrupt, evaluate, show, train
>>> corrupt("digits", "noisy-digits", label_rate=0.2, quality_rate=0.15, seed=1)  # doctest: +SKIP
>>> train("noisy-digits", "run", model="test_byobnet", img_size=32, epochs=12)  # doctest: +SKIP
>>> audit("noisy-digits", run="run", out="report.parquet")  # doctest: +SKIP
>>> evaluate("report.parquet", truth="noisy-digits")  # doctest: +SKIP
>>> show("report.parquet", out="report.html", run="run")  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import os
import reprlib
import sys
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from rich.console import Console

from qmix_cli.config import TrainConfig, resolve_config, with_absolute_paths
from qmix_cli.errors import ConfigError, QmixError, closest, count_of, first_few, respell_options, shell_word
from qmix_cli.progress import CommandLineConsole, Reporter, reporter

if TYPE_CHECKING:
    import pandas as pd

    from qmix_cli.data.manifest import Dataset

F = TypeVar("F", bound=Callable[..., Any])


def _python_names(fn: Callable[..., Any], aliases: Mapping[str, str]) -> dict[str, str]:
    """How ``fn`` spells each option the CLI's messages name (`qmix_cli.errors.respell_options`): ``--label-rate``
    and the config key ``label-rate`` → ``label_rate``; a flag, which takes no value on the command line, ``--force``
    → ``force=True`` and ``--no-hflip`` → ``hflip=False``; and ``aliases``, CLI options named otherwise here
    (``{"sort": "sort_by"}``). `train`'s ``**options`` are `TrainConfig`'s fields."""
    params = list(inspect.signature(fn).parameters.values())
    defaults = {p.name: p.default for p in params if p.kind is not p.VAR_KEYWORD}
    if len(defaults) < len(params):
        defaults |= {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    named = {name: name for name in defaults} | dict(aliases)
    names = {}
    for name, keyword in named.items():
        option = name.replace("_", "-")
        names[option] = names[f"--{option}"] = keyword
        if isinstance(defaults.get(keyword), bool):
            names[f"--{option}"], names[f"--no-{option}"] = f"{keyword}=True", f"{keyword}=False"
    return names


def _unexpected_keyword(function: str, given: str, keywords: list[str], aliases: Mapping[str, str]) -> str:
    """Python's message for a keyword ``function`` does not take, with the one meant: the CLI's name of an option
    this function names otherwise (``sort`` → ``sort_by``), or the closest keyword (``group_col``)."""
    meant = aliases.get(given.replace("_", "-")) or closest(given, keywords)
    hint = f" (did you mean {meant}?)" if meant else ""
    return f"{function}() got an unexpected keyword argument {given!r}{hint}"


@functools.cache
def _choice_words() -> frozenset[str]:
    """The words options take (``skip``, ``csv``, ``asymmetric``, ...): what a hint writes after an option, which
    Python passes as a string (`qmix_cli.errors.respell_options`)."""
    from typing import get_args, get_origin, get_type_hints

    from qmix_cli.data.manifest import OnBadImage
    from qmix_cli.noise.label_noise import NOISE_KINDS
    from qmix_cli.noise.protocol import IMAGE_FORMATS, LQ_LABEL_RULES
    from qmix_cli.reporting.apply import HQ_ACTIONS, LQ_ACTIONS, ON_MISSING, RARE_ACTIONS
    from qmix_cli.reporting.report import FORMATS, REPORT_ORDERS

    literals = [get_args(hint) for hint in get_type_hints(TrainConfig).values() if get_origin(hint) is Literal]
    groups = [HQ_ACTIONS, LQ_ACTIONS, ON_MISSING, RARE_ACTIONS, FORMATS, REPORT_ORDERS, LQ_LABEL_RULES, IMAGE_FORMATS]
    groups += [NOISE_KINDS, get_args(OnBadImage), ("skip", "auto", "cpu", "cuda"), *literals]
    return frozenset(str(word) for group in groups for word in group)


def _in_python_terms(aliases: Mapping[str, str] | None = None) -> Callable[[F], F]:
    """Have the errors raised through the decorated function name its keywords, not the CLI's options: the checks
    are shared with the CLI and written in its terms (``--sort must be ...``), and a notebook user passed
    ``sort_by``. The CLI prints ``cli_message``, the message as the check wrote it."""

    def decorate(fn: F) -> F:
        names = _python_names(fn, aliases or {})
        params = inspect.signature(fn).parameters
        takes_any = any(p.kind is p.VAR_KEYWORD for p in params.values())

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if not takes_any and (unknown := next((k for k in kwargs if k not in params), None)):
                raise TypeError(_unexpected_keyword(fn.__name__, unknown, list(params), aliases or {}))
            try:
                return fn(*args, **kwargs)
            except QmixError as error:
                error.respell(names, values=_choice_words())
                raise

        wrapper.python_names = names  # type: ignore[attr-defined]  # for its warnings (`_python_warning`)
        return wrapper  # type: ignore[return-value]

    return decorate


def _note_in_python_terms(message: str, fn: Callable[..., Any]) -> str:
    """A note or warning the CLI shares, naming the keywords of ``fn`` (an API function, `_in_python_terms`) where
    it names the CLI's options. Only their ``--`` spellings: every note writes its options so, and a bare hyphenated
    word in a note is the user's (a class or column named ``weight-decay``), not a config key."""
    names = {option: kw for option, kw in fn.python_names.items() if option.startswith("--")}  # type: ignore[attr-defined]
    return respell_options(message, names, values=_choice_words())


class _InPythonTerms:
    """A reporter whose lines name the keywords of the API function they come from: the notes are shared with the
    CLI and written in its terms (``note: ... --lq-labels random ...``), as its errors are (`_in_python_terms`)."""

    def __init__(self, inner: Reporter, fn: Callable[..., Any]) -> None:
        self._inner, self._fn = inner, fn

    def task(self, description: str, total: int) -> Callable[[int], None]:
        return self._inner.task(description, total)

    def log(self, message: str) -> None:
        self._inner.log(_note_in_python_terms(message, self._fn))


@contextlib.contextmanager
def _reporter(console: Console | None, quiet: bool, *, of: Callable[..., Any]) -> Iterator[Reporter]:
    """Progress and notes on ``console`` for the API function ``of`` (`_in_python_terms`): named in its keywords,
    unless the console is the CLI's (`CommandLineConsole`), whose reader typed its options."""
    with reporter(console or Console(stderr=True), quiet=quiet or console is None) as rep:
        yield rep if isinstance(console, CommandLineConsole) else _InPythonTerms(rep, of)


def _check_paths(*, frames: tuple[str, ...] = (), optional: tuple[str, ...] = (), **paths: Any) -> None:
    """Refuse a path argument of another type (an int, a list, a dict; a DataFrame unless named in ``frames``; None
    unless named in ``optional``) by its name: pathlib's own `TypeError` says neither which argument nor what it
    takes."""
    import pandas as pd

    _refuse_empty(**paths)
    for name, value in paths.items():
        frame_ok = name in frames
        if value is None and name in optional:
            continue
        if isinstance(value, (str, os.PathLike)) or (frame_ok and isinstance(value, pd.DataFrame)):
            continue
        what = "a path (str or pathlib.Path)" + (" or a DataFrame" if frame_ok else "")
        raise ConfigError(f"{name} must be {what}, not {type(value).__name__} {reprlib.repr(value)}")


def _refuse_empty(**paths: Any) -> None:
    """Refuse an empty or blank path by its name: ``Path("")`` is the working directory, so ``--run "$RUN"`` with the
    variable unset would read or write there. (A dataset's other types are refused where it is read, with advice.)"""
    for name, value in paths.items():
        if isinstance(value, str) and not value.strip():
            raise ConfigError(f"{name} is an empty path; give one")


def _log_scan(rep: Reporter, dataset: Dataset) -> None:
    """Say how many files of an image folder's class folders were passed over as not images (DICOM, text, ...),
    and what the dataset holds that the user probably did not mean or that is not read as it is (`Dataset.notes`:
    its layout, strips, pages, transparency, files named twice, labels written alike)."""
    if dataset.ignored:
        from qmix_cli.data.manifest import describe_ignored

        rep.log(f"ignored {describe_ignored(dataset.ignored)} in {dataset.source}'s class folders")
    for note in dataset.notes:
        rep.log(f"note: {note}")


def _log_skipped(rep: Reporter, dataset: Dataset) -> None:
    """Say which images ``on_bad_image="skip"`` left out of ``dataset`` (the first five of them)."""
    if n := len(dataset.skipped):
        rep.log(f"skipped {count_of(n, 'unreadable image')}: {first_few(list(dataset.skipped['path']))}")


@_in_python_terms()
def corrupt(
    source: str | Path,
    out: str | Path,
    *,
    preset: str | None = None,
    label_noise: str | None = None,
    label_rate: float | None = None,
    quality_rate: float | None = None,
    degradations: str | list[str] | None = None,
    severity: str | int | None = None,
    per_image: int | None = None,
    lq_labels: str | None = None,
    class_map: str | dict[str, str] | None = None,
    group_column: str | None = None,
    image_format: str | None = None,
    seed: int | None = None,
    workers: int | None = None,
    on_bad_image: str = "error",
    force: bool = False,
    cache_dir: str | Path | None = None,
    console: Console | None = None,
    quiet: bool = False,
):
    """Write a copy of ``source`` with planted label noise and degraded images, and the truth, to ``out``.

    The Python form of ``qmix corrupt``. Options left as ``None`` take the preset's value, else the defaults of
    `qmix_cli.noise.protocol.CorruptSpec`; the same options and seed give the same files.

    Parameters
    ----------
    source
        The clean dataset: an ImageFolder directory, a ``.csv`` / ``.parquet`` manifest (``path``, ``label``,
        optional ``sample_id``) or a built-in name (``digits``, ``fashion-mnist``, ...). Never modified.
    out
        The directory to write (images, ``manifest.parquet`` with the truth columns, ``noise.json``).
        It must not exist (or be empty) unless ``force`` and it is an earlier output of `corrupt`.
    preset
        ``"paper-15"``, ``"paper-35"``, ``"paper-45"``, ``"paper-55"`` or ``"paper-75"``: the paper's protocols.
    label_noise
        ``"none"``, ``"symmetric"`` (redrawn over all classes), ``"symmetric-exclusive"`` (always another class;
        default), ``"pairflip"``, ``"asymmetric"`` (with ``class_map``) or ``"matrix:FILE"`` (K × K, ``.npy``,
        ``.csv`` or ``.json``, rows and columns in the order of the sorted class names, or named in a CSV header
        and first column or a JSON object of objects: see `qmix_cli.noise.noise_files.load_matrix`).
    label_rate
        Chance in [0, 1] that a high-quality image's label is changed (default 0.2).
    quality_rate
        Fraction in [0, 1] of images degraded to low quality (default 0.15); exact, not a per-image draw.
    degradations
        Comma list (or a Python list) of ``blur``, ``motion``, ``dark``, ``bright``, ``contrast``, ``noise``,
        ``jpeg``, ``occlusion``, ``haze``, ``vignette``, or ``"all"`` (default).
    severity
        An int in 1..5 or a range ``"3-5"`` (default), drawn per image.
    per_image
        How many different degradations are composed on each low-quality image, at least 1 (default 1).
    lq_labels
        Labels of low-quality images: ``"random"`` (another class; default), ``"prior"`` (drawn from the class
        frequencies) or ``"keep"``.
    class_map
        ``"cat=dog,truck=car"`` (or ``{"cat": "dog", "truck": "car"}``), or ``"@FILE"`` (a ``.json`` object or a
        ``.csv`` of source,target, for names holding commas): where asymmetric noise sends each class; unnamed
        classes keep their labels.
    group_column
        A manifest column of images that belong together (a patient): one noisy label per group and class.
    image_format
        ``"keep"`` (default): untouched images are copied as they are and degraded ones written as 8-bit PNG, so in a
        set of JPEGs or 16-bit scans the file alone tells the degraded ones; ``"png"``: every image is written as
        8-bit PNG, read as training reads it (the fair input for a benchmark of tools that see files).
    seed
        The random seed (default 0).
    workers
        Threads for decoding and writing, 1 or more, or 0 or None for the default (the CPU count, at most 8);
        does not change the output.
    on_bad_image
        ``"error"`` (default) or ``"skip"`` unreadable source images (listed in ``noise.json``).
    force
        Replace an earlier output of `corrupt` at ``out`` (a folder holding ``noise.json``), once the new one is
        complete; any other folder is refused.
    cache_dir
        Where image checks are cached (default ``$QMIX_CACHE_DIR``, else ``$XDG_CACHE_HOME/qmix``, else
        ``~/.cache/qmix``).
    console
        A `rich.console.Console` to print progress and notes on; None (default) prints nothing.
    quiet
        Print nothing even with a ``console``.

    Returns
    -------
    CorruptResult
        ``out``; ``manifest``, a DataFrame of one row per image (``sample_id`` and ``path``, the new file's path;
        ``label``, ``true_label``, ``is_label_noisy``, ``is_low_quality``, ``degradation``, ``severity``,
        ``category``, ``source_id``, the source's ``sample_id``; the source's other columns);
        ``summary``, what ``noise.json`` holds (options, counts per category, the class map by name, requested and
        realised transition matrices: nested lists, or past 100 classes the name of a ``.npy`` file in ``out``,
        the output's file types by quality, degradation counts, skipped images).

    Raises
    ------
    QmixError
        One line saying what to do: a `DataError` for an unusable dataset, a `ConfigError` for options that
        contradict each other, a plain `QmixError` for an ``out`` that exists. Messages name this function's
        keywords (``label_rate``); ``cli_message`` is the CLI's wording (``--label-rate``).
    """
    from qmix_cli.data.manifest import create_dataset
    from qmix_cli.noise.protocol import corrupt_dataset, corrupt_notes, resolve_spec

    _refuse_empty(source=source)
    _check_paths(out=out)
    if workers is not None and workers < 0:
        raise ConfigError(f"--workers must be 0 or more (got {workers})")

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
        group_column=group_column,
        image_format=image_format,
        seed=seed,
    )
    with _reporter(console, quiet, of=corrupt) as rep:
        dataset = create_dataset(
            source,
            on_bad_image=on_bad_image,  # type: ignore[arg-type]
            cache_dir=cache_dir,
            workers=workers,
            reporter=rep,
        )
        _log_scan(rep, dataset)  # corrupt states the skipped images in its summary line
        result = corrupt_dataset(dataset, out, spec=spec, force=force, workers=workers, reporter=rep)
        for note in corrupt_notes(result.summary):
            rep.log(note)
        return result


@_in_python_terms()
def train(
    data: str | Path,
    out: str | Path,
    *,
    config: str | Path | TrainConfig | dict[str, Any] | None = None,
    resume: bool = False,
    force: bool = False,
    console: Console | None = None,
    quiet: bool = False,
    on_epoch_end: Callable[[dict[str, Any]], None] | None = None,
    **options: Any,
):
    """Train QMix (or the ``dividemix`` / ``ce`` baseline) on ``data`` into the run directory ``out``.

    The Python form of ``qmix train``: the same defaults, files and checkpoints, so a run started here resumes
    from the CLI and the other way round. Torch's random state is the caller's again afterwards.

    Parameters
    ----------
    data
        The training set: an ImageFolder directory, a ``.csv`` / ``.parquet`` manifest, a ``qmix corrupt``
        output or a built-in name. Never modified.
    out
        The run directory (``config.yaml``, the resolved options; ``metrics.jsonl``; ``checkpoints/``;
        ``model.pt``; ``separation.json``; ``run.json``). An existing run is refused unless ``resume`` or ``force``.
    config
        A YAML file of `TrainConfig` fields, a `TrainConfig`, or a dict of its fields; ``options`` override it.
    resume
        Continue the run in ``out`` from its last checkpoint with its saved configuration. Options given here must
        agree with it, except those a resume may change: ``device``, ``workers``, ``amp``, ``compile``,
        ``eval_batch_size``, ``cache_dir`` and ``epochs`` (to go on longer).
    force
        Start over in an existing ``out``; the old run is kept as ``OUT.previous`` until this one finishes.
    console
        A `rich.console.Console` to print the per-epoch lines and notes on; None (default) prints nothing.
    quiet
        Print nothing even with a ``console``.
    on_epoch_end
        Called after every epoch with that epoch's metrics (the row ``metrics.jsonl`` gains).
    **options
        `TrainConfig` fields: ``method`` (``"qmix"``, ``"dividemix"``, ``"ce"``), ``model`` (a timm name),
        ``img_size``, ``epochs``, ``warmup_epochs``, ``batch_size``, ``lr``, ``device``, ``seed``, ``val``, ... (see
        ``qmix train --help`` and ``--set``). ``None`` values are ignored.

    Returns
    -------
    TrainResult
        ``run_dir`` and ``metrics``, one dict per epoch (``epoch``, ``phase``, ``lr``, the losses, ``seconds``,
        ``images_per_s``; after warm-up ``n_clean`` / ``n_mis_h`` / ``n_mis_l``, the images in each group; with
        ``val``, ``val_acc``).

    Raises
    ------
    QmixError
        One line saying what to do: a `DataError` for an unusable dataset, a `ConfigError` for unknown or
        contradictory options or a run directory in use, a `TrainingError` when the loss stops being finite.
        Messages name keywords (``warmup_epochs``); ``cli_message`` is the CLI's wording (``--warmup-epochs``).
    """
    from qmix_cli.config import config_from_dict, kept_warmup_note, load_config_file
    from qmix_cli.data.cache import DecodeTarget
    from qmix_cli.data.manifest import create_dataset
    from qmix_cli.engine.trainer import resume_config
    from qmix_cli.engine.trainer import train as run_training

    _refuse_empty(data=data)
    _check_paths(
        out=out,
        optional=("config",),
        **({} if isinstance(config, (TrainConfig, dict)) else {"config": config}),
    )
    if resume and force:  # one keeps the run in out, the other replaces it: neither can be guessed
        raise ConfigError(f"--resume continues the run in {out} and --force starts it over; pass one of them, not both")
    explicit = {k: v for k, v in options.items() if v is not None}
    # What the config says, read once: a file's values, a dict of them (held in Python), a TrainConfig's fields.
    if isinstance(config, TrainConfig):
        given = config.to_dict()
    else:
        given = load_config_file(config) if config is not None and not isinstance(config, dict) else dict(config or {})
    if resume:
        # A config given with --resume must agree with the saved one (resume_config says where it does not).
        cfg = resume_config(out, {**given, **explicit})
    elif isinstance(config, TrainConfig):
        cfg = with_absolute_paths(config_from_dict(explicit, base=config))
    else:
        cfg = with_absolute_paths(resolve_config(values=given, overrides=options))
    note = None if resume else kept_warmup_note(given, explicit)
    with _reporter(console, quiet, of=train) as rep:
        if note:
            rep.log(note)
        dataset = create_dataset(
            data,
            on_bad_image=cfg.on_bad_image,
            cache_dir=cfg.cache_dir,
            reporter=rep,
            decode_to=DecodeTarget(
                cfg.img_size, None if cfg.channels == "auto" else int(cfg.channels), jpeg_scale=cfg.jpeg_scale
            ),
        )
        _log_scan(rep, dataset)
        _log_skipped(rep, dataset)
        return run_training(dataset, cfg, out, resume=resume, force=force, reporter=rep, on_epoch_end=on_epoch_end)


@_in_python_terms({"sort": "sort_by", "format": "fmt"})
def audit(
    data: str | Path,
    *,
    run: str | Path,
    out: str | Path | None = None,
    fmt: str | None = None,
    batch_size: int = 512,
    tta: int = 0,
    device: str = "auto",
    on_bad_image: str = "error",
    cache_dir: str | Path | None = None,
    workers: int = 0,
    sort_by: str = "sample_id",
    recompute: bool = False,
    group_column: str | None = None,
    groups_out: str | Path | None = None,
    force: bool = False,
    console: Console | None = None,
    quiet: bool = False,
    stream=None,
):
    """Judge every image of ``data`` with a trained run: ``clean``, ``mislabeled_hq`` or ``mislabeled_lq``.

    The Python form of ``qmix audit``. Images with the very pixels of a training image are scored from what
    training read of them (kept in ``model.pt``) unless ``recompute`` or ``tta`` is set.

    Parameters
    ----------
    data
        The images to judge: the training set or any labelled dataset with the run's classes (ImageFolder
        directory, ``.csv`` / ``.parquet`` manifest, ``qmix corrupt`` output or built-in name). Never modified.
    run
        A run directory written by `train` (``qmix train``).
    out
        Where to write the report: a path whose suffix gives the format (``.parquet``, ``.csv``, ``.jsonl``)
        unless ``fmt`` is given, ``"-"`` (or a path that is standard output, ``/dev/stdout``) for CSV (or
        ``fmt="jsonl"``) on ``stream``, or None (default) to only return the table. Written atomically.
    fmt
        ``"parquet"``, ``"csv"`` or ``"jsonl"``, overriding the suffix.
    batch_size
        Images per forward pass, at least 1 (default 512).
    tta
        Random weakly augmented views averaged into each image's prediction besides its plain view, 0 or more
        (default 0).
    device
        ``"auto"`` (CUDA when present; default), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
    on_bad_image
        ``"error"`` (default) or ``"skip"`` unreadable images (they get no row; see ``attrs["skipped"]``).
    cache_dir
        Where decoded images and image checks are cached (default as for `train`).
    workers
        DataLoader workers for datasets too big to decode into memory, 0 or more (default 0).
    sort_by
        Row order: ``"sample_id"`` (default) or ``"rank"`` (the most likely issues first, so that ``| head``
        shows them).
    recompute
        Score training images from their pixels again instead of from what training read of them.
    group_column
        The manifest column that says which images belong together, several per patient (default: the run's
        ``group_column``). It changes the summary by group, not how images are judged.
    groups_out
        Where to write the table by group (one row per group and given label,
        `qmix_cli.reporting.groups.summarise_groups`): a path whose suffix gives the format, or ``"-"`` for CSV on
        ``stream``. Needs a group column.
    force
        Replace an existing ``out`` or ``groups_out`` that is not a table ``qmix audit`` wrote (a manifest, say) or,
        for ``out``, a report of other images (or one cut down for a review); without it such a file is refused,
        while an earlier report of the same images is replaced.
    console
        A `rich.console.Console` to print progress and notes on; None (default) prints nothing.
    quiet
        Print nothing even with a ``console``.
    stream
        The text stream ``"-"`` writes to (default: standard output), e.g. an `io.StringIO`.

    Returns
    -------
    pandas.DataFrame or None
        The report, one row per image in ``sort_by`` order, with the columns of
        `qmix_cli.reporting.report.REPORT_SCHEMA` (``sample_id``, ``path``, ``given_label``, ``category``,
        ``p_clean`` / ``p_mislabeled_hq`` / ``p_mislabeled_lq`` in [0, 1] summing to 1, ``suggested_label``,
        ``rank`` from 1, ...); None when a closed pipe stopped it before its first rows.

        ``attrs`` holds ``pipe_closed`` (whether the reader of ``"-"`` closed it early), ``skipped`` (records of
        ``sample_id`` / ``path`` / ``reason`` for the images ``on_bad_image="skip"`` left out), ``qmix`` (what a
        Parquet report records: run, dataset, classes) and, with a group column, ``groups``: the ``column``, how
        many ``groups``, how many ``flagged`` (an image not judged clean) and the ``top`` five flagged rows of the table
        by group (absent when a closed pipe cut the report short and no ``groups_out`` was asked for).

    Raises
    ------
    QmixError
        One line saying what to do: a `DataError` for unreadable images or labels the run does not know, a
        `ConfigError` for contradictory options, an output that is one of the run's files or an existing file
        that is not a table ``qmix audit`` wrote (without ``force``). Messages name this function's keywords
        (``sort_by``); ``cli_message`` is the CLI's wording (``--sort``).
    """
    import pyarrow as pa

    from qmix_cli.data.groups import check_group_column, likely_group_column
    from qmix_cli.data.manifest import check_output_file, create_dataset
    from qmix_cli.io import check_replaceable
    from qmix_cli.reporting.groups import group_counts
    from qmix_cli.reporting.report import (
        REPORT_ORDERS,
        decode_metadata,
        holds_images,
        infer_format,
        open_report_writer,
    )
    from qmix_cli.reporting.score import group_note, load_run, metadata_for, report_batches, score_dataset

    if sort_by not in REPORT_ORDERS:
        raise ConfigError(f"--sort must be {' or '.join(REPORT_ORDERS)} (got {sort_by!r})")
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1 (got {batch_size})")
    _refuse_empty(data=data)
    _check_paths(
        run=run,
        out=out,
        groups_out=groups_out,
        cache_dir=cache_dir,
        optional=("out", "groups_out", "cache_dir"),
    )
    out, fmt = _stream_if_stdout(out, fmt)
    groups_out, groups_named = _stream_if_stdout(groups_out, None)
    if tta < 0:
        raise ConfigError(f"--tta must be 0 or more (got {tta})")
    if workers < 0:
        raise ConfigError(f"--workers must be 0 or more (got {workers})")
    if out is not None:
        fmt = infer_format(out, fmt)
        _check_audit_output(out, run=run, option="--out", what="the report", force=force)
    groups_fmt = None
    if groups_out is not None:
        _check_audit_output(groups_out, run=run, option="--groups-out", what="the group table", force=force)
        try:
            groups_fmt = infer_format(groups_out, groups_named)  # from the suffix alone: --format is the report's
        except QmixError:
            raise ConfigError(
                f"--groups-out {groups_out}: name a .parquet, .csv or .jsonl file, or - for CSV on stdout"
            ) from None
        if groups_out == "-" and out == "-":
            raise ConfigError("--groups-out - and --out - would share stdout; write one of them to a file")
        if out not in (None, "-") and groups_out != "-" and Path(groups_out).resolve() == Path(out).resolve():
            raise ConfigError(f"--groups-out {groups_out} is the report's own file (--out); name another file")
    trained = load_run(run, device=device)
    column = group_column if group_column is not None else trained.meta.get("group_column")
    if groups_out is not None and column is None:
        raise ConfigError(
            "--groups-out needs a column that says which images belong together: the run was trained without "
            "--group-column; name one with --group-column COL"
        )
    with _reporter(console, quiet, of=audit) as rep:
        dataset = create_dataset(
            data,
            classes=trained.classes,
            min_classes=1,
            on_bad_image=on_bad_image,  # type: ignore[arg-type]
            cache_dir=cache_dir,
            reporter=rep,
            decode_to=trained.decode_target,
        )
        _log_scan(rep, dataset)
        _log_skipped(rep, dataset)  # the report has no row for them: say so, or they are silently gone
        if note := group_note(trained, dataset):
            rep.log(note)
        if group_column is None and groups_out is not None and column not in dataset.frame.columns:
            raise ConfigError(
                f"--groups-out: this dataset has no {column} column, which the run groups by; name the column that "
                "says which images belong together with --group-column COL"
            )
        if group_column is not None or groups_out is not None:
            check_group_column(dataset.frame, column)  # named, or needed for --groups-out: it must be usable
        elif column is not None and column not in dataset.frame.columns:
            column = None  # the run's column, which this manifest lacks: the note above said so
        elif column is None and (likely := likely_group_column(dataset.frame, min_groups=2)):
            rep.log(
                f"note: the column {likely} looks like it says which images belong together; --group-column "
                f"{shell_word(likely)} --groups-out FILE lists the audit by {likely} too"
            )
        for path, option in ((out, "--out"), (groups_out, "--groups-out")):
            if path is not None and path != "-":
                check_output_file(dataset, path, option=option)
        if out is not None and out != "-":  # an earlier report by its columns (checked above); now by its rows
            ids = dataset.frame["sample_id"]
            ours = functools.partial(holds_images, sample_ids=ids)
            check_replaceable(out, ours=ours, force=force, option="--out", what="a report of these images")
        scores = score_dataset(
            trained,
            dataset,
            batch_size=batch_size,
            tta=tta,
            cache_dir=cache_dir,
            workers=workers,
            reporter=rep,
            recompute=recompute,
        )
        metadata = metadata_for(trained, dataset, group_column=column)
        # The table by group needs every row: without one the rows stop where a closed pipe stopped the report.
        summarise = functools.partial(
            _summarise_groups, column=column, dataset=dataset, out=groups_out, fmt=groups_fmt, metadata=metadata,
            stream=stream,
        )  # fmt: skip
        tables = []
        pipe_closed = False
        by_group = None
        if out is None:
            tables = list(report_batches(trained, dataset, scores, sort_by=sort_by))
            by_group = summarise(tables)
        else:
            with open_report_writer(out, fmt=fmt, metadata=metadata, stream=stream) as writer:
                for table in report_batches(trained, dataset, scores, sort_by=sort_by):
                    tables.append(table)
                    writer.write(table)
                    if writer.pipe_closed:
                        pipe_closed = True
                        if groups_out is None:
                            break  # else the group table still needs every row (the writer drops the rest)
                else:
                    # Inside the report's block: a group table that cannot be written leaves no report either.
                    by_group = summarise(tables)
    frame = pa.concat_tables(tables).to_pandas() if tables else None
    if frame is not None:
        frame.attrs["pipe_closed"] = pipe_closed
        # Plain records, not a DataFrame: pandas copies and compares attrs in concat and writes them into Parquet.
        frame.attrs["skipped"] = dataset.skipped.to_dict(orient="records")
        # What a Parquet report carries as metadata (`read_report`'s attrs["qmix"]): the run's classes, for one.
        frame.attrs["qmix"] = decode_metadata(metadata)
        if by_group is not None:
            # Subjects, not images, are what a curation team reviews: how many have an image the audit flags.
            flagged, total = group_counts(by_group)
            frame.attrs["groups"] = {
                "column": column,
                "flagged": flagged,
                "groups": total,
                # The first flagged ones (a group of clean images only can rank high and is no issue); a few rows,
                # not the table: attrs are copied along.
                "top": by_group[by_group["images"] > by_group["clean"]].head(5).to_dict("records"),
            }
        if console is not None and not quiet and not pipe_closed:
            from qmix_cli.reporting.summary import print_audit_summary

            print_audit_summary(frame, console, out=out, groups_out=groups_out)
    return frame


def _summarise_groups(tables: list, *, column: str | None, dataset, out, fmt, metadata, stream):
    """The audit by group (`summarise_groups`) of every report row in ``tables``, written to ``out`` when given;
    None without a group ``column``."""
    import pyarrow as pa

    from qmix_cli.reporting.groups import GROUP_SCHEMA, report_groups, summarise_groups
    from qmix_cli.reporting.report import open_report_writer

    if column is None or not tables:
        return None
    frame = pa.concat_tables(tables).select(["sample_id", "given_label", "category", "p_clean", "suggested_label"])
    frame = frame.to_pandas()
    table = summarise_groups(frame, groups=report_groups(frame, dataset.frame, column))
    if out is not None:
        meta = {**metadata, b"qmix.table": b"groups"}  # so that a reader of reports can tell what the file is
        with open_report_writer(out, fmt=fmt, metadata=meta, stream=stream, schema=GROUP_SCHEMA) as writer:
            writer.write(pa.Table.from_pandas(table, schema=GROUP_SCHEMA, preserve_index=False))
    return table


def _stream_if_stdout(path: str | Path | None, fmt: str | None) -> tuple[str | Path | None, str | None]:
    """An audit output and its format, ``"-"`` where ``path`` is the file standard output goes to (``/dev/stdout``,
    or the file the shell redirects it to): written as a file, it would be replaced under the shell's redirection,
    and what the script writes after it lost. A name with a suffix still says the format (``--out report.parquet >
    report.parquet`` is then refused, as Parquet cannot be streamed; it was written as CSV)."""
    from qmix_cli.io import is_stdout, is_stream
    from qmix_cli.reporting.report import infer_format

    if path is None or is_stream(path) or not is_stdout(path):
        return path, fmt
    return "-", infer_format(path, fmt) if Path(path).suffix else fmt


def _check_audit_output(out: str | Path, *, run: str | Path, option: str, what: str, force: bool) -> None:
    """Refuse an output ``audit`` cannot write, before any image is scored: an unwritable path, a run's file, or
    (without ``force``) an existing file that is not a table ``qmix audit`` wrote."""
    from qmix_cli.io import check_out_file, check_replaceable, run_file_named
    from qmix_cli.reporting.report import written_by_audit

    if out == "-":
        return
    check_out_file(out)
    if own := run_file_named(out, run):
        raise ConfigError(f"{option} {out} is one of the run's own files ({own}); write {what} to another file")
    check_replaceable(out, ours=written_by_audit, force=force, option=option, what="a table qmix audit wrote")


@_in_python_terms()
def show(
    report: str | Path | pd.DataFrame,
    *,
    out: str | Path = "report.html",
    run: str | Path | None = None,
    data: str | Path | None = None,
    top: int = 12,
    force: bool = False,
    group_column: str | None = None,
    review: str | Path | pd.DataFrame | None = None,
    sample: int | None = None,
    console: Console | None = None,
    quiet: bool = False,
) -> Path:
    """Write the self-contained HTML page of a report: scatter, per-class counts, thumbnails, training curves.

    The Python form of ``qmix show``.

    Parameters
    ----------
    report
        A report file written by `audit` (Parquet, CSV or JSON Lines), or the DataFrame `audit` returned.
    out
        The HTML file to write (default ``report.html``), atomically.
    run
        The run directory, for the separation's means and the training curves (default: the run a Parquet
        report records, when it still exists).
    data
        The dataset the report's paths are relative to, for thumbnails (default: the one a Parquet report
        records, when it still exists).
    top
        Thumbnails shown per kind of issue (and groups, for an audit by group), most likely first, and of a random
        sample of the images called clean (what the audit missed is among them), 0 or more (default 12).
    force
        Replace an existing ``out`` that is not a page ``qmix show`` wrote (a manifest, say); without it such a file
        is refused, while an earlier page is replaced.
    group_column
        The column of ``data``'s manifest saying which images belong together, for the section by group (default:
        the column a Parquet report's audit grouped by; CSV and JSON Lines reports record none).
    review
        A review sheet (as `apply` takes it: the CSV the page downloads, or a DataFrame) whose verdicts the page's
        review starts with, a colleague's or one's own from another browser (default: none).
    sample
        How many images called clean the random sample shows, 0 or more (default: ``top``): a larger one narrows
        the review's estimate of what the audit missed without more cards of each kind of issue.
    console
        A `rich.console.Console` on which thumbnails whose images are not found are said; with None (default) a
        `UserWarning` says it.
    quiet
        Say nothing, even with a ``console``.

    Returns
    -------
    pathlib.Path
        The page written.
    """
    from qmix_cli.reporting.html import write_html_report

    _check_paths(
        report=report,
        out=out,
        run=run,
        data=data,
        review=review,
        frames=("report", "review"),
        optional=("run", "data", "review"),
    )

    with _reporter(console, quiet, of=show) as rep:
        return write_html_report(
            report,
            out=out,
            run=run,
            data=data,
            top=top,
            warn=rep.log if console is not None or quiet else _python_warning(show),
            force=force,
            group_column=group_column,
            review=review,
            sample=sample,
        )


def _python_warning(fn: Callable[..., Any]) -> Callable[[str], None]:
    """A warning for a caller with no console to print on (a page with placeholders for every image, written
    without a word, would be found later), naming the keywords of ``fn`` (an API function, `_in_python_terms`): a
    `UserWarning` from the caller's line."""

    def warn(message: str) -> None:
        warnings.warn(_note_in_python_terms(message, fn), UserWarning, stacklevel=_outside_qmix())

    return warn


def _outside_qmix() -> int:
    """The ``stacklevel`` of the first frame that is not qmix's, as seen from the function calling this one: the
    caller's own line, however deep in the library the warning was found (``skip_file_prefixes`` needs 3.12)."""
    frame, level = sys._getframe(2), 2
    while frame is not None and frame.f_globals.get("__name__", "").partition(".")[0] == "qmix_cli":
        frame, level = frame.f_back, level + 1
    return level


@_in_python_terms()
def evaluate(
    report: str | Path | pd.DataFrame,
    *,
    truth: str | Path | pd.DataFrame,
    on_missing: str = "error",
    on_unchecked: str = "error",
    group_column: str | None = None,
) -> dict[str, Any]:
    """Score a report against the truth: per-category precision / recall / F1, detection, AUCs, relabels.

    The Python form of ``qmix evaluate``.

    Parameters
    ----------
    report
        A report file written by `audit`, or the DataFrame `audit` returned.
    truth
        A manifest with the truth: a ``qmix corrupt`` output, or a CSV / Parquet file written by hand with
        ``sample_id`` (or ``path``) and ``category`` (``clean``, ``mislabeled_hq``, ``mislabeled_lq``), or the
        flags ``is_low_quality`` and ``is_label_noisy`` instead of ``category``; or such a table as a DataFrame.
    on_missing
        Truth rows the report lacks: ``"error"`` (default) or ``"skip"`` (score a report of part of the images,
        e.g. one audited with ``on_bad_image="skip"``).
    on_unchecked
        Report rows the truth lacks: ``"error"`` (default) or ``"skip"`` (score on a truth of part of the images,
        those checked by hand). Either way the two must share an image.
    group_column
        A truth column saying which images belong together, to score the table by group too (default: the column
        a Parquet report's audit grouped by, where the truth has it).

    Returns
    -------
    dict
        JSON-able: ``n``, ``macro_f1``, ``per_category``, ``detection``, ``roc_auc``, ``confusion_matrix``,
        ``relabel``, ``per_class``, ... (all keys: `qmix_cli.reporting.evaluate.evaluate_report`).

    Raises
    ------
    QmixError
        One line: a truth without ids or verdicts, images the two do not share, given labels that disagree.
    """
    import pandas as pd

    from qmix_cli.categories import truth_categories
    from qmix_cli.data.builtin import is_builtin
    from qmix_cli.data.manifest import read_manifest
    from qmix_cli.errors import DataError
    from qmix_cli.reporting.evaluate import evaluate_report, ids_by_path
    from qmix_cli.reporting.report import as_bool, read_report

    _check_paths(report=report, truth=truth, frames=("report", "truth"))
    frame = report if isinstance(report, pd.DataFrame) else read_report(report)  # audit's DataFrame, as apply takes
    named = "the truth DataFrame" if isinstance(truth, pd.DataFrame) else truth  # in the messages below
    if isinstance(truth, pd.DataFrame):  # a sample checked by hand, held in a notebook
        truth_frame = truth.reset_index(drop=True)
    elif is_builtin(str(truth)) and not Path(truth).exists():
        raise DataError(
            f"{truth} is a built-in dataset without a truth: give the output of qmix corrupt made from it, or a "
            "manifest with sample_id and category columns"
        )
    else:
        truth_frame, _ = read_manifest(truth)
    if "category" not in truth_frame.columns and {"is_low_quality", "is_label_noisy"} <= set(truth_frame.columns):
        is_lq = as_bool(truth_frame["is_low_quality"], name="is_low_quality")
        noisy = as_bool(truth_frame["is_label_noisy"], name="is_label_noisy")
        truth_frame = truth_frame.assign(category=truth_categories(is_low_quality=is_lq, is_label_noisy=noisy))
    if "category" not in truth_frame.columns or not {"sample_id", "path"} & set(truth_frame.columns):
        raise DataError(
            f"{named} has no truth: it needs a sample_id (or path) column and a category column of clean, "
            "mislabeled_hq or mislabeled_lq (or is_low_quality and is_label_noisy), as qmix corrupt writes them"
        )
    if "sample_id" not in truth_frame.columns:
        truth_frame = truth_frame.assign(sample_id=ids_by_path(frame, truth_frame["path"]))
    recorded = frame.attrs.get("qmix", {}).get("group_column")
    if group_column is None and recorded in truth_frame.columns:
        group_column = recorded
    return evaluate_report(
        report=frame, truth=truth_frame, on_missing=on_missing, on_unchecked=on_unchecked, group_column=group_column
    )


@_in_python_terms()
def apply(
    data: str | Path,
    *,
    report: str | Path | pd.DataFrame,
    out: str | Path,
    hq: str = "relabel",
    lq: str = "drop",
    on_missing: str = "error",
    rare_classes: str = "auto",
    review: str | Path | pd.DataFrame | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Write the manifest that follows from a report's verdicts on ``data``, to train on next.

    The Python form of ``qmix apply`` (`qmix_cli.reporting.apply.apply_verdicts`). ``data`` and ``report`` are
    never changed.

    Parameters
    ----------
    data
        The dataset the report judged (the same images and labels).
    report
        A report file written by `audit`, or the DataFrame `audit` returned.
    out
        The new ``.csv`` or ``.parquet`` manifest, written atomically. Its paths are relative to its folder where
        the images lie under it and absolute elsewhere (always, when ``out`` is a symlink), so it reads from
        wherever it is. An existing file is replaced only with ``force`` (runs may have been trained on it).
    hq
        What to do with ``mislabeled_hq`` images: ``"relabel"`` (to the suggested label; default), ``"drop"`` or
        ``"keep"``.
    lq
        What to do with ``mislabeled_lq`` images: ``"drop"`` (default) or ``"keep"``.
    on_missing
        Dataset rows the report lacks: ``"error"`` (default), ``"drop"`` or ``"keep"``.
    rare_classes
        Images of classes of fewer than `qmix_cli.categories.SMALL_CLASS` (5) images in the report: ``"keep"``
        keeps them as they are whatever their verdict, which says little in an audit of the training set (each
        image is judged by the other images of its class); ``"apply"`` treats them as any other image (an audit of
        other images, or a rare class that is itself a typo); ``"auto"`` (default) keeps them where the report is
        of the run's training set and applies them where it is not, and where the report does not say (CSV or JSON
        Lines) asks for one of the two if it matters.
    review
        A review sheet (the CSV the page of `show` downloads, or a DataFrame; `qmix_cli.reporting.review`): a
        person's verdicts (``sample_id``, ``category``, ``suggested_label``) on some of the report's images, which
        take the place of the audit's and are carried out as given whatever ``hq``, ``lq`` and ``rare_classes``
        say (rules for the audit's verdicts). Default: none.
    force
        Replace an existing ``out``.

    Returns
    -------
    dict
        The counts of `qmix_cli.reporting.apply.Applied` (``images``, ``kept``, ``relabelled``, ``dropped_hq``,
        ``dropped_lq``, ``missing``, ``kept_rare``, ...), ``emptied`` (classes no image carries any more), ``shrunk``
        (classes that keep less than half of the images given them, smallest share first), ``by_class`` (per label, a
        dict of ``before``, ``kept``, ``relabelled_away``, ``dropped``, ``relabelled_to`` and ``after``), ``rare`` (the
        rare classes whose flagged images were kept as they are, with their sizes, smallest first), ``reviewed``
        (rows of the review), ``overruled`` (of those, the ones whose verdict or suggested label it changed),
        ``changed`` (images relabelled or dropped), ``unreviewed`` (of those, the ones no person decided) and
        ``out``.
    """
    import json

    import pandas as pd

    from qmix_cli.categories import SMALL_CLASS, small_classes
    from qmix_cli.data.manifest import (
        MANIFEST_SUFFIXES,
        check_output_file,
        create_dataset,
        integer_key_columns,
        paths_for_manifest,
    )
    from qmix_cli.io import atomic_path, check_out_file
    from qmix_cli.reporting.apply import apply_verdicts, check_actions, integers_restored
    from qmix_cli.reporting.report import check_same_images, read_report
    from qmix_cli.reporting.review import overrule, read_review

    _refuse_empty(data=data)
    _check_paths(report=report, out=out, review=review, frames=("report", "review"), optional=("review",))
    check_actions(hq=hq, lq=lq, on_missing=on_missing, rare_classes=rare_classes)
    out = Path(out)
    suffix = out.suffix.lower()
    if suffix not in MANIFEST_SUFFIXES:
        raise ConfigError(f"--out {out}: the new manifest must be a .csv or .parquet (.pq) file")
    target = check_out_file(out)  # a symlink's target: where the bytes land
    if target.suffix.lower() != suffix:
        raise ConfigError(f"--out {out} links to {target}, a file of another type; name the file itself")
    a_frame = isinstance(report, pd.DataFrame)  # only in Python: what the errors below then name
    if not a_frame:
        if target.resolve() == Path(report).resolve():
            raise ConfigError(f"--out {out} is the report; write the new manifest to another file")
        report = read_report(report)
    if isinstance(review, (str, os.PathLike)) and target.resolve() == Path(review).resolve():
        raise ConfigError(f"--out {out} is the review; write the new manifest to another file")
    reviewed = None
    if review is not None:
        reviewed = overrule(report, review if isinstance(review, pd.DataFrame) else read_review(review))
        report = reviewed.report
    dataset = create_dataset(data, check_images=False, min_classes=1)
    check_output_file(dataset, target)
    meta = report.attrs.get("qmix", {})
    check_same_images(meta, report=report, root=dataset.root, dataset=dataset.frame, data=data)
    if target.exists() and not force:  # after the checks that say more: the report, the dataset's manifest
        raise ConfigError(f"{out} already exists; choose another --out or pass --force to replace it")
    classes = json.loads(meta.get("class_names", "[]"))
    rows = dataset.frame.assign(path=dataset.file_paths)  # absolute: the new manifest lives elsewhere
    # The class sizes the verdicts rest on are the training set's (the report's rows: images training could not
    # read are in neither); those of another dataset say nothing of them.
    if rare_classes == "auto":
        rare_classes = {"true": "keep", "false": "apply"}.get(meta.get("training_set", ""), "ask")
    # (A frame without the column is refused by apply_verdicts, with the columns it lacks.)
    small = small_classes(report.get("given_label", [])) if rare_classes != "apply" else {}
    applied = apply_verdicts(
        rows,
        report,
        hq=hq,
        lq=lq,
        on_missing=on_missing,
        classes=classes,
        keep_classes=list(small),
        reviewed=reviewed.ids if reviewed else (),
    )
    if rare_classes == "ask" and applied.kept_classes:
        why, keep, other = (
            ("the DataFrame carries no qmix metadata in attrs['qmix'], which pandas' merge and read_parquet drop",
             "rare_classes='keep'", "rare_classes='apply'")
            if a_frame
            else ("CSV and JSON Lines reports record nothing", "--rare-classes keep", "--rare-classes apply")
        )  # fmt: skip
        raise ConfigError(
            f"{applied.counts['kept_rare']:,} flagged images are of classes of fewer than {SMALL_CLASS} images "
            f"({first_few([f'{c} ({small[c]})' for c in applied.kept_classes])}), and this report does not record "
            f"whether it audits the run's training set ({why}): pass {keep} if it does (their verdicts say little "
            f"there) or {other} if it audits other images; nothing written"
        )
    folder = None if out.is_symlink() else target.parent
    frame = applied.frame.assign(path=paths_for_manifest(applied.frame["path"], folder=folder))
    with atomic_path(target) as tmp:
        if suffix == ".csv":
            frame.to_csv(tmp, index=False)
        else:
            frame = integers_restored(frame, integer_key_columns(dataset))
            frame.to_parquet(tmp, index=False)
    rare = [f"{name} ({small[name]})" for name in applied.kept_classes]
    return {
        **applied.counts,
        "emptied": applied.emptied,
        "shrunk": applied.shrunk,
        "by_class": {str(k): {c: int(n) for c, n in v.items()} for k, v in applied.by_class.to_dict("index").items()},
        "rare": rare,
        "reviewed": len(reviewed.ids) if reviewed else 0,
        "overruled": reviewed.overruled if reviewed else 0,
        "out": str(out),
    }
