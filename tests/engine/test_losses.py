"""Tests for qmix_cli.engine.losses against hand-computed values on tiny tensors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from qmix_cli.engine.losses import (
    class_prior,
    linear_rampup,
    mislq_weights,
    prior_regulariser,
    soft_cross_entropy,
    supervised_contrastive,
    uniform_prior,
    unlabelled_mse,
)


def test_soft_cross_entropy_equals_cross_entropy_for_one_hot():
    torch.manual_seed(0)
    logits, labels = torch.randn(6, 4), torch.tensor([0, 1, 2, 3, 0, 1])
    got = soft_cross_entropy(logits, F.one_hot(labels, 4).float())
    torch.testing.assert_close(got, F.cross_entropy(logits, labels))


def test_soft_cross_entropy_weights_zero_out_samples_and_divide_by_batch():
    logits = torch.tensor([[0.0, 0.0], [2.0, 0.0]])
    targets = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    per = torch.tensor([math.log(2), math.log(1 + math.exp(2))])
    got = soft_cross_entropy(logits, targets, torch.tensor([0.0, 1.0]))
    torch.testing.assert_close(got, per[1] / 2)
    got = soft_cross_entropy(logits, targets, torch.tensor([0.5, 0.0]))
    torch.testing.assert_close(got, per[0] * 0.5 / 2)


def test_empty_batches_give_zero_with_a_graph():
    logits = torch.zeros(0, 3, requires_grad=True)
    for loss in (soft_cross_entropy(logits, torch.zeros(0, 3)), unlabelled_mse(logits, torch.zeros(0, 3))):
        assert loss.item() == 0.0
        loss.backward()


def test_mislq_weights():
    groups = torch.tensor([0, 2, 2, 1])
    p_mis_l = torch.tensor([0.9, 0.2, 1.0, 0.5])
    torch.testing.assert_close(mislq_weights(groups, p_mis_l), torch.tensor([1.0, 0.4, 0.0, 0.0]))
    torch.testing.assert_close(mislq_weights(groups, p_mis_l, mislq_weight=1.0), torch.tensor([1.0, 0.8, 0.0, 0.0]))


def test_unlabelled_mse_hand_value():
    logits = torch.tensor([[0.0, 0.0]])  # softmax (0.5, 0.5)
    targets = torch.tensor([[1.0, 0.0]])
    torch.testing.assert_close(unlabelled_mse(logits, targets), torch.tensor(0.25))


def test_linear_rampup():
    assert linear_rampup(0, lambda_u=25) == 0.0
    assert linear_rampup(4, lambda_u=25) == pytest.approx(6.25)
    assert linear_rampup(100, lambda_u=25) == 25.0
    assert linear_rampup(-3, lambda_u=25) == 0.0
    assert linear_rampup(2, lambda_u=10, length=0) == 10.0


def test_prior_regulariser_hand_value_and_zero_at_prior():
    # softmax rows (0.5, 0.5) and (1/(1+e^2)·e^2, ...) → mean p̄; KL(uniform ‖ p̄).
    logits = torch.tensor([[0.0, 0.0], [2.0, 0.0]])
    p1 = math.exp(2) / (1 + math.exp(2))
    mean = [(0.5 + p1) / 2, (0.5 + 1 - p1) / 2]
    expected = sum(0.5 * math.log(0.5 / m) for m in mean)
    got = prior_regulariser(logits, uniform_prior(2))
    assert got.item() == pytest.approx(expected, rel=1e-6)
    assert prior_regulariser(torch.zeros(3, 4), uniform_prior(4)).item() == pytest.approx(0.0, abs=1e-7)
    # Zero prior mass on a class contributes nothing.
    prior = torch.tensor([1.0, 0.0])
    assert prior_regulariser(logits, prior).item() == pytest.approx(-math.log(mean[0]), rel=1e-6)


def test_class_prior():
    torch.testing.assert_close(class_prior(torch.tensor([0, 0, 2, 2, 2, 2]), 3), torch.tensor([1 / 3, 0.0, 2 / 3]))


# ---------------------------------------------------------------------------------------------- contrastive


def two_views(view1: torch.Tensor, view2: torch.Tensor) -> torch.Tensor:
    return F.normalize(torch.cat([view1, view2]), dim=1)


def test_supervised_contrastive_two_anchor_hand_values():
    e0, e1 = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    feats = two_views(torch.cat([e0, e1]), torch.cat([e0, e1]))  # rows: s0, s1, s0', s1'
    anchors, none = torch.ones(2, dtype=torch.bool), torch.zeros(2, dtype=torch.bool)
    # Each row's similarities to the other three views are {1 (own other view), 0, 0}: lse = log(2 + e).
    lse = math.log(2 + math.e)
    # Same label: all three others are positives → lse − mean(1, 0, 0).
    same = supervised_contrastive(feats, torch.tensor([0, 0]), anchors, none, temperature=1.0)
    assert same.item() == pytest.approx(lse - 1 / 3, rel=1e-6)
    # Different labels: only the own other view is positive → lse − 1.
    diff = supervised_contrastive(feats, torch.tensor([0, 1]), anchors, none, temperature=1.0)
    assert diff.item() == pytest.approx(lse - 1, rel=1e-6)


def test_only_anchors_are_rows_non_anchors_only_negatives():
    # s0 anchor, s1 a same-label non-anchor: row s0's only positive is s0'; s1 is only in the denominator.
    e0, e1 = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    feats = two_views(torch.cat([e0, e1]), torch.cat([e0, e1]))
    got = supervised_contrastive(
        feats,
        torch.tensor([0, 0]),
        torch.tensor([True, False]),
        torch.tensor([False, False]),
        temperature=1.0,
    )
    assert got.item() == pytest.approx(math.log(2 + math.e) - 1, rel=1e-6)


def test_aligned_same_class_anchors_give_lower_loss_than_opposed():
    a = torch.tensor([[1.0, 0.0], [0.98, 0.2]])
    opposed = torch.tensor([[1.0, 0.0], [-0.98, -0.2]])
    labels, anchors, none = (
        torch.tensor([0, 0]),
        torch.ones(2, dtype=torch.bool),
        torch.zeros(2, dtype=torch.bool),
    )
    # Add two unrelated non-anchors so the denominators are not trivial.
    others = torch.tensor([[0.0, 1.0], [0.0, -1.0]])
    lbl = torch.cat([labels, torch.tensor([1, 1])])
    anc = torch.cat([anchors, none])
    neg = torch.zeros(4, dtype=torch.bool)
    aligned_loss = supervised_contrastive(two_views(torch.cat([a, others]), torch.cat([a, others])), lbl, anc, neg)
    opposed_loss = supervised_contrastive(
        two_views(torch.cat([opposed, others]), torch.cat([opposed, others])), lbl, anc, neg
    )
    assert aligned_loss < opposed_loss


def test_mis_l_samples_close_to_an_anchor_raise_the_loss():
    anchor = torch.tensor([[1.0, 0.0]])
    labels = torch.tensor([0, 0])  # the Mis-L sample even shares the anchor's label: still never a positive
    is_anchor, is_mis_l = torch.tensor([True, False]), torch.tensor([False, True])

    def loss_with(mis_l_point: torch.Tensor) -> torch.Tensor:
        v = torch.cat([anchor, mis_l_point])
        return supervised_contrastive(two_views(v, v), labels, is_anchor, is_mis_l)

    near, far = loss_with(torch.tensor([[0.99, 0.1]])), loss_with(torch.tensor([[-1.0, 0.0]]))
    assert near > far
    # Flagged both anchor and Mis-L: treated as Mis-L only, same as above.
    v = torch.cat([anchor, torch.tensor([[0.99, 0.1]])])
    both = supervised_contrastive(two_views(v, v), labels, torch.tensor([True, True]), is_mis_l)
    torch.testing.assert_close(both, near)


def test_supervised_contrastive_gradients_flow_and_are_finite_at_small_temperature():
    torch.manual_seed(0)
    raw = torch.randn(16, 8, requires_grad=True)
    feats = F.normalize(raw, dim=1)
    labels = torch.randint(0, 3, (8,))
    is_anchor = torch.tensor([True, True, True, False, True, False, True, False])
    is_mis_l = torch.tensor([False, False, False, True, False, True, False, False])
    loss = supervised_contrastive(feats, labels, is_anchor, is_mis_l, temperature=0.01)
    loss.backward()
    assert torch.isfinite(loss) and loss > 0
    assert raw.grad is not None and torch.isfinite(raw.grad).all() and raw.grad.abs().sum() > 0


def test_supervised_contrastive_without_anchors_is_zero_with_a_graph():
    raw = torch.randn(6, 4, requires_grad=True)
    loss = supervised_contrastive(
        F.normalize(raw, dim=1), torch.zeros(3, dtype=torch.long), torch.zeros(3, dtype=torch.bool),
        torch.tensor([True, False, True]),
    )  # fmt: skip
    assert loss.item() == 0.0
    loss.backward()
    torch.testing.assert_close(raw.grad, torch.zeros_like(raw))


def test_supervised_contrastive_of_an_empty_batch_is_zero_with_a_graph():
    # A semi-supervised batch with no labelled member hands the loss no rows.
    raw = torch.zeros(0, 4, requires_grad=True)
    none = torch.zeros(0, dtype=torch.bool)
    loss = supervised_contrastive(raw, torch.zeros(0, dtype=torch.long), none, none)
    assert loss.item() == 0.0
    loss.backward()


def test_supervised_contrastive_rejects_bad_shapes():
    with pytest.raises(ValueError):
        supervised_contrastive(torch.randn(5, 2), torch.zeros(2), torch.ones(2), torch.zeros(2))
