"""Image degradations that turn a good image into a low-quality ("ungradable") one.

Every degradation is a pure function ``f(img, *, severity, rng) -> img`` on uint8 images of shape (H, W) or
(H, W, C) with C in {1, 3}; it returns a new uint8 array of the same shape. Severity runs from 1 (mild) to 5
(the image is hard to read). Spatial parameters are fractions of ``min(H, W)`` so that a degradation does the
same visible harm to a 32-px digit and to a 2000-px fundus photograph once both are resized for training.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType

import numpy as np
from PIL import Image
from scipy import ndimage, signal

from qmix_cli.errors import ConfigError, DataError

Degradation = Callable[..., np.ndarray]
"""``(img, *, severity, rng) -> img``, see the module docstring."""

SEVERITIES = (1, 2, 3, 4, 5)

# Per-severity parameters, index = severity - 1. Every tuple is strictly monotone so that the effect is too.
_BLUR_SIGMA = (0.012, 0.025, 0.045, 0.07, 0.11)  # fraction of min(H, W)
_MOTION_LENGTH = (0.05, 0.1, 0.16, 0.24, 0.35)  # fraction of min(H, W)
_DARK_GAMMA = (1.2, 1.45, 1.75, 2.1, 2.5)
_DARK_GAIN = (0.8, 0.62, 0.46, 0.32, 0.2)
_BRIGHT_GAIN = (1.25, 1.5, 1.8, 2.2, 2.7)
_BRIGHT_LIFT = (0.04, 0.08, 0.13, 0.2, 0.28)  # fraction of 255 added after the gain
_CONTRAST_KEEP = (0.7, 0.5, 0.33, 0.2, 0.1)  # fraction of the deviation from the mean that survives
_NOISE_STD = (0.04, 0.08, 0.14, 0.22, 0.34)  # fraction of 255
_JPEG_QUALITY = (30, 18, 10, 6, 2)
_OCCLUDED_FRACTION = (0.05, 0.12, 0.22, 0.35, 0.5)
_HAZE_OPACITY = (0.2, 0.38, 0.55, 0.7, 0.85)
_VIGNETTE_STRENGTH = (0.35, 0.6, 0.9, 1.3, 1.8)
_VIGNETTE_SHIFT = (0.02, 0.04, 0.06, 0.08, 0.1)  # off-centre shift, fraction of min(H, W)

# Images are typically resized to about this many pixels for training; grain-like effects (noise, JPEG blocks)
# are produced at this scale so that downsizing a large image does not wash them out.
_REFERENCE_SIZE = 224

# Occluder sides are drawn in this range, as fractions of min(H, W). The largest area (0.25² = 0.0625) is
# below the smallest gap between consecutive `_OCCLUDED_FRACTION` values, so coverage stays strictly monotone
# even though the last rectangle overshoots the target.
_OCCLUDER_SIDE = (0.08, 0.25)


def _check_severity(severity: int) -> int:
    if isinstance(severity, bool) or not isinstance(severity, (int, np.integer)) or severity not in SEVERITIES:
        raise ConfigError(f"severity must be an integer from 1 to 5, got {severity!r}")
    return int(severity)


def _check_image(img: np.ndarray) -> np.ndarray:
    if not isinstance(img, np.ndarray) or img.dtype != np.uint8:
        raise DataError(f"degradations need a uint8 image array, got {getattr(img, 'dtype', type(img))}")
    if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] not in (1, 3)) or min(img.shape[:2]) < 1:
        raise DataError(f"degradations need an image of shape (H, W), (H, W, 1) or (H, W, 3), got {img.shape}")
    return img


def _as_float(img: np.ndarray) -> np.ndarray:
    """float32 copy of shape (H, W, C), values in [0, 255]."""
    return img.reshape(img.shape[0], img.shape[1], -1).astype(np.float32)


def _to_uint8(values: np.ndarray, *, like: np.ndarray) -> np.ndarray:
    """Round and clip float values of shape (H, W, C) back to a uint8 array shaped like ``like``."""
    return np.clip(np.rint(values), 0, 255).astype(np.uint8).reshape(like.shape)


def _side(img: np.ndarray) -> int:
    return min(img.shape[0], img.shape[1])


def _to_pil(img: np.ndarray) -> Image.Image:
    """Pillow image in mode ``L`` (one channel) or ``RGB`` (three)."""
    return Image.fromarray(img[:, :, 0] if img.ndim == 3 and img.shape[2] == 1 else img)


def _smooth_field(height: int, width: int, *, rng: np.random.Generator, cells: int = 4) -> np.ndarray:
    """A smooth random field of shape (H, W), float32, values roughly in [-1, 1].

    Uniform values on a coarse ``cells × cells`` grid, upsampled bicubically: low-frequency variation such as
    uneven fog or illumination, independent of the image size.
    """
    coarse = rng.uniform(-1.0, 1.0, size=(cells, cells)).astype(np.float32)
    return np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC))


def _gaussian(values: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of a float (H, W, C) array over its two spatial axes, replicating the border."""
    if sigma < 4.0:
        return ndimage.gaussian_filter(values, sigma=(sigma, sigma, 0.0), mode="nearest")
    # Large kernels are slow to convolve directly; three box filters of the matching width approximate a
    # Gaussian closely at a cost that does not depend on sigma. Odd widths keep the result centred.
    half = max(1, round((np.sqrt(4.0 * sigma * sigma + 1.0) - 1.0) / 2.0))
    for _ in range(3):
        values = ndimage.uniform_filter(values, size=(2 * half + 1, 2 * half + 1, 1), mode="nearest")
    return values


