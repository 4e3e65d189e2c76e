"""The training loop shared by qmix, dividemix and ce.

A run directory holds ``config.yaml`` (every resolved setting), ``metrics.jsonl`` (one object per epoch),
``checkpoints/last.pt`` (written atomically after every epoch: enough to resume bit-for-bit on the CPU; on CUDA,
whose cuDNN kernels are not deterministic, a resumed run continues the same training but not to the same digits),
and at the end ``model.pt`` + ``run.json`` + ``separation.json``: what ``qmix audit`` needs.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from qmix_cli import __version__
from qmix_cli.categories import SMALL_CLASS
from qmix_cli.config import (
    PREDATED,
    RETIRED,
    TrainConfig,
    absolute_paths,
    config_from_dict,
    dump_config,
    load_config_file,
    normalise_keys,
)
from qmix_cli.data.cache import DecodeTarget, cached_images
from qmix_cli.data.groups import likely_group_column
from qmix_cli.data.manifest import Dataset, check_output_dir, create_dataset
from qmix_cli.data.transforms import channel_stats, strong_spec, weak_spec
from qmix_cli.engine.batches import ImageStore
from qmix_cli.engine.checkpoint import load_checkpoint, previous_run_dir, save_checkpoint
from qmix_cli.engine.device import amp_dtype, resolve_device
from qmix_cli.engine.fingerprint import dataset_fingerprint, pixels_fingerprint
from qmix_cli.engine.groups import FoldKeys, describe_groups, units_of
from qmix_cli.engine.losses import class_prior, linear_rampup, uniform_prior
from qmix_cli.engine.models import (
    QmixNet,
    create_model,
    input_normalisation,
    max_probe_stages,
    place_model,
    trained_models,
)
from qmix_cli.engine.neighbours import NeighbourVote, fit_neighbour_vote
from qmix_cli.engine.probe import FOLDS, PROBE_STAGES, LinearProbe, fit_probe, image_keys, pixel_digests
from qmix_cli.engine.readouts import READOUT_BYTES, TrainingReadouts
from qmix_cli.engine.scoring import Scores, compute_scores, ensemble_probs, fit_separation, probe_output
from qmix_cli.engine.separation import axes_tied, hard_groups, separation_aucs
from qmix_cli.engine.steps import (
    SslWeights,
    StepContext,
    method_rules,
    predict_features,
    predict_probs,
    ssl_epoch,
    ssl_epoch_size,
    supervised_epoch,
)
from qmix_cli.errors import ConfigError, DataError, TrainingError, count_of, first_few, shell_word
from qmix_cli.io import (
    RUN_CHECKPOINT,
    RUN_CHECKPOINTS,
    RUN_FILES,
    atomic_write_text,
    read_metrics,
    run_lock,
    stopped_before_first_checkpoint,
)
from qmix_cli.progress import Reporter, SilentReporter

CHECKPOINT = Path(RUN_CHECKPOINT)
# What may change when a run is resumed: how it executes, and how long it goes on.
RESUMABLE = frozenset({"device", "workers", "amp", "compile", "eval_batch_size", "cache_dir", "epochs"})
# Left in a run that moved an older one aside, so that finishing deletes only the backup this run made.
_REPLACES = "replaces-previous"


@dataclass(frozen=True)
class TrainResult:
    """What `train` leaves.

    Attributes
    ----------
    run_dir
        The run directory (``model.pt``, ``config.yaml``, ``metrics.jsonl``, ...).
    metrics
        One dict per epoch of the run (a resumed run's earlier epochs too), as ``metrics.jsonl`` holds them.
    """

    run_dir: Path
    metrics: list[dict[str, Any]]

    def __repr__(self) -> str:  # the last epoch's row, not every one (a notebook cell ending in train(...))
        last = self.metrics[-1] if self.metrics else {}
        return f"TrainResult(run_dir={str(self.run_dir)!r}, epochs={len(self.metrics)}, last={last})"


def create_optimizer(net: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD with momentum and weight decay, by timm's factory (METHOD.md); the learning rate is the schedule's."""
    from timm.optim import create_optimizer_v2

    return create_optimizer_v2(net, opt="momentum", lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def input_channels(dataset: Dataset, setting: int | str) -> int:
    """The channels the nets take: ``setting``, or for ``"auto"`` the dataset's (3 when it is not known)."""
    return (dataset.channels or 3) if setting == "auto" else int(setting)


def _truth(dataset: Dataset) -> tuple[np.ndarray | None, np.ndarray | None]:
    cat = dataset.truth()
    if cat is None:
        return None, None
    return cat == "clean", cat != "mislabeled_lq"


@dataclass(frozen=True)
class FinalReadout:
    """The end of training's reading of the training set: ``scores`` the final separation is fitted on, the final
    nets' ``probes``, their warm-up snapshots' (empty without snapshots), each net's vote (empty without votes),
    the read-outs the audit can reuse (None: not kept, `TrainingReadouts.from_training`) and the fold keys of a
    run with a group column (None: folds by pixels, `qmix_cli.engine.groups`)."""

    scores: Scores
    probes: list[LinearProbe] = field(default_factory=list)
    warmup_probes: list[LinearProbe] = field(default_factory=list)
    votes: list[NeighbourVote] = field(default_factory=list)
    readouts: TrainingReadouts | None = None
    fold_keys: FoldKeys | None = None


class _Run:
    """Mutable state of one training run; `train` drives it."""

    def __init__(self, cfg: TrainConfig, dataset: Dataset, run_dir: Path, reporter: Reporter) -> None:
        self.cfg = cfg
        self.dataset = dataset
        self.run_dir = run_dir
        self.reporter = reporter
        self.rules = method_rules(cfg.method, mislq_stream=cfg.mislq_stream)
        self.device = resolve_device(cfg.device)
        self.channels = channels = input_channels(dataset, cfg.channels)
        self.classes = list(dataset.classes)
        torch.manual_seed(cfg.seed)
        self.gen = torch.Generator().manual_seed(cfg.seed)

        advance = reporter.task("decoding images", len(dataset))
        images = cached_images(
            dataset,
            size=cfg.img_size,
            channels=channels,
            cache_dir=cfg.cache_dir,
            progress=advance,
            jpeg_scale=cfg.jpeg_scale,
        )
        if cfg.pretrained or cfg.weights:
            self.norm = input_normalisation(cfg.model, channels=channels)
        else:
            self.norm = channel_stats(images, seed=cfg.seed, device=self.device)
        self.images = images  # the read-only memory map of the cache: holding it costs no memory
        self.pixels = pixels_fingerprint(images)
        self.store = ImageStore(images, device=self.device, workers=cfg.workers)
        self.labels_np = dataset.labels
        self.labels = torch.tensor(self.labels_np, device=self.device)
        self.is_clean, self.is_hq = _truth(dataset)

        self.nets: list[QmixNet] = []
        for k in range(self.rules.num_nets):
            torch.manual_seed(cfg.seed + 1000 * k)  # two nets, two different initialisations
            net = create_model(
                cfg.model,
                num_classes=len(self.classes),
                in_chans=channels,
                pretrained=cfg.pretrained,
                weights=cfg.weights,
                proj_dim=cfg.proj_dim,
                img_size=cfg.img_size,
            )
            self.nets.append(place_model(net, self.device, compiled=cfg.compile))
        torch.manual_seed(cfg.seed)
        self.optimizers, self.schedulers = zip(*(self._optimizer(net) for net in self.nets), strict=True)
        self.amp_dtype = amp_dtype(self.device, cfg.amp)
        # fp16 (GPUs before Ampere: a T4, a V100) needs loss scaling; bf16 has fp32's range and does not. The scaler is
        # the training device's: one made for CUDA turns itself off, with a warning, wherever CUDA is missing.
        use_scaler = self.amp_dtype == torch.float16
        self.scaler = torch.amp.GradScaler(self.device.type) if use_scaler else None
        self.forward_nets = [torch.compile(n) if cfg.compile else n for n in self.nets]
        self.ctx = StepContext(
            device=self.device,
            amp_dtype=self.amp_dtype,
            scaler=self.scaler,
            norm=self.norm.on(self.device),
            weak=weak_spec(hflip=cfg.hflip, rotation=cfg.rotation),
            strong=strong_spec(hflip=cfg.hflip, rotation=cfg.rotation),
            gen=self.gen,
            num_classes=len(self.classes),
            compiled=cfg.compile,
        )
        k = len(self.classes)
        prior = class_prior(torch.from_numpy(self.labels_np), k) if cfg.prior == "class" else uniform_prior(k)
        self.prior = prior.to(self.device)
        self.history: deque[np.ndarray] = deque(maxlen=cfg.smooth_epochs)
        self.separations: list[Any] = []
        # Each net's weights at the end of warm-up, on the host, for the audit (`keep_warmup_snapshot`).
        self.warmup_states: list[dict[str, torch.Tensor]] = []
        self.epoch = 0
        self.metrics: list[dict[str, Any]] = []

    def _optimizer(self, net: torch.nn.Module):
        from timm.scheduler import create_scheduler_v2

        cfg = self.cfg
        opt = create_optimizer(net, cfg)
        sched_name = {"cosine": "cosine", "step": "step", "constant": "step"}[cfg.schedule]
        decay = 0.1 if cfg.schedule == "step" else 1.0
        sched, _ = create_scheduler_v2(
            opt,
            sched=sched_name,
            num_epochs=cfg.epochs,
            decay_epochs=max(cfg.epochs // 2, 1),
            decay_rate=decay,
        )
        return opt, sched

    # ---- state -------------------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {
            "version": __version__,
            "epoch": self.epoch,
            "fingerprint": dataset_fingerprint(self.dataset),
            "pixels": self.pixels,
            "config": self.cfg.to_dict(),
            "nets": [n.state_dict() for n in self.nets],
            "optimizers": [o.state_dict() for o in self.optimizers],
            "scaler": self.scaler.state_dict() if self.scaler else None,
            "rng": {
                "gen": self.gen.get_state(),
                "torch": torch.get_rng_state(),
                # The training device's generator only: a resume may see other GPUs, or fewer.
                "cuda": [torch.cuda.get_rng_state(self.device)] if self.device.type == "cuda" else [],
            },
            "history": [torch.from_numpy(h) for h in self.history],
            "separations": [json.dumps(s.to_dict()) for s in self.separations],
            "warmup_nets": self.warmup_states,
        }

    def load_state(self, state: dict[str, Any]) -> None:
        from qmix_cli.engine.scoring import separation_from_dict

        if state["fingerprint"] != dataset_fingerprint(self.dataset):
            raise TrainingError("the checkpoint was made on another dataset (sample ids or labels differ)")
        if state.get("pixels", self.pixels) != self.pixels:  # checkpoints saved before it was kept: not checked
            raise TrainingError(
                "the checkpoint was made on other images: the same ids and labels, other pixels (another "
                "corruption of the dataset, or edited images); resume on the images it was trained on, or start "
                "a new run with --force"
            )
        now = absolute_paths(self.cfg.to_dict())
        saved = absolute_paths({**PREDATED, **state["config"]})  # an older checkpoint: ran as it did then
        edited = sorted(k for k, v in saved.items() if k not in RESUMABLE | RETIRED and now.get(k) != v)
        if edited:
            raise TrainingError(
                f"the checkpoint was made with other settings than config.yaml now holds ({', '.join(edited)}); "
                "restore them, or start a new run with --force"
            )
        for net, sd in zip(self.nets, state["nets"], strict=True):
            net.load_state_dict(sd)
        for opt, sd in zip(self.optimizers, state["optimizers"], strict=True):
            opt.load_state_dict(sd)
        if self.scaler and state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])
        self.gen.set_state(state["rng"]["gen"])
        torch.set_rng_state(state["rng"]["torch"])
        if self.device.type == "cuda" and state["rng"]["cuda"]:
            torch.cuda.set_rng_state(state["rng"]["cuda"][0], self.device)
        self.history.extend(h.numpy() for h in state["history"])
        self.separations = [separation_from_dict(json.loads(s)) for s in state["separations"]]
        self.warmup_states = list(state.get("warmup_nets", []))  # older checkpoints kept none
        self.epoch = int(state["epoch"])

    # ---- the warm-up snapshot ----------------------------------------------------------------------------
    @property
    def reads_warmup_nets(self) -> bool:
        """Whether the audit also reads the nets as they stood at the end of warm-up: only where a warm-up ends
        in a semi-supervised phase (``ce`` has none) and the final scores come from probes."""
        cfg = self.cfg
        return (
            cfg.audit_warmup
            and cfg.audit_scores == "probe"
            and self.rules.separation is not None
            and 0 < (cfg.warmup_epochs or 0) < cfg.epochs
        )

    def keep_warmup_snapshot(self) -> None:
        """Copy each net's weights to the host once the last warm-up epoch is done (call after each epoch)."""
        if self.reads_warmup_nets and self.epoch == self.cfg.warmup_epochs:
            self.warmup_states = [
                {k: v.detach().to("cpu", copy=True) for k, v in net.state_dict().items()} for net in self.nets
            ]

    def warmup_nets(self) -> list[QmixNet]:
        """The warm-up snapshot as nets on the run's device (none if the run kept no snapshot)."""
        if not self.reads_warmup_nets:
            return []
        cfg = self.cfg
        return trained_models(
            self.warmup_states,
            device=self.device,
            name=cfg.model,
            num_classes=len(self.classes),
            in_chans=self.channels,
            proj_dim=cfg.proj_dim,
            img_size=cfg.img_size,
        )

    # ---- one epoch ---------------------------------------------------------------------------------------
    def scores(self) -> Scores:
        probs = np.stack(
            [predict_probs(n, self.store, self.ctx, batch_size=self.cfg.eval_batch_size) for n in self.forward_nets]
        )
        scores = compute_scores(probs, self.labels_np, uncertainty=self.cfg.uncertainty)
        self.history.append(np.stack([scores.loss, scores.uncertainty], axis=-1))
        smoothed = np.mean(np.stack(self.history), axis=0)
        return Scores(probs=probs, loss=smoothed[..., 0], uncertainty=smoothed[..., 1])

    def probe_scores(self) -> FinalReadout:
        """Scores of every training image from out-of-fold probes on each net's features and, unless
        ``audit_neighbours`` is 0, a leave-one-out neighbour vote over the same features, with the probes, votes
        and read-outs behind them (`FinalReadout`). Net k's scores are those of `probe_output` of its probes (with
        a snapshot, two: `TrainConfig.audit_warmup`) and its vote.
        """
        cfg = self.cfg
        pixel_keys = image_keys(self.images, seed=cfg.seed)
        fold_keys = None
        keys = pixel_keys
        if cfg.group_column is not None:
            units = units_of(self.dataset.frame[cfg.group_column], self.labels_np, seed=cfg.seed)
            fold_keys = FoldKeys.from_training(pixel_keys, *units)
            keys = fold_keys.keys(pixel_keys)
        sample = self.ctx.eval_view(torch.from_numpy(np.array(self.images[:2])).to(self.device))
        snapshots = self.warmup_nets()
        probes: list[LinearProbe] = []
        warm_probes: list[LinearProbe] = []
        votes: list[NeighbourVote] = []
        own, scored = [], []
        # A bar, and a line per net for a log, over what takes minutes at tens of thousands of images: the probes'
        # fits (each net's, and its snapshot's) and the neighbour vote.
        per_net = 1 + bool(snapshots) + (cfg.audit_neighbours > 0)
        advance = self.reporter.task("reading the nets for the audit", per_net * len(self.forward_nets))
        started = time.monotonic()
        for k, net in enumerate(self.forward_nets):
            nets = [net, *snapshots[k : k + 1]]
            fitted, vote, net_own, net_scored = self._read_net(nets, keys, sample, advance=advance)
            self.reporter.log(
                f"audit read-out of net {k + 1} of {len(self.forward_nets)} done ({time.monotonic() - started:.0f} s)"
            )
            probes.append(fitted[0])
            warm_probes.extend(fitted[1:])
            if vote is not None:
                votes.append(vote)
            own.append(net_own)
            scored.append(net_scored)
        scores = compute_scores(np.stack(scored), self.labels_np, uncertainty=cfg.uncertainty)
        readouts = TrainingReadouts.from_training(
            pixel_digests(self.images), np.stack(own), scores.probs, sampled=pixel_keys
        )
        if readouts is None:  # said, since an audit of the training set then takes as long as a new one
            self.reporter.log(
                f"note: what the nets read of the training images is not kept in model.pt (more than "
                f"{READOUT_BYTES >> 20} MB for {len(self.labels_np):,} images of {len(self.classes):,} classes): an "
                "audit of them runs the nets again"
            )
        return FinalReadout(
            scores=scores,
            probes=probes,
            warmup_probes=warm_probes,
            votes=votes,
            readouts=readouts,
            fold_keys=fold_keys,
        )

    def _read_net(
        self, nets: list[QmixNet], keys: np.ndarray, sample: torch.Tensor, *, advance: Callable[[int], None]
    ) -> tuple[list[LinearProbe], NeighbourVote | None, np.ndarray, np.ndarray]:
        """One net's probes (the net's, then its snapshot's), its vote, its softmax (N, K) and its probe output
        (N, K) on the training images; ``advance(1)`` after each probe and the vote. A function of its own so that
        one net's feature matrices are freed before the next net's are made.
        """
        fitted = []
        for n in nets:
            fitted.append(self._fit_probe(n, keys, sample))
            advance(1)
        feats = [f for f, _, _ in fitted]
        heads = [probe.probs(f, keys) for f, probe, _ in fitted]
        vote = None
        if self.cfg.audit_neighbours > 0:
            if len({f.device for f in feats}) > 1:
                # Each matrix was placed by the GPU memory free when it was made; the vote needs them together.
                feats = [f.cpu() for f in feats]
            vote = fit_neighbour_vote(
                feats, self.labels_np, keys, num_classes=len(self.classes), k=self.cfg.audit_neighbours
            )
            advance(1)
        return (
            [probe for _, probe, _ in fitted],
            vote,
            fitted[0][2],
            probe_output(heads, None if vote is None else vote.probs(feats, keys)),
        )

    def _fit_probe(
        self, net: QmixNet, keys: np.ndarray, sample: torch.Tensor
    ) -> tuple[torch.Tensor, LinearProbe, np.ndarray]:
        """``net``'s probe features of the training images (N, D), its out-of-fold probe on them and its softmax
        (N, K)."""
        stages = max_probe_stages(net, sample, wanted=PROBE_STAGES)
        feats, probs = predict_features(net, self.store, self.ctx, batch_size=self.cfg.eval_batch_size, stages=stages)
        probe = fit_probe(feats, self.labels_np, keys, num_classes=len(self.classes), seed=self.cfg.seed, stages=stages)
        return feats, probe, probs

    def separate(self, scores: Scores, kind: str) -> list[Any]:
        cfg = self.cfg
        tied = axes_tied(num_classes=len(self.classes), uncertainty=cfg.uncertainty)
        return [
            fit_separation(
                scores.loss[k],
                scores.uncertainty[k],
                kind=kind,
                components=cfg.gmm_components,
                reg_covar=cfg.gmm_reg_covar,
                max_iter=cfg.gmm_max_iter,
                tol=cfg.gmm_tol,
                seed=cfg.seed + self.epoch,
                tied_axes=tied,
            )
            for k in range(len(self.nets))
        ]

    def run_epoch(self) -> dict[str, Any]:
        cfg, rules, e = self.cfg, self.rules, self.epoch
        for sched in self.schedulers:
            sched.step(e)
        start = time.perf_counter()
        warmup = rules.separation is None or e < cfg.warmup_epochs
        where = f"epoch {e + 1}"
        row: dict[str, Any] = {"epoch": e + 1, "phase": "warmup" if warmup else "train"}
        row["lr"] = self.optimizers[0].param_groups[0]["lr"]
        per_net: list[dict[str, float]] = []
        if warmup:
            view = rules.warmup_view if cfg.warmup_aug == "auto" else cfg.warmup_aug
            spec = self.ctx.strong if view == "strong" else self.ctx.weak
            for k, net in enumerate(self.forward_nets):
                advance = self.reporter.task(f"epoch {e + 1}/{cfg.epochs} net {k} warm-up", len(self.store))
                per_net.append(
                    supervised_epoch(
                        net, self.optimizers[k], self.store, self.labels, self.ctx,
                        batch_size=cfg.batch_size, spec=spec, where=f"{where}, net {k}", progress=advance,
                    )
                )  # fmt: skip
        else:
            scores = self.scores()
            self.separations = self.separate(scores, rules.separation)
            posteriors = [s.posteriors(scores.loss[k], scores.uncertainty[k]) for k, s in enumerate(self.separations)]
            weights = SslWeights(
                temperature=cfg.temperature,
                mixup_alpha=cfg.mixup_alpha,
                lambda_u=linear_rampup(e - cfg.warmup_epochs, lambda_u=cfg.lambda_u, length=cfg.rampup_epochs),
                mislq_weight=cfg.mislq_weight,
                lambda_con=cfg.lambda_con,
                con_temperature=cfg.con_temperature,
            )
            for k, net in enumerate(self.forward_nets):
                peer = 1 - k
                groups = hard_groups(posteriors[peer], p_threshold=cfg.p_threshold)
                total = ssl_epoch_size(len(self.store), batch_size=cfg.batch_size)
                advance = self.reporter.task(f"epoch {e + 1}/{cfg.epochs} net {k}", total)
                per_net.append(
                    ssl_epoch(
                        net, self.forward_nets[peer], self.optimizers[k], self.store, self.labels,
                        torch.as_tensor(posteriors[peer], dtype=torch.float32, device=self.device), groups, self.ctx,
                        rules=rules, weights=weights, prior=self.prior, batch_size=cfg.batch_size,
                        where=f"{where}, net {k}", progress=advance,
                    )
                )  # fmt: skip
            row.update(self.separation_summary(posteriors))
            row["lambda_u"] = weights.lambda_u
        for key in per_net[0]:
            row[key] = float(np.mean([p[key] for p in per_net]))
        seconds = time.perf_counter() - start
        row["seconds"] = round(seconds, 3)
        row["images_per_s"] = round(len(self.store) / seconds, 1)
        return row

    def separation_summary(self, posteriors: list[np.ndarray]) -> dict[str, Any]:
        mean_post = np.mean(posteriors, axis=0)
        groups = hard_groups(mean_post, p_threshold=self.cfg.p_threshold)
        out: dict[str, Any] = {
            "n_clean": int((groups == 0).sum()),
            "n_mis_h": int((groups == 1).sum()),
            "n_mis_l": int((groups == 2).sum()),
            "gmm_means": [_json_floats(s.group_means()) for s in self.separations],
            "gmm_fallback": any(s.fallback for s in self.separations),
        }
        aucs = separation_aucs(mean_post, is_clean=self.is_clean, is_high_quality=self.is_hq)
        out.update({k: (None if not np.isfinite(v) else round(float(v), 4)) for k, v in aucs.items()})
        return out

    def val_accuracy(self, val: tuple[ImageStore, np.ndarray]) -> float:
        store, labels = val
        each = [predict_probs(n, store, self.ctx, batch_size=self.cfg.eval_batch_size) for n in self.forward_nets]
        probs = ensemble_probs(np.stack(each))  # as the report's predicted_label is (METHOD.md: summed logits)
        return float((probs.argmax(1) == labels).mean())


