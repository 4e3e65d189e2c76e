"""Where the audit probes are fitted fastest: on the host with how many threads, or on the GPU.

At the end of training `qmix train` fits one out-of-fold probe per net read (`qmix_cli.engine.probe.fit_probe`: five
full-batch L-BFGS fits of a multinomial logistic regression on the encoder's features; the net's neighbour vote,
fitted after, is not timed here). Features up to
`PROBE_HOST_BYTES` are fitted on the host, larger ones on the GPU when they fit (`probe_fit_device`), a crossover
guessed from two measurements (docs/decisions.md, "Fourteenth round"). This times `fit_probe` on synthetic
features of a resnet18's two probe stages (768 floats per image, 10 classes) for several dataset sizes: on the host
with 1, 4 and every thread torch uses, and on the GPU when there is one, side by side in one run.

Usage::

    python benchmarks/bench_probe_fit.py --sizes 2000,8000,32000 --json probe_fit.json
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

from qmix_cli.engine.probe import fit_probe, image_keys

FEATURES = 768  # a resnet18's two probe stages (512 pooled + 256 from the stage before)
CLASSES = 10


def synthetic_features(n: int, *, seed: int) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """Features with class structure as a trained encoder gives (class means plus noise, 20 % of labels flipped),
    their labels and image keys."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, CLASSES, n)
    centres = rng.normal(size=(CLASSES, FEATURES))
    x = centres[truth] * 0.3 + rng.normal(size=(n, FEATURES))
    labels = np.where(rng.random(n) < 0.2, rng.integers(0, CLASSES, n), truth)
    images = rng.integers(0, 256, (n, 1, 4, 4), dtype=np.uint8)  # only for their keys (folds, copies)
    return torch.tensor(x, dtype=torch.float32), labels, image_keys(images, seed=seed)


def seconds_to_fit(features: torch.Tensor, labels: np.ndarray, keys: np.ndarray, device: torch.device) -> float:
    x = features.to(device)
    sync(device)
    start = time.perf_counter()
    probe = fit_probe(x, labels, keys, num_classes=CLASSES)
    probe.weight.sum().item()  # the fit's last work done, on any device
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="2000,8000,32000", help="dataset sizes (images)")
    parser.add_argument("--threads", default="1,4,0", help="host thread counts (0: torch's default, always timed)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    default_threads = torch.get_num_threads()
    # torch's default is always timed: it is what `qmix train` fits with, and the ratios are taken against it.
    counts = dict.fromkeys([*(int(s) or default_threads for s in args.threads.split(",")), default_threads])
    settings = [(f"host, {t} threads", torch.device("cpu"), t) for t in counts]
    if torch.cuda.is_available():
        settings.append(("GPU", torch.device("cuda"), default_threads))
    # One small untimed fit per setting first: thread pools, CUDA context and kernels are paid for once.
    warm = synthetic_features(500, seed=args.seed)
    rows = []
    for name, device, threads in settings:
        torch.set_num_threads(threads)
        seconds_to_fit(*warm, device)
        for n in (int(s) for s in args.sizes.split(",")):
            seconds = seconds_to_fit(*synthetic_features(n, seed=args.seed), device)
            rows.append({"setting": name, "images": n, "MiB": n * FEATURES * 4 / 2**20, "seconds": seconds})
            print(rows[-1], flush=True)
    torch.set_num_threads(default_threads)

    table = pd.DataFrame(rows).pivot(index="images", columns="setting", values="seconds")
    base = f"host, {default_threads} threads"
    for column in list(table.columns):
        if column != base:
            table[f"{base} / {column}"] = table[base] / table[column]
    env = {
        "torch": torch.__version__,
        "host": platform.processor() or platform.machine(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "command": "python " + " ".join(sys.argv),
    }
    print(env)
    print(markdown_table(table.round(3), first="images"))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"env": env, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
