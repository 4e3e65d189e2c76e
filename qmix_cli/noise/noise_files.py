"""The files a user names for label noise: a transition matrix (``--label-noise matrix:FILE``) and a class map
(``--class-map @FILE``), read and checked against the dataset's classes. The noise models themselves, pure
matrices, are in `qmix_cli.noise.label_noise`."""

from __future__ import annotations

import csv
import json
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from qmix_cli.errors import ConfigError, first_few
from qmix_cli.noise.label_noise import check_num_classes, validate_matrix

_MATRIX_SUFFIXES = (".npy", ".csv", ".json")


def load_matrix(path: str | Path, *, classes: Sequence[str]) -> np.ndarray:
    """Read and validate a user-supplied transition matrix.

    Parameters
    ----------
    path
        A ``.npy`` file, a ``.csv`` file or a ``.json`` file. Unlabelled, rows and columns are in the order of
        ``classes``: a ``.npy`` array, CSV lines of K numbers, JSON K lists of K numbers. Labelled, by class
        name in any order: a CSV whose first line names the columns' classes (after one empty corner cell) and
        whose lines each start with their row's class, every class named once in each; or a JSON object of
        objects, ``{"cat": {"cat": 0.7, "dog": 0.3}}``, in which absent entries are 0 and a class with no row
        keeps its labels.
    classes
        The class names, in index order (K of them).

    Returns
    -------
    numpy.ndarray
        float64 array of shape (K, K), rows summing to 1.

    Raises
    ------
    ConfigError
        If the file is missing, has an unsupported suffix, cannot be parsed, names classes that are not the
        dataset's, or the matrix is invalid.
    """
    file = Path(path)
    suffix = file.suffix.lower()
    if suffix not in _MATRIX_SUFFIXES:
        raise ConfigError(f"transition matrix file {file} must end in {', '.join(_MATRIX_SUFFIXES)}")
    if not file.is_file():
        raise ConfigError(f"transition matrix file {file} does not exist")
    k = check_num_classes(len(classes))
    try:
        if suffix == ".npy":
            # No pickles: a matrix file must never be able to run code.
            try:
                matrix = np.load(file, allow_pickle=False)
            except ValueError as error:
                if "pickle" not in str(error):
                    raise
                # numpy's own advice (allow_pickle=) is an argument the user does not pass
                raise ValueError("it holds Python objects, not numbers; save a float array with np.save") from None
        elif suffix == ".csv":
            matrix = _csv_matrix(file, classes=classes)
        else:
            matrix = _read_json(file)
            if isinstance(matrix, dict):
                matrix = _labelled_json_matrix(matrix, classes=classes)
    except (OSError, ValueError, OverflowError, UnicodeDecodeError) as error:
        raise ConfigError(f"cannot read transition matrix file {file}: {error}") from None
    return validate_matrix(matrix, num_classes=k, classes=classes)


def _csv_matrix(file: Path, *, classes: Sequence[str]) -> np.ndarray:
    """A CSV matrix: lines of numbers, or labelled (`load_matrix`) when its first line is not all numbers or
    every other line has one cell more than it (classes named by numbers, no corner cell). Blank lines and lines
    starting with ``#`` (NumPy's ``savetxt(header=...)``) are skipped."""
    lines, rows = _csv_rows(file)
    if not rows:
        raise ValueError("the file holds no rows")
    body_width = len(rows[1]) if len(rows) > 1 else len(rows[0])
    labelled = not all(_is_number(cell) for cell in rows[0]) or body_width == len(rows[0]) + 1
    header, body, body_lines = (rows[0], rows[1:], lines[1:]) if labelled else ([], rows, lines)
    ragged = next((i for i, row in enumerate(body) if len(row) != len(body[0])), None)
    if ragged is not None:
        raise ValueError(
            f"line {body_lines[ragged]} has {len(body[ragged])} cells, line {body_lines[0]} {len(body[0])}"
        )
    if not labelled:
        return np.array(body, dtype=np.float64)  # its shape is checked with its values (`validate_matrix`)
    k = len(classes)
    if len(body) != k or len(body[0]) != k + 1 or len(header) not in (k, k + 1):
        raise ValueError(
            f"a labelled matrix of {k} classes has a header naming them (after an empty corner cell) and {k} lines "
            f"of a class and {k} numbers; this one has a header of {len(header)} cells and {len(body)} lines of "
            f"{len(body[0]) if body else 0} cells"
        )
    columns = _class_order(header[-k:], classes=classes, what="the header")
    order = _class_order([row[0] for row in body], classes=classes, what="the first column")
    matrix = np.empty((k, k))
    matrix[np.ix_(order, columns)] = np.array([row[1:] for row in body], dtype=np.float64)
    return matrix


def _csv_rows(file: Path) -> tuple[list[int], list[list[str]]]:
    """The rows of a small CSV file with the line each starts on, skipping blank lines and ``#`` comments."""
    lines, rows = [], []
    with open(file, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f)
        for row in reader:
            if row and not row[0].lstrip().startswith("#"):
                lines.append(reader.line_num)
                rows.append(row)
    return lines, rows


def _read_json(file: Path) -> object:
    """A small JSON file (a byte-order mark allowed), refusing an object that names a key twice (JSON keeps the
    last without a word)."""

    def unique(pairs: list[tuple[str, object]]) -> dict[str, object]:
        counts = Counter(key for key, _ in pairs)
        twice = sorted(key for key, n in counts.items() if n > 1)
        if twice:
            raise ValueError(f"{first_few([repr(k) for k in twice])} named twice in one object")
        return dict(pairs)

    return json.loads(file.read_text(encoding="utf-8-sig"), object_pairs_hook=unique)


