"""Tests for qmix_cli.engine.separation: scores, normaliser, GMM naming, guard rails, serialisation, AUCs."""

from __future__ import annotations

import inspect
import itertools
import json
import math

import numpy as np
import pytest
from sklearn.mixture import GaussianMixture

from qmix_cli.categories import CLEAN, MIS_H, MIS_L
from qmix_cli.config import TrainConfig
from qmix_cli.engine.scoring import fit_separation
from qmix_cli.engine.separation import (
    Normaliser,
    QualitySeparation,
    _otsu_levels,
    collision_uncertainty,
    entropy,
    fit_loss_separation,
    fit_quality_separation,
    hard_groups,
    name_components,
    per_sample_loss,
    separation_aucs,
)
from qmix_cli.errors import TrainingError

# Planted cluster centres in raw (loss, uncertainty) units, one row per group in CATEGORIES order:
# clean = low loss / low uncertainty, Mis-H = high loss / low uncertainty, Mis-L = mid loss / high unc.
CENTRES = np.array([[0.2, 0.15], [2.6, 0.3], [1.5, 1.7]])
SPREAD = np.array([0.12, 0.08])


def planted(n: int = 600, *, seed: int = 0, share=(0.6, 0.25, 0.15)) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    truth = rng.choice(3, size=n, p=share)
    x = CENTRES[truth] + rng.normal(size=(n, 2)) * SPREAD
    return np.abs(x[:, 0]), np.abs(x[:, 1]), truth


# --------------------------------------------------------------------------------------------------- scores


def test_entropy_known_values_and_zero_safe():
    probs = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [1 / 3, 1 / 3, 1 / 3]])
    np.testing.assert_allclose(entropy(probs), [0.0, math.log(2), math.log(3)], atol=1e-12)
    assert entropy(probs).dtype == np.float64


def test_collision_uncertainty_matches_method_landmarks():
    k = 1000
    confident_right = np.eye(k)[[0]]
    confident_wrong = np.eye(k)[[1]]
    diffuse = np.full((1, k), 1.0 / k)
    probs = np.concatenate([confident_right, confident_wrong, diffuse])
    u = collision_uncertainty(probs, np.zeros(3, dtype=int))
    np.testing.assert_allclose(u[:2], [0.0, math.log(2)], atol=1e-12)
    assert u[2] == pytest.approx(math.log(4), abs=5e-3)
    # Hand value: q = (0.5 + 0.3, 0.35, ... ) for probs (0.6, 0.4), label 0 → q = (0.8, 0.2).
    v = collision_uncertainty(np.array([[0.6, 0.4]]), np.array([0]))
    assert v[0] == pytest.approx(-math.log(0.8**2 + 0.2**2))


def test_per_sample_loss_is_cross_entropy_and_finite():
    probs = np.array([[0.25, 0.75], [1.0, 0.0]])
    loss = per_sample_loss(probs, np.array([1, 1]))
    assert loss[0] == pytest.approx(-math.log(0.75))
    assert np.isfinite(loss[1]) and loss[1] == pytest.approx(-math.log(1e-12))


def test_scores_reject_bad_labels():
    with pytest.raises(ValueError):
        per_sample_loss(np.full((2, 3), 1 / 3), np.array([0, 3]))
    with pytest.raises(ValueError):
        collision_uncertainty(np.full((2, 3), 1 / 3), np.array([0]))


# ----------------------------------------------------------------------------------------------- normaliser


def test_normaliser_min_max_clip_and_constant_column():
    x = np.array([[1.0, 5.0], [3.0, 5.0], [2.0, 5.0]])
    norm = Normaliser.fit(x)
    np.testing.assert_allclose(norm(x), [[0.0, 0.0], [1.0, 0.0], [0.5, 0.0]])
    new = np.array([[0.0, 4.0], [10.0, 5.5]])
    out = norm(new)
    assert np.isfinite(out).all() and out.min() >= 0.0 and out.max() <= 1.0
    np.testing.assert_allclose(out[:, 0], [0.0, 1.0])
    restored = Normaliser.from_dict(json.loads(json.dumps(norm.to_dict())))
    np.testing.assert_array_equal(restored(new), out)


# --------------------------------------------------------------------------------------------------- naming


