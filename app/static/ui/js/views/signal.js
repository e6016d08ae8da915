// One signal, stored or the user's own: its keypoints, its nearest references (drawn faintly
// over it and listed), the element they vote for and its anomaly score.

import { api, mapLimited } from "../api.js";
import { chart, keypointColour, valueAt } from "../charts.js";
import { elementHref, errorBox, firstChannel, fixed, h, referenceHref } from "../dom.js";
import { parseText, readFile } from "../signal-input.js";

const FAINT = "rgba(60, 60, 60, 0.35)";

function keypointList(keypoints) {
  return h(
    "ol",
    { id: "keypoints", class: "legend" },
    keypoints.map((k, i) => {
      const swatch = h("span", { class: "swatch", "aria-hidden": "true" });
      swatch.style.backgroundColor = keypointColour(i); // CSSOM: allowed by the page's CSP
      return h(
        "li",
        { "data-name": k.name, "data-position": k.position, "data-confidence": k.confidence },
        swatch,
        `${k.name} at sample ${fixed(k.position, 1)}, confidence ${fixed(k.confidence, 2)}`,
      );
    }),
  );
}

function neighbourTable(neighbors) {
  const rows = neighbors.map((n, i) =>
    h(
      "tr",
      { "data-id": n.id },
      h("td", { class: "num" }, i + 1),
      h("th", { scope: "row" }, h("a", { href: referenceHref(n.id) }, n.id)),
      h("td", {}, h("a", { href: elementHref(n.element_id) }, n.element_id)),
      h("td", {}, n.session_id),
      h("td", { class: "num" }, fixed(n.similarity)),
    ),
  );
  const columns = ["#", "Reference", "Element", "Session", "Similarity"];
  return h(
    "div",
    { class: "table-scroll" },
    h(
      "table",
      { id: "neighbours" },
      h("caption", {}, "Most similar first"),
      h("thead", {}, h("tr", {}, columns.map((c) => h("th", { scope: "col" }, c)))),
      h("tbody", {}, rows),
    ),
  );
}

function knownText(known) {
  if (known === null) return "not calibrated (fewer than two elements stored)";
  return known ? "yes" : "no: less like it than stored elements are (likely a new element)";
}

function verdict(result) {
  const p = result.predicted_element;
  const a = result.anomaly;
  const pairs = [
    ["Predicted element", p ? h("a", { href: elementHref(p.element_id) }, p.element_id) : "none"],
    p && ["Share of the vote", fixed(p.confidence)],
    p && ["Known element", h("span", { id: "known" }, knownText(p.known))],
    ["Anomaly score", a ? h("span", { id: "anomaly-score" }, fixed(a.score)) : "not calibrated"],
    a && ["Anomalous", `${a.is_anomaly ? "yes" : "no"} (threshold ${a.threshold}, ` +
      `calibrated on ${a.calibrated_on})`],
  ].filter(Boolean);
  const items = pairs.flatMap(([term, value]) => [h("dt", {}, term), h("dd", {}, value)]);
  return h("dl", { id: "verdict" }, items);
}

// Draws `signal` with its keypoints and nearest references into `out`.
async function analyse(out, signal, { title, k, excludeSession }) {
  out.replaceChildren(h("p", { class: "status" }, "Analysing…"));
  try {
    const search = { signals: [signal], k, explain: true };
    if (excludeSession) search.exclude_session_id = excludeSession;
    const [keypoints, found] = await Promise.all([
      api("/keypoints", { signals: [signal] }),
      api("/search", search),
    ]);
    const points = keypoints.keypoints[0];
    const result = found.results[0];
    const neighbours = await mapLimited(result.neighbors, 4, (n) =>
      api(`/references/${encodeURIComponent(n.id)}`),
    );
    const values = firstChannel(signal);
    const lines = neighbours.map((n) => firstChannel(n.signal));
    const longest = Math.max(values.length, ...lines.map((l) => l.length));
    const plot = chart({
      id: "signal-chart",
      x: Array.from({ length: longest }, (_, i) => i),
      lines: [
        ...lines.map((l, i) => ({ label: neighbours[i].id, values: l, colour: FAINT, width: 1 })),
        { label: title, values, colour: "#111111", width: 2 },
      ],
      markers: points.map((kp, i) => ({
        x: kp.position,
        y: valueAt(values, kp.position),
        colour: keypointColour(i),
        label: `${kp.name} ${fixed(kp.confidence, 2)}`,
      })),
      yLabel: "value",
      height: 340,
      description: `${title} with its keypoints, and its ${lines.length} nearest references`,
    });
    const channelNote = Array.isArray(signal[0]) ? " First channel shown." : "";
    const map = result.anomaly && result.anomaly.map;
    const mapFigure = map
      ? h(
          "figure",
          {},
          chart({
            id: "anomaly-map-chart",
            x: Array.from({ length: longest }, (_, i) => i),
            lines: [{ label: "anomaly map", values: map, colour: "#d55e00", width: 1.5 }],
            markers: [{ x: result.anomaly.peak, y: map[result.anomaly.peak], colour: "#d55e00",
              label: `peak ${result.anomaly.peak}` }],
            yLabel: "unlike",
            height: 140,
            description: `where ${title} is least like the references its anomaly score ` +
              `compared it with: highest at sample ${result.anomaly.peak}`,
          }),
          h(
            "figcaption",
            {},
            "Below: where the signal is least like the references its anomaly score compared " +
              "it with (channels combined); highest at sample ",
            h("span", { id: "anomaly-peak" }, String(result.anomaly.peak)),
            ".",
          ),
        )
      : null;
    out.replaceChildren(
      h("h3", {}, title),
      h(
        "figure",
        {},
        plot,
        h("figcaption", {}, `Dark: the signal; faint: its nearest references.${channelNote}`),
      ),
      mapFigure,
      h("h4", {}, "Keypoints"),
      keypointList(points),
      h("h4", {}, "Element and anomaly"),
      verdict(result),
      h("h4", {}, "Nearest references"),
      excludeSession ? h("p", {}, `Leaving out its own session, ${excludeSession}.`) : null,
      neighbourTable(result.neighbors),
    );
  } catch (error) {
    out.replaceChildren(errorBox(error));
  }
}

