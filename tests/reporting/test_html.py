"""The HTML page of ``qmix show``: self-contained, scatter, counts, ranked thumbnails, escaping, curves."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
from collections.abc import Callable
from html import escape as html_escape
from html import unescape as html_unescape
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from qmix_cli.categories import CATEGORIES
from qmix_cli.errors import QmixError
from qmix_cli.reporting.html import (
    class_table_html,
    clean_sample,
    legend_html,
    line_chart_svg,
    read_separation_means,
    scatter_svg,
    subsample_indices,
    thumbnail_card_html,
    thumbnail_data_uri,
    write_html_report,
)
from qmix_cli.reporting.report import build_report, read_report, report_metadata, run_digest, write_report

CLASSES = ("cat", "dog", "<b>bird</b>")
EVIL_ID = "<script>alert(1)</script>"
MISSING_ID = "s-missing"


def _shown(page: Path) -> str:
    """A page's HTML without the ``<bdi>`` tags that isolate each user-written text (tested on their own)."""
    return page.read_text().replace("<bdi>", "").replace("</bdi>", "")


def make_report(
    root: Path,
    write_image: Callable[..., Path],
    *,
    n: int = 30,
    fmt: str = "parquet",
    seed: int = 0,
    run_dir: str | None = None,
    extra: dict[str, str] | None = None,
) -> tuple[Path, Path, pd.DataFrame]:
    """A report of ``n`` rows over real PNGs under ``root/ds`` (one of them missing); returns (report, data, rows).

    Row 0 has a sample id that is an HTML tag, and every group has at least a few rows.
    """
    rng = np.random.default_rng(seed)
    data = root / "ds"
    ids = [EVIL_ID, MISSING_ID] + [f"s{i:03d}" for i in range(2, n)]
    paths = [f"img/{i:03d}.png" for i in range(n)]
    for i, rel in enumerate(paths):
        if ids[i] != MISSING_ID:
            write_image(data / rel, size=20, mode="L" if i % 2 else "RGB", seed=i)
    categories = np.arange(n) % 3
    posteriors = rng.dirichlet(np.ones(3), size=n)
    # Make the hard group the most likely one, as the audit does.
    posteriors[np.arange(n), categories] += 2.0
    probs = rng.dirichlet(np.ones(len(CLASSES)), size=n)
    table = build_report(
        sample_ids=ids,
        paths=paths,
        given_labels=rng.integers(0, len(CLASSES), n),
        probs=probs,
        loss=rng.uniform(0, 1, n),
        uncertainty=rng.uniform(0, 1, n),
        posteriors=posteriors,
        categories=categories,
        class_names=CLASSES,
    )
    out = root / f"report.{fmt}"
    meta = report_metadata(method="qmix", model="tiny<net>", class_names=CLASSES, run_dir=run_dir, extra=extra)
    write_report(table, out, metadata=meta if fmt == "parquet" else None)
    return out, data, table.to_pandas()


def make_run(root: Path, *, epochs: int = 6, warmup: int = 2) -> Path:
    run = root / "run"
    run.mkdir()
    lines = []
    for epoch in range(1, epochs + 1):
        row = {"epoch": epoch, "phase": "warmup" if epoch <= warmup else "train", "loss_x": 2.0 / epoch}
        if epoch > warmup:
            row["auc_clean"] = 0.5 + 0.05 * epoch
        lines.append(json.dumps(row))
    (run / "metrics.jsonl").write_text("\n".join([*lines, "not json"]) + "\n")
    entry = {"means": [[0.1, 0.4], [0.7, 0.5], [0.3, 0.9]], "component_groups": [0, 1, 2], "weights": [0.5, 0.3, 0.2]}
    (run / "separation.json").write_text(json.dumps([entry, entry]))
    return run


@pytest.fixture
def report(tmp_path, write_image):
    return make_report(tmp_path, write_image)


def _section(page: str, group: str) -> str:
    start = page.index(f"{group} <small")
    end = page.find("<h2", start)
    return page[start : end if end >= 0 else len(page)]


def test_page_is_self_contained_html(report, tmp_path):
    path, data, _ = report
    out = write_html_report(path, out=tmp_path / "page" / "r.html", data=data)
    assert out == tmp_path / "page" / "r.html"
    page = out.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert page.count("<html") == 1 and page.count("</body>") == 1
    # No remote scripts or stylesheets, no remote assets: only the SVG namespace URL. The review's script is inline.
    assert "<script src" not in page and "<link" not in page
    assert re.findall(r"<script[^>]*>", page) == ['<script type="application/json" id="qmix-review-data">', "<script>"]
    assert set(re.findall(r"https?://[^\s\"']+", page)) <= {"http://www.w3.org/2000/svg"}
    assert not list(out.parent.glob(".*.tmp"))  # written atomically, nothing left behind
    assert "<title>qmix report — report.parquet</title>" in page  # which report, in a browser tab of several


def test_scatter_has_one_circle_per_point(report, tmp_path):
    path, data, rows = report
    page = write_html_report(path, out=tmp_path / "r.html", data=data).read_text()
    assert page.count('<svg class="scatter"') == 1
    assert page.count("<circle") == len(rows)
    for i in range(len(CATEGORIES)):
        assert page.count(f'class="c{i}"') == int((rows["category"] == CATEGORIES[i]).sum())


def test_scatter_subsamples_deterministically(report, tmp_path):
    path, data, _ = report
    first = write_html_report(path, out=tmp_path / "a.html", data=data, max_points=7).read_text()
    second = write_html_report(path, out=tmp_path / "b.html", data=data, max_points=7).read_text()
    circles = re.findall(r"<circle[^>]*>", first)
    assert len(circles) == 7
    assert circles == re.findall(r"<circle[^>]*>", second)
    assert "7 of 30 images (sampled)" in first


def test_header_and_class_table_counts(report, tmp_path):
    path, data, rows = report
    page = _shown(write_html_report(path, out=tmp_path / "r.html", data=data))
    counts = rows["category"].value_counts()
    for category in CATEGORIES:
        assert f"<b>{category}</b> {counts[category]} (" in page
    assert "method <b>qmix</b>" in page and "model <b>tiny&lt;net&gt;</b>" in page
    # One table row per class, in the metadata's order, and a total row.
    table = page[page.index('<table class="counts">') : page.index("</table>")]
    body_rows = re.findall(r"<tr[^>]*><th>(.*?)</th>(.*?)</tr>", table.split("<tbody>")[1])
    assert [label for label, _ in body_rows] == [*(s.replace("<", "&lt;").replace(">", "&gt;") for s in CLASSES),
                                                 "<b>all</b>"]  # fmt: skip
    for (_, cells), name in zip(body_rows, [*CLASSES, None], strict=True):
        values = [int(v) for v in re.findall(r"<td>(\d+)</td>", cells)]
        sub = rows if name is None else rows[rows["given_label"] == name]
        expected = [int((sub["category"] == c).sum()) for c in CATEGORIES]
        assert values == [*expected, len(sub)]


