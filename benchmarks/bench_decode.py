"""First load of large JPEG photographs: decoded at their DCT scale against decoded whole, side by side.

A dataset of camera or fundus photographs (thousands of pixels a side) is read at a training size of a few hundred.
`qmix_cli.data.images` decodes a JPEG that will be shrunk at the smallest of its DCT scales (1/2, 1/4, 1/8) still at
least that size; this times the first load (every image checked, filling the decoded cache in the same pass, up to
the memory-mapped array an epoch reads: what `qmix train` does on new data, channels left to the data) with that and
with every JPEG decoded whole, alternated, each from an empty cache directory, and compares the cached pixels.

The photographs are made from scikit-image's fundus photograph (`skimage.data.retina`, 1,411 px): random crops of
900-1,411 px, flipped and rotated by quarter turns, saved as JPEG (quality 90) in two class folders.

Usage::

    python benchmarks/bench_decode.py --photos 400 --img-size 224
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
from _common import first_load
from PIL import Image
from skimage import data as skdata

from qmix_cli.data.cache import DecodeTarget


def write_photos(root: Path, count: int, *, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    retina = skdata.retina()
    for i in range(count):
        side = int(rng.integers(900, retina.shape[0] + 1))
        top, left = rng.integers(0, retina.shape[0] - side + 1, size=2)
        crop = np.rot90(retina[top : top + side, left : left + side], k=int(rng.integers(4)))
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        folder = root / ("a" if i % 2 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.ascontiguousarray(crop)).save(folder / f"{i:05d}.jpg", quality=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=400)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=3, help="first loads timed each way, alternated")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="qmix-bench-photos-") as tmp:
        root = Path(tmp)
        write_photos(root, args.photos)
        megabytes = sum(p.stat().st_size for p in root.rglob("*.jpg")) / 2**20
        timings: dict[str, list[float]] = {"decoded whole, then resized": [], "decoded at the DCT scale": []}
        pixels = {}
        for _ in range(args.repeats):
            # Channels left to the data, as `qmix train` leaves them by default (`channels: auto`).
            seconds, pixels["whole"] = first_load(root, target=DecodeTarget(args.img_size, None, jpeg_scale=False))
            timings["decoded whole, then resized"].append(seconds)
            seconds, pixels["scaled"] = first_load(root, target=DecodeTarget(args.img_size, None))
            timings["decoded at the DCT scale"].append(seconds)

    median = {k: float(np.median(v)) for k, v in timings.items()}
    ratio = median["decoded whole, then resized"] / median["decoded at the DCT scale"]
    diff = np.abs(pixels["whole"].astype(np.int16) - pixels["scaled"].astype(np.int16))
    print(f"{args.photos} JPEG photos of 900-1,411 px ({megabytes:.0f} MB) read at {args.img_size} px, first load "
          f"from an empty cache, median of {args.repeats}")  # fmt: skip
    print("| first load | s | images/s |\n|---|---:|---:|")
    for name, seconds in median.items():
        print(f"| {name} | {seconds:.2f} | {args.photos / seconds:,.0f} |")
    print(f"\nDCT scale / whole throughput = {ratio:.2f}x; cached pixels differ by {diff.mean():.2f} on average "
          f"(0-255), at most {int(diff.max())}")  # fmt: skip
    print(json.dumps({"median_s": median, "ratio": ratio, "mean_abs_diff": float(diff.mean()), **vars(args)}))


if __name__ == "__main__":
    main()
