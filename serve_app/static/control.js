// The playground's ControlNet panel: an uploaded image, a ControlNet (each goes to its family's modes only),
// a preprocessor (from /controlnet/module_list) and a weight; `unitFor(mode)` is the request's unit, if any.

import { api } from "./api.js";

const $ = (id) => document.getElementById(id);

function fileBase64(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(String(reader.result).split(",", 2)[1]); // the data URL's payload
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

export class ControlPanel {
  constructor() {
    this.nets = []; // ControlNet entries of GET v1/adapters
    this.image = null; // the upload, base64
    $("control-image").addEventListener("change", async (ev) => {
      const file = ev.target.files[0];
      this.image = file ? await fileBase64(file) : null;
      $("control-image").dataset.ready = this.image ? "1" : "";
    });
  }

  async load(adapters) {
    this.nets = adapters.filter((a) => a.kind === "controlnet");
    $("control-box").hidden = !this.nets.length;
    const models = $("control-model");
    for (const net of this.nets) {
      if (![...models.options].some((o) => o.value === net.name)) {
        models.append(new Option(`${net.name} (${net.family})`, net.name));
      }
    }
    const modules = $("control-preprocessor");
    if (modules.options.length) return;
    try {
      for (const name of (await api("controlnet/module_list")).module_list) modules.append(new Option(name, name));
    } catch {
      modules.append(new Option("none", "none"));
    }
  }

  /** Which selected modes a chosen ControlNet will go to (by family), as a note under the panel. */
  draw(families) {
    const net = this.nets.find((n) => n.name === $("control-model").value);
    $("control-note").textContent = net && !families.has(net.family) ? `no selected ${net.family} mode` : "";
  }

  unitFor(mode) {
    const net = this.nets.find((n) => n.name === $("control-model").value);
    if (!net || !this.image || net.family !== mode.family) return null;
    return { model: net.name, image: this.image, preprocessor: $("control-preprocessor").value || "none",
      weight: Number($("control-weight").value || 1) };
  }
}