def test_thumbnails_top_n_likeliest_of_their_verdict_first(report, tmp_path):
    # By the verdict's own posterior, not the report's rank (ascending p_clean, which within a verdict is noise).
    path, data, rows = report
    page = _shown(write_html_report(path, out=tmp_path / "r.html", data=data, top=3))
    for group in ("mislabeled_hq", "mislabeled_lq"):
        section = _section(page, group)
        members = rows[rows["category"] == group]
        expected = members.sort_values([f"p_{group}", "rank"], ascending=[False, True])["sample_id"].head(3).tolist()
        assert expected != members.sort_values("rank")["sample_id"].head(3).tolist()  # the two orders differ here
        shown = [
            m.replace("&lt;", "<").replace("&gt;", ">") for m in re.findall(r'<span class="sid">(.*?)</span>', section)
        ]
        assert shown == expected
        ranks = [
            int(r) for r in re.findall(r'<span class="rank" title="its rank in the report">rank (\d+)</span>', section)
        ]
        assert ranks == members.set_index("sample_id").loc[expected, "rank"].tolist()
        assert f"the 3 likeliest of {len(members):,} by p_{group}; the report lists all" in section
        uris = re.findall(r'src="data:image/(?:png|jpeg);base64,([A-Za-z0-9+/=]+)"', section)
        assert len(uris) + section.count('class="placeholder"') == 3
        for uri in uris:
            with Image.open(io.BytesIO(base64.b64decode(uri))) as img:
                # 20-px images, grey and colour, kept as they are: PNG, every pixel exact.
                assert img.format == "PNG" and max(img.size) == 20


def test_a_card_says_where_the_file_is_and_why_the_image_is_flagged(report, tmp_path):
    """A curator must find the file to fix it, and see the two scores the verdict rests on (high loss: a wrong label
    on a clear image; high uncertainty: a poor image); the enlarged view is reachable by keyboard."""
    path, data, rows = report
    page = write_html_report(path, out=tmp_path / "r.html", data=data, top=100).read_text()
    row = rows[(rows["category"] == "mislabeled_lq") & (rows["sample_id"] != MISSING_ID)].iloc[0]
    card = next(c for c in page.split('<figure class="thumb"') if f'<span class="sid"><bdi>{row["sample_id"]}<' in c)
    assert f'<span class="path" title="the image file"><bdi>{row["path"]}</bdi></span>' in card
    assert f"loss {row['loss']:.2f} · uncertainty {row['uncertainty']:.2f}" in card
    alt = re.search(r'<img src="data:image/[^"]+" alt="([^"]*)" tabindex="0"', card).group(1)
    assert html_unescape(alt) == f"mislabeled_lq image, given label {row['given_label']}"  # not the caption's id


def test_a_card_names_an_id_that_is_its_files_path_once(report):
    # A folder's ids, a manifest's without ids and a qmix corrupt output's are the paths: the card said it twice.
    _, _, rows = report
    row = rows.iloc[0].to_dict()
    apart = thumbnail_card_html(row, None)
    assert row["sample_id"] != row["path"] and apart.count('class="path"') == 1
    once = thumbnail_card_html({**row, "sample_id": row["path"]}, None)
    shown = once.split(">", 1)[1]  # past the figure's tag, whose data attributes are for the review script
    assert 'class="path"' not in once and shown.count(row["path"]) == 1
    assert f'<span class="sid" title="the image file"><bdi>{row["path"]}</bdi></span>' in once


def test_a_card_shows_its_verdict_and_how_sure_the_nets_are_and_the_page_how_to_act(report, tmp_path):
    """The posteriors of a flagged image read 0.00 / 1.00 / 0.00; what tells a sure relabel from a doubtful one is
    the nets' probability of the given and the predicted label. The section by group mixes verdicts, so each card
    carries its category's key; sections are linked from the top, and the page says how a verdict is acted on."""
    path, data, rows = report
    page = write_html_report(path, out=tmp_path / "r.html", data=data, top=100).read_text()
    for category in ("mislabeled_hq", "mislabeled_lq"):
        row = rows[(rows["category"] == category) & (rows["sample_id"] != MISSING_ID)].iloc[0]
        card = next(c for c in page.split('<figure class="thumb"') if f"<bdi>{row['sample_id']}<" in c)
        code = CATEGORIES.index(category)
        assert f'<span class="swatch s{code}" aria-hidden="true"></span><span class="sr">{category}: </span>' in card
        predicted = f"<bdi>{html_escape(str(row['predicted_label']))}</bdi> {row['confidence']:.2f}"
        assert f"p given {row['label_score']:.2f} · predicted {predicted}" in card
        assert f"p_clean / p_mislabeled_hq / p_mislabeled_lq: {row['p_clean']:.3g} / " in card
    for section in ("scatter", "classes", "mislabeled_hq", "mislabeled_lq"):
        assert f'<a href="#{section}">' in page and f'<h2 id="{section}">' in page
    assert f"image paths under <b><bdi>{data.resolve()}</bdi></b>" in page
    assert page.count("to overrule a verdict, give yours in the card's menu and pass the review sheet") == 3
    shown = _shown(tmp_path / "r.html")
    for category in ("mislabeled_hq", "mislabeled_lq"):  # every one shown, and the page says where the lost one is
        section, members = _section(shown, category), rows[rows["category"] == category]
        assert f'<small class="note">all {len(members):,}, likeliest first</small>' in section
        lost = MISSING_ID in set(members["sample_id"])
        assert ('<p class="note">1 image not found or unreadable: "no image".</p>' in section) == lost


def test_thumbnails_keep_a_noisy_photos_noise_visible(tmp_path):
    """Gaussian noise of sigma 25 on a 1024-px photo, the low-quality verdict a clinician must confirm: averaged
    down to the 128 px a card shows, it was all but gone. The page keeps twice that (enlarged on hover or focus)."""
    rng = np.random.default_rng(0)
    gradient = np.linspace(60, 190, 1024)[None, :, None].repeat(1024, 0).repeat(3, 2)
    noisy = np.clip(gradient + rng.normal(0, 25, gradient.shape), 0, 255).astype(np.uint8)
    Image.fromarray(noisy).save(tmp_path / "noisy.png")

    def noise_left(uri: str) -> float:
        with Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))) as thumb:
            pixels = np.asarray(thumb.convert("L"), dtype=np.float64)
        return float((pixels[:, 1:-1] - (pixels[:, :-2] + pixels[:, 2:]) / 2).std())  # the gradient cancels

    page, card_size = thumbnail_data_uri(tmp_path / "noisy.png"), thumbnail_data_uri(tmp_path / "noisy.png", size=128)
    assert page.startswith("data:image/jpeg;base64,")  # scaled down, so resampled anyway: JPEG, a seventh the size
    assert noise_left(page) > 2.5 * noise_left(card_size)  # measured: 3.0 against 1.0
    Image.fromarray(noisy[:, :, 0]).save(tmp_path / "xray.png")  # a grey one too: its PNG was 4 times the JPEG
    assert thumbnail_data_uri(tmp_path / "xray.png").startswith("data:image/jpeg;base64,")
    small = noisy[:32, :32]  # fits as it is: kept exactly
    Image.fromarray(small).save(tmp_path / "small.png")
    uri = thumbnail_data_uri(tmp_path / "small.png")
    with Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))) as thumb:
        assert thumb.format == "PNG" and np.array_equal(np.asarray(thumb), small)


