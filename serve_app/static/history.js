// This browser's results, newest first, in local storage: bounded by count and by what storage takes
// (large images are kept as small thumbnails).

const STORAGE = "dreamlab.history";
export const MAX_ENTRIES = 40;
const THUMB_PX = 160;
const INLINE_B64_CHARS = 48000; // small images (the demo's) are kept as they are

function load() {
  try {
    const entries = JSON.parse(localStorage.getItem(STORAGE) || "[]");
    return Array.isArray(entries) ? entries : [];
  } catch { return []; }
}

function save(entries) {
  let kept = entries.slice(0, MAX_ENTRIES);
  while (kept.length) {
    try { localStorage.setItem(STORAGE, JSON.stringify(kept)); return kept; } catch {
      kept = kept.slice(0, Math.floor(kept.length / 2)); // over the quota: drop the oldest half
    }
  }
  try { localStorage.removeItem(STORAGE); } catch { /* storage disabled */ }
  return kept;
}

/** A data URL of the image, shrunk to THUMB_PX on its long side when large. */
async function thumbnail(mime, b64) {
  const full = `data:${mime};base64,${b64}`;
  if (b64.length <= INLINE_B64_CHARS) return full;
  const img = new Image();
  img.src = full;
  await img.decode();
  const scale = THUMB_PX / Math.max(img.naturalWidth, img.naturalHeight);
  const canvas = document.createElement("canvas");
  canvas.width = Math.max(1, Math.round(img.naturalWidth * scale));
  canvas.height = Math.max(1, Math.round(img.naturalHeight * scale));
  canvas.getContext("2d").drawImage(img, 0, 0, canvas.width, canvas.height);
  return canvas.toDataURL("image/jpeg", 0.85);
}

export class History {
  /** `list`: the <ol> to draw into; `onReuse(entry)`: puts an entry's settings back in the form. */
  constructor(list, onReuse) {
    this.list = list;
    this.onReuse = onReuse;
    this.entries = load();
    this.render();
  }

  /** Record every image of a native response made from `request`. */
  async add(request, response) {
    const made = [];
    for (const image of response.images) {
      made.push({
        time: Date.now(), mode: response.mode, family: response.family, prompt: request.prompt,
        negative_prompt: request.negative_prompt || "", seed: image.seed, width: response.width,
        height: response.height, steps: response.steps, scheduler: response.scheduler,
        total_s: response.timings.total_s, thumb: await thumbnail(`image/${image.format}`, image.b64),
      });
    }
    this.entries = save([...made.reverse(), ...load()]);
    this.render();
  }

  clear() {
    this.entries = save([]);
    this.render();
  }

  render() {
    this.list.replaceChildren();
    if (!this.entries.length) {
      const empty = document.createElement("li");
      empty.className = "hint";
      empty.textContent = "Nothing yet: results made in this browser appear here.";
      this.list.append(empty);
      return;
    }
    for (const entry of this.entries) {
      const li = document.createElement("li");
      const img = document.createElement("img");
      img.src = entry.thumb;
      img.alt = `${entry.mode}: ${entry.prompt} (seed ${entry.seed})`;
      img.loading = "lazy";
      const text = document.createElement("div");
      text.className = "history-text";
      const title = document.createElement("strong");
      title.textContent = `${entry.mode} · seed ${entry.seed}`;
      const prompt = document.createElement("span");
      prompt.textContent = entry.prompt;
      prompt.title = entry.prompt;
      const when = document.createElement("span");
      when.className = "hint";
      when.textContent = `${entry.width}×${entry.height}, ${entry.steps} steps, ${entry.total_s.toFixed(2)} s · `
        + new Date(entry.time).toLocaleString();
      const reuse = document.createElement("button");
      reuse.type = "button";
      reuse.className = "small";
      reuse.textContent = "Reuse";
      reuse.setAttribute("aria-label", `Reuse the settings of ${entry.mode}, seed ${entry.seed}`);
      reuse.addEventListener("click", () => this.onReuse(entry));
      text.append(title, prompt, when);
      li.append(img, text, reuse);
      this.list.append(li);
    }
  }
}
