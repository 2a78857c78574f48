// Calls to the Dream Lab API: keys from local storage, errors in the API's own shape, the SSE stream.
// URLs are relative: the page's <base href> is where the app is mounted.

const API_KEY = "dreamlab.apiKey";
const ADMIN_KEY = "dreamlab.adminKey";

function stored(name) {
  try { return localStorage.getItem(name) || ""; } catch { return ""; }
}

function store(name, value) {
  try {
    if (value) localStorage.setItem(name, value); else localStorage.removeItem(name);
  } catch { /* storage disabled: the key lives in the field only */ }
}

export const keys = {
  get api() { return stored(API_KEY); },
  set api(value) { store(API_KEY, value.trim()); },
  get admin() { return stored(ADMIN_KEY); },
  set admin(value) { store(ADMIN_KEY, value.trim()); },
};

/** An error as the API said it: `status` and the native `{type, message, param, ...}`. */
export class ApiError extends Error {
  constructor(status, error) {
    super(error.message || `HTTP ${status}`);
    this.status = status;
    this.error = error;
  }
}

/** "message (param: x)" with the extra numbers some errors carry (a 507's needed/free bytes). */
export function describeError(err) {
  if (err instanceof ApiError) {
    const e = err.error;
    const extra = Object.entries(e)
      .filter(([k, v]) => !["type", "message", "param"].includes(k) && v !== null && typeof v !== "object")
      .map(([k, v]) => `${k}: ${v}`);
    const param = e.param ? ` (param: ${e.param})` : "";
    const status = err.status ? `${err.status} ${e.type || "error"}: ` : "";
    return `${status}${e.message}${param}${extra.length ? ` [${extra.join(", ")}]` : ""}`;
  }
  if (err && err.name === "AbortError") return "cancelled";
  return `network error: ${err && err.message ? err.message : err}`;
}

function headers(admin, json) {
  const h = {};
  const key = admin ? (keys.admin || keys.api) : keys.api;
  if (key) h.Authorization = `Bearer ${key}`;
  if (json) h["Content-Type"] = "application/json";
  return h;
}

/** The ApiError of a response that is not a 2xx (its JSON error, or its text when it is not JSON). */
async function errorOf(response) {
  const text = await response.text();
  try {
    const body = JSON.parse(text);
    if (body && body.error && typeof body.error === "object") return new ApiError(response.status, body.error);
    if (body && body.detail) return new ApiError(response.status, { type: "http_error", message: String(body.detail) });
  } catch { /* not JSON */ }
  return new ApiError(response.status, { type: "http_error", message: text.slice(0, 300) || response.statusText });
}

/** JSON of `path` (GET, or POST with `body`); `admin` sends the admin key. Throws ApiError. */
export async function api(path, { method, body, admin = false, signal } = {}) {
  const response = await fetch(path, {
    method: method || (body === undefined ? "GET" : "POST"),
    headers: headers(admin, body !== undefined),
    body: body === undefined ? undefined : JSON.stringify(body),
    signal,
  });
  if (!response.ok) throw await errorOf(response);
  return response.json();
}

/** Server-sent events of a fetch response body: yields {event, data} (data parsed as JSON). */
export async function* sseEvents(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value.replace(/\r\n?/g, "\n");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        let event = "message";
        const data = [];
        for (const line of block.split("\n")) {
          if (line.startsWith("event:")) event = line.slice(6).trim();
          else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
        }
        if (data.length) yield { event, data: JSON.parse(data.join("\n")) };
      }
    }
  } finally {
    reader.releaseLock();
  }
}

/**
 * One txt2img through `POST v1/txt2img/stream`: calls `onProgress({step,total,elapsed_s,eta_s})` per step
 * and returns the native response. Aborting `signal` closes the stream, which stops the generation.
 */
export async function streamTxt2img(body, { signal, onProgress }) {
  const response = await fetch("v1/txt2img/stream", {
    method: "POST", headers: { ...headers(false, true), Accept: "text/event-stream" },
    body: JSON.stringify(body), signal,
  });
  if (!response.ok) throw await errorOf(response);
  for await (const { event, data } of sseEvents(response)) {
    if (event === "progress") onProgress(data);
    else if (event === "result") return data;
    else if (event === "error") throw new ApiError(data.status, data.error);
  }
  throw new ApiError(0, { type: "stream_error", message: "the stream ended without a result" });
}
