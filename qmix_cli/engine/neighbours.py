"""Nearest-neighbour label votes: how many of an image's closest training images carry its given label.

The audit probe (`qmix_cli.engine.probe`) asks one linear question of a net's features per class; a vote asks
the features' neighbourhood. Where the two disagree is where one of them is wrong: a linear head is smooth and
class-global, so it absorbs part of a class's label noise, while a vote is local and sees a wrongly labelled
image among look-alikes that carry another label. Averaged with the probe's softmax, the vote gave the final
separation steadier and better verdicts, on average over the benchmark's presets and over seven held-out
conditions, for every method (docs/decisions.md, "Eighteenth round").

Each image is judged without itself: training images that share its pixel key (`qmix_cli.engine.probe.image_keys`:
the image itself and any exact copy) never vote for it, so the vote is leave-one-out for the training set and
plain kNN for images the run never saw. The training features are kept, projected onto their leading principal
axes and normalised, so that an audit can vote for any image; cosine similarity picks the neighbours.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F

# Neighbours that vote. Ten is the usual choice of kNN label-noise detectors; 5 and 20 did no better on average.
NEIGHBOURS = 10
# Principal axes the stored training features keep: 256 bytes per image in float16, whatever the backbone.
BANK_DIM = 128
# Similarities computed at once (queries × bank rows): bounds the memory of one vote at about 64 MiB of floats.
_SIM_BLOCK = 1 << 24
_COV_ROWS = 8192


@dataclass(frozen=True)
class NeighbourVote:
    """The training images' projected features and labels, and how to vote with them.

    ``projection`` (D, d) float32 onto the leading principal axes of the standardised training features;
    ``bank`` (N, d) their unit-norm projections, float16; ``labels`` (N,) int64 given labels; ``keys`` (N,) int64
    pixel keys (`image_keys`); ``k`` neighbours vote; ``num_classes`` K; ``copies`` the most rows any one key has
    (1 unless the training set holds exact copies): how many candidates beyond ``k`` a vote may have to skip.
    """

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
            projection=self.projection.to(device),
            bank=self.bank.to(device, torch.float32),
            labels=self.labels.to(device),
            keys=self.keys.to(device),
        )

    def probs(self, features: torch.Tensor, keys: np.ndarray) -> np.ndarray:
        """The vote of each image's ``k`` nearest training images other than its copies, (B, K) float32.

        Parameters
        ----------
        features
            (B, D) standardised features (the probe's standardisation), on any device.
        keys
            (B,) int64 pixel keys of the images (`image_keys` with the probe's seed).

        Returns
        -------
        np.ndarray
            (B, K), rows summing to 1: ``(votes + 1/K) / (voters + 1)``, a vote with one uniform pseudo-vote added
            so that no class gets probability 0 (its loss stays finite) and an image with no neighbour gets 1/K.
        """
        vote = self.to(features.device)
        query = F.normalize(features.float() @ vote.projection, dim=1)
        key = torch.as_tensor(np.asarray(keys, dtype=np.int64), device=features.device)
        # The k best candidates and as many more as an image can have rows in the bank: after its own rows are
        # skipped, k remain (or every other row, in a bank smaller than that).
        candidates = min(self.k + self.copies, len(vote.labels))
        k = min(self.k, candidates)
        out = torch.zeros(len(query), self.num_classes, device=features.device)
        rows = max(1, _SIM_BLOCK // max(1, len(vote.labels)))
        for start in range(0, len(query), rows):
            top, idx = (query[start : start + rows] @ vote.bank.T).topk(candidates, dim=1)
            top.masked_fill_(vote.keys[idx] == key[start : start + rows, None], -torch.inf)
            top, best = top.topk(k, dim=1)  # candidates come sorted, so this keeps their order
            voters = torch.isfinite(top).float()  # the image's own rows do not vote
            out[start : start + rows].scatter_add_(1, vote.labels[idx.gather(1, best)], voters)
        voters = out.sum(dim=1, keepdim=True)
        return ((out + 1.0 / self.num_classes) / (voters + 1.0)).cpu().numpy()

    def state_dict(self) -> dict[str, torch.Tensor | int]:
        """Tensors and ints only, so checkpoints load with ``weights_only=True``."""
        return {
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
            projection=state["projection"],
            bank=state["bank"],
            labels=state["labels"],
            keys=state["keys"],
            k=int(state["k"]),
            num_classes=int(state["num_classes"]),
            copies=_most_copies(state["keys"].numpy()),
        )


def fit_neighbour_vote(
    features: torch.Tensor,
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
        (N, D) standardised features of the training images (zero mean, as the probe standardises them).
    labels
        (N,) int given labels in ``[0, num_classes)``.
    keys
        (N,) int64 pixel keys (`image_keys`).
    k, dim
        Neighbours that vote; principal axes kept (at most D).
    """
    if not len(features) == len(labels) == len(keys):
        raise ValueError(f"features, labels and keys differ in length: {len(features)}, {len(labels)}, {len(keys)}")
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    x = features.float()
    # The leading eigenvectors of the (D, D) covariance, summed in float64 block by block (no float64 copy of the
    # N × D features): exact and deterministic, unlike a randomised SVD, and cheap (D is at most a few thousand).
    cov = torch.zeros(x.shape[1], x.shape[1], dtype=torch.float64, device=x.device)
    for start in range(0, len(x), _COV_ROWS):
        block = x[start : start + _COV_ROWS]
        cov += (block.T @ block).double()
    _, vectors = torch.linalg.eigh(cov / max(1, len(x)))
    projection = vectors[:, -min(dim, x.shape[1]) :].flip(1).float()
    keys = np.asarray(keys, dtype=np.int64)
    return NeighbourVote(
        projection=projection,
        bank=F.normalize(x @ projection, dim=1).half(),
        labels=torch.as_tensor(np.asarray(labels, dtype=np.int64), device=x.device),
        keys=torch.as_tensor(keys, device=x.device),
        k=k,
        num_classes=num_classes,
        copies=_most_copies(keys),
    )


def _most_copies(keys: np.ndarray) -> int:
    """The most rows any one key has (at least 1)."""
    return int(np.unique(keys, return_counts=True)[1].max(initial=1))