def _between_run_spread(values: np.ndarray, weights: np.ndarray, cuts: tuple[int, ...]) -> float:
    """The weighted variance of the run means around the overall mean, the runs being the sorted values cut at
    ``cuts`` (the definition `_otsu_levels` maximises)."""
    order = np.argsort(values)
    mean = weights @ values
    runs = np.split(order, list(cuts))
    return sum(weights[r].sum() * (weights[r] @ values[r] / weights[r].sum() - mean) ** 2 for r in runs)


@pytest.mark.parametrize("levels", [2, 3, 4])
def test_otsu_levels_maximise_the_between_run_variance(levels):
    rng = np.random.default_rng(levels)
    for _ in range(50):
        c = int(rng.integers(levels, 9))
        values, weights = rng.random(c), rng.dirichlet(np.ones(c))
        best = max(
            itertools.combinations(range(1, c), levels - 1), key=lambda cuts: _between_run_spread(values, weights, cuts)
        )
        expected = np.zeros(c, dtype=int)
        for cut in best:
            expected[np.argsort(values)[cut:]] += 1
        np.testing.assert_array_equal(_otsu_levels(values, weights, levels), expected)


def test_otsu_levels_keep_equal_values_together_and_skip_weightless_runs():
    values = np.array([0.1, 0.1, 0.5, 0.5, 0.9])
    # Equal values share a level whatever their weights: no cut falls between the two 0.1s or the two 0.5s.
    np.testing.assert_array_equal(_otsu_levels(values, np.array([0.3, 0.01, 0.3, 0.01, 0.38]), 3), [0, 0, 1, 1, 2])
    # A run of no weight is no run: with the 0.5s weightless, the cuts are 0.1 | 0.5 0.9 and 0.1 0.5 | 0.9 only.
    level = _otsu_levels(values, np.array([0.5, 0.1, 0.0, 0.0, 0.4]), 2)
    np.testing.assert_array_equal(level, [0, 0, 1, 1, 1])
    # Fewer distinct values than levels: one level each.
    np.testing.assert_array_equal(_otsu_levels(np.array([0.2, 0.7, 0.2]), np.full(3, 1 / 3), 3), [0, 1, 0])


def test_many_components_with_equal_losses_are_named_alike():
    # Two Gaussians at the same mean loss fall on one side of the clean cut, whichever sklearn lists first.
    means = np.array([[0.05, 0.1], [0.05, 0.3], [0.9, 0.1], [0.6, 0.9], [0.9, 0.2]])
    for order in itertools.permutations(range(5)):
        o = list(order)
        np.testing.assert_array_equal(name_components(means[o]), np.array([CLEAN, CLEAN, MIS_H, MIS_L, MIS_H])[o])


def test_name_components_paper_rule_under_every_permutation():
    means = np.array([[0.1, 0.1], [0.9, 0.2], [0.5, 0.9]])  # clean, Mis-H, Mis-L
    for order in itertools.permutations(range(3)):
        named = name_components(means[list(order)])
        np.testing.assert_array_equal(named, np.array([0, 1, 2])[list(order)])


def test_name_components_one_dimensional_and_single():
    np.testing.assert_array_equal(name_components(np.array([[0.8], [0.1]])), [MIS_H, CLEAN])
    np.testing.assert_array_equal(name_components(np.array([[0.3, 0.5]])), [CLEAN])


def test_name_components_many_components_by_position():
    # Two components on the clean mode (one a skewed tail), two on Mis-H, one on Mis-L.
    means = np.array([[0.05, 0.1], [0.2, 0.15], [0.85, 0.1], [0.95, 0.2], [0.55, 0.9]])
    weights = np.array([0.4, 0.2, 0.15, 0.1, 0.15])
    expected = np.array([CLEAN, CLEAN, MIS_H, MIS_H, MIS_L])
    rng = np.random.default_rng(0)
    for _ in range(10):
        order = rng.permutation(5)
        np.testing.assert_array_equal(name_components(means[order], weights=weights[order]), expected[order])


