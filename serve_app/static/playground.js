// The playground page: modes (with load/unload), settings within the chosen modes' limits, LoRAs, Compare
// (one prompt and seed streamed to every selected mode at once), Cancel, history and the VRAM panel.

import { api, describeError, keys, streamTxt2img } from "./api.js";
import { ControlPanel } from "./control.js";
import { History } from "./history.js";
import { ResultCell, clearGrid } from "./results.js";
import { VramPanel } from "./vram.js";

const MAX_SEED = 4294967295;
const SELECTED = "dreamlab.selectedModes";
const $ = (id) => document.getElementById(id);

function storedSelection() { // null: never chosen in this browser
  try {
    const names = JSON.parse(localStorage.getItem(SELECTED) || "null");
    return Array.isArray(names) ? names : null;
  } catch { return null; }
}

const state = {
  modes: [], // entries of GET v1/modes
  loras: [], // LoRA entries of GET v1/adapters
  selected: new Set(storedSelection() || []),
  firstVisit: storedSelection() === null,
  controllers: new Set(), // one AbortController per running request
};

function el(tag, className, text) {
  const e = document.createElement(tag);
  if (className) e.className = className;
  if (text !== undefined) e.textContent = text;
  return e;
}

// -- banner --------------------------------------------------------------------------------------------
function banner(text, kind = "error") {
  const box = $("banner");
  if (!box.hidden && box.firstChild && box.firstChild.textContent === text) return; // a poll saying it again
  const close = el("button", "small", "Dismiss");
  close.type = "button";
  close.addEventListener("click", () => { box.hidden = true; });
  box.replaceChildren(el("span", "", text), close);
  box.className = `banner ${kind}`;
  box.hidden = false;
}

function apiFailed(what, err) {
  banner(`${what}: ${describeError(err)}`);
  if (err.status === 401 || err.status === 403) $("keys").open = true;
}

// -- modes -----------------------------------------------------------------------------------------------
const canTxt2img = (m) => m.jobs.includes("txt2img");
const selectedModes = () => state.modes.filter((m) => state.selected.has(m.name) && canTxt2img(m));

function saveSelection() {
  try { localStorage.setItem(SELECTED, JSON.stringify([...state.selected])); } catch { /* storage disabled */ }
}

function modeRow(mode) {
  const row = el("div", "mode-row");
  row.dataset.mode = mode.name;
  const box = el("input");
  box.type = "checkbox";
  box.id = `mode-${mode.name}`;
  box.value = mode.name;
  box.addEventListener("change", () => {
    if (box.checked) state.selected.add(mode.name); else state.selected.delete(mode.name);
    saveSelection();
    applyLimits();
  });
  const label = el("label", "mode-label");
  label.htmlFor = box.id;
  label.append(el("strong", "", mode.name), el("span", "tag family", mode.family), el("span", "state"));
  const note = el("span", "hint note");
  const load = el("button", "small", "Load");
  load.type = "button";
  load.dataset.action = "load";
  load.setAttribute("aria-label", `Load mode ${mode.name}`);
  const unload = el("button", "small", "Unload");
  unload.type = "button";
  unload.dataset.action = "unload";
  unload.setAttribute("aria-label", `Unload mode ${mode.name}`);
  for (const b of [load, unload]) b.addEventListener("click", () => modeAction(mode.name, b.dataset.action, b));
  row.append(box, label, note, load, unload);
  return row;
}

