"""`qmix_cli.errors`: how offenders are counted and named in one line."""

from __future__ import annotations

import pytest

from qmix_cli.errors import first_few, summarise_offenders


@pytest.mark.parametrize(
    ("what", "one"),
    [
        ("bad images", "1 bad image: x"),
        ("rows with an empty 'label' in m.csv", "1 row with an empty 'label' in m.csv: x"),
        ("suggested labels that are not classes", "1 suggested label that is not classes: x"),
        ("truth paths the report holds under several ids", "1 truth path the report holds under several ids: x"),
        ("duplicate sample_ids in m.csv", "1 duplicate sample_id in m.csv: x"),
        ("things nobody counts", "1 things nobody counts: x"),  # no known plural: left as written
    ],
)
def test_one_offender_is_counted_in_the_singular(what: str, one: str) -> None:
    assert summarise_offenders(what, ["x"]) == one
    assert summarise_offenders(what, ["x", "y"]) == f"2 {what}: x; y"  # more than one: as written


def test_long_lists_are_cut_and_say_how_many_more() -> None:
    names = [f"f{i}" for i in range(8)]
    assert summarise_offenders("bad images", names) == "8 bad images: f0; f1; f2; f3; f4 (and 3 more)"
    assert summarise_offenders("bad images", names[:5], total=12) == "12 bad images: f0; f1; f2; f3; f4 (and 7 more)"
    assert first_few(names) == "f0, f1, f2, f3, f4, and 3 more"
