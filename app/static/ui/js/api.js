// The service's JSON API, with the API key asked for on a 401 and kept for this tab only.
// The collection shown is the page's ?collection= (default: "default"): every data request
// goes to /collections/<name>/... for it.

const KEY_STORAGE = "hsn-api-key";
export const COLLECTION = new URLSearchParams(location.search).get("collection") || "default";

// Where the service answers `path` for the collection shown.
function located(path) {
  if (COLLECTION === "default" || path.startsWith("/collections")) return path;
  return `/collections/${encodeURIComponent(COLLECTION)}${path}`;
}

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

// FastAPI's error shape {"detail": [{"loc": [...], "msg": ...}]} as one readable line.
function errorMessage(status, body) {
  const detail = body && body.detail;
  if (Array.isArray(detail)) {
    return detail.map((d) => `${(d.loc || []).join(".")}: ${d.msg}`).join("; ");
  }
  return typeof detail === "string" ? detail : `HTTP ${status}`;
}

let pendingKey = null; // one dialog answers every request refused meanwhile

// Opens the key dialog with `message`; resolves with the key entered, or null on cancel.
function askForKey(message) {
  if (pendingKey) return pendingKey;
  const dialog = document.getElementById("key-dialog");
  const form = document.getElementById("key-form");
  const input = document.getElementById("key-input");
  document.getElementById("key-message").textContent = message;
  input.value = "";
  pendingKey = new Promise((resolve) => {
    const finish = (key) => {
      form.removeEventListener("submit", onSubmit);
      dialog.removeEventListener("close", onClose);
      pendingKey = null;
      resolve(key);
    };
    const onSubmit = (event) => {
      event.preventDefault();
      finish(input.value.trim());
      dialog.close();
    };
    const onClose = () => finish(null); // Escape or Cancel
    form.addEventListener("submit", onSubmit);
    dialog.addEventListener("close", onClose);
  });
  dialog.showModal();
  return pendingKey;
}

document.getElementById("key-cancel").addEventListener("click", () => {
  document.getElementById("key-dialog").close();
});

// GET (no body) or POST (JSON body) `path`; resolves with the decoded JSON, throws ApiError.
export async function api(path, body) {
  for (;;) {
    const key = sessionStorage.getItem(KEY_STORAGE);
    const headers = { Accept: "application/json" };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    if (key) headers.Authorization = `Bearer ${key}`;
    const response = await fetch(located(path), {
      method: body === undefined ? "GET" : "POST",
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const decoded = await response.json().catch(() => null);
    if (response.ok) return decoded;
    // 401: no key, or one not accepted; 403: a key whose scope or collections fall short
    if (response.status !== 401 && response.status !== 403) {
      throw new ApiError(response.status, errorMessage(response.status, decoded));
    }
    if (sessionStorage.getItem(KEY_STORAGE) !== key) continue; // a new key came meanwhile
    sessionStorage.removeItem(KEY_STORAGE);
    const reason = errorMessage(response.status, decoded);
    const entered = await askForKey(
      response.status === 403
        ? `This API key may not do that (${reason}). Enter another.`
        : key
          ? `The API key was not accepted (${reason}). Enter it again.`
          : "This service needs an API key to read.",
    );
    if (!entered) {
      const why = response.status === 403 ? reason : "this service needs one to read";
      throw new ApiError(response.status, `No API key given: ${why}.`);
    }
    sessionStorage.setItem(KEY_STORAGE, entered);
  }
}

// fn over items with at most `limit` requests in flight; results in the items' order.
export async function mapLimited(items, limit, fn) {
  const results = new Array(items.length);
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const i = next++;
      results[i] = await fn(items[i], i);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return results;
}

// Every item of a paginated listing ({items, total}), in pages of the API's largest limit.
export async function listAll(path, params = {}) {
  const items = [];
  for (;;) {
    const query = new URLSearchParams({ ...params, limit: 1000, offset: items.length });
    const page = await api(`${path}?${query}`);
    items.push(...page.items);
    if (page.items.length === 0 || items.length >= page.total) return items;
  }
}
