// The viewer: one study, its series, one to four viewports. Built on the node's DICOMweb API only
// (QIDO-RS for the series, WADO-RS metadata, frames and rendered frames), plus /api for image
// processing (scikit-image on the server) and the data dictionary.
//
// Pixels (see README "Viewer: how pixels get to the screen"):
// - grey images arrive as decoded frames, uncompressed, 16 bits kept (`/frames/N` with
//   application/octet-stream; the node decodes every transfer syntax it holds). The modality LUT
//   (rescale), the VOI (window, VOI LUT Function LINEAR / LINEAR_EXACT / SIGMOID, else the
//   0.5–99.5 percentile window) and MONOCHROME1 run here, by the formulas of PS3.3 C.11.2.1.2 that
//   `dicomnode convert` uses (node/processing/display.py), so the same window gives the same grey
//   levels, window/level changes cost no request, and HU are exact.
// - colour images (RGB, YBR, palette) have no window: they arrive rendered by the node's display
//   pipeline as PNG (`/frames/N/rendered`), so they are the converter's pixels by construction.
// - the rare grey objects whose LUTs are tables (Modality or VOI LUT Sequence), 1-bit and float
//   pixel data arrive rendered too, re-rendered by the node for each window.
import {
  BASE, HttpError, TAG, download, el, firstPart, formatDate, formatTime, item, json, markNav, number, numbers,
  request, text, value, values,
} from "./api.js";

const study = decodeURIComponent(location.pathname.split("/")[2] || "");
const OCTETS = 'multipart/related; type="application/octet-stream"; transfer-syntax=1.2.840.10008.1.2.1';
const PRESETS = [
  // [key, label, center, width]
  ["1", "CT brain", 40, 80], ["2", "CT lung", -600, 1500], ["3", "CT abdomen", 40, 400], ["4", "CT bone", 400, 1800],
  ["5", "CT mediastinum", 50, 350],
];
const TOOLS = [
  // [id, button label, key, what it is]
  ["wl", "W/L", "W", "Window/level"], ["pan", "Pan", "P", "Pan"], ["zoom", "Zoom", "Z", "Zoom"],
  ["length", "Length", "L", "Length"], ["angle", "Angle", "A", "Angle"], ["rect", "Rect", "R", "Rectangle ROI"],
  ["ellipse", "Ellipse", "E", "Ellipse ROI"], ["freehand", "Freehand", "D", "Freehand ROI"],
];
const CACHE_BYTES = 768 * 1024 * 1024;
const CONCURRENCY = 6;

// -- state ------------------------------------------------------------------------------------------
const series = []; // {uid, ds, stack: Promise<Slice[]>|null, slices: Slice[]|null, button}
const images = new Map(); // slice key -> {state: "loading"|"ready"|"error", img, error, bytes}
let cachedBytes = 0;
const measurements = new Map(); // slice key -> [measurement]
let selected = null; // the selected measurement
let tool = "wl";
let viewports = [];
let active = 0;
let layout = "1x1";
let showOverlay = true;
let firstShown = false;
const processedCache = new Map(); // key|window|op -> Promise<{bitmap, figures}>

// -- page -------------------------------------------------------------------------------------------
const main = document.getElementById("main");
const toolbar = el("div", { class: "toolbar", role: "toolbar", "aria-label": "Viewer tools" });
const seriesPanel = el("nav", { class: "series", "aria-label": "Series" });
const grid = el("div", { class: "grid-views l1x1" });
const side = el("aside", { class: "side", hidden: true, "aria-label": "Details" });
const stage = el("div", { class: "stage" }, grid, side);
main.append(el("div", { class: "viewer" }, toolbar, seriesPanel, stage));
main.style.overflow = "hidden";
markNav("");

function button(label, title, onclick, attrs = {}) {
  return el("button", { type: "button", text: label, title, "aria-label": title, onclick, ...attrs });
}

const toolButtons = {};
for (const [id, label, key, what] of TOOLS) {
  toolButtons[id] = button(label, `${what} (${key})`, () => setTool(id), { "aria-pressed": String(id === tool) });
  toolbar.append(toolButtons[id]);
}
toolbar.append(el("span", { class: "sep" }));
const presetSelect = el("select", { "aria-label": "Window preset", title: "Window preset (0-5)" },
  el("option", { value: "", text: "File window (0)" }), PRESETS.map(([k, l, c, w]) => el("option", { value: k, text: `${l.replace("CT ", "")} ${c}/${w} (${k})` })));
presetSelect.addEventListener("change", () => { if (presetSelect.value) preset(presetSelect.value); else defaultWindow(); presetSelect.blur(); });
toolbar.append(presetSelect,
  button("Invert", "Invert (I)", () => act((v) => { v.view.invert = !v.view.invert; })),
  button("⟲", "Rotate left ([)", () => act((v) => { v.view.rot = (v.view.rot + 3) % 4; v.fit(); })),
  button("⟳", "Rotate right (])", () => act((v) => { v.view.rot = (v.view.rot + 1) % 4; v.fit(); })),
  button("⇋", "Flip horizontal (H)", () => act((v) => { v.view.flipH = !v.view.flipH; })),
  button("⇵", "Flip vertical (V)", () => act((v) => { v.view.flipV = !v.view.flipV; })),
  button("Fit", "Fit to viewport (F)", () => act((v) => v.fit())),
  button("1:1", "Actual pixels", () => act((v) => { v.view.scale = 1 / devicePixelRatio; v.view.fitted = false; v.view.panX = v.view.panY = 0; })),
  button("Reset", "Reset view, window and processing (X)", () => act((v) => v.reset())),
  el("span", { class: "sep" }));
const layoutButtons = {};
for (const l of ["1x1", "1x2", "2x2"]) {
  layoutButtons[l] = button(l.replace("x", "×"), `Layout ${l.replace("x", " by ")}`, () => setLayout(l), { "aria-pressed": String(l === layout) });
  toolbar.append(layoutButtons[l]);
}
const cineButton = button("▶", "Cine: play or stop (Space)", () => toggleCine());
const fpsInput = el("input", { type: "number", min: "1", max: "120", step: "1", value: "10", "aria-label": "Cine frames per second", title: "Frames per second", });
toolbar.append(el("span", { class: "sep" }), cineButton, fpsInput,
  button("Aa", "Overlay text on or off (O)", () => { showOverlay = !showOverlay; viewports.forEach((v) => v.el.classList.toggle("no-overlay", !showOverlay)); }),
  button("Tags", "DICOM tags of the shown instance (T)", () => openSide("tags")),
  button("Measures", "Measurements (M)", () => openSide("measures")),
  button("Process", "Image processing (G)", () => openSide("process")),
  button("⤓PNG", "Export the view as PNG", () => exportPng()),
  button("⤓DCM", "Download the shown instance (DICOM)", () => downloadInstance()),
  button("?", "Keyboard shortcuts (?)", () => openSide("help")));

function act(f) {
  const v = viewports[active];
  if (!v) return;
  f(v);
  v.draw();
}

function setTool(id) {
  tool = id;
  for (const [k, b] of Object.entries(toolButtons)) b.setAttribute("aria-pressed", String(k === id));
  pending = null;
}

// -- image description ------------------------------------------------------------------------------