function updateRow(row, mode) {
  const box = row.querySelector("input");
  const ok = canTxt2img(mode);
  box.disabled = !ok;
  box.checked = ok && state.selected.has(mode.name);
  const st = row.querySelector(".state");
  st.textContent = mode.state + (mode.default ? " · default" : "");
  st.className = `state state-${mode.state}`;
  const bytes = mode.measured_bytes ?? mode.estimated_bytes;
  row.querySelector(".note").textContent = ok
    ? `${mode.tier} · ${mode.measured_bytes ? "" : "~"}${(bytes / 2 ** 20).toFixed(0)} MiB`
    : `${mode.jobs.filter((j) => j !== "inpaint").join(", ")} only: not for Compare`;
  row.title = `${mode.checkpoint} (${mode.format}), ${mode.replicas} replica(s), ${mode.loaded_replicas} loaded`;
  const busy = row.dataset.busy === "1";
  row.querySelector('[data-action="load"]').disabled = busy || mode.state === "ready";
  row.querySelector('[data-action="unload"]').disabled = busy || mode.loaded_replicas === 0 && mode.tier === "disk";
}

function drawModes() {
  const list = $("mode-list");
  if (!state.modes.length) return;
  if (!list.querySelector(".mode-row")) list.replaceChildren();
  for (const mode of state.modes) {
    let row = list.querySelector(`.mode-row[data-mode="${CSS.escape(mode.name)}"]`);
    if (!row) { row = modeRow(mode); list.append(row); }
    updateRow(row, mode);
  }
}

async function refreshModes() {
  try {
    const answer = await api("v1/modes");
    state.modes = answer.modes;
    if (state.firstVisit) { // first visit: the default mode is selected
      state.selected = new Set([answer.default_mode]);
      state.firstVisit = false;
      saveSelection();
    }
    drawModes();
    applyLimits();
    $("mode-list").dataset.loaded = "true";
  } catch (err) {
    apiFailed("GET v1/modes", err);
  }
}

async function modeAction(name, action, button) {
  const row = button.closest(".mode-row");
  row.dataset.busy = "1";
  button.disabled = true;
  const label = button.textContent;
  button.textContent = action === "load" ? "Loading…" : "Unloading…";
  try {
    const ans = await api(`v1/modes/${encodeURIComponent(name)}/${action}`, { method: "POST", admin: true });
    const took = ans.load_s ? ` in ${ans.load_s.toFixed(2)} s${ans.load_tier ? ` from ${ans.load_tier}` : ""}` : "";
    banner(`${name}: ${ans.status.replace("_", " ")}${took}`, "info");
  } catch (err) {
    apiFailed(`${action} ${name}`, err);
  } finally {
    row.dataset.busy = "0";
    button.textContent = label;
    await Promise.all([refreshModes(), vram.refresh()]);
  }
}

// -- settings within the selected modes' limits -------------------------------------------------------
function common(modes, pick) { // the one value every mode has, else undefined
  const values = new Set(modes.map(pick));
  return values.size === 1 ? [...values][0] : undefined;
}

function applyLimits() {
  const modes = selectedModes();
  const min = (key) => (modes.length ? Math.min(...modes.map((m) => m.limits[key])) : undefined);
  const set = (id, max, def) => {
    const input = $(id);
    if (max !== undefined) input.max = String(max); else input.removeAttribute("max");
    input.placeholder = def === undefined ? (modes.length > 1 ? "per mode" : "") : String(def);
  };
  set("width", min("max_width"), common(modes, (m) => m.defaults.width));
  set("height", min("max_height"), common(modes, (m) => m.defaults.height));
  set("steps", min("max_steps"), common(modes, (m) => m.defaults.steps));
  set("num-images", min("max_num_images"), undefined);
  $("guidance").placeholder = String(common(modes, (m) => m.defaults.guidance_scale) ?? "per mode");
  const scheduler = common(modes, (m) => m.scheduler);
  $("scheduler").options[0].textContent = scheduler ? `default (${scheduler})` : "the mode's default";
  drawSamplers();
  const n = modes.length;
  $("compare").textContent = n > 1 ? `Compare ${n} modes` : "Generate";
  $("compare").dataset.count = String(n);
  drawLoras();
}

function keepOnly(select, values) { // the select's options after its first become `values`, keeping the choice
  const kept = select.value;
  while (select.options.length > 1) select.remove(1);
  for (const value of values) select.append(new Option(value, value));
  select.value = values.includes(kept) ? kept : "";
}

