"""The audit probe: image keys and folds, the L-BFGS logistic regression, and out-of-fold scoring on real digits."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from qmix_cli.engine.probe import (
    LinearProbe,
    fit_probe,
    fit_softmax_regression,
    folds_of_keys,
    image_keys,
    pixel_digests,
    sorted_rows,
)
from qmix_cli.engine.separation import per_sample_loss


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """Pixel features (N, 64), labels (N,) and the images as uint8 (N, 1, 8, 8) for their folds."""
    data = load_digits()
    images = (data.images * 15).astype(np.uint8)[:, None]
    return torch.tensor(data.data, dtype=torch.float32), data.target.astype(np.int64), images


def _standardise(x: torch.Tensor) -> torch.Tensor:
    return (x - x.mean(0)) / x.std(0, correction=0).clamp_min(1e-6)


def test_image_keys_and_folds_follow_the_pixels_not_the_order() -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2000, 3, 40, 40), dtype=np.uint8)
    keys = image_keys(images, seed=3)
    assert keys.dtype == np.int64 and len(np.unique(keys)) == len(images)
    folds = folds_of_keys(keys, folds=5)
    assert folds.min() == 0 and folds.max() == 4
    assert np.all(np.bincount(folds) > 300)  # roughly even: 400 expected per fold
    shuffled = rng.permutation(len(images))
    assert np.array_equal(image_keys(images[shuffled], seed=3), keys[shuffled])
    assert not np.array_equal(folds_of_keys(image_keys(images, seed=4), folds=5), folds)
    # A copy of an image, wherever it sits, shares its key and so its fold; chunked hashing changes nothing.
    copies = np.concatenate([images[:7], images[:7]])
    assert np.array_equal(image_keys(copies, seed=3), np.tile(keys[:7], 2))


@pytest.mark.parametrize("c", [0.02, 1.0])
def test_softmax_regression_matches_scikit_learn(digits, c: float) -> None:
    x, y, _ = digits
    x = _standardise(x)
    weight, bias = fit_softmax_regression(x, torch.as_tensor(y), num_classes=10, c=c)
    ours = torch.softmax(x @ weight + bias, dim=1).numpy()
    ref = LogisticRegression(C=c, max_iter=2000, tol=1e-8).fit(x.numpy(), y).predict_proba(x.numpy())
    assert np.abs(ours - ref).max() < 2e-3


def test_softmax_regression_without_samples_predicts_uniformly() -> None:
    weight, bias = fit_softmax_regression(torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64), num_classes=3)
    assert weight.shape == (4, 3) and bias.shape == (3,)
    assert torch.count_nonzero(weight) == 0 and torch.count_nonzero(bias) == 0


def test_probe_scores_each_image_out_of_fold(digits) -> None:
    """A probe that had seen an image would fit its label better than one that had not; the out-of-fold
    losses must equal those of heads refitted without each fold, and be worse than in-sample ones."""
    x, y, images = digits
    keys = image_keys(images, seed=1)
    folds = folds_of_keys(keys, folds=3)
    probe = fit_probe(x, y, keys, num_classes=10, num_folds=3, seed=1)
    assert np.array_equal(probe.keys_of(images), keys)
    oof = per_sample_loss(probe.probs(x, keys), y)
    xs = (x - probe.mean) / probe.std
    for k in range(3):
        w, b = fit_softmax_regression(xs[folds != k], torch.as_tensor(y[folds != k]), num_classes=10)
        held = torch.softmax(xs[folds == k] @ w + b, dim=1).numpy()
        # Two L-BFGS runs on one objective, its rows in another order, stop a little apart: 6e-4 seen.
        np.testing.assert_allclose(oof[folds == k], per_sample_loss(held, y[folds == k]), rtol=1e-3, atol=2e-3)
    w, b = fit_softmax_regression(xs, torch.as_tensor(y), num_classes=10)
    in_sample = per_sample_loss(torch.softmax(xs @ w + b, dim=1).numpy(), y)
    assert oof.mean() > in_sample.mean()


def test_probe_keeps_its_fold_count_when_a_fold_is_empty(digits) -> None:
    """Five images rarely fill five folds; the probe must still have five heads, or new images would be hashed
    into a different number of folds than the one it was fitted with."""
    x, y, images = digits
    keys = image_keys(images[:5], seed=0)
    probe = fit_probe(x[:5], y[:5], keys, num_classes=10, seed=0)
    assert probe.folds == 5
    assert np.isfinite(probe.probs(x[:5], keys)).all()


def test_probe_finds_flipped_labels_far_better_than_chance(digits) -> None:
    x, y, images = digits
    rng = np.random.default_rng(0)
    flipped = rng.random(len(y)) < 0.2
    noisy = np.where(flipped, (y + rng.integers(1, 10, len(y))) % 10, y)
    keys = image_keys(images, seed=0)
    probe = fit_probe(x, noisy, keys, num_classes=10, seed=0)
    loss = per_sample_loss(probe.probs(x, keys), noisy)
    assert roc_auc_score(flipped, loss) > 0.95


def test_probe_state_round_trips_through_a_weights_only_checkpoint(digits, tmp_path) -> None:
    x, y, images = digits
    keys = image_keys(images[:300], seed=2)
    probe = fit_probe(x[:300], y[:300], keys, num_classes=10, seed=2, stages=2)
    torch.save(probe.state_dict(), tmp_path / "p.pt")
    state = torch.load(tmp_path / "p.pt", weights_only=True)
    again = LinearProbe.from_state_dict(state)
    assert again.folds == probe.folds and again.seed == 2 and again.stages == 2
    np.testing.assert_array_equal(again.probs(x[:300], keys), probe.probs(x[:300], keys))
    moved = again.to(torch.device("meta"))  # the audit moves each probe to the run's device once
    assert {t.device.type for t in (moved.mean, moved.std, moved.weight, moved.bias)} == {"meta"}
    assert (moved.seed, moved.stages) == (2, 2)
    # Probes saved before the stages were recorded read the pooled features alone.
    del state["stages"]
    assert LinearProbe.from_state_dict(state).stages == 1


def test_probe_rejects_misaligned_inputs(digits) -> None:
    x, y, images = digits
    with pytest.raises(ValueError, match="differ in length"):
        fit_probe(x, y[:-1], image_keys(images), num_classes=10)


@pytest.mark.parametrize("classes", [4, 40])  # heads together narrower than the 32 features, and wider
def test_each_row_is_read_by_its_own_fold_head(classes) -> None:
    gen = torch.Generator().manual_seed(classes)
    folds, width, rows = 5, 32, 300
    probe = LinearProbe(
        mean=torch.randn(width, generator=gen),
        std=torch.rand(width, generator=gen) + 0.5,
        weight=torch.randn(folds, width, classes, generator=gen),
        bias=torch.randn(folds, classes, generator=gen),
        seed=0,
    )
    x = torch.randn(rows, width, generator=gen)
    keys = np.random.default_rng(classes).integers(-(2**62), 2**62, rows)
    fold = folds_of_keys(keys, folds=folds)
    assert set(fold) == set(range(folds))
    z = (x - probe.mean) / probe.std
    expected = [torch.softmax(z[i] @ probe.weight[f] + probe.bias[f], dim=0).numpy() for i, f in enumerate(fold)]
    np.testing.assert_allclose(probe.probs(x, keys), np.stack(expected), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape", [(50, 3, 40, 40), (300, 1, 8, 8)])  # hashed on threads, and on one
def test_pixel_digests_are_blake2b_of_salt_and_pixels_whatever_the_threads(shape) -> None:
    images = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
    images[7] = images[3]
    expected = [
        np.frombuffer(hashlib.blake2b(b"s" + im.tobytes(), digest_size=8).digest(), dtype="<i8")[0] for im in images
    ]
    for workers in (1, 3):
        digests = pixel_digests(images, salt=b"s", workers=workers)
        np.testing.assert_array_equal(digests, expected)
    assert digests[7] == digests[3] and len(set(digests)) == len(images) - 1


def test_sorted_rows():
    table = np.array([-5, 3, 9], dtype=np.int64)
    assert sorted_rows(table, np.array([9, 4, -5, 100])).tolist() == [2, -1, 0, -1]
    assert sorted_rows(np.array([], dtype=np.int64), np.array([1])).tolist() == [-1]