// What a frame needs to be shown: from its instance's metadata (functional groups of enhanced
// objects first, then the data set), in the order display.py reads them.
function describe(inst, frame, seriesUID) {
  const perFrame = item(inst, TAG.PerFrameFunctionalGroupsSequence, frame - 1);
  const shared = item(inst, TAG.SharedFunctionalGroupsSequence);
  const group = (tag) => (perFrame && item(perFrame, tag)) || (shared && item(shared, tag)) || null;
  const photometric = String(value(inst, TAG.PhotometricInterpretation, "MONOCHROME2")).trim().toUpperCase();
  const bits = number(inst, TAG.BitsAllocated, 16);
  const samples = number(inst, TAG.SamplesPerPixel, 1);
  const transform = group(TAG.PixelValueTransformationSequence);
  const slope = number(inst, TAG.RescaleSlope) ?? (transform ? number(transform, TAG.RescaleSlope) : undefined) ?? 1;
  const intercept = number(inst, TAG.RescaleIntercept) ?? (transform ? number(transform, TAG.RescaleIntercept) : undefined) ?? 0;
  const voiGroup = group(TAG.FrameVOILUTSequence);
  const centers = numbers(inst, TAG.WindowCenter).length ? numbers(inst, TAG.WindowCenter) : voiGroup ? numbers(voiGroup, TAG.WindowCenter) : [];
  const widths = numbers(inst, TAG.WindowWidth).length ? numbers(inst, TAG.WindowWidth) : voiGroup ? numbers(voiGroup, TAG.WindowWidth) : [];
  const fn = String(value(inst, TAG.VOILUTFunction, "LINEAR") || "LINEAR").trim().toUpperCase();
  const measures = group(TAG.PixelMeasuresSequence);
  let spacing = null;
  const ps = (measures && numbers(measures, TAG.PixelSpacing).length === 2) ? numbers(measures, TAG.PixelSpacing) : numbers(inst, TAG.PixelSpacing);
  if (ps.length === 2 && ps[0] > 0 && ps[1] > 0) spacing = { row: ps[0], col: ps[1], at: "patient" };
  else {
    const ips = numbers(inst, TAG.ImagerPixelSpacing);
    if (ips.length === 2 && ips[0] > 0 && ips[1] > 0) spacing = { row: ips[0], col: ips[1], at: "detector" };
  }
  const plane = group(TAG.PlanePositionSequence);
  const ipp = numbers(inst, TAG.ImagePositionPatient).length === 3 ? numbers(inst, TAG.ImagePositionPatient) : plane ? numbers(plane, TAG.ImagePositionPatient) : [];
  const colour = samples === 3 || photometric === "PALETTE COLOR" || photometric.startsWith("RGB") || photometric.startsWith("YBR");
  const table = !!(inst[TAG.ModalityLUTSequence] || (inst[TAG.VOILUTSequence] && !centers.length));
  const floats = !!(inst[TAG.FloatPixelData] || inst[TAG.DoubleFloatPixelData]);
  const sop = value(inst, TAG.SOPInstanceUID);
  const mode = colour ? "colour" : table || bits === 1 || floats || ![8, 16, 32].includes(bits) || syntaxes.get(sop) === DEFLATED ? "server" : "grey";
  return {
    key: `${sop}#${frame}`, sop, series: seriesUID, frame, inst, mode, photometric, bits,
    stored: number(inst, TAG.BitsStored, bits), signed: number(inst, TAG.PixelRepresentation, 0) === 1,
    rows: number(inst, TAG.Rows, 0), cols: number(inst, TAG.Columns, 0), slope, intercept,
    window: centers.length && widths.length && widths[0] > 0 ? { c: centers[0], w: widths[0], fn } : null,
    spacing, ipp, units: value(inst, TAG.RescaleType) || (value(inst, TAG.Modality) === "CT" || String(value(inst, TAG.SOPClassUID, "")).startsWith("1.2.840.10008.5.1.4.1.1.2") ? "HU" : ""),
    frames: number(inst, TAG.NumberOfFrames, 1),
  };
}

function instanceURL(s) {
  return `${BASE}/studies/${study}/series/${s.series}/instances/${s.sop}`;
}

// -- loading ----------------------------------------------------------------------------------------
let queue = [];
let running = 0;

function want(slices) {
  // the loader's order: what the viewports show first, then their neighbours, nearest first
  queue = slices.filter((s) => !images.has(s.key));
  pump();
}

function pump() {
  while (running < CONCURRENCY && queue.length) {
    const s = queue.shift();
    if (images.has(s.key)) continue;
    load(s);
  }
}

async function load(s) {
  const entry = { state: "loading", img: null, error: null, bytes: 0 };
  images.set(s.key, entry);
  running++;
  try {
    entry.img = s.mode === "grey" ? await loadGrey(s) : await loadRendered(s, null);
    entry.bytes = entry.img.bytes;
    entry.state = "ready";
    cachedBytes += entry.bytes;
    evict();
  } catch (e) {
    entry.state = "error";
    entry.error = e.message;
    if (s.mode === "grey" && !(e instanceof HttpError && e.status === 401)) {
      // a frame the browser could not take as values: the node renders it instead
      s.mode = "server";
      images.delete(s.key);
      running--;
      return load(s);
    }
  }
  running--;
  for (const v of viewports) if (v.slice() && v.slice().key === s.key) v.draw();
  pump();
}

async function loadGrey(s) {
  const r = await request(`${instanceURL(s)}/frames/${s.frame}`, { headers: { Accept: OCTETS } });
  const part = firstPart(await r.arrayBuffer(), r.headers.get("Content-Type"));
  const copy = new Uint8Array(part.length); // aligned for the typed view
  copy.set(part);
  const count = s.rows * s.cols;
  const per = s.bits / 8;
  if (copy.length < count * per) throw new Error(`frame ${s.frame}: ${copy.length} bytes, ${count * per} expected`);
  const Type = s.bits === 8 ? (s.signed ? Int8Array : Uint8Array) : s.bits === 16 ? (s.signed ? Int16Array : Uint16Array) : (s.signed ? Int32Array : Uint32Array);
  const px = new Type(copy.buffer, 0, count);
  // keep Bits Stored only, sign-extended (the bits above may carry overlays or garbage)
  if (s.stored < s.bits) {
    const shift = 32 - s.stored;
    const mask = s.stored >= 32 ? 0xffffffff : (2 ** s.stored) - 1;
    for (let i = 0; i < count; i++) px[i] = s.signed ? (px[i] << shift) >> shift : px[i] & mask;
  }
  let min = Infinity, max = -Infinity;
  for (let i = 0; i < count; i++) { const v = px[i]; if (v < min) min = v; if (v > max) max = v; }
  return { kind: "grey", px, min, max, bytes: px.byteLength, auto: autoWindow(s, px, min, max) };
}

async function loadRendered(s, win) {
  const q = win ? `?window=${win.c},${win.w},${win.fn}` : "";
  const r = await request(`${instanceURL(s)}/frames/${s.frame}/rendered${q}`, { headers: { Accept: "image/png" } });
  const bitmap = await createImageBitmap(await r.blob());
  return { kind: "bitmap", bitmap, win, bytes: bitmap.width * bitmap.height * 4 };
}

function evict() {
  if (cachedBytes <= CACHE_BYTES) return;
  const keep = new Set();
  for (const v of viewports) {
    const stack = v.slices || [];
    for (let d = -40; d <= 40; d++) if (stack[v.pos + d]) keep.add(stack[v.pos + d].key);
  }
  for (const [k, e] of images) {
    if (cachedBytes <= CACHE_BYTES * 0.8) break;
    if (keep.has(k) || e.state !== "ready") continue;
    cachedBytes -= e.bytes;
    images.delete(k);
  }
}

// -- display values (PS3.3 C.11.2.1.2; display.py's window_function, auto_window) -----------------

function voi(x, c, w, fn) {
  if (fn === "SIGMOID") return 1 / (1 + Math.exp((-4 * (x - c)) / Math.max(w, 1e-9)));
  if (fn === "LINEAR_EXACT") return Math.min(1, Math.max(0, (x - c) / Math.max(w, 1e-9) + 0.5));
  w = Math.max(w, 1);
  if (w === 1) return x > c - 0.5 ? 1 : 0;
  return Math.min(1, Math.max(0, (x - (c - 0.5)) / (w - 1) + 0.5));
}

function percentile(sorted, p) {
  const at = (p / 100) * (sorted.length - 1);
  const lo = Math.floor(at), hi = Math.ceil(at);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * (at - lo);
}

// no window in the object: the 0.5th to 99.5th percentile of an even sample (every n-th pixel), as
// LINEAR_EXACT over [lo, hi]
function autoWindow(s, px, min, max) {
  const step = Math.max(1, Math.floor(px.length / 16384));
  const sample = [];
  for (let i = 0; i < px.length; i += step) sample.push(px[i] * s.slope + s.intercept);
  sample.sort((a, b) => a - b);
  let lo = percentile(sample, 0.5), hi = percentile(sample, 99.5);
  if (hi <= lo) {
    lo = Math.min(min * s.slope + s.intercept, max * s.slope + s.intercept);
    hi = Math.max(min * s.slope + s.intercept, max * s.slope + s.intercept);
    if (hi <= lo) return { c: lo, w: 0, fn: "FLAT" };
  }
  return { c: (lo + hi) / 2, w: hi - lo, fn: "LINEAR_EXACT" };
}

