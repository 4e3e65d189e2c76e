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


def _views(img: torch.Tensor, spec: ViewSpec, n: int = 64, seed: int = 3) -> torch.Tensor:
    """``n`` views of one uint8 (H, W) image in [0, 1] (no normalisation), as (n, H, W)."""
    batch = img[None, None].repeat(n, 1, 1, 1)
    return make_view(batch, spec, _gen(seed), Normalise((0.0,), (1.0,)))[:, 0]


def _moments(views: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per view: mass, centroid row, centroid column and the principal axis' angle in degrees (0: horizontal)."""
    h, w = views.shape[-2:]
    rows = torch.arange(h, dtype=torch.float64)[:, None].expand(h, w)
    cols = torch.arange(w, dtype=torch.float64)[None, :].expand(h, w)
    v = views.double()
    mass = v.sum(dim=(1, 2))
    r = (v * rows).sum(dim=(1, 2)) / mass
    c = (v * cols).sum(dim=(1, 2)) / mass
    dr, dc = rows - r[:, None, None], cols - c[:, None, None]
    mu_rr, mu_cc, mu_rc = ((v * a * b).sum(dim=(1, 2)) for a, b in ((dr, dr), (dc, dc), (dr, dc)))
    return mass, r, c, torch.rad2deg(0.5 * torch.atan2(2 * mu_rc, mu_cc - mu_rr))


def test_shift_moves_a_dot_by_up_to_the_shift_fraction_of_the_side():
    img = torch.zeros(32, 32, dtype=torch.uint8)
    img[12, 18] = 255
    views = _views(img, ViewSpec(hflip=False, rotation=0.0, shift=0.125))
    mass, r, c, _ = _moments(views)
    # Bilinear resampling of a pure translation keeps the dot's mass and moves its centroid by the shift.
    torch.testing.assert_close(mass, torch.ones_like(mass), atol=1e-4, rtol=0)
    dr, dc = r - 12, c - 18
    limit = 0.125 * 32
    assert dr.abs().max() <= limit + 1e-4 and dc.abs().max() <= limit + 1e-4
    # It does move, both ways along both axes, and not always diagonally.
    for d in (dr, dc):
        assert d.min() < -limit / 2 and d.max() > limit / 2
    assert not torch.allclose(dr, dc, atol=0.5)


def test_rotation_turns_a_bar_about_the_centre_within_the_range():
    img = torch.zeros(64, 64, dtype=torch.uint8)
    img[31:33, 8:56] = 255  # a horizontal bar through the centre (31.5, 31.5)
    for degrees in (10.0, 45.0):
        views = _views(img, ViewSpec(hflip=False, rotation=degrees, shift=0.0))
        _, r, c, angle = _moments(views)
        torch.testing.assert_close(r, torch.full_like(r, 31.5), atol=0.05, rtol=0)
        torch.testing.assert_close(c, torch.full_like(c, 31.5), atol=0.05, rtol=0)
        assert angle.abs().max() <= degrees + 0.5
        # Turned both ways, by angles spread over the range.
        assert angle.min() < -degrees / 2 and angle.max() > degrees / 2


def test_zoom_enlarges_the_image_content():
    # A grid of period 4 px along both axes: a crop of half the side, resampled to the full size, has period 8 px,
    # wherever the crop lies.
    pattern = (torch.arange(32) // 2) % 2 == 0
    img = ((pattern[:, None] | pattern[None, :]) * 255).to(torch.uint8)

    def periods(views: torch.Tensor) -> set[float]:
        found = set()
        for profile in (views.mean(dim=1), views.mean(dim=2)):  # along columns, along rows
            spectrum = torch.fft.rfft(profile - profile.mean(dim=1, keepdim=True)).abs()
            found |= {32 / int(k) for k in spectrum[:, 1:].argmax(dim=1) + 1}
        return found

    assert periods(_views(img, ViewSpec(hflip=False, rotation=0.0, shift=0.0, zoom=(1.0, 1.0)))) == {4.0}
    assert periods(_views(img, ViewSpec(hflip=False, rotation=0.0, shift=0.0, zoom=(0.5, 0.5)))) == {8.0}


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
