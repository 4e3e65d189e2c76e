// The review on the page `qmix show` writes: a menu on each card to give a verdict, and a button that downloads them
// as the review sheet `qmix apply --review` reads (qmix_cli/reporting/review.py). The page reads fine without it.
//
// A decision is kept as one text per sample id: "clean" (the given label is right), "lq" (the image is too poor:
// drop it) or "hq:" followed by the label to give (a wrong label on a good image). Decisions are kept in the
// browser's local storage under the page's key, so that a review survives a reload; the sheet is what counts.
(function (root) {
  "use strict";

  const ISOLATE = (text) => "\u2068" + text + "\u2069"; // a label's own direction cannot reorder the menu's words

  // What a decision means in the report's terms: {category, suggested_label}.
  function verdictOf(value) {
    if (value === "clean") return { category: "clean", suggested_label: "" };
    if (value === "lq") return { category: "mislabeled_lq", suggested_label: "" };
    if (value.startsWith("hq:")) return { category: "mislabeled_hq", suggested_label: value.slice(3) };
    throw new Error("not a decision: " + value);
  }

  // The decision that agrees with the audit's verdict on a card ("" where there is none to agree with: a wrong
  // label without a suggestion).
  function flaggedValue(card) {
    if (card.category === "clean") return "clean";
    if (card.category === "mislabeled_lq") return "lq";
    if (card.category === "mislabeled_hq" && card.suggested) return "hq:" + card.suggested;
    return "";
  }

  // A card's menu, [value, text] pairs: the likeliest choices first; with `all`, every other class after them.
  function choicesFor(card, classes, all) {
    const choices = [["", "not reviewed"], ["clean", "label right: keep " + ISOLATE(card.given)]];
    const named = new Set([card.given]);
    for (const [label, why] of [[card.suggested, " (suggested)"], [card.predicted, " (predicted)"]]) {
      if (label && !named.has(label)) {
        choices.push(["hq:" + label, "relabel to " + ISOLATE(label) + why]);
        named.add(label);
      }
    }
    choices.push(["lq", "image too poor: drop"]);
    if (all) {
      for (const label of classes) {
        if (!named.has(label)) choices.push(["hq:" + label, "relabel to " + ISOLATE(label)]);
      }
    }
    return choices;
  }

  // The decision a key gives a card whose image has the focus ("" clears it; null: not a review key, or a relabel the
  // card has no label for). k keeps the label, d drops the image, s and p relabel to the suggested and the predicted
  // label, u undoes.
  function keyChoice(key, card) {
    const relabel = (label) => (label && label !== card.given ? "hq:" + label : null);
    const choice = { k: "clean", d: "lq", s: relabel(card.suggested), p: relabel(card.predicted), u: "" };
    return Object.prototype.hasOwnProperty.call(choice, key) ? choice[key] : null; // not Object.hasOwn: older browsers
  }

  function csvField(text) {
    return '"' + String(text).replace(/"/g, '""') + '"';
  }

  // The review sheet: one row per decided image, in the order given. `rows`: [{sample_id, given_label, value}].
  function reviewCsv(rows) {
    const lines = ["sample_id,given_label,category,suggested_label"];
    for (const row of rows) {
      const verdict = verdictOf(row.value);
      lines.push([row.sample_id, row.given_label, verdict.category, verdict.suggested_label].map(csvField).join(","));
    }
    return lines.join("\r\n") + "\r\n";
  }

  // How often the reviewer agreed with each kind of flag, over the cards decided one by one (not those a section's
  // "agree" button set): how far the rest of the audit can be trusted, from the likeliest cards (so an upper bound).
  // `entries`: [{value, flagged, bulk}].
  function confirmed(entries) {
    const parts = [];
    for (const [kind, isKind] of [
      ["mislabeled_hq", (flag) => flag.startsWith("hq:")],
      ["mislabeled_lq", (flag) => flag === "lq"],
    ]) {
      const judged = entries.filter((entry) => isKind(entry.flagged) && !entry.bulk);
      const agreed = judged.filter((entry) => entry.value === entry.flagged).length;
      if (judged.length) parts.push(agreed + " of " + judged.length + " " + kind);
    }
    return parts.length ? "; one by one, confirmed " + parts.join(", ") : "";
  }

  // The 95 % Wilson score interval of a share seen `k` times in `n`: [low, high], within [0, 1], and not empty at
  // k = 0 (where the plain k/n ± interval would say "none" from a dozen images).
  function wilson(k, n) {
    const z = 1.96;
    const share = k / n;
    const spread = z * z / n;
    const centre = (share + spread / 2) / (1 + spread);
    const half = (z * Math.sqrt(share * (1 - share) / n + spread / (4 * n))) / (1 + spread);
    return [Math.max(0, centre - half), Math.min(1, centre + half)];
  }

  const grouped = (n) => n.toLocaleString("en-US");

  // What the reviewer's verdicts on the page's random sample of `size` clean cards say of all `total` images the
  // audit called clean: once every card of the sample is decided one by one (a sample of the cards one chose to
  // decide would be no random sample), the share overruled (a wrong label, or an image too poor), scaled up, with its
  // 95 % interval; until then, how far the sample is. `entries`: [{value, sampled, bulk}], `sampled` for its cards.
  function missedText(entries, total, size) {
    if (!size || !total) return "";
    const judged = entries.filter((entry) => entry.sampled && !entry.bulk);
    const n = judged.length;
    if (n < size) {
      return (
        "; clean sample: " + n + " of " + size + " decided (decide every one, k keeping a right label, to " +
        "estimate what the audit missed)"
      );
    }
    const k = judged.filter((entry) => entry.value !== "clean").length;
    const called = " image" + (total === 1 ? "" : "s") + " called clean";
    if (n >= total) return "; of the " + grouped(total) + called + ", you overruled " + grouped(k);
    const [low, high] = wilson(k, n);
    // The images looked at are known: at least the k overruled are not clean, and the n - k confirmed are.
    const least = Math.max(k, Math.round(low * total));
    const most = Math.min(total - (n - k), Math.round(high * total));
    const of = " of the " + grouped(total) + called + " are wrong or too poor by your verdicts";
    if (!k) {
      return "; of the clean sample, none of " + n + " overruled: at most about " + grouped(most) + of + " (95 %)";
    }
    return (
      "; of the clean sample, " + k + " of " + n + " overruled: about " + grouped(Math.round((k / n) * total)) + of +
      " (95 % interval " + grouped(least) + " to " + grouped(most) + ")"
    );
  }

  // The bar's line. `entries`: [{value, flagged, shown, sampled, bulk}], `shown` false for an image this page has no
  // card for; `sample`: {total, size}, the page's random sample of `size` clean cards of `total` images called clean.
  function countText(entries, sample = { total: 0, size: 0 }) {
    const overruled = entries.filter((entry) => entry.value !== entry.flagged).length;
    const elsewhere = entries.filter((entry) => !entry.shown).length;
    return (
      entries.length + " reviewed, " + overruled + " overruled" +
      (elsewhere ? " (" + elsewhere + " of them on images this page does not show)" : "") +
      confirmed(entries) +
      missedText(entries, sample.total, sample.size)
    );
  }

  const api = { verdictOf, flaggedValue, choicesFor, keyChoice, reviewCsv, confirmed, wilson, missedText, countText };
  if (typeof module !== "undefined" && module.exports) module.exports = api;
  if (typeof document === "undefined") return;

  // Stored verdicts are {sample_id: {value, given, flagged}}: the decision, the given label (for the sheet, whether
  // or not this page shows the card) and the decision that agrees with the audit (to count the overruled ones).
  function isVerdict(entry) {
    return entry && typeof entry === "object" && typeof entry.value === "string" && entry.value !== "";
  }

  // What this browser kept under `key`, or null where it kept nothing.
  function load(key) {
    try {
      const saved = JSON.parse(root.localStorage.getItem(key));
      if (!saved || typeof saved !== "object") return null;
      return Object.fromEntries(Object.entries(saved).filter(([, entry]) => isVerdict(entry)));
    } catch (error) {
      return null; // storage refused (a private window, a policy): the review lasts as long as the page
    }
  }

  function save(key, decisions) {
    try {
      root.localStorage.setItem(key, JSON.stringify(decisions));
    } catch (error) {
      /* as above */
    }
  }

  function start() {
    const source = document.getElementById("qmix-review-data");
    const bar = document.getElementById("review");
    if (!source || !bar) return;
    const data = JSON.parse(source.textContent);
    const key = "qmix-review:" + data.key;
    // A sheet given to `qmix show --review` is where the review starts (the key is of the report and the sheet); once
    // anything is decided, this browser's copy is the review, "forget" included.
    let decisions = load(key) || Object.assign({}, data.decisions || {});
    const figures = Array.from(document.querySelectorAll("figure.thumb[data-id]"));
    // Each value is a JSON string (html.py, `_review_attributes`): exact, whatever characters an id holds.
    const field = (figure, name) => (name in figure.dataset ? JSON.parse(figure.dataset[name]) : "");
    const card = (figure) => ({
      id: field(figure, "id"),
      given: field(figure, "given"),
      category: field(figure, "category"),
      suggested: field(figure, "suggested"),
      predicted: field(figure, "predicted"),
    });
    const menus = [];
    const valueOf = (id) => (decisions[id] ? decisions[id].value : "");

    function fill(menu, info, all) {
      const value = valueOf(info.id);
      const wide = all || (value !== "" && !choicesHave(info, value));
      menu.textContent = "";
      for (const [choice, text] of choicesFor(info, data.classes, wide)) menu.add(new Option(text, choice));
      menu.value = value;
      menu.dataset.full = wide ? "1" : "";
    }
    const choicesHave = (info, value) => choicesFor(info, data.classes, false).some(([v]) => v === value);

    function show() {
      const only = bar.querySelector(".only-class").value;
      const hide = bar.querySelector(".hide-decided").checked;
      for (const { figure, menu, info } of menus) {
        const value = valueOf(info.id);
        if (menu.value !== value) fill(menu, info, menu.dataset.full === "1");
        figure.classList.toggle("decided", value !== "");
        figure.classList.toggle("overruled", value !== "" && value !== flaggedValue(info));
        figure.hidden = (only !== "" && info.given !== only) || (hide && value !== "");
      }
      const drawn = { total: cleanTotal, size: sampled.size };
      bar.querySelector(".count").textContent = data.started + countText(current(), drawn);
      bar.querySelector(".download").disabled = Object.keys(decisions).length === 0;
    }

    // Every verdict as countText takes it; what the audit said of a card shown here is read from the card itself.
    const current = () =>
      Object.entries(decisions).map(([id, entry]) => {
        const info = onPage.get(id);
        const flagged = info ? flaggedValue(info) : entry.flagged;
        return { value: entry.value, flagged, shown: !!info, bulk: !!entry.bulk, sampled: sampled.has(id) };
      });

    // `bulk`: set by a section's "agree" button, not by looking at the card.
    function decide(info, value, bulk = false) {
      if (value) decisions[info.id] = { value, given: info.given, flagged: flaggedValue(info), bulk };
      else delete decisions[info.id];
    }

    for (const figure of figures) {
      const info = card(figure);
      const menu = document.createElement("select");
      menu.className = "decide";
      menu.setAttribute("aria-label", "your verdict on " + info.id);
      fill(menu, info, false);
      // Every class is listed once the menu is opened: a thousand options on each of a hundred cards would slow
      // the page's first paint for choices rarely needed.
      const widen = () => {
        if (menu.dataset.full !== "1") fill(menu, info, true);
      };
      menu.addEventListener("focus", widen);
      menu.addEventListener("pointerdown", widen);
      menu.addEventListener("blur", () => fill(menu, info, false)); // narrow again: a page of open menus is slow
      menu.addEventListener("change", () => {
        decide(info, menu.value);
        save(key, decisions);
        show();
      });
      figure.querySelector("figcaption").appendChild(menu);
      menus.push({ figure, menu, info });
      // Keys on the card's picture (focused by Tab or a click): decide, then go on to the next card shown.
      figure.addEventListener("keydown", (event) => {
        // The menu's own keys (type-ahead), a shortcut of the browser's, and a held key: one key, one card.
        if (event.target === menu || event.altKey || event.ctrlKey || event.metaKey || event.repeat) return;
        const value = keyChoice(event.key.toLowerCase(), info);
        if (value === null) return;
        event.preventDefault();
        decide(info, value);
        save(key, decisions);
        show();
        if (value === "") return;
        const after = menus.slice(menus.findIndex((entry) => entry.figure === figure) + 1);
        const next = after.find((entry) => !entry.figure.hidden);
        // The last card shown decided: the download is what is left (the focus is not lost to the page).
        if (next) next.figure.querySelector("img, .placeholder").focus();
        else bar.querySelector(".download").focus();
      });
    }

    const onPage = new Map(menus.map(({ info }) => [info.id, info])); // the cards, by id (one may show twice)
    // The random sample of clean cards, and how many images called clean it is drawn from (html.py, clean_sample).
    const sample = document.querySelector(".thumbs[data-sample]");
    const cleanTotal = sample ? Number(sample.dataset.sample) : 0;
    const sampled = new Set(
      menus.filter(({ figure }) => sample && sample.contains(figure)).map(({ info }) => info.id)
    );

    // A section's cards the reviewer agrees with, in one go, once the ones they disagree with are set. Not the clean
    // sample's: its estimate of what the audit missed rests on each card being looked at.
    for (const section of document.querySelectorAll(".thumbs[data-verdict]:not([data-sample])")) {
      const button = document.createElement("button");
      button.type = "button";
      button.textContent =
        "Agree with the remaining cards above" +
        (section.querySelector("figure[data-rare]") ? " (not those of rare classes)" : "");
      button.setAttribute("aria-label", "Agree with the remaining " + section.dataset.verdict + " cards");
      button.addEventListener("click", () => {
        for (const { figure, info } of menus) {
          // A card of a class too small for the audit's verdict to say much is left to be decided one by one.
          const rare = "rare" in figure.dataset;
          if (section.contains(figure) && !figure.hidden && !rare && !valueOf(info.id) && flaggedValue(info)) {
            decide(info, flaggedValue(info), true);
          }
        }
        save(key, decisions);
        show();
      });
      section.after(button);
    }

    const only = bar.querySelector(".only-class");
    for (const label of data.classes) only.add(new Option(ISOLATE(label), label));
    only.addEventListener("change", show);
    bar.querySelector(".hide-decided").addEventListener("change", show);
    bar.querySelector(".download").addEventListener("click", () => {
      // Every verdict given, the cards' in the page's order first: none is lost for not being shown here.
      const order = [...new Set([...menus.map(({ info }) => info.id), ...Object.keys(decisions)])];
      const rows = order
        .filter((id) => decisions[id])
        .map((id) => ({ sample_id: id, given_label: decisions[id].given || "", value: decisions[id].value }));
      const link = document.createElement("a");
      link.href = URL.createObjectURL(new Blob([reviewCsv(rows)], { type: "text/csv" }));
      link.download = data.sheet;
      document.body.appendChild(link);
      link.click();
      link.remove();
      setTimeout(() => URL.revokeObjectURL(link.href), 0);
    });
    bar.querySelector(".clear").addEventListener("click", () => {
      const entries = current();
      const elsewhere = entries.filter((entry) => !entry.shown).length;
      const also = elsewhere ? " (" + elsewhere + " of them on images this page does not show)" : "";
      // Back to where the page started: empty, or the sheet `qmix show --review` gave it.
      const sheet = Object.keys(data.decisions || {}).length;
      const back = sheet ? " and start again from the sheet's " + sheet : "";
      if (root.confirm("Forget all " + entries.length + " verdicts of this review" + also + back + "?")) {
        decisions = Object.assign({}, data.decisions || {});
        save(key, decisions);
        show();
      }
    });
    bar.hidden = false;
    show();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})(typeof window !== "undefined" ? window : globalThis);