function defaultWindowOf(s, img) {
  return s.window || (img && img.auto) || null;
}

// the frame as 8-bit RGBA for a window: a table over the frame's stored values, then one lookup per pixel
function paint(s, img, win, invert, target) {
  const n = img.max - img.min + 1;
  const count = img.px.length;
  const out = new Uint32Array(target.data.buffer);
  const flip = (s.photometric === "MONOCHROME1") !== invert;
  const grey = (stored) => {
    const m = stored * s.slope + s.intercept;
    let g = win.fn === "FLAT" ? 0 : voi(m, win.c, win.w, win.fn);
    if (flip) g = 1 - g;
    return Math.round(g * 255);
  };
  if (n > 0 && n <= (1 << 20)) {
    const lut = new Uint32Array(n);
    for (let i = 0; i < n; i++) { const g = grey(img.min + i); lut[i] = 0xff000000 | (g << 16) | (g << 8) | g; }
    const px = img.px, off = img.min;
    for (let i = 0; i < count; i++) out[i] = lut[px[i] - off];
  } else {
    for (let i = 0; i < count; i++) { const g = grey(img.px[i]); out[i] = 0xff000000 | (g << 16) | (g << 8) | g; }
  }
}

// -- viewports --------------------------------------------------------------------------------------

class Viewport {
  constructor(index) {
    this.index = index;
    this.canvas = el("canvas", { tabindex: "0", role: "img", "aria-label": `Viewport ${index + 1}` });
    this.ov = Object.fromEntries(["tl", "tr", "bl", "br", "note"].map((k) => [k, el("div", { class: `ov ${k}` })]));
    this.slider = el("input", { type: "range", min: "0", max: "0", value: "0", "aria-label": `Slice, viewport ${index + 1}` });
    this.el = el("div", { class: `vp${showOverlay ? "" : " no-overlay"}` }, this.canvas, ...Object.values(this.ov), this.slider);
    this.ctx = this.canvas.getContext("2d");
    this.work = document.createElement("canvas"); // the frame at its own size, before the view transform
    this.series = null;
    this.slices = null;
    this.pos = 0;
    this.processing = null; // {op, params}
    this.figures = null;
    this.cursor = "";
    this.resetView();
    this.slider.addEventListener("input", () => this.go(Number(this.slider.value)));
    this.canvas.addEventListener("pointerdown", (e) => pointerDown(this, e));
    this.canvas.addEventListener("pointermove", (e) => pointerMove(this, e));
    this.canvas.addEventListener("pointerup", (e) => pointerUp(this, e));
    this.canvas.addEventListener("wheel", (e) => wheel(this, e), { passive: false });
    this.canvas.addEventListener("contextmenu", (e) => e.preventDefault());
    this.canvas.addEventListener("focus", () => setActive(this.index));
    new ResizeObserver(() => this.draw()).observe(this.el);
  }

  resetView() {
    this.view = { scale: 1, fitted: true, panX: 0, panY: 0, rot: 0, flipH: false, flipV: false, invert: false, win: null };
  }

  reset() {
    this.resetView();
    this.processing = null;
    this.figures = null;
    this.fit();
    renderSide();
  }

  slice() {
    return this.slices ? this.slices[this.pos] : null;
  }

  async show(entry) {
    this.series = entry;
    this.slices = null;
    this.note("Loading series…");
    const full = stackOf(entry);
    if (!entry.slices && entry.first) {
      // the series' first instance (lowest Instance Number, from the index) on screen while the
      // whole series' metadata is still on its way
      try {
        const quick = await json(`${BASE}/studies/${study}/series/${entry.uid}/instances/${entry.first}/metadata`);
        if (this.series === entry && !this.slices && quick.length) {
          const frames = number(quick[0], TAG.NumberOfFrames, 1) || 1;
          this.place(Array.from({ length: frames }, (_, f) => describe(quick[0], f + 1, entry.uid)), 0, true);
        }
      } catch (_) {
        /* the full stack below says what is wrong */
      }
    }
    let slices;
    try {
      slices = await full;
    } catch (e) {
      if (this.series === entry) this.note(`Cannot load the series: ${e.message}`);
      return;
    }
    if (this.series !== entry) return;
    if (!slices.length) { this.note("No images in this series"); return; }
    const shown = this.slice();
    const at = shown ? slices.findIndex((s) => s.key === shown.key) : -1;
    this.place(slices, Math.max(0, at), at < 0);
    prefetch();
  }

  // a stack to show, at `pos`; `fresh`: a new series (its own window, fitted, its frame rate)
  place(slices, pos, fresh) {
    this.slices = slices;
    this.pos = pos;
    this.slider.max = String(slices.length - 1);
    this.slider.value = String(pos);
    if (fresh) {
      const rate = frameRate(slices[0]);
      if (rate) fpsInput.value = String(Math.round(rate));
      this.view.win = null;
      this.fit();
      highlightSeries();
    }
    this.draw();
  }

  go(pos) {
    if (!this.slices) return;
    pos = Math.max(0, Math.min(this.slices.length - 1, pos));
    if (pos === this.pos) return;
    this.pos = pos;
    this.slider.value = String(pos);
    this.draw();
    prefetch();
  }

  note(message) {
    this.ov.note.textContent = message;
  }

  fit() {
    const s = this.slice();
    if (!s) return;
    const w = this.canvas.clientWidth, h = this.canvas.clientHeight;
    const aspect = s.spacing ? s.spacing.row / s.spacing.col : 1;
    let iw = s.cols, ih = s.rows * aspect;
    if (this.view.rot % 2) [iw, ih] = [ih, iw];
    this.view.scale = Math.max(0.01, Math.min(w / iw, h / ih));
    this.view.fitted = true;
    this.view.panX = this.view.panY = 0;
  }

  window(s, img) {
    return this.view.win || defaultWindowOf(s, img);
  }

  // image coordinates -> canvas CSS pixels
  matrix(s) {
    const aspect = s.spacing ? s.spacing.row / s.spacing.col : 1;
    const m = new DOMMatrix();
    m.translateSelf(this.canvas.clientWidth / 2 + this.view.panX, this.canvas.clientHeight / 2 + this.view.panY);
    m.rotateSelf(this.view.rot * 90);
    m.scaleSelf(this.view.flipH ? -this.view.scale : this.view.scale, (this.view.flipV ? -1 : 1) * this.view.scale * aspect);
    m.translateSelf(-s.cols / 2, -s.rows / 2);
    return m;
  }

  toImage(s, cx, cy) {
    const p = this.matrix(s).inverse().transformPoint(new DOMPoint(cx, cy));
    return { x: p.x, y: p.y };
  }

  draw() {
    if (this.frame) return;
    this.frame = requestAnimationFrame(() => { this.frame = null; this.render(); });
  }