def _check_run_dir(run_dir: Path, *, resume: bool, force: bool) -> None:
    """Refuse to start before any work is done; nothing is created or deleted here."""
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"--out {run_dir} is a file; a run needs a directory")
    if resume:
        if stopped_before_first_checkpoint(run_dir):
            raise TrainingError(
                f"nothing to resume: {run_dir} stopped before its first checkpoint; pass --force to start over"
            )
        if not (run_dir / CHECKPOINT).is_file():
            raise TrainingError(f"nothing to resume: {run_dir / CHECKPOINT} does not exist")
    elif run_dir.exists() and any(run_dir.iterdir()):
        if not force and stopped_before_first_checkpoint(run_dir):
            raise ConfigError(
                f"{run_dir} holds a run stopped before its first checkpoint, so nothing to resume; pass --force to "
                "start over"
            )
        if not force:
            raise ConfigError(f"{run_dir} already exists; pass --resume to continue it or --force to start over")
        if not _holds_a_run(run_dir):
            # --force replaces a run (and deletes it once the new one is done), not any folder named by mistake.
            raise ConfigError(f"--out {run_dir} holds files but no qmix run; --force only replaces runs")
        previous = previous_run_dir(run_dir)
        if previous.exists() and not _holds_a_run(previous):  # where --force keeps the old run: it is deleted
            raise ConfigError(f"{previous}, where --force keeps the run it replaces, holds no qmix run; move it away")


