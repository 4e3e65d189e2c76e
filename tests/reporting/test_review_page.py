"""The review on `qmix show`'s page, driven in a DOM (jsdom under node): menus, keys, the section buttons, the clean
sample's estimate, the downloaded sheet, "forget" and the storage a reload reads.

jsdom is installed by ``make test`` where node and npm are (``.venv/jsdom``, or wherever ``QMIX_JSDOM`` names a
``node_modules`` folder); without it these tests are skipped, and `test_review.py` still tests the script's pure
functions under node."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from qmix_cli.reporting.html import write_html_report
from qmix_cli.reporting.review import overrule, read_review
from tests.reporting.test_html import make_report

NODE = shutil.which("node")
MODULES = Path(os.environ.get("QMIX_JSDOM", Path(__file__).parents[2] / ".venv" / "jsdom" / "node_modules"))
pytestmark = pytest.mark.skipif(
    NODE is None or not (MODULES / "jsdom" / "package.json").is_file(),
    reason="needs node and jsdom (make test installs it)",
)

# Loads the page with its scripts, gives the body below `w` (window), `d` (document), `bar`, `press(element, key,
# extra)` and `choose(select, value)`, and prints what the body returns as JSON. `storage` is a browser's local storage
# before the page loads (a reload), and the result carries it after, with the last downloaded sheet and confirm text.
HARNESS = """
const { JSDOM } = require("jsdom");
const fs = require("fs");
const [page, storage] = [process.argv[1], JSON.parse(process.argv[2])];
const dom = new JSDOM(fs.readFileSync(page, "utf8"), {
  runScripts: "dangerously", url: "http://localhost/page.html", pretendToBeVisual: true,
  beforeParse(window) {
    for (const [k, v] of Object.entries(storage)) window.localStorage.setItem(k, v);
    window.confirm = (text) => { window.asked = text; return true; };
    window.URL.createObjectURL = (blob) => { window.blob = blob; return "blob:sheet"; };
    window.URL.revokeObjectURL = () => {};
    window.HTMLAnchorElement.prototype.click = function () {};
  },
});
const w = dom.window, d = w.document, bar = d.getElementById("review");
const press = (element, key, extra = {}) =>
  element.dispatchEvent(new w.KeyboardEvent("keydown", { key, bubbles: true, cancelable: true, ...extra }));
