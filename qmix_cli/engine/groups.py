"""Images that belong together, which the audit's folds and neighbour votes must keep together.

The audit judges each training image by probes fitted without it and by a vote of other training images
(`qmix_cli.engine.probe`, `qmix_cli.engine.neighbours`), and out of fold means leaving the image itself out. That
is not enough where several images carry one label by construction: a patient's two eyes or follow-up scans, the
slides of one lesion, the frames of one video. A wrong label on one of them is then on all of them, and a probe
that learnt from the others, or their vote, vouches for it. Grouped cross-validation's answer is ours, by group
*and given label*: with a group column (`TrainConfig.group_column`), a group's images of one label (a *unit*)
share a fold and never vote for one another. A group's images of *other* labels still count: a scan labelled
otherwise than the rest of its patient's is contradicted by them, which is evidence, not a leak (docs/decisions.md,
"Twenty-sixth round").

An image's fold key is its unit's key (`unit_keys`), or its pixel key (`qmix_cli.engine.probe.image_keys`) when it
has no group. An audit must find a training image's fold from its pixels alone, whatever manifest it comes in, so
one pixel key names one fold: an image whose pixels occur in several units (an exact copy filed under two
patients; blank frames, whose keys read a coarse grid, in many) takes the smallest of their keys. Nothing chains
beyond that image: joining the units themselves would let one blank frame shared by every patient put the whole
training set into one fold. `FoldKeys` keeps each distinct training image's fold key by its pixel key; an image
the run never saw is keyed by its group and label when the audited manifest has the column.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from qmix_cli.data.groups import check_group_column, group_keys
from qmix_cli.engine.probe import sorted_rows
from qmix_cli.errors import ConfigError, count_of


def unit_keys(group: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(N,) int64 a key of each image's group and given label: ``group`` (N,) int64 keys (`group_keys`) mixed with
    ``labels`` (N,) int class indices by SplitMix64's finaliser, so that every (group, label) pair gets its own
    well-spread 64-bit key."""
    with np.errstate(over="ignore"):
        z = np.asarray(group, dtype=np.int64).view(np.uint64) + (
            np.asarray(labels, dtype=np.uint64) + np.uint64(1)
        ) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return (z ^ (z >> np.uint64(31))).view(np.int64)


def units_of(values: pd.Series, labels: np.ndarray, *, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The unit key of each image, (N,) int64, from its group value in ``values`` (N,) and its given label in
    ``labels`` (N,), salted by the run's ``seed``, and (N,) bool whether it has a group: what training and the audit
    must compute alike for a training image's unit to be found again."""
    group, has_group = group_keys(values, seed=seed)
    return unit_keys(group, labels), has_group


@dataclass(frozen=True)
class FoldKeys:
    """The fold key of each distinct training image: ``pixel`` (P,) int64 sorted unique pixel keys of the training
    images (`image_keys`), ``fold`` (P,) int64 their fold keys."""

    pixel: np.ndarray
    fold: np.ndarray

    @classmethod
    def from_training(cls, pixel: np.ndarray, unit: np.ndarray, has_unit: np.ndarray) -> FoldKeys:
        """Fold keys of the training images with pixel keys ``pixel`` (N,) and unit keys ``unit`` (N,)
        (`unit_keys`), where ``has_unit`` (N,) bool (the image has a group): the smallest unit key among the images
        with those pixels, or the pixel key where none of them has a group."""
        pixel, unit = np.asarray(pixel, dtype=np.int64), np.asarray(unit, dtype=np.int64)
        has_unit = np.asarray(has_unit, dtype=bool)
        pixels, of = np.unique(pixel, return_inverse=True)
        smallest = np.full(len(pixels), np.iinfo(np.int64).max, dtype=np.int64)
        np.minimum.at(smallest, of[has_unit], unit[has_unit])
        grouped = np.zeros(len(pixels), dtype=bool)
        grouped[of[has_unit]] = True
        return cls(pixel=pixels, fold=np.where(grouped, smallest, pixels))

    def keys(self, pixel: np.ndarray, unit: np.ndarray | None = None, has_unit: np.ndarray | None = None) -> np.ndarray:
        """(N,) int64 the fold key of images with pixel keys ``pixel`` (N,) and, where known, unit keys ``unit`` (N,)
        with ``has_unit`` (N,) bool: a training image's (found by its pixels, whatever group and label the audited
        manifest gives it), else its unit key, else its pixel key."""
        pixel = np.asarray(pixel, dtype=np.int64)
        out = pixel.copy()
        if unit is not None and has_unit is not None:
            has_unit = np.asarray(has_unit, dtype=bool)
            out[has_unit] = np.asarray(unit, dtype=np.int64)[has_unit]
        at = sorted_rows(self.pixel, pixel)
        return np.where(at >= 0, self.fold[at], out)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors only, so checkpoints load with ``weights_only=True``."""
        return {"pixel": torch.from_numpy(self.pixel), "fold": torch.from_numpy(self.fold)}

    @classmethod
    def from_state_dict(cls, state: dict) -> FoldKeys:
        """Raises ValueError for arrays that do not fit together (a damaged ``model.pt``)."""
        pixel, fold = (state[name].numpy().astype(np.int64) for name in ("pixel", "fold"))
        if pixel.ndim != 1 or fold.shape != pixel.shape or not (pixel[1:] > pixel[:-1]).all():
            raise ValueError("pixel keys are not sorted, unique and one per fold key")
        return cls(pixel=pixel, fold=fold)


def describe_groups(frame: pd.DataFrame, column: str, *, folds: int) -> str:
    """A line saying how ``frame``'s images fall into groups by ``column`` and units by group and label, for the
    start of a run.

    Raises
    ------
    ConfigError
        For a column the manifest lacks, the label column, a column with no value, or fewer units (a group's images
        of one label, and images with no group) than ``folds``: some folds' probes would be fitted on no image.
    """
    keys, has_group = check_group_column(frame, column)
    labels = pd.factorize(frame["label"])[0]
    units = unit_keys(keys, labels)[has_group]
    groups, alone = len(np.unique(keys[has_group])), int((~has_group).sum())
    unit_sizes = np.unique(units, return_counts=True)[1]
    if len(unit_sizes) + alone < folds:
        raise ConfigError(
            f"--group-column {column}: the audit's {folds} folds need at least {folds} groups of one label (found "
            f"{len(unit_sizes) + alone}); group by something finer, such as a patient rather than a site"
        )
    largest = int(unit_sizes.max())
    without = f"; {count_of(alone, 'image')} with no group, each alone" if alone else ""
    line = (
        f"audit folds by {column} and label: {groups:,} groups, {len(unit_sizes):,} of one label, the largest of "
        f"{largest:,} images{without}"
    )
    if largest > len(frame) / folds:
        # A unit larger than a fold is most of its fold: its images are judged by probes that saw nothing like
        # them, which is what grouping by a site or a scanner, rather than a subject, does.
        line += (
            f"; note: that group holds {largest / len(frame):.0%} of the images, more than a fold's share, so its "
            "images are judged by probes that saw none of its kind (is the column a site rather than a subject?)"
        )
    return line
