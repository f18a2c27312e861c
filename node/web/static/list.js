// The study list: a QIDO-RS search (one page at a time, sorted by the server: `orderby`), a study
// opens in the viewer. Search terms stay in the tab's session storage, never in the page's URL
// (no patient data in URLs beyond UIDs), so Back returns to the same search.
import { BASE, TAG, el, formatDate, formatTime, markNav, request, text, value } from "./api.js";

const PAGE = 50;
const STATE_KEY = "dicomnode.search";
const COLUMNS = [
  // [label, sort keyword (null: not sortable), cell]
  ["Patient", "PatientName", (s) => text(s, TAG.PatientName)],
  ["Patient ID", "PatientID", (s) => text(s, TAG.PatientID)],
  ["Birth date", "PatientBirthDate", (s) => formatDate(value(s, "00100030"))],
  ["Study date", "StudyDate", (s) => `${formatDate(value(s, TAG.StudyDate))} ${formatTime(value(s, TAG.StudyTime))}`],
  ["Description", "StudyDescription", (s) => text(s, TAG.StudyDescription)],
  ["Modalities", null, (s) => text(s, TAG.ModalitiesInStudy).replaceAll("\\", ", ")],
  ["Accession", "AccessionNumber", (s) => text(s, TAG.AccessionNumber)],
  ["Series", "NumberOfStudyRelatedSeries", (s) => String(value(s, TAG.NumberOfStudyRelatedSeries, ""))],
  ["Instances", "NumberOfStudyRelatedInstances", (s) => String(value(s, TAG.NumberOfStudyRelatedInstances, ""))],
  ["Sent by", null, (s) => text(s, TAG.SourceApplicationEntityTitle).replaceAll("\\", ", ")],
];
const NUMERIC = new Set(["Series", "Instances"]);
const FIELDS = [
  ["name", "Patient name", "text", "e.g. doe or doe^j*"],
  ["pid", "Patient ID", "text", ""],
  ["accession", "Accession", "text", ""],
  ["from", "Date from", "date", ""],
  ["to", "Date to", "date", ""],
  ["modality", "Modality", "select", ""],
  ["description", "Description", "text", ""],
  ["aet", "Sent by (AE)", "text", ""],
];
const MODALITIES = ["", "CT", "MR", "CR", "DX", "MG", "US", "NM", "PT", "XA", "RF", "OT", "SC", "SR", "PR", "SEG", "RTSTRUCT", "ECG"];

let state = { form: {}, sort: "-StudyDate", offset: 0 };
try { state = { ...state, ...JSON.parse(sessionStorage.getItem(STATE_KEY) || "{}") }; } catch (_) { /* a fresh start */ }

const main = document.getElementById("main");
const inputs = {};
const form = el("form", { class: "search", role: "search", "aria-label": "Find studies" });
for (const [key, label, kind, hint] of FIELDS) {
  let input;
  if (kind === "select") {
    input = el("select", { name: key, id: `f-${key}` }, MODALITIES.map((m) => el("option", { value: m, text: m || "any" })));
  } else {
    input = el("input", { name: key, id: `f-${key}`, type: kind, placeholder: hint, autocomplete: "off" });
  }
  input.value = state.form[key] || "";
  inputs[key] = input;
  form.append(el("label", { for: `f-${key}` }, label, input));
}
form.append(el("button", { type: "submit", text: "Search" }),
  el("button", { type: "button", text: "Clear", onclick: () => { for (const i of Object.values(inputs)) i.value = ""; submit(); } }));
form.addEventListener("submit", (e) => { e.preventDefault(); submit(); });

const live = el("p", { class: "muted", role: "status", "aria-live": "polite", id: "result-count" });
const table = el("table", { class: "grid", "aria-describedby": "result-count" });
const caption = el("caption", { class: "sr-only", text: "Studies; the column headers sort" });
const headRow = el("tr");
table.append(caption, el("thead", {}, headRow), el("tbody"));
const prev = el("button", { type: "button", text: "◀ Previous", onclick: () => page(-1) });
const next = el("button", { type: "button", text: "Next ▶", onclick: () => page(1) });
const where = el("span", { class: "muted" });
main.append(el("div", { class: "page" }, el("h1", { text: "Studies" }), form, live, table,
  el("nav", { class: "pager", "aria-label": "Pages" }, prev, where, next)));
markNav("list");

