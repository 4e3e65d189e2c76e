"""Groups of images the audit keeps together (`qmix_cli.engine.groups`)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from qmix_cli.data.groups import group_keys
from qmix_cli.engine.groups import FoldKeys, describe_groups, sorted_rows, unit_keys
from qmix_cli.engine.neighbours import fit_neighbour_vote
from qmix_cli.errors import ConfigError


def test_unit_keys_tell_a_groups_labels_apart():
    group, _ = group_keys(pd.Series(["a", "a", "a", "b", "b"]))
    units = unit_keys(group, np.array([0, 0, 1, 0, 1]))
    assert units[0] == units[1] and len(set(units.tolist())) == 4
    np.testing.assert_array_equal(unit_keys(group, np.array([0, 0, 1, 0, 1])), units)  # a function of its inputs


def test_sorted_rows():
    table = np.array([-5, 3, 9], dtype=np.int64)
    assert sorted_rows(table, np.array([9, 4, -5, 100])).tolist() == [2, -1, 0, -1]
    assert sorted_rows(np.array([], dtype=np.int64), np.array([1])).tolist() == [-1]


def _fold_keys() -> tuple[FoldKeys, np.ndarray, np.ndarray, np.ndarray]:
    #            0    1    2    3    4    5     6
    pixel = np.array([10, 11, 12, 13, 14, 12, 15], dtype=np.int64)  # image 5 is a copy of image 2
    group, has = group_keys(pd.Series(["a", "a", "b", "c", None, "d", None]))
    return FoldKeys.from_training(pixel, group, has), pixel, group, has


def test_components_join_a_group_and_copies_across_groups():
    fold_keys, pixel, group, _ = _fold_keys()
    keys = fold_keys.keys(pixel)
    assert keys[0] == keys[1] == group[0]  # one group, one key: its own
    assert keys[2] == keys[5] == min(group[2], group[5])  # a copy filed under b and d joins the two groups
    assert keys[3] == group[3]
    assert keys[4] == 14 and keys[6] == 15  # no group: the pixel key, as without a group column
    assert len(set(keys.tolist())) == fold_keys.num_components == 5


def test_an_ungrouped_copy_of_a_grouped_image_joins_its_group():
    pixel = np.array([1, 2, 1], dtype=np.int64)
    group, has = group_keys(pd.Series(["a", "a", None]))
    keys = FoldKeys.from_training(pixel, group, has).keys(pixel)
    assert keys[0] == keys[1] == keys[2] == group[0]


def test_the_audit_finds_training_images_by_pixels_and_new_images_by_group():
    fold_keys, pixel, _, _ = _fold_keys()
    trained = fold_keys.keys(pixel)
    # The training images under other group names (or none) keep their training components.
    other, other_has = group_keys(pd.Series(["z"] * 7))
    np.testing.assert_array_equal(fold_keys.keys(pixel, other, other_has), trained)
    # New images: of a known group, that group's component; of a new group, its own key; of none, their pixels.
    new_pixel = np.array([100, 101, 102, 103], dtype=np.int64)
    new_group, new_has = group_keys(pd.Series(["d", "a", "q", None]))
    keys = fold_keys.keys(new_pixel, new_group, new_has)
    assert keys[0] == trained[5] and keys[1] == trained[0]
    assert keys[2] == new_group[2] and keys[3] == 103


def test_fold_keys_survive_a_checkpoint_and_a_damaged_one_is_refused():
    fold_keys, pixel, _, _ = _fold_keys()
    state = fold_keys.state_dict()
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    again = FoldKeys.from_state_dict(state)
    np.testing.assert_array_equal(again.keys(pixel), fold_keys.keys(pixel))
    with pytest.raises(ValueError, match="not sorted"):
        FoldKeys.from_state_dict({**state, "pixel": state["pixel"].flip(0)})
    with pytest.raises(ValueError, match="one per key"):
        FoldKeys.from_state_dict({**state, "group_to": state["group_to"][:1]})


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
    assert describe_groups(frame, "patient", folds=5).startswith(
        "audit folds by patient and label: 5 groups, the largest of 3 images; 1 image with no group stand alone; "
        "note: that group holds 38% of the images"
    )
    with pytest.raises(ConfigError, match=r"no such column \(its columns besides the image's: patient, site, empty"):
        describe_groups(frame, "patients", folds=5)
    with pytest.raises(ConfigError, match="the label is not a group"):
        describe_groups(frame, "label", folds=5)
    with pytest.raises(ConfigError, match="has no value"):
        describe_groups(frame, "empty", folds=5)
    with pytest.raises(ConfigError, match=r"at least 5 groups \(found 2\).*patient rather than a site"):
        describe_groups(frame, "site", folds=5)
    frame["ward"] = ["w1", "w1", "w1", "w1", "w2", "w3", "w4", "w5"]
    assert describe_groups(frame, "ward", folds=5).endswith(
        "note: that group holds 50% of the images, more than a fold's share, so its images are judged by probes "
        "that saw none of its kind (is the column a site rather than a subject?)"
    )
