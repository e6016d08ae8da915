// One element: its sessions in time order, a sample of its references drawn over each other
// with their keypoints, its drift-score timeline and its aligned average cycle.

import { api, listAll, mapLimited } from "../api.js";
import { chart, keypointColour, valueAt } from "../charts.js";
import { errorBox, firstChannel, fixed, h, referenceHref, spread, when } from "../dom.js";

const SAMPLE = 16; // references drawn and averaged: enough for a mean, few enough to tell apart
const FAINT = "rgba(60, 60, 60, 0.45)";
const BLUE = "#0072b2";
const RED = "#d55e00";

// A titled part of the page; `content` (async) fills it, or its error does: one failing call
// leaves the other parts readable.
async function part(root, id, title, content) {
  const body = h("div", {}, h("p", { class: "status" }, "Loading…"));
  root.append(h("section", { id, class: "part" }, h("h3", {}, title), body));
  try {
    body.replaceChildren(...(await content()));
  } catch (error) {
    body.replaceChildren(errorBox(error));
  }
}

function table(id, caption, columns, rows) {
  return h(
    "div",
    { class: "table-scroll" },
    h(
      "table",
      { id },
      h("caption", {}, caption),
      h("thead", {}, h("tr", {}, columns.map((c) => h("th", { scope: "col" }, c)))),
      h("tbody", {}, rows),
    ),
  );
}

// Every session (baseline or not) from the references themselves, ordered by first recording
// as the drift report orders them, with the report's scores where it has them.
function sessionTable(references, drift) {
  const sessions = new Map();
  for (const r of references) {
    const s = sessions.get(r.session_id) ?? { id: r.session_id, first: r.recorded_at, count: 0 };
    if (Date.parse(r.recorded_at) < Date.parse(s.first)) s.first = r.recorded_at;
    s.count += 1;
    sessions.set(r.session_id, s);
  }
  const scored = new Map((drift?.sessions ?? []).map((s) => [s.session_id, s]));
  const baseline = new Set(drift?.baseline.sessions ?? []);
  const ordered = [...sessions.values()].sort((a, b) => Date.parse(a.first) - Date.parse(b.first));
  const rows = ordered.map((s) => {
    const d = scored.get(s.id);
    let status = "not scored";
    if (baseline.has(s.id)) status = "baseline";
    else if (d) status = d.drifting ? "drifting" : "stable";
    return h(
      "tr",
      { "data-session": s.id },
      h("th", { scope: "row" }, s.id),
      h("td", {}, when(s.first)),
      h("td", { class: "num" }, s.count),
      h("td", { class: "num" }, d ? fixed(d.score) : "–"),
      h("td", { "data-state": status }, status),
    );
  });
  const columns = ["Session", "First recorded", "References", "Drift score", "Status"];
  return table("sessions", "Sessions in time order", columns, rows);
}

function keypointLegend(names) {
  return h(
    "ul",
    { class: "legend" },
    names.map((name, i) => {
      const swatch = h("span", { class: "swatch", "aria-hidden": "true" });
      swatch.style.backgroundColor = keypointColour(i); // CSSOM: allowed by the page's CSP
      return h("li", {}, swatch, name);
    }),
  );
}

function overlay(sample, signals, keypoints) {
  const channels = signals.map(firstChannel);
  const longest = Math.max(...channels.map((c) => c.length));
  const plot = chart({
    id: "overlay-chart",
    x: Array.from({ length: longest }, (_, i) => i),
    lines: channels.map((values, i) => ({ label: sample[i].id, values, colour: FAINT, width: 1 })),
    markers: keypoints.flatMap((points, i) =>
      points.map((k, j) => ({
        x: k.position,
        y: valueAt(channels[i], k.position),
        colour: keypointColour(j),
      })),
    ),
    yLabel: "value",
    description: `${signals.length} references drawn over each other with their keypoints`,
  });
  const channelNote = Array.isArray(signals[0][0]) ? " (first channel)" : "";
  const drawn = sample.flatMap((r, i) => [
    i ? ", " : "",
    h("a", { href: referenceHref(r.id) }, r.id),
  ]);
  return [
    h(
      "figure",
      {},
      plot,
      h("figcaption", {}, `${signals.length} references${channelNote} and their keypoints:`),
      keypointLegend(keypoints[0].map((k) => k.name)),
    ),
    h("p", { class: "references" }, "Drawn: ", drawn),
  ];
}

