"""Tests for qmix_cli/reporting/summary.py: what an audit's summary says, printed by `qmix audit` and by
`qmix_cli.audit` given a console."""

from __future__ import annotations

import io

import pandas as pd
from rich.console import Console

from qmix_cli.reporting.summary import print_audit_summary, rare_flagged, standout_classes


def _frame(categories: list[str], labels: list[str] | None = None) -> pd.DataFrame:
    n = len(categories)
    return pd.DataFrame(
        {
            "sample_id": [f"img{i}" for i in range(n)],
            "given_label": labels or ["cat"] * n,
            "category": categories,
            "p_clean": [0.9 if c == "clean" else 0.1 for c in categories],
            "suggested_label": [None if c == "mislabeled_lq" else "dog" for c in categories],
            "rank": list(range(1, n + 1)),  # clean images ranked first, as in a small, mostly clean set
        }
    )


def _said(frame: pd.DataFrame, **where) -> str:
    out = io.StringIO()
    print_audit_summary(frame, Console(file=out, width=200), **{"out": None, "groups_out": None, **where})
    return " ".join(out.getvalue().split())


def test_the_counts_and_top_issues_are_of_flagged_images_only():
    said = _said(_frame(["clean"] * 3 + ["mislabeled_hq", "mislabeled_lq"]), out="r.parquet")
    assert "audit of 5 images → r.parquet" in said
    table = said.split("top issues", 1)[1]
    assert "img3" in table and "img4" in table and "— (fix or drop image)" in table
    assert not any(f"img{i}" in table for i in range(3))
    assert "clean 3 60.0%" in said.replace("│", "").replace("  ", " ")


def test_a_narrow_terminal_shows_every_id_whole():
    # The id is what a reader looks the image up by: cut to `images/0000174…` it names none.
    frame = _frame(["mislabeled_lq", "mislabeled_hq"], labels=["ankle-boot", "sneaker"])
    frame["sample_id"] = ["images/0000174.png", "/data/site-a/scans/2024/patient-00017/study-3/images/0000388.png"]
    out = io.StringIO()
    print_audit_summary(frame, Console(file=out, width=80), out=None, groups_out=None)
    lines = out.getvalue().split("top issues", 1)[1].splitlines()
    assert max(len(line) for line in lines) <= 80
    cells = [line.split("│")[2].strip() for line in lines if line.startswith("│")]  # the id column, line by line
    assert "".join(cells) == "".join(frame["sample_id"])


def test_labels_ids_and_paths_print_as_text_on_their_own_lines():
    # A label with a terminal's escape sequence (this one clears the screen) and an id with a line break.
    frame = _frame(["mislabeled_hq", "mislabeled_lq"], labels=["cat\x1b[2J", "dog"])
    frame["sample_id"] = ["a\nb", "c"]
    out = io.StringIO()
    print_audit_summary(frame, Console(file=out, width=200), out="r\n.csv", groups_out=None)
    said = out.getvalue()
    assert "\x1b" not in said and "cat\\x1b[2J" in said and "a\\nb" in said and "r\\n.csv" in said


def test_a_set_judged_clean_says_so_and_counts_what_was_left_out():
    frame = _frame(["clean"] * 4)
    assert "top issues" not in _said(frame) and "no issues: every image is judged clean" in _said(frame)
    frame.attrs["skipped"] = [{"path": "a.png"}]
    assert "every image audited is judged clean (1 unreadable left out)" in _said(frame)


def test_flagged_images_of_rare_training_classes_are_called_unreliable():
    frame = _frame(["clean"] * 6 + ["mislabeled_hq"] * 2, labels=["cat"] * 6 + ["rare_finding"] * 2)
    frame.attrs["qmix"] = {"training_set": "true"}
    assert rare_flagged(frame) == (2, ["rare_finding (2)"])
    assert "note: 2 of the flagged images are of classes of fewer than 5 images (rare_finding (2))" in _said(frame)
    frame.attrs["qmix"] = {"training_set": "false"}  # another set: its class sizes are not what the run saw
    assert rare_flagged(frame) == (0, []) and "fewer than 5 images" not in _said(frame)


def test_a_class_flagged_far_more_than_the_rest_is_pointed_out():
    # 6 of 8 "abnormal" images flagged against 2 of 20 "normal" ones: the small class of an imbalanced set.
    categories = ["mislabeled_lq"] * 6 + ["clean"] * 2 + ["mislabeled_hq"] * 2 + ["clean"] * 18
    labels = ["abnormal"] * 8 + ["normal"] * 20
    said = _said(_frame(categories, labels))
    assert (
        "note: the audit flags far more of this class than of the rest: abnormal 6 of 8 (75%; others 10%); a small "
        "class the nets hesitate over" in said
    )
    assert standout_classes(_frame(categories, labels)) == [("abnormal", 6, 8, 0.1)]


def test_no_class_is_pointed_out_when_none_stands_out():
    # A quarter of each class flagged: no class at twice the others' share.
    even = ["mislabeled_hq"] * 2 + ["clean"] * 6
    assert standout_classes(_frame(even * 2, ["cat"] * 8 + ["dog"] * 8)) == []
    # Twice the others' share but under a quarter of the class (1 of 5 against 1 of 12), and a class too small to
    # judge (3 of 4 flagged: the rare-class note's, not this one's).
    low = ["mislabeled_hq"] + ["clean"] * 4 + ["mislabeled_hq"] + ["clean"] * 11
    assert standout_classes(_frame(low, ["cat"] * 5 + ["dog"] * 12)) == []
    rare = ["mislabeled_hq"] * 3 + ["clean"] + ["clean"] * 20
    assert standout_classes(_frame(rare, ["owl"] * 4 + ["dog"] * 20)) == []
    assert "flags far more" not in _said(_frame(rare, ["owl"] * 4 + ["dog"] * 20))


def test_the_standout_boundaries_are_inclusive_and_the_highest_share_comes_first():
    # x: 2 of 8 flagged (exactly a quarter), the other 16 images 2 flagged (exactly half x's share): named.
    at_the_edge = _frame(["mislabeled_hq"] * 2 + ["clean"] * 6 + ["mislabeled_hq"] * 2 + ["clean"] * 14,
                         ["x"] * 8 + ["y"] * 16)  # fmt: skip
    assert [name for name, *_ in standout_classes(at_the_edge)] == ["x"]
    # A class of exactly five images is judged (SMALL_CLASS): 3 of 5 against 2 of 20.
    five = _frame(["mislabeled_lq"] * 3 + ["clean"] * 2 + ["mislabeled_lq"] * 2 + ["clean"] * 18,
                  ["z"] * 5 + ["w"] * 20)  # fmt: skip
    assert [name for name, *_ in standout_classes(five)] == ["z"]
    # Two classes stand out: 4 of 5 before 3 of 6, whatever their order in the report.
    two = _frame(["clean"] * 38 + ["mislabeled_hq"] * 2 + ["mislabeled_hq"] * 3 + ["clean"] * 3
                 + ["mislabeled_hq"] * 4 + ["clean"], ["r"] * 40 + ["q"] * 6 + ["p"] * 5)  # fmt: skip
    assert [(name, flagged, size) for name, flagged, size, _ in standout_classes(two)] == [("p", 4, 5), ("q", 3, 6)]
