"""Channels-last against the default (channels-first) memory layout, per backbone and image size.

`qmix_cli.engine.models.channels_last_on` decides the layout the nets and their inputs use on each device. This
times, for each backbone and size, the two kinds of work the engine asks of a net, in both layouts, interleaved
so that both see the same machine state:

* ``train ms``: one training step of ``--batch-size`` images (forward, cross-entropy, backward, SGD step);
* ``eval ms``: one no-grad forward of ``2 x --batch-size`` images in eval mode (scoring and the audit).

Forwards run under the mixed precision `qmix train` uses on the device (bf16 or fp16 on CUDA, none on the CPU;
``--no-amp``: full precision everywhere), since tensor cores and their preferred layout go together.

Each cell is the median over ``--repeats`` rounds of ``--steps`` steps after two warm-up steps; ``ratio`` is
channels-last time over default time (below 1: channels-last is faster). With ``--end-to-end N`` it also trains and
audits qmix on ``N`` Fashion-MNIST images (``test_resnet`` at 32 px as in RESULTS.md, 2 warm-up + 2 semi-supervised
epochs) once per layout, switching `channels_last_on` in this process, and reports the whole run's seconds.

Usage (CPU; on a GPU, ``gpu_check.sh layout``)::

    python benchmarks/bench_memory_format.py --models test_resnet:32:1,resnet18:32:3,resnet18:64:3 --end-to-end 3000
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import pandas as pd
import timm
import torch
from _common import markdown_table, sync

from qmix_cli.engine.device import amp_dtype
from qmix_cli.engine.steps import autocast

LAYOUTS = {"default": torch.contiguous_format, "channels-last": torch.channels_last}
# The end-to-end run: RESULTS.md's benchmark scale, shortened to two epochs of each phase.
E2E_SETTING = dict(method="qmix", model="test_resnet", img_size=32, batch_size=64, epochs=4, warmup_epochs=2)


def step_seconds(
    model: str,
    *,
    size: int,
    channels: int,
    layout: str,
    batch: int,
    steps: int,
    device: torch.device,
    amp: torch.dtype | None,
) -> tuple[float, float]:
    """Seconds per training step and per eval forward of one freshly built ``model`` in ``layout``."""
    fmt = LAYOUTS[layout]
    torch.manual_seed(0)
    net = timm.create_model(model, num_classes=10, in_chans=channels).to(device).to(memory_format=fmt)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, channels, size, size, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, 10, (batch,), device=device)

    def train_step() -> None:
        with autocast(device, amp):
            loss = torch.nn.functional.cross_entropy(net(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def timed(fn) -> float:
        for _ in range(2):
            fn()
        sync(device)
        start = time.perf_counter()
        for _ in range(steps):
            fn()
        sync(device)
        return (time.perf_counter() - start) / steps

    net.train()
    train = timed(train_step)
    net.eval()
    x_eval = torch.randn(2 * batch, channels, size, size, device=device).contiguous(memory_format=fmt)
    with torch.no_grad(), autocast(device, amp):
        evaluate = timed(lambda: net(x_eval))
    return train, evaluate


def layout_rows(args: argparse.Namespace, device: torch.device) -> pd.DataFrame:
    rows = []
    for spec in filter(None, args.models.split(",")):
        model, size, channels = spec.split(":")
        times: dict[str, dict[str, list[float]]] = {name: {"train": [], "eval": []} for name in LAYOUTS}
        for _ in range(args.repeats):
            for layout in LAYOUTS:  # interleaved: a drift of the machine hits both layouts alike
                train, evaluate = step_seconds(
                    model,
                    size=int(size),
                    channels=int(channels),
                    layout=layout,
                    batch=args.batch_size,
                    steps=args.steps,
                    device=device,
                    amp=amp_dtype(device, args.amp),
                )
                times[layout]["train"].append(train)
                times[layout]["eval"].append(evaluate)
        med = {name: {kind: statistics.median(v) for kind, v in kinds.items()} for name, kinds in times.items()}
        row = {"net": f"{model}, {size} px, {channels} ch"}
        for kind in ("train", "eval"):
            row[f"{kind} ms default"] = round(1000 * med["default"][kind], 1)
            row[f"{kind} ms channels-last"] = round(1000 * med["channels-last"][kind], 1)
            row[f"{kind} ratio"] = round(med["channels-last"][kind] / med["default"][kind], 3)
        rows.append(row)
        print(row, file=sys.stderr, flush=True)
    return pd.DataFrame(rows)


def end_to_end(args: argparse.Namespace, device: torch.device) -> pd.DataFrame:
    """Train and audit qmix once per layout, `channels_last_on` switched for the whole run."""
    from _common import stratified_subset

    from qmix_cli import api

    rows = []
    with tempfile.TemporaryDirectory(prefix="qmix-layout-") as tmp:
        work = Path(tmp)
        clean = stratified_subset("fashion-mnist", size=args.end_to_end, seed=0, out=work / "clean.csv")
        noisy = work / "noisy"
        api.corrupt(clean, noisy, preset="paper-15", seed=0, quiet=True)
        # One untimed epoch first: decoding the images into the cache, their checks and torch's first-use work
        # would otherwise all be charged to whichever layout runs first.
        prime = {**E2E_SETTING, "epochs": 1, "warmup_epochs": 1}
        api.train(noisy, work / "prime", **prime, device=str(device), quiet=True)
        for layout in LAYOUTS:
            on = layout == "channels-last"
            with mock.patch("qmix_cli.engine.models.channels_last_on", lambda device, *, compiled=False, on=on: on):
                start = time.perf_counter()
                run = work / f"run-{layout}"
                api.train(noisy, run, **E2E_SETTING, device=str(device), quiet=True)
                trained = time.perf_counter() - start
                start = time.perf_counter()
                api.audit(noisy, run=run, device=str(device), quiet=True, recompute=True)
                audited = time.perf_counter() - start
            rows.append({"layout": layout, "train s": round(trained, 1), "audit s": round(audited, 1)})
            print(rows[-1], file=sys.stderr, flush=True)
    table = pd.DataFrame(rows)
    table["ratio to default"] = (table["train s"] + table["audit s"]) / (table["train s"] + table["audit s"]).iloc[0]
    return table.round(3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--models",
        default="test_resnet:32:1,resnet18:32:3,resnet18:64:3",
        help="comma-separated MODEL:PX:CHANNELS (any timm model name); empty: no step timings",
    )
    parser.add_argument("--batch-size", type=int, default=128, help="training batch; the eval batch is twice this")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per round")
    parser.add_argument("--repeats", type=int, default=3, help="rounds per layout (medians reported)")
    parser.add_argument("--end-to-end", type=int, default=0, help="also train + audit qmix on this many images")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--amp", action=argparse.BooleanOptionalAction, default=True,
                        help="mixed precision where qmix train uses it (CUDA)")  # fmt: skip
    parser.add_argument("--json", type=Path, help="also write the tables here")
    args = parser.parse_args()
    if args.repeats < 1 or args.steps < 1:
        parser.error("--repeats and --steps must be at least 1")
    device = torch.device(args.device)

    steps = layout_rows(args, device)
    whole = end_to_end(args, device) if args.end_to_end else None
    amp = amp_dtype(device, args.amp)
    print(f"device {device}, autocast {amp}, torch {torch.__version__}, timm {timm.__version__}, "
          f"{torch.get_num_threads()} threads, {platform.machine()}")  # fmt: skip
    if len(steps):
        print(markdown_table(steps.set_index("net"), first="net"))
    if whole is not None:
        print()
        print(markdown_table(whole.set_index("layout"), first="layout"))
    if args.json:
        out = {"steps": steps.to_dict("records"), "end_to_end": None if whole is None else whole.to_dict("records")}
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
