"""Training and audit throughput, and how much of it the nets' own compute accounts for.

Trains a method on a corrupted subset and audits it, then times the same nets on *synthetic* batches: random
tensors already on the device, run through exactly the forward / backward / optimiser work the method asks of
the nets, with nothing else (no data path, no augmentation, no separation, no bookkeeping). For each phase:

* ``images/s``: training images over the measured seconds (an epoch from ``metrics.jsonl``, the median over the
  run's epochs of that phase after its first, `median_epoch`; the audit: `qmix_cli.api.audit` end to end with a
  warm cache);
* ``nets only s``: the seconds the same phase costs on synthetic batches, summed from per-image costs measured
  on batches of the phase's sizes;
* ``fraction``: nets only / measured, the share of the wall time the device spends on the nets (1.0: nothing
  but the nets; our goal on a GPU is at least 0.8).

What the phases hold, per net (``N`` training images, batch ``B``, two nets for qmix and dividemix):

* warm-up epoch: one training step of ``B`` images per batch;
* semi-supervised epoch: a no-grad forward of every image to score it, then per batch a training step of ``2B``
  images (two mixed strong views, with the projection head) and no-grad forwards of ``2B (1 + u)`` weak views,
  ``u`` the share of the batch in the unlabelled stream (net and peer both guess their labels), taken from the
  epoch's own group sizes;
* final scoring: a no-grad forward of every image through two encoder stages (the audit probes' features);
* audit: the same forward, at the audit's batch size.

Usage (CPU, the benchmark scale of RESULTS.md)::

    python benchmarks/bench_throughput.py --train-size 5000 --epochs 6 --warmup-epochs 2

On a GPU, at 224 px with the default backbone (resnet18) taking RGB input as users' photos do (Fashion-MNIST's
test split as the image source)::

    python benchmarks/bench_throughput.py --model resnet18 --img-size 224 --set channels=3 --methods qmix,ce \
        --json throughput.json

Everything is written under ``--work`` (a temporary directory by default). ``--profile DIR`` also runs the
training and the warm audit of each method under cProfile and writes the functions that took the most time
(cumulative and own time, host side: on a GPU, waiting for the device shows up in the call that synchronises)
to ``DIR/METHOD-train.txt`` and ``DIR/METHOD-audit.txt``.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import json
import platform
import pstats
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import timm  # noqa: F401  (imported here so that no timed run pays for it)
import torch
import torch.nn.functional as F
from _common import add_engine_args, engine_options, markdown_table, parse_variant, stratified_subset, sync

from qmix_cli import __version__
from qmix_cli.api import audit, corrupt, train
from qmix_cli.config import config_from_dict, load_config_file
from qmix_cli.data.cache import cached_images
from qmix_cli.data.manifest import create_dataset
from qmix_cli.engine.device import amp_dtype, resolve_device
from qmix_cli.engine.models import create_model, max_probe_stages, place_input, place_model
from qmix_cli.engine.probe import PROBE_STAGES
from qmix_cli.engine.steps import autocast, method_rules, optimise, ssl_epoch_size
from qmix_cli.engine.trainer import create_optimizer, input_channels

AUDIT_BATCH = 512  # `qmix audit`'s default


def seconds_per_call(fn: Callable[[], Any], *, device: torch.device, min_seconds: float, max_calls: int) -> float:
    """Mean seconds of ``fn()`` after three untimed calls (cuDNN and the allocator settle), over as many calls as
    fit in ``min_seconds`` (at least 3, at most ``max_calls``)."""
    for _ in range(3):
        fn()
    sync(device)
    calls, start = 0, time.perf_counter()
    while calls < 3 or (calls < max_calls and time.perf_counter() - start < min_seconds):
        fn()
        calls += 1
    sync(device)
    return (time.perf_counter() - start) / calls


class SyntheticNets:
    """The run's architecture on random device-resident batches: per-image seconds of each kind of net work."""

    def __init__(self, cfg: dict[str, Any], *, num_classes: int, channels: int, min_seconds: float) -> None:
        self.device = resolve_device(cfg["device"])
        self.size, self.channels, self.num_classes = cfg["img_size"], channels, num_classes
        self.min_seconds = min_seconds
        # As the trainer builds them: same factory, memory format, optimiser and mixed precision.
        net = create_model(
            cfg["model"], num_classes=num_classes, in_chans=channels, proj_dim=cfg["proj_dim"], img_size=self.size
        )
        self.net = place_model(net, self.device)
        self.opt = create_optimizer(self.net, config_from_dict(cfg))
        self.amp = amp_dtype(self.device, cfg["amp"])
        self.scaler = torch.amp.GradScaler("cuda") if self.amp == torch.float16 else None
        self.stages = max_probe_stages(self.net, self.batch(2), wanted=PROBE_STAGES)

    def batch(self, n: int) -> torch.Tensor:
        return place_input(torch.randn(n, self.channels, self.size, self.size, device=self.device))

    def train_step(self, n: int, *, projection: bool) -> float:
        """Seconds per image of a training step (forward, backward, optimiser) on batches of ``n``."""
        x, y = self.batch(n), torch.randint(self.num_classes, (n,), device=self.device)
        self.net.train()

        def step() -> None:
            with autocast(self.device, self.amp):
                logits, proj = self.net(x, projection=True) if projection else (self.net(x), None)
            loss = F.cross_entropy(logits.float(), y)
            if proj is not None:
                loss = loss + proj.float().square().mean()
            optimise(loss, self.opt, self.scaler)

        return seconds_per_call(step, device=self.device, min_seconds=self.min_seconds, max_calls=200) / n

    @torch.no_grad()
    def forward(self, n: int, *, features: bool) -> float:
        """Seconds per image of a no-grad forward on batches of ``n`` (``features``: through the probe stages)."""
        x = self.batch(n)
        self.net.eval()

        def fwd() -> None:
            with autocast(self.device, self.amp):
                if features:
                    self.net.forward_with_stages(x, stages=self.stages)
                else:
                    self.net(x)

        return seconds_per_call(fwd, device=self.device, min_seconds=self.min_seconds, max_calls=200) / n


