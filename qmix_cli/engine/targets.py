"""Training targets built from weak views (no gradient), and MixMatch-style mixup.

The trainer calls the target builders under ``torch.no_grad()`` (METHOD.md, "Quality-aware
semi-supervised training"): co-refinement for Correct samples, co-guessing for Mis-H, pseudo-labelling for
Mis-L. All functions are pure: they take tensors (and an explicit generator where randomness is needed) and
return new tensors.
"""

from __future__ import annotations

import numpy as np
import torch


def sharpen(probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """Temperature sharpening ``p^(1/T) / sum_k p_k^(1/T)`` of each row.

    Parameters
    ----------
    probs
        (..., K) float probabilities along the last dimension.
    temperature
        T > 0; T < 1 sharpens, T = 1 is the identity, T > 1 flattens.

    Returns
    -------
    torch.Tensor
        Same shape and dtype, rows summing to 1.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    # Computed as softmax(log p / T): identical in exact arithmetic, but p^(1/T) underflows to an all-zero
    # row for small T and many classes, and the softmax does not. Zeros stay (numerically) zero.
    tiny = torch.finfo(probs.dtype).tiny
    return torch.softmax(torch.log(probs.clamp_min(tiny)) / temperature, dim=-1)


def _check_views(probs_views: torch.Tensor) -> None:
    if probs_views.ndim != 3:
        raise ValueError(f"probs_views must be (V, B, K), got shape {tuple(probs_views.shape)}")


def co_refine(
    labels_onehot: torch.Tensor, probs_views: torch.Tensor, w_clean: torch.Tensor, *, temperature: float
) -> torch.Tensor:
    """Co-refined targets for Correct samples: ``sharpen(w·y + (1−w)·mean_v p_v)``.

    Parameters
    ----------
    labels_onehot
        (B, K) float one-hot given labels y.
    probs_views
        (V, B, K) float softmax of the trained net on V weak views.
    w_clean
        (B,) float in [0, 1], the *peer* net's p_clean of each sample.
    temperature
        Sharpening temperature T > 0.

    Returns
    -------
    torch.Tensor
        (B, K) float targets, rows summing to 1.
    """
    _check_views(probs_views)
    w = w_clean.to(probs_views.dtype).unsqueeze(1)
    mixed = w * labels_onehot.to(probs_views.dtype) + (1.0 - w) * probs_views.mean(dim=0)
    return sharpen(mixed, temperature)


def co_guess(probs_views: torch.Tensor, *, temperature: float) -> torch.Tensor:
    """Co-guessed targets for Mis-H samples: mean over views of both nets, sharpened.

    Parameters
    ----------
    probs_views
        (V, B, K) float softmax; stack both nets' outputs on both weak views (V = 4 in QMix).
    temperature
        Sharpening temperature T > 0.

    Returns
    -------
    torch.Tensor
        (B, K) float targets, rows summing to 1.
    """
    _check_views(probs_views)
    return sharpen(probs_views.mean(dim=0), temperature)


def pseudo_label(probs_views: torch.Tensor, *, temperature: float) -> torch.Tensor:
    """Pseudo-labels for Mis-L samples: mean over the trained net's own weak views, sharpened.

    Same arithmetic as `co_guess`; the difference is which views the caller stacks (only the net's own, so
    its given label and the peer play no part).

    Parameters
    ----------
    probs_views
        (V, B, K) float softmax of the trained net on its V weak views (V = 2 in QMix).
    temperature
        Sharpening temperature T > 0.

    Returns
    -------
    torch.Tensor
        (B, K) float targets, rows summing to 1.
    """
    return co_guess(probs_views, temperature=temperature)


def sample_lambda(alpha: float, generator: np.random.Generator | torch.Generator) -> float:
    """Draw the mixup coefficient ``max(λ, 1−λ)`` with ``λ ~ Beta(α, α)``.

    Parameters
    ----------
    alpha
        Beta concentration; ``alpha <= 0`` turns mixup off (returns 1.0).
    generator
        Source of randomness, owned by the caller so that runs are reproducible: a NumPy ``Generator``, or a
        ``torch.Generator`` (one integer is drawn from it to seed a NumPy generator, since torch's Beta
        sampler accepts no generator).

    Returns
    -------
    float
        In [0.5, 1].
    """
    if alpha <= 0:
        return 1.0
    if isinstance(generator, torch.Generator):
        seed = int(torch.randint(0, 2**62, (1,), generator=generator).item())
        generator = np.random.default_rng(seed)
    lam = float(generator.beta(alpha, alpha))
    return max(lam, 1.0 - lam)


def mixup(
    inputs: torch.Tensor,
    targets: torch.Tensor,
    weights: torch.Tensor | None,
    *,
    lam: float,
    perm: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """MixMatch-style mixup of a batch with a permutation of itself.

    Every sample is mixed as ``lam·a + (1−lam)·a[perm]``; with ``lam >= 0.5`` (see `sample_lambda`) each mixed
    sample stays closer to its own original, so it keeps its stream (labelled / unlabelled) meaning.

    Parameters
    ----------
    inputs
        (B, ...) float images (or features).
    targets
        (B, K) float soft targets.
    weights
        (B,) float per-sample loss weights, mixed with the same λ; or None.
    lam
        Mixing coefficient in [0, 1], normally already ``max(λ, 1−λ)``; 1 returns the inputs unchanged.
    perm
        (B,) long permutation of ``range(B)`` (e.g. ``torch.randperm(B, generator=g)``).

    Returns
    -------
    tuple
        Mixed inputs (B, ...), mixed targets (B, K), mixed weights (B,) or None.
    """
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam must be in [0, 1], got {lam}")
    if perm.shape != (inputs.shape[0],) or targets.shape[0] != inputs.shape[0]:
        raise ValueError("inputs, targets and perm must share the batch size")
    mixed_inputs = lam * inputs + (1.0 - lam) * inputs[perm]
    mixed_targets = lam * targets + (1.0 - lam) * targets[perm]
    mixed_weights = None if weights is None else lam * weights + (1.0 - lam) * weights[perm]
    return mixed_inputs, mixed_targets, mixed_weights
