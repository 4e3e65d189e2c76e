"""A colour image dataset that needs no download: patches of ten real photographs, one class per photograph.

Every benchmark dataset available offline (Fashion-MNIST, scikit-learn's digits) is grey, while most users bring
colour photographs, and colour changes what the nets learn (hue and texture, not only shape) and what the
degradations do. This builds a ten-class RGB set from the colour photographs that ship with scikit-image and
scikit-learn (an astronaut, a cat, coffee, a rocket, a fundus photo, an immunohistochemistry slide, the Hubble
deep field, a motorbike, a Chinese temple, a flower): each image is a square crop of one photograph, of random
size and place, resized to ``size`` pixels; its class is the photograph.

Train and test patches never overlap: each photograph is cut into a 4 × 4 grid of cells, the seed gives a quarter
of the cells to the test split, and every crop lies inside one cell. Crops that are nearly flat (the fundus
photo's black surround, say) are drawn again, since no label could be checked on them.

Usage::

    python benchmarks/photo_patches.py /tmp/photos --per-class 500 --test-per-class 200 --seed 0

writes ``/tmp/photos/train/<class>/*.png`` and ``/tmp/photos/test/<class>/*.png``: image folders `qmix` reads
as they are.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image

GRID = 4  # cells per side; crops stay inside one cell, so the two splits share no pixel
TEST_CELLS = GRID * GRID // 4
MIN_STD = 8.0  # grey levels: a crop flatter than this shows nothing to tell its photograph by


def photographs() -> dict[str, np.ndarray]:
    """The ten colour photographs, by class name: (H, W, 3) uint8 each, 300 to 1,411 pixels a side."""
    import skimage.data as sk
    from sklearn.datasets import load_sample_image

    return {
        "astronaut": sk.astronaut(),
        "cat": sk.chelsea(),
        "coffee": sk.coffee(),
        "rocket": sk.rocket(),
        "fundus": sk.retina(),
        "histology": sk.immunohistochemistry(),
        "hubble": sk.hubble_deep_field(),
        "motorbike": sk.stereo_motorcycle()[0],
        "temple": load_sample_image("china.jpg"),
        "flower": load_sample_image("flower.jpg"),
    }


def split_cells(rng: np.random.Generator) -> dict[str, list[tuple[int, int]]]:
    """The grid cells of one photograph for each split (row, column), a quarter of them for the test split."""
    cells = [(r, c) for r in range(GRID) for c in range(GRID)]
    order = rng.permutation(len(cells))
    return {
        "test": [cells[i] for i in order[:TEST_CELLS]],
        "train": [cells[i] for i in order[TEST_CELLS:]],
    }


def crops(
    photo: np.ndarray, cells: list[tuple[int, int]], *, size: int, rng: np.random.Generator
) -> Iterator[np.ndarray]:
    """Endless (size, size, 3) uint8 patches of ``photo``, each a square crop inside one of ``cells`` whose side
    is between half and all of the cell's shorter side, resized to ``size``; nearly flat crops are skipped."""
    cell_h, cell_w = photo.shape[0] // GRID, photo.shape[1] // GRID
    side_max = min(cell_h, cell_w)
    while True:
        r, c = cells[rng.integers(len(cells))]
        side = int(rng.integers(side_max // 2, side_max + 1))
        top = r * cell_h + int(rng.integers(cell_h - side + 1))
        left = c * cell_w + int(rng.integers(cell_w - side + 1))
        patch = photo[top : top + side, left : left + side]
        if patch.mean(axis=2).std() < MIN_STD:
            continue
        yield np.asarray(Image.fromarray(patch).resize((size, size), Image.Resampling.LANCZOS))


def write_photo_patches(
    out: Path,
    *,
    per_class: int,
    test_per_class: int,
    size: int = 32,
    seed: int = 0,
    source: Callable[[], dict[str, np.ndarray]] = photographs,
) -> dict[str, Path]:
    """Write ``out/train`` and ``out/test`` image folders of photo patches (see the module's docstring).

    Returns
    -------
    dict
        ``{"train": out / "train", "test": out / "test"}``; the same seed writes the same bytes.
    """
    rng = np.random.default_rng(seed)
    counts = {"train": per_class, "test": test_per_class}
    for name, photo in source().items():
        for split, cells in split_cells(rng).items():
            folder = out / split / name
            folder.mkdir(parents=True, exist_ok=True)
            patches = crops(photo, cells, size=size, rng=rng)
            for i in range(counts[split]):
                Image.fromarray(next(patches)).save(folder / f"{name}_{i:05d}.png")
    return {split: out / split for split in counts}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--per-class", type=int, default=500)
    parser.add_argument("--test-per-class", type=int, default=200)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    paths = write_photo_patches(
        args.out, per_class=args.per_class, test_per_class=args.test_per_class, size=args.size, seed=args.seed
    )
    print(paths)


if __name__ == "__main__":
    main()