@pytest.mark.parametrize(
    ("side", "suffix", "fmt"),
    [(512, ".jpg", "jpeg"), (1024, ".jpg", "jpeg"), (200, ".png", "jpeg"), (128, ".png", "png"), (96, ".jpg", "png")],
)
def test_a_thumbnail_is_a_jpeg_when_the_image_is_larger_than_a_card_shows_it(tmp_path, side, suffix, fmt):
    # A 512- or 1024-px JPEG photo is decoded at 256 px by its DCT scale, and was then kept as a PNG three to five
    # times the JPEG's size: a page of a few hundred photos grew to hundreds of megabytes.
    rng = np.random.default_rng(side)
    Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(tmp_path / f"img{suffix}")
    uri = thumbnail_data_uri(tmp_path / f"img{suffix}")
    assert uri.startswith(f"data:image/{fmt};base64,")
    card = thumbnail_card_html(
        {"category": "mislabeled_lq", "given_label": "a", "predicted_label": "b", "suggested_label": None,
         "sample_id": "s", "path": "p", "rank": 1, "loss": 0.5, "uncertainty": 0.9, "p_clean": 0.0,
         "p_mislabeled_hq": 0.0, "p_mislabeled_lq": 1.0, "confidence": 0.48, "label_score": 0.01}, uri,
    )  # fmt: skip
    assert ('class="px"' in card) == (fmt == "png")  # hard pixel edges only where the card enlarges the image


def test_the_verdicts_have_forms_of_their_own_and_counts_are_grouped(report, tmp_path):
    """A dot, an outlined dot and a ring, in the scatter and its keys alike, which stay coloured in print: the orange
    and blue points had the same brightness in grey."""
    path, data, _ = report
    page = write_html_report(path, out=tmp_path / "r.html", data=data).read_text()
    style = page.split("<style>", 1)[1].split("</style>", 1)[0]
    assert (
        ".c1{fill:#E69F00;fill-opacity:.9;stroke:#000" in style
        and ".s1{background:#E69F00;border:1.5px solid #000}" in style
    )
    assert ".c2{fill:#fff;fill-opacity:.6;stroke:#CC79A7" in style and "print-color-adjust:exact" in style
    assert all(page.count(f'class="swatch s{i}"') >= 3 for i in range(3))  # legend, side legend, table, sections
    assert "1,234 (" in legend_html([1234, 5, 6]) and "<td>1,234</td>" in class_table_html(
        ["a"] * 1234, ["clean"] * 1234, ["a"]
    )


def test_an_image_past_pillows_limit_is_not_decoded_for_a_thumbnail(tmp_path, monkeypatch):
    """As training refuses it: a decompression bomb a crafted report names took 3.8 GB to make a thumbnail of."""
    Image.new("L", (100, 100)).save(tmp_path / "big.png")
    assert thumbnail_data_uri(tmp_path / "big.png") is not None
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100 * 100 - 1)
    with pytest.warns(Image.DecompressionBombWarning):  # Pillow's, on opening it (the CLI keeps it quiet)
        assert thumbnail_data_uri(tmp_path / "big.png") is None  # a placeholder on the page


def test_clean_images_are_shown_as_a_random_sample_to_check_what_the_audit_missed(report, tmp_path):
    path, data, rows = report
    clean = rows[rows["category"] == "clean"]
    page = _shown(write_html_report(path, out=tmp_path / "r.html", data=data, top=4))
    section = _section(page, "clean")
    assert f"a random 4 of {len(clean):,}; the report lists all" in section
    assert f'<div class="thumbs" data-verdict="clean" data-sample="{len(clean)}">' in section
    shown = [html_unescape(m) for m in re.findall(r'<span class="sid">(.*?)</span>', section)]
    assert len(shown) == 4 and set(shown) <= set(clean["sample_id"])
    assert "<i>kept</i>" in section and "→" not in section  # a clean image's suggested label is its own
    assert '<a href="#clean">clean sample</a>' in page
    # Not the likeliest clean first, nor the report's first rows: a draw that says nothing of the scores.
    assert shown != clean.sort_values("p_clean", ascending=False)["sample_id"].head(4).tolist()
    assert shown != clean["sample_id"].head(4).tolist()
    # The same images whatever order the report is in, and a larger sample keeps a smaller one's.
    shuffled = pd.read_parquet(path).sample(frac=1, random_state=3)
    again = clean_sample(shuffled, 4)["sample_id"].tolist()
    assert again == shown and clean_sample(shuffled, 8)["sample_id"].head(4).tolist() == shown
    assert clean_sample(shuffled, 100)["category"].eq("clean").all() and len(clean_sample(shuffled, 100)) == len(clean)
    # No cards asked for, or no clean image to draw from: no section, no link to one.
    none = _shown(write_html_report(path, out=tmp_path / "r0.html", data=data, top=0))
    flagged = pd.read_parquet(path).query("category != 'clean'")
    flagged.to_parquet(tmp_path / "flagged.parquet")
    no_clean = _shown(write_html_report(tmp_path / "flagged.parquet", out=tmp_path / "f.html", data=data))
    for page in (none, no_clean):
        assert '<h2 id="clean">' not in page and 'href="#clean"' not in page and "picked at random" not in page


def test_a_clean_card_of_a_rare_class_asks_nothing_of_the_reviewer(tmp_path, write_image):
    # apply keeps a clean image whatever its class's size: the rare-class note is for flagged cards.
    path, data, _ = make_report(tmp_path, write_image, n=12)
    frame = pd.read_parquet(path)
    frame.loc[frame.index[frame["category"] == "clean"][:2], "given_label"] = "owl"
    frame.to_parquet(tmp_path / "owls.parquet")
    page = write_html_report(tmp_path / "owls.parquet", out=tmp_path / "r.html", data=data, top=100).read_text()
    cards = [card.split("</figure>")[0] for card in page.split('<figure class="thumb"')[1:]]
    owls = [card for card in cards if 'data-given="&quot;owl&quot;"' in card]
    assert len(owls) == 2 and not any("data-rare" in card or "a class of 2 images" in card for card in owls)


