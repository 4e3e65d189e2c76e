"""`qmix_cli.reporting.review` and the page's ``review.js``: a reviewer's verdicts, from the page's menus to the report
`qmix apply` acts on."""

from __future__ import annotations

import json
import shutil
import subprocess
from importlib import resources
from pathlib import Path

import pandas as pd
import pytest

from qmix_cli.categories import CATEGORIES
from qmix_cli.errors import QmixError
from qmix_cli.reporting.review import overrule, page_verdicts, read_review

C, H, L = CATEGORIES

# Ids and labels a sheet must carry through exactly: quotes, commas, a line break, leading zeros, another script.
IDS = ['a "quoted", id', "line\nbreak", "007", "رقم", "plain"]
GIVEN = ["cat", "dog", "cat", 'a "quoted" label', "bird, grey"]


def report() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "sample_id": IDS,
            "given_label": GIVEN,
            "category": [H, H, L, C, H],
            "suggested_label": ["dog", "cat", None, None, "cat"],
            "p_clean": [0.1, 0.2, 0.3, 0.9, 0.1],
        }
    )


def sheet(**columns) -> pd.DataFrame:
    return pd.DataFrame(columns)


def test_the_reviews_verdicts_replace_the_audits_on_its_rows_only() -> None:
    before = report()
    review = sheet(
        sample_id=[IDS[0], IDS[2], IDS[3], IDS[4]],
        category=[C, H, L, H],
        suggested_label=[None, "dog", None, "cat"],
    )
    reviewed = overrule(before, review)
    out = reviewed.report
    assert out["category"].tolist() == [C, H, H, L, H]
    assert out["suggested_label"].tolist() == [None, "cat", "dog", None, "cat"]
    assert out["p_clean"].tolist() == before["p_clean"].tolist() and out["sample_id"].tolist() == IDS
    assert reviewed.ids == [IDS[0], IDS[2], IDS[3], IDS[4]]
    assert reviewed.overruled == 3  # the last row agrees with the audit
    assert before["category"].tolist() == [H, H, L, C, H]  # the caller's report is left as it was


def test_a_blank_suggestion_is_none_whether_null_or_empty_text() -> None:
    # What a DataFrame built in Python holds where a CSV read leaves a null.
    review = sheet(sample_id=["plain", "007"], category=[C, L], suggested_label=["", "  "])
    assert overrule(report(), review).report["suggested_label"].tolist()[3:] == [None, None]


def test_another_suggested_label_on_a_wrong_label_is_an_overruling() -> None:
    reviewed = overrule(report(), sheet(sample_id=["plain"], category=[H], suggested_label=["dog"]))
    assert reviewed.overruled == 1 and reviewed.report["suggested_label"].iloc[4] == "dog"


@pytest.mark.parametrize(
    ("review", "message"),
    [
        (sheet(id=["plain"], verdict=[C]), "the review lacks column(s) sample_id, category (it has id, verdict)"),
        (sheet(sample_id=["nope", "plain"], category=[C, C]), "1 review row of images the report does not have: nope"),
        (sheet(sample_id=["plain", "plain"], category=[C, L]), "1 duplicate sample id in the review: plain"),
        (
            sheet(
                sample_id=["plain"], category=["relabel"]
            ),  # the words a person would write: named with their meaning
            "the review has categories no verdict is called: 'relabel'; a category is clean (the label is right: keep "
            "it), mislabeled_hq (relabel to suggested_label) or mislabeled_lq (the image is too poor: drop it)",
        ),
        (
            sheet(sample_id=["plain", "007"], category=[C, L], suggested_label=["cat", None]),  # "clean, cat": a cat?
            "1 review row with a suggested_label on a clean or mislabeled_lq verdict: plain; a label is given only",
        ),
        (
            sheet(sample_id=["plain", "007"], category=[C, C], given_label=["bird, grey", "dog"]),
            "1 review row whose given label is not the report's: 007; is this a review of this report?",
        ),
        # The report itself (or a copy): every row would become a person's decision, carried out whatever the options.
        (report(), "the review has a report's columns (p_clean): a review sheet lists only the images a person"),
        (sheet(sample_id=[], category=[]), "the review has no rows"),
        (sheet(sample_id=["plain", "007"], category=[C, None]), "the review has 1 row without a category"),
        (sheet(sample_id=["007"], category=[H]), "1 review row of mislabeled_hq without a suggested label: 007"),
        (
            sheet(sample_id=["007"], category=[H], suggested_label=["cat"]),
            "1 review row relabelling an image to the label it has: 007; call them clean",
        ),
    ],
)
def test_a_sheet_that_does_not_fit_the_report_is_refused(review: pd.DataFrame, message: str) -> None:
    with pytest.raises(QmixError) as caught:
        overrule(report(), review)
    assert message in str(caught.value)