function drawSamplers() { // the samplers every selected mode serves (`/v1/modes`), and the chosen one's types
  const lists = selectedModes().map((m) => m.samplers || {});
  const names = lists.length ? Object.keys(lists[0]).filter((n) => lists.every((l) => n in l)) : [];
  keepOnly($("scheduler"), names);
  drawScheduleTypes();
}

function drawScheduleTypes() {
  const sampler = $("scheduler").value;
  const lists = selectedModes().map((m) => (m.samplers || {})[sampler] || []);
  const types = sampler && lists.length ? lists[0].filter((t) => lists.every((l) => l.includes(t))) : [];
  keepOnly($("schedule-type"), types);
  $("schedule-type").disabled = !types.length;
}

const control = new ControlPanel();

// -- LoRAs -----------------------------------------------------------------------------------------------
async function loadAdapters() {
  try {
    const answer = await api("v1/adapters");
    state.loras = answer.adapters.filter((a) => a.kind === "lora");
    await control.load(answer.adapters);
  } catch (err) {
    apiFailed("GET v1/adapters", err);
  }
  drawLoras();
}

function drawLoras() {
  const box = $("lora-box");
  const list = $("lora-list");
  box.hidden = !state.loras.length;
  const families = new Set(selectedModes().map((m) => m.family));
  for (const lora of state.loras) {
    let row = list.querySelector(`[data-lora="${CSS.escape(lora.name)}"]`);
    if (!row) {
      row = el("div", "lora-row");
      row.dataset.lora = lora.name;
      const box2 = el("input");
      box2.type = "checkbox";
      box2.id = `lora-${lora.name}`;
      const label = el("label", "", "");
      label.htmlFor = box2.id;
      label.append(el("strong", "", lora.name), el("span", "tag family", lora.family || "any"),
        el("span", "hint", lora.rank ? ` rank ${lora.rank}` : ""));
      const weight = el("input", "weight");
      weight.type = "number";
      weight.step = "0.05";
      weight.value = "1";
      weight.id = `lora-weight-${lora.name}`;
      weight.setAttribute("aria-label", `Weight of LoRA ${lora.name}`);
      row.append(box2, label, weight, el("span", "hint note"));
      list.append(row);
    }
    const limits = selectedModes().filter((m) => m.family === lora.family).map((m) => m.limits.max_lora_weight);
    const weight = row.querySelector(".weight");
    if (limits.length) { weight.max = String(Math.min(...limits)); weight.min = String(-Math.min(...limits)); }
    row.querySelector(".note").textContent = families.has(lora.family) ? "" : `no selected ${lora.family} mode`;
  }
  control.draw(families);
}

function lorasFor(mode) {
  return state.loras
    .filter((l) => l.family === mode.family && $(`lora-${l.name}`)?.checked)
    .map((l) => ({ name: l.name, weight: Number($(`lora-weight-${l.name}`).value || 1) }));
}

// -- Compare ---------------------------------------------------------------------------------------------
function number(id) {
  const v = $(id).value.trim();
  return v === "" ? undefined : Number(v);
}

function requestBody() {
  const body = { prompt: $("prompt").value.trim() };
  const negative = $("negative-prompt").value.trim();
  if (negative) body.negative_prompt = negative;
  for (const [field, id] of [["width", "width"], ["height", "height"], ["steps", "steps"],
    ["guidance_scale", "guidance"], ["num_images", "num-images"]]) {
    const v = number(id);
    if (v !== undefined) body[field] = v;
  }
  if ($("scheduler").value) body.scheduler = $("scheduler").value;
  if ($("schedule-type").value) body.schedule_type = $("schedule-type").value;
  const seed = number("seed");
  body.seed = seed === undefined ? Math.floor(Math.random() * MAX_SEED) : seed; // one seed for every mode
  return body;
}

