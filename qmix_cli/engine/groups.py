"""Images that belong together, which the audit's folds and neighbour votes must keep together.

The audit judges each training image by probes fitted without it and by a vote of other training images
(`qmix_cli.engine.probe`, `qmix_cli.engine.neighbours`), and out of fold means leaving the image itself out. That
is not enough where several images carry one label by construction: a patient's two eyes or follow-up scans, the
slides of one lesion, the frames of one video. A wrong label on one of them is then on all of them, and a probe
that learnt from the others, or their vote, vouches for it. Grouped cross-validation's answer is ours, by group
*and given label*: with a group column (`TrainConfig.group_column`), a group's images of one label share a fold
and never vote for one another. A group's images of *other* labels still count: a scan labelled otherwise than
the rest of its patient's is contradicted by them, which is evidence, not a leak (docs/decisions.md,
"Twenty-sixth round").

Folds follow *components*: images joined by a shared unit (group and label) or by identical pixels (an exact copy
filed under two units joins them; without groups, copies are what share a fold already). A component's key is the
smallest unit key in it. Images with no group value keep their pixel key (`qmix_cli.engine.probe.image_keys`).
`FoldKeys` keeps each training image's component key by its pixel key, and each unit's, so that an audit finds a
training image's fold from its pixels, and an image the run never saw from its group and label, when the audited
manifest has the column.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from qmix_cli.data.groups import check_group_column
from qmix_cli.errors import ConfigError


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


def sorted_rows(table: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """(N,) int64 the position of each of ``keys`` in ``table`` (sorted, unique), or -1 where it is not there."""
    keys = np.asarray(keys, dtype=np.int64)
    if not len(table):
        return np.full(len(keys), -1, dtype=np.int64)
    at = np.minimum(np.searchsorted(table, keys), len(table) - 1)
    return np.where(table[at] == keys, at, -1).astype(np.int64)


@dataclass(frozen=True)
class FoldKeys:
    """Each training image's component key by its pixel key, and each unit's.

    ``pixel`` (P,) int64 sorted unique pixel keys of the training images, ``pixel_to`` (P,) their component keys;
    ``group`` (G,) int64 sorted unique unit keys (`unit_keys`), ``group_to`` (G,) theirs.
    """

    pixel: np.ndarray
    pixel_to: np.ndarray
    group: np.ndarray
    group_to: np.ndarray

    @classmethod
    def from_training(cls, pixel: np.ndarray, group: np.ndarray, has_group: np.ndarray) -> FoldKeys:
        """Components of the training images with pixel keys ``pixel`` (N,) and unit keys ``group`` (N,)
        (`unit_keys`), where ``has_group`` (N,) bool (`group_keys`)."""
        pixel, group = np.asarray(pixel, dtype=np.int64), np.asarray(group, dtype=np.int64)
        has_group = np.asarray(has_group, dtype=bool)
        pixels, pixel_of = np.unique(pixel, return_inverse=True)
        groups, group_of = np.unique(group[has_group], return_inverse=True)
        # A graph whose nodes are the distinct pixel keys, then the distinct group keys; each image with a group is
        # an edge between its two.
        nodes = len(pixels) + len(groups)
        edges = np.ones(len(group_of), dtype=np.int8)
        graph = coo_matrix((edges, (pixel_of[has_group], len(pixels) + group_of)), shape=(nodes, nodes))
        count, component = connected_components(graph, directed=False)
        smallest = np.full(count, np.iinfo(np.int64).max, dtype=np.int64)
        np.minimum.at(smallest, component[len(pixels) :], groups)
        grouped = np.zeros(count, dtype=bool)
        grouped[component[len(pixels) :]] = True
        of_pixels = component[: len(pixels)]
        return cls(
            pixel=pixels,
            pixel_to=np.where(grouped[of_pixels], smallest[of_pixels], pixels),
            group=groups,
            group_to=smallest[component[len(pixels) :]],
        )

    @property
    def num_components(self) -> int:
        """Distinct component keys among the training images: how many units the folds are drawn from."""
        return len(np.unique(self.pixel_to))

    def keys(
        self, pixel: np.ndarray, group: np.ndarray | None = None, has_group: np.ndarray | None = None
    ) -> np.ndarray:
        """(N,) int64 the fold key of images with pixel keys ``pixel`` (N,) and, where known, unit keys ``group``
        (N,) with ``has_group`` (N,) bool: a training image's component key (found by its pixels, whatever group
        and label the audited manifest gives it), else its unit's component key, else its unit key, else its pixel
        key."""
        pixel = np.asarray(pixel, dtype=np.int64)
        out = pixel.copy()
        if group is not None and has_group is not None:
            has_group = np.asarray(has_group, dtype=bool)
            named = np.asarray(group, dtype=np.int64)[has_group]
            at = sorted_rows(self.group, named)
            out[has_group] = np.where(at >= 0, self.group_to[at], named)
        at = sorted_rows(self.pixel, pixel)
        return np.where(at >= 0, self.pixel_to[at], out)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors only, so checkpoints load with ``weights_only=True``."""
        return {name: torch.from_numpy(getattr(self, name)) for name in ("pixel", "pixel_to", "group", "group_to")}

    @classmethod
    def from_state_dict(cls, state: dict) -> FoldKeys:
        """Raises ValueError for arrays that do not fit together (a damaged ``model.pt``)."""
        arrays = {name: state[name].numpy().astype(np.int64) for name in ("pixel", "pixel_to", "group", "group_to")}
        for table, values in (("pixel", "pixel_to"), ("group", "group_to")):
            keys = arrays[table]
            if keys.ndim != 1 or arrays[values].shape != keys.shape or not (keys[1:] > keys[:-1]).all():
                raise ValueError(f"fold keys by {table} are not sorted, unique and one per key")
        return cls(**arrays)


def describe_groups(frame: pd.DataFrame, column: str, *, folds: int) -> str:
    """A line saying how ``frame``'s images fall into groups by ``column``, for the start of a run.

    Raises
    ------
    ConfigError
        For a column the manifest lacks, the label column, a column with no value, or fewer distinct units (groups,
        and images with no group) than ``folds``: some folds' probes would then be fitted on no image or one group.
    """
    keys, has_group = check_group_column(frame, column)
    groups, alone = len(np.unique(keys[has_group])), int((~has_group).sum())
    if groups + alone < folds:
        raise ConfigError(
            f"--group-column {column}: the audit's {folds} folds need at least {folds} groups (found "
            f"{groups + alone}); group by something finer, such as a patient rather than a site"
        )
    largest = int(np.unique(keys[has_group], return_counts=True)[1].max())
    without = f"; {alone:,} image{'s' if alone != 1 else ''} with no group stand alone" if alone else ""
    line = f"audit folds by {column} and label: {groups:,} groups, the largest of {largest:,} images{without}"
    if largest > len(frame) / folds:
        # A group larger than a fold is most of its fold: its images are judged by probes that saw nothing like
        # them, which is what grouping by a site or a scanner, rather than a subject, does.
        line += (
            f"; note: that group holds {largest / len(frame):.0%} of the images, more than a fold's share, so its "
            "images are judged by probes that saw none of its kind (is the column a site rather than a subject?)"
        )
    return line