def test_the_clean_sample_has_a_size_of_its_own(report, tmp_path):
    # A narrower estimate of what the audit missed without more cards of each flag.
    path, data, rows = report
    page = _shown(write_html_report(path, out=tmp_path / "r.html", data=data, top=2, sample=6))
    assert _section(page, "mislabeled_hq").count('<figure class="thumb"') == 2
    assert _section(page, "clean").count('<figure class="thumb"') == 6
    shown = [html_unescape(m) for m in re.findall(r'<span class="sid">(.*?)</span>', _section(page, "clean"))]
    assert shown == clean_sample(rows, 6)["sample_id"].tolist()
    none = _shown(write_html_report(path, out=tmp_path / "n.html", data=data, sample=0))
    assert '<h2 id="clean">' not in none and 'id="review"' in none  # the flags' cards are still reviewed
    with pytest.raises(QmixError, match=r"--sample must be 0 or more \(got -1\)"):
        write_html_report(path, out=tmp_path / "x.html", data=data, sample=-1)


def test_a_random_sample_of_ids_holds_about_its_share_of_any_subset():
    # What the estimate of missed labels rests on: the draw is blind to what the ids say. Here the wrong labels are a
    # block of consecutive files (one batch labelled badly), which the report's first or last rows, or any draw
    # that kept the ids' order, would miss entirely or hold only.
    ids = [f"img_{i:05d}.png" for i in range(20000)]
    frame = pd.DataFrame({"sample_id": ids, "category": "clean"})
    wrong = set(ids[8000:10000])  # a tenth of them
    picked = clean_sample(frame, 2000)["sample_id"]
    assert 0.08 < picked.isin(wrong).mean() < 0.12
    assert frame["sample_id"].head(2000).isin(wrong).mean() == 0  # what a draw in the report's order would find


def test_the_clean_sample_is_the_same_images_from_one_release_to_the_next():
    # A reviewer's verdicts stay on the cards of a page written again, by a newer qmix too: the draw is pinned.
    frame = pd.DataFrame({"sample_id": ["a", "b", "c", "d", "007", "7", 42], "category": "clean"})
    assert clean_sample(frame, 7)["sample_id"].tolist() == ["c", "a", "007", 42, "b", "d", "7"]


def test_text_is_escaped(report, tmp_path):
    path, data, _ = report
    page = write_html_report(path, out=tmp_path / "r.html", data=data, top=100).read_text()
    assert EVIL_ID not in page and "<b>bird</b>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page  # in the thumbnail caption or the point's tooltip
    assert "&lt;b&gt;bird&lt;/b&gt;" in page


def test_missing_image_gives_a_placeholder(tmp_path, write_image):
    path, data, rows = make_report(tmp_path, write_image)
    group = rows.loc[rows["sample_id"] == MISSING_ID, "category"].item()
    assert group != "clean"  # row 1 is mislabeled_hq by construction
    page = _shown(write_html_report(path, out=tmp_path / "r.html", data=data, top=100))
    section = _section(page, group)
    card = next(c for c in section.split('<figure class="thumb"') if f'<span class="sid">{MISSING_ID}</span>' in c)
    assert 'class="placeholder"' in card and "data:image" not in card


def test_unreadable_image_gives_a_placeholder(tmp_path, write_image):
    path, data, rows = make_report(tmp_path, write_image)
    for png in (data / "img").glob("*.png"):
        png.write_bytes(b"not a png")
    page = write_html_report(path, out=tmp_path / "r.html", data=data, top=100).read_text()
    assert "data:image/" not in page
    assert page.count('class="placeholder"') == len(rows)  # --top 100: every image has a card


def test_a_report_path_climbing_out_of_the_dataset_embeds_nothing_from_there(tmp_path, write_image):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path, data, rows = make_report(tmp_path, write_image)
    write_image(tmp_path / "private.png", size=20, seed=99)  # a readable image beside the dataset, not in it
    flagged = int(np.flatnonzero((rows["category"] != "clean") & (rows["sample_id"] != MISSING_ID))[0])
    table = pq.read_table(path)  # an edited (or crafted) report: the metadata kept, one path pointing out
    paths = table.column("path").to_pylist()
    paths[flagged] = "img/../../private.png"
    pq.write_table(table.set_column(table.schema.get_field_index("path"), "path", pa.array(paths)), path)
    warned: list[str] = []
    page = _shown(write_html_report(path, out=tmp_path / "r.html", data=data, top=100, warn=warned.append))
    sid = rows["sample_id"].iloc[flagged]
    card = next(c for c in page.split('<figure class="thumb"') if f'<span class="sid">{sid}</span>' in c)
    assert 'class="placeholder"' in card and "data:image" not in card
    assert warned[0].startswith("1 of the") and "not found" in warned[0]  # the image missing from the dataset
    assert warned[1].startswith("1 of the") and "climbing out of the dataset" in warned[1]
    paths[flagged] = "img/../img/002.png"  # a '..' that stays inside is an ordinary path
    pq.write_table(table.set_column(table.schema.get_field_index("path"), "path", pa.array(paths)), path)
    page = _shown(write_html_report(path, out=tmp_path / "r.html", data=data, top=100))
    card = next(c for c in page.split('<figure class="thumb"') if f'<span class="sid">{sid}</span>' in c)
    assert "data:image/" in card


def test_paths_relative_to_cwd_without_data(report, tmp_path, monkeypatch):
    path, data, _ = report
    monkeypatch.chdir(data)
    page = write_html_report(path, out=tmp_path / "r.html").read_text()
    assert "data:image/" in page
    monkeypatch.chdir(tmp_path)
    page = write_html_report(path, out=tmp_path / "r.html").read_text()
    assert "data:image/" not in page and 'class="placeholder"' in page


def test_the_recorded_root_and_run_serve_from_any_directory(tmp_path, write_image, monkeypatch):
    # What qmix audit records: the dataset as given (here a manifest, relative), its absolute root and run.
    run = make_run(tmp_path)
    data = tmp_path / "ds"
    path, _, _ = make_report(
        tmp_path, write_image, run_dir=str(run), extra={"dataset": "ds/m.csv", "dataset_root": str(data)}
    )
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    page = write_html_report(path, out=tmp_path / "r.html").read_text()
    assert "data:image/" in page and "Training curves" in page
    shutil.rmtree(run)  # a run deleted since: the page is still written, without its curves
    assert "Training curves" not in write_html_report(path, out=tmp_path / "r.html").read_text()


