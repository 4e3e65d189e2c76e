"""Delivering uint8 image batches to the training device.

Small caches (most CPU runs, and any dataset that fits in a quarter of the GPU's free memory) live on the device
as one tensor and a batch is a single index operation. Larger ones stay memory-mapped on disk and are gathered by
DataLoader workers into pinned memory, then copied without blocking so the copy overlaps compute.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

CPU_RESIDENT_LIMIT = 2 << 30  # bytes
# A memory-mapped cache goes to the GPU this many bytes at a time: host memory then holds one chunk, not the
# whole cache (which may be a quarter of the GPU's memory).
UPLOAD_CHUNK = 256 << 20


class _GatherBatches(TorchDataset):
    """Item ``i`` is the uint8 batch for ``batches[i]``, read from ``images``, the cache's memory map as the run
    opened it: in this process and in forked workers, a cache file deleted meanwhile stays readable (the mapping
    holds it). Spawned workers are sent the path and open the file themselves."""

    def __init__(self, images: np.memmap, batches: Sequence[np.ndarray]) -> None:
        self.path = Path(images.filename)
        self.batches = batches
        self._images: np.ndarray | None = images

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> torch.Tensor:
        if self._images is None:
            self._images = np.load(self.path, mmap_mode="r")
        return torch.from_numpy(np.ascontiguousarray(self._images[self.batches[i]]))

    def __getstate__(self) -> dict:
        # Send workers the path, never the mapped pages.
        return {"path": self.path, "batches": self.batches, "_images": None}


def device_has_room(device: torch.device, nbytes: int, *, share: float) -> bool:
    """Whether ``nbytes`` fit in ``share`` of a GPU's free memory; the CPU always has room (host memory limits are
    the callers' to set)."""
    if device.type != "cuda":
        return True
    free, _ = torch.cuda.mem_get_info(device)
    return nbytes < free * share


def resident_copy(images: np.ndarray, device: torch.device, *, chunk_bytes: int = UPLOAD_CHUNK) -> torch.Tensor:
    """``images`` (N, ...) as one tensor on ``device``, read ``chunk_bytes`` at a time (at least one image): host
    memory holds the result (on the CPU) or one chunk (on a GPU) besides the memory map, never a second copy."""
    dtype = torch.from_numpy(np.empty(0, dtype=images.dtype)).dtype
    out = torch.empty(images.shape, dtype=dtype, device=device)
    rows = max(1, chunk_bytes // max(images[:1].nbytes, 1))
    for start in range(0, len(images), rows):
        out[start : start + rows].copy_(torch.from_numpy(np.array(images[start : start + rows])))
    return out


class ImageStore:
    """All training images at the training size, served as uint8 (B, C, H, W) batches on ``device``."""

    def __init__(self, images: np.ndarray, *, device: torch.device, workers: int = 0) -> None:
        self.mapped = images if isinstance(images, np.memmap) else None
        self.shape = images.shape
        self.device = device
        self.workers = workers
        self.tensor: torch.Tensor | None = None
        if self.mapped is None or self._fits(images.nbytes):
            self.tensor = resident_copy(images, device)
            self.mapped = None

    def _fits(self, nbytes: int) -> bool:
        if self.device.type == "cuda":
            return device_has_room(self.device, nbytes, share=0.25)
        return nbytes <= CPU_RESIDENT_LIMIT

    def __len__(self) -> int:
        return self.shape[0]

    def iterate(self, batches: Sequence[np.ndarray]) -> Iterator[torch.Tensor]:
        """Yield the batches in order."""
        if self.tensor is not None:
            for idx in batches:
                yield self.tensor[index_tensor(idx, self.device)]
            return
        assert self.mapped is not None
        loader = DataLoader(
            _GatherBatches(self.mapped, batches),
            batch_size=None,
            shuffle=False,
            num_workers=self.workers,
            pin_memory=self.device.type == "cuda",
            prefetch_factor=4 if self.workers > 0 else None,
        )
        for batch in loader:
            yield batch.to(self.device, non_blocking=True)


def index_tensor(idx: np.ndarray, device: torch.device) -> torch.Tensor:
    """``idx`` as an int64 tensor on ``device``, copied without blocking: a blocking host-to-GPU copy waits for
    everything queued on the GPU, which then idles while the host prepares the next step."""
    return torch.from_numpy(np.asarray(idx, dtype=np.int64)).to(device, non_blocking=True)


def epoch_size(n: int, *, batch_size: int, drop_last: bool) -> int:
    """How many of ``n`` images `epoch_batches` visits: a short last batch is dropped only when asked and when
    there is at least one full batch (so a dataset smaller than one batch still trains)."""
    return n - n % batch_size if drop_last and n >= batch_size else n


def epoch_batches(indices: np.ndarray, *, batch_size: int, gen: torch.Generator, drop_last: bool) -> list[np.ndarray]:
    """Shuffle ``indices`` with ``gen`` and cut them into batches (the last one dropped if short and asked). A last
    batch of one image joins the one before: BatchNorm in training cannot normalise a single image whose feature
    maps are 1 × 1 (resnet18 at 32 px and less), so a dataset of ``k * batch_size + 1`` images failed its warm-up."""
    if len(indices) == 0:
        return []
    order = indices[torch.randperm(len(indices), generator=gen).numpy()]
    stop = epoch_size(len(order), batch_size=batch_size, drop_last=drop_last)
    batches = [order[i : i + batch_size] for i in range(0, stop, batch_size)]
    if batch_size > 1 and len(batches) > 1 and len(batches[-1]) == 1:  # (a batch size of 1 is the user's choice)
        batches[-2:] = [np.concatenate(batches[-2:])]
    return batches