def stream_sizes(batch: int, share: float) -> tuple[int, int]:
    """The mean labelled and unlabelled members of a semi-supervised batch of ``batch`` with an unlabelled
    ``share``."""
    unlabelled = round(batch * share)
    return batch - unlabelled, unlabelled


def nets_only_seconds(
    costs: dict[str, float], *, n: int, nets: int, probed_nets: int, batch: int, unlabelled_share: float | None
) -> dict[str, float]:
    """Seconds each phase of a run would take if the device did nothing but the nets' work (module docstring).

    ``costs`` holds seconds per image: ``step_b`` (training step on batches of ``batch``), ``step_2b_proj``
    (``2 batch``, with the projection head), ``fwd_eval`` (no-grad, the training run's eval batch),
    ``features_eval`` and ``features_audit`` (no-grad through the probe stages, eval and audit batch), and with
    semi-supervised epochs ``fwd_labelled`` / ``fwd_unlabelled``: no-grad forwards of the two weak views of a
    batch's mean labelled / unlabelled members (`stream_sizes`). ``unlabelled_share`` is None for a method without
    semi-supervised epochs. ``probed_nets``: how many nets the final scoring and the audit read through the probe
    stages (``nets``, twice that where the run kept its warm-up snapshot: run.json's ``audit_warmup``).
    """
    out = {
        "warmup_epoch": nets * n * costs["step_b"],
        "final_scoring": probed_nets * n * costs["features_eval"],
        "audit": probed_nets * n * costs["features_audit"],
    }
    if unlabelled_share is not None:
        nl, nu = stream_sizes(batch, unlabelled_share)
        steps = ssl_epoch_size(n, batch_size=batch) // batch  # as the epoch itself counts them
        # Two weak views of the labelled members through the net; of the unlabelled ones through net and peer.
        guesses = 2 * nl * costs["fwd_labelled"] + 2 * (2 * nu) * costs["fwd_unlabelled"]
        per_step = 2 * batch * costs["step_2b_proj"] + guesses
        out["ssl_epoch"] = nets * (n * costs["fwd_eval"] + steps * per_step)
    return out


def unlabelled_share(metrics: list[dict[str, Any]], *, method: str, mislq_stream: str, n: int) -> float | None:
    """Mean share of images in the unlabelled stream over the semi-supervised epochs (None if there are none)."""
    rows = [m for m in metrics if m["phase"] == "train" and "n_mis_h" in m]
    if not rows:
        return None
    labelled_mislq = method_rules(method, mislq_stream=mislq_stream).mislq_labelled
    return float(np.mean([(m["n_mis_h"] + (0 if labelled_mislq else m["n_mis_l"])) / n for m in rows]))