def test_a_run_trained_again_since_the_audit_lends_the_page_no_curves(tmp_path, write_image):
    run = make_run(tmp_path)
    (run / "run.json").write_text('{"method": "ce", "classes": ["a", "b"]}')  # what training writes as it ends
    (run / "model.pt").write_bytes(b"the nets")
    path, data, _ = make_report(tmp_path, write_image, run_dir=str(run), extra={"run_digest": run_digest(run)})
    warned: list[str] = []
    page = write_html_report(path, out=tmp_path / "r.html", data=data, warn=warned.append).read_text()
    assert "Training curves" in page and "GMM component" in page  # the same run: all of it
    assert not [w for w in warned if "the run in" in w]
    (run / "run.json").write_text('{"method": "qmix", "classes": ["x", "y", "z"]}')  # `train --force` since
    page = write_html_report(path, out=tmp_path / "r.html", data=data, warn=warned.append).read_text()
    assert "Training curves" not in page and "GMM component" not in page
    assert [w for w in warned if "the run in" in w] == [
        f"the run in {run} is not the one this report was made with (trained again since?): its training curves "
        "and mixture means are left out of the page"
    ]
    (run / "run.json").write_text('{"method": "ce", "classes": ["a", "b"]}')  # the audited run's again, but
    (run / "model.pt").unlink()  # resumed for more epochs since: unfinished, its curves no longer the audited ones
    page = write_html_report(path, out=tmp_path / "r.html", data=data).read_text()
    assert "Training curves" not in page
    (run / "run.json").unlink()  # a restart killed before it finished: no run.json yet
    page = write_html_report(path, out=tmp_path / "r.html", data=data, run=run).read_text()
    assert "Training curves" not in page  # named with --run too: the report says which run it was made with


def test_a_recorded_manifest_file_names_its_folder(tmp_path, write_image, monkeypatch):
    # Reports written before the root was recorded name only the dataset: a manifest's paths are relative to
    # the manifest's folder, not to the manifest file.
    manifest = tmp_path / "ds" / "m.csv"
    path, _, _ = make_report(tmp_path, write_image, extra={"dataset": str(manifest)})
    manifest.write_text("path,label\n")
    monkeypatch.chdir(tmp_path)
    assert "data:image/" in write_html_report(path, out=tmp_path / "r.html").read_text()


def test_run_adds_curves_and_gmm_means(report, tmp_path):
    path, data, _ = report
    run = make_run(tmp_path)
    page = write_html_report(path, out=tmp_path / "r.html", run=run, data=data).read_text()
    assert "Training curves" in page
    assert page.count('<svg class="curve"') == 2  # loss_x and auc_clean; no auc_hq or val_acc logged
    assert "supervised loss (loss_x)" in page and "(auc_clean)" in page and "(val_acc)" not in page
    assert page.count("<title>epoch ") == 6 + 4
    assert page.count("GMM component mean") == 6  # 3 components x 2 nets
    assert page.count("<circle") == 30  # the crosses are paths, not circles


def test_no_run_no_curves(report, tmp_path):
    path, data, _ = report
    page = write_html_report(path, out=tmp_path / "r.html", data=data).read_text()
    assert "Training curves" not in page and '<svg class="curve"' not in page and "GMM component" not in page


def test_an_edited_report_file_is_checked_as_apply_checks_it(report, tmp_path):
    # A misspelt verdict drew its rows as unclassed points, left out of the cards: the edits looked fine on the page.
    path, data, _ = report
    edited = read_report(path).assign(category=lambda f: f["category"].replace("mislabeled_hq", "mislabled_hq"))
    edited.to_csv(tmp_path / "edited.csv", index=False)
    with pytest.raises(QmixError, match=r"unknown categories \['mislabled_hq'\]"):
        write_html_report(tmp_path / "edited.csv", out=tmp_path / "e.html", data=data)
    assert not (tmp_path / "e.html").exists()


def test_a_run_missing_files_still_renders_and_a_folder_with_none_is_no_run(report, tmp_path):
    path, data, _ = report
    run = tmp_path / "half_run"  # a run whose metrics were lost: the page says so and draws the rest
    run.mkdir()
    (run / "config.yaml").write_text("method: qmix\n")
    page = write_html_report(path, out=tmp_path / "r.html", run=run, data=data).read_text()
    assert "No metrics.jsonl" in page and page.count("<circle") == 30
    (tmp_path / "empty").mkdir()  # the dataset's folder given as --run, say: refused, not a run "trained again"
    with pytest.raises(QmixError, match=r"is not a folder qmix train wrote: it holds none of config\.yaml"):
        write_html_report(path, out=tmp_path / "s.html", run=tmp_path / "empty", data=data)
    assert not (tmp_path / "s.html").exists()


def test_csv_report_without_metadata(tmp_path, write_image):
    path, data, rows = make_report(tmp_path, write_image, fmt="csv")
    page = write_html_report(path, out=tmp_path / "r.html", data=data).read_text()
    assert page.count("<circle") == len(rows)
    assert "method <b>" not in page
    assert "&lt;b&gt;bird&lt;/b&gt;" in page  # classes come from the given labels


@pytest.mark.parametrize("name", ["missing.parquet", "garbage.parquet"])
def test_missing_or_unreadable_report_raises(tmp_path, name):
    (tmp_path / "garbage.parquet").write_bytes(b"definitely not parquet")
    with pytest.raises(QmixError, match="report"):
        write_html_report(tmp_path / name, out=tmp_path / "r.html")
    assert not (tmp_path / "r.html").exists()


def test_out_that_is_one_of_the_reports_images_is_refused(report, tmp_path):
    path, data, rows = report
    image = data / rows["path"].iloc[2]
    before = image.read_bytes()
    with pytest.raises(QmixError, match="one of the report's images"):
        write_html_report(path, out=image, data=data)
    assert image.read_bytes() == before


