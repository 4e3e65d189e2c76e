"""Views of a batch, computed batch-wise on the training device.

Images arrive as uint8 (B, C, H, W) tensors already at the training size. Each view is one affine resampling
(flip, rotation, zoom, shift composed into a single 2×3 matrix per image) plus, for strong views, colour jitter
and random grayscale: no per-image Python, and on a GPU the work stays on the GPU. Random parameters are drawn
on the CPU from an explicit `torch.Generator`, so a run is reproducible whatever the device, and copied to it
without blocking (a blocking copy would make the host wait for all the GPU's queued work at every view).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class ViewSpec:
    """Strength of one kind of view. ``zoom`` is the range of the crop's side as a fraction of the image."""

    hflip: bool = True
    rotation: float = 15.0
    shift: float = 0.125
    zoom: tuple[float, float] = (1.0, 1.0)
    jitter: float = 0.0
    grayscale_p: float = 0.0


def weak_spec(*, hflip: bool, rotation: float) -> ViewSpec:
    return ViewSpec(hflip=hflip, rotation=rotation, shift=0.125)


def strong_spec(*, hflip: bool, rotation: float) -> ViewSpec:
    # Strong = weak geometry plus a random resized crop, colour jitter and grayscale (METHOD.md).
    return ViewSpec(hflip=hflip, rotation=rotation, shift=0.125, zoom=(0.7, 1.0), jitter=0.4, grayscale_p=0.2)


@dataclass(frozen=True)
class Normalise:
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.on(x.device, dtype=x.dtype)(x)

    def on(self, device: torch.device, *, dtype: torch.dtype = torch.float32) -> PlacedNormalise:
        """This normalisation with its constants built once on ``device``: a training step makes several views,
        and building the constants for each is, on a GPU, two host-to-device copies per view."""
        mean = torch.tensor(self.mean, dtype=dtype).view(1, -1, 1, 1).to(device)
        std = torch.tensor(self.std, dtype=dtype).view(1, -1, 1, 1).to(device)
        return PlacedNormalise(mean, std)


@dataclass(frozen=True)
class PlacedNormalise:
    """`Normalise` placed on a device: ``mean`` and ``std`` (1, C, 1, 1) tensors of the views' dtype."""

    mean: torch.Tensor
    std: torch.Tensor

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def channel_stats(
    images, *, sample: int = 4096, seed: int = 0, device: torch.device | str = "cpu", chunk: int = 256
) -> Normalise:
    """Per-channel mean and std of a uint8 (N, C, H, W) array, estimated on a fixed random subset of ``sample``
    images, read ``chunk`` images at a time and summed on ``device`` in float64.

    Chunks, because a float copy of the whole subset would be 2.5 GB at 224 px RGB (4,096 × 3 × 224 × 224 × 4
    bytes) for a pair of numbers per channel; the training device, because on a GPU the sums cost nothing while the
    host's took 1.5 s of a 3,000-image run's setup on the H200 (docs/decisions.md, "Sixteenth round").
    """
    import numpy as np

    n, c, h, w = images.shape
    idx = np.sort(np.random.default_rng(seed).choice(n, size=min(n, sample), replace=False))
    sums = torch.zeros(2, c, dtype=torch.float64, device=device)
    for start in range(0, len(idx), chunk):
        x = torch.from_numpy(np.asarray(images[idx[start : start + chunk]])).to(device).float()
        sums[0] += x.sum(dim=(0, 2, 3), dtype=torch.float64)
        sums[1] += x.square().sum(dim=(0, 2, 3), dtype=torch.float64)
    count = max(len(idx) * h * w, 2)
    mean = sums[0] / count
    # The unbiased variance of the pixel values, then both scaled from [0, 255] to [0, 1].
    var = ((sums[1] - sums[0] * mean) / (count - 1)).clamp_min(0.0)
    std = (var.sqrt() / 255.0).clamp_min(1e-3)
    return Normalise(tuple((mean / 255.0).tolist()), tuple(std.tolist()))


def _affine(batch: int, spec: ViewSpec, gen: torch.Generator) -> torch.Tensor:
    u = torch.rand(batch, 6, generator=gen)
    flip = torch.where(u[:, 0] < 0.5, -1.0, 1.0) if spec.hflip else torch.ones(batch)
    angle = (u[:, 1] * 2 - 1) * math.radians(spec.rotation)
    side = spec.zoom[0] + (spec.zoom[1] - spec.zoom[0]) * u[:, 2]
    # The crop may move as far as it can while staying inside the image, plus the plain shift.
    room = (1 - side) + spec.shift * 2
    tx, ty = (u[:, 3] * 2 - 1) * room, (u[:, 4] * 2 - 1) * room
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack(
        [
            torch.stack([cos * side * flip, -sin * side, tx], dim=1),
            torch.stack([sin * side * flip, cos * side, ty], dim=1),
        ],
        dim=1,
    )
    return theta


def _colour(x: torch.Tensor, spec: ViewSpec, gen: torch.Generator) -> torch.Tensor:
    b = x.shape[0]
    u = torch.rand(b, 4, generator=gen).to(x.device, x.dtype, non_blocking=True)
    j = spec.jitter
    brightness = (1 + (u[:, 0] * 2 - 1) * j).view(b, 1, 1, 1)
    contrast = (1 + (u[:, 1] * 2 - 1) * j).view(b, 1, 1, 1)
    x = x * brightness
    gray = x.mean(dim=1, keepdim=True)
    x = (x - gray.mean(dim=(2, 3), keepdim=True)) * contrast + gray.mean(dim=(2, 3), keepdim=True)
    if x.shape[1] == 3:
        saturation = (1 + (u[:, 2] * 2 - 1) * j).view(b, 1, 1, 1)
        gray = x.mean(dim=1, keepdim=True)
        x = gray + (x - gray) * saturation
        to_gray = (u[:, 3] < spec.grayscale_p).view(b, 1, 1, 1)
        x = torch.where(to_gray, x.mean(dim=1, keepdim=True).expand_as(x), x)
    return x.clamp(0, 1)


def make_view(x: torch.Tensor, spec: ViewSpec, gen: torch.Generator, norm: Normalise | PlacedNormalise) -> torch.Tensor:
    """One random view of a uint8 batch (B, C, H, W), returned normalised as float32 on ``x``'s device."""
    xf = x.float().div_(255.0)
    theta = _affine(x.shape[0], spec, gen).to(x.device, non_blocking=True)
    grid = F.affine_grid(theta, list(xf.shape), align_corners=False)
    xf = F.grid_sample(xf, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if spec.jitter > 0:
        xf = _colour(xf, spec, gen)
    return norm(xf)


def eval_view(x: torch.Tensor, norm: Normalise | PlacedNormalise) -> torch.Tensor:
    """The deterministic view used for separation and audit: just scaling and normalisation."""
    return norm(x.float().div_(255.0))
