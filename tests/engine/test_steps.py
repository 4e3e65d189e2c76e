"""The semi-supervised epoch: one pass over every image for every method, whatever the group sizes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from qmix_cli.categories import CLEAN, MIS_H, MIS_L
from qmix_cli.data.transforms import Normalise, strong_spec, weak_spec
from qmix_cli.engine import steps
from qmix_cli.engine.batches import ImageStore
from qmix_cli.engine.models import create_model
from qmix_cli.engine.neighbours import fit_neighbour_vote
from qmix_cli.engine.probe import fit_probe, folds_of_keys, image_keys
from qmix_cli.engine.scoring import probe_output
from qmix_cli.engine.steps import (
    METHOD_RULES,
    PROBE_FEATURE_COPIES,
    PROBE_HOST_BYTES,
    EpochLosses,
    SslWeights,
    StepContext,
    method_rules,
    predict_features,
    predict_probs,
    predict_with_probes,
    probe_fit_device,
    ssl_epoch,
    ssl_epoch_size,
)
from qmix_cli.errors import TrainingError

N, K, BATCH = 48, 3, 16


class RecordingStore(ImageStore):
    """An ImageStore that remembers which indices each epoch asked for."""

    def __init__(self, images: np.ndarray) -> None:
        super().__init__(images, device=torch.device("cpu"))
        self.seen: list[np.ndarray] = []

    def iterate(self, batches):
        self.seen.extend(batches)
        yield from super().iterate(batches)


def _ctx(seed: int, amp_dtype: torch.dtype | None = None) -> StepContext:
    """A CPU step context for one-channel 16 × 16 images and K classes."""
    return StepContext(
        device=torch.device("cpu"), amp_dtype=amp_dtype, scaler=None,
        norm=Normalise((0.5,), (0.25,)).on(torch.device("cpu")),
        weak=weak_spec(hflip=False, rotation=10), strong=strong_spec(hflip=False, rotation=10),
        gen=torch.Generator().manual_seed(seed), num_classes=K,
    )  # fmt: skip


def _epoch(
    method: str,
    groups: np.ndarray,
    *,
    seed: int = 0,
    progress=None,
    mislq_stream: str = "labelled",
    lambda_u: float = 1,
    lambda_con: float = 0.1,
    amp_dtype: torch.dtype | None = None,
) -> tuple[dict, RecordingStore]:
    n = len(groups)
    rng = np.random.default_rng(seed)
    store = RecordingStore(rng.integers(0, 256, (n, 1, 16, 16), dtype=np.uint8))
    torch.manual_seed(seed)
    nets = [create_model("test_resnet", num_classes=K, in_chans=1, proj_dim=8) for _ in range(2)]
    posteriors = torch.zeros(n, 3)
    posteriors[np.arange(n), torch.as_tensor(groups, dtype=torch.long)] = 0.9
    posteriors += 0.05
    ctx = _ctx(seed, amp_dtype)
    weights = SslWeights(temperature=0.5, mixup_alpha=4, lambda_u=lambda_u, mislq_weight=0.5, lambda_con=lambda_con,
                         con_temperature=0.1)  # fmt: skip
    out = ssl_epoch(
        nets[0], nets[1], torch.optim.SGD(nets[0].parameters(), lr=0.01), store,
        torch.as_tensor(rng.integers(0, K, n)), posteriors, groups, ctx,
        rules=method_rules(method, mislq_stream=mislq_stream), weights=weights, prior=torch.full((K,), 1 / K),
        batch_size=BATCH, where="test",
        progress=progress,
    )  # fmt: skip
    return out, store


@pytest.mark.parametrize("method", ["qmix", "dividemix"])
def test_every_image_is_seen_once_per_epoch_whatever_the_groups(method):
    groups = np.array([CLEAN] * 30 + [MIS_H] * 6 + [MIS_L] * 12, dtype=np.int8)
    _, store = _epoch(method, groups)
    seen = np.concatenate(store.seen)
    assert np.array_equal(np.sort(seen), np.arange(N))
    assert all(len(b) == BATCH for b in store.seen)


def test_labelled_members_come_first_in_each_batch():
    groups = np.array([CLEAN, MIS_H, MIS_L] * (N // 3), dtype=np.int8)
    _, store = _epoch("qmix", groups)
    for batch in store.seen:
        labelled = np.isin(groups[batch], (CLEAN, MIS_L))
        assert not np.any(labelled[1:] & ~labelled[:-1]), "an unlabelled image precedes a labelled one"


@pytest.mark.parametrize(
    ("groups", "zero_key"),
    [(np.full(N, MIS_H, dtype=np.int8), "loss_x"), (np.full(N, CLEAN, dtype=np.int8), "loss_u")],
)
def test_a_missing_stream_contributes_nothing_and_nothing_breaks(groups, zero_key):
    out, _ = _epoch("qmix", groups)
    assert out[zero_key] == 0.0
    assert all(np.isfinite(v) for v in out.values())
    assert out["loss_total"] > 0


@pytest.mark.parametrize("method", ["qmix", "dividemix"])
def test_epoch_total_is_the_weighted_sum_of_its_terms(method):
    # L = L_x + λ_u·L_u + L_reg + λ_con·L_con at every step, so the epoch means add up the same way. Weights other
    # than 1 so that a term added unweighted (or weighted twice) shows.
    groups = np.array([CLEAN, MIS_H, MIS_L] * (N // 3), dtype=np.int8)
    out, _ = _epoch(method, groups, lambda_u=3.0, lambda_con=0.5)
    expected = out["loss_x"] + 3.0 * out["loss_u"] + out["loss_reg"] + 0.5 * out["loss_con"]
    assert out["loss_total"] == pytest.approx(expected, rel=1e-6)
    assert out["loss_x"] > 0 and out["loss_u"] > 0
    # Only qmix has the contrastive term; dividemix must not pay for it.
    if method == "qmix":
        assert out["loss_con"] > 0
    else:
        assert out["loss_con"] == 0.0


@pytest.mark.parametrize(("stream", "zero_key", "trained_key"), [("labelled", "loss_u", "loss_x"),
                                                                  ("unlabelled", "loss_x", "loss_u")])  # fmt: skip
def test_mislq_stream_decides_which_loss_trains_mis_l(stream, zero_key, trained_key):
    out, store = _epoch("qmix", np.full(N, MIS_L, dtype=np.int8), mislq_stream=stream)
    assert out[zero_key] == 0.0
    assert out[trained_key] > 0
    assert np.array_equal(np.sort(np.concatenate(store.seen)), np.arange(N))


@pytest.mark.parametrize("method", ["dividemix", "ce"])
def test_mislq_stream_leaves_methods_without_mis_l_alone(method):
    assert method_rules(method, mislq_stream="unlabelled") == METHOD_RULES[method]
    assert method_rules("qmix", mislq_stream="unlabelled").contrastive  # L_con stays, without Mis-L negatives


@pytest.mark.parametrize("n", [N, N + 5, BATCH - 3])
def test_progress_total_is_what_the_epoch_reports(n):
    # The trainer sizes its progress bar with ssl_epoch_size; a bar that never reaches its total never closes.
    groups = np.array([CLEAN, MIS_H, MIS_L] * n, dtype=np.int8)[:n]
    reported = []
    _epoch("qmix", groups, progress=reported.append)
    assert sum(reported) == ssl_epoch_size(n, batch_size=BATCH)


def test_augmented_views_are_made_in_full_precision_under_mixed_precision(monkeypatch):
    """A view's rotation and shift go through a sampling grid (a batched matrix product), which autocast runs in
    bf16 or fp16: on a GPU run the weak views that make the refined labels and guesses came out shifted by up to
    half a pixel at 224 px. Every view is made outside autocast; the nets still run inside it."""
    made_under_autocast = []
    real = steps.make_view

    def recording(*args, **kwargs):
        made_under_autocast.append(torch.is_autocast_enabled("cpu"))
        return real(*args, **kwargs)

    monkeypatch.setattr(steps, "make_view", recording)
    _epoch("qmix", np.array([CLEAN, MIS_H, MIS_L] * 16, dtype=np.int8), amp_dtype=torch.bfloat16)
    store = ImageStore(np.zeros((20, 1, 16, 16), dtype=np.uint8), device=torch.device("cpu"))
    net = create_model("test_resnet", num_classes=K, in_chans=1)
    ctx = _ctx(0, torch.bfloat16)
    steps.supervised_epoch(
        net, torch.optim.SGD(net.parameters(), lr=0.01), store, torch.zeros(20, dtype=torch.long), ctx,
        batch_size=BATCH, spec=ctx.weak, where="test",
    )  # fmt: skip
    assert made_under_autocast and not any(made_under_autocast)


def test_streamed_probe_read_out_equals_the_probes_and_vote_on_all_features():
    """The audit applies each net's probes and vote batch by batch, the final net and its snapshot on one view of
    each batch; every row must get what they give it on the whole feature matrices, with the head of its own fold
    and its own neighbours, whatever the batch boundaries."""
    rng = np.random.default_rng(0)
    n = 70
    images = rng.integers(0, 256, (n, 1, 16, 16), dtype=np.uint8)
    labels = rng.integers(0, K, n)
    store = ImageStore(images, device=torch.device("cpu"))
    torch.manual_seed(0)
    nets = [create_model("test_resnet", num_classes=K, in_chans=1) for _ in range(2)]
    ctx = _ctx(0)
    keys = image_keys(images, seed=0)
    read = [predict_features(net, store, ctx, batch_size=32, stages=s) for net, s in zip(nets, (2, 1), strict=True)]
    feats = [f for f, _ in read]
    probes = [fit_probe(f, labels, keys, num_classes=K, stages=s) for f, s in zip(feats, (2, 1), strict=True)]
    vote = fit_neighbour_vote(feats, labels, keys, num_classes=K, k=5)
    whole = probe_output([p.probs(f, keys) for p, f in zip(probes, feats, strict=True)], vote.probs(feats, keys))
    own, probed = predict_with_probes(nets, probes, vote, store, ctx, keys, batch_size=16)  # 16 does not divide 70
    np.testing.assert_allclose(own, predict_probs(nets[0], store, ctx, batch_size=32), atol=1e-6)
    np.testing.assert_allclose(read[0][1], own, atol=1e-6)  # the features' forwards give the softmax too
    np.testing.assert_allclose(probed, whole, atol=1e-6)
    # Some rows only (what an audit runs on images the run does not know): each gets what it got among all.
    rows = np.array([0, 3, 4, 17, 40, 41, 69])
    own_rows, probed_rows = predict_with_probes(nets, probes, vote, store, ctx, keys, batch_size=4, indices=rows)
    np.testing.assert_allclose(own_rows, own[rows], atol=1e-6)
    np.testing.assert_allclose(probed_rows, whole[rows], atol=1e-6)
    np.testing.assert_allclose(predict_probs(nets[1], store, ctx, batch_size=4, indices=rows),
                               predict_probs(nets[1], store, ctx, batch_size=32)[rows], atol=1e-6)  # fmt: skip
    assert len(np.unique(folds_of_keys(keys))) > 1  # several heads were used
    _, heads_only = predict_with_probes(nets[:1], probes[:1], None, store, ctx, keys, batch_size=16)
    np.testing.assert_allclose(heads_only, probes[0].probs(feats[0], keys), atol=1e-6)


def test_probe_features_stay_on_a_gpu_only_when_large_and_when_they_fit(monkeypatch):
    # Small fits are faster on the host (L-BFGS waits for the GPU at every history pair); large ones stay on the
    # GPU unless their copies would not fit in half its free memory.
    free = 10 * PROBE_FEATURE_COPIES * PROBE_HOST_BYTES
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (free, 2 * free))
    gpu, cpu = torch.device("cuda"), torch.device("cpu")
    assert probe_fit_device(gpu, PROBE_HOST_BYTES) == cpu
    assert probe_fit_device(gpu, PROBE_HOST_BYTES + 1) == gpu
    assert probe_fit_device(gpu, free // (2 * PROBE_FEATURE_COPIES) - 1) == gpu
    assert probe_fit_device(gpu, free // (2 * PROBE_FEATURE_COPIES) + 1) == cpu
    assert probe_fit_device(cpu, 10 * free) == cpu


def test_loss_sums_are_checked_every_step_on_the_cpu_and_every_few_steps_otherwise():
    finite, nan = torch.tensor(0.5), torch.tensor(float("nan"))
    cpu = EpochLosses(("loss",), checked="loss", device=torch.device("cpu"), where="epoch 1, net 0")
    cpu.add({"loss": finite}, weight=2)
    with pytest.raises(TrainingError, match=r"the loss became nan \(epoch 1, net 0\)"):
        cpu.add({"loss": nan})  # before the optimiser would take this step
    # Deferred (as on CUDA, where each check makes the host wait for the GPU): a NaN poisons the sums, so the
    # next check still stops the epoch before it can end and be saved.
    deferred = EpochLosses(("loss",), checked="loss", device=torch.device("cpu"), where="epoch 2", every=3)
    deferred.add({"loss": nan})
    deferred.add({"loss": finite})
    with pytest.raises(TrainingError, match="loss became nan"):
        deferred.add({"loss": finite})
    short = EpochLosses(("loss",), checked="loss", device=torch.device("cpu"), where="epoch 3", every=25)
    short.add({"loss": torch.tensor(float("inf"))})
    with pytest.raises(TrainingError, match="loss became inf"):
        short.means(1)


@pytest.mark.parametrize("mixed", [True, False])
def test_a_non_finite_loss_suggests_no_amp_only_where_mixed_precision_was_on(mixed):
    losses = EpochLosses(("loss",), checked="loss", device=torch.device("cpu"), where="epoch 1", mixed=mixed)
    with pytest.raises(TrainingError, match="a lower --lr needs a new run") as stopped:
        losses.add({"loss": torch.tensor(float("nan"))})
    assert ("--no-amp" in str(stopped.value)) == mixed


def test_epoch_means_are_float64_sums_as_if_read_step_by_step():
    values = [torch.tensor(v, dtype=torch.float32) for v in (0.1, 0.2, 0.30000001, 1e-8)]
    sums = EpochLosses(("a", "b"), checked="a", device=torch.device("cpu"), where="")
    expected = 0.0
    for v in values:
        sums.add({"a": v, "b": 2 * v}, weight=3)
        expected += v.item() * 3
    means = sums.means(12)
    assert means["a"] == expected / 12  # exactly: the epoch means in metrics.jsonl did not change
    assert means["b"] == pytest.approx(2 * expected / 12)
