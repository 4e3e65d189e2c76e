"""What the audit's neighbour vote costs (`qmix_cli.engine.neighbours`), by training-set size and similarity block.

At the end of training each net fits one vote (principal axes of its probes' features, a float16 bank) and votes
once for every training image (N × N similarities, leave-one-out); every audit then votes for each batch of
images against the bank. This times the three on synthetic features shaped like a net's two probe feature sets
(a final and a warm-up snapshot's, 288 floats each as the benchmark's `test_resnet` gives; a resnet18's would be
768), for several training-set sizes, and the training-set vote for several similarity blocks (queries × bank
rows computed at once), side by side in one run: the block that suits a host's cache need not suit a GPU.

Usage::

    python benchmarks/bench_vote.py --sizes 5000,20000 --json vote.json
    python benchmarks/bench_vote.py --device cuda --sizes 20000,100000 --blocks 22,24,26
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time

import numpy as np
import pandas as pd
import torch
from _common import markdown_table, sync

from qmix_cli.engine import neighbours
from qmix_cli.engine.neighbours import fit_neighbour_vote

CLASSES = 10


def synthetic_feature_sets(
    n: int, *, widths: list[int], seed: int
) -> tuple[list[torch.Tensor], np.ndarray, np.ndarray]:
    """Feature sets with class structure (class means plus noise, 20 % of labels flipped), their labels and keys."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, CLASSES, n)
    sets = []
    for width in widths:
        centres = rng.normal(size=(CLASSES, width))
        sets.append(torch.tensor(centres[truth] * 0.3 + rng.normal(size=(n, width)), dtype=torch.float32))
    labels = np.where(rng.random(n) < 0.2, rng.integers(0, CLASSES, n), truth)
    return sets, labels, rng.integers(-(2**62), 2**62, n)


def median_seconds(work, *, repeats: int, device: torch.device) -> float:
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        work()
        sync(device)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def measure(n: int, *, args: argparse.Namespace, device: torch.device) -> dict[str, float]:
    """One training-set size: the fit, the training-set vote for each block, and an audit batch's vote."""
    widths = [int(w) for w in args.widths.split(",")]
    sets, labels, keys = synthetic_feature_sets(n, widths=widths, seed=args.seed)
    sets = [s.to(device) for s in sets]
    vote = fit_neighbour_vote(sets, labels, keys, num_classes=CLASSES)

    def fit() -> None:
        fit_neighbour_vote(sets, labels, keys, num_classes=CLASSES)

    row = {"images": n, "fit s": median_seconds(fit, repeats=args.repeats, device=device)}
    for power in (int(b) for b in args.blocks.split(",")):

        def training_vote(entries: int = 1 << power) -> None:
            vote.probs(sets, keys, block_entries=entries)

        row[f"training-set vote s, 2^{power} block"] = median_seconds(
            training_vote, repeats=args.repeats, device=device
        )
    batch = [s[: args.batch_size] for s in sets]
    unseen = np.arange(len(batch[0]), dtype=np.int64)  # keys the bank does not hold: every neighbour votes

    def audit_vote() -> None:
        vote.probs(batch, unseen)

    row["audit vote ms per batch"] = 1000 * median_seconds(audit_vote, repeats=max(args.repeats, 10), device=device)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="5000,20000", help="training-set sizes (images)")
    parser.add_argument("--widths", default="288,288", help="widths of the feature sets the vote reads")
    parser.add_argument("--blocks", default="22,24", help="similarity blocks, as powers of two of entries")
    parser.add_argument("--batch-size", type=int, default=512, help="images per audit batch")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    blocks = [int(b) for b in args.blocks.split(",")]
    default = neighbours._SIM_BLOCK if device.type == "cpu" else neighbours._SIM_BLOCK_GPU

    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        rows.append(measure(n, args=args, device=device))
        print(json.dumps(rows[-1]), flush=True)

    table = pd.DataFrame(rows).set_index("images")
    first = f"training-set vote s, 2^{blocks[0]} block"
    for power in blocks[1:]:
        table[f"2^{power} / 2^{blocks[0]}"] = table[f"training-set vote s, 2^{power} block"] / table[first]
    print(
        f"\n{device}, {torch.get_num_threads()} host threads, feature sets {args.widths}, {neighbours.BANK_DIM} axes, "
        f"k = {neighbours.NEIGHBOURS}; default block 2^{default.bit_length() - 1}\n"
    )
    print(markdown_table(table.round(3), first="images"))
    if args.json:
        meta = {"device": str(device), "threads": torch.get_num_threads(), "widths": args.widths, "command": sys.argv}
        meta["machine"] = platform.machine()
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
