// One cell of the results grid per mode: its own progress bar, status, images (with download) and timings.

import { describeError } from "./api.js";

const COLD_STATES = new Set(["cold", "offloaded", "loading", "failed"]);
const urls = []; // blob URLs of the images on screen, revoked when the grid is cleared

function el(tag, className, text) {
  const e = document.createElement(tag);
  if (className) e.className = className;
  if (text !== undefined) e.textContent = text;
  return e;
}

function blobUrl(b64, mime) {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const url = URL.createObjectURL(new Blob([bytes], { type: mime }));
  urls.push(url);
  return url;
}

export function clearGrid(grid) {
  while (urls.length) URL.revokeObjectURL(urls.pop());
  grid.replaceChildren();
}

function seconds(v) { return `${Number(v).toFixed(v < 10 ? 2 : 1)} s`; }

export class ResultCell {
  /** A cell for `mode` (an entry of `GET v1/modes`) in `grid`; `onCancel()` stops this cell's request. */
  constructor(grid, mode, onCancel) {
    this.mode = mode;
    this.root = el("article", "cell");
    this.root.dataset.mode = mode.name;
    this.root.dataset.state = "waiting";
    this.root.dataset.progressEvents = "0";
    this.root.setAttribute("aria-busy", "true");
    this.root.setAttribute("aria-label", `Result of mode ${mode.name}`);
    const head = el("header", "cell-head");
    const title = el("h3", "", mode.name);
    const family = el("span", "tag", mode.family);
    this.cancelButton = el("button", "small", "Cancel");
    this.cancelButton.type = "button";
    this.cancelButton.setAttribute("aria-label", `Cancel ${mode.name}`);
    this.cancelButton.addEventListener("click", onCancel);
    head.append(title, family, this.cancelButton);
    this.bar = el("progress", "");
    this.bar.max = 1;
    this.bar.removeAttribute("value"); // indeterminate until the first step
    this.bar.setAttribute("aria-label", `Progress of ${mode.name}`);
    this.status = el("p", "status");
    this.images = el("div", "images");
    this.timings = el("dl", "timings");
    this.root.append(head, this.bar, this.status, this.images, this.timings);
    grid.append(this.root);
    const cold = COLD_STATES.has(mode.state);
    this.root.classList.toggle("cold", cold);
    this.setStatus(cold ? `Loading the model (${mode.state}, from ${mode.tier})…` : "Waiting for a slot…");
  }

  setStatus(text, kind = "") {
    this.status.textContent = text;
    this.status.className = `status ${kind}`;
  }

  progress(ev) {
    this.root.dataset.state = "running";
    this.root.dataset.progressEvents = String(Number(this.root.dataset.progressEvents) + 1);
    this.root.dataset.step = String(ev.step);
    this.root.dataset.total = String(ev.total);
    this.root.dataset.eta = String(ev.eta_s);
    this.root.classList.remove("cold");
    this.bar.max = ev.total;
    this.bar.value = ev.step;
    this.setStatus(`Step ${ev.step}/${ev.total} · ${seconds(ev.elapsed_s)} · about ${seconds(ev.eta_s)} left`);
  }

  done(response, prompt) {
    this.finish("done");
    this.bar.max = 1;
    this.bar.value = 1;
    this.setStatus(`${response.width}×${response.height} · ${response.steps} steps`, "info");
    for (const image of response.images) {
      const mime = `image/${image.format}`;
      const url = blobUrl(image.b64, mime);
      const figure = el("figure", "");
      const img = el("img", "");
      img.src = url;
      img.alt = `${response.mode}: ${prompt} (seed ${image.seed})`;
      img.width = response.width;
      img.height = response.height;
      const caption = el("figcaption", "");
      const link = el("a", "download", "Download");
      link.href = url;
      link.download = `dreamlab-${response.mode}-${image.seed}.${image.format === "jpeg" ? "jpg" : image.format}`;
      link.setAttribute("aria-label", `Download ${response.mode}, seed ${image.seed}`);
      caption.append(el("span", "", `seed ${image.seed} `), link);
      figure.append(img, caption);
      this.images.append(figure);
    }
    const t = response.timings;
    this.timings.append(el("dt", "", "scheduler"), el("dd", "", response.scheduler));
    const rows = [["inference", t.inference_s], ["encode", t.encode_s], ["total", t.total_s],
      ["overhead", t.overhead_s]];
    if (t.load_s !== undefined && t.load_s !== null) rows.push([`load (${t.load_tier || "disk"})`, t.load_s]);
    if (t.replica_start_s !== undefined && t.replica_start_s !== null) rows.push(["replica start", t.replica_start_s]);
    for (const [name, value] of rows) this.timings.append(el("dt", "", name), el("dd", "", seconds(value)));
    if (t.adapter_loads) this.timings.append(el("dt", "", "adapter files read"), el("dd", "", String(t.adapter_loads)));
  }

  failed(err) {
    if (err && err.name === "AbortError") {
      this.finish("cancelled");
      this.setStatus("Cancelled: the generation was stopped.", "warn");
      return;
    }
    this.finish("error");
    this.setStatus(describeError(err), "error");
    this.root.setAttribute("role", "alert");
  }

  finish(state) {
    this.root.dataset.state = state;
    this.root.classList.remove("cold");
    this.root.setAttribute("aria-busy", "false");
    this.cancelButton.hidden = true;
    if (state !== "done") this.bar.value = this.bar.value || 0;
  }
}
