"""Scoring a dataset with a trained run: the numbers behind every report row.

Any labelled manifest whose labels are among the run's classes can be audited, not only the training set: new
images are scored with the run's nets and placed on the run's *saved* separation (its normalisers and GMMs), so
their posteriors are comparable with the training images'.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa
import torch

from qmix_cli.config import PREDATED
from qmix_cli.data.cache import DecodeTarget, cached_images
from qmix_cli.data.manifest import Dataset
from qmix_cli.data.transforms import Normalise, weak_spec
from qmix_cli.engine.batches import ImageStore
from qmix_cli.engine.checkpoint import load_checkpoint, previous_run_dir
from qmix_cli.engine.device import amp_dtype, resolve_device
from qmix_cli.engine.fingerprint import dataset_fingerprint
from qmix_cli.engine.groups import FoldKeys, units_of
from qmix_cli.engine.models import QmixNet, trained_models
from qmix_cli.engine.neighbours import NeighbourVote
from qmix_cli.engine.probe import LinearProbe
from qmix_cli.engine.readouts import TrainingReadouts
from qmix_cli.engine.scoring import compute_scores, ensemble_probs, mean_posteriors, separation_from_dict
from qmix_cli.engine.separation import QualitySeparation, hard_groups
from qmix_cli.engine.steps import StepContext, predict_probs, predict_with_probes
from qmix_cli.errors import QmixError
from qmix_cli.io import RUN_CHECKPOINT, stopped_before_first_checkpoint
from qmix_cli.progress import Reporter, SilentReporter
from qmix_cli.reporting.report import (
    build_report,
    compute_ranks,
    normalise_posteriors,
    report_metadata,
    run_digest,
)

T = TypeVar("T")


@dataclass
class TrainedRun:
    """The final nets and separations of a run directory."""

    run_dir: Path
    meta: dict[str, Any]
    nets: list[QmixNet]
    separations: list[QualitySeparation]
    probes: list[LinearProbe]  # one per net, or none: the separation was fitted on the nets' own classifier
    device: torch.device
    # The nets as they stood at the end of warm-up and their probes, one each per net, or none (`ce`, runs with
    # ``audit_warmup`` off, runs saved before it existed): each net's probe outputs are averaged with its snapshot's.
    warmup_nets: list[QmixNet] = field(default_factory=list)
    warmup_probes: list[LinearProbe] = field(default_factory=list)
    # Each net's neighbour vote over its probes' features, or none (``audit_neighbours`` 0, runs saved before it).
    votes: list[NeighbourVote] = field(default_factory=list)
    # What the nets said about each training image (by pixel digest), or None (not kept, runs saved before it).
    readouts: TrainingReadouts | None = None
    # Which images share a fold and never vote for each other, for a run trained with a group column; None: each
    # image with its copies (`qmix_cli.engine.groups`).
    fold_keys: FoldKeys | None = None

    @property
    def classes(self) -> list[str]:
        return list(self.meta["classes"])

    @property
    def decode_target(self) -> DecodeTarget:
        """How the run's images were decoded: its size and channels, JPEGs at their DCT scale unless the run was
        trained before that (its meta lacks ``jpeg_scale``), so that an audit reads each image as training did
        (a training image read otherwise would get another probe key, hence another fold)."""
        jpeg_scale = bool(self.meta.get("jpeg_scale", PREDATED["jpeg_scale"]))
        return DecodeTarget(self.meta["img_size"], self.meta["channels"], jpeg_scale)


def load_run(run_dir: str | Path, *, device: str = "auto") -> TrainedRun:
    """Load ``run_dir/model.pt`` and ``run.json`` written at the end of ``qmix train``."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise QmixError(f"run directory not found: {run_dir}")
    if not (run_dir / "model.pt").is_file():
        if stopped_before_first_checkpoint(run_dir):
            hint = " (training stopped before its first checkpoint: start it again with qmix train --force)"
        elif (run_dir / RUN_CHECKPOINT).is_file():
            hint = " (training has not finished: resume it with qmix train --resume)"
        else:
            hint = ""
        if (previous_run_dir(run_dir) / "model.pt").is_file():
            hint += f"; the finished run it replaces is in {previous_run_dir(run_dir)}"
        raise QmixError(f"{run_dir} holds no trained model (model.pt missing){hint}")
    state = load_checkpoint(run_dir / "model.pt")
    meta = json.loads(state["meta"])
    try:
        separations = [separation_from_dict(d) for d in json.loads((run_dir / "separation.json").read_text())]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise QmixError(f"{run_dir / 'separation.json'} is missing or damaged ({exc.__class__.__name__})") from None
    dev = resolve_device(device)
    build = {
        "name": meta["model"],
        "num_classes": len(meta["classes"]),
        "in_chans": meta["channels"],
        "proj_dim": meta["proj_dim"],
        "img_size": meta["img_size"],
    }

    def nets(key: str) -> list[QmixNet]:
        return trained_models(state.get(key, []), device=dev, **build)

    def probes(key: str) -> list[LinearProbe]:
        return [LinearProbe.from_state_dict(p).to(dev) for p in state.get(key, [])]

    run = TrainedRun(
        run_dir=run_dir,
        meta=meta,
        nets=nets("nets"),
        separations=separations,
        probes=probes("probes"),
        device=dev,
        warmup_nets=nets("warmup_nets"),
        warmup_probes=probes("warmup_probes"),
        votes=[NeighbourVote.from_state_dict(v).to(dev) for v in state.get("votes", [])],
        readouts=_saved_part(state.get("readouts"), run_dir, TrainingReadouts.from_state_dict, "training read-outs"),
        fold_keys=_saved_part(state.get("fold_keys"), run_dir, FoldKeys.from_state_dict, "fold keys"),
    )
    _check_votes(run)
    _check_readouts(run)
    return run