def test_two_class_components_are_named_along_their_one_curve():
    # Normalised means on a two-class curve: clean near the origin, the hesitant components rising to the entropy
    # peak (0.45, 1.0), then the far arm, where the other class wins and the uncertainty falls again. A two-way cut
    # on loss leaves the hesitant (0.25, 0.85) and (0.3, 0.95) with the clean ones, and the uncertainty split then
    # names the far arm's (0.7, 0.6) Mis-L; along the curve it is a wrong label the net is sure of.
    means = np.array([[0, 0], [0.05, 0.2], [0.25, 0.85], [0.3, 0.95], [0.45, 1.0], [0.7, 0.6], [0.9, 0.3], [1, 0.15]])
    weights = np.array([0.45, 0.2, 0.06, 0.06, 0.03, 0.07, 0.07, 0.06])
    untied = np.array([CLEAN, CLEAN, CLEAN, CLEAN, MIS_L, MIS_L, MIS_H, MIS_H])
    tied = np.array([CLEAN, CLEAN, MIS_L, MIS_L, MIS_L, MIS_H, MIS_H, MIS_H])
    rng = np.random.default_rng(0)
    for _ in range(10):
        o = rng.permutation(len(means))
        np.testing.assert_array_equal(name_components(means[o], weights=weights[o]), untied[o])
        np.testing.assert_array_equal(name_components(means[o], weights=weights[o], tied_axes=True), tied[o])


def test_two_class_naming_of_three_components_follows_the_loss():
    # Three Gaussians on the curve: the highest-loss one sits nearer the entropy peak than the middle one (a set
    # whose wrong labels the nets hesitate over). The paper's rule calls the more uncertain Mis-L; along the curve
    # the middle loss is the hesitant one, the highest the one sure of the other class.
    means = np.array([[0.05, 0.2], [0.3, 0.6], [0.6, 0.9]])
    for order in itertools.permutations(range(3)):
        o = list(order)
        np.testing.assert_array_equal(name_components(means[o]), np.array([CLEAN, MIS_H, MIS_L])[o])
        np.testing.assert_array_equal(name_components(means[o], tied_axes=True), np.array([CLEAN, MIS_L, MIS_H])[o])


def test_two_class_naming_keeps_equal_losses_together_in_any_order():
    means = np.array([[0, 0], [0, 0.05], [0.4, 1.0], [0.4, 0.9], [0.9, 0.3]])
    expected = np.array([CLEAN, CLEAN, MIS_L, MIS_L, MIS_H])
    for order in itertools.permutations(range(5)):
        o = list(order)
        np.testing.assert_array_equal(name_components(means[o], tied_axes=True), expected[o])


def test_two_class_naming_with_fewer_than_three_distinct_losses():
    # No middle run to call Mis-L: the loss says clean or wrong, and one loss for all says nothing is wrong.
    two = np.array([[0.1, 0.2]] * 3 + [[0.8, 0.5]] * 2)
    np.testing.assert_array_equal(name_components(two, tied_axes=True), [CLEAN] * 3 + [MIS_H] * 2)
    np.testing.assert_array_equal(name_components(np.full((5, 2), 0.3), tied_axes=True), [CLEAN] * 5)


