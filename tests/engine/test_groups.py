"""Groups of images the audit keeps together (`qmix_cli.engine.groups`)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from qmix_cli.data.groups import group_keys
from qmix_cli.engine.groups import FoldKeys, describe_groups, unit_keys
from qmix_cli.engine.neighbours import fit_neighbour_vote
from qmix_cli.engine.probe import folds_of_keys
from qmix_cli.errors import ConfigError


def test_unit_keys_tell_a_groups_labels_apart():
    group, _ = group_keys(pd.Series(["a", "a", "a", "b", "b"]))
    units = unit_keys(group, np.array([0, 0, 1, 0, 1]))
    assert units[0] == units[1] and len(set(units.tolist())) == 4
    np.testing.assert_array_equal(unit_keys(group, np.array([0, 0, 1, 0, 1])), units)  # a function of its inputs


def _fold_keys() -> tuple[FoldKeys, np.ndarray, np.ndarray, np.ndarray]:
    #                  0   1   2   3   4   5   6   7
    pixel = np.array([10, 11, 12, 13, 14, 12, 15, 16], dtype=np.int64)  # image 5 is a copy of image 2
    unit, has = group_keys(pd.Series(["a", "a", "b", "c", None, "d", None, "d"]))
    return FoldKeys.from_training(pixel, unit, has), pixel, unit, has


def test_a_units_images_share_its_key_and_a_copy_takes_the_smallest_of_its_units():
    fold_keys, pixel, unit, _ = _fold_keys()
    keys = fold_keys.keys(pixel)
    assert keys[0] == keys[1] == unit[0]  # one unit, one key: its own
    assert keys[2] == keys[5] == min(unit[2], unit[5])  # a copy filed under b and d: one key for its pixels
    assert keys[7] == unit[7] and keys[3] == unit[3]  # d's other image keeps d's key: units are not joined
    assert keys[4] == 14 and keys[6] == 15  # no group: the pixel key, as without a group column


def test_an_ungrouped_copy_of_a_grouped_image_takes_its_units_key():
    pixel = np.array([1, 2, 1], dtype=np.int64)
    unit, has = group_keys(pd.Series(["a", "a", None]))
    keys = FoldKeys.from_training(pixel, unit, has).keys(pixel)
    assert keys[0] == keys[1] == keys[2] == unit[0]


def test_a_frame_every_patient_shares_does_not_put_them_all_in_one_fold():
    """200 patients of ten images, each with the same blank frame (one pixel key): the frames take one key, and
    every patient keeps its own for the rest (joining units through shared pixels would make one fold of all)."""
    patients = np.repeat(np.arange(200), 11)
    pixel = np.where(np.arange(len(patients)) % 11 == 10, -1, np.arange(len(patients))).astype(np.int64)
    unit, has = group_keys(pd.Series(patients))
    keys = FoldKeys.from_training(pixel, unit, has).keys(pixel)
    assert len(np.unique(keys[pixel == -1])) == 1
    assert len(np.unique(keys)) == 200
    assert np.unique(folds_of_keys(keys), return_counts=True)[1].max() < 0.5 * len(keys)  # joined: all of them


def test_the_audit_finds_training_images_by_pixels_and_new_images_by_unit():
    fold_keys, pixel, _, _ = _fold_keys()
    trained = fold_keys.keys(pixel)
    # The training images under other group names (or none) keep their training keys.
    other, other_has = group_keys(pd.Series(["z"] * 8))
    np.testing.assert_array_equal(fold_keys.keys(pixel, other, other_has), trained)
    # New images: of a unit, its key (a training unit's or not); of none, their pixels.
    new_pixel = np.array([100, 101, 102, 103], dtype=np.int64)
    new_unit, new_has = group_keys(pd.Series(["d", "a", "q", None]))
    keys = fold_keys.keys(new_pixel, new_unit, new_has)
    assert keys[0] == trained[7] and keys[1] == trained[0]
    assert keys[2] == new_unit[2] and keys[3] == 103


def test_fold_keys_survive_a_checkpoint_and_a_damaged_one_is_refused():
    fold_keys, pixel, _, _ = _fold_keys()
    state = fold_keys.state_dict()
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    again = FoldKeys.from_state_dict(state)
    np.testing.assert_array_equal(again.keys(pixel), fold_keys.keys(pixel))
    with pytest.raises(ValueError, match="not sorted"):
        FoldKeys.from_state_dict({**state, "pixel": state["pixel"].flip(0)})
    with pytest.raises(ValueError, match="one per fold key"):
        FoldKeys.from_state_dict({**state, "fold": state["fold"][:1]})


def test_a_groups_images_of_its_label_do_not_vote_for_it_and_those_of_other_labels_do():
    """Four near-identical images of one patient: three share a wrong label, the fourth carries the true one; the
    other images of their look carry the true label too. Voting by pixels, each of the three is outvoted in its
    favour by its two group-mates of its label (its nearest neighbours); voting by group and label, those two do not
    vote, and the fourth image, its label contradicting theirs, does."""
    rng = np.random.default_rng(0)
    centre = rng.normal(size=16)
    patient = centre + 0.01 * rng.normal(size=(4, 16))
    others = centre + 0.3 * rng.normal(size=(12, 16))  # the same class, further away
    far = -centre + 0.3 * rng.normal(size=(12, 16))  # another class, elsewhere
    features = torch.tensor(np.concatenate([patient, others, far]), dtype=torch.float32)
    labels = np.array([1] * 3 + [0] * 13 + [1] * 12)
    pixel = np.arange(len(labels), dtype=np.int64) + 1000
    group, has = group_keys(pd.Series(["p"] * 4 + [None] * 24))
    grouped = FoldKeys.from_training(pixel, unit_keys(group, labels), has).keys(pixel)
    assert len(set(grouped[:4].tolist())) == 2
    # Three neighbours vote: the three other images of the patient, or (grouped) the fourth and two of the others.
    for keys, votes_for_given in ((pixel, 2), (grouped, 0)):
        vote = fit_neighbour_vote([features], labels, keys, num_classes=2, k=3)
        probs = vote.probs([features[:3]], keys[:3])
        # (votes + 1/K) / (voters + 1): the votes for the given (wrong) label, 1, read back.
        np.testing.assert_allclose(probs[:, 1] * 4 - 0.5, votes_for_given, atol=1e-5)


def test_describe_groups_says_how_the_images_fall_and_refuses_what_cannot_fold():
    frame = pd.DataFrame(
        {
            "sample_id": [str(i) for i in range(8)],
            "path": [f"{i}.png" for i in range(8)],
            "label": ["x", "y"] * 4,
            "patient": ["a", "a", "a", "b", "c", "d", None, "e"],
            "site": ["s1", "s2"] * 4,
            "empty": [None] * 8,
        }
    )
    assert describe_groups(frame, "patient", folds=5) == (
        "audit folds by patient and label: 5 groups, 6 of one label, the largest of 2 images; 1 image with no "
        "group, each alone; note: that group holds 25% of the images, more than a fold's share, so its images are "
        "judged by probes that saw none of its kind (is the column a site rather than a subject?)"
    )
    with pytest.raises(ConfigError, match=r"no such column \(its columns besides the image's: patient, site, empty"):
        describe_groups(frame, "patients", folds=5)
    with pytest.raises(ConfigError, match="the label is not a group"):
        describe_groups(frame, "label", folds=5)
    with pytest.raises(ConfigError, match="has no value"):
        describe_groups(frame, "empty", folds=5)
    with pytest.raises(ConfigError, match=r"at least 5 groups of one label \(found 2\).*patient rather than a site"):
        describe_groups(frame, "site", folds=5)
    frame["pair"] = ["p", "p", "q", "q", "r", "r", "r", "r"]  # three groups, but six of one label: enough
    assert describe_groups(frame, "pair", folds=5).startswith("audit folds by pair and label: 3 groups, 6 of one")
    frame["ward"] = ["w1", "w2", "w1", "w3", "w1", "w4", "w1", "w5"]
    assert describe_groups(frame, "ward", folds=5).endswith(
        "the largest of 4 images; note: that group holds 50% of the images, more than a fold's share, so its images "
        "are judged by probes that saw none of its kind (is the column a site rather than a subject?)"
    )
