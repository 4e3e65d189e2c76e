"""One epoch of each kind of training, and prediction.

The three methods share these; what differs is which groups feed the labelled and unlabelled streams and which
loss terms are on (`MethodRules`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from qmix_cli.categories import CLEAN, MIS_L
from qmix_cli.data.transforms import PlacedNormalise, ViewSpec, eval_view, make_view
from qmix_cli.engine.batches import (
    ImageStore,
    device_has_room,
    epoch_batches,
    epoch_size,
    index_tensor,
)
from qmix_cli.engine.losses import (
    mislq_weights,
    prior_regulariser,
    soft_cross_entropy,
    supervised_contrastive,
    unlabelled_mse,
)
from qmix_cli.engine.models import QmixNet, place_input
from qmix_cli.engine.neighbours import NeighbourVote
from qmix_cli.engine.probe import LinearProbe
from qmix_cli.engine.scoring import probe_output
from qmix_cli.engine.targets import co_guess, co_refine, mixup, pseudo_label, sample_lambda
from qmix_cli.errors import TrainingError


@dataclass(frozen=True)
class MethodRules:
    """What makes a method: how many nets, how groups are found, which loss terms run."""

    name: str
    num_nets: int
    separation: str | None  # "quality" (2-D GMM), "loss" (1-D GMM) or None (no co-divide)
    warmup_view: str  # "weak" or "strong"
    mislq_labelled: bool  # Mis-L joins the labelled stream with a pseudo-label and a lower weight
    contrastive: bool


METHOD_RULES = {
    # Warm-up with weak views for qmix too, not the paper's strong ones: see docs/decisions.md.
    "qmix": MethodRules("qmix", 2, "quality", "weak", mislq_labelled=True, contrastive=True),
    "dividemix": MethodRules("dividemix", 2, "loss", "weak", mislq_labelled=False, contrastive=False),
    "ce": MethodRules("ce", 1, None, "weak", mislq_labelled=False, contrastive=False),
}


def method_rules(method: str, *, mislq_stream: str = "labelled") -> MethodRules:
    """The rules of ``method`` (`METHOD_RULES`). ``mislq_stream="unlabelled"`` moves qmix's Mis-L samples into
    the unlabelled stream, co-guessed like Mis-H (and so no longer negatives of ``L_con``): an ablation of the
    paper's design (docs/decisions.md, "Ninth round"). Methods without a Mis-L branch are unchanged."""
    rules = METHOD_RULES[method]
    if mislq_stream == "unlabelled" and rules.mislq_labelled:
        rules = replace(rules, mislq_labelled=False)
    return rules


@dataclass
class StepContext:
    """Everything a step needs besides the nets: device, precision, views and the run's generator."""

    device: torch.device
    amp_dtype: torch.dtype | None
    scaler: torch.amp.GradScaler | None
    norm: PlacedNormalise  # on ``device`` (`Normalise.on`): built once, not per view
    weak: ViewSpec
    strong: ViewSpec
    gen: torch.Generator
    num_classes: int
    compiled: bool = False  # the nets are torch.compile'd: inputs keep the default layout (`channels_last_on`)

    def autocast(self) -> contextlib.AbstractContextManager:
        return autocast(self.device, self.amp_dtype)

    def view(self, x: torch.Tensor, spec: ViewSpec) -> torch.Tensor:
        return place_input(make_view(x, spec, self.gen, self.norm), compiled=self.compiled)

    def eval_view(self, x: torch.Tensor) -> torch.Tensor:
        return place_input(eval_view(x, self.norm), compiled=self.compiled)


