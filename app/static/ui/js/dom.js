// Building the page from data: elements made with text content only, never parsed HTML, so an
// id or a metadata value from the API can never become markup.

// h("a", {href: "#/x", class: "c"}, "text", child, ...): attributes are set as given; children
// are nodes or strings (as text); null and false children are left out.
export function h(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === null || value === undefined || value === false) continue;
    node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

// A message in place of a view's content, for users of screen readers too.
export function errorBox(error) {
  return h("p", { class: "error", role: "alert" }, error.message || String(error));
}

export function fixed(value, digits = 3) {
  return Number(value).toFixed(digits);
}

// "2026-03-01 10:00" from the API's ISO 8601 times (UTC), the same on every machine.
export function when(iso) {
  return new Date(iso).toISOString().slice(0, 16).replace("T", " ");
}

export function elementHref(elementId) {
  return `#/element/${encodeURIComponent(elementId)}`;
}

export function referenceHref(referenceId) {
  return `#/signal?ref=${encodeURIComponent(referenceId)}`;
}

// The first channel of a signal: a list of numbers, or channels first.
export function firstChannel(signal) {
  return Array.isArray(signal[0]) ? signal[0] : signal;
}

// Up to `count` items spread evenly over `items` (all of them when there are fewer).
export function spread(items, count) {
  if (items.length <= count) return items.slice();
  return Array.from({ length: count }, (_, i) => items[Math.floor((i * items.length) / count)]);
}