def _holds_a_run(folder: Path) -> bool:
    """Whether ``folder`` holds what `train` writes (a file of `RUN_FILES`, or its checkpoints folder)."""
    return any((folder / name).exists() for name in (*RUN_FILES, RUN_CHECKPOINTS))


def _make_run_dir(run_dir: Path, *, resume: bool, reporter: Reporter) -> None:
    """Create (or with --force, replace) the run directory, once the run has been set up successfully.

    ``--force`` moves an existing run to `previous_run_dir` instead of deleting it: if the new run fails or is
    killed, the old one is still there; `_finalise` deletes it once the new run is complete.

    A resumed run loses its final model first: `_finalise` writes ``model.pt`` last, so a run directory with a
    ``model.pt`` always holds the matching ``separation.json`` and ``run.json``, even if a kill interrupts an
    extension of a finished run.
    """
    if resume:
        # A run writes its files in place; through a link (a run folder received from someone else) it would
        # overwrite whatever file the link points to with its metrics or metadata.
        checkpoints = run_dir / RUN_CHECKPOINTS
        inside = list(checkpoints.iterdir()) if checkpoints.is_dir() and not checkpoints.is_symlink() else []
        entries = [*(run_dir / name for name in (*RUN_FILES, RUN_CHECKPOINTS)), *inside]  # a user's own links stay
        if linked := sorted(p.relative_to(run_dir).as_posix() for p in entries if p.is_symlink()):
            raise TrainingError(
                f"{run_dir} holds symbolic links ({first_few(linked)}): a run writes its own files, and would write "
                "through them to wherever they point; resume a copy made without links (cp -rL)"
            )
        (run_dir / "model.pt").unlink(missing_ok=True)
        return
    replaces = run_dir.exists() and any(run_dir.iterdir())
    previous = previous_run_dir(run_dir)
    if replaces and previous.exists() and (run_dir / RUN_CHECKPOINTS / _REPLACES).exists():
        # An earlier --force restart that never finished: the run it replaced is still the one kept aside.
        shutil.rmtree(run_dir)
        reporter.log(f"discarded an unfinished restart; {previous} still holds the run this one replaces")
    elif replaces:
        if previous.exists():
            shutil.rmtree(previous)
        os.replace(run_dir, previous)
        reporter.log(f"moved the existing run to {previous}; it is deleted when this run finishes")
    (run_dir / RUN_CHECKPOINTS).mkdir(parents=True, exist_ok=True)
    if replaces:
        (run_dir / RUN_CHECKPOINTS / _REPLACES).touch()


