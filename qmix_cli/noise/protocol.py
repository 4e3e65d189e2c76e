"""The mixed-noise protocol of ``qmix corrupt`` (METHOD.md "Noise protocol").

1. A fixed fraction of images (``quality_rate``) is degraded into low-quality (LQ) images; their labels follow
   ``lq_labels`` (``random``: uniform over the other classes, ``prior``: drawn from the class frequencies,
   ``keep``). LQ images count as mislabeled whatever label they carry (category ``mislabeled_lq``).
2. The labels of the remaining high-quality (HQ) images pass through a label-noise transition matrix.

Every random choice comes from ``seed``: the global ones (which images, which labels) from one generator, each
image's degradation from its own generator seeded by ``(seed, index)``, so the output is identical whatever the
number of worker threads, and the numbers the files are named by from a third (`_file_numbers`).
"""

from __future__ import annotations

import functools
import json
import shutil
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Any, get_type_hints

import numpy as np
import pandas as pd
from PIL import Image

from qmix_cli import __version__
from qmix_cli.categories import CATEGORIES, truth_categories
from qmix_cli.config import check_seed, checked_option
from qmix_cli.data.groups import check_group_column, group_units
from qmix_cli.data.images import default_workers, native_array, threaded_map
from qmix_cli.data.manifest import Dataset, check_output_dir
from qmix_cli.errors import ConfigError, DataError, count_of
from qmix_cli.io import atomic_dir
from qmix_cli.noise.degrade import degrade, parse_degradations
from qmix_cli.noise.label_noise import apply_transition, realised_matrix, transition_matrix
from qmix_cli.noise.noise_files import load_matrix, parse_class_map
from qmix_cli.progress import Reporter, SilentReporter

LQ_LABEL_RULES = ("random", "prior", "keep")
# How the output's images are stored: "keep" copies the untouched ones as they are (degraded ones are always 8-bit
# PNG, so that their damage is exactly what was planned); "png" writes every image as 8-bit PNG, so that neither
# the file type nor the bit depth tells a degraded image from the others.
IMAGE_FORMATS = ("keep", "png")


