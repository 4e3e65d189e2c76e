"""Tests for qmix_cli.noise.degrade on real images: scikit-learn digits and scikit-image's fundus photo."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage
from skimage import data as skdata
from sklearn.datasets import load_digits

from qmix_cli.errors import ConfigError
from qmix_cli.noise.degrade import DEGRADATIONS, degrade, parse_degradations

SEVERITIES = (1, 2, 3, 4, 5)


def _digit(index: int) -> np.ndarray:
    """A digit from scikit-learn (8×8, values 0..16) as a uint8 32×32 greyscale image."""
    small = np.rint(load_digits().images[index] * (255.0 / 16.0)).astype(np.uint8)
    return np.asarray(Image.fromarray(small).resize((32, 32), Image.Resampling.BICUBIC))


@pytest.fixture(scope="module")
def images() -> dict[str, np.ndarray]:
    retina = skdata.retina()  # 1411×1411×3 fundus photograph
    small_retina = np.asarray(Image.fromarray(retina).resize((256, 256), Image.Resampling.BOX))
    return {"digit-0": _digit(0), "digit-7": _digit(7), "retina": small_retina}


IMAGE_NAMES = ("digit-0", "digit-7", "retina")


def _grey(img: np.ndarray) -> np.ndarray:
    values = img.astype(np.float64)
    return values.mean(axis=2) if values.ndim == 3 else values


def _laplacian_variance(img: np.ndarray, *, size: int | None = 64) -> float:
    """Variance of the Laplacian, measured after block-averaging to about ``size`` pixels (None: as is).

    Judging sharpness at about training scale keeps the 8-bit rounding noise of a blurred image (whose
    Laplacian variance is about 0.5 whatever the blur) from swamping the signal on large images.
    """
    grey = _grey(img)
    factor = 1 if size is None else max(1, min(grey.shape) // size)
    height, width = (grey.shape[0] // factor) * factor, (grey.shape[1] // factor) * factor
    grey = grey[:height, :width].reshape(height // factor, factor, width // factor, factor).mean(axis=(1, 3))
    return float(ndimage.laplace(grey).var())


def _psnr(img: np.ndarray, reference: np.ndarray) -> float:
    mse = np.mean((img.astype(np.float64) - reference.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / mse))


def _changed_fraction(img: np.ndarray, reference: np.ndarray) -> float:
    diff = img.reshape(img.shape[0], img.shape[1], -1) != reference.reshape(img.shape[0], img.shape[1], -1)
    return float(diff.any(axis=2).mean())


def _periphery_gain(img: np.ndarray, reference: np.ndarray) -> float:
    """Mean brightness gain of the outer half of the lit pixels relative to the inner half (1 = even)."""
    before, after = _grey(reference), _grey(img)
    rows, cols = np.indices(before.shape)
    distance = np.hypot(rows - (before.shape[0] - 1) / 2, cols - (before.shape[1] - 1) / 2)
    lit = before >= 32  # the gain is only measurable where there is light
    gain = after[lit] / before[lit]
    outer = distance[lit] > np.median(distance[lit])
    return float(gain[outer].mean() / gain[~outer].mean())


def _series(name: str, img: np.ndarray, metric: Callable[[np.ndarray], float], seed: int = 0) -> list[float]:
    """``metric`` of the original image followed by severities 1..5."""
    out = [metric(img)]
    for severity in SEVERITIES:
        out.append(metric(DEGRADATIONS[name](img, severity=severity, rng=np.random.default_rng(seed))))
    return out


def _strictly_increasing(values: list[float]) -> bool:
    return all(later > earlier for earlier, later in itertools.pairwise(values))


def _strictly_decreasing(values: list[float]) -> bool:
    return _strictly_increasing([-v for v in values])


@pytest.mark.parametrize("image_name", IMAGE_NAMES)
@pytest.mark.parametrize("name", ["blur", "motion"])
def test_blurs_remove_detail_monotonically(name: str, image_name: str, images: dict) -> None:
    series = _series(name, images[image_name], _laplacian_variance)
    assert _strictly_decreasing(series), series
    # Severity 5 is meant to make the image hard to read: most edge energy is gone. Motion blur keeps the
    # edges that run along its direction, hence the looser bound.
    assert series[-1] < (0.25 if name == "blur" else 0.5) * series[0]


@pytest.mark.parametrize("image_name", IMAGE_NAMES)
def test_dark_lowers_brightness(image_name: str, images: dict) -> None:
    series = _series("dark", images[image_name], lambda im: float(im.mean()))
    assert _strictly_decreasing(series), series
    assert series[-1] < 0.15 * series[0]


@pytest.mark.parametrize("image_name", IMAGE_NAMES)
def test_bright_raises_brightness_and_clipping(image_name: str, images: dict) -> None:
    img = images[image_name]
    assert _strictly_increasing(_series("bright", img, lambda im: float(im.mean())))
    clipped = _series("bright", img, lambda im: float((im == 255).mean()))
    assert _strictly_increasing(clipped), clipped


@pytest.mark.parametrize("image_name", IMAGE_NAMES)
def test_contrast_lowers_spread(image_name: str, images: dict) -> None:
    img = images[image_name]
    series = _series("contrast", img, lambda im: float(im.astype(np.float64).std()))
    assert _strictly_decreasing(series), series
    # The mean is kept: the image gets flatter, not darker or brighter.
    assert abs(float(DEGRADATIONS["contrast"](img, severity=5, rng=None).mean()) - img.mean()) < 1.5


@pytest.mark.parametrize("image_name", IMAGE_NAMES)
def test_noise_adds_high_frequency_energy(image_name: str, images: dict) -> None:
    img = images[image_name]
    # Pixel-level noise is judged at full resolution.
    assert _strictly_increasing(_series("noise", img, lambda im: _laplacian_variance(im, size=None)))
    distance = _series("noise", img, lambda im: float(np.abs(im.astype(float) - img).mean()))
    assert _strictly_increasing(distance), distance


@pytest.mark.parametrize("image_name", IMAGE_NAMES)
def test_jpeg_error_grows_with_severity(image_name: str, images: dict) -> None:
    img = images[image_name]
    psnrs = [_psnr(DEGRADATIONS["jpeg"](img, severity=s, rng=None), img) for s in SEVERITIES]
    assert _strictly_decreasing(psnrs), psnrs
    assert psnrs[-1] < 30


@pytest.mark.parametrize("image_name", IMAGE_NAMES)
def test_occlusion_hides_a_growing_fraction(image_name: str, images: dict) -> None:
    img = images[image_name]
    series = _series("occlusion", img, lambda im: _changed_fraction(im, img))
    assert _strictly_increasing(series), series
    assert 0.03 < series[1] < 0.2
    assert series[-1] > 0.4


@pytest.mark.parametrize("image_name", IMAGE_NAMES)
def test_haze_brightens_and_flattens(image_name: str, images: dict) -> None:
    img = images[image_name]
    assert _strictly_increasing(_series("haze", img, lambda im: float(im.mean())))
    spread = _series("haze", img, lambda im: float(im.astype(np.float64).std()))
    assert _strictly_decreasing(spread), spread


@pytest.mark.parametrize("image_name", IMAGE_NAMES)
def test_vignette_darkens_the_periphery(image_name: str, images: dict) -> None:
    img = images[image_name]
    series = _series("vignette", img, lambda im: _periphery_gain(im, img))
    assert series[0] == pytest.approx(1.0)
    assert _strictly_decreasing(series), series
    assert series[-1] < 0.6


@pytest.mark.parametrize("name", ["blur", "motion", "occlusion", "vignette"])
def test_spatial_parameters_scale_with_image_size(name: str, images: dict) -> None:
    # Degrading a large image and shrinking it should look like degrading the small image directly; with
    # parameters in pixels the large image would come out far less degraded.
    big = images["retina"]
    small = np.asarray(Image.fromarray(big).resize((128, 128), Image.Resampling.BOX))
    degraded_big = DEGRADATIONS[name](big, severity=4, rng=np.random.default_rng(3))
    shrunk = np.asarray(Image.fromarray(degraded_big).resize((128, 128), Image.Resampling.BOX))
    degraded_small = DEGRADATIONS[name](small, severity=4, rng=np.random.default_rng(3))
    effect = np.abs(degraded_small.astype(float) - small).mean()
    mismatch = np.abs(shrunk.astype(float) - degraded_small).mean()
    assert mismatch < 0.35 * effect, (mismatch, effect)


@pytest.mark.parametrize("name", sorted(DEGRADATIONS))
def test_shape_dtype_and_purity(name: str, images: dict) -> None:
    digit = images["digit-7"]
    retina = images["retina"]
    non_square = np.ascontiguousarray(retina[40:200, 10:250])  # 160×240, catches swapped axes
    for img in (digit, digit[:, :, None], retina, non_square, non_square[:, :, :1]):
        before = img.copy()
        out = DEGRADATIONS[name](img, severity=3, rng=np.random.default_rng(0))
        assert out.shape == img.shape and out.dtype == np.uint8
        assert not np.array_equal(out, img)
        np.testing.assert_array_equal(img, before)  # the input is left alone
    # A single-channel 3-D image is treated exactly like its 2-D version.
    flat = DEGRADATIONS[name](digit, severity=3, rng=np.random.default_rng(0))
    channel = DEGRADATIONS[name](digit[:, :, None], severity=3, rng=np.random.default_rng(0))
    np.testing.assert_array_equal(channel[:, :, 0], flat)


@pytest.mark.parametrize("name", sorted(DEGRADATIONS))
def test_same_seed_same_output(name: str, images: dict) -> None:
    img = images["retina"]
    first = DEGRADATIONS[name](img, severity=4, rng=np.random.default_rng(11))
    again = DEGRADATIONS[name](img, severity=4, rng=np.random.default_rng(11))
    np.testing.assert_array_equal(first, again)


@pytest.mark.parametrize("name", ["motion", "noise", "occlusion", "haze", "vignette"])
def test_random_degradations_depend_on_the_seed(name: str, images: dict) -> None:
    img = images["retina"]
    first = DEGRADATIONS[name](img, severity=4, rng=np.random.default_rng(11))
    other = DEGRADATIONS[name](img, severity=4, rng=np.random.default_rng(12))
    assert not np.array_equal(first, other)


@pytest.mark.parametrize("name", sorted(DEGRADATIONS))
@pytest.mark.parametrize("severity", [0, 6, -1, 2.5, True, "3", None])
def test_invalid_severity_raises(name: str, severity: object, images: dict) -> None:
    with pytest.raises(ConfigError, match="severity"):
        DEGRADATIONS[name](images["digit-0"], severity=severity, rng=np.random.default_rng(0))


def test_numpy_integer_severity_is_accepted(images: dict) -> None:
    out = DEGRADATIONS["blur"](images["digit-0"], severity=np.int64(2), rng=np.random.default_rng(0))
    np.testing.assert_array_equal(out, DEGRADATIONS["blur"](images["digit-0"], severity=2, rng=None))


@pytest.mark.parametrize(
    "bad", [np.zeros((8, 8), dtype=np.float32), np.zeros((8, 8, 4), dtype=np.uint8), np.zeros(8, np.uint8)]
)
def test_unsupported_images_raise(bad: np.ndarray) -> None:
    from qmix_cli.errors import DataError

    with pytest.raises(DataError):
        DEGRADATIONS["blur"](bad, severity=1, rng=np.random.default_rng(0))


def test_degrade_composes_in_order(images: dict) -> None:
    img = images["retina"]
    composed = degrade(img, names=["occlusion", "blur"], severity=3, rng=np.random.default_rng(4))
    rng = np.random.default_rng(4)
    by_hand = DEGRADATIONS["blur"](DEGRADATIONS["occlusion"](img, severity=3, rng=rng), severity=3, rng=rng)
    np.testing.assert_array_equal(composed, by_hand)
    # Order matters: occluding after blurring leaves sharp-edged patches.
    reversed_order = degrade(img, names=["blur", "occlusion"], severity=3, rng=np.random.default_rng(4))
    assert not np.array_equal(composed, reversed_order)
    untouched = degrade(img, names=[], severity=3, rng=np.random.default_rng(4))
    np.testing.assert_array_equal(untouched, img)
    assert untouched is not img


def test_degrade_rejects_unknown_names_before_working(images: dict) -> None:
    with pytest.raises(ConfigError, match=r"unknown degradation 'sepia'.*valid: blur, motion"):
        degrade(images["digit-0"], names=["blur", "sepia"], severity=2, rng=np.random.default_rng(0))
    with pytest.raises(ConfigError, match="severity"):
        degrade(images["digit-0"], names=["blur"], severity=9, rng=np.random.default_rng(0))


def test_registry_is_complete_and_read_only() -> None:
    expected = ["blur", "motion", "dark", "bright", "contrast", "noise", "jpeg", "occlusion", "haze"]
    assert list(DEGRADATIONS) == [*expected, "vignette"]
    with pytest.raises(TypeError):
        DEGRADATIONS["sepia"] = DEGRADATIONS["blur"]  # type: ignore[index]


def test_parse_degradations() -> None:
    assert parse_degradations("all") == tuple(DEGRADATIONS)
    assert parse_degradations(" ALL ") == tuple(DEGRADATIONS)
    assert parse_degradations("blur, Dark,blur,") == ("blur", "dark")
    with pytest.raises(ConfigError, match=r"unknown degradation 'fog'.*haze"):
        parse_degradations("blur,fog")
    with pytest.raises(ConfigError, match="no degradation"):
        parse_degradations(" , ")