def test_ids_a_spreadsheet_stripped_of_leading_zeros_are_said_to_be_so(tmp_path: Path) -> None:
    # The downloaded sheet opened and saved in a spreadsheet: "007" comes back as 7.
    (tmp_path / "saved.csv").write_text("sample_id,given_label,category,suggested_label\n7,cat,clean,\n", "utf-8")
    with pytest.raises(QmixError) as caught:
        overrule(report(), read_review(tmp_path / "saved.csv"))
    assert str(caught.value) == (
        "1 review row of images the report does not have: 7; 1 id of the sheet is the report's without leading zeros "
        "(7 is 007): a spreadsheet drops them; edit the sheet as text, or import its sample_id column as text"
    )
    # The other way round: the report is the file a spreadsheet shortened (an edited copy), the sheet the page's.
    shortened = report().assign(sample_id=[i if i != "007" else "7" for i in IDS])
    with pytest.raises(QmixError, match=r"1 id of the report is the sheet's without leading zeros \(7 is 007\)"):
        overrule(shortened, sheet(sample_id=["007"], category=[C]))
    # An id the report lacks for another reason is refused without the hint.
    with pytest.raises(QmixError) as caught:
        overrule(report(), sheet(sample_id=["8", "plain"], category=[C, C]))
    assert str(caught.value) == "1 review row of images the report does not have: 8"


def test_a_relabel_must_name_a_class_of_the_report_or_its_run() -> None:
    # A class only the run knows (no image is given it) is one; a misspelling is none.
    with_run = report()
    with_run.attrs["qmix"] = {"class_names": json.dumps(["bird, grey", "cat", "dog", "fox"])}
    assert overrule(with_run, sheet(sample_id=["007"], category=[H], suggested_label=["fox"])).overruled == 1
    with pytest.raises(QmixError, match="1 label in the review that is no class of the report or its run: Dog; check"):
        overrule(with_run, sheet(sample_id=["007"], category=[H], suggested_label=["Dog"]))
    # A sheet read by pandas without dtype=str: its labels are floats, which the message names, with the way out.
    with pytest.raises(QmixError, match=r"no class of the report or its run: 3\.0; .*read it with dtype=str"):
        overrule(with_run, sheet(sample_id=["007"], category=[H], suggested_label=[3.0]))


def test_the_report_is_checked_before_the_sheet_is_laid_over_it() -> None:
    # As apply checks it without a review: one line, not pandas' "Reindexing only valid with uniquely valued Index".
    doubled = pd.concat([report(), report().tail(1)], ignore_index=True)
    with pytest.raises(QmixError, match="1 duplicate sample id in the report: plain"):
        overrule(doubled, sheet(sample_id=["007"], category=[C]))
    with pytest.raises(QmixError, match=r"the report lacks column\(s\) suggested_label"):
        overrule(report().drop(columns="suggested_label"), sheet(sample_id=["007"], category=[C]))


