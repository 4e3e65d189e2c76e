"""Label-noise models expressed as class-transition matrices.

A noise model is a K×K row-stochastic matrix ``T`` with ``T[i, j] = P(noisy = j | true = i)``. Every
built-in kind is turned into such a matrix first, so sampling, reporting and user-supplied matrices
(``matrix:FILE``, read by `qmix_cli.noise.noise_files`) share one code path, and the realised matrix written to
``noise.json`` can be compared with the requested one directly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from qmix_cli.errors import ConfigError

NOISE_KINDS = ("none", "symmetric", "symmetric-exclusive", "pairflip", "asymmetric")
"""Built-in label-noise kinds; ``matrix:FILE`` is resolved by the caller with `noise_files.load_matrix`."""

ROW_SUM_TOLERANCE = 1e-6
"""How far a row of a user-supplied matrix may sum away from 1."""


def check_num_classes(num_classes: int) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 2:
        raise ConfigError(f"label noise needs at least 2 classes, got num_classes={num_classes!r}")
    return int(num_classes)


def _check_rate(rate: float) -> float:
    try:
        value = float(rate)
    except (TypeError, ValueError):
        raise ConfigError(f"label-noise rate must be a number in [0, 1], got {rate!r}") from None
    # `not (0 <= value <= 1)` also rejects NaN.
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"label-noise rate must be in [0, 1], got {rate!r}")
    return value


def _check_mapping(mapping: Mapping[int, int] | None, *, num_classes: int) -> dict[int, int]:
    if not mapping:
        raise ConfigError("asymmetric label noise needs a class map, e.g. 'cat=dog,dog=cat'")
    checked: dict[int, int] = {}
    for source, target in mapping.items():
        for index in (source, target):
            if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
                raise ConfigError(f"class map entries must be class indices, got {source!r} -> {target!r}")
            if not 0 <= index < num_classes:
                raise ConfigError(f"class map entry {source} -> {target} is out of range for {num_classes} classes")
        if source == target:
            raise ConfigError(f"class map sends class {source} to itself; it must name a different class")
        checked[int(source)] = int(target)
    return checked


def transition_matrix(
    kind: str, *, num_classes: int, rate: float, mapping: Mapping[int, int] | None = None
) -> np.ndarray:
    """Build the class-transition matrix of a built-in label-noise kind.

    Parameters
    ----------
    kind
        One of `NOISE_KINDS`:

        - ``"none"``: identity.
        - ``"symmetric"``: with probability ``rate`` the label is redrawn uniformly over all K classes, so it
          may land on the true class again; the effective flip rate is ``(K - 1) / K * rate`` (the variant
          DivideMix uses).
        - ``"symmetric-exclusive"``: with probability ``rate`` the label moves to one of the K - 1 other
          classes, chosen uniformly.
        - ``"pairflip"``: class ``i`` becomes ``(i + 1) % K`` with probability ``rate``.
        - ``"asymmetric"``: class ``i`` becomes ``mapping[i]`` with probability ``rate`` for each ``i`` in
          ``mapping``; other classes are left unchanged.
    num_classes
        Number of classes K, at least 2.
    rate
        Noise rate in [0, 1].
    mapping
        Source class index -> target class index, required by (and only used for) ``"asymmetric"``.

    Returns
    -------
    numpy.ndarray
        float64 array of shape (K, K), non-negative, each row summing to 1.

    Raises
    ------
    ConfigError
        On an unknown kind, fewer than 2 classes, a rate outside [0, 1] or an invalid class map.
    """
    k = check_num_classes(num_classes)
    r = _check_rate(rate)
    identity = np.eye(k, dtype=np.float64)
    if kind == "none":
        return identity
    if kind == "symmetric":
        return (1.0 - r) * identity + r / k
    if kind == "symmetric-exclusive":
        return (1.0 - r) * identity + r / (k - 1) * (1.0 - identity)
    if kind == "pairflip":
        return (1.0 - r) * identity + r * np.roll(identity, 1, axis=1)
    if kind == "asymmetric":
        matrix = identity.copy()
        for source, target in _check_mapping(mapping, num_classes=k).items():
            matrix[source, source] = 1.0 - r
            matrix[source, target] = r
        return matrix
    choices = ", ".join(NOISE_KINDS)
    raise ConfigError(f"unknown label-noise kind {kind!r}; choose one of {choices} or matrix:FILE")


def validate_matrix(
    matrix: np.ndarray | Sequence[Sequence[float]], *, num_classes: int, classes: Sequence[str] | None = None
) -> np.ndarray:
    """Check that ``matrix`` is a valid K×K transition matrix.

    Parameters
    ----------
    matrix
        Array-like of shape (K, K): ``matrix[i, j] = P(noisy = j | true = i)``.
    num_classes
        Expected K.
    classes
        The K class names, to name a faulty row by its class as well as its index (optional).

    Returns
    -------
    numpy.ndarray
        A float64 copy of shape (K, K).

    Raises
    ------
    ConfigError
        If the shape is wrong, or naming the first row that holds a non-finite or negative entry or that does
        not sum to 1 within `ROW_SUM_TOLERANCE`.
    """
    k = check_num_classes(num_classes)
    try:
        array = np.array(matrix, dtype=np.float64)
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(f"transition matrix must be a {k}x{k} table of numbers") from None
    if array.shape != (k, k):
        raise ConfigError(f"transition matrix must have shape {k}x{k} for {k} classes, got {array.shape}")
    for row_index, row in enumerate(array):
        name = f"transition matrix row {row_index}" + (f" ({classes[row_index]!r})" if classes is not None else "")
        values = f": {row.tolist()}" if k <= 10 else ""  # a row of thousands of numbers helps no one
        if not np.all(np.isfinite(row)):
            raise ConfigError(f"{name} holds a non-finite value{values}")
        if np.any(row < 0):
            raise ConfigError(f"{name} holds a negative value{values}")
        if abs(row.sum() - 1.0) > ROW_SUM_TOLERANCE:
            raise ConfigError(f"{name} sums to {row.sum():.6g}, not 1")
    return array


def _check_labels(labels: np.ndarray, *, num_classes: int, what: str = "labels") -> np.ndarray:
    array = np.asarray(labels)
    if array.ndim != 1:
        raise ValueError(f"{what} must be one-dimensional, got shape {array.shape}")
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{what} must be integer class indices, got dtype {array.dtype}")
    array = array.astype(np.int64, copy=False)
    if array.size and (array.min() < 0 or array.max() >= num_classes):
        raise ValueError(f"{what} must lie in [0, {num_classes}), got [{array.min()}, {array.max()}]")
    return array


def apply_transition(labels: np.ndarray, transition: np.ndarray, *, rng: np.random.Generator) -> np.ndarray:
    """Draw a noisy label for each sample from the row of ``transition`` given by its true label.

    Parameters
    ----------
    labels
        Integer array of shape (N,), true class indices in [0, K).
    transition
        Transition matrix of shape (K, K); validated with `validate_matrix`.
    rng
        Source of randomness: exactly one uniform draw per sample, in sample order, so the result depends
        only on the generator's state.

    Returns
    -------
    numpy.ndarray
        int64 array of shape (N,), noisy class indices in [0, K).
    """
    matrix = np.asarray(transition)
    k = matrix.shape[0] if matrix.ndim == 2 else 0
    matrix = validate_matrix(matrix, num_classes=k)
    true = _check_labels(labels, num_classes=k)
    draws = rng.random(true.shape[0])
    cumulative = np.cumsum(matrix, axis=1)
    # Rows may sum to 1 - 1e-6; pin the end so that every draw in [0, 1) lands on a class.
    cumulative[:, -1] = 1.0
    noisy = np.empty_like(true)
    # Group the samples by class (one stable sort) and search each group in its own cumulative row: the loop
    # runs over classes, never over samples, and needs no N×K temporary.
    order = np.argsort(true, kind="stable")
    bounds = np.concatenate(([0], np.cumsum(np.bincount(true, minlength=k))))
    for cls in range(k):
        members = order[bounds[cls] : bounds[cls + 1]]
        if members.size:
            # side="right" skips classes of probability 0, whose cumulative value repeats the previous one.
            noisy[members] = np.searchsorted(cumulative[cls], draws[members], side="right")
    return noisy


def realised_matrix(true_labels: np.ndarray, noisy_labels: np.ndarray, *, num_classes: int) -> np.ndarray:
    """Empirical transition matrix of a noisy labelling.

    Parameters
    ----------
    true_labels, noisy_labels
        Integer arrays of shape (N,), class indices in [0, K).
    num_classes
        K.

    Returns
    -------
    numpy.ndarray
        float64 array of shape (K, K): row ``i`` holds the fractions of true-class-``i`` samples that carry
        each noisy label. A class without samples gets an identity row, so the result is row-stochastic.
    """
    k = check_num_classes(num_classes)
    true = _check_labels(true_labels, num_classes=k, what="true labels")
    noisy = _check_labels(noisy_labels, num_classes=k, what="noisy labels")
    if true.shape != noisy.shape:
        raise ValueError(f"true and noisy labels differ in length: {true.shape[0]} vs {noisy.shape[0]}")
    counts = np.bincount(true * k + noisy, minlength=k * k).reshape(k, k).astype(np.float64)
    totals = counts.sum(axis=1, keepdims=True)
    empty = totals[:, 0] == 0
    counts[empty] = np.eye(k)[empty]
    totals[empty] = 1.0
    return counts / totals


def realised_rate(true_labels: np.ndarray, noisy_labels: np.ndarray) -> float:
    """Fraction of samples whose noisy label differs from the true one (0.0 for no samples).

    Parameters
    ----------
    true_labels, noisy_labels
        Arrays of shape (N,) of class indices (or any comparable labels).
    """
    true = np.asarray(true_labels)
    noisy = np.asarray(noisy_labels)
    if true.shape != noisy.shape:
        raise ValueError(f"true and noisy labels differ in shape: {true.shape} vs {noisy.shape}")
    return float(np.mean(true != noisy)) if true.size else 0.0
