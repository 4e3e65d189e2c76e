"""Sample separation: sort training samples into Correct / Mis-H / Mis-L from their loss and uncertainty.

QMix fits a Gaussian mixture on the min–max normalised (loss, uncertainty) points of the whole training
set and names its components by where their means lie (METHOD.md, "Sample separation"); DivideMix fits a
2-component mixture on the loss alone. Both are served by one serialisable class, `QualitySeparation`, so
the trainer, the checkpoints and the audit handle every method the same way: posteriors always come back as
an (N, 3) array in the project's group order (`qmix_cli.categories.CATEGORIES`), with the columns a
method cannot produce set to 0.

Everything here is pure NumPy / scikit-learn: no torch, no I/O, no global state.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.special import entr
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import roc_auc_score
from sklearn.mixture import GaussianMixture

from qmix_cli.categories import CLEAN, MIS_H, MIS_L
from qmix_cli.errors import TrainingError

# A component this light, or holding fewer hard-assigned samples than this, means the 3-component fit has not
# found three groups: one of them is an artefact (METHOD.md guard rails).
MIN_COMPONENT_WEIGHT = 1e-3
MIN_COMPONENT_SAMPLES = 2
# Fewer samples than this many per component and a full-covariance 2-D mixture is not worth fitting.
SAMPLES_PER_COMPONENT = 10


# ----------------------------------------------------------------------------------------------------------
# Per-sample scores
# ----------------------------------------------------------------------------------------------------------


def _check_probs_labels(probs: np.ndarray, labels: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2:
        raise ValueError(f"probs must be (N, K), got shape {p.shape}")
    if labels is None:
        return p, np.empty(0, dtype=np.int64)
    y = np.asarray(labels)
    if y.shape != (p.shape[0],):
        raise ValueError(f"labels must be ({p.shape[0]},), got shape {y.shape}")
    y = y.astype(np.int64, copy=False)
    if y.size and (y.min() < 0 or y.max() >= p.shape[1]):
        raise ValueError(f"labels must lie in [0, {p.shape[1]}), got [{y.min()}, {y.max()}]")
    return p, y


def entropy(probs: np.ndarray) -> np.ndarray:
    """Shannon entropy of each row of a probability matrix.

    Parameters
    ----------
    probs
        (N, K) float array; rows are softmax outputs (non-negative, summing to 1).

    Returns
    -------
    np.ndarray
        (N,) float64 in nats, in [0, ln K]. Zero probabilities contribute 0 (the limit of p log p).
    """
    p, _ = _check_probs_labels(probs)
    # entr(p) = -p log p with entr(0) = 0, so no clipping is needed and no NaN can appear.
    return entr(np.clip(p, 0.0, 1.0)).sum(axis=1)


def collision_uncertainty(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Collision (Rényi-2) entropy of the mean of the one-hot given label and the prediction.

    With ``q = (onehot(label) + probs) / 2`` the score is ``-log(sum_k q_k^2)``: about 0 for a confident
    prediction that agrees with the label, about ln 2 for a confident prediction of another class, about ln 4
    for a diffuse prediction over many classes (METHOD.md, option ``uncertainty: collision``).

    Parameters
    ----------
    probs
        (N, K) float softmax outputs.
    labels
        (N,) int given labels in [0, K).

    Returns
    -------
    np.ndarray
        (N,) float64 in nats, in [0, ln 4).
    """
    p, y = _check_probs_labels(probs, labels)
    q = 0.5 * p
    q[np.arange(len(y)), y] += 0.5
    # sum q^2 >= 1/4 because q has a coordinate >= 1/2, so the log is always finite.
    return -np.log(np.square(q).sum(axis=1))


def per_sample_loss(probs: np.ndarray, labels: np.ndarray, *, eps: float = 1e-12) -> np.ndarray:
    """Cross-entropy of each prediction against its given label.

    Parameters
    ----------
    probs
        (N, K) float softmax outputs.
    labels
        (N,) int given labels in [0, K).
    eps
        Lower clip of the label's probability; keeps the loss finite (at most ``-log(eps)``, 27.6 nats by
        default) when float32 softmax underflows to 0.

    Returns
    -------
    np.ndarray
        (N,) float64, ``-log(max(p[label], eps))``, in [0, -log(eps)].
    """
    p, y = _check_probs_labels(probs, labels)
    return -np.log(np.clip(p[np.arange(len(y)), y], eps, 1.0))