def test_a_blank_given_label_is_not_checked() -> None:
    review = sheet(sample_id=["plain", "007"], category=[C, C], given_label=["bird, grey", None])
    assert overrule(report(), review).report["category"].tolist()[2:] == [C, C, C]


def test_a_sheet_saved_by_a_spreadsheet_reads(tmp_path: Path) -> None:
    # A byte-order mark and semicolons (where the comma is the decimal mark); blank cells are no suggestion.
    path = tmp_path / "review.csv"
    path.write_text("\ufeffsample_id;category;suggested_label\n007;mislabeled_hq;bird, grey\nplain;clean;\n", "utf-8")
    review = read_review(path)
    assert review["sample_id"].tolist() == ["007", "plain"]  # text: the leading zeros kept
    out = overrule(report(), review).report
    assert out["category"].tolist()[2:] == [H, C, C] and out["suggested_label"].tolist()[2:] == [
        "bird, grey",
        None,
        None,
    ]


def test_a_missing_or_unreadable_sheet_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(QmixError, match="review not found"):
        read_review(tmp_path / "nope.csv")
    with pytest.raises(QmixError, match="is a folder; give the review sheet"):
        read_review(tmp_path)
    (tmp_path / "bin.csv").write_bytes(b"\xff\xfe\x00\x81" * 10)
    with pytest.raises(QmixError, match="cannot read review"):
        read_review(tmp_path / "bin.csv")
    report().to_parquet(tmp_path / "report.parquet")
    with pytest.raises(QmixError, match="it is a Parquet file, not CSV text; save it as CSV"):
        read_review(tmp_path / "report.parquet")
    (tmp_path / "twice.csv").write_text("sample_id,category,category\n007,clean,mislabeled_lq\n", "utf-8")
    with pytest.raises(QmixError, match="the column 'category' is named 2 times; keep one"):
        read_review(tmp_path / "twice.csv")
    # A field more than the header is an error, not an id column made the index (which read as category NaN).
    (tmp_path / "long.csv").write_text("sample_id,category\n007,clean,extra\n", "utf-8")
    with pytest.raises(QmixError, match="cannot read review"):
        read_review(tmp_path / "long.csv")


def test_a_sheet_starts_the_pages_review_as_its_script_keeps_verdicts() -> None:
    review = sheet(sample_id=["plain", "007", IDS[0]], category=[C, H, H], suggested_label=[None, "dog", "dog"])
    assert page_verdicts(report(), review) == {
        "plain": {"value": "clean", "given": "bird, grey", "flagged": "hq:cat"},
        "007": {"value": "hq:dog", "given": "cat", "flagged": "lq"},
        IDS[0]: {"value": "hq:dog", "given": "cat", "flagged": "hq:dog"},  # agreeing with the audit
    }


# --------------------------------------------------------------------------------------------------- review.js

NODE = shutil.which("node")


def run_script(expression: str) -> str:
    """The value of ``expression`` (JSON) with the page's review script loaded as ``review``."""
    script = resources.files("qmix_cli.reporting").joinpath("review.js")
    code = f"const review = require({json.dumps(str(script))}); process.stdout.write(JSON.stringify({expression}));"
    return json.loads(subprocess.run([NODE, "-e", code], capture_output=True, check=True, text=True).stdout)


@pytest.mark.skipif(NODE is None, reason="needs node to run the page's script")
def test_the_sheet_the_page_downloads_gives_apply_the_verdicts_chosen(tmp_path: Path) -> None:
    decisions = [
        {"sample_id": IDS[0], "given_label": GIVEN[0], "value": "clean"},
        {"sample_id": IDS[1], "given_label": GIVEN[1], "value": "hq:bird, grey"},
        {"sample_id": IDS[2], "given_label": GIVEN[2], "value": "lq"},
        {"sample_id": IDS[3], "given_label": GIVEN[3], "value": "hq:cat"},
        {"sample_id": IDS[4], "given_label": GIVEN[4], "value": 'hq:a "quoted" label'},
    ]
    (tmp_path / "review.csv").write_text(run_script(f"review.reviewCsv({json.dumps(decisions)})"), "utf-8")
    reviewed = overrule(report(), read_review(tmp_path / "review.csv"))
    out = reviewed.report
    assert out["category"].tolist() == [C, H, L, H, H]
    assert out["suggested_label"].tolist() == [None, "bird, grey", None, "cat", 'a "quoted" label']
    assert reviewed.ids == IDS and reviewed.overruled == 4  # the third agrees with the audit