function timeline(report) {
  const note = h(
    "p",
    {},
    `Baseline: ${report.baseline.sessions.length} session(s), ${report.baseline.references}` +
      ` references; a session drifts above a score of ${report.threshold}.`,
  );
  const times = report.sessions.map((s) => Date.parse(s.recorded_at) / 1000);
  const plot = chart({
    id: "drift-chart",
    x: times,
    time: true,
    xLabel: "session recorded",
    yLabel: "drift score",
    yRange: [0, 1.05], // room above a score of 1 for the "drifting" labels
    legend: true,
    lines: [
      { label: "score", values: report.sessions.map((s) => s.score), colour: BLUE, points: true },
      { label: "threshold", values: times.map(() => report.threshold), colour: RED, dash: [6, 4] },
    ],
    markers: report.sessions
      .filter((s) => s.drifting)
      .map((s) => ({
        x: Date.parse(s.recorded_at) / 1000,
        y: s.score,
        colour: RED,
        label: "drifting",
      })),
    description: "drift score of each session after the baseline over time, with the threshold",
  });
  return [plot, note];
}

function averageCycle(result) {
  const mean = firstChannel(result.average.mean);
  const std = firstChannel(result.average.std);
  const edge = "rgba(0, 114, 178, 0.4)";
  const plot = chart({
    id: "average-chart",
    x: mean.map((_, i) => i),
    lines: [
      { label: "mean + SD", values: mean.map((m, i) => m + std[i]), colour: edge, width: 1 },
      { label: "mean − SD", values: mean.map((m, i) => m - std[i]), colour: edge, width: 1 },
      { label: "mean", values: mean, colour: BLUE, width: 2 },
    ],
    band: [0, 1],
    legend: true,
    yLabel: "value",
    markers: Object.entries(result.target).map(([name, position], i) => ({
      x: position,
      y: valueAt(mean, position),
      colour: keypointColour(i),
      label: name,
    })),
    description: "the mean of the aligned references with a band of one standard deviation",
  });
  const skipped = result.results.filter((r) => r.skipped.length).length;
  const caption =
    `Mean ± SD of ${result.results.length} references aligned (piecewise) onto the element's` +
    ` median keypoints${skipped ? `; ${skipped} had keypoints skipped` : ""}.`;
  return [h("figure", {}, plot, h("figcaption", {}, caption))];
}

export async function renderElement(root, { arg: elementId }) {
  root.append(
    h("p", {}, h("a", { href: "#/elements" }, "← All elements")),
    h("h2", { tabindex: -1 }, `Element ${elementId}`),
  );
  const references = listAll("/references", { element_id: elementId }).then((items) => {
    if (items.length === 0) throw new Error(`No references of element ${elementId} are stored.`);
    return items;
  });
  // 409: the element has no session after its baseline, or a single reference
  const drift = api(`/elements/${encodeURIComponent(elementId)}/drift`).catch((error) => {
    if (error.status === 409) return { nothing: error.message };
    throw error;
  });
  const sample = references.then((items) => {
    const time = (r) => Date.parse(r.recorded_at);
    const byTime = items.slice().sort((a, b) => time(a) - time(b));
    return spread(byTime, SAMPLE);
  });
  const signals = sample.then(async (refs) => {
    const full = await mapLimited(refs, 4, (r) => api(`/references/${encodeURIComponent(r.id)}`));
    return full.map((r) => r.signal);
  });
  await Promise.all([
    part(root, "sessions-part", "Sessions", async () => {
      const report = await drift.catch(() => null); // the table stands without scores
      return [sessionTable(await references, report?.nothing ? null : report)];
    }),
    part(root, "overlay-part", "Signals", async () => {
      const keypoints = (await api("/keypoints", { signals: await signals })).keypoints;
      return overlay(await sample, await signals, keypoints);
    }),
    part(root, "drift-part", "Drift over time", async () => {
      const report = await drift;
      if (report.nothing) {
        return [h("p", { class: "status" }, `Nothing to compare yet: ${report.nothing}`)];
      }
      return timeline(report);
    }),
    part(root, "average-part", "Aligned average cycle", async () => {
      const body = { signals: await signals, target: { element_id: elementId }, average: true };
      return averageCycle(await api("/align", body));
    }),
  ]);
}
