"""The neighbour vote: leave-one-out against a brute-force kNN, feature sets read side by side, copies excluded,
bounded memory, and on real digits it finds flipped labels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.metrics import roc_auc_score

from qmix_cli.engine import neighbours
from qmix_cli.engine.neighbours import NeighbourVote, fit_neighbour_vote
from qmix_cli.engine.separation import per_sample_loss

K = 4


def _features(n: int, d: int, *, seed: int) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    # Columns on different scales and off zero: the vote standardises them itself.
    x = torch.tensor(rng.normal(size=(n, d)) * rng.uniform(0.5, 5, d) + rng.normal(size=d), dtype=torch.float32)
    return x, rng.integers(0, K, n), rng.integers(-(2**62), 2**62, n)


def _brute_force_vote(x: np.ndarray, labels: np.ndarray, *, k: int) -> np.ndarray:
    """Leave-one-out kNN by cosine similarity of standardised features, written the slow obvious way."""
    x = (x - x.mean(axis=0)) / x.std(axis=0)
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    sim = unit @ unit.T
    np.fill_diagonal(sim, -np.inf)
    out = np.zeros((len(x), K))
    for i, row in enumerate(sim):
        for j in np.argsort(-row)[:k]:
            out[i, labels[j]] += 1
    return (out + 1 / K) / (k + 1)


def test_training_images_are_voted_on_by_their_k_nearest_other_images():
    x, labels, keys = _features(60, 5, seed=0)
    vote = fit_neighbour_vote([x], labels, keys, num_classes=K, k=7)
    # Five dimensions are all kept: the projection is a rotation, which leaves cosine neighbours as they were.
    assert vote.projection.shape == (5, 5)
    # The bank is float16: agreement to its rounding, not to the last digit.
    np.testing.assert_allclose(vote.probs([x], keys), _brute_force_vote(x.numpy(), labels, k=7), atol=1e-6)


def test_feature_sets_are_read_side_by_side():
    x, labels, keys = _features(80, 9, seed=7)
    whole = fit_neighbour_vote([x], labels, keys, num_classes=K, k=5, dim=6)
    split = fit_neighbour_vote([x[:, :4], x[:, 4:]], labels, keys, num_classes=K, k=5, dim=6)
    assert split.projection.shape == (9, 6)  # one set of axes over both
    np.testing.assert_allclose(split.probs([x[:, :4], x[:, 4:]], keys), whole.probs([x], keys), atol=1e-6)
    with pytest.raises(ValueError, match="differ in length"):
        fit_neighbour_vote([x, x[:-1]], labels, keys, num_classes=K)


def test_copies_of_an_image_do_not_vote_for_it_and_new_images_get_all_k_votes():
    x, labels, keys = _features(40, 6, seed=1)
    keys[1] = keys[0]  # image 1 is a copy of image 0, and both carry label 0
    labels[:2] = 0
    x[1] = x[0]
    vote = fit_neighbour_vote([x], labels, keys, num_classes=K, k=5)
    assert vote.copies == 2  # a query may have to skip two candidates
    got = vote.probs([x[:2]], keys[:2])
    loo = _brute_force_vote(np.delete(x.numpy(), 1, axis=0), np.delete(labels, 1), k=5)[0]
    np.testing.assert_allclose(got[0], loo, atol=1e-6)  # as if the copy were not there
    # The same features under a key the run never saw: the copy is its nearest neighbour and votes.
    unseen = vote.probs([x[:1]], np.array([12345]))
    assert unseen[0, 0] > got[0, 0]
    assert np.allclose(unseen.sum(axis=1), 1) and unseen.max() <= 5.25 / 6


def test_an_image_with_no_other_image_to_vote_gets_a_uniform_vote():
    x, labels, _ = _features(3, 4, seed=2)
    same = np.zeros(3, dtype=np.int64)  # three copies of one image
    vote = fit_neighbour_vote([x], labels, same, num_classes=K, k=10)
    np.testing.assert_allclose(vote.probs([x], same), np.full((3, K), 1 / K), atol=1e-7)


def test_projection_keeps_the_leading_principal_axes():
    rng = np.random.default_rng(3)
    # Standardised, the features' correlation decides: the first and third column move together, the second and
    # fourth apart, the rest are noise. The two axes kept are those two pairs, the stronger first.
    n = 20000
    z = rng.normal(size=(n, 6))
    z[:, 2] = z[:, 0] + 0.1 * rng.normal(size=n)
    z[:, 3] = -z[:, 1] + rng.normal(size=n)
    x = torch.tensor(z * np.array([1, 3, 2, 1, 5, 1]) + 7, dtype=torch.float32)
    vote = fit_neighbour_vote([x], rng.integers(0, K, n), np.arange(n), num_classes=K, dim=2)
    assert vote.projection.shape == (6, 2) and vote.bank.shape == (n, 2) and vote.bank.dtype == torch.float16
    expected = np.zeros((6, 2))
    expected[[0, 2], 0] = expected[[1, 3], 1] = 2**-0.5
    assert np.allclose(np.abs(vote.projection.numpy()), expected, atol=0.1)  # sample correlations tilt them a little


def test_the_vote_is_the_same_whatever_block_of_similarities_is_computed_at_once():
    x, labels, keys = _features(50, 8, seed=4)
    vote = fit_neighbour_vote([x], labels, keys, num_classes=K, k=6)
    whole = vote.probs([x], keys)
    assert neighbours._SIM_BLOCK > 50 * 50  # by default all fifty rows at once
    np.testing.assert_array_equal(vote.probs([x], keys, block_entries=50 * 3), whole)  # three query rows at a time


def test_vote_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    x, labels, keys = _features(30, 5, seed=5)
    vote = fit_neighbour_vote([x], labels, keys, num_classes=K, k=4)
    moved = vote.to(torch.device("cpu"))  # the audit holds the bank as float32; what is saved stays float16
    torch.save(moved.state_dict(), tmp_path / "v.pt")
    again = NeighbourVote.from_state_dict(torch.load(tmp_path / "v.pt", weights_only=True))
    assert again.bank.dtype == torch.float16 and (again.k, again.num_classes) == (4, K)
    np.testing.assert_array_equal(again.probs([x], keys), vote.probs([x], keys))


def test_fit_rejects_misaligned_inputs_and_no_neighbours():
    x, labels, keys = _features(10, 3, seed=6)
    with pytest.raises(ValueError, match="differ in length"):
        fit_neighbour_vote([x], labels[:-1], keys, num_classes=K)
    with pytest.raises(ValueError, match="at least 1"):
        fit_neighbour_vote([x], labels, keys, num_classes=K, k=0)


def test_vote_finds_flipped_digit_labels_far_better_than_chance():
    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32)
    rng = np.random.default_rng(0)
    flipped = rng.random(len(x)) < 0.2
    noisy = np.where(flipped, (data.target + rng.integers(1, 10, len(x))) % 10, data.target)
    keys = np.arange(len(x))
    vote = fit_neighbour_vote([x], noisy, keys, num_classes=10)
    assert roc_auc_score(flipped, per_sample_loss(vote.probs([x], keys), noisy)) > 0.95
