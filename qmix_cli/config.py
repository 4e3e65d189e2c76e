"""Typed training configuration.

Precedence, lowest to highest: the dataclass defaults (METHOD.md), a ``--config FILE.yaml``, then flags given on
the command line. The resolved config is written to ``RUN/config.yaml`` so that every run can be repeated.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
import os
import types
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml

from qmix_cli.errors import ConfigError, closest, count_of

Method = Literal["qmix", "dividemix", "ce"]


@dataclass
class TrainConfig:
    """Every setting of a training run. Defaults follow METHOD.md; [default] choices are open to ablation."""

    # What to train
    method: Method = "qmix"
    model: str = "resnet18"
    pretrained: bool = False
    weights: str | None = None
    img_size: int = 224
    channels: Literal["auto", 1, 3] = "auto"
    # JPEGs decoded at their smallest DCT scale still at least img_size (a first load of large photos 2.7 times
    # faster; docs/decisions.md, twenty-first round); false decodes them whole, as runs saved before it did.
    jpeg_scale: bool = True
    proj_dim: int = 128

    # Optimisation
    epochs: int = 30
    warmup_epochs: int | None = None  # None: a third of the epochs (10 of the default 30)
    batch_size: int = 64
    lr: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: Literal["cosine", "step", "constant"] = "cosine"
    seed: int = 0

    # Views
    hflip: bool = True
    rotation: float = 15.0
    warmup_aug: Literal["auto", "weak", "strong"] = "auto"  # auto: the method's own choice (METHOD.md)

    # Separation (METHOD.md "Sample separation"). 10 components named into the three groups, not the paper's 3:
    # three Gaussians split the skewed clean mode and call hard clean images Mis-L (docs/decisions.md).
    gmm_components: int = 10
    gmm_reg_covar: float = 5e-4
    gmm_max_iter: int = 20
    gmm_tol: float = 1e-2
    uncertainty: Literal["entropy", "collision"] = "entropy"
    smooth_epochs: int = 1
    p_threshold: float = 0.5
    # What the final separation (the audit's) is fitted on: "probe", out-of-fold linear probes on the nets'
    # features fitted on the given labels; "classifier", the nets' own classifier as in the paper (decisions.md).
    audit_scores: Literal["probe", "classifier"] = "probe"
    # With probes, also read each net as it stood at the end of warm-up and average the two probes' outputs
    # (qmix and dividemix): the semi-supervised phase teaches the nets to be sure of degraded images, which the
    # warm-up nets still are not (docs/decisions.md, fifteenth round).
    audit_warmup: bool = True
    # With probes, each net's probe output is averaged with a vote of the image's nearest training images in the
    # features its probes read (this many of them; 0: no vote): a local read-out that a linear head's global one
    # misses (docs/decisions.md, eighteenth and nineteenth rounds).
    audit_neighbours: int = 10
    # A manifest column saying which images belong together (a patient, a lesion, a video): with probes, the
    # audit's folds and votes keep a group's images of one label together, so that they do not vouch for a wrong
    # label they all carry (`qmix_cli.engine.groups`). None: each image stands alone, copies excepted.
    group_column: str | None = None

    # Semi-supervised training
    temperature: float = 0.5
    mixup_alpha: float = 4.0
    lambda_u: float = 25.0
    rampup_epochs: int = 16
    mislq_weight: float = 0.5
    # Where qmix trains Mis-L: "labelled" (the paper: own pseudo-label, down-weighted, negatives of L_con) or
    # "unlabelled" (co-guessed like Mis-H, as dividemix treats every non-clean image; decisions.md, ninth round).
    mislq_stream: Literal["labelled", "unlabelled"] = "labelled"
    lambda_con: float = 0.1
    con_temperature: float = 0.1
    prior: Literal["uniform", "class"] = "uniform"

    # Machinery
    device: str = "auto"
    amp: bool = True
    compile: bool = False
    workers: int = 0
    eval_batch_size: int = 256
    on_bad_image: Literal["error", "skip"] = "error"
    cache_dir: str | None = None
    val: str | None = None

    def validate(self) -> TrainConfig:
        for f in fields(self):
            setattr(self, f.name, checked_option(f.name, getattr(self, f.name), _field_types()[f.name]))
        positive = ("epochs", "batch_size", "img_size", "eval_batch_size", "gmm_components", "smooth_epochs")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"{name.replace('_', '-')} must be at least 1 (got {getattr(self, name)})")
        if self.warmup_epochs is None:
            self.warmup_epochs = max(1, round(self.epochs / 3))
        if not 0 <= self.warmup_epochs <= self.epochs:
            raise ConfigError(f"warmup-epochs must be between 0 and epochs ({self.epochs})")
        check_seed(self.seed)
        for name, (meaning, ok) in _RANGES.items():
            value = getattr(self, name)
            if not (math.isfinite(value) and ok(value)):
                raise ConfigError(f"{name.replace('_', '-')} must be {meaning} (got {value})")
            if abs(value) > FLOAT32_MAX:  # torch holds it as a float32: `lr 1e39` ended in an overflow mid-epoch
                raise ConfigError(f"{name.replace('_', '-')} {value} is more than a 32-bit float holds")
        if self.group_column is not None:
            if not self.group_column.strip():
                raise ConfigError("group-column must name a column of the manifest")
            if self.audit_scores != "probe":
                raise ConfigError("group-column groups the audit's probes; with audit-scores classifier there are none")
        if self.gmm_components < 3:  # every method's final separation (the audit's) names three groups
            raise ConfigError("gmm-components must be at least 3 (Correct, Mis-H, Mis-L)")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# Seeds seed numpy and torch generators alike: numpy refuses negative ones, torch those over 64 bits.
MAX_SEED = 2**32 - 1


def check_seed(seed: int) -> None:
    """Refuse a seed no generator takes, naming the option (a `ConfigError`)."""
    if not 0 <= seed <= MAX_SEED:
        raise ConfigError(f"seed must be between 0 and {MAX_SEED} (got {seed})")


# The largest finite float32: the optimiser and the losses hold these options as tensors of it.
FLOAT32_MAX = 3.4028234663852886e38
# Numeric options that a value outside these ranges would not fail on but quietly turn into nonsense (a
# p_threshold of 5 calls every image an issue; a negative weight reverses its loss term). NaN fails every test.
_RANGES: dict[str, tuple[str, Callable[[float], bool]]] = {
    "lr": ("positive", lambda v: v > 0),
    "momentum": ("in [0, 1)", lambda v: 0 <= v < 1),
    "weight_decay": ("0 or more", lambda v: v >= 0),
    "rotation": ("between 0 and 180 degrees", lambda v: 0 <= v <= 180),
    "gmm_reg_covar": ("positive", lambda v: v > 0),
    "gmm_max_iter": ("at least 1", lambda v: v >= 1),
    "gmm_tol": ("positive", lambda v: v > 0),
    "p_threshold": ("in [0, 1)", lambda v: 0 <= v < 1),
    "audit_neighbours": ("0 (no vote) or more", lambda v: v >= 0),
    "temperature": ("positive", lambda v: v > 0),
    "mixup_alpha": ("0 (no mixup) or more", lambda v: v >= 0),
    "lambda_u": ("0 or more", lambda v: v >= 0),
    "rampup_epochs": ("0 or more", lambda v: v >= 0),
    "mislq_weight": ("0 or more", lambda v: v >= 0),
    "lambda_con": ("0 or more", lambda v: v >= 0),
    "con_temperature": ("positive", lambda v: v > 0),
    "proj_dim": ("at least 1", lambda v: v >= 1),
    "workers": ("0 or more", lambda v: v >= 0),
}


@functools.cache
def _field_types() -> dict[str, Any]:
    return get_type_hints(TrainConfig)


def checked_option(name: str, value: Any, hint: Any) -> Any:
    """``value`` as the type ``hint`` of field ``name`` demands, or a `ConfigError` naming the option (`TrainConfig`'s,
    `qmix_cli.noise.protocol.CorruptSpec`'s).

    Values from YAML and ``--set`` arrive loosely typed (PyYAML reads ``1e-3`` as a string, ``5`` as an int), so
    numbers are converted where that loses nothing; a choice outside a ``Literal`` is refused instead of quietly
    falling back to a default somewhere downstream.
    """
    option = name.replace("_", "-")
    origin, args = get_origin(hint), get_args(hint)
    if origin is Literal:
        match = next((a for a in args if a == value or (isinstance(value, str) and str(a) == value)), None)
        if match is None or isinstance(value, bool):
            raise ConfigError(f"unknown {option} {value!r}; choose one of {', '.join(map(str, args))}")
        return match
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = (a for a in args if a is not type(None))
        return checked_option(name, value, inner)
    expected = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    try:
        if hint is bool and isinstance(value, bool):
            return value
        if hint is int and not isinstance(value, bool):
            number = float(value) if isinstance(value, str) else value
            if isinstance(number, numbers.Real) and float(number).is_integer():
                return int(number)
        if hint is float and not isinstance(value, bool):
            return float(value)
        if hint is str and name in PATH_OPTIONS and not isinstance(value, (str, os.PathLike)):
            # A number is no file's name here: `val=0.2` means a fraction, which `val` is not.
            what = "a path or a built-in dataset's name" if name == "val" else "a path"
            raise ConfigError(f"{option} must be {what}, not {type(value).__name__} {value!r}")
        if hint is str and name in PATH_OPTIONS and not os.fspath(value).strip():
            # `--cache-dir "$CACHE"` with the variable unset: the working directory, or no validation, silently
            raise ConfigError(f"{option} is an empty path; give one, or leave the option out")
        if hint is str and isinstance(value, (str, numbers.Real)) and not isinstance(value, bool):
            return str(value)
        if hint is str and isinstance(value, os.PathLike):  # cache_dir, val, weights given as a Path in Python
            return os.fspath(value)
    except (TypeError, ValueError):
        pass
    raise ConfigError(f"{option} must be {expected.get(origin or hint, str(hint))} (got {value!r})")


# Options added since runs were first saved, with what a run saved before each did: such a run is resumed so
# (its config.yaml and checkpoint lack them). ``jpeg_scale``: JPEGs were decoded whole.
PREDATED = {"jpeg_scale": False}
# Keys every config.yaml of an earlier release holds, which no option reads any more: dropped when empty, as
# written, so that those runs still resume and their files still serve as --config. (``extra`` was a mapping
# accepted, saved and never read.)
RETIRED = frozenset({"extra"})


def field_names() -> set[str]:
    return {f.name for f in fields(TrainConfig)}


def check_config_keys(keys: Iterable[str]) -> None:
    """Refuse keys (``_`` spelling) that are not `TrainConfig` options, naming them."""
    unknown = sorted(set(keys) - field_names())
    if retired := sorted(RETIRED.intersection(unknown)):  # set to something in an earlier release's file
        raise ConfigError(
            f"{', '.join(retired)} is no longer an option (earlier releases saved it but never read it): remove it"
        )
    if unknown:
        # A key one letter off (``warmup_epoch``) is the common case: say which was meant, from the key's own spelling.
        guesses = {key: closest(key, field_names()) for key in unknown}
        named = [f"{key} (did you mean {guess}?)" if guess else key for key, guess in guesses.items()]
        raise ConfigError(f"unknown config key(s): {', '.join(named)}")


def normalise_keys(values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` with their keys in the ``_`` spelling, and without a `RETIRED` key left as an earlier release
    wrote it (empty)."""
    normalised = {str(k).replace("-", "_"): v for k, v in values.items()}
    return {k: v for k, v in normalised.items() if not (k in RETIRED and v in ({}, None))}


def config_from_dict(values: dict[str, Any], *, base: TrainConfig | None = None) -> TrainConfig:
    """Overlay ``values`` (keys may use ``-`` or ``_``) on ``base``; unknown keys are an error, not ignored."""
    normalised = normalise_keys(values)
    check_config_keys(normalised)
    return dataclasses.replace(base or TrainConfig(), **normalised).validate()


def load_config_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read config file {path}: {e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {_yaml_problem(e)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of option: value")
    return data


def _yaml_problem(error: yaml.YAMLError) -> str:
    """PyYAML's complaint in one line, at its place in the file: ``"found undefined alias 'y' (line 2, column 4)"``.
    Its own text runs over several lines, quotes the line with a caret under it and names the file
    ``<unicode string>``."""
    problem = getattr(error, "problem", None)
    if not problem:
        return " ".join(str(error).split())
    context = getattr(error, "context", None)  # "expected a single document in the stream", before "but found ..."
    said = f"{context}, {problem}" if context else problem
    mark = getattr(error, "problem_mark", None)
    return said if mark is None else f"{said} (line {mark.line + 1}, column {mark.column + 1})"


def resolve_config(
    *,
    config_file: str | Path | None = None,
    values: dict[str, Any] | None = None,
    overrides: dict[str, Any] | None = None,
) -> TrainConfig:
    """Defaults < config file (or ``values``, its contents already read) < explicit overrides (``None`` values in
    ``overrides`` mean "not given").

    File and flags are merged before anything is validated or derived, so a flag can fix a value the file got
    wrong, and derived defaults (the warm-up length) follow the final ``epochs``.
    """
    values = load_config_file(config_file) if config_file is not None else dict(values or {})
    values = normalise_keys(values)
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return config_from_dict(values)


def kept_warmup_note(base: dict[str, Any], overrides: dict[str, Any]) -> str | None:
    """A note when ``overrides`` (``_`` keys, None for not given) change the ``epochs`` of ``base`` (a config file's
    values, a `TrainConfig`'s) but not the ``warmup_epochs`` it sets: the warm-up keeps its length instead of
    following the new epochs as the default does. A run's ``config.yaml`` records the warm-up it derived, so a
    longer rerun from it (``--config RUN/config.yaml --epochs 30``) would otherwise leave semi-supervised training
    after one epoch of thirty unsaid. None when there is nothing to say."""
    base, overrides = normalise_keys(base), normalise_keys(overrides)
    warmup, epochs = base.get("warmup_epochs"), overrides.get("epochs")
    if warmup is None or epochs is None or overrides.get("warmup_epochs") is not None or base.get("epochs") == epochs:
        return None
    return (
        # As the file wrote it, already checked: a count YAML may hold as text ("3").
        f"note: --epochs {epochs} keeps the warm-up of {count_of(int(float(warmup)), 'epoch')} the config sets "
        "(by default a third of the epochs); pass --warmup-epochs N to change it"
    )


# Options naming files or folders: a run's config.yaml keeps them absolute, so that `--resume` (and anyone reading
# the run) finds the same ones from any working directory.
PATH_OPTIONS = ("weights", "cache_dir", "val")


def absolute_paths(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` (``_`` keys) with the `PATH_OPTIONS` they hold made absolute and normal against the working
    directory (``~`` expanded); a built-in dataset named as ``val`` (``digits``, ``fashion-mnist:test``) stays a
    name."""
    from qmix_cli.data.builtin import is_builtin

    out = dict(values)
    for key in PATH_OPTIONS:
        value = out.get(key)
        if value in (None, "") or (key == "val" and is_builtin(str(value))):
            continue
        out[key] = os.path.abspath(os.path.expanduser(str(value)))  # "..", "~" and "./" spelled out
    return out


def with_absolute_paths(cfg: TrainConfig) -> TrainConfig:
    """``cfg`` with its `PATH_OPTIONS` absolute (`absolute_paths`)."""
    return dataclasses.replace(cfg, **absolute_paths({key: getattr(cfg, key) for key in PATH_OPTIONS}))


def dump_config(cfg: TrainConfig) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