def _saved_part(state: dict | None, run_dir: Path, load: Callable[[dict], T], what: str) -> T | None:
    """``load(state)``, or None for a part the run did not save (or saved before it existed); a damaged part (a
    `KeyError` or `ValueError` of ``load``) is a `QmixError` naming the file and ``what``."""
    if state is None:
        return None
    try:
        return load(state)
    except (KeyError, ValueError) as e:
        raise QmixError(f"{run_dir / 'model.pt'}: its {what} are damaged ({e}); train the run again") from e


def _check_votes(run: TrainedRun) -> None:
    """Each net's vote must read the features its probes read: a mismatch (an edited or damaged ``model.pt``)
    would otherwise surface as a shape error deep inside the audit."""
    if not run.votes:
        return
    widths = [len(p.mean) for p in run.probes]
    for k, warm in enumerate(run.warmup_probes[: len(widths)]):
        widths[k] += len(warm.mean)
    if len(run.votes) != len(widths) or any(len(v.mean) != w for v, w in zip(run.votes, widths, strict=False)):
        raise QmixError(
            f"{run.run_dir / 'model.pt'}: its neighbour votes do not match its probes (a damaged or edited file); "
            "train the run again"
        )


def _check_readouts(run: TrainedRun) -> None:
    """Kept read-outs must be one per net and class of a run with probes; read-outs of a run whose snapshots or
    votes were taken out of ``model.pt`` since are not what its remaining parts compute, and are dropped."""
    r = run.readouts
    if r is None:
        return
    expected = (len(run.nets), len(r.keys), len(run.classes))
    if not run.probes or r.probs.shape != expected:
        raise QmixError(
            f"{run.run_dir / 'model.pt'}: its training read-outs do not match its nets (a damaged or edited file); "
            "train the run again"
        )
    snapshots, votes = bool(run.meta.get("audit_warmup")), run.meta.get("audit_neighbours", 0) > 0
    if bool(run.warmup_probes) != snapshots or bool(run.votes) != votes:
        run.readouts = None


@dataclass(frozen=True)
class AuditScores:
    """Per-sample results, in dataset order. ``probs`` (N, K) the nets' ensemble softmax; ``loss``/``uncertainty``
    (N,) normalised to [0, 1] on the run's scale; ``posteriors`` (N, 3) in group order; ``categories`` (N,) int8;
    ``suggestion_probs`` (N, K) what relabels are suggested from: the out-of-fold probes' ensemble (the nets'
    where the run has no probes)."""

    probs: np.ndarray
    loss: np.ndarray
    uncertainty: np.ndarray
    posteriors: np.ndarray
    categories: np.ndarray
    suggestion_probs: np.ndarray


def audit_amp_dtype(run: TrainedRun) -> torch.dtype | None:
    """The precision the audit scores in on ``run.device``: that of the final training scores the separation was
    fitted on (runs saved before ``amp`` was recorded: mixed precision)."""
    return amp_dtype(run.device, run.meta.get("amp", True))


def _context(run: TrainedRun, seed: int) -> StepContext:
    norm = Normalise(tuple(run.meta["norm_mean"]), tuple(run.meta["norm_std"]))
    # TTA views are the run's own weak views: a run trained without flips (digits, text) must not be shown mirrored.
    spec = weak_spec(hflip=run.meta.get("hflip", True), rotation=run.meta.get("rotation", 15.0))
    return StepContext(
        device=run.device,
        amp_dtype=audit_amp_dtype(run),
        scaler=None,
        norm=norm.on(run.device),
        weak=spec,
        strong=spec,
        gen=torch.Generator().manual_seed(seed),
        num_classes=len(run.classes),
    )