def _two_class_population(n: int = 1500, *, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Raw (loss, entropy) of two-class outputs: the given label's probability near 1 for clean images, near 0.5
    for poor ones, near 0.15 for wrong labels (70 / 15 / 15 %)."""
    rng = np.random.default_rng(seed)
    truth = rng.choice(3, size=n, p=(0.7, 0.15, 0.15))
    given = np.select([truth == CLEAN, truth == MIS_H], [rng.beta(30, 1.5, n), rng.beta(2, 12, n)], rng.beta(10, 10, n))
    probs = np.column_stack([given, 1 - given])
    labels = np.zeros(n, dtype=np.int64)
    return per_sample_loss(probs, labels), entropy(probs), truth


def test_two_class_naming_sorts_planted_groups_at_least_as_well_on_every_seed():
    from sklearn.metrics import f1_score

    gains = []
    for seed in range(6):
        loss, unc, truth = _two_class_population(seed=seed)
        f1 = [
            f1_score(truth, hard_groups(sep.posteriors(loss, unc)), average="macro")
            for sep in (fit_quality_separation(loss, unc, components=10, seed=seed, tied_axes=t) for t in (False, True))
        ]
        gains.append(f1[1] - f1[0])
        assert f1[1] > 0.85, (seed, f1)  # the three runs of loss are the planted groups (the rule before: 0.56-0.79)
    assert min(gains) >= 0 and np.mean(gains) > 0.02, gains


def test_naming_survives_sklearn_component_order():
    # Permute the components of a real fitted mixture: the per-group posteriors must not change.
    loss, unc, _ = planted(seed=3)
    sep = fit_quality_separation(loss, unc)
    reference = sep.posteriors(loss, unc)
    for order in itertools.permutations(range(3)):
        o = list(order)
        permuted = QualitySeparation(
            normaliser=sep.normaliser,
            weights=sep.weights[o],
            means=sep.means[o],
            covariances=sep.covariances[o],
            precisions_cholesky=sep.precisions_cholesky[o],
            component_groups=name_components(sep.means[o]),
        )
        np.testing.assert_allclose(permuted.posteriors(loss, unc), reference, atol=1e-12)


# -------------------------------------------------------------------------------------------------- fitting


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_three_component_fit_recovers_planted_groups(seed):
    loss, unc, truth = planted(seed=seed)
    order = np.random.default_rng(100 + seed).permutation(len(loss))
    sep = fit_quality_separation(loss[order], unc[order], components=3, seed=seed)
    assert not sep.fallback and sep.n_components == 3
    post = sep.posteriors(loss[order], unc[order])
    assert post.shape == (len(loss), 3) and post.dtype == np.float64
    np.testing.assert_allclose(post.sum(axis=1), 1.0)
    accuracy = (hard_groups(post) == truth[order]).mean()
    assert accuracy > 0.95


@pytest.mark.parametrize("components", [10, 16])
def test_many_component_option_recovers_planted_groups(components):
    loss, unc, truth = planted(n=800, seed=5)
    sep = fit_quality_separation(loss, unc, components=components, seed=1)
    assert not sep.fallback and sep.n_components == components
    assert set(sep.component_groups.tolist()) == {CLEAN, MIS_H, MIS_L}
    assert (hard_groups(sep.posteriors(loss, unc)) == truth).mean() > 0.95


def test_many_components_with_too_few_samples_falls_back_to_three():
    loss, unc, _ = planted(n=120, seed=2)
    sep = fit_quality_separation(loss, unc, components=20)
    assert sep.fallback and sep.n_components == 3
    assert "20 components" in sep.note


def test_group_means_are_ordered_like_the_names():
    loss, unc, _ = planted(seed=4)
    means = fit_quality_separation(loss, unc).group_means()
    assert means.shape == (3, 2) and np.isfinite(means).all()
    assert means[CLEAN, 0] < means[MIS_H, 0] and means[CLEAN, 0] < means[MIS_L, 0]
    assert means[MIS_L, 1] > means[MIS_H, 1]
    assert means.min() >= 0.0 and means.max() <= 1.0


def test_restored_separation_scores_new_points_identically():
    loss, unc, _ = planted(seed=6)
    sep = fit_quality_separation(loss, unc)
    payload = json.dumps(sep.to_dict(), allow_nan=False)  # strictly JSON
    restored = QualitySeparation.from_dict(json.loads(payload))
    new_loss, new_unc, _ = planted(n=50, seed=60)
    new_loss[0], new_unc[0] = 100.0, -1.0  # outside the fitted range: clipped, still scored
    np.testing.assert_array_equal(restored.posteriors(new_loss, new_unc), sep.posteriors(new_loss, new_unc))
    np.testing.assert_array_equal(restored.component_groups, sep.component_groups)
    assert restored.note == sep.note and restored.fallback == sep.fallback


def test_restored_loss_separation_round_trips_nan_uncertainty():
    loss, _, _ = planted(seed=7)
    sep = fit_loss_separation(loss)
    restored = QualitySeparation.from_dict(json.loads(json.dumps(sep.to_dict(), allow_nan=False)))
    np.testing.assert_array_equal(restored.posteriors(loss), sep.posteriors(loss))
    assert np.isnan(restored.normalise(loss)[:, 1]).all()


# ---------------------------------------------------------------------------------------------- guard rails


def test_identical_losses_are_all_clean():
    rng = np.random.default_rng(0)
    sep = fit_quality_separation(np.full(200, 0.01), rng.random(200))
    post = sep.posteriors(np.full(200, 0.01), rng.random(200))
    np.testing.assert_allclose(post[:, CLEAN], 1.0)
    assert sep.fallback and "no spread" in sep.note
    assert (hard_groups(post) == CLEAN).all()


def test_tiny_losses_are_all_clean():
    rng = np.random.default_rng(1)
    loss, unc = rng.random(300) * 1e-4, rng.random(300) * 1e-3
    post = fit_quality_separation(loss, unc).posteriors(loss, unc)
    np.testing.assert_allclose(post[:, CLEAN], 1.0)


def test_five_samples_fall_back_to_loss_gmm_and_are_mostly_clean():
    loss = np.array([0.10, 0.12, 0.11, 0.09, 2.5])
    unc = np.array([0.2, 0.1, 0.15, 0.2, 0.9])
    sep = fit_quality_separation(loss, unc)
    assert sep.fallback and not sep.uses_uncertainty
    post = sep.posteriors(loss, unc)
    np.testing.assert_array_equal(post[:, MIS_L], 0.0)
    np.testing.assert_array_equal(hard_groups(post), [CLEAN, CLEAN, CLEAN, CLEAN, MIS_H])


@pytest.mark.parametrize("n", [1, 2, 3])
def test_a_handful_of_samples_never_crashes(n):
    loss, unc = np.linspace(0.1, 1.0, n), np.linspace(0.2, 0.4, n)
    post = fit_quality_separation(loss, unc).posteriors(loss, unc)
    assert post.shape == (n, 3)
    np.testing.assert_allclose(post[:, CLEAN], 1.0)


def test_confidently_fitted_dataset_is_all_clean():
    # Every sample gives its label p > 0.99 (skewed, not identical): min–max scaling must not invent groups.
    rng = np.random.default_rng(2)
    loss = rng.gamma(2.0, 0.001, size=500).clip(max=0.0099)
    unc = np.abs(rng.normal(0.05, 0.02, size=500))
    sep = fit_quality_separation(loss, unc)
    assert sep.fallback and "all clean" in sep.note
    np.testing.assert_allclose(sep.posteriors(loss, unc)[:, CLEAN], 1.0)
    np.testing.assert_allclose(fit_loss_separation(loss).posteriors(loss)[:, CLEAN], 1.0)


@pytest.mark.parametrize("seed", [3, 4, 5])
def test_one_moderate_loss_mode_is_mostly_clean_and_split_along_the_loss(seed):
    # A set without wrong labels: one skewed mode of moderate losses. The mixture still splits it (as DivideMix's
    # does), but only its tail: most images stay clean, and those named clean fit their labels better.
    rng = np.random.default_rng(seed)
    loss, unc = rng.gamma(2.0, 0.05, size=500), np.abs(rng.normal(0.1, 0.03, size=500))
    post = fit_quality_separation(loss, unc).posteriors(loss, unc)
    assert np.isfinite(post).all()
    np.testing.assert_allclose(post.sum(axis=1), 1.0)
    groups = hard_groups(post)
    assert (groups == CLEAN).mean() > 0.6
    rest = loss[groups != CLEAN]  # (none at all would be better still)
    assert rest.size == 0 or np.median(loss[groups == CLEAN]) < np.quantile(rest, 0.1)


def test_the_fits_default_to_the_settings_a_run_uses():
    # One place decides the separation a run fits (TrainConfig); a caller of the functions gets the same fit.
    cfg = TrainConfig()
    for fit in (fit_quality_separation, fit_loss_separation, fit_separation):
        defaults = {k: p.default for k, p in inspect.signature(fit).parameters.items()}
        assert (defaults["reg_covar"], defaults["max_iter"], defaults["tol"]) == (
            cfg.gmm_reg_covar,
            cfg.gmm_max_iter,
            cfg.gmm_tol,
        ), fit.__name__
        assert defaults.get("components", cfg.gmm_components) == cfg.gmm_components, fit.__name__


def test_constant_uncertainty_uses_loss_only():
    loss, _, truth = planted(seed=8)
    sep = fit_quality_separation(loss, np.zeros_like(loss))
    assert sep.fallback and not sep.uses_uncertainty
    groups = hard_groups(sep.posteriors(loss, np.zeros_like(loss)))
    assert (groups[truth == CLEAN] == CLEAN).mean() > 0.95


def test_degenerate_component_triggers_fallback():
    # Two tight clusters and a single far outlier: a 3-component fit spends a component on one sample.
    rng = np.random.default_rng(9)
    loss = np.concatenate([rng.normal(0.1, 0.01, 100), rng.normal(2.0, 0.01, 100), [50.0]])
    unc = np.concatenate([rng.normal(0.1, 0.01, 100), rng.normal(0.1, 0.01, 100), [1.0]])
    sep = fit_quality_separation(loss, unc, components=3)
    assert sep.fallback and "fell back" in sep.note
    post = sep.posteriors(loss, unc)
    assert np.isfinite(post).all() and post.shape == (201, 3)


def test_non_finite_input_is_a_training_error():
    with pytest.raises(TrainingError):
        fit_quality_separation(np.array([0.1, np.nan, 0.3]), np.zeros(3))


def test_quality_separation_needs_uncertainty_to_score():
    loss, unc, _ = planted(seed=10)
    sep = fit_quality_separation(loss, unc)
    with pytest.raises(ValueError):
        sep.posteriors(loss)


# ------------------------------------------------------------------------------------------------ DivideMix


def test_loss_separation_matches_sklearn_two_component_fit():
    loss, _, truth = planted(seed=11)
    sep = fit_loss_separation(loss, seed=0)
    assert not sep.fallback and sep.n_components == 2 and not sep.uses_uncertainty
    x = (loss - loss.min()) / (loss.max() - loss.min())
    gm = GaussianMixture(2, reg_covar=5e-4, max_iter=10, tol=1e-2, random_state=0).fit(x[:, None])
    expected = gm.predict_proba(x[:, None])[:, int(np.argmin(gm.means_[:, 0]))]
    post = sep.posteriors(loss)
    np.testing.assert_allclose(post[:, CLEAN], expected, atol=1e-10)
    np.testing.assert_allclose(post[:, MIS_H], 1.0 - expected, atol=1e-10)
    np.testing.assert_array_equal(post[:, MIS_L], 0.0)
    assert (hard_groups(post)[truth == CLEAN] == CLEAN).mean() > 0.95


def test_loss_separation_records_uncertainty_range_for_reporting():
    loss, unc, _ = planted(seed=12)
    sep = fit_loss_separation(loss, uncertainty=unc)
    norm = sep.normalise(loss, unc)
    assert norm[:, 1].min() == 0.0 and norm[:, 1].max() == 1.0
    means = sep.group_means()
    assert np.isnan(means[:, 1]).all() and np.isnan(means[MIS_L]).all()


# ---------------------------------------------------------------------------------------------- hard groups


def test_hard_groups_threshold_rule():
    post = np.array(
        [
            [0.90, 0.05, 0.05],  # clean
            [0.50, 0.30, 0.20],  # argmax clean but not > 0.5 → larger of the two: Mis-H
            [0.45, 0.20, 0.35],  # argmax clean but not > 0.5 → Mis-L
            [0.10, 0.20, 0.70],  # Mis-L
            [0.40, 0.60, 0.00],  # Mis-H
        ]
    )
    groups = hard_groups(post)
    assert groups.dtype == np.int8
    np.testing.assert_array_equal(groups, [CLEAN, MIS_H, MIS_L, MIS_L, MIS_H])
    np.testing.assert_array_equal(hard_groups(post, p_threshold=0.4)[:3], [CLEAN, CLEAN, CLEAN])


# ----------------------------------------------------------------------------------------------------- AUCs


def test_separation_aucs_known_values():
    post = np.array([[0.9, 0.1, 0.0], [0.8, 0.0, 0.2], [0.3, 0.6, 0.1], [0.1, 0.1, 0.8]])
    is_clean = np.array([True, False, True, False])
    is_hq = np.array([True, True, True, False])
    aucs = separation_aucs(post, is_clean=is_clean, is_high_quality=is_hq)
    # p_clean ranks: clean {0.9, 0.3} vs noisy {0.8, 0.1}: pairs won 0.9>0.8, 0.9>0.1, 0.3>0.1 → 3/4.
    assert aucs["auc_clean"] == pytest.approx(0.75)
    # p_clean + p_mis_h = (1.0, 0.8, 0.9, 0.2): the single LQ sample is lowest → 1.
    assert aucs["auc_hq"] == pytest.approx(1.0)


def test_separation_aucs_nan_without_usable_truth():
    post = np.tile([0.5, 0.3, 0.2], (4, 1))
    aucs = separation_aucs(post, is_clean=None, is_high_quality=np.ones(4, dtype=bool))
    assert math.isnan(aucs["auc_clean"]) and math.isnan(aucs["auc_hq"])