@dataclass(frozen=True)
class CorruptSpec:
    """Options of ``qmix corrupt``; see `PRESETS` for the paper's protocol."""

    label_noise: str = "symmetric-exclusive"
    # None with a ``matrix:FILE`` noise, whose rows are the rates (`resolve_spec` clears the preset's).
    label_rate: float | None = 0.2
    quality_rate: float = 0.15
    degradations: str = "all"
    severity: str = "3-5"
    per_image: int = 1
    lq_labels: str = "random"
    class_map: str | None = None
    # A manifest column of images that belong together (a patient): each group's images of one class get one noisy
    # label, as a diagnosis wrong for a patient is wrong on every image of them. None: each image alone.
    group_column: str | None = None
    image_format: str = "keep"
    seed: int = 0
    preset: str | None = None  # recorded in noise.json; the options above already hold its values

    def severity_range(self) -> tuple[int, int]:
        text = str(self.severity)
        try:
            lo, hi = (int(v) for v in text.split("-", 1)) if "-" in text else (int(text), int(text))
        except ValueError:
            raise ConfigError(f"severity must be 1..5 or a range like 3-5 (got {text!r})") from None
        if not 1 <= lo <= hi <= 5:
            raise ConfigError(f"severity must be within 1..5 (got {text!r})")
        return lo, hi

    def validate(self) -> CorruptSpec:
        matrix = self.label_noise.startswith("matrix:")
        if matrix and self.label_rate is not None:
            raise ConfigError(
                "--label-rate does not apply to --label-noise matrix:FILE: the matrix's rows are the rates"
            )
        if not matrix and self.label_rate is None:
            raise ConfigError(f"label-noise {self.label_noise} needs a label-rate")
        # A map with another kind would be recorded in noise.json yet change nothing.
        if self.class_map is not None and self.label_noise != "asymmetric":
            raise ConfigError(f"--class-map applies to --label-noise asymmetric only (got {self.label_noise})")
        for name in ("label_rate", "quality_rate"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0:
                raise ConfigError(f"{name.replace('_', '-')} must be between 0 and 1 (got {value})")
        if self.lq_labels not in LQ_LABEL_RULES:
            raise ConfigError(f"lq-labels must be one of {', '.join(LQ_LABEL_RULES)} (got {self.lq_labels!r})")
        if self.per_image < 1:
            raise ConfigError("per-image must be at least 1")
        if self.image_format not in IMAGE_FORMATS:
            raise ConfigError(f"image-format must be one of {', '.join(IMAGE_FORMATS)} (got {self.image_format!r})")
        check_seed(self.seed)
        self.severity_range()
        names = parse_degradations(self.degradations)
        if self.per_image > len(names):
            raise ConfigError(
                f"per-image {self.per_image} composes different degradations, but only {len(names)} are named "
                f"({', '.join(names)})"
            )
        return self


@functools.cache
def _spec_types() -> dict[str, Any]:
    return get_type_hints(CorruptSpec)


def _cli_spelling(name: str, value: Any) -> Any:
    """What Python callers naturally pass, as the CLI spells it: ``degradations=["blur", "noise"]`` as
    ``"blur,noise"``, ``class_map={"cat": "dog"}`` as ``"cat=dog"``."""
    if name == "degradations" and isinstance(value, (list, tuple, set, frozenset)):
        return ",".join(map(str, value))
    if name == "class_map" and isinstance(value, dict):
        return ",".join(f"{source}={target}" for source, target in value.items())
    return value


# The paper's DDR protocol: 20 % label noise on good images, 15-75 % data noise (strongly degraded images with
# random labels).
PRESETS: dict[str, CorruptSpec] = {
    f"paper-{q}": CorruptSpec(label_rate=0.2, quality_rate=q / 100, severity="4-5", lq_labels="random")
    for q in (15, 35, 45, 55, 75)
}


def resolve_spec(preset: str | None, **given: Any) -> CorruptSpec:
    """Defaults < preset < options given explicitly (``None`` = not given), each of the type its field says (numbers
    given as text converted, a list of degradations or a mapping of classes taken in their CLI spelling)."""
    if preset is not None and preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    base = PRESETS[preset] if preset else CorruptSpec()
    hints = _spec_types()
    options = {k: checked_option(k, _cli_spelling(k, v), hints[k]) for k, v in given.items() if v is not None}
    spec = replace(base, preset=preset, **options)
    if spec.label_noise.startswith("matrix:") and given.get("label_rate") is None:
        spec = replace(spec, label_rate=None)  # the default's or the preset's rate, which a matrix replaces
    if spec.label_noise == "none" and options.get("label_rate"):
        # Recorded in noise.json, yet no label would change: refused, as a class map without asymmetric noise is.
        raise ConfigError(
            f"--label-rate {options['label_rate']} changes no label with --label-noise none; give one of them"
        )
    return spec.validate()


@dataclass(frozen=True)
class CorruptResult:
    """What `corrupt_dataset` wrote.

    Attributes
    ----------
    out
        The output directory.
    manifest
        One row per image written, in the source's order: ``sample_id`` and ``path`` (both the new path,
        ``images/<number>.<ext>`` relative to ``out``, numbered in a seeded random order), ``label`` (the given,
        possibly noisy label), ``true_label``, ``is_label_noisy``, ``is_low_quality``, ``degradation``,
        ``severity``, ``category`` (``clean``, ``mislabeled_hq`` or ``mislabeled_lq``), ``source_id`` (the
        source's ``sample_id``) and the source's other columns.
    summary
        What ``noise.json`` holds: options, seed, classes, counts per category, the class map by name, requested
        and realised transition matrices (K × K nested lists; past `INLINE_MATRIX_CLASSES` classes the name of a
        ``.npy`` file in ``out``), realised rates, ``file_types`` (the output's file suffixes by quality),
        degradation counts, ``unchanged_low_quality`` and ``skipped``.
    """

    out: Path
    manifest: pd.DataFrame = field(repr=False)  # a notebook cell ending in corrupt(...) shows where, not all
    summary: dict[str, Any] = field(repr=False)

    def __repr__(self) -> str:
        return f"CorruptResult(out={str(self.out)!r}, images={len(self.manifest)}, counts={self.summary.get('counts')})"


def corrupt_notes(summary: dict[str, Any]) -> list[str]:
    """What a user should know about a corrupted set that its counts do not say, one line each (``note: ...``,
    ``warning: ...``): the file type telling degraded images apart (`file_type_note`), a two-class label rule a net
    can learn (`lq_label_note`), and degraded images the degradation left as they were.

    ``summary`` is `CorruptResult.summary` (``noise.json``).
    """
    notes = [f"note: {note}" for note in (file_type_note(summary), lq_label_note(summary)) if note]
    if unchanged := summary["unchanged_low_quality"]:
        notes.append(
            f"warning: the degradation left {count_of(len(unchanged), 'low-quality image')} unchanged (blank images?); "
            "noise.json lists them (unchanged_low_quality)"
        )
    return notes


def file_type_note(summary: dict[str, Any]) -> str | None:
    """A note when the degraded images are written as other file types than the rest (a JPEG source, degraded
    images kept lossless as PNG): a net or a reader then tells the truth from the suffix alone."""
    lq_types, hq_types = (set(summary["file_types"][k]) for k in ("low_quality", "high_quality"))
    if not lq_types or not hq_types or lq_types == hq_types:
        return None
    part = "the truth" if lq_types.isdisjoint(hq_types) else "part of the truth"
    return (
        f"the degraded images are {', '.join(sorted(lq_types))} files and the others {', '.join(sorted(hq_types))}, "
        f"so the file type gives {part} away; --image-format png writes every image alike"
    )


def lq_label_note(summary: dict[str, Any]) -> str | None:
    """A note when the low-quality images' label rule made their labels a function of their class, or None.

    ``summary`` is `CorruptResult.summary` (``noise.json``). With two classes, ``random`` (uniform over the *other*
    classes) gives every degraded image the other class's label: a rule a net learns from how the images look (a
    degraded trouser is always labelled bag), which real poor images do not follow. On binary Fashion-MNIST sets
    the audit then took most degraded images for clean ones (docs/decisions.md, "Thirty-fourth round")."""
    if summary["options"]["lq_labels"] != "random" or len(summary["classes"]) != 2:
        return None
    if not summary["counts"].get("mislabeled_lq"):
        return None
    return (
        "with two classes, --lq-labels random (uniform over the other classes) gave every degraded image the other "
        "class's label, a pattern a net can learn from how they look; --lq-labels prior draws them from the class "
        "frequencies, as real poor images are labelled"
    )


def _transition(spec: CorruptSpec, classes: Sequence[str]) -> np.ndarray:
    k = len(classes)
    if spec.label_noise.startswith("matrix:"):
        return load_matrix(spec.label_noise.split(":", 1)[1], classes=classes)
    mapping = parse_class_map(spec.class_map, classes=classes) if spec.class_map else None
    return transition_matrix(spec.label_noise, num_classes=k, rate=spec.label_rate, mapping=mapping)


def _lq_labels(true: np.ndarray, rule: str, prior: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    k = len(prior)
    if rule == "keep":
        return true.copy()
    if rule == "prior":
        return rng.choice(k, size=len(true), p=prior)
    # Uniform over the other classes: shift by 1..K-1.
    return (true + rng.integers(1, k, size=len(true))) % k


def plan_corruption(
    labels: np.ndarray,
    *,
    classes: Sequence[str],
    spec: CorruptSpec,
    units: np.ndarray | None = None,
    transition: np.ndarray | None = None,
) -> pd.DataFrame:
    """Decide every image's fate (pure but for a ``matrix:FILE`` it reads). Returns one row per image, in input
    order.

    ``units`` (N,) int: which images belong together (`qmix_cli.data.groups.group_units`); the label noise is then
    drawn once per unit and true class, and every high-quality image of that pair gets it. Degradations, and the
    labels of degraded images, stay drawn per image. ``transition`` (K, K): ``spec``'s label-noise matrix when the
    caller has built it already (`corrupt_dataset` records it too)."""
    k, n = len(classes), len(labels)
    if transition is None:
        transition = _transition(spec, classes)
    rng = np.random.default_rng(spec.seed)
    names = parse_degradations(spec.degradations)
    lo, hi = spec.severity_range()

    n_lq = round(spec.quality_rate * n)
    is_lq = np.zeros(n, dtype=bool)
    is_lq[rng.choice(n, size=n_lq, replace=False)] = True
    noisy = labels.copy()
    hq = ~is_lq
    if units is None:
        noisy[hq] = apply_transition(labels[hq], transition, rng=rng)
    else:
        pairs, pair_of = np.unique(np.stack([units[hq], labels[hq]], axis=1), axis=0, return_inverse=True)
        noisy[hq] = apply_transition(pairs[:, 1], transition, rng=rng)[pair_of.ravel()]
    prior = np.bincount(labels, minlength=k) / n
    noisy[is_lq] = _lq_labels(labels[is_lq], spec.lq_labels, prior, rng)

    picks = [rng.choice(len(names), size=spec.per_image, replace=False) for _ in range(n_lq)]
    degradation = np.full(n, "", dtype=object)
    degradation[is_lq] = ["+".join(names[j] for j in p) for p in picks]
    severity = np.zeros(n, dtype=np.int8)
    severity[is_lq] = rng.integers(lo, hi + 1, size=n_lq)

    category = truth_categories(is_low_quality=is_lq, is_label_noisy=noisy != labels)
    return pd.DataFrame(
        {
            "label": np.asarray(classes, dtype=object)[noisy],
            "true_label": np.asarray(classes, dtype=object)[labels],
            "is_label_noisy": noisy != labels,
            "is_low_quality": is_lq,
            "degradation": degradation,
            "severity": severity,
            "category": category,
        }
    )


def _file_numbers(n: int, *, seed: int) -> np.ndarray:
    """(n,) int: a seeded permutation of ``0 .. n-1``, the number each image's file gets.

    Numbered in input order, the files of a source listed class by class (an ImageFolder, a built-in set) would
    run class by class too, and a reviewer who sees a few neighbours knows the true class of the rest. The draw
    is a stream of its own (a spawned child of ``seed``), so the plan's draws, and so every image's fate and
    pixels, are what they were before the files were shuffled."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0,))).permutation(n)


def _out_name(number: int, src_rel: str, *, png: bool) -> str:
    """``images/<number>.<ext>``: unique by construction, and neither the name nor the number gives the true class
    away (the source's ``sample_id`` stays in the manifest's ``source_id`` for traceability)."""
    suffix = ".png" if png else Path(src_rel).suffix.lower()
    return f"images/{number:07d}{suffix}"


def _process_image(
    src: Path, dst: Path, *, names: list[str], severity: int, seed: int, index: int, reencode: bool = False
) -> bool:
    """Copy, re-encode (``reencode``: as 8-bit PNG, read as training reads it) or degrade one image; True when a
    planned degradation left its pixels as they were."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if not names and not reencode:
        shutil.copyfile(src, dst)
        return False
    with Image.open(src) as img:
        img.load()
        source = native_array(img)
    if not names:
        Image.fromarray(source).save(dst, compress_level=1)
        return False
    rng = np.random.default_rng([seed, index])
    out = degrade(source, names=names, severity=severity, rng=rng)
    Image.fromarray(out).save(dst, compress_level=1)
    return np.array_equal(out, source)


def _check_replaceable_output(out: Path, *, force: bool) -> None:
    """``force`` replaces an earlier output of this command (it holds ``noise.json``), not any folder: a project's
    folder named by mistake, a run or another dataset would be deleted whole once the new output is written."""
    if force and out.is_dir() and any(out.iterdir()) and not (out / "noise.json").is_file():
        raise ConfigError(
            f"--out {out} holds files but no qmix corrupt output (noise.json); --force only replaces those: "
            "choose another --out"
        )


def _check_source_id_free(dataset: Dataset) -> None:
    """The output's ``source_id`` column holds each image's id in the source. A source's own column of that name is
    replaced only when it is an earlier output of this command (it has the truth columns), as its ``category`` is:
    anyone else's (a site's or a scanner's id; maybe the ``group_column``) would be lost without a word."""
    columns = set(dataset.frame.columns)
    if "source_id" in columns and not {"true_label", "category"} <= columns:
        raise DataError(
            f"{dataset.source} has a column source_id, which qmix corrupt writes (each image's sample_id in the "
            "source): rename that column"
        )


def corrupt_dataset(
    dataset: Dataset,
    out: str | Path,
    *,
    spec: CorruptSpec,
    force: bool = False,
    workers: int | None = None,
    reporter: Reporter | None = None,
) -> CorruptResult:
    """Write a corrupted copy of ``dataset`` to ``out`` with its ground truth; the source is only read."""
    out = Path(out)
    reporter = reporter or SilentReporter()
    check_output_dir(dataset, out)
    _check_replaceable_output(out, force=force)
    _check_source_id_free(dataset)
    spec.validate()
    classes = list(dataset.classes)
    units = None
    if spec.group_column is not None:
        units = group_units(*check_group_column(dataset.frame, spec.group_column))
    transition = _transition(spec, classes)
    plan = plan_corruption(dataset.labels, classes=classes, spec=spec, units=units, transition=transition)
    src_paths = dataset.abs_paths
    reencode = spec.image_format == "png"
    numbers = _file_numbers(len(plan), seed=spec.seed)
    rel_out = [
        _out_name(number, p, png=reencode or bool(lq))
        for number, p, lq in zip(numbers, dataset.frame["path"], plan["is_low_quality"], strict=True)
    ]
    # Written in the order of their numbers, so that the files' times and inodes (`ls -t`, a file browser's "date
    # modified") do not run class by class either; each image's bytes are the same in any order.
    writing_order = np.argsort(numbers)
    with atomic_dir(out, force=force) as tmp:
        advance = reporter.task("corrupting", len(plan))

        def work(k: int) -> bool:
            i = int(writing_order[k])
            names = plan.at[i, "degradation"].split("+") if plan.at[i, "is_low_quality"] else []
            return _process_image(
                src_paths[i],
                tmp / rel_out[i],
                names=names,
                severity=int(plan.at[i, "severity"]),
                seed=spec.seed,
                index=i,
                reencode=reencode,
            )

        unchanged = np.zeros(len(plan), dtype=bool)
        with threaded_map(work, len(plan), workers=workers or default_workers()) as results:
            for k, same in enumerate(results):
                unchanged[writing_order[k]] = same
                advance(1)

        # Each image's id is its new path, as for any manifest without ids: the source's id often names the true
        # class (``ankle-boot/00431.png``), which every report, page and pipe would show beside the noisy label.
        # The source's id is kept with the truth. Its own columns (a patient id, a site) follow, except those the
        # corruption writes anew.
        source = pd.DataFrame({"source_id": dataset.frame["sample_id"].to_numpy()})
        written = {"sample_id", "path", "label", *plan.columns, *source.columns}
        extra = dataset.frame.drop(columns=[c for c in dataset.frame.columns if c in written]).reset_index(drop=True)
        manifest = pd.concat(
            [pd.DataFrame({"sample_id": rel_out, "path": rel_out}), plan, source, extra],
            axis=1,
        )
        manifest.to_parquet(tmp / "manifest.parquet", index=False)
        summary = _store_matrices(
            _summary(dataset, manifest, spec, classes, transition=transition, unchanged=unchanged), folder=tmp
        )
        (tmp / "noise.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    return CorruptResult(out=out, manifest=manifest, summary=summary)


# Classes up to which noise.json holds its K × K transition matrices as lists a person can read; with more, each
# goes to a .npy file beside it, named in its place (at 3,000 classes the two lists made a 306 MB JSON file).
INLINE_MATRIX_CLASSES = 100
_MATRIX_KEYS = ("requested_transition_matrix", "realised_transition_matrix")


def _store_matrices(summary: dict[str, Any], *, folder: Path) -> dict[str, Any]:
    """``summary`` with its matrices as nested lists, or, past `INLINE_MATRIX_CLASSES`, saved to ``folder`` as
    ``<key>.npy`` (float64, unrounded; what ``--label-noise matrix:FILE`` reads) and named by that file."""
    stored = dict(summary)
    for key in _MATRIX_KEYS:
        matrix = np.asarray(summary[key], dtype=np.float64)
        if len(matrix) <= INLINE_MATRIX_CLASSES:
            stored[key] = matrix.tolist()
        else:
            np.save(folder / f"{key}.npy", matrix, allow_pickle=False)
            stored[key] = f"{key}.npy"
    return stored


def _suffix(path: str) -> str:
    return PurePosixPath(path).suffix or "no suffix"


def _summary(
    dataset: Dataset,
    manifest: pd.DataFrame,
    spec: CorruptSpec,
    classes: list[str],
    *,
    transition: np.ndarray,
    unchanged: np.ndarray,
) -> dict[str, Any]:
    index = {c: i for i, c in enumerate(classes)}
    hq = ~manifest["is_low_quality"].to_numpy()
    true = manifest["true_label"].map(index).to_numpy()
    noisy = manifest["label"].map(index).to_numpy()
    n = len(manifest)
    return {
        "tool_version": __version__,
        "source": dataset.source,
        "options": asdict(spec),
        "seed": spec.seed,
        "classes": classes,
        "num_images": n,
        "counts": {c: int((manifest["category"] == c).sum()) for c in CATEGORIES},
        # The map as read, by name: `options` holds it as given, which may be an @FILE that changes or goes.
        "class_map": (
            {classes[a]: classes[b] for a, b in parse_class_map(spec.class_map, classes=classes).items()}
            if spec.class_map
            else None
        ),
        # Unrounded, so that a matrix can be fed back with --label-noise matrix:FILE.
        "requested_transition_matrix": transition,
        "realised_transition_matrix": realised_matrix(true[hq], noisy[hq], num_classes=len(classes)),
        "realised_label_noise_rate_hq": float((true[hq] != noisy[hq]).mean()) if hq.any() else 0.0,
        "realised_quality_rate": float((~hq).mean()),
        # The output's file types by quality: where they differ, the type alone tells the degraded images.
        "file_types": {
            quality: dict(sorted(Counter(_suffix(p) for p in manifest.loc[rows, "path"]).items()))
            for quality, rows in (("high_quality", hq), ("low_quality", ~hq))
        },
        "degradation_counts": {
            k: int(v) for k, v in manifest.loc[~hq, "degradation"].value_counts().sort_index().items()
        },
        # Degradations that change nothing on some images (blur or contrast on a blank one): their mislabeled_lq
        # truth is not visible in the pixels, so a reader of the benchmark should know which they are.
        "unchanged_low_quality": manifest.loc[unchanged, "sample_id"].astype(str).tolist(),
        "skipped": dataset.skipped.to_dict(orient="records"),
    }