# ----------------------------------------------------------------------------------------------------------
# Normalisation
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Normaliser:
    """Column-wise min–max scaling to [0, 1], fitted once on the training set and reused on new samples.

    Attributes
    ----------
    lo, hi
        (D,) float64 column minimum and maximum seen at fit time. A NaN entry marks a column that was unknown
        at fit time (e.g. uncertainty for a loss-only separation); that column normalises to NaN.
    """

    lo: np.ndarray
    hi: np.ndarray

    @classmethod
    def fit(cls, x: np.ndarray) -> Normaliser:
        """Record the column ranges of ``x`` ((N, D) float, N >= 1)."""
        arr = np.asarray(x, dtype=np.float64)
        if arr.ndim != 2 or arr.shape[0] == 0:
            raise ValueError(f"x must be (N, D) with N >= 1, got shape {arr.shape}")
        # np.min propagates NaN, which is what marks an unknown column.
        return cls(lo=arr.min(axis=0), hi=arr.max(axis=0))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Scale ``x`` ((N, D) float) to (N, D) float64 in [0, 1].

        Points outside the fitted range are clipped to 0 or 1, so a new sample worse than any training sample
        scores like the worst training sample. A constant column (``hi == lo``) is shifted but not divided:
        its training values map to 0.
        """
        arr = np.asarray(x, dtype=np.float64)
        if arr.ndim != 2 or arr.shape[1] != self.lo.shape[0]:
            raise ValueError(f"x must be (N, {self.lo.shape[0]}), got shape {arr.shape}")
        span = self.hi - self.lo
        scale = np.where(span > 0, span, 1.0)
        return np.clip((arr - self.lo) / scale, 0.0, 1.0)

    def to_dict(self) -> dict[str, Any]:
        """Plain, strictly JSON-able form (NaN becomes None)."""
        return {"lo": _to_json(self.lo), "hi": _to_json(self.hi)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Normaliser:
        """Inverse of `to_dict`."""
        return cls(lo=_from_json(data["lo"]), hi=_from_json(data["hi"]))


def _to_json(arr: np.ndarray) -> Any:
    # float(x) of a float64 round-trips exactly through json, so restored models score bit-identically.
    a = np.asarray(arr, dtype=np.float64)
    if a.ndim == 0:
        return None if np.isnan(a) else float(a)
    return [_to_json(v) for v in a]


def _from_json(data: Any) -> np.ndarray:
    def nan_for_none(v: Any) -> Any:
        if isinstance(v, list):
            return [nan_for_none(u) for u in v]
        return np.nan if v is None else v

    return np.asarray(nan_for_none(data), dtype=np.float64)


# ----------------------------------------------------------------------------------------------------------
# Naming the components
# ----------------------------------------------------------------------------------------------------------


def _otsu_levels(values: np.ndarray, weights: np.ndarray, levels: int) -> np.ndarray:
    """Cut weighted 1-D values into ``levels`` runs at the cuts that maximise the between-class variance (Otsu).

    Only cuts between distinct values are tried, so equal values share a level and the result does not depend
    on the order the values come in. With fewer distinct values than ``levels``, each distinct value is a level of
    its own (so are the lowest ones, the rest sharing the top level, when no cut leaves every run some weight).

    Parameters
    ----------
    values
        (C,) float.
    weights
        (C,) float, non-negative.
    levels
        Number of runs wanted, >= 2.

    Returns
    -------
    np.ndarray
        (C,) int level of each value, 0 for the lowest run, up to ``levels - 1``.
    """
    order = np.argsort(values, kind="stable")
    v, w = values[order], weights[order]
    # Between-run variance = sum over runs of (weighted value sum)^2 / (weight sum), less a constant: prefix sums.
    w_sum, wv_sum = np.concatenate([[0.0], np.cumsum(w)]), np.concatenate([[0.0], np.cumsum(w * v)])
    boundaries = np.flatnonzero(v[1:] > v[:-1]) + 1  # cut before position c
    # Every set of levels - 1 increasing cuts at once, in lexicographic order so that the first best wins as a loop
    # over itertools.combinations would pick it (a loop cost 190 ms at 200 Gaussians and three levels). The grid holds
    # B^(levels - 1) index sets for B boundaries: levels is 2 or 3 here, so at most B^2.
    grids = np.meshgrid(*[np.arange(len(boundaries))] * (levels - 1), indexing="ij")
    picks = np.stack([g.ravel() for g in grids], axis=1)
    picks = picks[(np.diff(picks, axis=1) > 0).all(axis=1)]
    edges = np.column_stack([np.zeros(len(picks), np.int64), boundaries[picks], np.full(len(picks), len(v))])
    run_w, run_wv = np.diff(w_sum[edges], axis=1), np.diff(wv_sum[edges], axis=1)
    usable = (run_w > 0).all(axis=1)  # every run keeps some weight
    with np.errstate(divide="ignore", invalid="ignore"):
        score = np.where(usable, (run_wv**2 / run_w).sum(axis=1), -np.inf)
    best_cuts = boundaries[picks[np.argmax(score)]] if usable.any() else boundaries[: levels - 1]
    level = np.zeros(len(v), dtype=np.int64)
    for c in best_cuts:
        level[order[c:]] += 1
    return level


def axes_tied(*, num_classes: int, uncertainty: str) -> bool:
    """Whether the uncertainty is a function of the loss, so that both axes trace one curve: the entropy of a
    two-class output. The collision uncertainty is not (it is lower for a hesitant net than for one sure of the
    other class), nor is the entropy over three classes or more. Pass the result to `name_components`."""
    return num_classes == 2 and uncertainty == "entropy"


def name_components(means: np.ndarray, *, weights: np.ndarray | None = None, tied_axes: bool = False) -> np.ndarray:
    """Map each mixture component to a group index (0 clean, 1 Mis-H, 2 Mis-L).

    Rules (METHOD.md, "Name the components"):

    * 1-D (loss only) means: the smallest-loss component is clean, all others Mis-H (DivideMix).
    * 2-D with at most 3 components: the smallest-loss component is clean; of the others, the one with the
      larger mean uncertainty is Mis-L and the remaining one Mis-H (a single remaining one is Mis-H).
    * 2-D with more than 3 components (the default, 10): the components are split in two along
      their mean loss at the weighted Otsu cut (the cut that best separates the weight-averaged losses of the
      two sides); the low side is clean. The rest are split the same way along their mean uncertainty; the
      high side is Mis-L, the low side Mis-H. A lone non-clean component is Mis-H.
    * ``tied_axes`` (the uncertainty is the entropy of a two-class output, so both axes trace one curve, whose
      uncertainty peaks where the two classes are equally probable), with 3 components or more: the loss alone
      orders the images along that curve, so the components are cut in three along their mean loss (weighted Otsu
      with two cuts): the low run is clean, the middle one Mis-L (the net hesitates between the two classes), the
      high one Mis-H (it favours the other class). An uncertainty split would cut the far arm of the curve, where
      a wrong label's uncertainty falls again as its loss grows, into Mis-L; a two-way clean cut first leaves the
      hesitant components with the clean ones (docs/decisions.md, thirty-sixth round).

    The result depends only on the means and weights, never on the order sklearn returns the components in.

    Parameters
    ----------
    means
        (C, D) float component means in normalised units; column 0 is loss, column 1 (if D == 2) uncertainty.
    weights
        (C,) float mixture weights; only used when C > 3, or C == 3 with ``tied_axes`` (equal weights if omitted).

    Returns
    -------
    np.ndarray
        (C,) int8 group index of each component.
    """
    m = np.asarray(means, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] == 0 or m.shape[1] not in (1, 2):
        raise ValueError(f"means must be (C, 1) or (C, 2) with C >= 1, got shape {m.shape}")
    c = m.shape[0]
    groups = np.full(c, MIS_H, dtype=np.int8)
    w = np.full(c, 1.0 / c) if weights is None else np.asarray(weights, dtype=np.float64)
    if tied_axes and m.shape[1] == 2 and c >= 3:
        level = _otsu_levels(m[:, 0], w, 3)
        groups[:] = MIS_L
        groups[level == level.max()] = MIS_H  # with fewer than three distinct losses: clean and Mis-H only
        groups[level == 0] = CLEAN
        return groups
    if m.shape[1] == 1 or c <= 3:
        # Ties in loss go to the earliest component; they only occur for degenerate fits, which are refused.
        clean = int(np.argmin(m[:, 0]))
        groups[clean] = CLEAN
        rest = [k for k in range(c) if k != clean]
        if m.shape[1] == 2 and len(rest) == 2:
            groups[max(rest, key=lambda k: m[k, 1])] = MIS_L
        return groups
    is_clean = _otsu_levels(m[:, 0], w, 2) == 0
    groups[is_clean] = CLEAN
    rest = np.flatnonzero(~is_clean)
    if len(rest) >= 2:
        groups[rest[_otsu_levels(m[rest, 1], w[rest], 2) == 1]] = MIS_L
    return groups


# ----------------------------------------------------------------------------------------------------------
# The separation model
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class QualitySeparation:
    """A fitted separation: normaliser + Gaussian mixture + component names, enough to score new samples.

    Attributes
    ----------
    normaliser
        Two columns, (loss, uncertainty), fitted on the training set. The uncertainty column is NaN when the
        separation was fitted without uncertainty (`fit_loss_separation` without it).
    weights
        (C,) float64 mixture weights.
    means
        (C, D) float64 component means in normalised units; D = 2 for the (loss, uncertainty) mixture, D = 1
        for a loss-only one (DivideMix, or the fallback).
    covariances
        (C, D, D) float64 full covariances.
    precisions_cholesky
        (C, D, D) float64 Cholesky factors of the precisions, as sklearn stores them.
    component_groups
        (C,) int8 group index of each component (see `name_components`).
    fallback
        True when the requested fit was not used (too few samples, degenerate fit, no spread).
    note
        One human-readable line saying what was fitted and why; meant for logs.
    """

    normaliser: Normaliser
    weights: np.ndarray
    means: np.ndarray
    covariances: np.ndarray
    precisions_cholesky: np.ndarray
    component_groups: np.ndarray
    fallback: bool = False
    note: str = ""

    @property
    def n_components(self) -> int:
        """Number of mixture components C."""
        return int(self.weights.shape[0])

    @property
    def uses_uncertainty(self) -> bool:
        """Whether the mixture looks at the uncertainty axis (D == 2)."""
        return bool(self.means.shape[1] == 2)

    def normalise(self, loss: np.ndarray, uncertainty: np.ndarray | None = None) -> np.ndarray:
        """Raw scores → (N, 2) float64 normalised (loss, uncertainty) in [0, 1] with the training-set ranges.

        The uncertainty column is NaN when ``uncertainty`` is None or the normaliser never saw it.
        """
        loss_arr = _as_scores(loss, "loss")
        unc_arr = np.full_like(loss_arr, np.nan) if uncertainty is None else _as_scores(uncertainty, "uncertainty")
        if unc_arr.shape != loss_arr.shape:
            raise ValueError(f"loss and uncertainty lengths differ: {loss_arr.shape} vs {unc_arr.shape}")
        return self.normaliser(np.column_stack([loss_arr, unc_arr]))

    def posteriors(self, loss: np.ndarray, uncertainty: np.ndarray | None = None) -> np.ndarray:
        """Group posteriors of samples given their raw loss and uncertainty.

        Parameters
        ----------
        loss
            (N,) float raw per-sample cross-entropy (same definition as at fit time).
        uncertainty
            (N,) float raw uncertainty; required when `uses_uncertainty`, ignored otherwise.

        Returns
        -------
        np.ndarray
            (N, 3) float64 in group order (clean, Mis-H, Mis-L); rows sum to 1. A loss-only separation has a
            zero Mis-L column.
        """
        x = self.normalise(loss, uncertainty)
        if self.uses_uncertainty and np.isnan(x[:, 1]).any():
            raise ValueError("this separation uses uncertainty: pass it (finite) to posteriors()")
        if x.shape[0] == 0:
            return np.zeros((0, 3))
        resp = self._mixture().predict_proba(x[:, : self.means.shape[1]])
        # Sum component posteriors within each group: (N, C) @ (C, 3) one-hot of the component names.
        post = resp @ np.eye(3)[self.component_groups]
        return post / post.sum(axis=1, keepdims=True)

    def group_means(self) -> np.ndarray:
        """(3, 2) float64 weight-averaged component means per group, in normalised (loss, uncertainty).

        A group without components is a NaN row; the uncertainty column is NaN for a loss-only mixture.
        """
        out = np.full((3, 2), np.nan)
        d = self.means.shape[1]
        for g in range(3):
            members = self.component_groups == g
            w = self.weights[members]
            if w.sum() > 0:
                out[g, :d] = w @ self.means[members] / w.sum()
        return out

    def to_dict(self) -> dict[str, Any]:
        """Plain, strictly JSON-able form (lists, floats, ints, bools, str; NaN as None)."""
        return {
            "normaliser": self.normaliser.to_dict(),
            "weights": _to_json(self.weights),
            "means": _to_json(self.means),
            "covariances": _to_json(self.covariances),
            "precisions_cholesky": _to_json(self.precisions_cholesky),
            "component_groups": [int(g) for g in self.component_groups],
            "fallback": bool(self.fallback),
            "note": str(self.note),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QualitySeparation:
        """Inverse of `to_dict`; the restored object scores bit-identically."""
        return cls(
            normaliser=Normaliser.from_dict(data["normaliser"]),
            weights=_from_json(data["weights"]),
            means=_from_json(data["means"]),
            covariances=_from_json(data["covariances"]),
            precisions_cholesky=_from_json(data["precisions_cholesky"]),
            component_groups=np.asarray(data["component_groups"], dtype=np.int8),
            fallback=bool(data["fallback"]),
            note=str(data["note"]),
        )

    def _mixture(self) -> GaussianMixture:
        # Rebuilt from the stored arrays on every call (cheap), so a fitted object and one restored with
        # from_dict go through exactly the same code and give identical posteriors.
        gm = GaussianMixture(n_components=self.n_components, covariance_type="full")
        gm.weights_ = self.weights
        gm.means_ = self.means
        gm.covariances_ = self.covariances
        gm.precisions_cholesky_ = self.precisions_cholesky
        gm.precisions_ = np.einsum("cij,ckj->cik", self.precisions_cholesky, self.precisions_cholesky)
        gm.n_features_in_ = self.means.shape[1]
        gm.converged_ = True
        gm.n_iter_ = 0
        gm.lower_bound_ = np.nan
        return gm


# ----------------------------------------------------------------------------------------------------------
# Fitting
# ----------------------------------------------------------------------------------------------------------


def _as_scores(x: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D (N,), got shape {arr.shape}")
    if not np.isfinite(arr).all():
        bad = int((~np.isfinite(arr)).sum())
        raise TrainingError(f"{bad} samples have a non-finite {name}; the network has diverged")
    return arr


def _fit_mixture(
    x: np.ndarray, k: int, *, reg_covar: float, max_iter: int, tol: float, seed: int
) -> tuple[GaussianMixture | None, str]:
    gm = GaussianMixture(
        n_components=k,
        covariance_type="full",
        reg_covar=reg_covar,
        max_iter=max_iter,
        tol=tol,
        init_params="kmeans",
        random_state=seed,
    )
    with warnings.catch_warnings():
        # A few EM steps rarely "converge" by sklearn's criterion, and duplicated points make k-means warn;
        # neither is a problem here, and the degeneracy checks below catch what matters.
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        try:
            gm.fit(x)
        except (ValueError, np.linalg.LinAlgError, FloatingPointError) as exc:
            return None, f"{k}-component fit failed ({exc.__class__.__name__})"
    params = (gm.weights_, gm.means_, gm.covariances_, gm.precisions_cholesky_)
    if not all(np.isfinite(p).all() for p in params):
        return None, f"{k}-component fit has non-finite parameters"
    return gm, ""


def _degeneracy(gm: GaussianMixture, x: np.ndarray, *, per_component: bool) -> str:
    """Reason the fit is unusable, or "" if it is fine."""
    resp = gm.predict_proba(x)
    if not np.isfinite(resp).all():
        return "non-finite posteriors"
    if not per_component:
        return ""
    k = gm.n_components
    if gm.weights_.min() < MIN_COMPONENT_WEIGHT:
        return f"a component has weight {gm.weights_.min():.1e}"
    counts = np.bincount(resp.argmax(axis=1), minlength=k)
    if counts.min() < MIN_COMPONENT_SAMPLES:
        return f"a component holds {counts.min()} samples"
    return ""


def _separation(
    normaliser: Normaliser, gm: GaussianMixture, groups: np.ndarray, *, fallback: bool, note: str
) -> QualitySeparation:
    return QualitySeparation(
        normaliser=normaliser,
        weights=np.asarray(gm.weights_, dtype=np.float64),
        means=np.asarray(gm.means_, dtype=np.float64),
        covariances=np.asarray(gm.covariances_, dtype=np.float64),
        precisions_cholesky=np.asarray(gm.precisions_cholesky_, dtype=np.float64),
        component_groups=np.asarray(groups, dtype=np.int8),
        fallback=fallback,
        note=note,
    )


def _all_clean(normaliser: Normaliser, x_loss: np.ndarray, *, reg_covar: float, note: str) -> QualitySeparation:
    # One loss-only component named clean: every sample, old or new, gets p_clean = 1 exactly.
    var = max(float(np.var(x_loss)), 0.0) + reg_covar
    return QualitySeparation(
        normaliser=normaliser,
        weights=np.ones(1),
        means=np.array([[float(np.mean(x_loss))]]),
        covariances=np.array([[[var]]]),
        precisions_cholesky=np.array([[[1.0 / np.sqrt(var)]]]),
        component_groups=np.zeros(1, dtype=np.int8),
        fallback=True,
        note=note,
    )


def _no_loss_signal(loss: np.ndarray, *, clean_loss: float, min_range: float) -> str:
    """Why the raw losses cannot separate anything (then every sample is clean), or "" if they can."""
    if loss.max() < clean_loss:
        return f"every loss < {clean_loss:g}: all clean"
    if np.ptp(loss) < min_range:
        return "losses have no spread: all clean"
    return ""


def _fit_loss_only(
    normaliser: Normaliser,
    x_loss: np.ndarray,
    *,
    reg_covar: float,
    max_iter: int,
    tol: float,
    seed: int,
    fallback: bool,
    note: str,
) -> QualitySeparation:
    """2-component 1-D mixture on normalised loss; one all-clean component if even that cannot be fitted."""
    if x_loss.shape[0] < 2 * 2:
        return _all_clean(normaliser, x_loss, reg_covar=reg_covar, note=f"{note}; too few samples: all clean")
    x = x_loss[:, None]
    gm, why = _fit_mixture(x, 2, reg_covar=reg_covar, max_iter=max_iter, tol=tol, seed=seed)
    if gm is not None:
        why = _degeneracy(gm, x, per_component=False)
        if not why and gm.weights_.min() < MIN_COMPONENT_WEIGHT:
            # One mode only: DivideMix would still call its tail noisy; a single mode means nothing is.
            why = "one loss mode"
    if gm is None or why:
        return _all_clean(normaliser, x_loss, reg_covar=reg_covar, note=f"{note}; {why}: all clean")
    return _separation(normaliser, gm, name_components(gm.means_), fallback=fallback, note=note)


def fit_quality_separation(
    loss: np.ndarray,
    uncertainty: np.ndarray,
    *,
    components: int = 10,
    reg_covar: float = 5e-4,
    max_iter: int = 20,
    tol: float = 1e-2,
    seed: int = 0,
    clean_loss: float = 1e-2,
    min_range: float = 1e-3,
    tied_axes: bool = False,
) -> QualitySeparation:
    """Fit QMix's separation: a full-covariance GMM on min–max normalised (loss, uncertainty).

    Parameters
    ----------
    loss
        (N,) float raw per-sample cross-entropy against the given label (`per_sample_loss`), N >= 1.
    uncertainty
        (N,) float raw uncertainty (`entropy` or `collision_uncertainty`).
    components
        K >= 3 Gaussians. The default, 10, is `TrainConfig.gmm_components`'s: with K > 3 each component is named
        by its mean (`name_components`) and posteriors are summed within a group; 3 is the paper's, one
        Gaussian per group, which splits the skewed clean mode (docs/decisions.md).
    reg_covar, max_iter, tol, seed
        Passed to `sklearn.mixture.GaussianMixture` (k-means initialisation).
    clean_loss
        If every raw loss is below this (every sample gives its label a probability above e^-0.01 ≈ 0.99 by
        default), all samples are clean: min–max scaling would otherwise blow float noise up into groups.
    min_range
        A raw score range (max − min, in nats) below this counts as no spread. No loss spread: every sample
        fits its label equally well, so all are clean. No uncertainty spread: the quality axis carries
        nothing, so the loss-only fallback is used.
    tied_axes
        The uncertainty is the entropy of a two-class output, a function of the loss: the components are named
        along that curve, by their mean loss alone (`name_components`).

    Returns
    -------
    QualitySeparation
        Guard rails, tried in order: K components (if K > 3), then 3 components, then the 2-component 1-D loss
        mixture of DivideMix (``fallback=True``, zero Mis-L column), then one all-clean component. A fit is
        refused when there are fewer than 10 samples per component, it raises, or its parameters or
        posteriors are not finite; with 3 components also when a component weighs < 1e-3 or wins fewer than 2
        samples (with K > 3, light or empty components are expected and harmless). ``note`` says which fit was
        kept and why. This function raises only on malformed or non-finite input (`TrainingError`).
    """
    if components < 3:
        raise ValueError(f"components must be >= 3, got {components}")
    loss_arr = _as_scores(loss, "loss")
    unc_arr = _as_scores(uncertainty, "uncertainty")
    if loss_arr.shape != unc_arr.shape or loss_arr.shape[0] == 0:
        raise ValueError(f"loss and uncertainty must be non-empty and equally long: {loss_arr.shape}, {unc_arr.shape}")
    raw = np.column_stack([loss_arr, unc_arr])
    normaliser = Normaliser.fit(raw)
    x = normaliser(raw)
    n = x.shape[0]
    fit_kw = {"reg_covar": reg_covar, "max_iter": max_iter, "tol": tol, "seed": seed}

    if why := _no_loss_signal(loss_arr, clean_loss=clean_loss, min_range=min_range):
        return _all_clean(normaliser, x[:, 0], reg_covar=reg_covar, note=why)

    reasons: list[str] = []
    if np.ptp(unc_arr) < min_range:
        reasons.append("uncertainty has no spread")
    else:
        for k in dict.fromkeys((components, 3)):  # K, then 3, without repeating 3
            if n < SAMPLES_PER_COMPONENT * k:
                reasons.append(f"{n} samples < {SAMPLES_PER_COMPONENT} x {k} components")
                continue
            gm, why = _fit_mixture(x, k, **fit_kw)
            if gm is not None:
                why = _degeneracy(gm, x, per_component=k <= 3)
            if gm is None or why:
                reasons.append(why)
                continue
            note = f"{k}-component 2-D GMM on (loss, uncertainty)"
            if reasons:
                note += " (fell back: " + "; ".join(reasons) + ")"
            groups = name_components(gm.means_, weights=gm.weights_, tied_axes=tied_axes)
            return _separation(normaliser, gm, groups, fallback=bool(reasons), note=note)

    note = "fell back to 2-component 1-D loss GMM (" + "; ".join(reasons) + ")"
    return _fit_loss_only(normaliser, x[:, 0], fallback=True, note=note, **fit_kw)


def fit_loss_separation(
    loss: np.ndarray,
    *,
    uncertainty: np.ndarray | None = None,
    reg_covar: float = 5e-4,
    max_iter: int = 20,
    tol: float = 1e-2,
    seed: int = 0,
    clean_loss: float = 1e-2,
    min_range: float = 1e-3,
) -> QualitySeparation:
    """Fit DivideMix's separation: a 2-component GMM on min–max normalised loss.

    Parameters
    ----------
    loss
        (N,) float raw per-sample cross-entropy, N >= 1.
    uncertainty
        Optional (N,) float raw uncertainty. Not used by the mixture; only recorded in the normaliser so that
        `QualitySeparation.normalise` can report it on the same [0, 1] scale.
    reg_covar, max_iter, tol, seed
        Passed to `sklearn.mixture.GaussianMixture`.
    clean_loss, min_range
        Every raw loss below ``clean_loss``, or a raw loss range below ``min_range``: every sample is clean
        (see `fit_quality_separation`).

    Returns
    -------
    QualitySeparation
        1-D mixture; p_clean is the posterior of the smaller-mean component, Mis-H the other, Mis-L zero.
        One all-clean component (``fallback=True``) when the losses have no spread, N < 4, or the fit is
        degenerate.
    """
    loss_arr = _as_scores(loss, "loss")
    if loss_arr.shape[0] == 0:
        raise ValueError("loss must be non-empty")
    unc_arr = np.full_like(loss_arr, np.nan) if uncertainty is None else _as_scores(uncertainty, "uncertainty")
    if unc_arr.shape != loss_arr.shape:
        raise ValueError(f"loss and uncertainty lengths differ: {loss_arr.shape} vs {unc_arr.shape}")
    raw = np.column_stack([loss_arr, unc_arr])
    normaliser = Normaliser.fit(raw)
    x_loss = normaliser(raw)[:, 0]
    if why := _no_loss_signal(loss_arr, clean_loss=clean_loss, min_range=min_range):
        return _all_clean(normaliser, x_loss, reg_covar=reg_covar, note=why)
    return _fit_loss_only(
        normaliser,
        x_loss,
        reg_covar=reg_covar,
        max_iter=max_iter,
        tol=tol,
        seed=seed,
        fallback=False,
        note="2-component 1-D loss GMM (DivideMix)",
    )


# ----------------------------------------------------------------------------------------------------------
# Using the posteriors
# ----------------------------------------------------------------------------------------------------------


def hard_groups(posteriors: np.ndarray, *, p_threshold: float = 0.5) -> np.ndarray:
    """Hard group of each sample: argmax, except that clean also needs ``p_clean > p_threshold``.

    Parameters
    ----------
    posteriors
        (N, 3) float in group order (clean, Mis-H, Mis-L).
    p_threshold
        A sample whose p_clean does not exceed this is not clean; it goes to the larger of Mis-H / Mis-L
        (Mis-H on a tie, so a loss-only separation never produces Mis-L).

    Returns
    -------
    np.ndarray
        (N,) int8 group indices in {0, 1, 2}.
    """
    p = np.asarray(posteriors, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != 3:
        raise ValueError(f"posteriors must be (N, 3), got shape {p.shape}")
    groups = p.argmax(axis=1).astype(np.int8)
    noisy = np.where(p[:, MIS_L] > p[:, MIS_H], MIS_L, MIS_H).astype(np.int8)
    demote = (groups == CLEAN) & ~(p[:, CLEAN] > p_threshold)
    groups[demote] = noisy[demote]
    return groups


def _auc(truth: np.ndarray | None, score: np.ndarray) -> float:
    if truth is None:
        return float("nan")
    t = np.asarray(truth).astype(bool)
    if t.shape != score.shape:
        raise ValueError(f"truth must be ({score.shape[0]},), got shape {t.shape}")
    if t.all() or not t.any():
        return float("nan")
    return float(roc_auc_score(t, score))


def separation_aucs(
    posteriors: np.ndarray, *, is_clean: np.ndarray | None, is_high_quality: np.ndarray | None
) -> dict[str, float]:
    """Separation quality against known truth, as logged by the paper's data loader.

    Parameters
    ----------
    posteriors
        (N, 3) float in group order (clean, Mis-H, Mis-L).
    is_clean
        (N,) bool truth "label is correct" (and, in the corruption protocol, image is high quality), or None.
    is_high_quality
        (N,) bool truth "image is high quality", or None.

    Returns
    -------
    dict
        ``auc_clean``: ROC-AUC of p_clean against ``is_clean``; ``auc_hq``: ROC-AUC of p_clean + p_mis_h
        against ``is_high_quality``. Each is a float in [0, 1], NaN when its truth is None or has one class.
    """
    p = np.asarray(posteriors, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != 3:
        raise ValueError(f"posteriors must be (N, 3), got shape {p.shape}")
    return {
        "auc_clean": _auc(is_clean, p[:, CLEAN]),
        "auc_hq": _auc(is_high_quality, p[:, CLEAN] + p[:, MIS_H]),
    }
