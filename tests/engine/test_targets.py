"""Tests for qmix_cli.engine.targets: sharpening, the three target builders, mixup and λ sampling."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from qmix_cli.engine.targets import co_guess, co_refine, mixup, pseudo_label, sample_lambda, sharpen


def test_sharpen_hand_value():
    out = sharpen(torch.tensor([[0.6, 0.4]]), 0.5)
    # 0.36 / (0.36 + 0.16) = 0.6923...
    torch.testing.assert_close(out, torch.tensor([[0.36 / 0.52, 0.16 / 0.52]]))


def test_sharpen_identity_at_t1_and_keeps_zeros():
    p = torch.tensor([[0.2, 0.3, 0.5], [1.0, 0.0, 0.0]])
    torch.testing.assert_close(sharpen(p, 1.0), p)
    assert sharpen(p, 0.5)[1, 1:].abs().max() < 1e-30


def test_sharpen_does_not_underflow_with_many_classes_and_small_t():
    p = torch.full((2, 1000), 1e-3)
    p[0, 0] += 1e-4
    out = sharpen(p / p.sum(dim=1, keepdim=True), 0.05)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.sum(dim=1), torch.ones(2))
    assert out[0, 0] > out[0, 1]


def test_sharpen_rejects_non_positive_temperature():
    with pytest.raises(ValueError):
        sharpen(torch.tensor([[0.5, 0.5]]), 0.0)


def test_co_refine_hand_value_and_extremes():
    y = torch.tensor([[1.0, 0.0]])
    views = torch.tensor([[[0.2, 0.8]], [[0.4, 0.6]]])  # (V=2, B=1, K=2): mean (0.3, 0.7)
    # w = 0.5 → (0.65, 0.35); T = 0.5 → (0.4225, 0.1225) / 0.545
    out = co_refine(y, views, torch.tensor([0.5]), temperature=0.5)
    torch.testing.assert_close(out, torch.tensor([[0.4225 / 0.545, 0.1225 / 0.545]]))
    # w = 1 → the sharpened one-hot, i.e. the one-hot itself.
    torch.testing.assert_close(co_refine(y, views, torch.ones(1), temperature=0.5), y)
    # w = 0 → the sharpened mean prediction.
    torch.testing.assert_close(
        co_refine(y, views, torch.zeros(1), temperature=0.5), sharpen(torch.tensor([[0.3, 0.7]]), 0.5)
    )


def test_co_guess_and_pseudo_label_average_views_then_sharpen():
    views = torch.tensor(
        [
            [[0.9, 0.1], [0.5, 0.5]],
            [[0.7, 0.3], [0.1, 0.9]],
            [[0.8, 0.2], [0.3, 0.7]],
            [[0.6, 0.4], [0.3, 0.7]],
        ]
    )  # (V=4, B=2, K=2); means (0.75, 0.25), (0.3, 0.7)
    expected = torch.tensor([[0.9, 0.1], [0.09 / 0.58, 0.49 / 0.58]])
    torch.testing.assert_close(co_guess(views, temperature=0.5), expected)
    torch.testing.assert_close(pseudo_label(views[:2], temperature=1.0), torch.tensor([[0.8, 0.2], [0.3, 0.7]]))
    with pytest.raises(ValueError):
        co_guess(views[0], temperature=0.5)


def test_mixup_with_lam_one_is_identity():
    x, t, w = torch.randn(4, 3, 2, 2), torch.eye(4)[:, :3], torch.tensor([1.0, 0.5, 0.0, 0.2])
    perm = torch.tensor([3, 2, 1, 0])
    mx, mt, mw = mixup(x, t, w, lam=1.0, perm=perm)
    torch.testing.assert_close(mx, x)
    torch.testing.assert_close(mt, t)
    torch.testing.assert_close(mw, w)


def test_mixup_hand_value_mixes_weights_with_the_same_lambda():
    x = torch.tensor([[0.0], [10.0]])
    t = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    w = torch.tensor([1.0, 0.0])
    mx, mt, mw = mixup(x, t, w, lam=0.75, perm=torch.tensor([1, 0]))
    torch.testing.assert_close(mx, torch.tensor([[2.5], [7.5]]))
    torch.testing.assert_close(mt, torch.tensor([[0.75, 0.25], [0.25, 0.75]]))
    torch.testing.assert_close(mw, torch.tensor([0.75, 0.25]))
    assert mixup(x, t, None, lam=0.75, perm=torch.tensor([1, 0]))[2] is None


def test_sample_lambda_range_and_reproducibility():
    draws = [sample_lambda(4.0, np.random.default_rng(s)) for s in range(50)]
    assert all(0.5 <= d <= 1.0 for d in draws)
    assert sample_lambda(4.0, np.random.default_rng(7)) == sample_lambda(4.0, np.random.default_rng(7))
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert sample_lambda(4.0, g1) == sample_lambda(4.0, g2)
    assert sample_lambda(0.0, np.random.default_rng(0)) == 1.0


@pytest.mark.parametrize("alpha", [0.75, 4.0])
def test_sample_lambda_is_a_beta_draw_folded_to_its_larger_side(alpha):
    # The very draw of Beta(α, α) from the caller's generator, folded: max(b, 1 - b).
    for seed in range(20):
        b = np.random.default_rng(seed).beta(alpha, alpha)
        assert sample_lambda(alpha, np.random.default_rng(seed)) == max(b, 1 - b)


@pytest.mark.parametrize("alpha", [0.5, 4.0])
@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_sample_lambda_follows_the_folded_beta_distribution(alpha, kind):
    from scipy import stats

    gen = np.random.default_rng(11) if kind == "numpy" else torch.Generator().manual_seed(11)
    draws = np.array([sample_lambda(alpha, gen) for _ in range(3000)])
    # P(max(b, 1 - b) <= x) = F(x) - F(1 - x) = 2 F(x) - 1 for a symmetric Beta; a KS test against it.
    assert stats.kstest(draws, lambda x: 2 * stats.beta.cdf(x, alpha, alpha) - 1).pvalue > 0.01
    # And its mean (a small α pushes λ towards 1, a large one towards 0.5), within 4 standard errors.
    mean = stats.beta.expect(lambda b: max(b, 1 - b), args=(alpha, alpha))
    std = np.sqrt(stats.beta.expect(lambda b: max(b, 1 - b) ** 2, args=(alpha, alpha)) - mean**2)
    assert draws.mean() == pytest.approx(mean, abs=4 * std / np.sqrt(len(draws)))