def autocast(device: torch.device, amp_dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Mixed precision in ``amp_dtype`` on ``device``; nothing when it is None."""
    if amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=amp_dtype)


# How often, in steps, a CUDA epoch reads its loss sums to check them (on the CPU: every step, where it is free).
FINITE_CHECK_STEPS = 25


class EpochLosses:
    """An epoch's loss sums, kept on the device, and the check that stops training on a non-finite loss.

    Reading a loss on the host (``.item()``, ``float()``, an ``if`` on a tensor) makes it wait for everything queued
    on the GPU, which then idles while the host prepares the next step. So on CUDA the sums are read every
    `FINITE_CHECK_STEPS` steps and at the end of the epoch; a non-finite loss poisons the sums, so it is still
    caught, a few steps later, before the epoch ends and anything is saved. On the CPU the check runs every step
    before the optimiser, as it always did. The sums are float64, the precision of a Python float, so the epoch
    means are those of adding ``loss.item()`` step by step.
    """

    def __init__(
        self,
        keys: tuple[str, ...],
        *,
        checked: str,
        device: torch.device,
        where: str,
        every: int | None = None,
        mixed: bool = False,
    ) -> None:
        self.sums = {k: torch.zeros((), dtype=torch.float64, device=device) for k in keys}
        self.checked, self.where, self.mixed = checked, where, mixed  # mixed: trained under autocast
        self.every = every or (1 if device.type == "cpu" else FINITE_CHECK_STEPS)
        self.steps = 0

    def add(self, values: dict[str, torch.Tensor], *, weight: float = 1.0) -> None:
        """Add one step's losses (scalars, weighted by ``weight``); call before the optimiser step."""
        for key, value in values.items():
            self.sums[key] += value.detach().double() * weight
        self.steps += 1
        if self.steps % self.every == 0:
            self.check()

    def check(self) -> None:
        total = self.sums[self.checked]
        if not torch.isfinite(total):
            # Without mixed precision (the CPU, or --no-amp) there is no --no-amp to suggest.
            amp = "--resume --no-amp continues from it without mixed precision; " if self.mixed else ""
            raise TrainingError(
                f"the loss became {total.item()} ({self.where}). The last checkpoint, if an epoch has finished, is "
                f"kept: {amp}a lower --lr needs a new run (--force). Check the images too"
            )

    def means(self, divisor: float) -> dict[str, float]:
        """Check once more, then every sum over ``divisor`` (at least 1) as a float."""
        self.check()
        return {k: float(v) / max(divisor, 1) for k, v in self.sums.items()}


def optimise(loss: torch.Tensor, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None) -> None:
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()


def _eval_outputs(
    readers: Sequence[tuple[QmixNet, int | None]],
    store: ImageStore,
    ctx: StepContext,
    *,
    batch_size: int,
    spec: ViewSpec | None,
    indices: np.ndarray | None = None,
) -> Iterator[list[tuple[torch.Tensor, torch.Tensor | None]]]:
    """For each batch, each net's (softmax, features or None), float32 on the device, all of one view of the batch:
    the deterministic eval view, or with ``spec`` one random view of that kind per image (test-time augmentation).
    ``readers`` pairs each net with the ``stages`` of `QmixNet.forward_with_stages` to return features of, or None
    for no features. ``indices`` (ascending) are the images to read, by default all of ``store``."""
    for net, _ in readers:
        net.eval()
    order = np.arange(len(store)) if indices is None else np.asarray(indices, dtype=np.int64)
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    for x in store.iterate(batches):
        xv = ctx.eval_view(x) if spec is None else ctx.view(x, spec)
        outputs = []
        for net, stages in readers:
            with ctx.autocast():
                # net(x) when only the softmax is asked for: that is the call `torch.compile` has optimised.
                logits, feats = (net(xv), None) if stages is None else net.forward_with_stages(xv, stages=stages)
            outputs.append((torch.softmax(logits.float(), dim=1), None if feats is None else feats.float()))
        yield outputs


@torch.no_grad()
def predict_probs(
    net: QmixNet,
    store: ImageStore,
    ctx: StepContext,
    *,
    batch_size: int,
    spec: ViewSpec | None = None,
    indices: np.ndarray | None = None,
) -> np.ndarray:
    """Softmax of ``net`` on every image (or on ``indices``), float32 (N, K) (see `_eval_outputs`)."""
    outputs = _eval_outputs([(net, None)], store, ctx, batch_size=batch_size, spec=spec, indices=indices)
    return torch.cat([p.cpu() for [(p, _)] in outputs]).numpy()


# Copies of the (N, D) features the probe fit holds at once: the features, their standardised copy sorted by fold,
# and one fold's rows while scoring (`qmix_cli.engine.probe`).
PROBE_FEATURE_COPIES = 3
# Features up to this size are fitted on the host even when a GPU trained the nets (about 21,000 images of a
# resnet18's two probe stages, 768 floats each). torch's L-BFGS reads a step size on the host for every stored
# history pair of every iteration, so on a GPU the fit waits for the device tens of thousands of times, whatever
# the data's size: on the H200 the final fits of 3,000 images took 6.8 s, against about 1 s on a 2-core CPU
# (docs/decisions.md, "Thirteenth round"). Above it the GPU's arithmetic wins back its waiting.
PROBE_HOST_BYTES = 64 << 20


def probe_fit_device(device: torch.device, feature_bytes: int) -> torch.device:
    """Where to hold ``feature_bytes`` of probe features computed on ``device``, and so fit the probe: on a GPU
    only when they exceed `PROBE_HOST_BYTES` and `PROBE_FEATURE_COPIES` copies fit in half its free memory (a
    large dataset on a small GPU is fitted on the host, slower, rather than running out of memory at the end of a
    long run); otherwise on the host."""
    if device.type == "cpu":
        return device
    fits = device_has_room(device, PROBE_FEATURE_COPIES * feature_bytes, share=0.5)
    return device if feature_bytes > PROBE_HOST_BYTES and fits else torch.device("cpu")


@torch.no_grad()
def predict_features(
    net: QmixNet, store: ImageStore, ctx: StepContext, *, batch_size: int, stages: int = 1
) -> tuple[torch.Tensor, np.ndarray]:
    """The features of `QmixNet.forward_with_stages` of the eval view (N, D'), float32, to fit the audit probe on,
    on the device `probe_fit_device` chooses; and the net's softmax of the same view (N, K) float32, which the
    same forwards give."""
    out: torch.Tensor | None = None
    probs = []
    start = 0
    for [(p, feats)] in _eval_outputs([(net, stages)], store, ctx, batch_size=batch_size, spec=None):
        if out is None:
            where = probe_fit_device(feats.device, len(store) * feats.shape[1] * feats.element_size())
            out = feats.new_empty((len(store), feats.shape[1]), device=where)
        out[start : start + len(feats)].copy_(feats)
        probs.append(p)  # on the device until the end: a copy per batch would wait for the GPU every batch
        start += len(feats)
    if out is None:
        raise ValueError("no images to compute features of")
    return out, torch.cat(probs).cpu().numpy()


@torch.no_grad()
def predict_with_probes(
    nets: Sequence[QmixNet],
    probes: Sequence[LinearProbe],
    vote: NeighbourVote | None,
    store: ImageStore,
    ctx: StepContext,
    keys: np.ndarray,
    *,
    batch_size: int,
    spec: ViewSpec | None = None,
    indices: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """One net's softmax (N, K) and its probe output (N, K), `probe_output` of its probes and vote.

    ``nets`` are the final net and, where the run kept it, its warm-up snapshot, ``probes`` theirs, ``vote`` the
    net's neighbour vote over the features of ``nets`` in that order, as it was fitted (or None); the softmax is
    that of ``nets[0]``. Each image is read by the head of its fold and voted on by its neighbours other than its
    copies or group (``keys`` (N,), from `LinearProbe.keys_of` or `FoldKeys.keys`). Batch by batch: the features,
    N × D' floats, are never all held at once, which is what lets an audit of millions of images run in the memory
    of a batch. With ``indices`` (ascending) only those images are read, and the outputs have their rows."""
    readers = [(net, probe.stages) for net, probe in zip(nets, probes, strict=True)]
    rows = np.arange(len(store)) if indices is None else np.asarray(indices, dtype=np.int64)
    if vote is not None:
        # Its bank is stored in half precision: widened once here, not at every batch (0.5 ms of an audit batch's
        # 6.4 ms vote against 5,000 training images on a 2-core CPU).
        vote = vote.to(ctx.device)
    own, probed, start = [], [], 0
    for outputs in _eval_outputs(readers, store, ctx, batch_size=batch_size, spec=spec, indices=rows):
        feats = [f for _, f in outputs]
        stop = start + len(feats[0])
        batch_keys = keys[rows[start:stop]]
        heads = [probe.probs(f, batch_keys) for probe, f in zip(probes, feats, strict=True)]
        own.append(outputs[0][0].cpu())
        probed.append(probe_output(heads, None if vote is None else vote.probs(feats, batch_keys)))
        start = stop
    return torch.cat(own).numpy(), np.concatenate(probed)


def supervised_epoch(
    net: nn.Module,
    optimizer: torch.optim.Optimizer,
    store: ImageStore,
    labels: torch.Tensor,
    ctx: StepContext,
    *,
    batch_size: int,
    spec: ViewSpec,
    where: str,
    progress: Callable[[int], None] | None = None,
) -> dict[str, float]:
    """Cross-entropy on the given labels for every image (warm-up, and the whole of the ``ce`` method)."""
    net.train()
    batches = epoch_batches(np.arange(len(store)), batch_size=batch_size, gen=ctx.gen, drop_last=False)
    losses = EpochLosses(
        ("loss_x",), checked="loss_x", device=labels.device, where=where, mixed=ctx.amp_dtype is not None
    )
    seen = 0
    for idx, x in zip(batches, store.iterate(batches), strict=True):
        y = labels[index_tensor(idx, labels.device)]
        view = ctx.view(x, spec)  # outside autocast: the augmentation's sampling grid stays in full precision
        with ctx.autocast():
            logits = net(view)
        loss = F.cross_entropy(logits.float(), y)
        losses.add({"loss_x": loss}, weight=len(idx))
        optimise(loss, optimizer, ctx.scaler)
        seen += len(idx)
        if progress:
            progress(len(idx))
    return losses.means(seen)


@dataclass(frozen=True)
class SslWeights:
    temperature: float
    mixup_alpha: float
    lambda_u: float
    mislq_weight: float
    lambda_con: float
    con_temperature: float


# A short last batch would give mixup and BatchNorm a handful of rows; the semi-supervised epoch drops it.
SSL_DROP_LAST = True


def ssl_epoch_size(n: int, *, batch_size: int) -> int:
    """How many of ``n`` images one `ssl_epoch` trains on (the total of its progress reports)."""
    return epoch_size(n, batch_size=batch_size, drop_last=SSL_DROP_LAST)


def ssl_epoch(
    net: nn.Module,
    peer: nn.Module,
    optimizer: torch.optim.Optimizer,
    store: ImageStore,
    labels: torch.Tensor,
    posteriors: torch.Tensor,
    groups: np.ndarray,
    ctx: StepContext,
    *,
    rules: MethodRules,
    weights: SslWeights,
    prior: torch.Tensor,
    batch_size: int,
    where: str,
    progress: Callable[[int], None] | None = None,
) -> dict[str, float]:
    """One epoch of quality-aware semi-supervised training of ``net`` on the peer's groups (METHOD.md).

    ``posteriors`` (N, 3) and ``groups`` (N,) come from the *peer's* separation. Correct (and, for qmix, Mis-L)
    samples form the labelled stream; Mis-H samples (for dividemix: every non-clean one) the unlabelled stream.
    The epoch is one shuffled pass over all N images in batches of ``batch_size`` (a short last batch is
    dropped); each batch is split into its labelled members, then its unlabelled ones.
    """
    labelled_mask = groups == CLEAN
    if rules.mislq_labelled:
        labelled_mask |= groups == MIS_L
    # One epoch is one pass over every image; each batch splits into its labelled and unlabelled members.
    # Both methods then do the same work per epoch whatever their group sizes (docs/decisions.md).
    batches = epoch_batches(np.arange(len(groups)), batch_size=batch_size, gen=ctx.gen, drop_last=SSL_DROP_LAST)
    l_batches = [b[labelled_mask[b]] for b in batches]
    combined = [np.concatenate([lb, b[~labelled_mask[b]]]) for lb, b in zip(l_batches, batches, strict=True)]
    groups_t = torch.as_tensor(groups, device=ctx.device)

    net.train()
    peer.eval()
    keys = ("loss_x", "loss_u", "loss_reg", "loss_con", "loss_total")
    losses = EpochLosses(keys, checked="loss_total", device=ctx.device, where=where, mixed=ctx.amp_dtype is not None)
    eye = torch.eye(ctx.num_classes, device=ctx.device)
    for lb, x in zip(l_batches, store.iterate(combined), strict=True):
        nl = len(lb)
        nu = len(x) - nl
        idx = index_tensor(lb, ctx.device)
        g = groups_t[idx]
        refined = eye[labels[idx]]  # (0, K) when the batch has no labelled member
        # Rows [xl, xl, xu, xu]: one weak and one strong call make both views of both streams, the first 2·nl rows
        # of each the labelled stream's two views. Four calls per kind cost four times the host work of building a
        # view, which on a GPU is what the device waits for (docs/decisions.md, "Fourteenth round").
        xl, xu = x[:nl], x[nl:]
        doubled = torch.cat([xl, xl, xu, xu])
        with torch.no_grad():  # the view outside autocast, as the strong one is: its sampling grid in full precision
            weak = ctx.view(doubled, ctx.weak)
        with torch.no_grad(), ctx.autocast():
            # One forward per stream, not one for both: each train-mode forward moves BatchNorm's running estimates
            # towards its batch, and these weak views keep them near the eval view. A single forward cut their share
            # against the mixed-up training forward from 63 % to 47 % and cost qmix 0.01 of test accuracy on every
            # benchmark seed (docs/decisions.md, "Fourteenth round"). An empty stream is skipped: BatchNorm cannot
            # normalise no rows.
            if nl:
                p_l = torch.softmax(net(weak[: 2 * nl]).float(), dim=1).view(2, nl, -1)
                refined = co_refine(refined, p_l, posteriors[idx, CLEAN], temperature=weights.temperature)
            if nl and rules.mislq_labelled:
                guessed = pseudo_label(p_l, temperature=weights.temperature)
                refined = torch.where((g == MIS_L)[:, None], guessed, refined)
            if nu:
                wu = weak[2 * nl :]
                p_u = torch.cat([torch.softmax(net(wu).float(), 1), torch.softmax(peer(wu).float(), 1)])
                target_u = co_guess(p_u.view(4, nu, -1), temperature=weights.temperature)
        w_l = mislq_weights(g, posteriors[idx, MIS_L], mislq_weight=weights.mislq_weight)
        targets, sample_w = [refined, refined], [w_l, w_l]
        if nu:
            targets += [target_u, target_u]
            sample_w += [torch.ones(2 * nu, device=ctx.device)]
        inputs, targets_t, weights_t = ctx.view(doubled, ctx.strong), torch.cat(targets), torch.cat(sample_w)
        lam = sample_lambda(weights.mixup_alpha, ctx.gen)
        perm = torch.randperm(len(inputs), generator=ctx.gen).to(ctx.device, non_blocking=True)
        mixed, mixed_t, mixed_w = mixup(inputs, targets_t, weights_t, lam=lam, perm=perm)

        with ctx.autocast():
            # Through __call__, so that a compiled net compiles this call too.
            logits, proj = net(mixed, projection=True)
        logits = logits.float()
        loss_x = soft_cross_entropy(logits[: 2 * nl], mixed_t[: 2 * nl], mixed_w[: 2 * nl])
        loss_u = unlabelled_mse(logits[2 * nl :], mixed_t[2 * nl :]) if nu else logits.new_zeros(())
        loss_reg = prior_regulariser(logits, prior)
        if rules.contrastive and weights.lambda_con > 0:
            # The projections of the labelled half of the mixed batch: each row is dominated (λ ≥ 0.5) by the
            # strong view it came from, so the two halves pair up as the two views (docs/decisions.md).
            loss_con = supervised_contrastive(
                proj[: 2 * nl],
                refined.argmax(dim=1),
                g == CLEAN,
                g == MIS_L,
                temperature=weights.con_temperature,
            )
        else:
            loss_con = logits.new_zeros(())
        loss = loss_x + weights.lambda_u * loss_u + loss_reg + weights.lambda_con * loss_con
        losses.add(dict(zip(keys, (loss_x, loss_u, loss_reg, loss_con, loss), strict=True)))
        optimise(loss, optimizer, ctx.scaler)
        if progress:
            progress(len(x))
    return losses.means(losses.steps)
