"""Loss terms of QMix and DivideMix, each a small pure function of tensors.

Total QMix loss (METHOD.md): ``L = L_x + λ_u·L_u + L_reg + lambda_con·L_con`` with
`soft_cross_entropy` (weighted by `mislq_weights`), `unlabelled_mse` (ramped by `linear_rampup`),
`prior_regulariser` and `supervised_contrastive`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from qmix_cli.categories import CLEAN, MIS_L


def _zero(like: torch.Tensor) -> torch.Tensor:
    # A zero that is still connected to the graph, so `loss.backward()` works on an empty term.
    return like.sum() * 0.0


def soft_cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Weighted cross-entropy against soft targets.

    Parameters
    ----------
    logits
        (B, K) float raw scores.
    targets
        (B, K) float target distributions (rows summing to 1).
    weights
        (B,) float non-negative per-sample weights, or None for all ones.

    Returns
    -------
    torch.Tensor
        Scalar ``sum_i w_i · (−sum_k t_ik log softmax(logits)_ik) / B``. The weights are *not* renormalised:
        dividing by B rather than by sum(w) means a down-weighted sample lowers the loss instead of shifting
        weight onto the others, and all-ones weights give the plain mean. 0 (with a graph) when B == 0.
    """
    if logits.shape[0] == 0:
        return _zero(logits)
    per_sample = -(targets * F.log_softmax(logits, dim=1)).sum(dim=1)
    if weights is not None:
        per_sample = per_sample * weights.to(per_sample.dtype)
    return per_sample.mean()


def mislq_weights(groups: torch.Tensor, p_mis_l: torch.Tensor, *, mislq_weight: float = 0.5) -> torch.Tensor:
    """Per-sample weights of the labelled stream (METHOD.md, "Mis-L re-weighted").

    Parameters
    ----------
    groups
        (B,) int group index (0 clean, 1 Mis-H, 2 Mis-L).
    p_mis_l
        (B,) float in [0, 1], the separation's Mis-L posterior.
    mislq_weight
        ω scale for Mis-L samples.

    Returns
    -------
    torch.Tensor
        (B,) float (dtype of ``p_mis_l``): 1 for clean, ``mislq_weight·(1 − p_mis_l)`` for Mis-L, and 0 for
        Mis-H, whose given label is discarded (they belong to the unlabelled stream).
    """
    w = torch.zeros_like(p_mis_l)
    w = torch.where(groups == CLEAN, torch.ones_like(w), w)
    return torch.where(groups == MIS_L, mislq_weight * (1.0 - p_mis_l), w)