def score_dataset(
    run: TrainedRun,
    dataset: Dataset,
    *,
    batch_size: int = 512,
    tta: int = 0,
    cache_dir: str | Path | None = None,
    workers: int = 0,
    reporter: Reporter | None = None,
    recompute: bool = False,
) -> AuditScores:
    """Score every image of ``dataset`` with each net of ``run`` (two; one for ``ce``), optionally averaging ``tta``
    weak views.

    Images with the very pixels of a training image take the read-outs the run kept (`TrainedRun.readouts`)
    instead of running the nets again, unless ``recompute`` or ``tta`` is set (test-time views are random, not
    what training read).
    """
    reporter = reporter or SilentReporter()
    index = {c: i for i, c in enumerate(run.classes)}
    labels = dataset.frame["label"].map(index).to_numpy(dtype=np.int64)
    target = run.decode_target
    images = cached_images(
        dataset,
        size=target.size,
        channels=target.channels,
        cache_dir=cache_dir,
        progress=reporter.task("decoding images", len(dataset)),
        jpeg_scale=target.jpeg_scale,
    )
    pixel_keys, keys = audit_keys(run, dataset, images, labels) if run.probes else (None, None)
    n, classes = len(images), len(run.classes)
    own = np.empty((len(run.nets), n, classes), dtype=np.float32)
    scored = np.empty_like(own)
    todo = np.arange(n)
    if run.readouts is not None and keys is not None and not recompute and tta == 0:
        found = run.readouts.find(images, pixel_keys)
        known = found >= 0
        own[:, known] = run.readouts.probs[:, found[known]]
        scored[:, known] = run.readouts.scored[:, found[known]]
        todo = np.flatnonzero(~known)
    if len(todo):
        store = ImageStore(images, device=run.device, workers=workers)
        rows = None if len(todo) == n else todo
        own[:, todo], scored[:, todo] = _read_nets(run, store, keys, batch_size=batch_size, tta=tta, rows=rows)
    # Loss and uncertainty from what the run's final separation was fitted on (`_finalise`); the predicted label
    # from the nets' own ensemble, the method's classifier. Relabels are suggested from the probes: each training
    # image is judged by a probe that never saw it, where the nets were trained on it, wrong label included, and
    # partly learnt it (docs/decisions.md, "Tenth round").
    scores = compute_scores(scored, labels, uncertainty=run.meta.get("uncertainty", "entropy"))
    posteriors = mean_posteriors(run.separations, scores)
    axes = np.mean([s.normalise(scores.loss[k], scores.uncertainty[k]) for k, s in enumerate(run.separations)], axis=0)
    axes = np.nan_to_num(axes, nan=0.0)
    ensemble = ensemble_probs(own)
    suggestion = ensemble_probs(scored) if run.probes else ensemble  # without probes both are the nets' outputs
    return AuditScores(
        probs=ensemble,
        loss=axes[:, 0],
        uncertainty=axes[:, 1],
        posteriors=posteriors,
        categories=hard_groups(posteriors, p_threshold=run.meta.get("p_threshold", 0.5)),
        suggestion_probs=suggestion.astype(np.float32),  # only its ranking is used
    )