  render() {
    const dpr = devicePixelRatio || 1;
    const cw = this.canvas.clientWidth, ch = this.canvas.clientHeight;
    if (this.canvas.width !== Math.round(cw * dpr) || this.canvas.height !== Math.round(ch * dpr)) {
      this.canvas.width = Math.round(cw * dpr);
      this.canvas.height = Math.round(ch * dpr);
      if (this.view.fitted) this.fit();
    }
    const ctx = this.ctx;
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, this.canvas.width, this.canvas.height);
    const s = this.slice();
    if (!s) return;
    const entry = images.get(s.key);
    if (!entry) { want([s]); this.note("Loading…"); this.overlay(s, null); return; }
    if (entry.state === "loading") { this.note("Loading…"); this.overlay(s, null); return; }
    if (entry.state === "error") { this.note(`Cannot show this image: ${entry.error}`); this.overlay(s, null); return; }
    this.note("");
    const img = entry.img;
    const win = s.mode === "colour" ? null : this.window(s, img);
    let source;
    if (img.kind === "grey") {
      if (this.work.width !== s.cols || this.work.height !== s.rows) { this.work.width = s.cols; this.work.height = s.rows; this.workData = null; }
      const wctx = this.work.getContext("2d");
      if (!this.workData) this.workData = wctx.createImageData(s.cols, s.rows);
      paint(s, img, win, this.view.invert, this.workData);
      wctx.putImageData(this.workData, 0, 0);
      source = this.work;
    } else if (s.mode === "server" && this.view.win && (!img.win || img.win.c !== this.view.win.c || img.win.w !== this.view.win.w)) {
      rerender(this, s, this.view.win);
      source = img.bitmap;
    } else {
      source = img.bitmap;
    }
    const processed = this.processing ? processedFor(this, s, win) : null;
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    const m = this.matrix(s);
    ctx.save();
    ctx.setTransform(new DOMMatrix().scaleSelf(dpr, dpr).multiplySelf(m));
    ctx.imageSmoothingEnabled = this.view.scale < 4;
    const base = processed && processed.bitmap && this.processing.op !== "threshold" ? processed.bitmap : source;
    if (img.kind !== "grey" && this.view.invert && base === source) ctx.filter = "invert(1)";
    ctx.drawImage(base, 0, 0, s.cols, s.rows);
    ctx.filter = "none";
    if (processed && processed.bitmap && this.processing.op === "threshold") ctx.drawImage(processed.bitmap, 0, 0, s.cols, s.rows);
    ctx.restore();
    drawMeasurements(this, s, m);
    this.overlay(s, win);
    if (!firstShown) {
      firstShown = true;
      performance.mark("dicomnode:first-image");
    }
    performance.mark("dicomnode:image-drawn");
    this.drawn = (this.drawn || 0) + 1;
  }

  overlay(s, win) {
    const inst = s.inst;
    const st = studyInfo || {};
    this.ov.tl.textContent = [text(st, TAG.PatientName).replaceAll("^", " "), text(st, TAG.PatientID),
      [formatDate(value(st, TAG.PatientBirthDate)), value(st, TAG.PatientSex)].filter(Boolean).join(" ")].filter(Boolean).join("\n");
    const ser = this.series ? this.series.ds : {};
    this.ov.tr.textContent = [text(st, TAG.StudyDescription), `${formatDate(value(st, TAG.StudyDate))} ${formatTime(value(st, TAG.StudyTime))}`,
      `Se ${value(ser, TAG.SeriesNumber, "")} ${text(ser, TAG.SeriesDescription)}`.trim(), value(ser, TAG.Modality, "")].filter((x) => x && x.trim()).join("\n");
    const n = this.slices ? this.slices.length : 0;
    const where = [];
    where.push(`Im ${this.pos + 1}/${n}${s.frames > 1 ? ` (frame ${s.frame}/${s.frames})` : ""}`);
    const loc = number(inst, TAG.SliceLocation);
    if (loc !== undefined) where.push(`Loc ${loc.toFixed(2)} mm`);
    else if (s.ipp.length === 3) where.push(`Pos ${s.ipp.map((x) => x.toFixed(1)).join(", ")}`);
    const thick = number(inst, TAG.SliceThickness);
    if (thick) where.push(`Thk ${thick} mm`);
    if (this.cursor) where.push(this.cursor);
    if (s.spacing && s.spacing.at === "detector") where.push("Imager Pixel Spacing: mm at the detector");
    if (!s.spacing) where.push("No pixel spacing: lengths in px");
    this.ov.bl.textContent = where.join("\n");
    const br = [];
    if (win && win.fn !== "FLAT") br.push(`W ${Math.round(win.w)} L ${Math.round(win.c)}${win.fn !== "LINEAR" ? ` ${win.fn}` : ""}`);
    else if (s.mode === "colour") br.push("colour");
    br.push(`Zoom ${(this.view.scale * (devicePixelRatio || 1)).toFixed(2)}×`);
    if (this.view.invert) br.push("inverted");
    if (this.processing) br.push(`proc: ${this.processing.op}`);
    if (this.figures && this.processing && this.processing.op === "threshold") br.push(thresholdText(this.figures, s));
    this.ov.br.textContent = br.join("\n");
  }
}

let studyInfo = null;
const syntaxes = new Map(); // SOP Instance UID -> transfer syntax as stored
const DEFLATED = "1.2.840.10008.1.2.1.99"; // frames cannot be cut from a deflated file: the node renders them

function frameRate(s) {
  const inst = s.inst;
  const ft = number(inst, TAG.FrameTime);
  if (ft > 0 && 1000 / ft >= 0.1 && 1000 / ft <= 240) return 1000 / ft;
  for (const tag of [TAG.CineRate, TAG.RecommendedDisplayFrameRate]) {
    const r = number(inst, tag);
    if (r >= 0.1 && r <= 240) return r;
  }
  return s.frames > 1 ? 10 : null;
}

async function rerender(v, s, win) {
  const entry = images.get(s.key);
  if (!entry || entry.rerendering) return;
  entry.rerendering = true;
  try {
    await new Promise((r) => setTimeout(r, 80)); // the window settles while dragging
    const target = v.view.win;
    entry.img = await loadRendered(s, target);
  } catch (e) {
    entry.error = e.message;
  } finally {
    entry.rerendering = false;
    v.draw();
  }
}

function setActive(i) {
  active = i;
  viewports.forEach((v) => v.el.classList.toggle("active", v.index === i));
  highlightSeries();
  renderSide();
}

function setLayout(l) {
  layout = l;
  for (const [k, b] of Object.entries(layoutButtons)) b.setAttribute("aria-pressed", String(k === l));
  const count = { "1x1": 1, "1x2": 2, "2x2": 4 }[l];
  while (viewports.length < count) {
    const v = new Viewport(viewports.length);
    viewports.push(v);
    const free = series.find((e) => e.images && !viewports.some((w) => w.series === e)) || series.find((e) => e.images) || series[0];
    if (free) v.show(free);
  }
  const shown = viewports.slice(0, count);
  viewports = viewports.slice(0, count);
  grid.className = `grid-views l${l}`;
  grid.replaceChildren(...shown.map((v) => v.el));
  if (active >= count) active = 0;
  setActive(active);
  viewports.forEach((v) => { v.fit(); v.draw(); });
}

function prefetch() {
  // every viewport's stack, nearest to what it shows first
  const order = [];
  const seen = new Set();
  const stacks = viewports.filter((v) => v.slices);
  const reach = Math.max(0, ...stacks.map((v) => v.slices.length));
  for (let d = 0; d < reach; d++) {
    for (const v of stacks) {
      for (const p of d ? [v.pos + d, v.pos - d] : [v.pos]) {
        const s = v.slices[p];
        if (s && !seen.has(s.key)) { seen.add(s.key); order.push(s); }
      }
    }
  }
  want(order);
}

// -- series -----------------------------------------------------------------------------------------

function stackOf(entry) {
  if (!entry.stack) {
    entry.stack = json(`${BASE}/studies/${study}/series/${entry.uid}/metadata`).then((instances) => {
      const imagesOnly = instances.filter((i) => number(i, TAG.Rows) && number(i, TAG.Columns));
      const ipp = (i) => numbers(i, TAG.ImagePositionPatient);
      const iop = numbers(imagesOnly[0] || {}, TAG.ImageOrientationPatient);
      let key;
      if (iop.length === 6 && imagesOnly.every((i) => ipp(i).length === 3)) {
        const n = [iop[1] * iop[5] - iop[2] * iop[4], iop[2] * iop[3] - iop[0] * iop[5], iop[0] * iop[4] - iop[1] * iop[3]];
        key = (i) => { const p = ipp(i); return p[0] * n[0] + p[1] * n[1] + p[2] * n[2]; };
      } else key = (i) => number(i, TAG.InstanceNumber, 0);
      imagesOnly.sort((a, b) => key(a) - key(b) || number(a, TAG.InstanceNumber, 0) - number(b, TAG.InstanceNumber, 0));
      const slices = [];
      for (const inst of imagesOnly) {
        const frames = number(inst, TAG.NumberOfFrames, 1) || 1;
        for (let f = 1; f <= frames; f++) slices.push(describe(inst, f, entry.uid));
      }
      entry.slices = slices;
      return slices;
    });
    entry.stack.catch(() => { entry.stack = null; });
  }
  return entry.stack;
}

function highlightSeries() {
  const v = viewports[active];
  for (const e of series) e.button.classList.toggle("shown", !!v && v.series === e);
}

