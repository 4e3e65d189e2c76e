"""Scores from softmax outputs, and the rules training and the audit share (`qmix_cli.engine.scoring`)."""

from __future__ import annotations

import numpy as np

from qmix_cli.engine.scoring import compute_scores, ensemble_probs, fit_separation, mean_posteriors, probe_output


def _softmax_rows(rng: np.random.Generator, n: int, k: int, scale: float) -> np.ndarray:
    z = rng.normal(scale=scale, size=(n, k))
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_probe_output_is_the_final_probe_alone_or_averaged_with_the_snapshot_probe_and_the_vote():
    rng = np.random.default_rng(0)
    final, warm = _softmax_rows(rng, 50, 4, 3.0), _softmax_rows(rng, 50, 4, 1.0)
    vote = _softmax_rows(rng, 50, 4, 2.0)
    assert probe_output([final]) is final  # no snapshot and no vote: untouched
    np.testing.assert_allclose(probe_output([final], vote), (final + vote) / 2)
    # The vote weighs as much as the probes together, however many there are.
    np.testing.assert_allclose(probe_output([final, warm], vote), (final + warm) / 4 + vote / 2)
    both = probe_output([final, warm])
    np.testing.assert_allclose(both.sum(axis=1), 1.0)
    # An arithmetic mean of the two probabilities: each given label's loss lies between the two probes' losses.
    labels = rng.integers(0, 4, 50)
    loss = compute_scores(np.stack([final, warm, both]), labels).loss
    assert np.all(loss[2] <= np.maximum(loss[0], loss[1]) + 1e-12)
    assert np.all(loss[2] >= np.minimum(loss[0], loss[1]) - 1e-12)
    np.testing.assert_allclose(both, (final + warm) / 2)


def test_mean_posteriors_scores_each_net_with_its_own_separation():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 5, 600)
    # Two nets on very different scales: a sharp one and a diffuse one.
    probs = np.stack([_softmax_rows(rng, 600, 5, 6.0), _softmax_rows(rng, 600, 5, 0.7)])
    scores = compute_scores(probs, labels)
    seps = [fit_separation(scores.loss[k], scores.uncertainty[k], kind="quality", components=3) for k in range(2)]
    post = mean_posteriors(seps, scores)
    assert post.shape == (600, 3)
    np.testing.assert_allclose(post.sum(axis=1), 1.0)
    expected = np.mean([s.posteriors(scores.loss[k], scores.uncertainty[k]) for k, s in enumerate(seps)], axis=0)
    np.testing.assert_allclose(post, expected)
    # The pairing matters: each net's scores read with the other net's separation give other posteriors.
    assert not np.allclose(post, mean_posteriors(seps[::-1], scores))


def test_collision_uncertainty_is_used_when_asked_for():
    rng = np.random.default_rng(2)
    probs = np.stack([_softmax_rows(rng, 40, 5, 3.0), _softmax_rows(rng, 40, 5, 0.5)])
    labels = rng.integers(0, 5, 40)
    collision = compute_scores(probs, labels, uncertainty="collision")
    # Rényi-2 entropy of the mean of the one-hot given label and each net's softmax, written out here.
    q = probs / 2
    q[:, np.arange(40), labels] += 0.5
    np.testing.assert_allclose(collision.uncertainty, -np.log(np.square(q).sum(axis=2)))
    # It depends on the given label, which entropy ignores; the loss is the same under either choice.
    default = compute_scores(probs, labels)
    assert not np.allclose(collision.uncertainty, default.uncertainty)
    np.testing.assert_array_equal(collision.loss, default.loss)
    relabelled = compute_scores(probs, (labels + 1) % 5, uncertainty="collision")
    assert not np.allclose(relabelled.uncertainty, collision.uncertainty)


def test_the_nets_predict_together_by_their_summed_logits_not_their_mean_softmax():
    """METHOD.md's prediction, which the report's ``predicted_label`` and training's ``val_acc`` both use: a class
    each net thinks possible beats one that a net rules out, however sure the other net is of it."""
    logits = np.random.default_rng(0).normal(size=(2, 50, 4)) * 3
    probs = np.exp(logits) / np.exp(logits).sum(axis=2, keepdims=True)
    summed = np.exp(logits.sum(axis=0))
    np.testing.assert_allclose(ensemble_probs(probs), summed / summed.sum(axis=1, keepdims=True), rtol=1e-9)
    split = np.array([[[0.72, 0.28, 0.0]], [[0.0, 0.28, 0.72]]])  # the mean softmax ties classes 0 and 2 at 0.36
    assert ensemble_probs(split).argmax(axis=1).tolist() == [1]
