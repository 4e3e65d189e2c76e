"""Out-of-fold linear probes: how well each image's *given* label fits, for the audit's final separation.

Why not the nets' own classifier? In ``qmix`` and ``dividemix`` it is trained on refined and guessed labels,
with strong views and mixup: it estimates the true class, and it is deliberately made sure of images whose
labels it does not trust, degraded ones included. Its loss and entropy against the given labels then blur both
axes of the separation. A multinomial logistic regression fitted on the given labels, on the frozen features of
the trained encoder, and scored out of fold (each image by a probe that never saw it, as cleanlab does with
cross-validation) is an honest estimate of p(given label | image): low on a wrong label, flat on an image whose
look-alikes carry conflicting labels (docs/decisions.md, "Fifth round").

Folds are drawn from a hash of each decoded image's pixels, not from row order or ``sample_id``: the audit of any
manifest finds the fold of every training image again, whatever its id or path there, copies of one image share
a fold, and an image the run never saw is scored by one fold's probe (trained on the other four fifths of the
training set). The same hash, the image's key, tells the neighbour vote (`qmix_cli.engine.neighbours`), which the
audit averages with the probes' output, which training images are the image itself and so must not vote. A run
with a group column folds and votes by group and label instead (`qmix_cli.engine.groups`), the pixel key still
finding each training image's fold.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F

from qmix_cli.data.images import default_workers
from qmix_cli.errors import TrainingError

FOLDS = 5
# Inverse L2 strength in scikit-learn's convention (``C`` of ``LogisticRegression``: C · Σ cross-entropy +
# ½‖W‖²) on standardised features; the penalty per sample then shrinks as the training set grows.
PROBE_C = 0.02
MAX_ITER = 200
# Encoder stages the probe reads: the pooled features and the stage before the last (`QmixNet.forward_with_stages`).
# Strong views and label guessing teach the last stage to ignore many degradations (a JPEG-blocked or vignetted
# image lands among clear images of its class); the stage before still shows them (docs/decisions.md, "Sixth round").
PROBE_STAGES = 2


# Pixels per side hashed for an image's fold: a grid this fine tells any two different photographs apart, and
# keeps hashing a 224-px dataset far cheaper than decoding it.
KEY_GRID = 16
# Bytes of pixels hashed per read of a memory-mapped cache.
_HASH_BYTES = 16 << 20
# Buffers hashlib hashes without holding the GIL are longer than this.
_GIL_FREE_BYTES = 2047


def pixel_digests(
    images: np.ndarray, *, salt: bytes = b"", step: tuple[int, int] = (1, 1), workers: int | None = None
) -> np.ndarray:
    """(N,) int64 a 64-bit digest of ``salt`` and each image's pixels, (N, C, H, W) uint8, read every ``step``-th
    row and column (by default all of them): equal for equal images, different (but for a 2^-64 chance) where a
    pixel read differs. Images over 2 KiB are hashed on ``workers`` threads (default `default_workers`)."""
    n, c, h, w = images.shape
    step_h, step_w = step
    image_bytes = max(1, c * -(-h // step_h) * -(-w // step_w))
    rows = max(1, _HASH_BYTES // image_bytes)
    # hashlib lets go of the GIL for buffers over 2 KiB, so larger images hash in parallel (a 224-px RGB image
    # takes 0.17 ms: 17 s per 100,000 on one thread, at the end of a training run and in its audits).
    threads = (workers or default_workers()) if image_bytes > _GIL_FREE_BYTES else 1
    out = np.empty(n, dtype=np.int64)
    with contextlib.ExitStack() as stack:
        pool = stack.enter_context(ThreadPoolExecutor(max_workers=threads)) if threads > 1 else None
        for start in range(0, n, rows):
            chunk = np.ascontiguousarray(images[start : start + rows, :, ::step_h, ::step_w])
            if pool is None:
                out[start : start + len(chunk)] = _digests(chunk, salt)
                continue
            bounds = np.linspace(0, len(chunk), min(threads, len(chunk)) + 1).astype(int)
            parts = pool.map(_digests, [chunk[a:b] for a, b in itertools.pairwise(bounds)], itertools.repeat(salt))
            out[start : start + len(chunk)] = np.concatenate(list(parts))
    return out


def _digests(images: np.ndarray, salt: bytes) -> np.ndarray:
    """`pixel_digests` of contiguous ``images``, on the calling thread."""
    out = np.empty(len(images), dtype=np.uint64)
    for i, image in enumerate(images):
        digest = hashlib.blake2b(salt, digest_size=8)
        digest.update(image)  # the array's own buffer: no copy
        out[i] = int.from_bytes(digest.digest(), "little")
    return out.view(np.int64)


def image_keys(images: np.ndarray, *, seed: int = 0) -> np.ndarray:
    """A 64-bit key of each image, a stable function of ``seed`` and its pixels: copies of one image share it.

    Parameters
    ----------
    images
        (N, C, H, W) uint8, decoded at the run's size (a memory-mapped cache is read in chunks).

    Returns
    -------
    np.ndarray
        (N,) int64 (the digest's 64 bits, read as a signed integer).
    """
    _, _, h, w = images.shape
    step = (max(1, h // KEY_GRID), max(1, w // KEY_GRID))
    return pixel_digests(images, salt=f"qmix-probe-fold\0{seed}\0".encode(), step=step)


def folds_of_keys(keys: np.ndarray, *, folds: int = FOLDS) -> np.ndarray:
    """(N,) int64 fold in ``[0, folds)`` of each image's key (`image_keys`)."""
    return (np.asarray(keys, dtype=np.int64).view(np.uint64) % np.uint64(folds)).astype(np.int64)


def sorted_rows(table: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """(N,) int64 the position of each of ``keys`` in ``table`` (sorted, unique int64), or -1 where it is not there."""
    keys = np.asarray(keys, dtype=np.int64)
    if not len(table):
        return np.full(len(keys), -1, dtype=np.int64)
    at = np.minimum(np.searchsorted(table, keys), len(table) - 1)
    return np.where(table[at] == keys, at, -1).astype(np.int64)


def standardisation(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each column's mean and standard deviation, (D,) float32 each, of (N, D) features: what the probes (and the
    neighbour vote, reading the same features) standardise with. A constant feature (a dead ReLU channel) would
    divide by zero; any positive std leaves it at 0."""
    x = features.float()
    return x.mean(dim=0), x.std(dim=0, correction=0).clamp_min(1e-6)


def fit_softmax_regression(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    num_classes: int,
    c: float = PROBE_C,
    max_iter: int = MAX_ITER,
    skip: tuple[int, int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression by full-batch L-BFGS, on ``x``'s device.

    Minimises ``c · Σ_i CE(x_i W + b, y_i) + ½‖W‖²`` (the bias is not penalised), the objective of scikit-learn's
    ``LogisticRegression(C=c)``.

    Parameters
    ----------
    x
        (n, D) float features (standardise them first: the penalty treats every dimension alike).
    y
        (n,) int64 labels in ``[0, num_classes)``. With no sample the result is all zeros (a uniform prediction).
    skip
        ``(start, stop)``: leave rows ``start:stop`` out of the fit, without copying the others (a fold's held-out
        rows, when ``x`` is sorted by fold).

    Returns
    -------
    tuple[torch.Tensor, torch.Tensor]
        Weight (D, num_classes) and bias (num_classes,), float32.
    """
    x = x.float()
    weight = torch.zeros(x.shape[1], num_classes, device=x.device, requires_grad=True)
    bias = torch.zeros(num_classes, device=x.device, requires_grad=True)
    start, stop = (len(y), len(y)) if skip is None else skip
    parts = [(x[a:b], y[a:b]) for a, b in ((0, start), (stop, len(y))) if b > a]  # views, not copies
    n = sum(len(part_y) for _, part_y in parts)
    if n == 0:
        return weight.detach(), bias.detach()
    # The same minimiser, divided by c·n so the loss stays O(1) whatever n is (L-BFGS's tolerances are absolute).
    l2 = 1.0 / (2.0 * c * n)
    opt = torch.optim.LBFGS(
        [weight, bias],
        lr=1.0,
        max_iter=max_iter,
        history_size=20,
        tolerance_grad=1e-6,
        tolerance_change=1e-10,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        fit = sum(F.cross_entropy(px @ weight + bias, py, reduction="sum") for px, py in parts) / n
        loss = fit + l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    weight, bias = weight.detach(), bias.detach()
    if not (torch.isfinite(weight).all() and torch.isfinite(bias).all()):
        raise TrainingError("the audit probe did not converge (non-finite weights): the nets' features are not finite")
    return weight, bias


# Rows standardised at once when scoring: bounds the copy `LinearProbe.probs` makes of its features.
_SCORE_ROWS = 4096


@dataclass(frozen=True)
class LinearProbe:
    """``folds`` linear heads on standardised features; head ``k`` was fitted without the images of fold ``k``.

    ``mean``/``std`` (D,), ``weight`` (folds, D, K), ``bias`` (folds, K); ``seed`` salts `image_keys`; ``stages``
    says which features it reads (`QmixNet.forward_with_stages`).
    """

    mean: torch.Tensor
    std: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor
    seed: int
    stages: int = 1

    @property
    def folds(self) -> int:
        return int(self.weight.shape[0])

    def to(self, device: torch.device) -> LinearProbe:
        """This probe with its tensors on ``device``: move it once, not on every batch `probs` scores."""
        return replace(
            self,
            mean=self.mean.to(device),
            std=self.std.to(device),
            weight=self.weight.to(device),
            bias=self.bias.to(device),
        )

    def keys_of(self, images: np.ndarray) -> np.ndarray:
        """(N,) the key of each image (`image_keys` with this probe's seed): its fold, and its copies for the vote."""
        return image_keys(images, seed=self.seed)

    def probs(self, features: torch.Tensor, keys: np.ndarray) -> np.ndarray:
        """(N, K): the softmax of each row's fold head, out of fold for every training image.

        ``features`` (N, D) float on any device; ``keys`` (N,) from `keys_of` (or their groups', `FoldKeys.keys`).
        """
        probe = self.to(features.device)
        keys = np.asarray(keys, dtype=np.int64)
        fold = torch.as_tensor(folds_of_keys(keys, folds=self.folds), device=features.device)
        folds, width, classes = probe.weight.shape
        # Heads no wider together than the features: one product with all of them, then each row's own, costs
        # less than picking the rows of each fold out (an audit batch of 512: 0.44 → 0.23 ms on a 2-core CPU).
        # Wider heads (many classes) would multiply the arithmetic by the folds: one product per fold instead.
        joint = probe.weight.permute(1, 0, 2).reshape(width, folds * classes) if folds * classes <= width else None
        out = []
        # A block of rows at a time, so no second (N, D) matrix is ever held (batched (N, 1, D) @ (N, D, K) would
        # copy a head per row).
        for start in range(0, len(features), _SCORE_ROWS):
            stop = start + _SCORE_ROWS
            x = (features[start:stop].float() - probe.mean) / probe.std
            block = fold[start:stop]
            if joint is not None:
                every = (x @ joint).view(len(x), folds, classes)
                logits = every[torch.arange(len(x), device=x.device), block] + probe.bias[block]
            else:
                logits = torch.empty(len(x), classes, device=features.device)
                for k in range(folds):
                    rows = block == k
                    logits[rows] = x[rows] @ probe.weight[k] + probe.bias[k]
            out.append(torch.softmax(logits, dim=1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.weight.shape[2]), dtype=np.float32)

    def state_dict(self) -> dict:
        """Tensors and ints only, so checkpoints load with ``weights_only=True``."""
        return {
            "mean": self.mean.cpu(),
            "std": self.std.cpu(),
            "weight": self.weight.cpu(),
            "bias": self.bias.cpu(),
            "seed": self.seed,
            "stages": self.stages,
        }

    @classmethod
    def from_state_dict(cls, state: dict) -> LinearProbe:
        return cls(
            mean=state["mean"],
            std=state["std"],
            weight=state["weight"],
            bias=state["bias"],
            seed=int(state["seed"]),
            stages=int(state.get("stages", 1)),  # probes saved before stages were recorded read the pooled features
        )


def fit_probe(
    features: torch.Tensor,
    labels: np.ndarray,
    keys: np.ndarray,
    *,
    num_classes: int,
    num_folds: int = FOLDS,
    c: float = PROBE_C,
    seed: int = 0,
    stages: int = 1,
) -> LinearProbe:
    """Fit one head per fold, each on the images of the other folds.

    Parameters
    ----------
    features
        (N, D) float features of the training images (deterministic eval view), from
        `QmixNet.forward_with_stages` with ``stages``, which is stored so that the audit reads the same ones.
    labels
        (N,) int given labels in ``[0, num_classes)``.
    keys
        (N,) int64 key of each image, ``image_keys(images, seed=seed)`` (with a group column, its group's,
        `qmix_cli.engine.groups.FoldKeys.keys`): its fold is `folds_of_keys`; ``num_folds`` heads are fitted (one
        with no image in its fold is fitted on all of them). ``seed`` is stored so that `LinearProbe.keys_of` finds
        the same keys again.
    """
    if not len(features) == len(labels) == len(keys):
        raise ValueError(f"features, labels and keys differ in length: {len(features)}, {len(labels)}, {len(keys)}")
    keys = np.asarray(keys, dtype=np.int64)
    folds = folds_of_keys(keys, folds=num_folds)
    features = features.float()
    mean, std = standardisation(features)
    # One standardised copy, sorted by fold: each head then skips one contiguous block of rows, and no fold's
    # training rows are ever copied out (they would be 0.8 × N × D floats more on the device, per head).
    order = np.argsort(folds, kind="stable")
    x = features[torch.as_tensor(order, device=features.device)].sub_(mean).div_(std)
    y = torch.as_tensor(np.asarray(labels, dtype=np.int64)[order], device=x.device)
    ends = np.cumsum(np.bincount(folds, minlength=num_folds))
    blocks = zip(np.concatenate([[0], ends[:-1]]).tolist(), ends.tolist(), strict=True)
    heads = [fit_softmax_regression(x, y, num_classes=num_classes, c=c, skip=block) for block in blocks]
    return LinearProbe(
        mean=mean,
        std=std,
        weight=torch.stack([w for w, _ in heads]),
        bias=torch.stack([b for _, b in heads]),
        seed=seed,
        stages=stages,
    )