function header() {
  headRow.replaceChildren();
  for (const [label, key] of COLUMNS) {
    const th = el("th", { scope: "col", class: NUMERIC.has(label) ? "num" : null });
    if (key) {
      const sorted = state.sort.replace(/^-/, "") === key;
      th.setAttribute("aria-sort", sorted ? (state.sort.startsWith("-") ? "descending" : "ascending") : "none");
      th.append(el("button", { type: "button", text: label, onclick: () => sortBy(key) }));
    } else th.textContent = label;
    headRow.append(th);
  }
}

function sortBy(key) {
  state.sort = state.sort === key ? `-${key}` : state.sort === `-${key}` ? key : (NUMERIC.has(key) || key === "StudyDate" ? `-${key}` : key);
  state.offset = 0;
  search();
}

function page(step) {
  state.offset = Math.max(0, state.offset + step * PAGE);
  search();
}

function submit() {
  state.offset = 0;
  search();
}

function contains(v) {
  v = v.trim();
  if (!v) return "";
  return /[*?]/.test(v) ? v : `*${v}*`;
}

function params() {
  const f = {};
  for (const [k, i] of Object.entries(inputs)) f[k] = i.value.trim();
  state.form = f;
  const q = new URLSearchParams();
  if (f.name) q.set("PatientName", contains(f.name));
  if (f.pid) q.set("PatientID", /[*?]/.test(f.pid) ? f.pid : f.pid);
  if (f.accession) q.set("AccessionNumber", f.accession);
  if (f.from || f.to) q.set("StudyDate", `${f.from.replaceAll("-", "")}-${f.to.replaceAll("-", "")}`);
  if (f.modality) q.set("ModalitiesInStudy", f.modality);
  if (f.description) q.set("StudyDescription", contains(f.description));
  if (f.aet) q.set("SourceApplicationEntityTitle", f.aet);
  q.set("includefield", "SourceApplicationEntityTitle");
  q.set("orderby", state.sort);
  q.set("limit", String(PAGE));
  q.set("offset", String(state.offset));
  return q;
}

let generation = 0;
async function search() {
  const mine = ++generation;
  sessionStorage.setItem(STATE_KEY, JSON.stringify(state));
  header();
  const started = performance.now();
  live.textContent = "Searching…";
  let studies, more;
  try {
    const r = await request(`${BASE}/studies?${params()}`, { headers: { Accept: "application/dicom+json" } });
    more = /additional results/i.test(r.headers.get("Warning") || "");
    studies = r.status === 204 ? [] : await r.json();
  } catch (e) {
    if (mine === generation) live.innerHTML = "", live.append(el("span", { class: "error", text: `Search failed: ${e.message}` }));
    return;
  }
  if (mine !== generation) return;
  const ms = Math.round(performance.now() - started);
  performance.mark("dicomnode:list-shown", { detail: { ms } });
  const body = table.tBodies[0];
  body.replaceChildren();
  for (const s of studies) {
    const uid = value(s, TAG.StudyInstanceUID);
    const tr = el("tr", { "data-uid": uid });
    COLUMNS.forEach(([label], i) => {
      const content = COLUMNS[i][2](s);
      const td = el("td", { class: NUMERIC.has(label) ? "num" : label === "Description" ? "wrap" : null });
      if (i === 0) td.append(el("a", { href: `/studies/${uid}`, text: content || "(no name)" }));
      else td.textContent = content;
      tr.append(td);
    });
    tr.addEventListener("dblclick", () => location.assign(`/studies/${uid}`));
    body.append(tr);
  }
  const first = studies.length ? state.offset + 1 : 0;
  live.textContent = studies.length
    ? `Studies ${first}–${state.offset + studies.length}${more ? " (more on the next page)" : ""} · ${ms} ms`
    : "No study matches.";
  where.textContent = studies.length ? `${first}–${state.offset + studies.length}` : "";
  prev.disabled = state.offset === 0;
  next.disabled = !more;
}

// keyboard: / focuses the search, j/k or arrows move through the rows, Enter opens
document.addEventListener("keydown", (e) => {
  if (e.target.closest("input, select")) return;
  const rows = [...table.tBodies[0].rows];
  const at = rows.findIndex((r) => r.classList.contains("selected"));
  if (e.key === "/") { e.preventDefault(); inputs.name.focus(); return; }
  if (["ArrowDown", "j", "ArrowUp", "k"].includes(e.key) && rows.length && !e.target.closest("button")) {
    e.preventDefault();
    const to = Math.min(rows.length - 1, Math.max(0, at + (e.key === "ArrowDown" || e.key === "j" ? 1 : -1)));
    rows.forEach((r) => r.classList.toggle("selected", r === rows[to]));
    rows[to].querySelector("a").focus();
  }
});

search();
