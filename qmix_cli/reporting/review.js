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

  const api = { verdictOf, flaggedValue, choicesFor, reviewCsv };
  if (typeof module !== "undefined" && module.exports) module.exports = api;
  if (typeof document === "undefined") return;

  function load(key) {
    try {
      const saved = JSON.parse(root.localStorage.getItem(key) || "{}");
      return saved && typeof saved === "object" ? saved : {};
    } catch (error) {
      return {}; // storage refused (a private window, a policy): the review lasts as long as the page
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
    let decisions = load(key);
    const figures = Array.from(document.querySelectorAll("figure.thumb[data-id]"));
    const card = (figure) => ({
      id: figure.dataset.id,
      given: figure.dataset.given,
      category: figure.dataset.category,
      suggested: figure.dataset.suggested || "",
      predicted: figure.dataset.predicted || "",
    });
    const menus = [];

    function fill(menu, info, all) {
      const value = decisions[info.id] || "";
      menu.textContent = "";
      for (const [choice, text] of choicesFor(info, data.classes, all || (value && !choicesHave(info, value)))) {
        menu.add(new Option(text, choice));
      }
      menu.value = value;
      menu.dataset.full = all ? "1" : "";
    }
    const choicesHave = (info, value) => choicesFor(info, data.classes, false).some(([v]) => v === value);

    function show() {
      const only = bar.querySelector(".only-class").value;
      const hide = bar.querySelector(".hide-decided").checked;
      for (const { figure, menu, info } of menus) {
        const value = decisions[info.id] || "";
        if (menu.value !== value) fill(menu, info, menu.dataset.full === "1");
        figure.classList.toggle("decided", value !== "");
        figure.classList.toggle("overruled", value !== "" && value !== flaggedValue(info));
        figure.hidden = (only !== "" && info.given !== only) || (hide && value !== "");
      }
      const count = Object.keys(decisions).length;
      const overruled = menus.filter(({ info }) => decisions[info.id] && decisions[info.id] !== flaggedValue(info));
      const changed = new Set(overruled.map(({ info }) => info.id)).size;
      bar.querySelector(".count").textContent = count + " reviewed, " + changed + " overruled";
      bar.querySelector(".download").disabled = count === 0;
    }

    function decide(id, value) {
      if (value) decisions[id] = value;
      else delete decisions[id];
      save(key, decisions);
      show();
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
      menu.addEventListener("change", () => decide(info.id, menu.value));
      figure.querySelector("figcaption").appendChild(menu);
      menus.push({ figure, menu, info });
    }

    // Verdicts kept for images this page no longer shows (a page written again with another --top) are let go.
    const shown = new Set(menus.map(({ info }) => info.id));
    decisions = Object.fromEntries(Object.entries(decisions).filter(([id]) => shown.has(id)));

    // A section's cards the reviewer agrees with, in one go, once the ones they disagree with are set.
    for (const section of document.querySelectorAll(".thumbs[data-verdict]")) {
      const button = document.createElement("button");
      button.type = "button";
      button.textContent = "Agree with the remaining cards above";
      button.addEventListener("click", () => {
        for (const { figure, info } of menus) {
          if (section.contains(figure) && !figure.hidden && !decisions[info.id] && flaggedValue(info)) {
            decisions[info.id] = flaggedValue(info);
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
      const seen = new Set();
      const rows = [];
      for (const { info } of menus) {
        if (decisions[info.id] && !seen.has(info.id)) {
          seen.add(info.id);
          rows.push({ sample_id: info.id, given_label: info.given, value: decisions[info.id] });
        }
      }
      const link = document.createElement("a");
      link.href = URL.createObjectURL(new Blob([reviewCsv(rows)], { type: "text/csv" }));
      link.download = data.sheet;
      document.body.appendChild(link);
      link.click();
      link.remove();
    });
    bar.querySelector(".clear").addEventListener("click", () => {
      if (root.confirm("Forget every verdict given on this page?")) {
        decisions = {};
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
