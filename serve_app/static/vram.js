// The VRAM panel: one bar per device (each model's footprint, reserved, free) and the RAM tier per node,
// from `GET v1/registry`.

import { api, describeError } from "./api.js";

export function formatBytes(n) {
  if (n === null || n === undefined) return "?";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  let v = Math.abs(n);
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i += 1; }
  return `${n < 0 ? "-" : ""}${v >= 100 || i === 0 ? v.toFixed(0) : v.toFixed(1)} ${units[i]}`;
}

/** "ab12cd34…:gpu0" for a long Ray node id. */
function shortName(name) {
  const [node, ...rest] = name.split(":");
  const short = node.length > 12 ? `${node.slice(0, 8)}…` : node;
  return [short, ...rest].join(":");
}

function el(tag, className, text) {
  const e = document.createElement(tag);
  if (className) e.className = className;
  if (text !== undefined) e.textContent = text;
  return e;
}

function segment(className, bytes, whole, label) {
  const s = el("span", `seg ${className}`);
  s.style.width = `${Math.max(0, Math.min(100, (100 * bytes) / whole))}%`;
  s.title = `${label}: ${formatBytes(bytes)}`;
  return s;
}

function colour(mode) { // a stable colour class per mode name
  let h = 0;
  for (const c of mode) h = (h * 31 + c.charCodeAt(0)) >>> 0;
  return `c${h % 6}`;
}

function modelList(items, tier) {
  const ul = el("ul", "models");
  if (!items.length) ul.append(el("li", "hint", `no model in ${tier}`));
  for (const item of items) {
    const li = el("li");
    li.dataset.mode = item.mode;
    li.append(el("span", `swatch ${colour(item.mode)}`), el("strong", "", item.mode),
      el("span", "", ` ${formatBytes(item.bytes)} · ${item.note}`));
    ul.append(li);
  }
  return ul;
}

function deviceBlock(d) {
  const box = el("div", "device");
  box.dataset.device = d.device;
  const head = el("div", "device-head");
  const name = el("strong", "device-name", shortName(d.device));
  name.title = d.device;
  head.append(name, el("span", "tier-tag", d.simulated ? "VRAM (simulated)" : "VRAM"));
  const whole = Math.max(1, d.budget_bytes);
  const bar = el("div", "bar");
  bar.setAttribute("role", "img");
  bar.setAttribute("aria-label", `${d.device}: ${formatBytes(d.used_bytes)} used, ${formatBytes(d.reserved_bytes)} `
    + `reserved, ${formatBytes(d.free_bytes)} free of ${formatBytes(d.budget_bytes)}`);
  for (const m of d.models) bar.append(segment(`used ${colour(m.mode)}`, m.footprint_bytes, whole, m.mode));
  bar.append(segment("reserved", d.reserved_bytes, whole, "reserved"));
  const legend = el("p", "legend",
    `used ${formatBytes(d.used_bytes)} · reserved ${formatBytes(d.reserved_bytes)} · free `
    + `${formatBytes(d.free_bytes)} of ${formatBytes(d.budget_bytes)} budget`
    + (d.total_bytes !== d.budget_bytes ? ` (${formatBytes(d.total_bytes)} device)` : ""));
  const models = d.models.map((m) => ({
    mode: m.mode, bytes: m.footprint_bytes,
    note: m.state === "evicting" ? `evicting to ${m.evict_to || "disk"}` : (m.inflight ? `busy (${m.inflight})` : "idle"),
  }));
  box.append(head, bar, legend, modelList(models, "VRAM"));
  return box;
}

function nodeBlock(n) {
  const box = el("div", "device node");
  box.dataset.node = n.node;
  const head = el("div", "device-head");
  const name = el("strong", "device-name", shortName(n.node));
  name.title = n.node;
  head.append(name, el("span", "tier-tag", "RAM tier"));
  const whole = Math.max(1, n.ram_budget_bytes);
  const bar = el("div", "bar");
  bar.setAttribute("role", "img");
  bar.setAttribute("aria-label", `${n.node} RAM tier: ${formatBytes(n.ram_used_bytes)} of ${formatBytes(whole)}`);
  for (const m of n.models) bar.append(segment(`used ${colour(m.mode)}`, m.host_bytes, whole, m.mode));
  const legend = el("p", "legend", `${formatBytes(n.ram_used_bytes)} of ${formatBytes(n.ram_budget_bytes)} host memory`);
  const models = n.models.map((m) => ({ mode: m.mode, bytes: m.host_bytes, note: m.dropping ? "dropping" : "offloaded" }));
  box.append(head, bar, legend, modelList(models, "RAM"));
  return box;
}

export class VramPanel {
  constructor(root, stamp, everyMs = 2000) {
    this.root = root;
    this.stamp = stamp;
    this.everyMs = everyMs;
    this.timer = null;
    this.listeners = [];
  }

  /** `fn(stats)` after each successful refresh. */
  onStats(fn) { this.listeners.push(fn); }

  start() {
    const tick = async () => {
      if (!document.hidden) await this.refresh();
      this.timer = setTimeout(tick, this.everyMs);
    };
    tick();
  }

  async refresh() {
    let stats;
    try {
      stats = await api("v1/registry");
    } catch (err) {
      this.root.dataset.state = "error";
      this.stamp.textContent = describeError(err);
      return;
    }
    this.draw(stats);
    for (const fn of this.listeners) fn(stats);
  }

  draw(stats) {
    const blocks = [];
    if (stats.draining) blocks.push(el("p", "warn", "Draining: new work is refused while in-flight work finishes."));
    if (!stats.devices.length) blocks.push(el("p", "hint", "No device reports yet (no registry, or no replica)."));
    blocks.push(...stats.devices.map(deviceBlock), ...(stats.nodes || []).map(nodeBlock));
    this.root.replaceChildren(...blocks);
    this.root.dataset.state = "ok";
    this.root.dataset.devices = String(stats.devices.length);
    this.stamp.textContent = `Updated ${new Date().toLocaleTimeString()}`;
  }
}