async function loadSeries() {
  const [studies, list, instances] = await Promise.all([
    json(`${BASE}/studies?StudyInstanceUID=${study}&includefield=PatientBirthDate&includefield=PatientSex`),
    json(`${BASE}/studies/${study}/series?includefield=SeriesDate`),
    json(`${BASE}/studies/${study}/instances?includefield=TransferSyntaxUID`), // from the index: which series hold images
  ]);
  for (const i of instances) syntaxes.set(value(i, TAG.SOPInstanceUID), value(i, TAG.TransferSyntaxUID));
  const withImages = new Set(instances.filter((i) => number(i, TAG.Rows)).map((i) => value(i, TAG.SeriesInstanceUID)));
  const firstOf = new Map(); // series -> its image with the lowest Instance Number
  for (const i of instances) {
    if (!number(i, TAG.Rows)) continue;
    const se = value(i, TAG.SeriesInstanceUID), prior = firstOf.get(se);
    if (!prior || number(i, TAG.InstanceNumber, 1e9) < number(prior, TAG.InstanceNumber, 1e9)) firstOf.set(se, i);
  }
  studyInfo = studies[0] || {};
  document.title = `${text(studyInfo, TAG.PatientName).replaceAll("^", " ") || "Study"} · dicomnode`;
  list.sort((a, b) => number(a, TAG.SeriesNumber, 1e9) - number(b, TAG.SeriesNumber, 1e9));
  for (const ds of list) {
    const uid = value(ds, TAG.SeriesInstanceUID);
    const img = el("img", { alt: "" });
    const entry = { uid, ds, stack: null, slices: null, images: withImages.has(uid),
      first: firstOf.has(uid) ? value(firstOf.get(uid), TAG.SOPInstanceUID) : null };
    entry.button = el("button", { type: "button", title: "Show in the active viewport", onclick: () => { viewports[active].show(entry); } },
      img, el("div", { class: "label", text: `${value(ds, TAG.SeriesNumber, "")} ${value(ds, TAG.Modality, "")} ${text(ds, TAG.SeriesDescription)}`.trim() }),
      el("div", { class: "label muted", text: `${value(ds, TAG.NumberOfSeriesRelatedInstances, 0)} instances${entry.images ? "" : ", no images"}` }));
    entry.thumbnail = img;
    series.push(entry);
    seriesPanel.append(entry.button);
  }
  return list.length;
}

async function thumbnails() {
  for (const e of series) {
    if (!e.images) { e.thumbnail.alt = "no images"; continue; }
    try {
      const r = await request(`${BASE}/studies/${study}/series/${e.uid}/thumbnail`, { headers: { Accept: "image/jpeg" } });
      e.thumbnail.src = URL.createObjectURL(await r.blob());
    } catch (_) {
      e.thumbnail.alt = "no picture";
    }
  }
}

// -- pointer, wheel, keys ---------------------------------------------------------------------------

let drag = null;
let pending = null; // an angle waiting for its third point

function pointerDown(v, e) {
  setActive(v.index);
  v.canvas.focus({ preventScroll: true });
  const s = v.slice();
  if (!s) return;
  v.canvas.setPointerCapture(e.pointerId);
  const mode = e.button === 1 ? "pan" : e.button === 2 ? "zoom" : tool;
  const p = v.toImage(s, e.offsetX, e.offsetY);
  const entry = images.get(s.key);
  drag = { v, mode, x: e.offsetX, y: e.offsetY, start: p, view: { ...v.view }, win: v.window(s, entry && entry.img) };
  if (["length", "rect", "ellipse", "freehand"].includes(mode)) {
    const m = { type: mode, points: [p, { ...p }], key: s.key };
    add(s, m);
    drag.measure = m;
  } else if (mode === "angle") {
    if (pending && pending.key === s.key) {
      pending.points[2] = p;
      drag.measure = pending;
      drag.angleEnd = true;
    } else {
      pending = { type: "angle", points: [p, { ...p }], key: s.key };
      add(s, pending);
      drag.measure = pending;
    }
  } else {
    // a click near a measurement selects it
    const hit = nearest(v, s, e.offsetX, e.offsetY);
    if (hit) { selected = hit; renderSide(); v.draw(); }
  }
}

function pointerMove(v, e) {
  const s = v.slice();
  if (!s) return;
  const p = v.toImage(s, e.offsetX, e.offsetY);
  v.cursor = probe(s, p);
  if (!drag || drag.v !== v) { if (!drag) v.overlay(s, v.window(s, images.get(s.key) && images.get(s.key).img)); if (pending && pending.key === s.key) { pending.points[2] = p; v.draw(); } return; }
  const dx = e.offsetX - drag.x, dy = e.offsetY - drag.y;
  if (drag.mode === "wl") {
    const base = drag.win;
    if (!base || s.mode === "colour") return;
    const range = Math.max(1, base.w);
    v.view.win = { c: base.c + (dy * range) / 256, w: Math.max(1, base.w + (dx * range) / 256), fn: base.fn === "FLAT" ? "LINEAR" : base.fn };
    presetSelect.value = "";
  } else if (drag.mode === "pan") {
    v.view.panX = drag.view.panX + dx;
    v.view.panY = drag.view.panY + dy;
  } else if (drag.mode === "zoom") {
    v.view.scale = Math.max(0.02, Math.min(64, drag.view.scale * Math.exp(-dy / 150)));
    v.view.fitted = false;
  } else if (drag.measure) {
    const m = drag.measure;
    if (m.type === "freehand") m.points.push(p);
    else if (m.type === "angle" && drag.angleEnd) m.points[2] = p;
    else m.points[1] = p;
    compute(m, s);
  }
  v.draw();
}

function pointerUp(v) {
  if (!drag) return;
  const m = drag.measure;
  if (m) {
    const s = v.slice();
    if (m.type === "angle" && !drag.angleEnd) {
      if (tiny(v, s, m.points[0], m.points[1])) { remove(m); pending = null; }
      // waiting for the third point: the next click sets it
    } else {
      if (m.type === "angle") pending = null;
      if (m.type !== "angle" && m.type !== "freehand" && tiny(v, s, m.points[0], m.points[1])) remove(m);
      else if (m.type === "freehand" && m.points.length < 3) remove(m);
      else { compute(m, s); selected = m; }
    }
    renderSide();
  }
  drag = null;
  v.draw();
}

function tiny(v, s, a, b) {
  const m = v.matrix(s);
  const pa = m.transformPoint(new DOMPoint(a.x, a.y)), pb = m.transformPoint(new DOMPoint(b.x, b.y));
  return Math.hypot(pa.x - pb.x, pa.y - pb.y) < 3;
}

function wheel(v, e) {
  e.preventDefault();
  if (e.ctrlKey) {
    v.view.scale = Math.max(0.02, Math.min(64, v.view.scale * Math.exp(-e.deltaY / 400)));
    v.view.fitted = false;
    v.draw();
    return;
  }
  v.wheelRest = (v.wheelRest || 0) + e.deltaY;
  const step = Math.trunc(v.wheelRest / 50) || Math.sign(v.wheelRest);
  v.wheelRest = 0;
  v.go(v.pos + step);
}

