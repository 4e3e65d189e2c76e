"""What a run's nets said about its training images, kept with the run so that auditing them again runs no net.

The audit's numbers for an image are a function of its pixels alone: each net's softmax of its eval view, and its
probe output (`qmix_cli.engine.scoring.probe_output`), whose fold head and whose neighbours (copies excluded)
follow the image's pixel key (`qmix_cli.engine.probe.image_keys`); the given label only enters afterwards, in the
loss. Training computes both for every training image at its end (`_finalise`), so ``model.pt`` keeps them by a
digest of *every* pixel of the decoded image (`pixel_digests`; the probes' key reads a grid of them only, which
an edit elsewhere would not change), and `qmix audit` of the training set (its main use) looks them up instead
of running four forwards per image; images the run never saw, or whose pixels changed, are scored by the nets.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from qmix_cli.engine.probe import pixel_digests, sorted_rows

# Read-outs are kept only up to this size (2 arrays × nets × images × classes float32): 100,000 images of 10
# classes take 16 MB; ImageNet-sized runs (a million images, a thousand classes) would add gigabytes to model.pt,
# and their audit recomputes instead.
READOUT_BYTES = 256 << 20


@dataclass(frozen=True)
class TrainingReadouts:
    """Per distinct training image, by `pixel_digests`: ``keys`` (M,) int64, sorted and unique; ``probs``
    (nets, M, K) float32 each net's softmax; ``scored`` (nets, M, K) float32 each net's probe output;
    ``sampled`` (M',) int64 sorted, the training images' probe keys (`qmix_cli.engine.probe.image_keys`, which the
    audit computes anyway): only an image with one of them can be a training image, and only such images need
    the digest of all their pixels, which costs more (0.2 ms per 224-px RGB image on a 2-core CPU)."""

    keys: np.ndarray
    probs: np.ndarray
    scored: np.ndarray
    sampled: np.ndarray

    def __post_init__(self) -> None:
        """Raises ValueError for keys that are not sorted and unique, or arrays that do not fit them (a damaged
        ``model.pt``): `lookup` relies on both."""
        for name, values in (("keys", self.keys), ("probe keys", self.sampled)):
            if values.ndim != 1 or not (values[1:] > values[:-1]).all():  # np.diff would overflow on int64 keys
                raise ValueError(f"read-out {name} are not sorted and unique")
        _check_fit(self.keys, self.probs, self.scored)

    @classmethod
    def from_training(
        cls, keys: np.ndarray, probs: np.ndarray, scored: np.ndarray, *, sampled: np.ndarray
    ) -> TrainingReadouts | None:
        """Keep training's read-outs, (nets, N, K) each, of images with `pixel_digests` ``keys`` (N,) and probe
        keys ``sampled`` (N,); None when they would exceed `READOUT_BYTES`. Copies of an image share a digest and,
        their pixels being equal, their read-outs: one row is kept per digest."""
        keys = np.asarray(keys, dtype=np.int64)
        probs, scored = np.asarray(probs, dtype=np.float32), np.asarray(scored, dtype=np.float32)
        _check_fit(keys, probs, scored, sampled)
        unique, first = np.unique(keys, return_index=True)
        nets, _, classes = probs.shape
        if 2 * nets * len(unique) * classes * probs.itemsize > READOUT_BYTES:
            return None
        sampled = np.unique(np.asarray(sampled, dtype=np.int64))
        return cls(keys=unique, probs=probs[:, first], scored=scored[:, first], sampled=sampled)

    def find(self, images: np.ndarray, sampled: np.ndarray) -> np.ndarray:
        """(N,) int64 the row of each of ``images`` (N, C, H, W) uint8 with probe keys ``sampled`` (N,), or -1 for
        an image the run does not know: digests are computed only for images whose probe key a training image
        has."""
        found = np.full(len(images), -1, dtype=np.int64)
        maybe = np.flatnonzero(np.isin(np.asarray(sampled, dtype=np.int64), self.sampled))
        if len(maybe):
            found[maybe] = self.lookup(pixel_digests(images[maybe] if len(maybe) < len(images) else images))
        return found

    def lookup(self, keys: np.ndarray) -> np.ndarray:
        """(N,) int64 the row of each of ``keys`` (N,), or -1 for an image the run does not know."""
        return sorted_rows(self.keys, keys)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors only, so checkpoints load with ``weights_only=True``."""
        return {
            "keys": torch.from_numpy(self.keys),
            "probs": torch.from_numpy(self.probs),
            "scored": torch.from_numpy(self.scored),
            "sampled": torch.from_numpy(self.sampled),
        }

    @classmethod
    def from_state_dict(cls, state: dict) -> TrainingReadouts:
        return cls(
            keys=state["keys"].numpy(),
            probs=state["probs"].float().numpy(),
            scored=state["scored"].float().numpy(),
            sampled=state["sampled"].numpy(),
        )


def _check_fit(keys: np.ndarray, probs: np.ndarray, scored: np.ndarray, sampled: np.ndarray | None = None) -> None:
    """Read-outs (nets, N, K) twice, for N keys (and N probe keys where given), or ValueError."""
    fits = probs.ndim == 3 and probs.shape == scored.shape and probs.shape[1] == len(keys)
    if not fits or (sampled is not None and len(sampled) != len(keys)):
        raise ValueError(f"read-outs {probs.shape} and {scored.shape} do not fit {len(keys)} keys")