def test_out_dash_is_refused_not_written_as_a_file(report, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(QmixError, match="name it"):
        write_html_report(report[0], out="-")
    assert not (tmp_path / "-").exists()


def test_missing_run_or_data_raises(report, tmp_path):
    path, _, _ = report
    with pytest.raises(QmixError, match="run directory not found"):
        write_html_report(path, out=tmp_path / "r.html", run=tmp_path / "nope")
    with pytest.raises(QmixError, match="dataset not found"):
        write_html_report(path, out=tmp_path / "r.html", data=tmp_path / "nope")


def test_empty_report(tmp_path):
    from qmix_cli.reporting.report import REPORT_SCHEMA

    write_report(REPORT_SCHEMA.empty_table(), tmp_path / "e.parquet")
    page = write_html_report(tmp_path / "e.parquet", out=tmp_path / "r.html").read_text()
    assert page.count("<circle") == 0 and "No images in this group." in page


# ------------------------------------------------------------------------------------------- pure builders


def test_subsample_indices():
    assert subsample_indices(5, 10).tolist() == [0, 1, 2, 3, 4]
    idx = subsample_indices(1000, 50)
    assert len(idx) == 50 and len(set(idx.tolist())) == 50 and (np.diff(idx) > 0).all()
    assert idx.tolist() == subsample_indices(1000, 50).tolist()


def test_scatter_svg_counts_and_clipping():
    svg = scatter_svg(np.array([0.0, 0.5, 2.0, np.nan]), np.array([1.0, 0.5, -1.0, 0.2]), np.array([2, 0, 1, -1]))
    assert svg.startswith("<svg") and svg.endswith("</svg>")
    assert svg.count("<circle") == 4 and 'class="cx"' in svg
    # Clean (code 0) is drawn before the issue groups.
    assert svg.index('class="c0"') < svg.index('class="c1"') < svg.index('class="c2"')


def _circles(svg: str) -> dict[str, tuple[float, float]]:
    """(cx, cy) of each circle, keyed by its tooltip."""
    found = re.findall(r'<circle cx="([-\d.]+)" cy="([-\d.]+)"[^>]*><title>([^<]*)</title>', svg)
    return {title: (float(cx), float(cy)) for cx, cy, title in found}


def test_scatter_svg_places_loss_rightwards_and_uncertainty_upwards_inside_the_plot():
    x = np.array([0.0, 0.25, 0.5, 1.0, 0.5, 0.5, 2.0, -1.0, 0.5, np.nan])
    y = np.array([0.5, 0.5, 0.5, 0.5, 0.0, 1.0, 0.5, 0.5, 7.0, -3.0])
    names = ["x0", "x25", "x50", "x100", "y0", "y100", "x_big", "x_neg", "y_big", "x_nan"]
    svg = scatter_svg(x, y, np.zeros(len(x), dtype=int), titles=names)
    at = _circles(svg)
    assert len(at) == len(names)
    plot = re.search(r'<rect x="(\d+)" y="(\d+)" width="(\d+)" height="(\d+)"', svg)
    rx, ry, rw, rh = (float(v) for v in plot.groups())
    # Loss grows to the right, from the plot's left edge to its right edge, in proportion.
    assert at["x0"][0] == rx and at["x100"][0] == rx + rw
    assert at["x0"][0] < at["x25"][0] < at["x50"][0] < at["x100"][0]
    assert at["x50"][0] == pytest.approx(rx + rw / 2, abs=0.05)
    # Uncertainty grows upwards: SVG's y axis points down, so cy falls as uncertainty rises.
    assert at["y0"][1] == ry + rh and at["y100"][1] == ry
    assert at["y0"][1] > at["x50"][1] > at["y100"][1]
    # Out-of-range points sit on the edges they crossed, not outside the plot; NaN is drawn at 0.
    assert at["x_big"] == at["x100"] and at["x_neg"] == at["x0"] and at["y_big"] == at["y100"]
    assert at["x_nan"] == (rx, ry + rh)  # NaN loss and an uncertainty below 0: the bottom-left corner


def test_line_chart_svg():
    svg = line_chart_svg(np.array([1, 2, 3]), np.array([0.3, 0.2, 0.1]), title="a < b", marker_x=1.5)
    assert svg.count("<polyline") == 1 and "a &lt; b" in svg and "stroke-dasharray" in svg
    points = re.search(r'<polyline points="([^"]+)"', svg)[1].split()
    xs, ys = zip(*((float(a), float(b)) for a, b in (p.split(",") for p in points)), strict=True)
    assert xs[0] < xs[1] < xs[2] and xs[1] - xs[0] == xs[2] - xs[1]  # epochs evenly spaced, left to right
    assert ys[0] < ys[1] < ys[2] and ys[1] - ys[0] == ys[2] - ys[1]  # falling values go down (SVG's y points down)
    marker = float(re.search(r'<line x1="([\d.]+)"[^>]*stroke-dasharray', svg)[1])
    assert marker == (xs[0] + xs[1]) / 2  # the end of warm-up at epoch 1.5
    empty = line_chart_svg(np.array([]), np.array([]), title="t")
    assert "no data" in empty and "<polyline" not in empty


def test_read_separation_means(tmp_path):
    path = tmp_path / "separation.json"
    path.write_text(json.dumps([{"means": [[0.1, 0.2], [0.3, 0.4]], "component_groups": [0, 2]}, {"means": [[0.5]]}]))
    assert read_separation_means(path) == [(0.1, 0.2, 0), (0.3, 0.4, 2)]
    path.write_text("{broken")
    assert read_separation_means(path) == []
    assert read_separation_means(tmp_path / "absent.json") == []


def test_a_large_jpeg_thumbnail_is_small_and_looks_like_the_photo(tmp_path):
    photo = np.zeros((1024, 768, 3), dtype=np.uint8)
    photo[:512] = (200, 30, 30)  # red top half, blue bottom half
    photo[512:] = (30, 30, 200)
    Image.fromarray(photo).save(tmp_path / "photo.jpg", quality=90)
    uri = thumbnail_data_uri(tmp_path / "photo.jpg", size=64)
    thumb = np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).convert("RGB")).astype(int)
    assert thumb.shape == (64, 48, 3)  # aspect kept, longest side the thumbnail's
    assert np.abs(thumb[5, 24] - (200, 30, 30)).max() <= 12 and np.abs(thumb[58, 24] - (30, 30, 200)).max() <= 12


def test_a_16_bit_scan_thumbnail_is_scaled_by_its_range_not_clipped_to_white(tmp_path):
    scan = np.full((40, 40), 1000, dtype=np.uint16)  # an X-ray's narrow range, far above 255
    scan[20:] = 4000
    Image.fromarray(scan).save(tmp_path / "xray.png")
    assert Image.open(tmp_path / "xray.png").mode == "I;16"
    uri = thumbnail_data_uri(tmp_path / "xray.png", size=40)
    thumb = np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))))
    assert thumb.ndim == 2 and thumb[5, 5] == 0 and thumb[30, 5] == 255


def _grouped_report(
    tmp_path, write_image, *, column: str = "patient", recorded: str | None = None, fmt: str = "parquet"
) -> tuple[Path, pd.DataFrame]:
    """A report whose audit grouped by ``patient`` (three images each; one patient's name is an HTML tag), of the
    manifest ``ds/m.csv``, recorded as ``recorded`` (default: its absolute path)."""
    manifest = tmp_path / "ds" / "m.csv"
    path, _, rows = make_report(
        tmp_path,
        write_image,
        fmt=fmt,
        extra={"dataset": recorded or str(manifest), "dataset_root": str(tmp_path / "ds"), "group_column": "patient"},
    )
    patients = ["<i>p0</i>" if i < 3 else f"p{i // 3}" for i in range(len(rows))]
    frame = pd.DataFrame({"sample_id": rows["sample_id"], "path": rows["path"], "label": rows["given_label"]})
    frame[column] = patients
    frame.to_csv(manifest, index=False)
    return path, rows.assign(patient=patients)