async function runOne(grid, mode, base) {
  const controller = new AbortController();
  state.controllers.add(controller);
  const cell = new ResultCell(grid, mode, () => controller.abort());
  const body = { ...base, mode: mode.name };
  const loras = lorasFor(mode);
  if (loras.length) body.loras = loras;
  const unit = control.unitFor(mode);
  if (unit) body.controls = [unit];
  try {
    const response = await streamTxt2img(body, { signal: controller.signal, onProgress: (ev) => cell.progress(ev) });
    cell.done(response, body.prompt);
    await history.add(body, response).catch(() => {});
  } catch (err) {
    cell.failed(err);
  } finally {
    state.controllers.delete(controller);
  }
}

async function compare() {
  const form = $("gen-form");
  if (state.controllers.size || !form.reportValidity()) return;
  await refreshModes(); // fresh states: a cold mode's cell says it is loading
  const modes = selectedModes();
  if (!modes.length) {
    banner("Pick at least one mode that makes images from text.");
    return;
  }
  $("banner").hidden = true;
  const base = requestBody();
  const grid = $("results");
  clearGrid(grid);
  const summary = el("p", "run-summary", `“${base.prompt}” · seed ${base.seed}`);
  grid.append(summary);
  grid.dataset.state = "running";
  grid.dataset.run = String(Number(grid.dataset.run || 0) + 1);
  grid.dataset.seed = String(base.seed);
  $("compare").disabled = true;
  $("cancel").disabled = false;
  if (window.matchMedia("(max-width: 720px)").matches) grid.scrollIntoView({ block: "start" }); // a phone
  await Promise.allSettled(modes.map((m) => runOne(grid, m, base)));
  grid.dataset.state = "done";
  $("compare").disabled = false;
  $("cancel").disabled = true;
  refreshModes();
  vram.refresh();
}

function cancelAll() {
  for (const controller of state.controllers) controller.abort();
}

function reuse(entry) {
  $("prompt").value = entry.prompt;
  $("negative-prompt").value = entry.negative_prompt || "";
  $("seed").value = String(entry.seed);
  $("width").value = String(entry.width);
  $("height").value = String(entry.height);
  $("steps").value = String(entry.steps);
  if (state.modes.some((m) => m.name === entry.mode)) {
    state.selected.add(entry.mode);
    saveSelection();
    drawModes();
    applyLimits();
  }
  $("prompt").focus();
}

// -- wiring ----------------------------------------------------------------------------------------------
const vram = new VramPanel($("vram"), $("vram-updated"));
const history = new History($("history"), reuse);

function wire() {
  const form = $("gen-form");
  form.addEventListener("submit", (ev) => { ev.preventDefault(); compare(); });
  form.addEventListener("keydown", (ev) => {
    const inText = ev.target.tagName === "TEXTAREA";
    if (ev.key === "Enter" && (ev.ctrlKey || ev.metaKey || (inText && !ev.shiftKey))) {
      ev.preventDefault();
      form.requestSubmit();
    }
  });
  document.addEventListener("keydown", (ev) => { if (ev.key === "Escape" && state.controllers.size) cancelAll(); });
  $("cancel").addEventListener("click", cancelAll);
  $("random-seed").addEventListener("click", () => { $("seed").value = String(Math.floor(Math.random() * MAX_SEED)); });
  $("clear-history").addEventListener("click", () => history.clear());
  for (const [id, which] of [["api-key", "api"], ["admin-key", "admin"]]) {
    const input = $(id);
    input.value = keys[which];
    input.addEventListener("change", () => {
      keys[which] = input.value;
      refreshModes();
      loadAdapters();
      vram.refresh();
    });
  }
  setInterval(() => { if (!document.hidden && !state.controllers.size) refreshModes(); }, 5000);
}

wire();
$("scheduler").addEventListener("change", drawScheduleTypes);
refreshModes().then(loadAdapters);
vram.start();
document.body.dataset.ready = "true";
