"""Weak / strong / eval views of uint8 batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from qmix_cli.data.transforms import Normalise, ViewSpec, channel_stats, eval_view, make_view, strong_spec, weak_spec


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _norm(c: int) -> Normalise:
    return Normalise(mean=(0.4,) * c, std=(0.2,) * c)


@pytest.fixture(params=[1, 3], ids=["gray", "rgb"])
def batch(request, digits_dir) -> torch.Tensor:
    """Eight real 32×32 digit images, as uint8 (B, C, H, W)."""
    from PIL import Image

    paths = sorted(digits_dir.rglob("*.png"))[:8]
    imgs = [np.asarray(Image.open(p).convert("L" if request.param == 1 else "RGB")) for p in paths]
    arr = np.stack(imgs)
    arr = arr[:, None] if arr.ndim == 3 else arr.transpose(0, 3, 1, 2)
    return torch.from_numpy(np.ascontiguousarray(arr))


def test_views_keep_shape_and_are_float32(batch):
    c = batch.shape[1]
    original = batch.clone()
    for spec in (weak_spec(hflip=True, rotation=15), strong_spec(hflip=True, rotation=15)):
        view = make_view(batch, spec, _gen(), _norm(c))
        assert view.shape == batch.shape
        assert view.dtype == torch.float32
        assert torch.isfinite(view).all()
    ev = eval_view(batch, _norm(c))
    assert ev.shape == batch.shape and ev.dtype == torch.float32
    assert torch.equal(batch, original)  # the input batch is not modified in place


def test_eval_view_is_scaling_and_normalisation(batch):
    c = batch.shape[1]
    ev = eval_view(batch, _norm(c))
    expected = (batch.float() / 255.0 - 0.4) / 0.2
    assert torch.allclose(ev, expected)


def test_weak_view_without_randomness_equals_eval_view(batch):
    c = batch.shape[1]
    spec = ViewSpec(hflip=False, rotation=0.0, shift=0.0)
    view = make_view(batch, spec, _gen(5), _norm(c))
    assert torch.allclose(view, eval_view(batch, _norm(c)), atol=1e-5)


def test_same_seed_gives_identical_views(batch):
    c = batch.shape[1]
    for spec in (weak_spec(hflip=True, rotation=15), strong_spec(hflip=True, rotation=15)):
        a = make_view(batch, spec, _gen(42), _norm(c))
        b = make_view(batch, spec, _gen(42), _norm(c))
        assert torch.equal(a, b)
        other = make_view(batch, spec, _gen(43), _norm(c))
        assert not torch.allclose(a, other)


def test_successive_views_from_one_generator_differ(batch):
    c = batch.shape[1]
    gen = _gen(1)
    spec = weak_spec(hflip=True, rotation=15)
    assert not torch.allclose(make_view(batch, spec, gen, _norm(c)), make_view(batch, spec, gen, _norm(c)))


def test_strong_views_differ_from_weak_ones(batch):
    c = batch.shape[1]
    weak = make_view(batch, weak_spec(hflip=True, rotation=15), _gen(7), _norm(c))
    strong = make_view(batch, strong_spec(hflip=True, rotation=15), _gen(7), _norm(c))
    assert not torch.allclose(weak, strong)
    # Both stay close to the image statistics, only the strong one changes colours: its per-image mean moves more.
    ev = eval_view(batch, _norm(c))
    weak_shift = (weak.mean(dim=(1, 2, 3)) - ev.mean(dim=(1, 2, 3))).abs().mean()
    strong_shift = (strong.mean(dim=(1, 2, 3)) - ev.mean(dim=(1, 2, 3))).abs().mean()
    assert strong_shift > weak_shift


def test_hflip_flips_an_asymmetric_image():
    img = torch.zeros(1, 1, 8, 8, dtype=torch.uint8)
    img[0, 0, :, :2] = 255  # a bright bar on the left edge
    img[0, 0, 1, 5] = 100  # and a dot to the right
    batch = img.repeat(64, 1, 1, 1)
    norm = Normalise((0.0,), (1.0,))
    view = make_view(batch, ViewSpec(hflip=True, rotation=0.0, shift=0.0), _gen(3), norm)
    plain = batch.float() / 255.0
    flipped = plain.flip(-1)
    is_plain = torch.isclose(view, plain, atol=1e-5).flatten(1).all(dim=1)
    is_flipped = torch.isclose(view, flipped, atol=1e-5).flatten(1).all(dim=1)
    assert bool((is_plain ^ is_flipped).all())  # every view is exactly the image or its mirror
    assert 10 < int(is_flipped.sum()) < 54  # about half are flipped
    no_flip = make_view(batch, ViewSpec(hflip=False, rotation=0.0, shift=0.0), _gen(3), norm)
    assert torch.allclose(no_flip, plain, atol=1e-5)


def test_channel_stats():
    rng = np.random.default_rng(0)
    images = np.zeros((50, 3, 4, 4), dtype=np.uint8)
    images[:, 0] = 255
    images[:, 1] = rng.integers(0, 256, (50, 4, 4))
    stats = channel_stats(images)
    assert stats.mean[0] == pytest.approx(1.0)
    assert stats.mean[1] == pytest.approx(0.5, abs=0.05)
    assert stats.mean[2] == pytest.approx(0.0)
    assert stats.std[0] == pytest.approx(1e-3)  # constant channels are clamped, never divide by 0
    assert stats.std[1] == pytest.approx(0.29, abs=0.03)


@pytest.mark.parametrize("chunk", [7, 256])
def test_channel_stats_in_chunks_equal_the_whole_sample(chunk):
    # The sums are taken a chunk at a time (never a float copy of the whole sample); the result must not depend on
    # where the chunks fall, and must be the sample's own mean and (unbiased) std.
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (60, 3, 5, 6), dtype=np.uint8)
    images[:, 2] //= 4
    stats = channel_stats(images, sample=40, seed=3, chunk=chunk)
    idx = np.sort(np.random.default_rng(3).choice(60, size=40, replace=False))
    x = images[idx].astype(np.float64) / 255.0
    np.testing.assert_allclose(stats.mean, x.mean(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(stats.std, x.std(axis=(0, 2, 3), ddof=1), rtol=1e-9)
