"""Nearest-neighbour label votes: how many of an image's closest training images carry its given label.

The audit probe (`qmix_cli.engine.probe`) asks one linear question of a net's features per class; a vote asks
the features' neighbourhood. Where the two disagree is where one of them is wrong: a linear head is smooth and
class-global, so it absorbs part of a class's label noise, while a vote is local and sees a wrongly labelled
image among look-alikes that carry another label. Averaged with the probes' softmax (`scoring.probe_output`),
the vote gave the final separation steadier and better verdicts, on average over the benchmark's presets and over
seven held-out conditions, for every method (docs/decisions.md, "Eighteenth round").

One vote per net reads every feature set its probes read, side by side (the final net's and, where the run kept
it, its warm-up snapshot's): one neighbourhood in both, rather than one vote per probe, voted as well and costs half
as much (docs/decisions.md, "Nineteenth round"). Each feature is standardised as the probes standardise it.

Each image is judged without itself: training images that share its key (its pixel key,
`qmix_cli.engine.probe.image_keys`: the image itself and any exact copy; in a run with a group column, its group's,
`qmix_cli.engine.groups`) never vote for it, so the vote is leave-one-out (or leave-group-out) for the training set
and plain kNN for images the run never saw. The training features are kept, projected onto their leading principal
axes and normalised, so that an audit can vote for any image; cosine similarity picks the neighbours.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F

from qmix_cli.engine.probe import standardisation

# Neighbours that vote. Ten is the usual choice of kNN label-noise detectors; 5 and 20 did no better on average.
NEIGHBOURS = 10
# Principal axes the stored training features keep: 128 bytes per image in float16, whatever the backbone. 64 voted
# as well as 128 and costs less per vote (docs/decisions.md, "Nineteenth round").
BANK_DIM = 64
# Similarities computed at once (queries × bank rows). On the host 16 MiB of floats: small enough that the top-k
# reads them back from cache (a block four times larger made the training set's vote 1.25-1.7 times slower at
# 5,000-50,000 images on a 2-core CPU: benchmarks/bench_vote.py), large enough for full matrix products. A GPU has
# no such cache to fit and pays for every kernel launch, so it keeps the larger blocks it had before (64 MiB; not
# yet timed there).
_SIM_BLOCK = 1 << 22
_SIM_BLOCK_GPU = 1 << 24
_COV_ROWS = 8192


def _standardised(parts: Sequence[torch.Tensor], mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """The feature sets side by side, (B, D) float32, each column standardised."""
    return (torch.cat([p.float() for p in parts], dim=1) - mean) / std


@dataclass(frozen=True)
class NeighbourVote:
    """The training images' projected features and labels, and how to vote with them.

    ``mean``/``std`` (D,) standardise the feature sets side by side (D their summed widths; the probes'
    statistics); ``projection`` (D, d) float32 onto the leading principal axes of the standardised training
    features; ``bank`` (N, d) their unit-norm projections, float16; ``labels`` (N,) int64 given labels; ``keys``
    (N,) int64 fold keys (`image_keys`, or `FoldKeys.keys` with groups); ``k`` neighbours vote; ``num_classes`` K;
    ``copies`` the most rows any one key has (1 unless the training set holds exact copies or groups): how many
    candidates beyond ``k`` a vote may have to skip.
    """

    mean: torch.Tensor
    std: torch.Tensor
    projection: torch.Tensor
    bank: torch.Tensor
    labels: torch.Tensor
    keys: torch.Tensor
    k: int
    num_classes: int
    copies: int = 1

    def to(self, device: torch.device) -> NeighbourVote:
        """This vote with its tensors on ``device`` (the bank as float32, which every device multiplies fast)."""
        return replace(
            self,
            mean=self.mean.to(device),
            std=self.std.to(device),
            projection=self.projection.to(device),
            bank=self.bank.to(device, torch.float32),
            labels=self.labels.to(device),
            keys=self.keys.to(device),
        )

    def probs(
        self, features: Sequence[torch.Tensor], keys: np.ndarray, *, block_entries: int | None = None
    ) -> np.ndarray:
        """The vote of each image's ``k`` nearest training images other than its copies, (B, K) float32.

        Parameters
        ----------
        features
            The feature sets the vote was fitted on, in that order, each (B, D_i) float on one device (not
            standardised).
        keys
            (B,) int64 fold keys of the images (`image_keys` with the probe's seed, or `FoldKeys.keys`).
        block_entries
            Similarities computed at once (queries × bank rows); by default `_SIM_BLOCK` on the host and
            `_SIM_BLOCK_GPU` on a GPU. The vote is the same whatever the block; only its speed and memory change.

        Returns
        -------
        np.ndarray
            (B, K), rows summing to 1: ``(votes + 1/K) / (voters + 1)``, a vote with one uniform pseudo-vote added
            so that no class gets probability 0 (its loss stays finite) and an image with no neighbour gets 1/K.
        """
        device = features[0].device
        vote = self.to(device)
        key = torch.as_tensor(np.asarray(keys, dtype=np.int64), device=device)
        # The k best candidates and as many more as an image can have rows in the bank: after its own rows are
        # skipped, k remain (or every other row, in a bank smaller than that).
        candidates = min(self.k + self.copies, len(vote.labels))
        k = min(self.k, candidates)
        out = torch.zeros(len(key), self.num_classes, device=device)
        if block_entries is None:
            block_entries = _SIM_BLOCK if device.type == "cpu" else _SIM_BLOCK_GPU
        rows = max(1, block_entries // max(1, len(vote.labels)))
        for start in range(0, len(key), rows):
            block = _standardised([f[start : start + rows] for f in features], vote.mean, vote.std)
            query = F.normalize(block @ vote.projection, dim=1)
            top, idx = (query @ vote.bank.T).topk(candidates, dim=1)
            top.masked_fill_(vote.keys[idx] == key[start : start + rows, None], -torch.inf)
            top, best = top.topk(k, dim=1)  # candidates come sorted, so this keeps their order
            voters = torch.isfinite(top).float()  # the image's own rows do not vote
            out[start : start + rows].scatter_add_(1, vote.labels[idx.gather(1, best)], voters)
        voters = out.sum(dim=1, keepdim=True)
        return ((out + 1.0 / self.num_classes) / (voters + 1.0)).cpu().numpy()

    def state_dict(self) -> dict[str, torch.Tensor | int]:
        """Tensors and ints only, so checkpoints load with ``weights_only=True``."""
        return {
            "mean": self.mean.cpu(),
            "std": self.std.cpu(),
            "projection": self.projection.cpu(),
            "bank": self.bank.cpu().half(),
            "labels": self.labels.cpu(),
            "keys": self.keys.cpu(),
            "k": self.k,
            "num_classes": self.num_classes,
        }

    @classmethod
    def from_state_dict(cls, state: dict) -> NeighbourVote:
        return cls(
            mean=state["mean"],
            std=state["std"],
            projection=state["projection"],
            bank=state["bank"],
            labels=state["labels"],
            keys=state["keys"],
            k=int(state["k"]),
            num_classes=int(state["num_classes"]),
            copies=_most_copies(state["keys"].numpy()),
        )


def fit_neighbour_vote(
    features: Sequence[torch.Tensor],
    labels: np.ndarray,
    keys: np.ndarray,
    *,
    num_classes: int,
    k: int = NEIGHBOURS,
    dim: int = BANK_DIM,
) -> NeighbourVote:
    """Keep the training images' features for voting.

    Parameters
    ----------
    features
        One or more feature sets of the training images, each (N, D_i) float on one device: those of each probe of
        one net (`qmix_cli.engine.probe.fit_probe`), read side by side.
    labels
        (N,) int given labels in ``[0, num_classes)``.
    keys
        (N,) int64 fold keys (`image_keys`, or `FoldKeys.keys` in a run with a group column).
    k, dim
        Neighbours that vote; principal axes kept (at most D).
    """
    n = len(labels)
    if not features or any(len(f) != n for f in features) or len(keys) != n:
        lengths = [len(f) for f in features]
        raise ValueError(f"features, labels and keys differ in length: {lengths}, {n}, {len(keys)}")
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    device = features[0].device
    # Standardised as the probes standardise, block by block: no standardised copy of the N × D features is held.
    stats = [standardisation(f) for f in features]
    mean, std = torch.cat([m for m, _ in stats]), torch.cat([s for _, s in stats])

    def blocks() -> Iterator[torch.Tensor]:
        for start in range(0, n, _COV_ROWS):
            yield _standardised([f[start : start + _COV_ROWS] for f in features], mean, std)

    # The leading eigenvectors of the (D, D) covariance, summed in float64 block by block (no float64 copy of the
    # N × D features): exact and deterministic, unlike a randomised SVD, and cheap (D is at most a few thousand).
    width = len(mean)
    cov = torch.zeros(width, width, dtype=torch.float64, device=device)
    for block in blocks():
        cov += (block.T @ block).double()
    _, vectors = torch.linalg.eigh(cov / max(1, n))
    projection = vectors[:, -min(dim, width) :].flip(1).float()
    keys = np.asarray(keys, dtype=np.int64)
    bank = torch.cat([F.normalize(block @ projection, dim=1).half() for block in blocks()])
    return NeighbourVote(
        mean=mean,
        std=std,
        projection=projection,
        bank=bank,
        labels=torch.as_tensor(np.array(labels, dtype=np.int64), device=device),  # a copy: the caller's is read-only
        keys=torch.as_tensor(keys, device=device),
        k=k,
        num_classes=num_classes,
        copies=_most_copies(keys),
    )


def _most_copies(keys: np.ndarray) -> int:
    """The most rows any one key has (at least 1)."""
    return int(np.unique(keys, return_counts=True)[1].max(initial=1))
