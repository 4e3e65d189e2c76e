"""``qmix show``: one self-contained HTML page for a report.

The page needs nothing but a browser: no external assets, no plotting library. Plots are hand-written inline SVG and
thumbnails are base64-embedded images (PNG, or JPEG where one is scaled down). It reads the same without JavaScript;
with it, each thumbnail has a menu for a reviewer's verdict and the page downloads them as a review sheet for
``qmix apply --review`` (``review.js``, `qmix_cli.reporting.review`). It holds

* a header: tool version, method, model and classes (from the report's Parquet metadata when present) and the
  number of images per category;
* the loss × uncertainty scatter coloured by category (subsampled deterministically to ``max_points``), with the
  fitted GMM component means of ``run/separation.json`` as crosses;
* a per-class table (given label × category);
* thumbnails of the likeliest ``mislabeled_hq`` and ``mislabeled_lq`` images, and of a random sample of the
  ``clean`` ones (to estimate what the audit missed), each with a menu for a reviewer's verdict;
* for an audit by group (a report recording ``group_column``), the top-ranked groups and given labels
  (`qmix_cli.reporting.groups.summarise_groups`), each with its images;
* training curves from ``run/metrics.jsonl``.

The SVG and table builders are pure functions of arrays; only :func:`write_html_report` reads files.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import html
import io
import json
import math
import os
import re
import shlex
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from qmix_cli import __version__
from qmix_cli.categories import CATEGORIES, CLEAN, small_classes
from qmix_cli.data.builtin import is_builtin
from qmix_cli.data.groups import check_group_column
from qmix_cli.data.manifest import MANIFEST_SUFFIXES, escapes_root, read_manifest
from qmix_cli.errors import QmixError, count_of
from qmix_cli.io import (
    RUN_FILES,
    atomic_write_text,
    check_out_file,
    check_replaceable,
    is_one_of,
    is_stream,
    leading_bytes,
    read_metrics,
    run_file_named,
)
from qmix_cli.reporting.groups import report_groups, summarise_groups, units_of_rows
from qmix_cli.reporting.report import REPORT_SCHEMA, check_same_images, check_verdict_rows, read_report, run_digest
from qmix_cli.reporting.review import page_verdicts, read_review

#: Okabe–Ito colours (safe for the common colour-vision deficiencies), one per category in CATEGORIES order.
PALETTE: tuple[str, str, str] = ("#0072B2", "#E69F00", "#CC79A7")

#: Metrics drawn as training curves, in this order, when the run logged them.
CURVE_METRICS: tuple[str, ...] = ("loss_x", "auc_clean", "auc_hq", "val_acc")

_CURVE_TITLES = {
    "loss_x": "supervised loss (loss_x)",
    "auc_clean": "AUC clean vs issue (auc_clean)",
    "auc_hq": "AUC high vs low quality (auc_hq)",
    "val_acc": "validation accuracy (val_acc)",
}

# Longest side of an embedded thumbnail, in pixels: twice the 128 CSS pixels a card shows it at, so that it is sharp
# on a high-density screen and can be enlarged (hover, or keyboard focus) to judge noise and blur, which a 128-pixel
# copy averages away. Small images are kept as they are and scaled up by CSS.
_THUMB_PX = 256
# The side a card shows a thumbnail at (CSS pixels; twice that when hovered or focused). Images no larger are
# embedded as PNG, pixel for pixel, and drawn with hard pixel edges; larger ones as JPEG, drawn smoothly.
_SHOWN_PX = 128
# JPEG quality of a thumbnail of an image larger than a card shows it: a photo's PNG is about 7 times larger, a
# noisy X-ray's 4 times, which a page sent by e-mail pays for.
_JPEG_QUALITY = 90


# Classes in the page's table: more would bury the thumbnails below a list only a spreadsheet reads well.
CLASS_ROWS = 30
# Characters that set the direction of the text after them (embeddings, overrides, isolates and their ends): in a
# label they could close the isolation `_t` and `_isolated` give it and reorder the page, so they are shown as codes.
_BIDI_CONTROLS = re.compile("[\u202a-\u202e\u2066-\u2069]")


def _visible(value: Any) -> str:
    """``value`` as text with its direction-setting characters shown as codes (``[U+202E]``)."""
    return _BIDI_CONTROLS.sub(lambda m: f"[U+{ord(m.group()):04X}]", str(value))


def _e(value: Any) -> str:
    """Escape any value for HTML text or attributes, direction-setting characters shown as codes."""
    return html.escape(_visible(value), quote=True)


def _isolated(value: Any) -> str:
    """A user's text for places that take no markup (tooltips): between the Unicode isolate marks that do what
    `_t`'s ``<bdi>`` does."""
    return f"\u2068{_visible(value)}\u2069"


def _t(value: Any) -> str:
    """A user's text (a label, an id, a path) as page text: escaped, and isolated so that right-to-left or override
    characters in it cannot reorder the text around it."""
    return f"<bdi>{_e(value)}</bdi>"


# --------------------------------------------------------------------------------------------------- data


def subsample_indices(n: int, max_points: int, *, seed: int = 0) -> np.ndarray:
    """Sorted indices of at most ``max_points`` of ``n`` rows, the same for the same inputs."""
    if max_points < 0:
        raise ValueError("max_points must be >= 0")
    if n <= max_points:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=max_points, replace=False))


def category_codes(categories: Sequence[str] | np.ndarray) -> np.ndarray:
    """Category names → ints in :data:`CATEGORIES` order; an unknown name becomes -1."""
    index = {name: i for i, name in enumerate(CATEGORIES)}
    return np.array([index.get(str(c), -1) for c in categories], dtype=np.int64)


def read_separation_means(path: str | Path) -> list[tuple[float, float, int]]:
    """``(loss, uncertainty, group)`` of every 2-D GMM component in a ``separation.json`` (one entry per net).

    A missing or malformed file, or a loss-only (1-D) separation, gives no means: the crosses are decoration.
    """
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    entries = data if isinstance(data, list) else [data]
    means: list[tuple[float, float, int]] = []
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        try:
            arr = np.asarray(entry.get("means", []), dtype=np.float64)
            groups = [int(g) for g in entry.get("component_groups", [])]
        except (TypeError, ValueError):
            continue
        if arr.ndim != 2 or arr.shape[1] != 2 or len(groups) != len(arr):
            continue
        for (loss, unc), group in zip(arr, groups, strict=True):
            if math.isfinite(loss) and math.isfinite(unc) and 0 <= group < len(CATEGORIES):
                means.append((float(loss), float(unc), group))
    return means