def _labelled_json_matrix(rows: Mapping[str, object], *, classes: Sequence[str]) -> np.ndarray:
    """A JSON object of objects by class name (`load_matrix`) as a K × K array."""
    index = {name: i for i, name in enumerate(classes)}
    matrix = np.eye(len(classes))
    for source, row in rows.items():
        if not isinstance(row, dict):
            raise ValueError(f"the row of {source!r} is not an object of class: probability")
        i = _class_index(source, index)
        matrix[i] = 0.0
        for target, p in row.items():
            if isinstance(p, bool) or not isinstance(p, (int, float)):
                raise ValueError(f"the entry {source!r} → {target!r} is not a number")
            matrix[i, _class_index(target, index)] = p
    return matrix


def _class_index(name: str, index: Mapping[str, int]) -> int:
    if name not in index:
        raise ValueError(f"unknown class {name!r} (the dataset's: {first_few(list(index), show=10)})")
    return index[name]


def _class_order(names: Sequence[str], *, classes: Sequence[str], what: str) -> list[int]:
    """The indices of ``names``, which must name each of ``classes`` exactly once."""
    index = {name: i for i, name in enumerate(classes)}
    order = [_class_index(name, index) for name in names]
    if sorted(order) != list(range(len(classes))):
        seen = set(order)
        missing = [repr(c) for i, c in enumerate(classes) if i not in seen]
        counts = Counter(names)
        twice = [repr(n) for n in sorted(counts) if counts[n] > 1]
        raise ValueError(
            f"{what} must name every class once (missing: {first_few(missing) or 'none'}; "
            f"twice: {first_few(twice) or 'none'})"
        )
    return order


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def parse_class_map(text: str, *, classes: Sequence[str]) -> dict[int, int]:
    """Parse a class map such as ``"cat=dog,dog=cat"`` (``cat:dog`` is accepted too), or the file ``@FILE`` names,
    into class indices.

    Parameters
    ----------
    text
        Comma-separated ``source=target`` pairs of class names (surrounding spaces ignored), or ``@`` and a file
        for names holding commas, ``=`` or surrounding spaces (``"tench, Tinca tinca"``): a ``.json`` object
        ``{"source": "target"}`` or a ``.csv`` of two columns, source and target (an optional header
        ``source,target``); names in a file are taken exactly as written, and a map starting with ``@`` is always
        a file's name.
    classes
        Class names in index order.

    Returns
    -------
    dict[int, int]
        Source class index -> target class index.

    Raises
    ------
    ConfigError
        On an empty map, a malformed pair, an unreadable file, an unknown class name (the message lists the valid
        ones), a class mapped to itself or a class given twice.
    """
    pairs = _class_map_file(Path(text[1:])) if text.startswith("@") else _class_map_text(text)
    if not pairs:
        raise ConfigError("class map is empty; write it as 'source=target,...', e.g. 'cat=dog,dog=cat'")
    index_of = {str(name): i for i, name in enumerate(classes)}
    valid = first_few([str(name) for name in classes], show=10)
    mapping: dict[int, int] = {}
    for source, target in pairs:
        for name in (source, target):
            if name not in index_of:
                raise ConfigError(f"unknown class {name!r} in class map; valid classes: {valid}")
        if source == target:
            raise ConfigError(f"class map sends {source!r} to itself; it must name a different class")
        if index_of[source] in mapping:
            raise ConfigError(f"class {source!r} appears twice in the class map")
        mapping[index_of[source]] = index_of[target]
    return mapping


def _class_map_text(text: str) -> list[tuple[str, str]]:
    pairs = []
    for pair in (pair.strip() for pair in text.split(",") if pair.strip()):
        # Prefer '=' so that class names containing ':' still work with the '=' form.
        source, found, target = (part.strip() for part in pair.partition("=" if "=" in pair else ":"))
        if not found or not source or not target:
            raise ConfigError(f"class map entry {pair!r} is not of the form source=target")
        pairs.append((source, target))
    return pairs


def _class_map_file(file: Path) -> list[tuple[str, str]]:
    """The (source, target) pairs of a class-map file (`parse_class_map`)."""
    suffix = file.suffix.lower()
    if suffix not in (".json", ".csv"):
        raise ConfigError(f"class map file {file} must end in .json or .csv")
    try:
        if suffix == ".json":
            found = _read_json(file)
            if not isinstance(found, dict) or not all(isinstance(t, str) for t in found.values()):
                raise ConfigError(f'class map file {file} must hold one JSON object of "source": "target" names')
            pairs = list(found.items())
        else:
            lines, rows = _csv_rows(file)
            header = bool(rows) and [cell.strip().lower() for cell in rows[0]] == ["source", "target"]
            wrong = next((i for i in range(header, len(rows)) if len(rows[i]) != 2), None)
            if wrong is not None:
                raise ConfigError(
                    f"class map file {file}: line {lines[wrong]} has {len(rows[wrong])} cells; write source,target"
                )
            pairs = [(source, target) for source, target in rows[header:]]
    except FileNotFoundError:
        raise ConfigError(f"class map file {file} does not exist") from None
    except (OSError, ValueError, UnicodeDecodeError) as error:
        raise ConfigError(f"cannot read class map file {file}: {error}") from None
    if not pairs:
        raise ConfigError(f"class map file {file} maps no class")
    return pairs