def blur(img: np.ndarray, *, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Gaussian blur (defocus) with sigma from 1.2 % to 11 % of ``min(H, W)``.

    Parameters
    ----------
    img
        uint8 array of shape (H, W), (H, W, 1) or (H, W, 3).
    severity
        1 to 5.
    rng
        Unused (the blur is deterministic); accepted for a uniform signature.

    Returns
    -------
    numpy.ndarray
        uint8 array of the same shape.
    """
    level = _check_severity(severity)
    _check_image(img)
    sigma = _BLUR_SIGMA[level - 1] * _side(img)
    return _to_uint8(_gaussian(_as_float(img), sigma), like=img)


def _motion_kernel(length: float, angle: float) -> np.ndarray:
    """Normalised line kernel of the given length (pixels) and angle (radians), float32, odd square shape.

    Points along the segment are splatted bilinearly, so sub-pixel lengths still blur a little and the blur
    grows smoothly with the length.
    """
    radius = int(np.ceil(length / 2.0)) + 1
    kernel = np.zeros((2 * radius + 1, 2 * radius + 1), dtype=np.float64)
    steps = np.linspace(-length / 2.0, length / 2.0, max(2, int(np.ceil(length * 4)) + 1))
    rows = radius + steps * np.sin(angle)
    cols = radius + steps * np.cos(angle)
    row0, col0 = np.floor(rows).astype(int), np.floor(cols).astype(int)
    frac_r, frac_c = rows - row0, cols - col0
    for d_row, d_col, weight in (
        (0, 0, (1 - frac_r) * (1 - frac_c)),
        (1, 0, frac_r * (1 - frac_c)),
        (0, 1, (1 - frac_r) * frac_c),
        (1, 1, frac_r * frac_c),
    ):
        np.add.at(kernel, (row0 + d_row, col0 + d_col), weight)
    return (kernel / kernel.sum()).astype(np.float32)


def motion(img: np.ndarray, *, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Linear motion blur along a random direction, 5 % to 35 % of ``min(H, W)`` long.

    Parameters
    ----------
    img
        uint8 array of shape (H, W), (H, W, 1) or (H, W, 3).
    severity
        1 to 5.
    rng
        Draws the direction (one uniform angle).

    Returns
    -------
    numpy.ndarray
        uint8 array of the same shape.
    """
    level = _check_severity(severity)
    _check_image(img)
    kernel = _motion_kernel(_MOTION_LENGTH[level - 1] * _side(img), rng.uniform(0.0, np.pi))
    pad = kernel.shape[0] // 2
    # Replicate the border before convolving so the edges do not fade towards black.
    padded = np.pad(_as_float(img), ((pad, pad), (pad, pad), (0, 0)), mode="edge")
    # FFT convolution costs the same whatever the kernel length, which matters for long blurs on big images.
    blurred = signal.fftconvolve(padded, kernel[:, :, None], mode="valid", axes=(0, 1))
    return _to_uint8(blurred, like=img)


def dark(img: np.ndarray, *, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Under-exposure: a gamma above 1 (shadows sink first) followed by a gain below 1.

    Parameters
    ----------
    img
        uint8 array of shape (H, W), (H, W, 1) or (H, W, 3).
    severity
        1 to 5; at 5 the brightest pixel keeps 20 % of its value and mid-grey falls to about 4 %.
    rng
        Unused (deterministic); accepted for a uniform signature.

    Returns
    -------
    numpy.ndarray
        uint8 array of the same shape.
    """
    level = _check_severity(severity)
    _check_image(img)
    unit = _as_float(img) / 255.0
    return _to_uint8(255.0 * _DARK_GAIN[level - 1] * unit ** _DARK_GAMMA[level - 1], like=img)


def bright(img: np.ndarray, *, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Over-exposure: a gain above 1 plus a lift, clipped at 255 so highlights burn out.

    Parameters
    ----------
    img
        uint8 array of shape (H, W), (H, W, 1) or (H, W, 3).
    severity
        1 to 5; at 5 every pixel above about 68 saturates.
    rng
        Unused (deterministic); accepted for a uniform signature.

    Returns
    -------
    numpy.ndarray
        uint8 array of the same shape.
    """
    level = _check_severity(severity)
    _check_image(img)
    exposed = _as_float(img) * _BRIGHT_GAIN[level - 1] + 255.0 * _BRIGHT_LIFT[level - 1]
    return _to_uint8(exposed, like=img)


def contrast(img: np.ndarray, *, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Low contrast: pull every pixel towards its channel's mean, keeping 70 % down to 10 % of the deviation.

    Parameters
    ----------
    img
        uint8 array of shape (H, W), (H, W, 1) or (H, W, 3).
    severity
        1 to 5.
    rng
        Unused (deterministic); accepted for a uniform signature.

    Returns
    -------
    numpy.ndarray
        uint8 array of the same shape.
    """
    level = _check_severity(severity)
    _check_image(img)
    values = _as_float(img)
    mean = values.mean(axis=(0, 1), keepdims=True)
    return _to_uint8(mean + (values - mean) * _CONTRAST_KEEP[level - 1], like=img)


def _grain(height: int, width: int) -> int:
    """Side in pixels of one noise grain, so that grains stay about one pixel at the training size."""
    return max(1, min(height, width) // _REFERENCE_SIZE)


def noise(img: np.ndarray, *, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Additive Gaussian sensor noise, std from 4 % to 34 % of the range, independent per channel.

    On images larger than the training size the noise is drawn on a coarser grid and enlarged, so that
    resizing for training does not average it away.

    Parameters
    ----------
    img
        uint8 array of shape (H, W), (H, W, 1) or (H, W, 3).
    severity
        1 to 5.
    rng
        Draws the noise.

    Returns
    -------
    numpy.ndarray
        uint8 array of the same shape.
    """
    level = _check_severity(severity)
    _check_image(img)
    values = _as_float(img)
    height, width, channels = values.shape
    grain = _grain(height, width)
    coarse_shape = (-(-height // grain), -(-width // grain), channels)  # ceiling division
    coarse = rng.normal(0.0, 255.0 * _NOISE_STD[level - 1], size=coarse_shape)
    # Nearest-neighbour enlargement by index arithmetic: cheap, and each grain keeps the full noise std.
    field = coarse[np.arange(height)[:, None] // grain, np.arange(width)[None, :] // grain]
    return _to_uint8(values + field.astype(np.float32), like=img)


def jpeg(img: np.ndarray, *, severity: int, rng: np.random.Generator) -> np.ndarray:
    """JPEG re-encoding with Pillow at quality 30 down to 2 (blocking, ringing, colour bleeding).

    Images larger than about twice the training size are encoded at a reduced size and enlarged back, so the
    8×8 blocks stay visible after resizing for training.

    Parameters
    ----------
    img
        uint8 array of shape (H, W), (H, W, 1) or (H, W, 3).
    severity
        1 to 5.
    rng
        Unused (deterministic); accepted for a uniform signature.

    Returns
    -------
    numpy.ndarray
        uint8 array of the same shape.
    """
    level = _check_severity(severity)
    _check_image(img)
    height, width = img.shape[:2]
    picture = _to_pil(img)
    grain = _grain(height, width)
    if grain > 1:
        picture = picture.resize((max(1, width // grain), max(1, height // grain)), Image.Resampling.BOX)
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=_JPEG_QUALITY[level - 1])
    decoded = Image.open(io.BytesIO(buffer.getvalue()))
    if grain > 1:
        decoded = decoded.resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(decoded, dtype=np.uint8).reshape(img.shape).copy()


def occlusion(img: np.ndarray, *, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Opaque rectangles (dust, eyelashes, stickers) until 5 % to 50 % of the image is covered.

    Each rectangle has sides of 8 % to 25 % of ``min(H, W)`` and a flat colour chosen to stand out from what
    it covers (its channel mean shifted by 96 to 160 grey levels, wrapping around), so it hides the content.

    Parameters
    ----------
    img
        uint8 array of shape (H, W), (H, W, 1) or (H, W, 3).
    severity
        1 to 5.
    rng
        Draws sizes, positions and colours.

    Returns
    -------
    numpy.ndarray
        uint8 array of the same shape.
    """
    level = _check_severity(severity)
    _check_image(img)
    values = _as_float(img)
    height, width, channels = values.shape
    side = _side(img)
    covered = np.zeros((height, width), dtype=bool)
    target = _OCCLUDED_FRACTION[level - 1] * height * width
    # The loop runs over rectangles (a few dozen at most), never over pixels; the cap only guards degenerate
    # 1-px images, where a rectangle may be unable to cover enough.
    for _ in range(500):
        if covered.sum() >= target:
            break
        rect_h, rect_w = np.maximum(1, np.rint(rng.uniform(*_OCCLUDER_SIDE, size=2) * side)).astype(int)
        rect_h, rect_w = min(rect_h, height), min(rect_w, width)
        top = int(rng.integers(0, height - rect_h + 1))
        left = int(rng.integers(0, width - rect_w + 1))
        region = (slice(top, top + rect_h), slice(left, left + rect_w))
        shift = rng.uniform(96.0, 160.0, size=channels)
        values[region] = np.mod(values[region].mean(axis=(0, 1)) + shift, 256.0)
        covered[region] = True
    return _to_uint8(values, like=img)


def haze(img: np.ndarray, *, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Fog / cataract-like haze: blend towards a bright, slightly uneven veil with 20 % to 85 % opacity.

    Parameters
    ----------
    img
        uint8 array of shape (H, W), (H, W, 1) or (H, W, 3).
    severity
        1 to 5.
    rng
        Draws the veil's brightness pattern.

    Returns
    -------
    numpy.ndarray
        uint8 array of the same shape.
    """
    level = _check_severity(severity)
    _check_image(img)
    values = _as_float(img)
    height, width = values.shape[:2]
    # A bright grey veil varying by ±15 grey levels over a few cells, like scattered light.
    veil = 225.0 + 15.0 * _smooth_field(height, width, rng=rng)
    opacity = _HAZE_OPACITY[level - 1]
    return _to_uint8((1.0 - opacity) * values + opacity * veil[:, :, None], like=img)


def vignette(img: np.ndarray, *, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Uneven illumination: darkening that grows with the distance from an off-centre point.

    The gain is ``1 - strength * (d / d_max)²`` (clipped at 0), with ``d`` the distance from a point shifted
    by 2 % to 10 % of ``min(H, W)`` in a random direction and ``d_max`` the half-diagonal. At severity 5 the
    periphery fades to black, one side more than the other, like a badly aligned fundus camera.

    Parameters
    ----------
    img
        uint8 array of shape (H, W), (H, W, 1) or (H, W, 3).
    severity
        1 to 5.
    rng
        Draws the direction of the shift (one uniform angle).

    Returns
    -------
    numpy.ndarray
        uint8 array of the same shape.
    """
    level = _check_severity(severity)
    _check_image(img)
    values = _as_float(img)
    height, width = values.shape[:2]
    angle = rng.uniform(0.0, 2.0 * np.pi)
    shift = _VIGNETTE_SHIFT[level - 1] * _side(img)
    centre_row = (height - 1) / 2.0 + shift * np.sin(angle)
    centre_col = (width - 1) / 2.0 + shift * np.cos(angle)
    rows = (np.arange(height, dtype=np.float32) - centre_row)[:, None]
    cols = (np.arange(width, dtype=np.float32) - centre_col)[None, :]
    half_diagonal = max(np.hypot(height, width) / 2.0, 1.0)
    gain = np.clip(1.0 - _VIGNETTE_STRENGTH[level - 1] * (rows**2 + cols**2) / half_diagonal**2, 0.0, 1.0)
    return _to_uint8(values * gain[:, :, None], like=img)


DEGRADATIONS: Mapping[str, Degradation] = MappingProxyType(
    {
        "blur": blur,
        "motion": motion,
        "dark": dark,
        "bright": bright,
        "contrast": contrast,
        "noise": noise,
        "jpeg": jpeg,
        "occlusion": occlusion,
        "haze": haze,
        "vignette": vignette,
    }
)
"""Degradation name -> function, read-only."""


def _check_names(names: Sequence[str]) -> tuple[str, ...]:
    unknown = [name for name in names if name not in DEGRADATIONS]
    if unknown:
        listed = ", ".join(map(repr, unknown))
        raise ConfigError(f"unknown degradation {listed}; valid: {', '.join(DEGRADATIONS)} (or 'all')")
    return tuple(names)


def degrade(img: np.ndarray, *, names: Sequence[str], severity: int, rng: np.random.Generator) -> np.ndarray:
    """Apply several degradations in order, all at the same severity.

    Parameters
    ----------
    img
        uint8 array of shape (H, W), (H, W, 1) or (H, W, 3).
    names
        Keys of `DEGRADATIONS`, applied left to right; empty returns a copy.
    severity
        1 to 5.
    rng
        Shared by the degradations, in order.

    Returns
    -------
    numpy.ndarray
        uint8 array of the same shape.

    Raises
    ------
    ConfigError
        On an unknown name (listing the valid ones) or an invalid severity, before any work is done.
    """
    chosen = _check_names(names)
    _check_severity(severity)
    out = _check_image(img).copy()
    for name in chosen:
        out = DEGRADATIONS[name](out, severity=severity, rng=rng)
    return out


def parse_degradations(text: str) -> tuple[str, ...]:
    """Parse a CLI list such as ``"blur,dark"`` or ``"all"`` into validated degradation names.

    Names are case-insensitive and stripped; repeats are dropped, keeping the first occurrence's place.

    Raises
    ------
    ConfigError
        On an empty list or an unknown name (listing the valid ones).
    """
    names = [part.strip().lower() for part in text.split(",") if part.strip()]
    if not names:
        raise ConfigError(f"no degradation given; choose from {', '.join(DEGRADATIONS)} or 'all'")
    if names == ["all"]:
        return tuple(DEGRADATIONS)
    return _check_names(list(dict.fromkeys(names)))