def curve_series(rows: Sequence[dict[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
    """``(epochs, values)`` of the finite numeric ``key`` entries of the metrics rows."""
    xs, ys = [], []
    for row in rows:
        value = row.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            xs.append(float(row["epoch"]))
            ys.append(float(value))
    return np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64)


def thumbnail_data_uri(path: str | Path, *, size: int = _THUMB_PX) -> str | None:
    """A ``data:`` URI thumbnail of an image file, at most ``size`` pixels on its longer side: PNG where the image
    is no larger than the card shows it (its pixels kept exactly: a 32-px scan's noise is its own, not
    compression's), JPEG where it is larger (a 224-px photo's PNG is three to five times its JPEG, and the card
    shrinks it anyway); or None when it cannot be read."""
    try:
        from PIL import Image

        from qmix_cli.data.images import native_array, open_image_file, too_large

        # Opened without waiting: a pipe a report names would block the page for a writer that never comes.
        with open_image_file(path) as file, Image.open(file) as img:
            if too_large(img.size):  # as training refuses it: a decompression bomb named by a report took 3.8 GB
                return None
            large = max(img.size) > _SHOWN_PX  # before `draft`, which decodes a JPEG photo at 256 px already
            img.draft(None, (size, size))  # a JPEG photo is decoded at its smallest DCT scale still that large
            img.load()
            # As training decodes it: a 16-bit X-ray scaled by its own range, not clipped to white by convert("L").
            thumb = Image.fromarray(native_array(img))
        thumb.thumbnail((size, size))
        buffer = io.BytesIO()
        fmt = "JPEG" if large and thumb.mode in ("RGB", "L") else "PNG"
        thumb.save(buffer, format=fmt, **({"quality": _JPEG_QUALITY} if fmt == "JPEG" else {"optimize": True}))
    except Exception:  # any unreadable, truncated or odd file becomes a placeholder
        return None
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


# --------------------------------------------------------------------------------------------------- SVG


def scatter_svg(
    x: np.ndarray,
    y: np.ndarray,
    codes: np.ndarray,
    *,
    titles: Sequence[str] | None = None,
    means: Sequence[tuple[float, float, int]] = (),
    width: int = 620,
    height: int = 520,
) -> str:
    """An SVG scatter of points in [0, 1]² coloured by category code, with optional crosses at GMM means.

    Parameters
    ----------
    x, y
        ``(N,)`` coordinates (loss, uncertainty), clipped to [0, 1]; non-finite ones are drawn at 0.
    codes
        ``(N,)`` category indices into :data:`PALETTE` (-1 is grey).
    titles
        ``N`` tooltips (escaped here), or None.
    means
        ``(loss, uncertainty, group)`` of the GMM components.

    Returns
    -------
    str
        One ``<svg>`` element with exactly ``N`` ``<circle>``; clean points are drawn first so issues stay on top.
    """
    x = np.clip(np.nan_to_num(np.asarray(x, dtype=np.float64), nan=0.0), 0.0, 1.0)
    y = np.clip(np.nan_to_num(np.asarray(y, dtype=np.float64), nan=0.0), 0.0, 1.0)
    codes = np.asarray(codes, dtype=np.int64)
    left, right, top, bottom = 56, 16, 16, 48
    pw, ph = width - left - right, height - top - bottom

    def px(v: float) -> float:
        return left + v * pw

    def py(v: float) -> float:
        return top + (1.0 - v) * ph

    parts = [
        f'<svg class="scatter" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="loss versus uncertainty scatter">',
        f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="#fff" stroke="#999"/>',
    ]
    for tick in (0.0, 0.25, 0.5, 0.75, 1.0):
        tx, ty = px(tick), py(tick)
        parts.append(f'<line x1="{tx:.1f}" y1="{top}" x2="{tx:.1f}" y2="{top + ph}" class="grid"/>')
        parts.append(f'<line x1="{left}" y1="{ty:.1f}" x2="{left + pw}" y2="{ty:.1f}" class="grid"/>')
        parts.append(f'<text x="{tx:.1f}" y="{top + ph + 16}" text-anchor="middle" class="tick">{tick:g}</text>')
        parts.append(f'<text x="{left - 6}" y="{ty + 4:.1f}" text-anchor="end" class="tick">{tick:g}</text>')
    parts.append(
        f'<text x="{left + pw / 2:.1f}" y="{height - 10}" text-anchor="middle" class="axis">loss (normalised)</text>'
    )
    parts.append(
        f'<text x="14" y="{top + ph / 2:.1f}" text-anchor="middle" class="axis" '
        f'transform="rotate(-90 14 {top + ph / 2:.1f})">uncertainty (normalised)</text>'
    )
    # Clean first, then the two issue groups, so that the rarer issue points are never hidden.
    order = np.argsort(np.where(codes < 0, -1, codes), kind="stable")
    parts.append("<g>")
    for i in order:
        code = int(codes[i])
        cls = f"c{code}" if 0 <= code < len(PALETTE) else "cx"
        # Escaped only: the titles' user text comes made visible and isolated (`_isolated`), marks to be kept.
        tip = f"<title>{html.escape(titles[i], quote=True)}</title>" if titles is not None else ""
        parts.append(f'<circle cx="{px(x[i]):.1f}" cy="{py(y[i]):.1f}" r="2.6" class="{cls}">{tip}</circle>')
    parts.append("</g>")
    for loss, unc, group in means:
        cx, cy = px(min(max(loss, 0.0), 1.0)), py(min(max(unc, 0.0), 1.0))
        arm = 7
        a, b, c, d = cx - arm, cy - arm, cx + arm, cy + arm
        cross = f"M{a:.1f},{b:.1f}L{c:.1f},{d:.1f}M{a:.1f},{d:.1f}L{c:.1f},{b:.1f}"
        parts.append(
            f'<path d="{cross}" stroke="#000" stroke-width="4.5" stroke-linecap="round"/>'
            f'<path d="{cross}" stroke="{PALETTE[group]}" stroke-width="2.5" stroke-linecap="round">'
            f"<title>GMM component mean ({_e(CATEGORIES[group])}): loss {loss:.3f}, uncertainty {unc:.3f}</title>"
            "</path>"
        )
    parts.append("</svg>")
    return "".join(parts)


def line_chart_svg(
    x: np.ndarray,
    y: np.ndarray,
    *,
    title: str,
    marker_x: float | None = None,
    x_range: tuple[float, float] | None = None,
    width: int = 300,
    height: int = 190,
    color: str = PALETTE[0],
) -> str:
    """A small SVG line chart of ``y`` against ``x`` (epochs), titled; ``marker_x`` draws a dashed vertical line.

    ``x_range`` fixes the horizontal axis (so that several charts line up); default: the range of ``x``.

    An empty series gives the frame with a "no data" note.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    left, right, top, bottom = 48, 12, 26, 34
    pw, ph = width - left - right, height - top - bottom
    parts = [
        f'<svg class="curve" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{_e(title)}">',
        f'<text x="{left}" y="16" class="ctitle">{_e(title)}</text>',
        f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="#fff" stroke="#999"/>',
    ]
    if len(x) == 0:
        parts.append(
            f'<text x="{left + pw / 2}" y="{top + ph / 2}" text-anchor="middle" class="tick">no data</text></svg>'
        )
        return "".join(parts)
    x0, x1 = (float(x.min()), float(x.max())) if x_range is None else (float(x_range[0]), float(x_range[1]))
    y0, y1 = float(y.min()), float(y.max())
    if x1 == x0:
        x0, x1 = x0 - 0.5, x1 + 0.5
    pad = (y1 - y0) * 0.08 if y1 > y0 else max(abs(y0) * 0.05, 0.05)
    y0, y1 = y0 - pad, y1 + pad

    def px(v: float) -> float:
        return left + (v - x0) / (x1 - x0) * pw

    def py(v: float) -> float:
        return top + (1.0 - (v - y0) / (y1 - y0)) * ph

    for frac in (0.0, 0.5, 1.0):
        value = y0 + frac * (y1 - y0)
        ty = py(value)
        parts.append(f'<line x1="{left}" y1="{ty:.1f}" x2="{left + pw}" y2="{ty:.1f}" class="grid"/>')
        parts.append(f'<text x="{left - 5}" y="{ty + 4:.1f}" text-anchor="end" class="tick">{value:.3g}</text>')
    first, last = x0, x1
    for value in sorted({first, last, round((first + last) / 2)}):
        if first <= value <= last and value == int(value):
            parts.append(
                f'<text x="{px(value):.1f}" y="{top + ph + 14}" text-anchor="middle" class="tick">{value:g}</text>'
            )
    parts.append(f'<text x="{left + pw / 2:.1f}" y="{height - 4}" text-anchor="middle" class="tick">epoch</text>')
    if marker_x is not None and x0 <= marker_x <= x1:
        mx = px(marker_x)
        parts.append(
            f'<line x1="{mx:.1f}" y1="{top}" x2="{mx:.1f}" y2="{top + ph}" stroke="#888" stroke-dasharray="4 3">'
            "<title>end of warm-up</title></line>"
        )
    points = " ".join(f"{px(a):.1f},{py(b):.1f}" for a, b in zip(x, y, strict=True))
    parts.append(f'<polyline points="{points}" fill="none" stroke="{color}" stroke-width="2"/>')
    for a, b in zip(x, y, strict=True):
        parts.append(
            f'<rect x="{px(a) - 2:.1f}" y="{py(b) - 2:.1f}" width="4" height="4" fill="{color}">'
            f"<title>epoch {a:g}: {b:.4g}</title></rect>"
        )
    parts.append("</svg>")
    return "".join(parts)


# --------------------------------------------------------------------------------------------------- HTML parts


def _swatch(code: int) -> str:
    """The key of category ``code``: its colour, and the form its points take in the scatter (a dot, an outlined
    dot, a ring), which tells the three apart in print, in grey and to a colour-blind reader too."""
    return f'<span class="swatch s{code}" aria-hidden="true"></span>'


def legend_html(counts: Sequence[int], *, vertical: bool = False) -> str:
    """Colour keys with the number of images per category (in a row, or a column)."""
    total = max(sum(counts), 1)
    items = [
        f'<span class="key">{_swatch(i)}<b>{_e(CATEGORIES[i])}</b> {counts[i]:,} '
        f"({100 * counts[i] / total:.1f}%)</span>"
        for i in range(len(CATEGORIES))
    ]
    cls = "legend vertical" if vertical else "legend"
    return f'<div class="{cls}">' + "".join(items) + "</div>"


def class_table_html(
    given: Sequence[str], categories: Sequence[str], class_names: Sequence[str], *, max_rows: int = CLASS_ROWS
) -> str:
    """A table of images per given label (rows, in ``class_names`` order, then any others) and category. Above
    ``max_rows`` classes, the ``max_rows`` with the most issues (images not judged clean) and a row saying how many
    more there are, so that the table stays a summary; the total row counts every image."""
    frame = pd.DataFrame({"given": [str(g) for g in given], "category": [str(c) for c in categories]})
    counts = pd.crosstab(frame["given"], frame["category"]) if len(frame) else pd.DataFrame()
    labels = [str(c) for c in class_names]
    labels += sorted(set(frame["given"]) - set(labels))
    hidden = 0
    if len(labels) > max_rows:
        issues = (frame["category"] != CATEGORIES[0]).groupby(frame["given"]).sum()
        shown = sorted(labels, key=lambda label: -int(issues.get(label, 0)))[:max_rows]  # stable: class order
        hidden, labels = len(labels) - max_rows, [label for label in labels if label in set(shown)]
    head = "".join(f"<th>{_swatch(i)}{_e(c)}</th>" for i, c in enumerate(CATEGORIES))
    rows = []
    for label in labels:
        row = np.array(
            [int(counts.at[label, c]) if label in counts.index and c in counts.columns else 0 for c in CATEGORIES]
        )
        rows.append(_class_row(_t(label), row))
    if hidden:
        more = f"… and {hidden:,} more classes with as many issues or fewer"
        rows.append(f'<tr><th colspan="{len(CATEGORIES) + 3}" class="note">{more}</th></tr>')
    totals = np.array([int((frame["category"] == c).sum()) for c in CATEGORIES])  # every image, shown or not
    rows.append(_class_row("<b>all</b>", totals, cls="total"))
    return (
        '<table class="counts"><thead><tr><th>given label</th>'
        + head
        + "<th>total</th><th>issues</th></tr></thead><tbody>"
        + "".join(rows)
        + "</tbody></table>"
    )


def _class_row(label_html: str, row: np.ndarray, *, cls: str = "") -> str:
    total = int(row.sum())
    share = f"{100 * (total - int(row[0])) / total:.1f}%" if total else "–"
    cells = "".join(f"<td>{int(v):,}</td>" for v in row)
    attr = f' class="{cls}"' if cls else ""
    return f"<tr{attr}><th>{label_html}</th>{cells}<td>{total:,}</td><td>{share}</td></tr>"


def thumbnail_card_html(row: dict[str, Any], uri: str | None, *, rare: int = 0) -> str:
    """One thumbnail (or a placeholder) with rank, sample_id, the file, its category's key, given → suggested label,
    why it is flagged (loss and uncertainty, the separation's two axes), and the nets' probability of the given and
    of the predicted label (the posteriors in its tooltip). ``rare``: the size of its given label's class in the
    report, when that is fewer than `SMALL_CLASS` images (its verdict says little: `qmix apply` may keep it)."""
    if row.get("category") == CATEGORIES[CLEAN]:
        rare = 0  # apply keeps a clean image whatever its class's size: nothing for the reviewer to weigh there
    if uri is None:
        picture = '<div class="placeholder" title="image not found or unreadable" tabindex="0">no image</div>'
    else:  # focusable, so that the keyboard enlarges it as hovering does; the caption names it
        alt = f"{row['category']} image, given label {_visible(row['given_label'])}"
        crisp = ' class="px"' if uri.startswith("data:image/png") else ""  # no larger than shown (`_SHOWN_PX`)
        picture = f'<img src="{uri}" alt="{_e(alt)}" tabindex="0"{crisp}>'
    # Its verdict, which the section by group mixes: the key of its category, named for a screen reader.
    code = CATEGORIES.index(row["category"]) if row.get("category") in CATEGORIES else None
    mark = "" if code is None else f'{_swatch(code)}<span class="sr">{_e(row["category"])}: </span>'
    suggested = row.get("suggested_label")
    if row.get("category") == CATEGORIES[CLEAN]:
        label = f"{_t(row['given_label'])} <i>kept</i>"  # its suggested label is its own
    elif suggested is None or (isinstance(suggested, float) and math.isnan(suggested)):
        label = f"{_t(row['given_label'])} → <i>fix or drop</i>"  # what the nets predict: the line below
    else:
        label = f"{_t(row['given_label'])} → <b>{_t(suggested)}</b>"
    # The nets' own belief, which tells a sure relabel from a doubtful one: the posteriors of a flagged image are
    # mostly 0 / 1 / 0 at two decimals, and stay in the tooltip.
    posteriors = (
        f"p_clean / p_mislabeled_hq / p_mislabeled_lq: {float(row['p_clean']):.3g} / "
        f"{float(row['p_mislabeled_hq']):.3g} / {float(row['p_mislabeled_lq']):.3g}"
    )
    probs = (
        f'<span title="{_e(posteriors)}">p given {float(row.get("label_score", math.nan)):.2f} · predicted '
        f"{_t(row['predicted_label'])} {float(row.get('confidence', math.nan)):.2f}</span>"
    )
    # Why: a wrong label on a clear image is a high loss with low uncertainty, a poor image a high uncertainty.
    axes = (
        '<span title="normalised loss and uncertainty, the two axes of the scatter above">'
        f"loss {float(row['loss']):.2f} · uncertainty {float(row['uncertainty']):.2f}</span>"
    )
    # An id that is the file's path (a folder's, a manifest's without ids, a qmix corrupt output's) is shown once.
    same = str(row["sample_id"]) == str(row["path"])
    sid_title = ' title="the image file"' if same else ""
    path = "" if same else f'<span class="path" title="the image file">{_t(row["path"])}</span><br>'
    few = (
        f'<br><span class="rare">a class of {rare} image{"s" * (rare != 1)}: qmix apply may keep it as it is; '
        "decide it yourself</span>"
        if rare
        else ""
    )
    attributes = _review_attributes(row) + (f' data-rare="{rare}"' if rare else "")
    return (
        f'<figure class="thumb"{attributes}>{picture}<figcaption>'
        f'<span class="rank" title="its rank in the report">rank {int(row["rank"])}</span> '
        f'<span class="sid"{sid_title}>{_t(row["sample_id"])}</span><br>{path}'
        f'{mark}{label}<br><span class="probs">{axes}<br>{probs}</span>{few}</figcaption></figure>'
    )


def _review_attributes(row: dict[str, Any]) -> str:
    """What the page's review script (``review.js``) needs of a card, as ``data-`` attributes: the values exactly,
    each a JSON string in ASCII (they go back into the review sheet and must match the report: an HTML parser turns
    a carriage return in an attribute into a line feed and a NUL into U+FFFD, and JSON's escapes it leaves alone)."""
    values = {
        "id": row["sample_id"],
        "given": row["given_label"],
        "category": row["category"],
        "suggested": row.get("suggested_label"),
        "predicted": row.get("predicted_label"),
    }
    return "".join(
        f' data-{name}="{html.escape(json.dumps(str(value)), quote=True)}"'
        for name, value in values.items()
        if value is not None and not (isinstance(value, float) and math.isnan(value))
    )


# --------------------------------------------------------------------------------------------------- page

# A picture enlarged on hover or focus grows up and to the right (transform-origin), over the cards before it and not
# over its own caption: a reviewer deciding by key reads the labels under the enlarged picture. A picture the keys
# focus is scrolled to below the sticky review bar with room to grow (scroll-margin-top: the bar and 128 px).
_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#222;background:#f6f6f4}
main{max-width:1180px;margin:0 auto;padding:20px 28px 48px}
h1{font-size:24px;margin:0 0 4px}h2{font-size:18px;margin:30px 0 10px;border-bottom:1px solid #ddd;padding-bottom:4px;
scroll-margin-top:110px}
h3{font-size:15px;margin:18px 0 8px;font-weight:normal}
.meta{color:#555;margin:0 0 10px}.meta b{color:#222}.note{color:#666;font-size:13px}
.legend{display:flex;flex-wrap:wrap;gap:18px;margin:10px 0}.key{white-space:nowrap}
.legend.vertical{flex-direction:column;gap:6px}.side{max-width:380px;padding-top:8px}
.swatch{display:inline-block;width:11px;height:11px;border-radius:50%;margin-right:5px;vertical-align:-1px;
box-sizing:border-box}
.row{display:flex;flex-wrap:wrap;gap:28px;align-items:flex-start}
svg{background:#fff;border:1px solid #e2e2e2;border-radius:4px}
.grid{stroke:#eee}.tick{font-size:11px;fill:#555}.axis{font-size:12px;fill:#333}.ctitle{font-size:12px;fill:#222}
.cx{fill:#999;fill-opacity:.6}
table.counts{border-collapse:collapse;background:#fff;font-variant-numeric:tabular-nums}
.counts th,.counts td{border:1px solid #e2e2e2;padding:3px 12px;text-align:right}
.counts thead th{background:#f0f0ee}.counts tbody th{text-align:left;font-weight:normal}
.counts tr.total{background:#f0f0ee}
.thumbs{display:flex;flex-wrap:wrap;gap:12px}
.thumb{margin:0;width:158px;background:#fff;border:1px solid #e2e2e2;border-radius:4px;padding:8px;font-size:12px}
.thumb img,.placeholder{display:block;width:128px;height:128px;margin:0 auto 6px;object-fit:contain;
background:#000}.thumb img.px{image-rendering:pixelated}
.placeholder{background:repeating-linear-gradient(45deg,#eee,#eee 8px,#ddd 8px,#ddd 16px);color:#444;
display:flex;align-items:center;justify-content:center}
.thumb img{position:relative;transition:transform .1s;transform-origin:left bottom}
.thumb img,.thumb .placeholder{scroll-margin-top:240px}
.thumb img:hover,.thumb img:focus{transform:scale(2);z-index:2;outline:2px solid #222}
.sid,.path{font-family:ui-monospace,Menlo,Consolas,monospace;word-break:break-all}.path{color:#555;font-size:11px}
.rank{color:#595959}.sr{position:absolute;width:1px;height:1px;overflow:hidden;clip:rect(0 0 0 0)}
bdi{overflow-wrap:anywhere}
.probs{color:#555;font-size:11px;white-space:nowrap}.rare{color:#8a4b00;font-size:11px}
footer{margin-top:36px;color:#5f5f5f;font-size:12px}
.review{position:sticky;top:0;z-index:5;background:#fffbe6;border:1px solid #e5d9a8;border-radius:4px;
padding:6px 10px;margin:12px 0}.review label{margin-left:10px;white-space:nowrap}
.thumb select.decide{display:block;width:100%;margin-top:6px;font-size:12px}
.thumb.decided{border-color:#009E73;box-shadow:0 0 0 1px #009E73}
.thumb.overruled{border-color:#D55E00;box-shadow:0 0 0 1px #D55E00}
@media print{*{-webkit-print-color-adjust:exact;print-color-adjust:exact}body{background:#fff}
.thumb,tr,h2,h3{break-inside:avoid}.review,select.decide,button{display:none}}
"""


# Each category's points (`scatter_svg`) and key (`_swatch`), in its colour and a form of its own: a dot, a dot
# outlined in black, a ring. Colour alone would not tell them apart printed in grey or to a colour-blind reader.
_MARK_CSS = (
    f".c0{{fill:{PALETTE[0]};fill-opacity:.45}}.s0{{background:{PALETTE[0]}}}"
    f".c1{{fill:{PALETTE[1]};fill-opacity:.9;stroke:#000;stroke-width:.8}}"
    f".s1{{background:{PALETTE[1]};border:1.5px solid #000}}"
    f".c2{{fill:#fff;fill-opacity:.6;stroke:{PALETTE[2]};stroke-width:1.6}}"
    f".s2{{background:#fff;border:3px solid {PALETTE[2]}}}"
)


def write_html_report(
    report: str | Path | pd.DataFrame,
    *,
    out: str | Path,
    run: str | Path | None = None,
    data: str | Path | None = None,
    top: int = 12,
    max_points: int = 5000,
    warn: Callable[[str], None] | None = None,
    force: bool = False,
    group_column: str | None = None,
    review: str | Path | pd.DataFrame | None = None,
    sample: int | None = None,
) -> Path:
    """Write one self-contained HTML page for a report (atomically) and return its path.

    Parameters
    ----------
    report
        A report written by ``qmix audit`` (Parquet, CSV or JSON Lines), or the DataFrame the Python API's
        ``audit`` returned (its metadata in ``attrs["qmix"]``).
    out
        The HTML file to write.
    run
        The run directory, for the GMM means (``separation.json``) and training curves (``metrics.jsonl``).
        Default: the run recorded in a Parquet report's metadata, when it still exists.
    data
        Dataset root (directory, or a manifest file whose folder is the root) the report's ``path`` values are
        relative to. Default: the root recorded in a Parquet report's metadata when it still exists, else paths
        are taken as they are (absolute, or relative to the current directory).
    top
        Thumbnails shown for each of ``mislabeled_hq`` and ``mislabeled_lq``, likeliest first, and of a random sample
        of the images called ``clean`` (`clean_sample`): cards a reviewer gives verdicts on (0: none, and no review).
    max_points
        Most points in the scatter; larger reports are subsampled deterministically.
    warn
        Called with one line when some of the thumbnails' images cannot be found (the page shows placeholders).
    force
        Replace an existing ``out`` that is not a page ``qmix show`` wrote (an earlier page is replaced without).
    group_column
        The dataset manifest's column saying which images belong together, for the section by group (default: the
        column a Parquet report's audit grouped by; CSV and JSON Lines reports record none).
    review
        A review sheet (`qmix_cli.reporting.review`) whose verdicts the page's review starts with: a colleague's, or
        one's own from another browser. The cards still show the audit's verdicts.
    sample
        How many of the images called clean the random sample shows (default: ``top``): a larger sample narrows the
        review's estimate of what the audit missed without more cards of each flag.

    Raises
    ------
    QmixError
        The report is missing or unreadable, or ``run``/``data`` does not exist; ``review`` does not fit the report
        (`qmix_cli.reporting.review.overrule`), or is given with no cards to start it on (``top`` and ``sample`` 0).
    """
    if top < 0:
        raise QmixError(f"--top must be 0 or more (got {top})")
    if sample is not None and sample < 0:
        raise QmixError(f"--sample must be 0 or more (got {sample})")
    if max_points < 0:
        raise QmixError("max_points must be >= 0")
    if is_stream(out):
        raise QmixError("--out -: the page is a file with embedded images; name it (e.g. --out report.html)")
    is_table = isinstance(report, pd.DataFrame)  # what `audit` returned, its metadata in attrs["qmix"]
    if not is_table and Path(out).resolve() == Path(report).resolve():
        raise QmixError(f"--out {out} is the report being read; write the page to another file")
    given, out = out, check_out_file(out)  # errors name the --out given; the bytes go where a symlink points
    frame = report if is_table else read_report(report)
    if is_table and (missing := [name for name in REPORT_SCHEMA.names if name not in frame.columns]):
        raise QmixError(f"the DataFrame is not a qmix report: missing column(s) {', '.join(missing)}")
    # Its ids and verdicts, as apply and evaluate check them: an edited copy with a misspelt category drew its rows
    # as unclassed points, left out of the cards, and a user checking the edits on the page read that all was well.
    frame = check_verdict_rows(frame, what="report")
    meta: dict[str, str] = dict(frame.attrs.get("qmix", {}))
    run_dir = _existing_dir(run, "run directory") if run is not None else _recorded_dir(meta, "run_dir")
    if run is not None and not any((run_dir / name).exists() for name in RUN_FILES):
        # The dataset's folder given by mistake was taken for a run "trained again since" the report.
        raise QmixError(f"--run {run} is not a folder qmix train wrote: it holds none of {', '.join(RUN_FILES)}")
    if run_dir is not None and (own := run_file_named(out, run_dir)):
        raise QmixError(f"--out {out} is one of the run's own files ({own}); write the page to another file")
    if run_dir is not None and meta.get("run_digest") not in (None, run_digest(run_dir)):
        if warn is not None:
            warn(
                f"the run in {run_dir} is not the one this report was made with (trained again since?): its "
                "training curves and mixture means are left out of the page"
            )
        run_dir = None
    root = _data_root(data, meta, frame)
    if is_one_of(out, frame["path"].astype(str), root=root):
        raise QmixError(f"--out {out} is one of the report's images; write the page to another file")
    if any(Path(name).suffix.lower() not in PAGE_SUFFIXES for name in (given, out)):  # a link's target too
        raise QmixError(f"--out {given}: the page is HTML; name it .html (e.g. --out report.html)")
    check_replaceable(given, ours=written_by_show, force=force, option="--out", what="a page qmix show wrote")
    cards = card_rows(frame, top, sample=sample)  # drawn once: the warnings below and the page are of the same cards
    missing, outside, shown = missing_thumbnails(cards, root=root)
    if missing and warn is not None:
        where = f"under {root}" if root is not None else "from the current directory"
        warn(
            f"{missing} of the {shown} images shown as thumbnails are not found {where}: give the dataset "
            "the report's paths are relative to as --data DATASET"
        )
    if outside and warn is not None:
        warn(
            f"{outside} of the {shown} images shown as thumbnails have paths climbing out of the dataset with '..' "
            "(a manifest cannot hold them: the report was edited); they are shown as placeholders"
        )
    groups = _report_groups(frame, meta, data, warn, column=group_column)
    verdicts: dict[str, dict[str, str]] = {}
    started = ""
    if review is not None:
        if not _has_cards(cards):
            raise QmixError(
                "--review starts the review on the page's cards, and --top 0 shows none (nor --sample 0); give --top N"
            )
        verdicts = page_verdicts(frame, review if isinstance(review, pd.DataFrame) else read_review(review))
        started = "a DataFrame" if isinstance(review, pd.DataFrame) else Path(review).name
    page = render_page(
        frame,
        meta=meta,
        run_dir=run_dir,
        root=root,
        top=top,
        cards=cards,
        max_points=max_points,
        source="" if is_table else report,
        groups=groups,
        verdicts=verdicts,
        started=started,
    )
    try:
        atomic_write_text(out, page)
    except OSError as exc:
        raise QmixError(f"cannot write {out}: {exc}") from exc
    return out


# What `write_html_report` writes to: a page, never a file named as data (a manifest, a report, a run's metrics).
PAGE_SUFFIXES = (".html", ".htm")
# How every page `render_page` writes begins its title: what tells a rerun that a file is its own earlier page.
_TITLE = "qmix report"


def written_by_show(path: str | Path) -> bool:
    """Whether the file at ``path`` is a page ``qmix show`` wrote (its title, in the first kilobytes)."""
    return f"<title>{_TITLE}".encode() in leading_bytes(path, 4096)


def _report_groups(
    frame: pd.DataFrame,
    meta: dict[str, str],
    data: str | Path | None,
    warn: Callable[[str], None] | None,
    *,
    column: str | None,
) -> tuple[str, pd.Series] | None:
    """The column to show the report by group (``column`` if named, else the one its audit grouped its images by,
    ``group_column`` in its metadata) and each row's value of it, read from the dataset's manifest (``data``, else
    the recorded dataset); None when there is none to read, said through ``warn`` when the report names a column.
    A ``column`` named by the user that cannot be read is an error."""
    named = column is not None
    if named and not column.strip():
        raise QmixError("--group-column needs the name of a column of the dataset's manifest")
    column = column if named else meta.get("group_column")
    if not column:
        return None
    source = data if data is not None else _recorded_dataset(meta)
    if named and not source:
        raise QmixError(
            f"--group-column {column}: give the dataset's manifest, which has that column, as --data MANIFEST"
        )
    try:
        manifest, _ = read_manifest(source)
    except QmixError as exc:
        reason = str(exc)
    else:
        if column in manifest.columns:
            if named:  # refused as every other command refuses it (the label; a column with no value)
                check_group_column(manifest, column)
            return column, report_groups(frame, manifest, column)
        reason = f"it has no {column} column"
    if named:
        raise QmixError(f"--group-column {column}: cannot read that column of the dataset {source} ({reason})")
    if warn is not None:
        warn(
            f"the page has no section by {column}: cannot read that column of the dataset {source} ({reason}); "
            "give the dataset's manifest as --data MANIFEST"
        )
    return None


def _recorded_dataset(meta: dict[str, str]) -> str:
    """The dataset a report's audit read, as recorded, found again from another working directory: the audit
    records it as it was given (perhaps relative) and its root absolute, the folder a manifest lies in."""
    recorded, root = meta.get("dataset", ""), meta.get("dataset_root")
    if not recorded or Path(recorded).exists() or not root:
        return recorded
    if Path(recorded).suffix.lower() in MANIFEST_SUFFIXES:
        return str(Path(root) / Path(recorded).name)
    return root


def _existing_dir(path: str | Path, what: str) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise QmixError(f"{what} not found: {path}")
    return path


def _data_root(data: str | Path | None, meta: dict[str, str], frame: pd.DataFrame) -> Path | None:
    if data is not None:
        path = Path(data)
        if not path.exists():
            raise QmixError(f"dataset not found: {data}")
        root = path if path.is_dir() else path.parent
        # Thumbnails of other images under the same names would mislead: the report's paths, re-rooted at --data.
        check_same_images(meta, report=frame, root=root, dataset=frame, data=data)
        return root
    # The absolute root; reports written before it was recorded name the dataset as the audit was given it.
    if (root := _recorded_dir(meta, "dataset_root")) is not None:
        return root
    recorded = Path(meta.get("dataset") or "")
    if recorded.is_file():  # a manifest: the paths in it are relative to its folder
        return recorded.parent
    return _recorded_dir(meta, "dataset")


def _recorded_dir(meta: dict[str, str], key: str) -> Path | None:
    """The directory the report's metadata records under ``key``, if it names one that exists (from here)."""
    recorded = meta.get(key)
    return Path(recorded) if recorded and Path(recorded).is_dir() else None


def _class_names(frame: pd.DataFrame, meta: dict[str, str]) -> list[str]:
    try:
        names = json.loads(meta.get("class_names", "null"))
    except ValueError:
        names = None
    if isinstance(names, list):
        return [str(n) for n in names]
    return sorted({str(v) for v in frame["given_label"]})


def render_page(
    frame: pd.DataFrame,
    *,
    meta: dict[str, str],
    run_dir: Path | None,
    root: Path | None,
    top: int,
    max_points: int,
    source: str | Path = "",
    groups: tuple[str, pd.Series] | None = None,
    verdicts: dict[str, dict[str, str]] | None = None,
    started: str = "",
    cards: dict[str, pd.DataFrame] | None = None,
) -> str:
    """The whole HTML document for a report frame (see :func:`write_html_report`); ``groups``, the column and each
    row's value of it, adds the section by group; ``verdicts``, a review sheet's to start the page's review with
    (`qmix_cli.reporting.review.page_verdicts`), ``started`` naming that sheet; ``cards``, the rows of each section
    of cards (`card_rows`, drawn here when not given)."""
    class_names = _class_names(frame, meta)
    cats = frame["category"].astype(str).to_numpy()
    codes = category_codes(cats)
    counts = [int((codes == i).sum()) for i in range(len(CATEGORIES))]
    cards = card_rows(frame, top) if cards is None else cards
    sections = [
        _header_html(frame, meta, class_names, counts, source, root=root, nav=_nav(groups, run_dir, list(cards))),
        _scatter_section(frame, codes, counts, run_dir, max_points),
        '<h2 id="classes">Per class</h2>'
        '<p class="note">Images per given label and category; "issues" is the share not judged clean.</p>'
        + class_table_html(frame["given_label"].astype(str).tolist(), cats.tolist(), class_names),
    ]
    rare = small_classes(frame["given_label"].astype(str).to_numpy())  # once: a count over every row
    for group, rows in cards.items():
        sections.append(_thumbs_section(frame, group, rows, root=root, rare=rare))
    if groups is not None:
        sections.append(groups_section_html(frame, groups[1], column=groups[0], root=root, top=top, rare=rare))
    if _has_cards(cards):  # cards to give verdicts on: the review bar under the header, its script at the end
        sheet = review_sheet_name(source)
        sections.insert(1, review_bar_html(meta, source=source, sheet=sheet))
        # Any label a card can be relabelled to: the run's classes and the dataset's labels, as apply takes them.
        labels = [*class_names, *sorted(set(frame["given_label"].astype(str)) - set(class_names))]
        sections.append(review_script_html(frame, labels, sheet=sheet, verdicts=verdicts or {}, started=started))
    if run_dir is not None:
        sections.append(_curves_section(run_dir))
    title = f"{_TITLE} — {Path(str(source)).name}" if source else _TITLE
    generated = dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{_CSS}{_MARK_CSS}</style></head><body><main>"
        + "\n".join(sections)
        + f"<footer>Generated by qmix {_e(__version__)} at {_e(generated)}; self-contained, no external assets."
        + "</footer>"
        + "</main></body></html>\n"
    )


def card_rows(frame: pd.DataFrame, top: int, *, sample: int | None = None) -> dict[str, pd.DataFrame]:
    """The rows of each section of cards, by verdict, in the page's order: the ``top`` likeliest of each flag
    (`_top_rows`; a flag's section is there, empty, at ``top`` 0 too, to count its images), then a random sample of
    ``sample`` clean images (`clean_sample`; ``top`` when None) where it asks for any and there are some."""
    cards = {group: _top_rows(frame, group, top) for group in THUMB_GROUPS if group != CATEGORIES[CLEAN]}
    drawn = clean_sample(frame, top if sample is None else sample)
    if len(drawn):
        cards[CATEGORIES[CLEAN]] = drawn
    return cards


def _has_cards(cards: dict[str, pd.DataFrame]) -> bool:
    """Whether the page shows any card (`card_rows`): what a review needs."""
    return any(len(rows) for rows in cards.values())


def _nav(groups: tuple[str, pd.Series] | None, run_dir: Path | None, cards: Sequence[str]) -> str:
    """Links to the page's sections, so that a keyboard need not pass every thumbnail to reach the next kind."""
    named = {CATEGORIES[CLEAN]: "clean sample"}
    links = [("scatter", "loss × uncertainty"), ("classes", "per class")]
    links += [(g, named.get(g, g)) for g in cards]
    links += [("groups", f"by {groups[0]}")] if groups is not None else []
    links += [("curves", "training curves")] if run_dir is not None else []
    return '<nav class="note">' + " · ".join(f'<a href="#{i}">{_t(text)}</a>' for i, text in links) + "</nav>"


def _header_html(
    frame: pd.DataFrame,
    meta: dict[str, str],
    class_names: list[str],
    counts: list[int],
    source: str | Path,
    *,
    root: Path | None,
    nav: str,
) -> str:
    facts = [("images", _e(f"{len(frame):,}"))]  # label, HTML
    for key, label in (("method", "method"), ("model", "model")):
        if meta.get(key):
            facts.append((label, _t(meta[key])))
    shown = ", ".join(map(_t, class_names[:20])) + (" …" if len(class_names) > 20 else "")  # each name isolated
    facts.append(("classes", f"{len(class_names):,}: {shown}"))
    facts.append(("report written by", _e(f"qmix {meta['version']}" if meta.get("version") else "unknown")))
    for key, label in (("created_at", "created"), ("run_dir", "run"), ("dataset", "dataset")):
        if meta.get(key):
            facts.append((label, _t(meta[key])))
    if root is not None:  # where the cards' paths are: a relative one is under it
        facts.append(("image paths under", _t(os.path.abspath(root))))
    facts_html = " · ".join(f"{_e(label)} <b>{value}</b>" for label, value in facts)
    return (
        f'<header><h1>qmix report <small class="note">{_t(source)}</small></h1>'
        f'<p class="meta">{facts_html}</p>{legend_html(counts)}{nav}</header>'
    )


def review_sheet_name(source: str | Path) -> str:
    """The file name the page downloads its review sheet as: ``report-review.csv`` for ``report.parquet``."""
    stem = Path(str(source)).stem if source else ""
    return f"{stem}-review.csv" if stem else "review.csv"


def dataset_for_command(meta: dict[str, str]) -> str:
    """The dataset a report records (``meta["dataset"]``, as the audit was given it), as a command pasted in any
    folder reads it: a relative path made absolute from the folder the report records (``dataset_root``: the
    dataset's, or its manifest's), a built-in name or an absolute path as it is."""
    dataset, root = meta["dataset"], meta.get("dataset_root")
    if not root or Path(dataset).is_absolute() or is_builtin(dataset):
        return dataset
    return str(Path(root) / Path(dataset).name) if Path(dataset).suffix.lower() in MANIFEST_SUFFIXES else root


def review_bar_html(meta: dict[str, str], *, source: str | Path, sheet: str) -> str:
    """The review's controls (count, download, class filter), hidden until the page's script shows them: without
    JavaScript a page is still read, and a ``<noscript>`` line says what it would add."""
    dataset = shlex.quote(dataset_for_command(meta)) if meta.get("dataset") else "DATA"
    report = shlex.quote(os.path.abspath(source)) if source else "REPORT"
    command = f"qmix apply {dataset} --report {report} --review {shlex.quote(sheet)} --out fixed.parquet"
    return (
        '<div id="review" class="review" hidden><b>Review</b> <span class="count" aria-live="polite"></span> '
        '<button type="button" class="download">Download review sheet</button> '
        '<button type="button" class="clear">Forget verdicts</button> '
        '<label>given label <select class="only-class"><option value="">all</option></select></label> '
        '<label><input type="checkbox" class="hide-decided"> hide reviewed</label>'
        '<div class="note">Give your verdict in the menu of each card you check (kept in this browser), or with a '
        "key on its picture (Tab or click to it): <kbd>k</kbd> keep the label, <kbd>s</kbd> / <kbd>p</kbd> relabel "
        "to the suggested / predicted label, <kbd>d</kbd> drop (each then moving on to the next card), <kbd>u</kbd> "
        "undo. Download the sheet, then, with the path your browser saved it to: "
        f"<code>{_t(command)}</code>. The sheet overrules the report on the images it lists, whatever apply's "
        "options say; the others keep the audit's verdicts.</div>"
        "</div>"
        '<noscript><p class="note">With JavaScript on, each card has a menu for your verdict and the page downloads '
        "them as a review sheet for qmix apply --review.</p></noscript>"
    )


def review_script_html(
    frame: pd.DataFrame,
    labels: Sequence[str],
    *,
    sheet: str,
    verdicts: dict[str, dict[str, str]],
    started: str = "",
) -> str:
    """The review's data (the ``labels`` a card can be relabelled to, the ``sheet``'s name, the ``verdicts`` it
    starts with and where from, the key its verdicts are kept under in the browser) and its script, ``review.js``.

    The key is of the images and their given labels (and the starting sheet), not of the audit: a person's verdict is
    on an image and its label, which a new audit, a copy of the report or a page written with another ``--top``
    leaves as they were, and which a relabelled dataset does not (its verdicts would be stale)."""
    pairs = (frame["sample_id"].astype(str) + "\x00" + frame["given_label"].astype(str)).tolist()
    # Sorted: a report written in another order (`audit --sort rank`) is of the same images.
    identity = [hashlib.sha256(np.sort(id_digests(pairs)).tobytes()).hexdigest(), verdicts]
    data = {
        "classes": [str(c) for c in labels],
        "sheet": sheet,
        "decisions": verdicts,
        "started": f"started from {started} ({count_of(len(verdicts), 'verdict')}); " if started else "",
        "key": hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16],
    }
    # As JSON inside a script element: "<" and every character beyond ASCII written as escapes, so that no label can
    # close the element or hold a direction-setting character in the page's source.
    text = json.dumps(data).replace("<", "\\u003c").replace(">", "\\u003e")
    script = resources.files("qmix_cli.reporting").joinpath("review.js").read_text(encoding="utf-8")
    return f'<script type="application/json" id="qmix-review-data">{text}</script><script>{script}</script>'


_READING = (
    '<p class="note">How to read it: images the nets fit easily sit at low loss (left). A wrong label on a clear '
    "image gives a high loss but a confident prediction (right, lower); a low-quality image leaves the nets "
    "unsure whatever its label (top).</p>"
)


def _scatter_section(
    frame: pd.DataFrame, codes: np.ndarray, counts: list[int], run_dir: Path | None, max_points: int
) -> str:
    idx = subsample_indices(len(frame), max_points)
    titles = [
        f"{_isolated(sid)} ({cat}; given {_isolated(given)}, p_clean {pc:.2f})"  # a tooltip holds no markup
        for sid, cat, given, pc in zip(
            frame["sample_id"].to_numpy()[idx],
            frame["category"].to_numpy()[idx],
            frame["given_label"].to_numpy()[idx],
            frame["p_clean"].to_numpy()[idx],
            strict=True,
        )
    ]
    means = read_separation_means(run_dir / "separation.json") if run_dir is not None else []
    svg = scatter_svg(
        frame["loss"].to_numpy()[idx], frame["uncertainty"].to_numpy()[idx], codes[idx], titles=titles, means=means
    )
    shown = (
        f"all {len(frame):,} images" if len(idx) == len(frame) else f"{len(idx):,} of {len(frame):,} images (sampled)"
    )
    cross = (
        " Crosses: the fitted Gaussian-mixture component means (one set per net), coloured by the group they stand for."
        if means
        else ""
    )
    return (
        '<h2 id="scatter">Loss × uncertainty</h2>'
        f'<p class="note">{_e(shown)}, both axes normalised to [0, 1]. Hover a point for its id (the report lists '
        f"every image with both values).{cross}</p>"
        f'<div class="row">{svg}<div class="side">{legend_html(counts, vertical=True)}{_READING}</div></div>'
    )


def _resolve_image(path: str, root: Path | None) -> Path | None:
    """The file a report's ``path`` names, or None for a relative path climbing out of ``root`` (refused in a
    manifest, so only an edited or crafted report has one). An absolute path is embedded as it is: a manifest may
    list images anywhere by absolute path, so such a path cannot be told from an edited one."""
    p = Path(path)
    if p.is_absolute():
        return p
    if escapes_root(path, root if root is not None else "."):  # no root: paths are read from the current folder
        return None
    return p if root is None else root / p


def _thumbnail(path: str, root: Path | None) -> str | None:
    file = _resolve_image(path, root)
    return None if file is None else thumbnail_data_uri(file)


# What a reviewer does with what they see: the verdicts are acted on by `qmix apply`, and overruled by a review.
_ACTING = (
    "qmix apply relabels the mislabeled_hq images and drops the mislabeled_lq ones; to overrule a verdict, give yours "
    "in the card's menu and pass the review sheet the page downloads to qmix apply --review"
)
# The verdicts shown as thumbnails, with the line that says what to do about them.
THUMB_GROUPS = {
    "mislabeled_hq": "good images whose label looks wrong; the suggested label is the likeliest other class by a "
    "probe that never saw the image",
    "mislabeled_lq": "low-quality images (blurred, noisy, corrupted…): fix or drop them rather than relabel",
    "clean": "images the audit would keep as they are, picked at random: what it missed is among them. Give a "
    "verdict on every one, the right ones kept (k) as well as the wrong ones overruled, and the review bar estimates "
    "how many of all the images called clean are wrong or too poor",
}


def _top_rows(frame: pd.DataFrame, group: str, top: int) -> pd.DataFrame:
    """The ``top`` rows of flag ``group`` the page shows as thumbnails: the likeliest to be of it, by its own
    posterior (ties by rank).

    Not by rank, which orders by ``p_clean``: within a verdict that is ``1e-20`` against ``1e-30``, and put the
    low-quality images most like wrong labels on good ones first (docs/decisions.md, "Fortieth round": the first 12
    of a section truly low quality 0.60 by rank, 0.97 by ``p_mislabeled_lq``)."""
    rows = frame[frame["category"] == group]
    return rows.sort_values([f"p_{group}", "rank"], ascending=[False, True]).head(top)


def id_digests(values: Sequence[str]) -> np.ndarray:
    """``(N,)`` uint64: a BLAKE2b digest of each text in ``values`` (ids, or ids with their labels). Documented and
    fixed, unlike pandas' own hash, so that what rests on it (the clean sample a page draws, the key a review is kept
    under in the browser) does not change with a library's version; 0.8 s a million."""
    digests = (hashlib.blake2b(text.encode(), digest_size=8).digest() for text in values)
    return np.fromiter((int.from_bytes(d, "big") for d in digests), dtype=np.uint64, count=len(values))


def clean_sample(frame: pd.DataFrame, n: int) -> pd.DataFrame:
    """A random sample of the report's rows called clean, for a reviewer to estimate what the audit missed.

    Parameters
    ----------
    frame
        A report: ``sample_id`` and ``category`` columns at least.
    n
        How many rows to draw, 0 or more (all of them where there are fewer).

    Returns
    -------
    pandas.DataFrame
        ``min(n, clean)`` rows of ``frame``, in the order drawn. The draw is by the smallest BLAKE2b digests of the
        ids (as text): the same rows whatever order the report lists them in and however often the page is written
        (a reviewer's verdicts stay on their cards), a larger ``n`` keeping a smaller one's, and nothing to do with
        the scores, so that the share of wrong labels among them estimates the share among all the images called
        clean (the ``likeliest first`` order of the flags' sections would not).
    """
    rows = frame[frame["category"] == CATEGORIES[CLEAN]]
    draw = id_digests(rows["sample_id"].astype(str).tolist())  # plain str: an Arrow-backed column iterates slower
    return rows.iloc[np.argsort(draw, kind="stable")[:n]]


def missing_thumbnails(cards: dict[str, pd.DataFrame], *, root: Path | None) -> tuple[int, int, int]:
    """Of the images the page shows as thumbnails (`card_rows`): how many are not files (under ``root``), how many
    have paths climbing out of it (`_resolve_image`), and how many there are."""
    paths = [str(p) for rows in cards.values() for p in rows["path"]]
    files = [_resolve_image(p, root) for p in paths]
    outside = sum(file is None for file in files)
    return sum(file is not None and not file.is_file() for file in files), outside, len(paths)


def _thumbs_section(
    frame: pd.DataFrame, group: str, rows: pd.DataFrame, *, root: Path | None, rare: dict[str, int]
) -> str:
    """The section of verdict ``group``'s cards, ``rows`` (`card_rows`) of the report ``frame``; ``rare``, the
    report's small classes and their sizes (`small_classes`)."""
    blurb = THUMB_GROUPS[group]
    total = int((frame["category"] == group).sum())
    code = CATEGORIES.index(group)
    # The page shows the likeliest few; where the others are, so that a curator goes on from there.
    sample = group == CATEGORIES[CLEAN]
    more = "--sample" if sample else "--top"
    rest = f"; the report lists all {total:,}, qmix show {more} N shows more" if total > len(rows) else ""
    if not len(rows):  # --top 0
        shown = count_of(total, "image")
    elif len(rows) == total:
        shown = "1 image" if total == 1 else f"all {total:,}" + ("" if sample else ", likeliest first")
    elif sample:
        shown = f"a random {len(rows):,} of {total:,}{rest}"
    else:
        shown = f"the {len(rows):,} likeliest of {total:,} by p_{group}{rest}"
    heading = (
        f'<h2 id="{group}">{_swatch(code)}{_e(group)} <small class="note">{shown}</small></h2>'
        f'<p class="note">{_e(blurb)}. {_ACTING}</p>'
    )
    if rows.empty:
        return heading + ('<p class="note">No images in this group.</p>' if total == 0 else "")
    uris = [_thumbnail(str(path), root) for path in rows["path"]]
    cards = [
        thumbnail_card_html(row, uri, rare=rare.get(str(row["given_label"]), 0))
        for row, uri in zip(rows.to_dict("records"), uris, strict=True)
    ]
    # Said on the page too: whoever it is sent to never saw the warning `qmix show` printed.
    missing = sum(uri is None for uri in uris)
    lost = f'<p class="note">{count_of(missing, "image")} not found or unreadable: "no image".</p>' if missing else ""
    # The sample's section says how many it is drawn from: the review's estimate of what the audit missed (review.js).
    drawn = f' data-sample="{total}"' if sample else ""
    return heading + lost + f'<div class="thumbs" data-verdict="{group}"{drawn}>' + "".join(cards) + "</div>"


def groups_section_html(
    frame: pd.DataFrame,
    groups: pd.Series,
    *,
    column: str,
    root: Path | None,
    top: int,
    rare: dict[str, int],
    per_group: int = 8,
) -> str:
    """The ``top`` likeliest wrong labels by group and given label, each with up to ``per_group`` of its images
    (best ranked first); ``groups`` (N,) is each report row's value of ``column``."""
    table = summarise_groups(frame, groups=groups)
    shown = table.head(top)
    ranked = f"top {len(shown):,} of {len(table):,} by issue score" if len(shown) else f"{len(table):,} in all"
    heading = (
        f'<h2 id="groups">By {_t(column)} <small class="note">{ranked}</small></h2>'
        f'<p class="note">One entry per {_t(column)} and given label: the issue score is the median of its images\' '
        "1 − p_clean, so a label wrong on most of them ranks high and one poor image does not; the suggestion is "
        "the one most of its mislabeled_hq images make.</p>"
    )
    if table.empty:
        return heading + f'<p class="note">No image has a {_t(column)}.</p>'
    units = units_of_rows(frame, groups=groups)
    parts = [heading]
    for unit in shown.to_dict("records"):
        member = (units["group"] == unit["group"]) & (units["given_label"] == unit["given_label"])
        members = frame[member.to_numpy()].sort_values("rank", kind="stable")
        suggested = unit["suggested_label"]
        relabel = f" → <b>{_t(suggested)}</b>" if isinstance(suggested, str) else ""
        counts = ", ".join(f"{int(unit[c]):,} {_e(c)}" for c in CATEGORIES if unit[c])
        more = f" (first {per_group} shown)" if len(members) > per_group else ""
        cards = [
            thumbnail_card_html(row, _thumbnail(str(row["path"]), root), rare=rare.get(str(row["given_label"]), 0))
            for row in members.head(per_group).to_dict("records")
        ]
        parts.append(
            f'<h3><span class="rank">{_t(column)} #{int(unit["rank"])}</span> {_t(unit["group"])}: given <b>'
            f'{_t(unit["given_label"])}</b>{relabel} <small class="note">{count_of(int(unit["images"]), "image")} '
            f"({counts}), "
            f"issue score {float(unit['issue_score']):.2f}{more}</small></h3>"
            '<div class="thumbs">' + "".join(cards) + "</div>"
        )
    return "".join(parts)


def _curves_section(run_dir: Path) -> str:
    rows = read_metrics(run_dir / "metrics.jsonl")
    heading = f'<h2 id="curves">Training curves <small class="note">{_t(run_dir)}</small></h2>'
    if not rows:
        return heading + '<p class="note">No metrics.jsonl in the run directory.</p>'
    warm_end = next((float(r["epoch"]) - 0.5 for r in rows if r.get("phase") == "train"), None)
    if warm_end is not None and not any(r.get("phase") == "warmup" for r in rows):
        warm_end = None
    epochs = [float(r["epoch"]) for r in rows]
    span = (min(epochs), max(epochs))
    charts = []
    for i, key in enumerate(CURVE_METRICS):
        x, y = curve_series(rows, key)
        if len(x):
            color = PALETTE[0] if i == 0 else ("#009E73", "#D55E00", "#56B4E9")[(i - 1) % 3]
            charts.append(line_chart_svg(x, y, title=_CURVE_TITLES[key], marker_x=warm_end, x_range=span, color=color))
    if not charts:
        return heading + '<p class="note">metrics.jsonl has none of the plotted metrics.</p>'
    note = '<p class="note">Dashed line: end of warm-up.</p>' if warm_end is not None else ""
    return heading + note + '<div class="row">' + "".join(charts) + "</div>"