function field(id, label, control) {
  control.id = id;
  return h("div", { class: "field" }, h("label", { for: id }, label), control);
}

export async function renderSignal(root, { params }) {
  const refId = params.get("ref") || "";
  const k = Number(params.get("k")) || 5;
  const leaveOutOwn = params.get("keep") !== "1"; // keep=1: its own session may answer
  const out = h("div", { id: "signal-result", "aria-live": "polite" });

  const refInput = h("input", { value: refId, list: "reference-ids", autocomplete: "off" });
  const kInput = h("input", { type: "number", min: 1, value: k });
  const leaveOut = h("input", { id: "leave-out", type: "checkbox", checked: leaveOutOwn });
  const ids = h("datalist", { id: "reference-ids" });
  const stored = h(
    "form",
    { id: "reference-form" },
    h("h3", {}, "A stored reference"),
    field("reference-id", "Reference id", refInput),
    ids,
    h(
      "div",
      { class: "check" },
      leaveOut,
      h("label", { for: "leave-out" }, "Leave out its own session"),
    ),
    h("button", { type: "submit" }, "Show reference"),
  );
  stored.addEventListener("submit", (event) => {
    event.preventDefault();
    const query = new URLSearchParams({ ref: refInput.value.trim(), k: kInput.value });
    if (!leaveOut.checked) query.set("keep", "1");
    location.hash = `#/signal?${query}`;
  });

  const fileInput = h("input", { type: "file", accept: ".npy,.csv,.txt,text/csv,text/plain" });
  const numbers = h("textarea", { rows: 3, placeholder: "0.1, 0.4, 1.0, 0.3, …" });
  const own = h(
    "form",
    { id: "own-form", class: "drop-zone" },
    h("h3", {}, "Your own signal"),
    field("signal-file", "A .npy or CSV file (or drop one here)", fileInput),
    field("signal-numbers", "Or paste numbers", numbers),
    h("button", { type: "submit" }, "Show these numbers"),
  );
  const ownSignal = (signal, title) =>
    analyse(out, signal, { title, k: Number(kInput.value) || 5, excludeSession: null });
  const fromFile = async (file) => {
    try {
      const { signal, count } = await readFile(file);
      await ownSignal(signal, count > 1 ? `${file.name} (first of ${count} signals)` : file.name);
    } catch (error) {
      out.replaceChildren(errorBox(error));
    }
  };
  fileInput.addEventListener("change", () => fileInput.files[0] && fromFile(fileInput.files[0]));
  own.addEventListener("dragover", (event) => {
    event.preventDefault(); // allows the drop
    own.classList.add("dragging");
  });
  own.addEventListener("dragleave", () => own.classList.remove("dragging"));
  own.addEventListener("drop", (event) => {
    event.preventDefault();
    own.classList.remove("dragging");
    const file = event.dataTransfer.files[0];
    if (file) fromFile(file);
  });
  own.addEventListener("submit", (event) => {
    event.preventDefault();
    try {
      ownSignal(parseText(numbers.value), "Pasted numbers");
    } catch (error) {
      out.replaceChildren(errorBox(error));
    }
  });

  root.append(
    h("h2", { tabindex: -1 }, "A signal"),
    field("neighbour-count", "Nearest references to show (k)", kInput),
    h("div", { class: "inputs" }, stored, own),
    out,
  );

  // Offered ids: the first page of the listing (any stored id may be typed)
  api("/references?limit=200")
    .then((page) => ids.append(...page.items.map((r) => h("option", { value: r.id }))))
    .catch(() => {}); // the form works without suggestions; a real error shows on "Show"
  if (!refId) return;
  try {
    const reference = await api(`/references/${encodeURIComponent(refId)}`);
    await analyse(out, reference.signal, {
      title: `Reference ${reference.id} (${reference.element_id}, ${reference.session_id})`,
      k,
      excludeSession: leaveOutOwn ? reference.session_id : null,
    });
  } catch (error) {
    out.replaceChildren(errorBox(error));
  }
}