@pytest.mark.skipif(NODE is None, reason="needs node to run the page's script")
def test_a_cards_menu_offers_the_likeliest_labels_first_and_never_its_own() -> None:
    card = {"given": "cat", "suggested": "dog", "predicted": "dog", "category": H}
    short = run_script(f"review.choicesFor({json.dumps(card)}, ['bird', 'cat', 'dog', 'fox'], false)")
    assert [value for value, _ in short] == ["", "clean", "hq:dog", "lq"]
    full = run_script(f"review.choicesFor({json.dumps(card)}, ['bird', 'cat', 'dog', 'fox'], true)")
    assert [value for value, _ in full] == ["", "clean", "hq:dog", "lq", "hq:bird", "hq:fox"]
    # Agreeing with a card is choosing its own verdict; a wrong label with no suggestion has none to agree with.
    agree = [
        run_script(f"review.flaggedValue({json.dumps({**card, **change})})")
        for change in ({}, {"category": L}, {"category": C}, {"suggested": ""})
    ]
    assert agree == ["hq:dog", "lq", "clean", ""]


@pytest.mark.skipif(NODE is None, reason="needs node to run the page's script")
def test_the_bar_says_how_often_the_reviewer_confirmed_each_kind_of_flag() -> None:
    entries = [
        {"value": "hq:dog", "flagged": "hq:dog"},
        {"value": "clean", "flagged": "hq:dog"},
        {"value": "hq:fox", "flagged": "hq:dog"},  # a wrong label, but not the suggested one: not a confirmation
        {"value": "lq", "flagged": "lq"},
        {"value": "lq", "flagged": "clean"},  # a card of the section by group the audit called clean
    ]
    said = "; one by one, confirmed 1 of 3 mislabeled_hq, 1 of 1 mislabeled_lq"
    assert run_script(f"review.confirmed({json.dumps(entries)})") == said
    # Cards a section's "agree" button set were not looked at one by one: they confirm nothing.
    bulk = [*entries, {"value": "hq:dog", "flagged": "hq:dog", "bulk": True}]
    assert run_script(f"review.confirmed({json.dumps(bulk)})") == said
    assert run_script("review.confirmed([])") == ""


@pytest.mark.skipif(NODE is None, reason="needs node to run the page's script")
def test_the_bar_counts_verdicts_on_images_the_page_does_not_show_apart() -> None:
    entries = [
        {"value": "lq", "flagged": "lq", "shown": True},
        {"value": "clean", "flagged": "hq:dog", "shown": False},  # given on a page written with a larger --top
    ]
    assert run_script(f"review.countText({json.dumps(entries)})") == (
        "2 reviewed, 1 overruled (1 of them on images this page does not show); one by one, confirmed 0 of 1 "
        "mislabeled_hq, 1 of 1 mislabeled_lq"
    )


