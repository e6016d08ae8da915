// The stored elements: counts, recording span and whether each one's latest session drifts;
// filtered by id, a page at a time.

import { api, mapLimited } from "../api.js";
import { elementHref, errorBox, fixed, h, when } from "../dom.js";

const PAGE = 20;

// A page of the elements whose id contains the filter (any case; all without one).
async function elementPage(filter, offset) {
  const query = new URLSearchParams({ limit: PAGE, offset, ...(filter ? { contains: filter } : {}) });
  return api(`/elements?${query}`);
}

// The drift of an element's latest session, as a table cell's text and state.
async function latestDrift(elementId) {
  try {
    const report = await api(`/elements/${encodeURIComponent(elementId)}/drift`);
    const latest = report.sessions[report.sessions.length - 1];
    return latest.drifting
      ? { state: "drifting", text: `drifting (score ${fixed(latest.score)})` }
      : { state: "stable", text: `stable (score ${fixed(latest.score)})` };
  } catch (error) {
    if (error.status === 409) {
      return { state: "nothing-to-compare", text: "nothing to compare yet" };
    }
    return { state: "error", text: error.message };
  }
}

function pageHref(filter, offset) {
  const query = new URLSearchParams({ ...(filter ? { q: filter } : {}), offset });
  return `#/elements?${query}`;
}

function pager(filter, offset, shown, total) {
  const first = total === 0 ? 0 : offset + 1;
  return h(
    "nav",
    { class: "pager", "aria-label": "Pages of elements" },
    offset > 0 ? h("a", { href: pageHref(filter, Math.max(0, offset - PAGE)) }, "Previous") : null,
    h("span", { id: "element-range" }, `${first}–${offset + shown} of ${total}`),
    offset + shown < total ? h("a", { href: pageHref(filter, offset + PAGE) }, "Next") : null,
  );
}

export async function renderElements(root, { params }) {
  const filter = params.get("q") || "";
  const offset = Math.max(0, Number(params.get("offset")) || 0);
  const input = h("input", { id: "element-filter", type: "search", value: filter });
  const form = h(
    "form",
    { class: "filter", role: "search" },
    h("label", { for: "element-filter" }, "Filter by id"),
    input,
    h("button", { type: "submit" }, "Filter"),
  );
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    location.hash = pageHref(input.value.trim(), 0);
  });
  const status = h("p", { class: "status", "aria-live": "polite" }, "Loading elements…");
  root.append(h("h2", { tabindex: -1 }, "Elements"), form, status);

  let page;
  try {
    page = await elementPage(filter, offset);
  } catch (error) {
    status.replaceWith(errorBox(error));
    return;
  }
  if (page.items.length === 0) {
    status.textContent = filter
      ? `No element id contains “${filter}”.`
      : "No elements stored yet.";
    return;
  }
  status.textContent = "";
  const rows = page.items.map((e) => {
    const drift = h("td", { class: "drift", "data-state": "loading" }, "…");
    const row = h(
      "tr",
      { "data-element": e.element_id },
      h("th", { scope: "row" }, h("a", { href: elementHref(e.element_id) }, e.element_id)),
      h("td", { class: "num" }, e.references),
      h("td", { class: "num" }, e.sessions),
      h("td", {}, when(e.first_recorded_at)),
      h("td", {}, when(e.last_recorded_at)),
      drift,
    );
    return { element: e, row, drift };
  });
  root.append(
    h(
      "div",
      { class: "table-scroll" },
      h(
        "table",
        { id: "elements" },
        h("caption", {}, "Stored elements, with the drift of each one's latest session"),
        h(
          "thead",
          {},
          h(
            "tr",
            {},
            ["Element", "References", "Sessions", "First recorded", "Last recorded", "Drift"].map(
              (title) => h("th", { scope: "col" }, title),
            ),
          ),
        ),
        h("tbody", {}, rows.map((r) => r.row)),
      ),
    ),
    pager(filter, offset, page.items.length, page.total),
  );
  await mapLimited(rows, 4, async ({ element, drift }) => {
    const { state, text } = await latestDrift(element.element_id);
    drift.dataset.state = state;
    drift.textContent = text;
  });
}