document.addEventListener("keydown", (e) => {
  if (e.target.closest("input, select, textarea") || e.ctrlKey || e.metaKey || e.altKey) return;
  const v = viewports[active];
  if (!v) return;
  const k = e.key;
  const tools = Object.fromEntries(TOOLS.map(([id, , key]) => [key.toLowerCase(), id]));
  let handled = true;
  if (k === "ArrowDown" || k === "ArrowRight") v.go(v.pos + 1);
  else if (k === "ArrowUp" || k === "ArrowLeft") v.go(v.pos - 1);
  else if (k === "PageDown") v.go(v.pos + 10);
  else if (k === "PageUp") v.go(v.pos - 10);
  else if (k === "Home") v.go(0);
  else if (k === "End") v.go(v.slices ? v.slices.length - 1 : 0);
  else if (tools[k.toLowerCase()] && !e.shiftKey) setTool(tools[k.toLowerCase()]);
  else if (k === "0") defaultWindow();
  else if (PRESETS.some(([key]) => key === k)) preset(k);
  else if (k === "i") act((x) => { x.view.invert = !x.view.invert; });
  else if (k === "h") act((x) => { x.view.flipH = !x.view.flipH; });
  else if (k === "v") act((x) => { x.view.flipV = !x.view.flipV; });
  else if (k === "[") act((x) => { x.view.rot = (x.view.rot + 3) % 4; x.fit(); });
  else if (k === "]") act((x) => { x.view.rot = (x.view.rot + 1) % 4; x.fit(); });
  else if (k === "f") act((x) => x.fit());
  else if (k === "x") act((x) => x.reset());
  else if (k === "o") { showOverlay = !showOverlay; viewports.forEach((x) => x.el.classList.toggle("no-overlay", !showOverlay)); }
  else if (k === "t") openSide("tags");
  else if (k === "m") openSide("measures");
  else if (k === "g") openSide("process");
  else if (k === "?") openSide("help");
  else if (k === " ") toggleCine();
  else if (k === "Delete" || k === "Backspace") { if (selected) { remove(selected); selected = null; renderSide(); v.draw(); } }
  else if (k === "Escape") { if (pending) { remove(pending); pending = null; v.draw(); } else if (!side.hidden) closeSide(); }
  else handled = false;
  if (handled) e.preventDefault();
});

function preset(key) {
  const p = PRESETS.find(([k]) => k === key);
  if (!p) return;
  presetSelect.value = key;
  act((v) => { v.view.win = { c: p[2], w: p[3], fn: "LINEAR" }; });
}

function defaultWindow() {
  presetSelect.value = "";
  act((v) => { v.view.win = null; });
}

// -- cine -------------------------------------------------------------------------------------------
let cine = null;

function toggleCine() {
  if (cine) {
    cancelAnimationFrame(cine.raf);
    cine = null;
    cineButton.textContent = "▶";
    return;
  }
  cineButton.textContent = "■";
  cine = { last: performance.now(), raf: 0 };
  const tick = (now) => {
    if (!cine) return;
    const v = viewports[active];
    const fps = Math.max(1, Math.min(120, Number(fpsInput.value) || 10));
    if (v && v.slices && now - cine.last >= 1000 / fps) {
      const next = (v.pos + 1) % v.slices.length;
      const e = images.get(v.slices[next].key);
      if (e && e.state !== "loading") { // never show a blank frame: wait for the next one
        cine.last = now;
        v.pos = next;
        v.slider.value = String(next);
        v.render();
        prefetch();
      }
    }
    cine.raf = requestAnimationFrame(tick);
  };
  cine.raf = requestAnimationFrame(tick);
}

// -- measurements -----------------------------------------------------------------------------------

function add(s, m) {
  if (!measurements.has(s.key)) measurements.set(s.key, []);
  measurements.get(s.key).push(m);
}

function remove(m) {
  const list = measurements.get(m.key) || [];
  const i = list.indexOf(m);
  if (i >= 0) list.splice(i, 1);
  if (selected === m) selected = null;
}

function mm(s, dx, dy) {
  return s.spacing ? Math.hypot(dx * s.spacing.col, dy * s.spacing.row) : Math.hypot(dx, dy);
}

function unit(s, squared) {
  return (s.spacing ? "mm" : "px") + (squared ? "²" : "");
}

// the modality value of a pixel (HU for CT); null for colour and rendered-only images
function modalityAt(s, x, y) {
  const e = images.get(s.key);
  if (!e || e.state !== "ready" || e.img.kind !== "grey") return null;
  const c = Math.floor(x), r = Math.floor(y);
  if (c < 0 || r < 0 || c >= s.cols || r >= s.rows) return null;
  return e.img.px[r * s.cols + c] * s.slope + s.intercept;
}

function probe(s, p) {
  const c = Math.floor(p.x), r = Math.floor(p.y);
  if (c < 0 || r < 0 || c >= s.cols || r >= s.rows) return "";
  const v = modalityAt(s, p.x, p.y);
  return `(${c}, ${r})${v === null ? "" : ` ${+v.toFixed(3)}${s.units ? " " + s.units : ""}`}`;
}

function inside(m, x, y) {
  const [a, b] = m.points;
  if (m.type === "rect") return x >= Math.min(a.x, b.x) && x <= Math.max(a.x, b.x) && y >= Math.min(a.y, b.y) && y <= Math.max(a.y, b.y);
  if (m.type === "ellipse") {
    const cx = (a.x + b.x) / 2, cy = (a.y + b.y) / 2, rx = Math.abs(b.x - a.x) / 2, ry = Math.abs(b.y - a.y) / 2;
    return rx > 0 && ry > 0 && ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 <= 1;
  }
  let inPoly = false;
  const pts = m.points;
  for (let i = 0, j = pts.length - 1; i < pts.length; j = i++) {
    if ((pts[i].y > y) !== (pts[j].y > y) && x < ((pts[j].x - pts[i].x) * (y - pts[i].y)) / (pts[j].y - pts[i].y) + pts[i].x) inPoly = !inPoly;
  }
  return inPoly;
}

function compute(m, s) {
  const [a, b, c] = m.points;
  if (m.type === "length") {
    m.value = mm(s, b.x - a.x, b.y - a.y);
    m.text = `${m.value.toFixed(2)} ${unit(s)}`;
    return;
  }
  if (m.type === "angle") {
    if (!c) { m.text = ""; return; }
    const sx = s.spacing ? s.spacing.col : 1, sy = s.spacing ? s.spacing.row : 1;
    const u = [(a.x - b.x) * sx, (a.y - b.y) * sy], w = [(c.x - b.x) * sx, (c.y - b.y) * sy];
    const cos = (u[0] * w[0] + u[1] * w[1]) / (Math.hypot(...u) * Math.hypot(...w) || 1);
    m.value = (Math.acos(Math.max(-1, Math.min(1, cos))) * 180) / Math.PI;
    m.text = `${m.value.toFixed(1)}°`;
    return;
  }
  // ROI: pixels whose centres lie inside; statistics in modality units
  const xs = m.points.map((p) => p.x), ys = m.points.map((p) => p.y);
  const x0 = Math.max(0, Math.floor(Math.min(...xs))), x1 = Math.min(s.cols - 1, Math.ceil(Math.max(...xs)));
  const y0 = Math.max(0, Math.floor(Math.min(...ys))), y1 = Math.min(s.rows - 1, Math.ceil(Math.max(...ys)));
  let n = 0, sum = 0, sum2 = 0, min = Infinity, max = -Infinity;
  const e = images.get(s.key);
  const grey = e && e.state === "ready" && e.img.kind === "grey";
  if (grey) {
    for (let y = y0; y <= y1; y++) {
      for (let x = x0; x <= x1; x++) {
        if (!inside(m, x + 0.5, y + 0.5)) continue;
        const v = e.img.px[y * s.cols + x] * s.slope + s.intercept;
        n++; sum += v; sum2 += v * v;
        if (v < min) min = v; if (v > max) max = v;
      }
    }
  }
  const sq = s.spacing ? s.spacing.row * s.spacing.col : 1;
  let area;
  if (m.type === "rect") area = Math.abs((b.x - a.x) * (b.y - a.y)) * sq;
  else if (m.type === "ellipse") area = (Math.PI * Math.abs(b.x - a.x) * Math.abs(b.y - a.y) / 4) * sq;
  else {
    let twice = 0;
    for (let i = 0, j = m.points.length - 1; i < m.points.length; j = i++) twice += (m.points[j].x + m.points[i].x) * (m.points[j].y - m.points[i].y);
    area = (Math.abs(twice) / 2) * sq;
  }
  const u = s.units ? ` ${s.units}` : "";
  m.stats = grey && n ? { n, mean: sum / n, sd: Math.sqrt(Math.max(0, sum2 / n - (sum / n) ** 2)), min, max, area } : { n, area };
  m.text = grey && n
    ? `mean ${m.stats.mean.toFixed(1)}${u} SD ${m.stats.sd.toFixed(1)}\nmin ${+min.toFixed(2)} max ${+max.toFixed(2)}\narea ${area.toFixed(1)} ${unit(s, true)}`
    : `area ${area.toFixed(1)} ${unit(s, true)}${grey ? "" : " (no values: colour)"}`;
}

