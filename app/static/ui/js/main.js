// The explorer's views by the URL's fragment: #/elements, #/element/<id>, #/signal?ref=<id>;
// the collection shown by the page's ?collection= (picked in the header).

import { api, COLLECTION } from "./api.js";
import { renderElement } from "./views/element.js";
import { renderElements } from "./views/elements.js";
import { renderSignal } from "./views/signal.js";

const VIEWS = { elements: renderElements, element: renderElement, signal: renderSignal };

function route(moveFocus) {
  const [path, query = ""] = location.hash.replace(/^#\/?/, "").split("?");
  const [name, ...rest] = path.split("/");
  const view = VIEWS[name] ? name : "elements";
  for (const link of document.querySelectorAll("nav a[data-view]")) {
    if (link.dataset.view === view) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  // Each view draws into a section of its own: one still loading after the user moved on
  // fills a section no longer shown.
  const section = document.createElement("section");
  document.getElementById("content").replaceChildren(section);
  VIEWS[view](section, {
    arg: decodeURIComponent(rest.join("/")),
    params: new URLSearchParams(query),
  });
  // Views put their heading in place before their first request
  if (moveFocus) section.querySelector("h2")?.focus(); // keyboard users start at the new view
}

// The collection picker: every collection the key may read; picking one reloads the page on
// it (the view kept), so the URL says which collection is shown.
async function fillPicker() {
  const picker = document.getElementById("collection-picker");
  picker.replaceChildren(new Option(COLLECTION, COLLECTION, true, true));
  try {
    const { items } = await api("/collections");
    const names = items.map((c) => c.name);
    if (!names.includes(COLLECTION)) names.unshift(COLLECTION);
    picker.replaceChildren(...names.map((n) => new Option(n, n, n === COLLECTION, n === COLLECTION)));
  } catch {
    // the listing was refused or failed: the collection in the URL stays the only choice
  }
  picker.addEventListener("change", () => {
    const search = picker.value === "default" ? "" : `?${new URLSearchParams({ collection: picker.value })}`;
    location.assign(`${location.pathname}${search}${location.hash}`);
  });
}

window.addEventListener("hashchange", () => route(true));
route(false);
fillPicker();