def unlabelled_mse(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean squared error between softmax(logits) and targets, averaged over all B·K entries (as DivideMix).

    Parameters
    ----------
    logits
        (B, K) float raw scores.
    targets
        (B, K) float target distributions.

    Returns
    -------
    torch.Tensor
        Scalar; 0 (with a graph) when B == 0.
    """
    if logits.shape[0] == 0:
        return _zero(logits)
    return torch.mean((torch.softmax(logits, dim=1) - targets) ** 2)


def linear_rampup(epoch_since_warmup: float, *, lambda_u: float, length: int = 16) -> float:
    """Weight of the unlabelled loss: ``lambda_u · clip(epoch_since_warmup / length, 0, 1)``.

    Parameters
    ----------
    epoch_since_warmup
        Epochs (fractional allowed, e.g. epoch + batch / batches) elapsed since warm-up ended.
    lambda_u
        Final weight (25 by default in QMix / DivideMix).
    length
        Epochs to reach ``lambda_u``; ``length <= 0`` means no ramp.

    Returns
    -------
    float
        In [0, lambda_u].
    """
    if length <= 0:
        return float(lambda_u)
    return float(lambda_u) * min(max(epoch_since_warmup / length, 0.0), 1.0)


def uniform_prior(num_classes: int, *, device: torch.device | str | None = None) -> torch.Tensor:
    """(K,) float32 uniform class prior."""
    return torch.full((num_classes,), 1.0 / num_classes, device=device)


def class_prior(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(K,) float32 class frequencies of (N,) int given labels (option ``prior: class``), divided in float64 so
    that each is the float32 nearest the true share."""
    counts = torch.bincount(labels.long(), minlength=num_classes).double()
    return (counts / counts.sum().clamp_min(1.0)).float()


def prior_regulariser(logits: torch.Tensor, prior: torch.Tensor) -> torch.Tensor:
    """DivideMix's penalty: ``KL(prior ‖ mean_b softmax(logits_b)) = sum_k π_k log(π_k / p̄_k)``.

    Keeps the batch-mean prediction near the prior, so the net does not collapse onto a few classes.

    Parameters
    ----------
    logits
        (B, K) float raw scores, B >= 1.
    prior
        (K,) float class prior π (non-negative, summing to 1); zero entries contribute 0.

    Returns
    -------
    torch.Tensor
        Non-negative scalar.
    """
    mean_p = torch.softmax(logits, dim=1).mean(dim=0)
    prior = prior.to(mean_p)
    # xlogy makes 0·log 0 = 0; the clamp keeps log p̄ finite where the net predicts a class with prob 0.
    log_mean = torch.log(mean_p.clamp_min(torch.finfo(mean_p.dtype).tiny))
    return (torch.xlogy(prior, prior) - prior * log_mean).sum()


def supervised_contrastive(
    features: torch.Tensor,
    labels: torch.Tensor,
    is_anchor: torch.Tensor,
    is_negative_only: torch.Tensor,
    *,
    temperature: float = 0.1,
) -> torch.Tensor:
    """Supervised contrastive loss with Correct anchors and Mis-L negatives (METHOD.md, ``L_con``).

    Each sample has two views; row ``i`` and row ``i + B`` of ``features`` are the views of sample ``i``.
    Anchors are both views of every sample with ``is_anchor`` (and not ``is_negative_only``). For an anchor
    view, the positives are its other view and both views of every other anchor with the same label; the
    denominator runs over every other view in the batch, so Mis-L samples (``is_negative_only``) and any other
    non-anchor are negatives only. The loss of an anchor view is the negative mean log-probability of its
    positives; the result is the mean over anchor views.

    Parameters
    ----------
    features
        (2B, D) float projector outputs, ℓ2-normalised by the caller; views stacked [view 1; view 2].
    labels
        (B,) int (refined) class of each sample; only compared between anchors.
    is_anchor
        (B,) bool, Correct samples.
    is_negative_only
        (B,) bool, Mis-L samples; never anchors or positives, even if also flagged as anchors.
    temperature
        τ > 0 dividing the cosine similarities.

    Returns
    -------
    torch.Tensor
        Non-negative scalar; 0 (with a graph) when there are no anchors.
    """
    n = features.shape[0]
    b = n // 2
    if n != 2 * b or labels.shape != (b,) or is_anchor.shape != (b,) or is_negative_only.shape != (b,):
        raise ValueError("features must be (2B, D) and labels / is_anchor / is_negative_only (B,)")
    if b == 0:  # a shape, known on the host: no rows, no loss
        return _zero(features)
    anchor = (is_anchor.bool() & ~is_negative_only.bool()).repeat(2)
    label2 = labels.repeat(2)
    sample2 = torch.arange(b, device=features.device).repeat(2)
    self_mask = torch.eye(n, dtype=torch.bool, device=features.device)

    logits = features @ features.T / temperature
    # Subtracting the row maximum (detached: it cancels exactly) keeps exp() from overflowing at small τ.
    logits = logits - logits.masked_fill(self_mask, float("-inf")).max(dim=1, keepdim=True).values.detach()
    log_prob = logits - torch.logsumexp(logits.masked_fill(self_mask, float("-inf")), dim=1, keepdim=True)

    same_sample = sample2[:, None] == sample2[None, :]
    same_class_anchor = anchor[None, :] & (label2[:, None] == label2[None, :])
    positives = (same_sample | same_class_anchor) & ~self_mask
    # Every row, anchor or not, has its other view as a positive, so each row's mean is finite; the anchors' rows
    # are then averaged by masking, not selected. Selecting rows by a boolean mask (or testing ``anchor.any()``)
    # reads the mask on the host, which on a GPU waits for everything queued: three waits per training step.
    per_row = -torch.where(positives, log_prob, torch.zeros_like(log_prob)).sum(dim=1) / positives.sum(dim=1)
    weight = anchor.to(per_row.dtype)
    # With no anchor this is 0 and still connected to the graph (0 · finite rows).
    return (per_row * weight).sum() / weight.sum().clamp_min(1.0)