function drawMeasurements(v, s, m) {
  const list = measurements.get(s.key) || [];
  const ctx = v.ctx;
  const dpr = devicePixelRatio || 1;
  ctx.save();
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.font = "12px ui-monospace, monospace";
  for (const meas of list) {
    const pts = meas.points.filter(Boolean).map((p) => m.transformPoint(new DOMPoint(p.x, p.y)));
    ctx.strokeStyle = meas === selected ? "#ffd166" : "#4ee1a0";
    ctx.fillStyle = ctx.strokeStyle;
    ctx.lineWidth = 1.5;
    ctx.beginPath();
    if (meas.type === "length" || meas.type === "angle") {
      pts.forEach((p, i) => (i ? ctx.lineTo(p.x, p.y) : ctx.moveTo(p.x, p.y)));
    } else if (meas.type === "rect" || meas.type === "ellipse") {
      // drawn through the transform, so rotation and flips keep it on its pixels
      const [a, b] = meas.points;
      const corners = meas.type === "rect"
        ? [[a.x, a.y], [b.x, a.y], [b.x, b.y], [a.x, b.y]]
        : Array.from({ length: 48 }, (_, i) => {
          const t = (i / 48) * 2 * Math.PI;
          return [(a.x + b.x) / 2 + (Math.abs(b.x - a.x) / 2) * Math.cos(t), (a.y + b.y) / 2 + (Math.abs(b.y - a.y) / 2) * Math.sin(t)];
        });
      corners.map(([x, y]) => m.transformPoint(new DOMPoint(x, y))).forEach((p, i) => (i ? ctx.lineTo(p.x, p.y) : ctx.moveTo(p.x, p.y)));
      ctx.closePath();
    } else {
      pts.forEach((p, i) => (i ? ctx.lineTo(p.x, p.y) : ctx.moveTo(p.x, p.y)));
      ctx.closePath();
    }
    ctx.stroke();
    for (const p of pts) ctx.fillRect(p.x - 2, p.y - 2, 4, 4);
    if (meas.text) {
      const anchor = pts.reduce((a, p) => (p.x > a.x ? p : a), pts[0]);
      meas.text.split("\n").forEach((line, i) => {
        ctx.lineWidth = 3;
        ctx.strokeStyle = "#000";
        ctx.strokeText(line, anchor.x + 6, anchor.y + 4 + i * 14);
        ctx.fillText(line, anchor.x + 6, anchor.y + 4 + i * 14);
      });
    }
  }
  ctx.restore();
}

function nearest(v, s, cx, cy) {
  const m = v.matrix(s);
  let best = null, dist = 8;
  for (const meas of measurements.get(s.key) || []) {
    for (const p of meas.points) {
      const q = m.transformPoint(new DOMPoint(p.x, p.y));
      const d = Math.hypot(q.x - cx, q.y - cy);
      if (d < dist) { dist = d; best = meas; }
    }
  }
  return best;
}

// -- processing (node/processing/enhance.py through /api) -------------------------------------------

const OPS = {
  equalize: { label: "Histogram equalization", params: [] },
  clahe: { label: "CLAHE", params: [["clip", "Clip limit", 0.01, 0.001], ["tiles", "Tiles per side", 8, 1]] },
  gamma: { label: "Gamma", params: [["gamma", "Gamma", 0.7, 0.05]] },
  denoise: { label: "Denoise", params: [["method", "Method", ["median", "gaussian", "nlmeans", "bilateral"]], ["radius", "Median radius", 1, 1], ["sigma", "Sigma", 1, 0.1]] },
  sharpen: { label: "Sharpen (unsharp mask)", params: [["radius", "Radius", 2, 0.1], ["amount", "Amount", 1, 0.1]] },
  edges: { label: "Edges", params: [["method", "Method", ["sobel", "canny"]], ["sigma", "Canny sigma", 2, 0.1]] },
  threshold: { label: "Threshold segmentation", params: [["value", "Threshold (modality units; empty: Otsu)", "", 1]] },
};

function processedFor(v, s, win) {
  const opKey = JSON.stringify(v.processing);
  const winKey = win && s.mode !== "colour" && v.processing.op !== "threshold" ? `${win.c},${win.w},${win.fn === "FLAT" ? "LINEAR" : win.fn}` : "";
  const key = `${s.key}|${winKey}|${opKey}|${v.view.invert}`;
  let p = processedCache.get(key);
  if (!p) {
    const q = new URLSearchParams({ op: v.processing.op, ...v.processing.params });
    if (winKey) q.set("window", winKey);
    p = { bitmap: null, figures: null };
    processedCache.set(key, p);
    if (processedCache.size > 64) processedCache.delete(processedCache.keys().next().value);
    request(`${BASE.replace("/dicom-web", "/api")}/studies/${study}/series/${s.series}/instances/${s.sop}/frames/${s.frame}/processed?${q}`)
      .then(async (r) => {
        p.figures = JSON.parse(r.headers.get("X-Figures") || "{}");
        p.bitmap = await createImageBitmap(await r.blob());
        if (v.view.invert && v.processing.op !== "threshold") p.bitmap = await invertBitmap(p.bitmap);
        v.figures = p.figures;
        // only the result's text: rebuilding the processing form here would throw away what the
        // user has chosen in it meanwhile (another operation, a value typed in)
        if (sideKind === "process" && !side.hidden) processMessage.textContent = processText(viewports[active]);
        else renderSide();
        v.draw();
      })
      .catch((e) => { p.error = e.message; processMessage.textContent = `Processing failed: ${e.message}`; });
  }
  if (p.figures) v.figures = p.figures;
  return p;
}

async function invertBitmap(bitmap) {
  const c = new OffscreenCanvas(bitmap.width, bitmap.height);
  const ctx = c.getContext("2d");
  ctx.filter = "invert(1)";
  ctx.drawImage(bitmap, 0, 0);
  return c.transferToImageBitmap();
}

// the processing panel's status line for viewport v: the threshold's figures, "Applied." once the
// result is in; until then the line keeps what it says ("Working…", or why the request failed)
function processText(v) {
  const s = v && v.slice();
  if (!v || !v.processing) return "";
  if (!v.figures || !s) return processMessage.textContent;
  return v.processing.op === "threshold" ? thresholdText(v.figures, s) : "Applied.";
}

function thresholdText(f, s) {
  if (!f || f.threshold === undefined) return "";
  const area = f.unit === "mm2" ? `${f.area.toFixed(1)} mm²${f.measured_at === "detector" ? " (detector)" : ""}` : `${f.area} px`;
  return `≥ ${f.threshold}${s.units ? " " + s.units : ""} (${f.method}): ${area}`;
}

// -- side panel: tags, measurements, processing, help -------------------------------------------------
let sideKind = null;
let dictionary = null;
const processMessage = el("p", { class: "muted", role: "status" });

function openSide(kind) {
  if (sideKind === kind && !side.hidden) return closeSide();
  sideKind = kind;
  side.hidden = false;
  renderSide();
  viewports.forEach((v) => v.draw());
  const first = side.querySelector("input, select, button");
  if (first) first.focus();
}

function closeSide() {
  side.hidden = true;
  sideKind = null;
  viewports.forEach((v) => v.draw());
  if (viewports[active]) viewports[active].canvas.focus();
}

function heading(title) {
  return el("h2", {}, title, button("✕", "Close (Esc)", closeSide));
}

