"""Tests for qmix_cli.noise.label_noise (transition matrices, sampling) and qmix_cli.noise.noise_files (matrix
files and class maps)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from qmix_cli.errors import ConfigError
from qmix_cli.noise.label_noise import (
    NOISE_KINDS,
    apply_transition,
    realised_matrix,
    realised_rate,
    transition_matrix,
    validate_matrix,
)
from qmix_cli.noise.noise_files import load_matrix, parse_class_map

CLASSES = ("bird", "cat", "dog", "fish")
K = len(CLASSES)
RATE = 0.4
N = 10_000


@pytest.fixture(scope="module")
def true_labels() -> np.ndarray:
    # Balanced classes, shuffled, so each row of the realised matrix rests on ~2,500 samples.
    return np.random.default_rng(123).permutation(np.arange(N) % K)


def _user_matrix() -> np.ndarray:
    # A dense, irregular matrix like one estimated from real annotator confusions.
    rows = np.random.default_rng(7).dirichlet(np.full(K, 0.8), size=K)
    return 0.5 * np.eye(K) + 0.5 * rows


REQUESTED = {
    "symmetric": lambda: transition_matrix("symmetric", num_classes=K, rate=RATE),
    "symmetric-exclusive": lambda: transition_matrix("symmetric-exclusive", num_classes=K, rate=RATE),
    "pairflip": lambda: transition_matrix("pairflip", num_classes=K, rate=RATE),
    "asymmetric": lambda: transition_matrix("asymmetric", num_classes=K, rate=RATE, mapping={0: 2, 3: 1}),
    "user-matrix": _user_matrix,
}


@pytest.mark.parametrize("name", sorted(REQUESTED))
def test_realised_matrix_matches_requested(name: str, true_labels: np.ndarray) -> None:
    requested = REQUESTED[name]()
    noisy = apply_transition(true_labels, requested, rng=np.random.default_rng(0))
    realised = realised_matrix(true_labels, noisy, num_classes=K)
    assert np.abs(realised - requested).max() < 0.03
    # Transitions of probability zero must never happen.
    assert np.all(realised[requested == 0] == 0)


@pytest.mark.parametrize("name", sorted(REQUESTED))
def test_sampling_is_reproducible_per_seed(name: str, true_labels: np.ndarray) -> None:
    requested = REQUESTED[name]()
    first = apply_transition(true_labels, requested, rng=np.random.default_rng(5))
    again = apply_transition(true_labels, requested, rng=np.random.default_rng(5))
    other = apply_transition(true_labels, requested, rng=np.random.default_rng(6))
    assert first.dtype == np.int64
    assert first.shape == true_labels.shape
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_symmetric_redraw_lowers_effective_rate_but_exclusive_does_not(true_labels: np.ndarray) -> None:
    for kind, expected in (("symmetric", (K - 1) / K * RATE), ("symmetric-exclusive", RATE)):
        matrix = transition_matrix(kind, num_classes=K, rate=RATE)
        noisy = apply_transition(true_labels, matrix, rng=np.random.default_rng(1))
        assert realised_rate(true_labels, noisy) == pytest.approx(expected, abs=0.015)


def test_built_in_matrices_have_the_documented_entries() -> None:
    sym = transition_matrix("symmetric", num_classes=K, rate=RATE)
    np.testing.assert_allclose(np.diag(sym), 1 - RATE + RATE / K)
    np.testing.assert_allclose(sym[0, 1:], RATE / K)

    exclusive = transition_matrix("symmetric-exclusive", num_classes=K, rate=RATE)
    np.testing.assert_allclose(np.diag(exclusive), 1 - RATE)
    np.testing.assert_allclose(exclusive[2, [0, 1, 3]], RATE / (K - 1))

    pair = transition_matrix("pairflip", num_classes=K, rate=RATE)
    for i in range(K):
        assert pair[i, i] == pytest.approx(1 - RATE)
        assert pair[i, (i + 1) % K] == pytest.approx(RATE)
    assert pair[K - 1, 0] == pytest.approx(RATE)  # wraps around

    asym = transition_matrix("asymmetric", num_classes=K, rate=RATE, mapping={0: 2})
    assert asym[0, 2] == pytest.approx(RATE) and asym[0, 0] == pytest.approx(1 - RATE)
    np.testing.assert_array_equal(asym[1:], np.eye(K)[1:])  # unmapped classes keep their label

    np.testing.assert_array_equal(transition_matrix("none", num_classes=K, rate=RATE), np.eye(K))
    for kind in NOISE_KINDS:
        mapping = {0: 1} if kind == "asymmetric" else None
        matrix = transition_matrix(kind, num_classes=K, rate=RATE, mapping=mapping)
        assert matrix.dtype == np.float64
        np.testing.assert_allclose(matrix.sum(axis=1), 1.0)


def test_extreme_rates_are_exact(true_labels: np.ndarray) -> None:
    rng = np.random.default_rng(0)
    unchanged = apply_transition(true_labels, transition_matrix("pairflip", num_classes=K, rate=0.0), rng=rng)
    np.testing.assert_array_equal(unchanged, true_labels)
    shifted = apply_transition(true_labels, transition_matrix("pairflip", num_classes=K, rate=1.0), rng=rng)
    np.testing.assert_array_equal(shifted, (true_labels + 1) % K)


def test_rows_slightly_below_one_still_land_on_a_class() -> None:
    matrix = np.full((2, 2), 0.5)
    matrix[:, 1] -= 5e-7  # within tolerance, so the last cumulative value is 1 - 5e-7
    noisy = apply_transition(np.zeros(50_000, dtype=np.int64), matrix, rng=np.random.default_rng(0))
    assert set(np.unique(noisy)) == {0, 1}


def test_empty_labels_give_empty_output() -> None:
    out = apply_transition(np.array([], dtype=np.int64), np.eye(3), rng=np.random.default_rng(0))
    assert out.shape == (0,) and out.dtype == np.int64
    assert realised_rate(out, out) == 0.0


def test_apply_transition_rejects_out_of_range_labels() -> None:
    with pytest.raises(ValueError, match="must lie in"):
        apply_transition(np.array([0, 3]), np.eye(3), rng=np.random.default_rng(0))


def test_realised_matrix_uses_identity_rows_for_absent_classes() -> None:
    realised = realised_matrix(np.array([0, 0, 0, 2]), np.array([0, 1, 1, 0]), num_classes=3)
    np.testing.assert_allclose(realised[0], [1 / 3, 2 / 3, 0])
    np.testing.assert_allclose(realised[1], [0, 1, 0])
    np.testing.assert_allclose(realised[2], [1, 0, 0])
    assert realised_rate(np.array([0, 0, 0, 2]), np.array([0, 1, 1, 0])) == pytest.approx(0.75)


@pytest.mark.parametrize("rate", [-0.1, 1.01, float("nan"), "high"])
def test_bad_rates_raise(rate: object) -> None:
    with pytest.raises(ConfigError, match="rate"):
        transition_matrix("symmetric", num_classes=K, rate=rate)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "uniform", "num_classes": K}, "unknown label-noise kind"),
        ({"kind": "symmetric", "num_classes": 1}, "at least 2 classes"),
        ({"kind": "asymmetric", "num_classes": K}, "class map"),
        ({"kind": "asymmetric", "num_classes": K, "mapping": {1: 1}}, "to itself"),
        ({"kind": "asymmetric", "num_classes": K, "mapping": {1: K}}, "out of range"),
    ],
)
def test_bad_kinds_and_mappings_raise(kwargs: dict, message: str) -> None:
    kind = kwargs.pop("kind")
    with pytest.raises(ConfigError, match=message):
        transition_matrix(kind, rate=RATE, **kwargs)


@pytest.mark.parametrize(
    ("matrix", "message"),
    [
        (np.full((3, 2), 0.5), "shape"),
        (np.full((2, 2), 0.5), "shape"),  # square, but not 3x3
        ([[1, 0, 0], [0, 1], [0, 0, 1]], "table of numbers|shape"),
        ([[1, 0, 0], [-0.1, 1.1, 0], [0, 0, 1]], "row 1 holds a negative"),
        ([[1, 0, 0], [0, 1, 0], [0.2, 0.2, 0.2]], "row 2 sums to 0.6"),
        ([[1, 0, 0], [0, float("nan"), 1], [0, 0, 1]], "row 1 holds a non-finite"),
        ([[1, 0, 0], [0, 1, 0], [0, float("inf"), 1]], "row 2 holds a non-finite"),
    ],
)
def test_invalid_matrices_raise(matrix: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        validate_matrix(matrix, num_classes=3)  # type: ignore[arg-type]


def test_validate_matrix_returns_a_float_copy() -> None:
    source = np.eye(3, dtype=np.int32)
    checked = validate_matrix(source, num_classes=3)
    assert checked.dtype == np.float64
    checked[0, 0] = 0.5
    assert source[0, 0] == 1


@pytest.mark.parametrize("suffix", [".npy", ".csv", ".json"])
def test_load_matrix_round_trips(suffix: str, tmp_path) -> None:
    matrix = _user_matrix()
    path = tmp_path / f"noise{suffix}"
    if suffix == ".npy":
        np.save(path, matrix)
    elif suffix == ".csv":
        np.savetxt(path, matrix, delimiter=",", fmt="%.17g")
    else:
        path.write_text(json.dumps(matrix.tolist()))
    loaded = load_matrix(path, classes=CLASSES)
    np.testing.assert_allclose(loaded, matrix, rtol=0, atol=1e-15)


def test_load_matrix_reports_bad_files(tmp_path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_matrix(tmp_path / "missing.npy", classes=CLASSES)
    with pytest.raises(ConfigError, match="must end in"):
        load_matrix(tmp_path / "matrix.txt", classes=CLASSES)
    broken = tmp_path / "broken.json"
    broken.write_text("[[1, 0], [0,")
    with pytest.raises(ConfigError, match="cannot read"):
        load_matrix(broken, classes=CLASSES[:2])
    text = tmp_path / "text.csv"
    text.write_text("a,b\nc,d\n")
    with pytest.raises(ConfigError, match="cannot read"):
        load_matrix(text, classes=CLASSES[:2])
    wrong_size = tmp_path / "wrong.csv"
    wrong_size.write_text("1,0\n0,1\n")
    with pytest.raises(ConfigError, match="shape"):
        load_matrix(wrong_size, classes=CLASSES[:3])
    # A pickled object array must not be loaded (it could run code).
    pickled = tmp_path / "pickled.npy"
    np.save(pickled, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ConfigError, match=r"cannot read .*: it holds Python objects, not numbers") as refused:
        load_matrix(pickled, classes=CLASSES[:2])
    assert "allow_pickle" not in str(refused.value)  # numpy's advice names an argument the user does not pass


def test_a_matrix_may_name_its_classes_in_any_order(tmp_path) -> None:
    matrix = _user_matrix()
    order = [2, 0, 3, 1]  # the file's rows and columns, shuffled
    lines = [",".join(["", *(CLASSES[j] for j in order)])]
    lines += [",".join([CLASSES[i], *(repr(float(matrix[i, j])) for j in order)]) for i in order]
    (tmp_path / "named.csv").write_text("\n".join(lines) + "\n")
    np.testing.assert_array_equal(load_matrix(tmp_path / "named.csv", classes=CLASSES), matrix)
    (tmp_path / "no_corner.csv").write_text("\n".join([lines[0].removeprefix(","), *lines[1:]]) + "\n")
    np.testing.assert_array_equal(load_matrix(tmp_path / "no_corner.csv", classes=CLASSES), matrix)
    # JSON by name: absent entries are 0 and a class without a row keeps its labels
    (tmp_path / "named.json").write_text(json.dumps({"cat": {"dog": 0.25, "cat": 0.75}, "dog": {"cat": 1}}))
    expected = np.eye(K)
    expected[1, [1, 2]] = [0.75, 0.25]
    expected[2] = [0, 1, 0, 0]
    np.testing.assert_array_equal(load_matrix(tmp_path / "named.json", classes=CLASSES), expected)
    # classes named by numbers need no corner cell: each row is one cell longer than the header
    digits = [str(i) for i in range(K)]
    body = [",".join([digits[i], *(repr(float(v)) for v in matrix[i])]) for i in range(K)]
    (tmp_path / "digits.csv").write_text("\n".join([",".join(digits), *body]) + "\n")
    np.testing.assert_array_equal(load_matrix(tmp_path / "digits.csv", classes=digits), matrix)


def test_a_csv_matrix_saved_by_numpy_with_a_header_comment_is_read(tmp_path) -> None:
    matrix = _user_matrix()
    np.savetxt(tmp_path / "m.csv", matrix, delimiter=",", fmt="%.17g", header="rows: true class, columns: given")
    np.testing.assert_array_equal(load_matrix(tmp_path / "m.csv", classes=CLASSES), matrix)


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        (
            "typo.csv",
            ",bird,cat,dog,fsh\nbird,1,0,0,0\ncat,0,1,0,0\ndog,0,0,1,0\nfish,0,0,0,1\n",
            "unknown class 'fsh'",
        ),
        ("twice.csv", ",bird,cat,dog,fish\nbird,1,0,0,0\ncat,0,1,0,0\ncat,0,0,1,0\nfish,0,0,0,1\n", "missing: 'dog'"),
        ("short.csv", ",bird,cat,dog,fish\nbird,1,0,0,0\ncat,0,1,0\n", "line 3 has 4 cells, line 2 5"),
        ("rows.csv", ",bird,cat,dog,fish\nbird,1,0,0,0\n", "4 lines of a class and 4 numbers"),
        ("typo.json", '{"cat": {"dgo": 1}}', "unknown class 'dgo'"),
        ("flat.json", '{"cat": "dog"}', "not an object"),
        ("text.json", '{"cat": {"dog": "1"}}', "not a number"),
        ("sum.json", '{"cat": {"dog": 0.5}}', "row 1 .'cat'. sums to 0.5"),
        ("twice.json", '{"cat": {"dog": 0.5, "dog": 0.5}}', "'dog' named twice"),
        ("huge.json", '{"cat": {"dog": 1' + "0" * 400 + "}}", "cannot read"),
        ("blank.csv", ",bird,cat,dog,fish\n\nbird,1,0,0,0\ncat,0,1,0\n", "line 4 has 4 cells, line 3 5"),
    ],
)
def test_a_labelled_matrix_file_names_what_is_wrong(tmp_path, name: str, text: str, message: str) -> None:
    (tmp_path / name).write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_matrix(tmp_path / name, classes=CLASSES)


def test_a_class_map_file_takes_names_as_written(tmp_path) -> None:
    classes = ("tench, Tinca tinca", "goldfish", "a=b", " spaced ")
    (tmp_path / "map.json").write_text(json.dumps({"tench, Tinca tinca": "goldfish", "a=b": " spaced "}))
    assert parse_class_map(f"@{tmp_path / 'map.json'}", classes=classes) == {0: 1, 2: 3}
    (tmp_path / "map.csv").write_text('source,target\n"tench, Tinca tinca",goldfish\na=b, spaced \n')
    assert parse_class_map(f"@{tmp_path / 'map.csv'}", classes=classes) == {0: 1, 2: 3}
    (tmp_path / "bad.csv").write_text("source,target\ngoldfish\n")
    with pytest.raises(ConfigError, match="line 2 has 1 cells"):
        parse_class_map(f"@{tmp_path / 'bad.csv'}", classes=classes)
    with pytest.raises(ConfigError, match="does not exist"):
        parse_class_map(f"@{tmp_path / 'none.json'}", classes=classes)
    (tmp_path / "list.json").write_text('[["goldfish", "a=b"]]')
    with pytest.raises(ConfigError, match="one JSON object"):
        parse_class_map(f"@{tmp_path / 'list.json'}", classes=classes)
    (tmp_path / "twice.json").write_text('{"goldfish": "a=b", "goldfish": " spaced "}')  # JSON would keep the last
    with pytest.raises(ConfigError, match="'goldfish' named twice"):
        parse_class_map(f"@{tmp_path / 'twice.json'}", classes=classes)
    (tmp_path / "empty.csv").write_text("source,target\n")
    with pytest.raises(ConfigError, match=r"empty\.csv maps no class"):
        parse_class_map(f"@{tmp_path / 'empty.csv'}", classes=classes)
    (tmp_path / "bom.json").write_bytes('{"goldfish": "a=b"}'.encode("utf-8-sig"))  # as Windows editors save it
    assert parse_class_map(f"@{tmp_path / 'bom.json'}", classes=classes) == {1: 2}
    (tmp_path / "self.json").write_text('{"goldfish": "goldfish"}')
    with pytest.raises(ConfigError, match="to itself"):  # checked as a written map is
        parse_class_map(f"@{tmp_path / 'self.json'}", classes=classes)


def test_parse_class_map_accepts_both_separators() -> None:
    assert parse_class_map("cat=dog,dog=cat", classes=CLASSES) == {1: 2, 2: 1}
    assert parse_class_map(" bird : fish , fish:bird ,", classes=CLASSES) == {0: 3, 3: 0}
    mapping = parse_class_map("cat=dog", classes=CLASSES)
    matrix = transition_matrix("asymmetric", num_classes=len(CLASSES), rate=0.3, mapping=mapping)
    assert matrix[1, 2] == pytest.approx(0.3)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("cat=cow", r"unknown class 'cow'.*valid classes: bird, cat, dog, fish"),
        ("horse:cat", "unknown class 'horse'"),
        ("cat=cat", "to itself"),
        ("cat=dog,cat=bird", "twice"),
        ("catdog", "not of the form"),
        ("cat=", "not of the form"),
        (" , ", "empty"),
    ],
)
def test_parse_class_map_errors(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_class_map(text, classes=CLASSES)
