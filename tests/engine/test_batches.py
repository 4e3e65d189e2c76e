"""Delivering image batches to the training device (`qmix_cli.engine.batches`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from qmix_cli.data.transforms import Normalise, strong_spec, weak_spec
from qmix_cli.engine.batches import ImageStore, device_has_room, epoch_batches, index_tensor, resident_copy
from qmix_cli.engine.models import create_model
from qmix_cli.engine.steps import StepContext, supervised_epoch


@pytest.fixture
def cache(tmp_path) -> np.ndarray:
    rng = np.random.default_rng(0)
    path = tmp_path / "images.npy"
    np.save(path, rng.integers(0, 256, size=(11, 1, 4, 4), dtype=np.uint8))
    return np.load(path, mmap_mode="r")


@pytest.mark.parametrize("chunk_bytes", [1, 16, 48, 10_000])  # under one image, one, three, everything
def test_resident_copy_is_exact_whatever_the_chunk(cache, chunk_bytes):
    out = resident_copy(cache, torch.device("cpu"), chunk_bytes=chunk_bytes)
    assert out.dtype == torch.uint8 and out.shape == cache.shape
    assert np.array_equal(out.numpy(), np.asarray(cache))


def test_store_serves_the_batches_asked_for_in_order(cache):
    store = ImageStore(cache, device=torch.device("cpu"))
    batches = epoch_batches(np.arange(len(cache)), batch_size=4, gen=torch.Generator().manual_seed(0), drop_last=False)
    served = list(store.iterate(batches))
    assert [len(b) for b in served] == [4, 4, 3]
    for idx, batch in zip(batches, served, strict=True):
        assert np.array_equal(batch.numpy(), np.asarray(cache)[idx])


def test_a_last_batch_of_one_image_joins_the_one_before():
    """BatchNorm in training refuses one image over 1 × 1 feature maps: resnet18's last stage at 32 px, the size the
    README suggests for 28-px scans. A dataset of 64 k + 1 images failed its warm-up with the default batch of 64."""
    gen = torch.Generator().manual_seed(0)
    batches = epoch_batches(np.arange(65), batch_size=64, gen=gen, drop_last=False)
    assert [len(b) for b in batches] == [65] and sorted(np.concatenate(batches)) == list(range(65))
    assert [len(b) for b in epoch_batches(np.arange(66), batch_size=64, gen=gen, drop_last=False)] == [64, 2]
    assert [len(b) for b in epoch_batches(np.arange(1), batch_size=64, gen=gen, drop_last=False)] == [1]
    images = np.random.default_rng(0).integers(0, 256, (65, 1, 32, 32), dtype=np.uint8)
    ctx = StepContext(
        device=torch.device("cpu"), amp_dtype=None, scaler=None,
        norm=Normalise((0.5,), (0.25,)).on(torch.device("cpu")),
        weak=weak_spec(hflip=False, rotation=0), strong=strong_spec(hflip=False, rotation=0), gen=gen, num_classes=3,
    )  # fmt: skip
    net = create_model("resnet18", num_classes=3, in_chans=1)
    store, labels = ImageStore(images, device=torch.device("cpu")), torch.randint(0, 3, (65,))
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01)
    losses = supervised_epoch(net, optimizer, store, labels, ctx, batch_size=64, spec=ctx.weak, where="test")
    assert np.isfinite(losses["loss_x"])  # raised "Expected more than 1 value per channel" before


@pytest.mark.parametrize("workers", [0, 1])
def test_a_store_too_large_to_hold_reads_its_map_even_once_the_cache_is_deleted(cache, monkeypatch, workers):
    monkeypatch.setattr("qmix_cli.engine.batches.CPU_RESIDENT_LIMIT", 0)  # read batch by batch, as >2 GiB caches are
    store = ImageStore(cache, device=torch.device("cpu"), workers=workers)
    assert store.tensor is None
    expected = np.array(cache)
    batches = epoch_batches(np.arange(len(cache)), batch_size=4, gen=torch.Generator().manual_seed(1), drop_last=False)
    for _epoch in range(2):
        served = list(store.iterate(batches))
        assert all(np.array_equal(b.numpy(), expected[idx]) for idx, b in zip(batches, served, strict=True))
        Path(cache.filename).unlink(missing_ok=True)  # `rm -rf ~/.cache/qmix` during the run


def test_index_tensor_is_int64_on_the_device_whatever_the_input_dtype():
    idx = index_tensor(np.array([3, 0, 2], dtype=np.int32), torch.device("cpu"))
    assert idx.dtype == torch.int64 and idx.tolist() == [3, 0, 2]


def test_device_has_room_reads_the_gpus_free_memory_and_never_refuses_the_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (1000, 4000))
    gpu = torch.device("cuda")
    assert device_has_room(gpu, 249, share=0.25) and not device_has_room(gpu, 250, share=0.25)
    assert device_has_room(gpu, 499, share=0.5)
    assert device_has_room(torch.device("cpu"), 10**15, share=0.25)