def median_epoch(seconds: list[float]) -> float:
    """The median of a phase's epoch seconds after its first (the first alone where there is one). A phase's
    first epoch also pays for one-off work the steady state does not: on a GPU, cuDNN's plans for each new batch
    shape (a semi-supervised batch's two streams change size from step to step) and the allocator's growth; the
    whole training's row still counts it."""
    return float(np.median(seconds[1:] if len(seconds) > 1 else seconds)) if seconds else float("nan")


def prime_cache(noisy: Path, *, size: int, channels: int | str) -> None:
    """Decode the training set into the cache before any run is timed, so that no method pays for it."""
    ds = create_dataset(noisy, check_images=False)
    cached_images(ds, size=size, channels=input_channels(ds, channels))


@contextlib.contextmanager
def profiled(path: Path | None, *, top: int = 100):
    """Run the block under cProfile and write to ``path`` its ``top`` functions by cumulative time, then by time
    spent in the function itself (where a GPU sync shows) (None: no profiling)."""
    if path is None:
        yield
        return
    profile = cProfile.Profile()
    profile.enable()
    try:
        yield
    finally:
        profile.disable()
        text = io.StringIO()
        stats = pstats.Stats(profile, stream=text)
        stats.sort_stats("cumulative").print_stats(top)
        stats.sort_stats("tottime").print_stats(top // 2)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text.getvalue())


def measure_method(method: str, noisy: Path, work: Path, args: argparse.Namespace, extra: dict) -> dict[str, Any]:
    run_dir = work / f"run-{method}"
    options = {**engine_options(args, seed=args.seed, epochs=args.epochs), **extra}
    device = resolve_device(args.device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    profile_to = (lambda part: args.profile / f"{method}-{part}.txt") if args.profile else (lambda part: None)
    start = time.perf_counter()
    with profiled(profile_to("train")):
        result = train(noisy, run_dir, method=method, device=args.device, warmup_epochs=args.warmup_epochs,
                       force=True, quiet=True, **options)  # fmt: skip
    train_s = time.perf_counter() - start
    peak_gib = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    audits = []
    for warm in (False, True):  # the first decodes the audit's cache if it differs from training's
        start = time.perf_counter()
        with profiled(profile_to("audit") if warm else None):
            audit(noisy, run=run_dir, device=args.device, batch_size=AUDIT_BATCH, quiet=True, recompute=True)
        audits.append(time.perf_counter() - start)

    cfg = load_config_file(run_dir / "config.yaml")
    run_meta = json.loads((run_dir / "run.json").read_text())
    n = int(run_meta["num_samples"])
    synth = SyntheticNets(cfg, num_classes=len(run_meta["classes"]), channels=int(run_meta["channels"]),
                          min_seconds=args.min_seconds)  # fmt: skip
    b, e = int(cfg["batch_size"]), int(cfg["eval_batch_size"])
    metrics = result.metrics
    share = unlabelled_share(metrics, method=method, mislq_stream=cfg["mislq_stream"], n=n)
    costs = {
        "step_b": synth.train_step(b, projection=False),
        "fwd_eval": synth.forward(e, features=False),
        "features_eval": synth.forward(e, features=True),
        "features_audit": synth.forward(AUDIT_BATCH, features=True),
    }
    if share is not None:
        nl, nu = stream_sizes(b, share)
        costs["step_2b_proj"] = synth.train_step(2 * b, projection=True)
        costs["fwd_labelled"] = synth.forward(2 * nl, features=False) if nl else 0.0
        costs["fwd_unlabelled"] = synth.forward(2 * nu, features=False) if nu else 0.0
    nets = method_rules(method).num_nets
    probed = nets * (2 if run_meta.get("audit_warmup") else 1)  # the warm-up snapshot's nets are read too
    ideal = nets_only_seconds(costs, n=n, nets=nets, probed_nets=probed, batch=b, unlabelled_share=share)
    epoch_seconds = {p: [m["seconds"] for m in metrics if m["phase"] == p] for p in ("warmup", "train")}
    measured = {
        "warmup_epoch": median_epoch(epoch_seconds["warmup"]),
        "ssl_epoch": median_epoch(epoch_seconds["train"]),
        "audit": min(audits),
    }
    epochs_s = sum(m["seconds"] for m in metrics)
    # Whole training: every epoch's nets-only seconds plus the final scoring, against train()'s wall time.
    phases = [m["phase"] for m in metrics]
    ideal["training"] = (
        phases.count("warmup") * ideal["warmup_epoch"]
        + phases.count("train") * ideal.get("ssl_epoch", 0.0)
        + ideal["final_scoring"]
    )
    measured["training"] = train_s
    rows = {}
    for phase in ("warmup_epoch", "ssl_epoch", "training", "audit"):
        if phase not in ideal or not np.isfinite(measured[phase]):
            continue
        seconds = measured[phase]
        images = n * (len(metrics) if phase == "training" else 1)
        rows[phase] = {
            "seconds": seconds,
            "images_per_s": images / seconds,
            "nets_only_s": ideal[phase],
            "fraction": ideal[phase] / seconds,
        }
    return {
        "method": method,
        "n": n,
        "phases": rows,
        "per_image_costs_s": costs,
        "unlabelled_share": share,
        "epochs_s": epochs_s,
        "epoch_seconds": epoch_seconds,
        "outside_epochs_s": train_s - epochs_s,
        "peak_gpu_gib": peak_gib,
        "amp": str(synth.amp).replace("torch.", "") if synth.amp else "off",
        "audit_runs_s": audits,
    }


PHASE_NAMES = {
    "warmup_epoch": "warm-up epoch",
    "ssl_epoch": "semi-supervised epoch",
    "training": "whole training",
    "audit": "audit (warm)",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="fashion-mnist:test", help="clean source the subset is drawn from")
    parser.add_argument("--train-size", type=int, default=5000)
    parser.add_argument("--preset", default="paper-15", help="`qmix corrupt` preset")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--warmup-epochs", type=int, default=2)
    parser.add_argument("--methods", default="qmix")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--min-seconds", type=float, default=1.0, help="timing window of each synthetic measure")
    parser.add_argument("--set", type=parse_variant, action="append", default=[],
                        help="extra KEY=VALUE[,...] training options (repeatable), e.g. compile=true")  # fmt: skip
    parser.add_argument("--cudnn-benchmark", action="store_true",
                        help="let cuDNN time its algorithms for each new input shape (off in the engine)")  # fmt: skip
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--profile", type=Path, default=None, help="write cProfile summaries to this folder")
    add_engine_args(parser)
    args = parser.parse_args()
    torch.backends.cudnn.benchmark = args.cudnn_benchmark

    extra = {k: v for options in args.set for k, v in options.items()}
    work = args.work or Path(tempfile.mkdtemp(prefix="qmix-bench-throughput-"))
    work.mkdir(parents=True, exist_ok=True)
    subset = stratified_subset(args.data, size=args.train_size, seed=args.seed, out=work / "subset.csv")
    noisy = work / "noisy"
    corrupt(subset, noisy, preset=args.preset, seed=args.seed, force=True, quiet=True)

    prime_cache(noisy, size=args.img_size, channels=extra.get("channels", "auto"))
    device = resolve_device(args.device)
    results = [measure_method(m, noisy, work, args, extra) for m in args.methods.split(",")]
    env = {
        "qmix": __version__,
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "threads": torch.get_num_threads(),
        "cudnn_benchmark": args.cudnn_benchmark,
        "date": time.strftime("%Y-%m-%d"),
        "command": "python " + " ".join(sys.argv),
        "options": {**engine_options(args, seed=args.seed, epochs=args.epochs), **extra},
    }
    print(json.dumps({"env": env, "results": results}, indent=1))
    for r in results:
        table = {
            PHASE_NAMES[p]: {
                "images/s": round(v["images_per_s"]),
                "measured s": round(v["seconds"], 2),
                "nets only s": round(v["nets_only_s"], 2),
                "fraction": round(v["fraction"], 2),
            }
            for p, v in r["phases"].items()
        }
        print(f"\n{r['method']}: {r['n']} images, {env['device']}, AMP {r['amp']}, peak GPU memory "
              f"{r['peak_gpu_gib']:.1f} GiB, unlabelled share {r['unlabelled_share']}")  # fmt: skip
        print(markdown_table(pd.DataFrame(table).T, first="phase"))
    if args.json:
        args.json.write_text(json.dumps({"env": env, "results": results}, indent=1))
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