def resume_config(run_dir: str | Path, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """The saved config of the run being resumed.

    Only `RESUMABLE` settings (how the run executes, and ``epochs`` to extend a finished run) may be
    overridden; any other option given with a value that differs from the saved one is refused, since it would
    make the resumed run a different experiment.

    Raises
    ------
    ConfigError
        Listing the options that differ from the saved run.
    """
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise TrainingError(f"nothing to resume: {path} does not exist")
    raw = normalise_keys(load_config_file(path))
    given = normalise_keys({k: v for k, v in (overrides or {}).items() if v is not None})
    for name, then in PREDATED.items():
        if name not in raw:  # a run saved before the option: resumed as it ran
            raw[name] = then
            # A `TrainConfig` passed whole carries today's default, which is not a request to change it.
            if given.get(name) == getattr(TrainConfig(), name):
                del given[name]
    # Paths as the run was given them, and as the command gives them now, each against today's working directory
    # (runs saved before paths were kept absolute hold them as typed).
    raw, given = absolute_paths(raw), absolute_paths(given)
    saved = config_from_dict(raw)
    changed = config_from_dict(given, base=saved)
    differ = sorted(k for k in given if k not in RESUMABLE and getattr(changed, k) != getattr(saved, k))
    if differ:
        names = ", ".join(k.replace("_", "-") for k in differ)
        raise ConfigError(
            f"--resume continues {run_dir} with its saved config.yaml; these options differ from it: {names} "
            "(start a new run with --force, or one in another folder (--out), to change them)"
        )
    return changed  # every other option given equals the saved one


def _val_store(cfg: TrainConfig, run: _Run) -> tuple[ImageStore, np.ndarray] | None:
    if not cfg.val:
        return None
    try:
        val = create_dataset(
            cfg.val,
            classes=run.classes,
            min_classes=1,
            on_bad_image=cfg.on_bad_image,
            cache_dir=cfg.cache_dir,
            decode_to=DecodeTarget(cfg.img_size, run.channels, jpeg_scale=cfg.jpeg_scale),
        )
    except DataError as exc:  # which of the two datasets it is: the training set was read without a complaint
        raise DataError(f"--val: {exc}") from None
    images = cached_images(
        val, size=cfg.img_size, channels=run.channels, cache_dir=cfg.cache_dir, jpeg_scale=cfg.jpeg_scale
    )
    return ImageStore(images, device=run.device, workers=cfg.workers), val.labels


def train(
    dataset: Dataset,
    cfg: TrainConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    force: bool = False,
    reporter: Reporter | None = None,
    on_epoch_end: Callable[[dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Train ``cfg.method`` on ``dataset``, writing everything to ``run_dir``, which no other process may use
    meanwhile (`qmix_cli.io.run_lock`: a second run given the same directory is refused).

    Parameters
    ----------
    resume
        Continue from ``run_dir/checkpoints/last.pt``; pass the config from `resume_config`.
    on_epoch_end
        Called with each epoch's metrics after its checkpoint is written (tests use it to simulate a kill).
    """
    run_dir = Path(run_dir)
    check_output_dir(dataset, run_dir)  # before the lock file beside it is made: never inside the dataset
    # The run seeds torch's global generators; a caller's own random stream (a notebook's) is given back after.
    gpus = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with run_lock(run_dir), torch.random.fork_rng(devices=gpus):
        return _train_locked(
            dataset, cfg, run_dir, resume=resume, force=force, reporter=reporter or SilentReporter(),
            on_epoch_end=on_epoch_end,
        )  # fmt: skip


def _train_locked(
    dataset: Dataset,
    cfg: TrainConfig,
    run_dir: Path,
    *,
    resume: bool,
    force: bool,
    reporter: Reporter,
    on_epoch_end: Callable[[dict[str, Any]], None] | None,
) -> TrainResult:
    _check_run_dir(run_dir, resume=resume, force=force)
    cfg.validate()
    if cfg.channels == "auto" and not dataset.channels:
        raise ConfigError("channels unknown: load the dataset with check_images=True or set channels")
    # Refused before anything is built; the line is logged with the start line.
    groups_line = (
        describe_groups(dataset.frame, cfg.group_column, folds=FOLDS) if cfg.group_column is not None else None
    )
    # Build everything (device, model, data, validation set) before touching the run directory: a bad
    # --model, --device or --val must not leave a half-made run that blocks the corrected command.
    run = _Run(cfg, dataset, run_dir, reporter)
    val = _val_store(cfg, run)
    if resume:
        state = load_checkpoint(run_dir / CHECKPOINT)
        run.load_state(state)
        if run.epoch > cfg.epochs:  # refused before _make_run_dir takes a finished run's model away
            raise ConfigError(f"--epochs {cfg.epochs}: this run has trained {run.epoch} epochs already")
        planned = int(state["config"].get("epochs", cfg.epochs))
        if cfg.epochs < planned:  # the schedule (and a qmix run's semi-supervised epochs) would end unseen
            raise ConfigError(
                f"--epochs {cfg.epochs}: this run was set to train {planned} epochs; a resume trains them all, or "
                "more to extend it (--epochs is the total, not how many more); to stop sooner, start a new run "
                "with --force"
            )
        if run.epoch == cfg.epochs and (run_dir / "model.pt").is_file():
            raise ConfigError(
                f"{run_dir} has finished its {cfg.epochs} epochs; to train on, resume with --epochs N (more than "
                f"{cfg.epochs})"
            )
    _make_run_dir(run_dir, resume=resume, reporter=reporter)
    # Partial files of the run's own, left by a process killed while it wrote them (SIGKILL runs no cleanup): under
    # the run's lock no other train can be writing them (an audit writing a report here writes others).
    own = [run_dir.glob(f".{name}.*.tmp") for name in RUN_FILES] + [(run_dir / RUN_CHECKPOINTS).glob(".*.pt.*.tmp")]
    for partial in itertools.chain.from_iterable(own):
        partial.unlink(missing_ok=True)
    if not resume:
        counts = np.bincount(run.labels_np, minlength=len(run.classes))
        reporter.log(_start_line(run, counts))
        # Only a new run is worth the hint, and only where the audit reads probes that a group column can fold.
        hinted = cfg.group_column is None and cfg.audit_scores == "probe"
        if hinted and (column := likely_group_column(dataset.frame, min_groups=FOLDS)):
            groups_line = (
                f"note: the column {column} looks like it says which images belong together; pass "
                f"--group-column {shell_word(column)} so that the audit judges each image without the others of its "
                "group that share its label"
            )
        if groups_line:
            reporter.log(groups_line)
        if hint := size_hint(cfg, image_side=dataset.image_side):
            reporter.log(hint)
        if note := small_classes_note(counts, run.classes):
            reporter.log(note)
    metrics_path = run_dir / "metrics.jsonl"
    if resume:
        run.metrics = [row for row in read_metrics(metrics_path) if row["epoch"] <= run.epoch]
        if run.epoch < cfg.epochs:
            reporter.log(f"resuming {run_dir} at epoch {run.epoch + 1}/{cfg.epochs}")
        else:  # killed after its last epoch, before the final model was saved
            reporter.log(f"finishing {run_dir}: its {cfg.epochs} epochs are trained")
    atomic_write_text(run_dir / "config.yaml", dump_config(cfg))
    atomic_write_text(metrics_path, "".join(json.dumps(m) + "\n" for m in run.metrics))

    while run.epoch < cfg.epochs:
        row = run.run_epoch()
        if val is not None:
            row["val_acc"] = round(run.val_accuracy(val), 4)
        run.epoch += 1
        run.keep_warmup_snapshot()
        run.metrics.append(row)
        with metrics_path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        save_checkpoint(run_dir / CHECKPOINT, run.state())
        reporter.log(_epoch_line(row, cfg.epochs))
        if on_epoch_end is not None:
            on_epoch_end(row)

    _finalise(run)
    return TrainResult(run_dir=run_dir, metrics=run.metrics)


def _json_floats(values: np.ndarray) -> list:
    """Nested lists with NaN as None, since NaN is not valid JSON."""
    return [[None if not np.isfinite(v) else round(float(v), 4) for v in row] for row in values]


def _start_line(run: _Run, counts: np.ndarray) -> str:
    """What is trained on what and where, with the smallest class: a class of a handful of images is one the
    audit can hardly judge, and a user should see that before the epochs run."""
    cfg = run.cfg  # counts: (K,) images per class
    rarest = int(np.argmin(counts))
    precision = f", {str(run.amp_dtype).removeprefix('torch.')} autocast" if run.amp_dtype is not None else ""
    return (
        f"{cfg.method}: {len(run.labels_np):,} images in {len(run.classes):,} classes (the smallest, "
        f"{run.classes[rarest]}, has {counts[rarest]:,}), {cfg.model} at {cfg.img_size} px on {run.device}{precision}"
    )


def small_classes_note(counts: np.ndarray, classes: Sequence[str]) -> str | None:
    """A note naming the classes of fewer than `SMALL_CLASS` images (``counts`` (K,) images per class), many of whose
    images the audit flags whatever their labels; None when there are none."""
    small = [f"{classes[k]} ({counts[k]:,})" for k in np.flatnonzero(counts < SMALL_CLASS)]
    if not small:
        return None
    return (
        f"note: {count_of(len(small), 'class', 'classes')} of fewer than {SMALL_CLASS} images: "
        f"{first_few(small)}; "
        "the audit judges an image by the other images of its class, so it flags many of theirs whatever their "
        "labels (a class of one, always): add images of them, or check them by hand"
    )


# Enlarging small images for the net's strides is normal (a 28-px image at 32 px); below this size the cost of
# enlarging is small either way, so only larger sizes are worth a word.
SIZE_HINT_ABOVE = 64


def size_hint(cfg: TrainConfig, *, image_side: int) -> str | None:
    """A note when ``cfg.img_size`` enlarges the images at least twice over (four times the pixels to compute) at
    a size where that costs (above `SIZE_HINT_ABOVE`), training from scratch: the default 224 px on 28-px images
    spends 64 times the compute of 28 px on pixels the images do not hold. With pretrained weights enlarging to
    the size they were trained at is the usual recipe, so nothing is said. None when there is nothing to say.

    ``image_side`` is `Dataset.image_side` (0: unknown)."""
    if cfg.pretrained or cfg.weights or not image_side or cfg.img_size <= SIZE_HINT_ABOVE:
        return None
    if cfg.img_size < 2 * image_side:
        return None
    suggested = max(32, -(-image_side // 16) * 16)  # the images' side, rounded up to what strides divide
    factor = (cfg.img_size / image_side) ** 2
    return (
        f"note: the images are about {image_side} px a side; --img-size {cfg.img_size} enlarges them "
        f"({factor:.0f}× the pixels to compute); --img-size {suggested} trains on what they hold, much faster"
    )


def _epoch_line(row: dict[str, Any], epochs: int) -> str:
    parts = [f"epoch {row['epoch']}/{epochs}", row["phase"], f"loss {row.get('loss_x', float('nan')):.4f}"]
    if "n_clean" in row:
        parts.append(f"clean/mis-hq/mis-lq {row['n_clean']}/{row['n_mis_h']}/{row['n_mis_l']}")
    for key in ("auc_clean", "auc_hq", "val_acc"):
        if row.get(key) is not None:
            parts.append(f"{key} {row[key]:.3f}")
    parts.append(f"{row['seconds']:.1f}s ({row['images_per_s']:.0f} img/s)")
    return "  ".join(parts)


def _finalise(run: _Run) -> None:
    """Score the training set with the final nets (and their warm-up snapshot, `_Run.probe_scores`), fit the final
    separation and save what audit needs."""
    # Only the probes' read-outs are kept: the classifier's separation is fitted on losses smoothed over epochs
    # (`smooth_epochs`), which its audit does not reproduce, so keeping them would not make the two agree.
    if run.cfg.audit_scores == "probe":
        # Minutes for many images or classes: said, not a silent pause.
        run.reporter.log(f"fitting the audit's out-of-fold probes on {len(run.labels_np):,} images")
        final = run.probe_scores()
    else:
        final = FinalReadout(scores=run.scores())
    scores, probes, warmup_probes, votes = final.scores, final.probes, final.warmup_probes, final.votes
    run.separations = run.separate(scores, "quality")
    run.reporter.log(
        "final separation: " + ", ".join(f"net {k}: {s.note or 'ok'}" for k, s in enumerate(run.separations))
    )
    meta = {
        "tool_version": __version__,
        "method": run.cfg.method,
        "model": run.cfg.model,
        "classes": run.classes,
        "img_size": run.cfg.img_size,
        "channels": run.channels,
        "jpeg_scale": run.cfg.jpeg_scale,  # how its images were decoded; runs saved before the option lack it
        "norm_mean": list(run.norm.mean),
        "norm_std": list(run.norm.std),
        "uncertainty": run.cfg.uncertainty,
        "hflip": run.cfg.hflip,
        "rotation": run.cfg.rotation,
        "p_threshold": run.cfg.p_threshold,
        "dataset": run.dataset.source,
        "fingerprint": dataset_fingerprint(run.dataset),
        "members": dataset_fingerprint(run.dataset, ordered=False),
        "num_samples": len(run.dataset),
        "proj_dim": run.cfg.proj_dim,
        "audit_scores": run.cfg.audit_scores,
        "audit_warmup": bool(warmup_probes),
        "audit_neighbours": run.cfg.audit_neighbours if votes else 0,
        "group_column": run.cfg.group_column if final.fold_keys is not None else None,
        # Whether the final scores (what the separation was fitted on) came from mixed precision: the audit
        # scores in the same precision, so its posteriors are read on the scale the mixture was fitted on.
        "amp": run.amp_dtype is not None,
        "final_summary": run.separation_summary(
            [s.posteriors(scores.loss[k], scores.uncertainty[k]) for k, s in enumerate(run.separations)]
        ),
    }
    model_state = {
        "nets": [n.state_dict() for n in run.nets],
        "probes": [p.state_dict() for p in probes],
        # The nets at the end of warm-up and their probes, which the audit averages in (none for `ce`).
        "warmup_nets": run.warmup_states if warmup_probes else [],
        "warmup_probes": [p.state_dict() for p in warmup_probes],
        # Each net's neighbour vote over its probes' features (none with ``audit_neighbours`` 0).
        "votes": [v.state_dict() for v in votes],
        # What the nets said about each training image, so that auditing the training set runs no net.
        "readouts": None if final.readouts is None else final.readouts.state_dict(),
        # Which training images share a fold and never vote for each other (None: each image and its copies).
        "fold_keys": None if final.fold_keys is None else final.fold_keys.state_dict(),
        "meta": json.dumps(meta),
    }
    # model.pt last: audit treats its presence as "the run is finished" (see `_make_run_dir`).
    atomic_write_text(run.run_dir / "separation.json", json.dumps([s.to_dict() for s in run.separations], indent=1))
    atomic_write_text(run.run_dir / "run.json", json.dumps(meta, indent=1))
    save_checkpoint(run.run_dir / "model.pt", model_state)
    marker = run.run_dir / RUN_CHECKPOINTS / _REPLACES
    if marker.exists():
        shutil.rmtree(previous_run_dir(run.run_dir), ignore_errors=True)
        marker.unlink()