def test_a_grouped_audit_gets_a_section_by_group_with_each_groups_images(tmp_path, write_image):
    from qmix_cli.reporting.groups import summarise_groups

    path, rows = _grouped_report(tmp_path, write_image)
    page = _shown(write_html_report(path, out=tmp_path / "r.html", top=4))
    start = page.index('<h2 id="groups">By patient')
    end = page.find("<h2", start + 1)
    section = page[start : end if end >= 0 else None]
    table = summarise_groups(rows, groups=rows["patient"])
    assert f"top 4 of {len(table)} by issue score" in section
    entries = re.findall(r"<h3>(.*?)</h3>(.*?)(?=<h3>|$)", section, flags=re.S)
    assert len(entries) == 4
    for (title, cards), unit in zip(entries, table.head(4).to_dict("records"), strict=True):
        assert (
            f"#{unit['rank']}</span> {html_escape(unit['group'])}: given <b>{html_escape(unit['given_label'])}" in title
        )
        assert f'<span class="rank">patient #{unit["rank"]}</span>' in title  # not an image's rank, which cards show
        members = rows[(rows["patient"] == unit["group"]) & (rows["given_label"] == unit["given_label"])]
        shown = re.findall(r'<span class="sid">(.*?)</span>', cards)
        assert shown == [html_escape(s) for s in members.sort_values("rank")["sample_id"]]
    assert "<i>p0</i>" not in page  # group names are text, not markup


def test_a_grouped_audit_whose_manifest_lacks_the_column_says_so(tmp_path, write_image):
    path, _ = _grouped_report(tmp_path, write_image, column="ward")
    said: list[str] = []
    page = write_html_report(path, out=tmp_path / "r.html", warn=said.append).read_text()
    assert "By patient" not in page
    assert any("no section by patient" in line and "it has no patient column" in line for line in said), said
    assert said[-1].endswith("give the dataset's manifest as --data MANIFEST")


def test_a_csv_report_is_shown_by_group_when_the_column_is_named(tmp_path, write_image):
    path, _ = _grouped_report(tmp_path, write_image, fmt="csv")  # a CSV report records no group column
    manifest = tmp_path / "ds" / "m.csv"
    assert '<h2 id="groups">By ' not in write_html_report(path, out=tmp_path / "a.html", data=manifest).read_text()
    page = _shown(write_html_report(path, out=tmp_path / "b.html", data=manifest, group_column="patient"))
    assert '<h2 id="groups">By patient' in page
    with pytest.raises(QmixError, match=r"--group-column ward: cannot read that column .*\(it has no ward column\)"):
        write_html_report(path, out=tmp_path / "c.html", data=manifest, group_column="ward")
    with pytest.raises(QmixError, match="--group-column needs the name of a column"):
        write_html_report(path, out=tmp_path / "c.html", data=manifest, group_column=" ")
    with pytest.raises(QmixError, match=r"--group-column patient: give the dataset's manifest, .* as --data MANIFEST"):
        write_html_report(path, out=tmp_path / "c.html", group_column="patient")
    with pytest.raises(QmixError, match="--group-column label: the label is not a group"):  # as the others refuse it
        write_html_report(path, out=tmp_path / "c.html", data=manifest, group_column="label")
    assert not (tmp_path / "c.html").exists()


def test_an_ungrouped_report_has_no_section_by_group(report, tmp_path):
    said: list[str] = []
    page = write_html_report(report[0], out=tmp_path / "r.html", data=report[1], warn=said.append).read_text()
    assert '<h2 id="groups">By ' not in page and not any("section by" in line for line in said)


def test_a_grouped_audit_of_a_relative_manifest_is_found_from_another_directory(tmp_path, write_image, monkeypatch):
    # The audit records the dataset as it was given (here relative to tmp_path) and its folder absolute.
    path, _ = _grouped_report(tmp_path, write_image, recorded="ds/m.csv")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    said: list[str] = []
    page = _shown(write_html_report(path, out=tmp_path / "r.html", warn=said.append))
    assert '<h2 id="groups">By patient' in page and not any("section by" in line for line in said)


def test_user_text_is_isolated_so_a_right_to_left_override_cannot_reorder_the_page(tmp_path, write_image):
    path, data, _ = make_report(tmp_path, write_image, n=12)
    frame = pd.read_parquet(path)
    # A pop-isolate mark would close the isolation early and leave the override to run on: both shown as codes.
    frame["given_label"] = frame["given_label"].where(frame["given_label"] != "cat", "cat\u2069\u202e")
    frame.to_parquet(tmp_path / "rtl.parquet")
    page = write_html_report(tmp_path / "rtl.parquet", out=tmp_path / "r.html", data=data, top=100).read_text()
    assert "\u202e" not in page and page.count("\u2068") == page.count("\u2069")  # only our own isolates, paired
    in_text, in_tips = page.count("cat[U+2069][U+202E]</bdi>"), page.count("cat[U+2069][U+202E]\u2069")
    in_alts = page.count('cat[U+2069][U+202E]" tabindex')  # an image's alt text, which holds no markup either
    assert in_text >= 2 and in_tips >= 1 and in_alts >= 1
    assert page.count("[U+202E]") == in_text + in_tips + in_alts
    ids = re.findall(r'<span class="sid">(.*?)</span>', page)
    assert ids and all(i.startswith("<bdi>") and i.endswith("</bdi>") for i in ids)


def test_cards_carry_their_values_exactly_for_the_review_and_the_page_its_classes(tmp_path, write_image):
    # The review sheet's ids must match the report's: the cards' data attributes read back exactly, direction marks,
    # markup, carriage returns and NULs (which an HTML parser changes in an attribute) included, while the page's
    # source holds none of them (JSON escapes).
    path, data, _ = make_report(tmp_path, write_image, n=12)
    frame = pd.read_parquet(path)
    frame["given_label"] = frame["given_label"].where(frame["given_label"] != "cat", "cat\u202e</script>")
    frame["sample_id"] = frame["sample_id"] + np.where(np.arange(len(frame)) % 2, "\r\n", "\x00")
    frame.to_parquet(tmp_path / "odd.parquet")
    written = write_html_report(tmp_path / "odd.parquet", out=tmp_path / "r.html", data=data, top=100)
    page = written.read_bytes().decode("utf-8")  # as written: no line ending translated
    cards = re.findall(r'<figure class="thumb" data-id="([^"]*)" data-given="([^"]*)" data-category="([^"]*)"', page)
    read = sorted(tuple(json.loads(html_unescape(value)) for value in card) for card in cards)
    assert read == sorted(zip(frame["sample_id"], frame["given_label"], frame["category"], strict=True))
    tags = re.findall(r"<figure[^>]*>", page)
    assert tags and not any("\r" in tag or "\x00" in tag for tag in tags)
    assert "\u202e" not in page and page.count("</script>") == 2  # the data's and the script's own
    data_json = re.search(r'<script type="application/json" id="qmix-review-data">(.*?)</script>', page).group(1)
    review = json.loads(data_json)
    assert set(review["classes"]) == set(frame["given_label"]) and review["sheet"] == "odd-review.csv"
    assert "--review odd-review.csv --out fixed.parquet" in page
    # No cards, no review.
    page = write_html_report(tmp_path / "odd.parquet", out=tmp_path / "r0.html", data=data, top=0).read_text()
    assert "<script" not in page and 'id="review"' not in page