def audit_keys(
    run: TrainedRun, dataset: Dataset, images: np.ndarray, labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Each image's pixel key (`LinearProbe.keys_of`: what finds a training image's read-outs) and fold key (which
    probe head reads it, and which training images may not vote for it), (N,) int64 each, for ``dataset``'s
    ``images`` (N, C, H, W) with given ``labels`` (N,) indices into the run's classes. In a run with a group column
    the fold key of a training image is found by its pixels, that of any other image by its group and label where
    ``dataset`` has the column (else by its pixels alone; `FoldKeys.keys`). In a run without one the two keys are the
    same."""
    # Every net's probe shares the run's seed, so one key per image serves them all.
    pixel_keys = run.probes[0].keys_of(images)
    if run.fold_keys is None:
        return pixel_keys, pixel_keys
    column = run.meta.get("group_column")
    if column is None or column not in dataset.frame.columns:
        return pixel_keys, run.fold_keys.keys(pixel_keys)
    return pixel_keys, run.fold_keys.keys(pixel_keys, *units_of(dataset.frame[column], labels, seed=run.probes[0].seed))


def group_note(run: TrainedRun, dataset: Dataset) -> str | None:
    """A note when ``run`` folded its audit by a group column that ``dataset`` lacks, else None."""
    column = run.meta.get("group_column")
    if run.fold_keys is None or column is None or column in dataset.frame.columns:
        return None
    return (
        f"note: the run keeps a {column}'s images of one label together, and this dataset has no {column} column: its "
        "training images keep their groups (found by their pixels), any other image is judged alone"
    )


def _read_nets(
    run: TrainedRun,
    store: ImageStore,
    keys: np.ndarray | None,
    *,
    batch_size: int,
    tta: int,
    rows: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Each net's softmax and probe output (the softmax where the run has no probes), (nets, N', K) each, on the
    images ``rows`` of ``store`` (all by default), averaged over the eval view and ``tta`` weak views."""
    ctx = _context(run, seed=0)
    views = [None] + [ctx.weak] * tta
    own, scored = [], []
    for k, net in enumerate(run.nets):
        if run.probes:
            # The snapshot's own softmax is not used: predictions come from the final nets, the method's classifier.
            nets, probes = [net], [run.probes[k]]
            if run.warmup_probes:
                nets.append(run.warmup_nets[k])
                probes.append(run.warmup_probes[k])
            vote = run.votes[k] if run.votes else None
            outputs = [
                predict_with_probes(nets, probes, vote, store, ctx, keys, batch_size=batch_size, spec=v, indices=rows)
                for v in views
            ]
            own.append(np.mean([p for p, _ in outputs], axis=0))
            scored.append(np.mean([p for _, p in outputs], axis=0))
        else:
            outputs = [predict_probs(net, store, ctx, batch_size=batch_size, spec=v, indices=rows) for v in views]
            own.append(np.mean(outputs, axis=0))
            scored.append(own[-1])
    return np.stack(own), np.stack(scored)


def report_batches(
    run: TrainedRun,
    dataset: Dataset,
    scores: AuditScores,
    *,
    rows_per_batch: int = 65536,
    sort_by: str = "sample_id",
) -> Iterator[pa.Table]:
    """Report rows in ``sort_by`` order (`REPORT_ORDERS`), ``rows_per_batch`` at a time (one Parquet row group
    each)."""
    ids = dataset.frame["sample_id"].to_numpy(dtype=object)
    posteriors = normalise_posteriors(scores.posteriors)
    rank = compute_ranks(p_clean=posteriors[:, 0], loss=scores.loss, sample_ids=ids.tolist())
    order = np.argsort(rank if sort_by == "rank" else ids, kind="stable")
    index = {c: i for i, c in enumerate(run.classes)}
    labels = dataset.frame["label"].map(index).to_numpy(dtype=np.int64)
    paths = dataset.frame["path"].to_numpy(dtype=object)
    for start in range(0, len(order), rows_per_batch):
        sel = order[start : start + rows_per_batch]
        yield build_report(
            sample_ids=ids[sel].tolist(),
            paths=paths[sel].tolist(),
            given_labels=labels[sel],
            probs=scores.probs[sel],
            suggestion_probs=scores.suggestion_probs[sel],
            loss=scores.loss[sel],
            uncertainty=scores.uncertainty[sel],
            posteriors=posteriors[sel],
            categories=scores.categories[sel],
            class_names=run.classes,
            rank=rank[sel],
            sort_by=sort_by,
        )


def is_training_set(run: TrainedRun, dataset: Dataset) -> bool:
    """Whether ``dataset`` is the one ``run`` was trained on: the same sample ids with the same labels in any row
    order (the run's `dataset_fingerprint` of them as a set), however its path is spelt (``./data``, ``data/``,
    absolute, its manifest, from another working directory) and wherever it was copied. Runs saved before the set
    was kept compare the ids and labels in row order, and runs older still the path as given."""
    if (members := run.meta.get("members")) is not None:
        return members == dataset_fingerprint(dataset, ordered=False)
    if (recorded := run.meta.get("fingerprint")) is not None:
        return recorded == dataset_fingerprint(dataset)
    return dataset.source == run.meta.get("dataset")


def metadata_for(run: TrainedRun, dataset: Dataset, *, group_column: str | None = None) -> dict[bytes, bytes]:
    """The Parquet metadata of an audit of ``dataset`` by ``run``; ``group_column`` names the column its images are
    grouped by, when there is one."""
    return report_metadata(
        method=run.meta["method"],
        model=run.meta["model"],
        class_names=run.classes,
        # Absolute, so that `qmix show` finds the run and the images from any working directory.
        run_dir=os.path.abspath(run.run_dir),
        extra={
            "dataset": dataset.source,
            "dataset_root": os.path.abspath(dataset.root),
            "training_set": is_training_set(run, dataset),
            **({} if (digest := run_digest(run.run_dir)) is None else {"run_digest": digest}),
            **({} if group_column is None else {"group_column": group_column}),
        },
    )