const choose = (select, value) => { select.value = value; select.dispatchEvent(new w.Event("change")); };
const count = () => bar.querySelector(".count").textContent;
const cards = (selector = "") => [...d.querySelectorAll(selector + " figure.thumb")];
const field = (figure, name) => JSON.parse(figure.dataset[name]);
const sheet = () => new Promise((done) => {
  if (!w.blob) return done(null);
  const reader = new w.FileReader(); reader.onload = () => done(reader.result); reader.readAsText(w.blob);
});
setTimeout(async () => {
  const result = await (async () => { BODY })();
  const stored = {};
  for (let i = 0; i < w.localStorage.length; i++) {
    const key = w.localStorage.key(i);
    stored[key] = w.localStorage.getItem(key);
  }
  process.stdout.write(JSON.stringify({ result, stored, sheet: await sheet(), asked: w.asked || null }));
}, 50);
"""


def drive(page: Path, body: str, *, storage: dict[str, str] | None = None) -> dict:
    code = HARNESS.replace("BODY", body)
    run = subprocess.run(
        [NODE, "-e", code, str(page), json.dumps(storage or {})],
        capture_output=True,
        text=True,
        env={**os.environ, "NODE_PATH": str(MODULES)},
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


@pytest.fixture
def page(tmp_path, write_image) -> tuple[Path, Path, Path, pd.DataFrame]:
    """A page of a 30-image report, every card shown (``--top 100``): (page, report, data, rows)."""
    report, data, rows = make_report(tmp_path, write_image)
    return write_html_report(report, out=tmp_path / "page.html", data=data, top=100), report, data, rows


def test_a_menu_decides_a_card_and_the_sheet_it_downloads_is_what_apply_reads(page) -> None:
    html, report, *_ = page
    out = drive(
        html,
        """
        const [hq] = cards('.thumbs[data-verdict="mislabeled_hq"]');
        const [lq] = cards('.thumbs[data-verdict="mislabeled_lq"]');
        choose(hq.querySelector("select"), "clean");
        choose(lq.querySelector("select"), "lq");
        bar.querySelector(".download").click();
        return { count: count(), ids: [field(hq, "id"), field(lq, "id")],
                 outlined: [hq.classList.contains("overruled"), lq.classList.contains("overruled")] };
        """,
    )
    assert out["result"]["count"].startswith("2 reviewed, 1 overruled; one by one, confirmed 0 of 1 mislabeled_hq")
    assert out["result"]["outlined"] == [True, False]
    sheet = html.parent / "sheet.csv"
    sheet.write_text(out["sheet"], encoding="utf-8")
    reviewed = overrule(pd.read_parquet(report), read_review(sheet))
    assert reviewed.ids == out["result"]["ids"] and reviewed.overruled == 1
    # A reload keeps the verdicts: the page reads them from the browser's storage.
    again = drive(html, "return count();", storage=out["stored"])
    assert again["result"] == out["result"]["count"]


def test_keys_decide_the_focused_card_and_move_on_one_card_per_key(page) -> None:
    html, *_ = page
    out = drive(
        html,
        """
        const all = cards();
        const picture = (i) => all[i].querySelector("img, .placeholder");
        const value = (i) => all[i].querySelector("select").value;
        picture(0).focus(); press(picture(0), "s");
        const moved = all[1].contains(d.activeElement);
        press(d.activeElement, "d", { repeat: true });  // a held key: no second card
        press(d.activeElement, "D");
        press(d.activeElement, "k", { ctrlKey: true });  // the browser's shortcut, not a verdict
        press(all[2].querySelector("select"), "k");  // the menu's own type-ahead
        press(picture(1), "u");
        const last = all.length - 1;
        picture(last).focus(); press(picture(last), "k");
        return { first: value(0), suggested: field(all[0], "suggested"), moved, second: value(1), third: value(2),
                 last: value(last), focus: d.activeElement.className };
        """,
    )
    got = out["result"]
    assert got["first"] == f"hq:{got['suggested']}" and got["moved"]
    assert got["second"] == "" and got["third"] == ""  # "D" decided card 1 ("u" undid it); nothing else touched
    assert got["last"] == "clean" and got["focus"] == "download"  # the last card decided: the download is left


def test_a_sections_button_agrees_with_its_cards_left_and_those_confirm_nothing(page) -> None:
    html, *_ = page
    out = drive(
        html,
        """
        const buttons = [...d.querySelectorAll("button")].map((b) => b.getAttribute("aria-label") || b.textContent);
        const section = cards('.thumbs[data-verdict="mislabeled_lq"]');
        choose(section[0].querySelector("select"), "clean");
        [...d.querySelectorAll("button")].find((b) => (b.getAttribute("aria-label") || "").includes("mislabeled_lq"))
          .click();
        return { buttons, count: count(), decided: section.map((f) => f.querySelector("select").value) };
        """,
    )
    got = out["result"]
    assert "Agree with the remaining mislabeled_lq cards" in got["buttons"]
    assert not any("clean" in label for label in got["buttons"])  # the clean sample is decided card by card
    assert got["decided"][0] == "clean" and set(got["decided"][1:]) == {"lq"}
    n = len(got["decided"])
    assert got["count"].startswith(f"{n} reviewed, 1 overruled; one by one, confirmed 0 of 1 mislabeled_lq")


def test_the_bar_estimates_what_the_audit_missed_once_the_clean_sample_is_decided(tmp_path, write_image) -> None:
    report, data, rows = make_report(tmp_path, write_image, n=60)
    html = write_html_report(report, out=tmp_path / "page.html", data=data, top=4)
    clean = int((rows["category"] == "clean").sum())
    out = drive(
        html,
        """
        const sample = cards(".thumbs[data-sample]");
        const said = [count()];
        sample.slice(0, 3).forEach((f) => choose(f.querySelector("select"), "clean"));
        said.push(count());
        choose(sample[3].querySelector("select"), "lq");
        said.push(count());
        return { said, total: d.querySelector(".thumbs[data-sample]").dataset.sample, size: sample.length };
        """,
    )
    got = out["result"]
    assert got["size"] == 4 and int(got["total"]) == clean
    assert got["said"][0].endswith("clean sample: 0 of 4 decided (decide every one, k keeping a right label, to "
                                   "estimate what the audit missed)")  # fmt: skip
    assert "clean sample: 3 of 4 decided" in got["said"][1]
    z, n = 1.96, 4  # Wilson's 95 % bounds of 1 in 4, scaled and clipped to what the four cards prove
    centre, half = (
        (1 / n + z * z / (2 * n)) / (1 + z * z / n),
        z / (1 + z * z / n) * (3 / n**3 + z * z / (4 * n * n)) ** 0.5,
    )
    low, high = max(1, round((centre - half) * clean)), min(clean - 3, round((centre + half) * clean))
    assert got["said"][2].endswith(
        f"of the clean sample, 1 of 4 overruled: about {round(clean / 4)} of the {clean} images called clean are "
        f"wrong or too poor by your verdicts (95 % interval {low} to {high})"
    )


def test_forget_goes_back_to_where_the_page_started(page, tmp_path) -> None:
    html, report, data, rows = page
    flagged = rows[rows["category"] == "mislabeled_lq"].head(2)
    pd.DataFrame({"sample_id": flagged["sample_id"], "category": "clean", "suggested_label": ""}).to_csv(
        tmp_path / "colleague.csv", index=False
    )
    started = write_html_report(report, out=tmp_path / "s.html", data=data, top=100, review=tmp_path / "colleague.csv")
    body = """
        choose(cards()[0].querySelector("select"), "lq");
        const before = count();
        bar.querySelector(".clear").click();
        return { before, after: count() };
    """
    out = drive(started, body)
    assert out["result"]["before"].startswith("started from colleague.csv (2 verdicts); 3 reviewed")
    assert out["result"]["after"].startswith("started from colleague.csv (2 verdicts); 2 reviewed, 2 overruled")
    assert out["asked"].endswith("and start again from the sheet's 2?")
    plain = drive(html, body)  # no sheet: forgetting empties the review
    assert (
        plain["result"]["after"].startswith("0 reviewed") and plain["asked"] == "Forget all 1 verdicts of this review?"
    )


def test_hiding_the_reviewed_and_filtering_by_class_hide_the_cards(page) -> None:
    html, *_ = page
    out = drive(
        html,
        """
        const all = cards();
        choose(all[0].querySelector("select"), "clean");
        const hide = bar.querySelector(".hide-decided"); hide.checked = true; hide.dispatchEvent(new w.Event("change"));
        const hidden = all.filter((f) => f.hidden).map((f) => field(f, "id"));
        hide.checked = false; hide.dispatchEvent(new w.Event("change"));
        const only = bar.querySelector(".only-class"); only.value = "cat"; only.dispatchEvent(new w.Event("change"));
        return { first: field(all[0], "id"), hidden,
                 shown: all.filter((f) => !f.hidden).map((f) => field(f, "given")) };
        """,
    )
    got = out["result"]
    assert got["hidden"] == [got["first"]]
    assert got["shown"] and set(got["shown"]) == {"cat"}


def test_a_sections_button_passes_over_rare_classes_and_cards_the_filter_hides(tmp_path, write_image) -> None:
    report, data, _ = make_report(tmp_path, write_image, n=30)
    frame = pd.read_parquet(report)
    owls = frame.index[frame["category"] == "mislabeled_lq"][:2]
    frame.loc[owls, "given_label"] = "owl"  # a class of two images: the audit's verdict says little
    frame.to_parquet(tmp_path / "owls.parquet")
    html = write_html_report(tmp_path / "owls.parquet", out=tmp_path / "page.html", data=data, top=100)
    click = """
        const section = cards('.thumbs[data-verdict="mislabeled_lq"]');
        const only = bar.querySelector(".only-class");
        only.value = FILTER; only.dispatchEvent(new w.Event("change"));
        const button = [...d.querySelectorAll("button")].find((b) => (b.getAttribute("aria-label") || "")
          .includes("mislabeled_lq"));
        button.click();
        return { label: button.textContent,
                 decided: section.map((f) => [field(f, "given"), f.querySelector("select").value]) };
    """
    every = drive(html, click.replace("FILTER", '""'))["result"]
    assert every["label"] == "Agree with the remaining cards above (not those of rare classes)"
    assert all(value == ("" if given == "owl" else "lq") for given, value in every["decided"])
    chosen = next(given for given, _ in every["decided"] if given != "owl")
    filtered = drive(html, click.replace("FILTER", json.dumps(chosen)))["result"]
    assert all(value == ("lq" if given == chosen else "") for given, value in filtered["decided"])
    assert any(given not in (chosen, "owl") for given, _ in filtered["decided"])  # a class the filter hid


def test_a_menu_lists_every_class_while_it_has_the_focus(page) -> None:
    # A page of a thousand classes would be slow with every menu full: the likeliest choices, and all once opened.
    html, *_ = page
    out = drive(
        html,
        """
        const card = cards()[0], menu = card.querySelector("select");
        const options = () => [...menu.options].map((o) => o.value);
        const before = options();
        menu.dispatchEvent(new w.Event("focus"));
        const open = options();
        menu.dispatchEvent(new w.Event("blur"));
        const classes = JSON.parse(d.getElementById("qmix-review-data").textContent).classes;
        return { before, open, after: options(), classes, given: field(card, "given") };
        """,
    )
    got = out["result"]
    relabels = [value[3:] for value in got["open"] if value.startswith("hq:")]
    assert sorted(relabels) == sorted(set(got["classes"]) - {got["given"]})  # each class once, never its own
    assert len(got["before"]) < len(got["open"]) and got["after"] == got["before"]


def test_verdicts_on_cards_a_smaller_page_does_not_show_are_kept_and_downloaded(page, tmp_path) -> None:
    html, report, data, _ = page
    every = drive(
        html,
        """
        cards().forEach((f) => choose(f.querySelector("select"), "lq"));
        return cards().length;
        """,
    )
    small = write_html_report(report, out=tmp_path / "small.html", data=data, top=2, sample=2)
    out = drive(
        small,
        """
        bar.querySelector(".download").click();
        return { count: count(), cards: cards().length };
        """,
        storage=every["stored"],
    )
    n, shown = every["result"], out["result"]["cards"]
    assert out["result"]["count"].startswith(f"{n} reviewed, ")
    assert f"({n - shown} of them on images this page does not show)" in out["result"]["count"]
    assert out["sheet"].count("\r\n") == n + 1  # the header and every verdict, shown here or not