def test_a_review_sheet_given_to_the_page_is_where_its_review_starts(report, tmp_path):
    path, data, rows = report
    flagged = rows[rows["category"] == "mislabeled_lq"].iloc[0]
    sheet = pd.DataFrame({"sample_id": [flagged["sample_id"]], "category": ["clean"]})
    sheet.to_csv(tmp_path / "sheet.csv", index=False)

    def review_data(page: Path) -> dict:
        found = re.search(r'<script type="application/json" id="qmix-review-data">(.*?)</script>', page.read_text())
        return json.loads(found.group(1))

    plain = review_data(write_html_report(path, out=tmp_path / "a.html", data=data))
    started = review_data(write_html_report(path, out=tmp_path / "b.html", data=data, review=tmp_path / "sheet.csv"))
    assert plain["decisions"] == {}
    given = str(flagged["given_label"])
    assert started["decisions"] == {flagged["sample_id"]: {"value": "clean", "given": given, "flagged": "lq"}}
    assert started["key"] != plain["key"]  # a browser's review of the page without the sheet does not hide it
    # A verdict is on an image and its label: the same review whatever else the page is written with, and for a new
    # audit of the same images (other verdicts and suggestions, another file); a relabelled dataset starts afresh.
    assert review_data(write_html_report(path, out=tmp_path / "d.html", data=data, top=3))["key"] == plain["key"]
    redone = pd.read_parquet(path)
    redone.loc[redone["category"] == "mislabeled_hq", ["category", "suggested_label"]] = ["clean", None]
    redone.sample(frac=1, random_state=0).to_csv(tmp_path / "again.csv", index=False)  # in another order too
    again = review_data(write_html_report(tmp_path / "again.csv", out=tmp_path / "e.html", data=data))
    assert again["key"] == plain["key"]
    redone.loc[redone.index[0], "given_label"] = "relabelled"
    redone.to_csv(tmp_path / "relabelled.csv", index=False)
    relabelled = review_data(write_html_report(tmp_path / "relabelled.csv", out=tmp_path / "f.html", data=data))
    assert relabelled["key"] != plain["key"]
    assert started["started"] == "started from sheet.csv (1 verdict); " and plain["started"] == ""
    with pytest.raises(QmixError, match="1 review row of images the report does not have: nope"):
        write_html_report(path, out=tmp_path / "c.html", data=data, review=sheet.assign(sample_id="nope"))
    with pytest.raises(QmixError, match="--top 0 shows none"):
        write_html_report(path, out=tmp_path / "c.html", data=data, review=sheet, top=0)
    # Cards of the clean sample alone are cards to review.
    alone = write_html_report(path, out=tmp_path / "g.html", data=data, review=sheet, top=0, sample=2).read_text()
    assert 'id="review"' in alone and alone.count('<figure class="thumb"') == 2


@pytest.mark.parametrize(
    ("dataset", "root", "pasted"),
    [
        ("rare.csv", "/data/site", "/data/site/rare.csv"),  # a manifest given by a relative path
        ("sub/noisy", "/data/sub/noisy", "/data/sub/noisy"),  # a folder
        ("/abs/m.parquet", "/abs", "/abs/m.parquet"),
        ("digits", "/cache/digits", "digits"),  # a built-in name
    ],
)
def test_the_pages_apply_command_names_the_dataset_as_any_folder_reads_it(dataset, root, pasted):
    from qmix_cli.reporting.html import dataset_for_command

    assert dataset_for_command({"dataset": dataset, "dataset_root": root}) == pasted


def test_a_card_of_a_rare_class_says_so_for_the_reviewer(tmp_path, write_image):
    # Two flagged images are all their class has: apply may keep them as they are, so the card asks for a decision
    # (and the page's "agree" button passes over it).
    path, data, _ = make_report(tmp_path, write_image, n=12)
    frame = pd.read_parquet(path)
    owls = frame.index[frame["category"] != "clean"][:2]
    frame.loc[owls, "given_label"] = "owl"
    frame.to_parquet(tmp_path / "owls.parquet")
    page = write_html_report(tmp_path / "owls.parquet", out=tmp_path / "r.html", data=data, top=100).read_text()
    sizes = frame["given_label"].value_counts()
    cards = page.split('<figure class="thumb"')[1:]
    assert len(cards) == len(frame)  # --top 100: every image, the clean ones in their sample
    for card in cards:
        given = json.loads(html_unescape(re.search(r'data-given="([^"]*)"', card).group(1)))
        size = int(sizes[given])
        marked = f'data-rare="{size}"' in card.split(">", 1)[0] and f"a class of {size} images: qmix apply" in card
        clean = 'data-category="&quot;clean&quot;"' in card.split(">", 1)[0]  # apply keeps it whatever the size
        assert marked == (size < 5 and not clean), given
    assert sum('data-given="&quot;owl&quot;"' in card for card in cards) == 2
    assert (sizes[sizes.index.isin(frame.loc[frame["category"] != "clean", "given_label"])] >= 5).any()  # both kinds


def test_no_thumbnails_asked_for_is_not_said_as_an_empty_group(report, tmp_path, write_image):
    path, data, rows = report
    page = write_html_report(path, out=tmp_path / "r.html", data=data, top=0).read_text()
    assert "No images in this group" not in page and '<figure class="thumb"' not in page
    for group in ("mislabeled_hq", "mislabeled_lq"):
        n = int((rows["category"] == group).sum())
        assert f'{group} <small class="note">{n} images</small>' in page
    from qmix_cli.reporting.groups import summarise_groups

    grouped, rows = _grouped_report(tmp_path, write_image)
    units = len(summarise_groups(rows, groups=rows["patient"]))
    page = _shown(write_html_report(grouped, out=tmp_path / "g.html", top=0))
    assert f'<h2 id="groups">By patient <small class="note">{units} in all</small></h2>' in page and "<h3>" not in page


def test_many_classes_table_keeps_those_with_the_most_issues_and_counts_every_image():
    from qmix_cli.reporting.html import class_table_html

    names = [f"k{i:02d}" for i in range(40)]
    given, categories = [], []
    for i, name in enumerate(names):  # class i: two clean images, and i % 7 issues
        given += [name] * (2 + i % 7)
        categories += ["clean", "clean"] + ["mislabeled_hq"] * (i % 7)
    table = class_table_html(given, categories, names, max_rows=5)
    shown = re.findall(r"<tr><th><bdi>(k\d\d)</bdi></th>", table)
    assert shown == ["k06", "k13", "k20", "k27", "k34"]  # six issues each, the most; in class order
    assert "… and 35 more classes with as many issues or fewer" in table
    total = re.search(r'<tr class="total"><th><b>all</b></th>((?:<td>\d+</td>)+)', table).group(1)
    assert re.findall(r"\d+", total)[:2] == [str(categories.count("clean")), str(categories.count("mislabeled_hq"))]