@pytest.mark.skipif(NODE is None, reason="needs node to run the page's script")
def test_the_wilson_interval_matches_its_formula_and_is_not_empty_when_nothing_is_found() -> None:
    for k, n in ((0, 12), (1, 12), (5, 40), (12, 12)):
        low, high = run_script(f"review.wilson({k}, {n})")
        z, p = 1.96, k / n
        centre = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z / (1 + z * z / n) * (p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5
        assert low == pytest.approx(max(0.0, centre - half)) and high == pytest.approx(min(1.0, centre + half))
        assert low <= p <= high
    assert run_script("review.wilson(0, 12)")[1] > 0.2  # a dozen confirmed clean images do not prove none is wrong


@pytest.mark.skipif(NODE is None, reason="needs node to run the page's script")
def test_the_bar_estimates_what_the_audit_missed_once_every_card_of_the_clean_sample_is_decided() -> None:
    sample = {"total": 1500, "size": 12}
    looked = [{"value": "clean", "flagged": "clean", "shown": True, "sampled": True}] * 11
    looked = [*looked, {"value": "hq:dog", "flagged": "clean", "shown": True, "sampled": True}]
    text = run_script(f"review.countText({json.dumps(looked)}, {json.dumps(sample)})")
    assert text == (
        "12 reviewed, 1 overruled; of the clean sample, 1 of 12 overruled: about 125 of the 1,500 images called clean "
        "are wrong or too poor by your verdicts (95 % interval 22 to 531)"
    )
    # Only the wrong ones overruled, the right ones left undecided (what "overrule the wrong ones" invites): no
    # estimate, which would be of the cards one chose to decide, but how far the sample is.
    assert run_script(f"review.missedText({json.dumps(looked[-1:])}, 1500, 12)") == (
        "; clean sample: 1 of 12 decided (decide every one, k keeping a right label, to estimate what the audit missed)"
    )
    # Cards the section by group shows, or decided in bulk, are no part of the random sample.
    elsewhere = [{**entry, "sampled": False} for entry in looked]
    assert "0 of 12 decided" in run_script(f"review.countText({json.dumps(elsewhere)}, {json.dumps(sample)})")
    bulk = [{**entry, "bulk": True} for entry in looked]
    assert "0 of 12 decided" in run_script(f"review.missedText({json.dumps(bulk)}, 1500, 12)")
    # None overruled is no proof that none is wrong: the bound is said, not "about 0".
    assert run_script(f"review.missedText({json.dumps(looked[:11])}, 1500, 11)") == (
        "; of the clean sample, none of 11 overruled: at most about 388 of the 1,500 images called clean are wrong or "
        "too poor by your verdicts (95 %)"
    )
    # What was looked at is known: the bounds hold at least the ones found and leave out the ones confirmed; every
    # image called clean looked at is a count, not an estimate.
    every = [{**looked[-1]}] * 3
    assert run_script(f"review.missedText({json.dumps(every)}, 4, 3)").endswith("(95 % interval 3 to 4)")
    assert run_script(f"review.missedText({json.dumps(looked[:5])}, 5, 5)") == (
        "; of the 5 images called clean, you overruled 0"
    )
    assert run_script(f"review.countText({json.dumps(looked)})") == "12 reviewed, 1 overruled"  # no sample on the page


@pytest.mark.skipif(NODE is None, reason="needs node to run the page's script")
def test_a_key_on_a_card_gives_the_verdict_it_names_and_no_relabel_to_the_cards_own_label() -> None:
    card = {"given": "cat", "suggested": "dog", "predicted": "fox", "category": H}
    pressed = ["k", "d", "s", "p", "u", "x", "Enter"]
    keys = run_script(f"{json.dumps(pressed)}.map((key) => review.keyChoice(key, {json.dumps(card)}))")
    assert keys == ["clean", "lq", "hq:dog", "hq:fox", "", None, None]
    # A clean card suggests and predicts its own label: no relabel to give, so the key does nothing.
    own = {"given": "cat", "suggested": "cat", "predicted": "cat", "category": C}
    assert run_script(f"['s', 'p'].map((key) => review.keyChoice(key, {json.dumps(own)}))") == [None, None]
    # A low-quality card has no suggestion; its prediction is still one key away.
    poor = {"given": "cat", "predicted": "dog", "category": L}
    assert run_script(f"['s', 'p'].map((key) => review.keyChoice(key, {json.dumps(poor)}))") == [None, "hq:dog"]
