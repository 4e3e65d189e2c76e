"""From softmax outputs to the two axes of the separation, and the fitted separations themselves.

Training and audit both go through here, so a report scores samples exactly as training separated them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from qmix_cli.engine.separation import (
    QualitySeparation,
    collision_uncertainty,
    entropy,
    fit_loss_separation,
    fit_quality_separation,
    per_sample_loss,
)


@dataclass(frozen=True)
class Scores:
    """Per-net scores: ``probs`` (M, N, K); ``loss`` and ``uncertainty`` (M, N), raw (not normalised)."""

    probs: np.ndarray
    loss: np.ndarray
    uncertainty: np.ndarray


def compute_scores(probs: np.ndarray, labels: np.ndarray, *, uncertainty: str = "entropy") -> Scores:
    """Loss against the given labels and uncertainty of each net's softmax ``probs`` (M, N, K)."""
    loss = np.stack([per_sample_loss(p, labels) for p in probs])
    if uncertainty == "collision":
        unc = np.stack([collision_uncertainty(p, labels) for p in probs])
    else:
        unc = np.stack([entropy(p) for p in probs])
    return Scores(probs=probs, loss=loss, uncertainty=unc)


def fit_separation(
    loss: np.ndarray,
    uncertainty: np.ndarray,
    *,
    kind: str,
    components: int = 10,
    reg_covar: float = 5e-4,
    max_iter: int = 20,
    tol: float = 1e-2,
    seed: int = 0,
    tied_axes: bool = False,
) -> QualitySeparation:
    """``kind="quality"``: the QMix 2-D GMM; ``kind="loss"``: the DivideMix 1-D GMM on loss alone. ``tied_axes``:
    the uncertainty is the entropy of a two-class output, whose mixture is named along one curve, by loss
    (`fit_quality_separation`)."""
    if kind == "loss":
        return fit_loss_separation(
            loss, uncertainty=uncertainty, reg_covar=reg_covar, max_iter=max_iter, tol=tol, seed=seed
        )
    return fit_quality_separation(
        loss,
        uncertainty,
        components=components,
        reg_covar=reg_covar,
        max_iter=max_iter,
        tol=tol,
        seed=seed,
        tied_axes=tied_axes,
    )


def separation_from_dict(data: dict[str, Any]) -> QualitySeparation:
    # The 1-D DivideMix fit is stored in the same class (with a zero Mis-L column), so one reader serves both.
    return QualitySeparation.from_dict(data)


def probe_output(heads: Sequence[np.ndarray], vote: np.ndarray | None = None) -> np.ndarray:
    """One net's probe output (N, K): the mean of its probes' softmax outputs (the final net's probe and, where the
    run kept the snapshot, its warm-up snapshot's: `TrainConfig.audit_warmup`, docs/decisions.md, "Fifteenth
    round"), averaged with the net's neighbour vote where it has one (`qmix_cli.engine.neighbours`).

    Training scores the training images with this, the audit every image it reads, so both apply one rule.
    """
    mean = heads[0] if len(heads) == 1 else np.mean(heads, axis=0)
    return mean if vote is None else (mean + vote) / 2


def ensemble_probs(probs: np.ndarray) -> np.ndarray:
    """The nets' joint prediction (METHOD.md: the softmax of the sum of their logits), from their softmax outputs
    ``probs`` (M, N, K); returns (N, K), rows summing to 1."""
    logits = np.log(np.clip(probs, 1e-12, 1.0)).sum(axis=0)
    logits -= logits.max(axis=1, keepdims=True)
    e = np.exp(logits)
    return e / e.sum(axis=1, keepdims=True)


def mean_posteriors(separations, scores: Scores) -> np.ndarray:
    """Posteriors (N, 3) averaged over the nets, each net scored by its own separation."""
    return np.mean([s.posteriors(scores.loss[k], scores.uncertainty[k]) for k, s in enumerate(separations)], axis=0)
