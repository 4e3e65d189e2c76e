"""The decoded-image cache against decoding every epoch: how fast can an epoch's batches reach the model?

Both paths deliver the same thing, shuffled uint8 batches of every training image at the training size turned
into one strong view each (the training step's input), measured without any model so that only the data path
is timed:

* ``decoded cache``: what `qmix train` does, `ImageStore` over the memory-mapped uint8 cache, views made
  batch-wise with one `grid_sample` per batch;
* ``decode every epoch``: a torch `DataLoader` whose dataset opens, decodes and resizes each file with Pillow
  (the usual per-image pipeline), then the same batch-wise views, with the same number of worker processes.

It also times the first load of a dataset never seen before (empty cache directory), up to the memory-mapped
array an epoch reads: every image checked by `create_dataset` and then decoded into the cache by `cached_images`,
against the check filling the cache in the same pass (``create_dataset(decode_to=...)``, what `qmix train` and
`qmix audit` do).

Usage::

    python benchmarks/bench_datapath.py --data fashion-mnist:test --epochs 2
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch
from _common import first_load
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

from qmix_cli.data.builtin import is_builtin, materialise_builtin
from qmix_cli.data.cache import DecodeTarget, cached_images
from qmix_cli.data.images import read_image
from qmix_cli.data.manifest import create_dataset
from qmix_cli.data.transforms import channel_stats, make_view, strong_spec
from qmix_cli.engine.batches import ImageStore, epoch_batches


class DecodingDataset(TorchDataset):
    def __init__(self, paths: list, *, size: int, channels: int) -> None:
        self.paths, self.size, self.channels = paths, size, channels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        img = read_image(self.paths[i], channels=self.channels, size=self.size)
        return torch.from_numpy(img.transpose(2, 0, 1).copy())  # Pillow's buffer is read-only; torch wants to own it


def cache_epoch(store: ImageStore, *, batch_size: int, gen: torch.Generator, norm, spec) -> int:
    batches = epoch_batches(np.arange(len(store)), batch_size=batch_size, gen=gen, drop_last=False)
    seen = 0
    for x in store.iterate(batches):
        seen += len(make_view(x, spec, gen, norm))
    return seen


def decode_epoch(dataset: DecodingDataset, *, batch_size: int, workers: int, gen: torch.Generator, norm, spec) -> int:
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers, generator=gen)
    seen = 0
    for x in loader:
        seen += len(make_view(x, spec, gen, norm))
    return seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="fashion-mnist:test")
    parser.add_argument("--img-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--first-loads", type=int, default=1, help="first loads timed each way, alternated")
    args = parser.parse_args()

    ds = create_dataset(args.data)
    channels = ds.channels or 3
    images = cached_images(ds, size=args.img_size, channels=channels)  # built once, outside the timing
    norm = channel_stats(images)
    spec = strong_spec(hflip=True, rotation=15.0)
    store = ImageStore(images, device=torch.device("cpu"))
    decoding = DecodingDataset(ds.abs_paths, size=args.img_size, channels=channels)

    timings: dict[str, list[float]] = {"decoded cache": [], "decode every epoch": []}
    for epoch in range(args.epochs):  # interleaved, so both paths see the same machine load
        gen = torch.Generator().manual_seed(epoch)
        start = time.perf_counter()
        n = cache_epoch(store, batch_size=args.batch_size, gen=gen, norm=norm, spec=spec)
        timings["decoded cache"].append(time.perf_counter() - start)
        start = time.perf_counter()
        m = decode_epoch(decoding, batch_size=args.batch_size, workers=args.workers, gen=gen, norm=norm, spec=spec)
        timings["decode every epoch"].append(time.perf_counter() - start)
        assert n == m == len(ds)

    median = {k: float(np.median(v)) for k, v in timings.items()}
    ratio = median["decode every epoch"] / median["decoded cache"]
    print(f"{len(ds):,} images at {args.img_size} px, batch {args.batch_size}, {args.workers} decode workers, "
          f"{torch.get_num_threads()} torch threads, median of {args.epochs} epochs")  # fmt: skip
    print("| data path | s / epoch | images/s |\n|---|---:|---:|")
    for name, seconds in median.items():
        print(f"| {name} | {seconds:.2f} | {len(ds) / seconds:,.0f} |")
    print(f"\ndecoded cache / decode every epoch throughput = {ratio:.1f}x")

    # Built-in data is materialised once, outside the timing: only checking and decoding are timed.
    source = str(materialise_builtin(args.data) if is_builtin(args.data) else args.data)
    loads: dict[str, list[float]] = {"check, then decode into the cache": [], "check filling the cache": []}
    for _ in range(args.first_loads):
        for name, fill in zip(loads, (False, True), strict=True):
            loads[name].append(first_load(source, target=DecodeTarget(args.img_size), fill=fill)[0])
    first = {k: float(np.median(v)) for k, v in loads.items()}
    fill_ratio = first["check, then decode into the cache"] / first["check filling the cache"]
    print(f"\nfirst load, empty cache, median of {args.first_loads}:\n| first load | s | images/s |\n|---|---:|---:|")
    for name, seconds in first.items():
        print(f"| {name} | {seconds:.2f} | {len(ds) / seconds:,.0f} |")
    print(f"\ncheck filling the cache / check, then decode = {fill_ratio:.2f}x")
    result = {"median_s": median, "ratio": ratio, "first_load_s": first, "first_load_ratio": fill_ratio}
    print(json.dumps({**result, "images": len(ds)}))


if __name__ == "__main__":
    main()