function renderSide() {
  if (side.hidden) return;
  const v = viewports[active];
  const s = v && v.slice();
  if (sideKind === "tags") return renderTags(s);
  if (sideKind === "measures") {
    const list = s ? measurements.get(s.key) || [] : [];
    const all = [...measurements.values()].reduce((n, l) => n + l.length, 0);
    side.replaceChildren(heading("Measurements"),
      el("p", { class: "muted", text: `${list.length} on this image, ${all} in all. Select one and press Delete to remove it.` }),
      el("ul", { class: "measures" }, list.map((m) => el("li", {},
        el("button", { type: "button", class: "link", text: `${m.type}: ${(m.text || "").replaceAll("\n", ", ")}`, onclick: () => { selected = m; v.draw(); renderSide(); } }),
        button("Delete", `Delete this ${m.type}`, () => { remove(m); renderSide(); v.draw(); })))));
    return;
  }
  if (sideKind === "process") return renderProcess(v, s);
  if (sideKind === "help") {
    side.replaceChildren(heading("Keyboard and mouse"), el("dl", { class: "tags" }, [
      ["Wheel, ↑ ↓, PgUp PgDn, Home End", "slices and frames"], ["Left drag", "the tool: window, pan, zoom or measure"],
      ["Middle drag / right drag", "pan / zoom"], ["Ctrl+wheel", "zoom"],
      ...TOOLS.map(([, , k, what]) => [k, what]), ["0", "window from the file"], ...PRESETS.map(([k, l, c, w]) => [k, `${l} (${c}/${w})`]),
      ["I", "invert"], ["H / V", "flip horizontal / vertical"], ["[ / ]", "rotate left / right"], ["F", "fit"], ["X", "reset"],
      ["Space", "cine"], ["O", "overlay text"], ["T / M / G", "tags / measurements / processing"],
      ["Delete", "delete the selected measurement"], ["Esc", "cancel an angle, close the panel"],
    ].flatMap(([k, d]) => [el("dt", { class: "kw", text: k }), el("dd", { text: d })])));
  }
}

async function renderTags(s) {
  if (!s) { side.replaceChildren(heading("Tags"), el("p", { text: "No image shown." })); return; }
  const search = el("input", { type: "search", placeholder: "keyword, tag or name", "aria-label": "Search tags" });
  const tree = el("div", { class: "tags" });
  side.replaceChildren(heading("Tags"), el("p", { class: "muted", text: s.sop }), search, tree);
  if (!dictionary) {
    try { dictionary = await json("/api/dictionary"); } catch (_) { dictionary = {}; }
  }
  const draw = () => {
    const q = search.value.trim().toLowerCase().replace(/[(),\s]/g, "");
    tree.replaceChildren(...elements(s.inst, q));
  };
  search.addEventListener("input", draw);
  draw();
}

function elements(ds, q) {
  const out = [];
  for (const tag of Object.keys(ds).sort()) {
    const e = ds[tag];
    const [kw, name] = dictionary[tag] || ["", tag.slice(4) === "0000" ? "Group Length" : (parseInt(tag.slice(0, 4), 16) % 2 ? "Private" : "")];
    const label = `(${tag.slice(0, 4)},${tag.slice(4)})`;
    const hit = !q || tag.toLowerCase().includes(q) || kw.toLowerCase().includes(q) || name.toLowerCase().replace(/\s/g, "").includes(q);
    if (e.vr === "SQ") {
      const items = (e.Value || []).map((it, i) => {
        const inner = elements(it, hit ? "" : q);
        return inner.length ? el("details", { open: q ? true : null }, el("summary", { text: `Item ${i + 1}` }), ...inner) : null;
      }).filter(Boolean);
      if (hit || items.length) out.push(el("details", { open: q && !hit ? true : null }, el("summary", {}, el("span", { class: "tag", text: label }), " ", el("span", { class: "kw", text: kw || name }), ` SQ (${(e.Value || []).length})`), ...items));
      continue;
    }
    if (!hit) continue;
    let shown;
    if (e.BulkDataURI) shown = "(bulk data)";
    else if (e.InlineBinary) shown = `(binary, ${Math.floor((e.InlineBinary.length * 3) / 4)} bytes)`;
    else shown = (e.Value || []).map((x) => (x && typeof x === "object" ? (x.Alphabetic || JSON.stringify(x)) : String(x))).join("\\");
    if (shown.length > 200) shown = shown.slice(0, 200) + "…";
    out.push(el("div", {}, el("span", { class: "tag", text: label }), " ", el("span", { class: "kw", text: kw || name }), ` ${e.vr} `, shown));
  }
  return out;
}

function renderProcess(v, s) {
  const current = v && v.processing;
  const opSelect = el("select", { id: "op", "aria-label": "Operation" }, el("option", { value: "", text: "none" }),
    Object.entries(OPS).map(([k, o]) => el("option", { value: k, text: o.label, selected: current && current.op === k })));
  const fields = el("div", { class: "row" });
  const drawFields = () => {
    fields.replaceChildren();
    const op = OPS[opSelect.value];
    if (!op) return;
    for (const [name, label, def, step] of op.params) {
      const prior = current && current.op === opSelect.value ? current.params[name] : undefined;
      const input = Array.isArray(def)
        ? el("select", { name }, def.map((d) => el("option", { value: d, text: d, selected: prior === d })))
        : el("input", { name, type: "number", step: String(step), value: prior ?? String(def) });
      fields.append(el("label", {}, label, input));
    }
  };
  opSelect.addEventListener("change", drawFields);
  drawFields();
  const apply = button("Apply", "Apply to the shown images", () => {
    if (!opSelect.value) { v.processing = null; v.figures = null; v.draw(); renderSide(); return; }
    const params = {};
    for (const i of fields.querySelectorAll("input, select")) if (i.value !== "") params[i.name] = i.value;
    v.processing = { op: opSelect.value, params };
    v.figures = null;
    processMessage.textContent = "Working…";
    v.draw();
  });
  const off = button("Off", "Back to the original image", () => { v.processing = null; v.figures = null; processMessage.textContent = ""; v.draw(); renderSide(); });
  if (v && v.processing) processMessage.textContent = processText(v);
  side.replaceChildren(heading("Processing"),
    el("p", { class: "muted", text: "Computed by the node (scikit-image) on the shown frame; the threshold works in modality units (HU for CT). Off restores the original." }),
    el("label", { for: "op" }, "Operation", opSelect), fields, el("div", { class: "row" }, apply, off), processMessage);
}

// -- export -----------------------------------------------------------------------------------------

function exportPng() {
  const v = viewports[active];
  const s = v && v.slice();
  if (!s) return;
  v.render();
  v.canvas.toBlob((b) => download(b, `${s.sop}-${s.frame}.png`), "image/png");
}

async function downloadInstance() {
  const v = viewports[active];
  const s = v && v.slice();
  if (!s) return;
  const q = new URLSearchParams({ requestType: "WADO", studyUID: study, seriesUID: s.series, objectUID: s.sop, contentType: "application/dicom" });
  const r = await request(`/wado?${q}`);
  download(await r.blob(), `${s.sop}.dcm`);
}

// -- start ------------------------------------------------------------------------------------------

// for scripts and the tests: the viewports, and a frame's pixels as shown before the view transform
window.dicomnodeViewer = {
  get viewports() { return viewports; },
  loaded: () => [...images.values()].filter((e) => e.state === "ready").length,
  shownPixels(i = active) {
    const v = viewports[i];
    const s = v.slice();
    const e = images.get(s.key);
    if (!e || e.state !== "ready") return null;
    const c = document.createElement("canvas");
    c.width = s.cols; c.height = s.rows;
    const ctx = c.getContext("2d");
    if (e.img.kind === "grey") {
      const data = ctx.createImageData(s.cols, s.rows);
      paint(s, e.img, v.window(s, e.img), v.view.invert, data);
      return { width: s.cols, height: s.rows, data: Array.from(data.data) };
    }
    ctx.drawImage(e.img.bitmap, 0, 0);
    return { width: s.cols, height: s.rows, data: Array.from(ctx.getImageData(0, 0, s.cols, s.rows).data) };
  },
  toImage(i, x, y) { const v = viewports[i]; return v.toImage(v.slice(), x, y); },
  toScreen(i, x, y) { const v = viewports[i]; const p = v.matrix(v.slice()).transformPoint(new DOMPoint(x, y)); return { x: p.x, y: p.y }; },
  measurements: () => [...measurements.values()].flat().map((m) => ({ type: m.type, value: m.value, text: m.text, stats: m.stats })),
};

(async () => {
  if (!study) { main.replaceChildren(el("p", { class: "error page", text: "No study in the address." })); return; }
  try {
    const n = await loadSeries();
    if (!n) { grid.replaceChildren(el("p", { class: "page", text: "This study has no series in the archive." })); return; }
  } catch (e) {
    grid.replaceChildren(el("p", { class: "error page", text: `Cannot open the study: ${e.message}` }));
    return;
  }
  setLayout("1x1");
  viewports[0].canvas.focus({ preventScroll: true });
  thumbnails();
})();
