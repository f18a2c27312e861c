// The node at a glance (GET /api/status, the report of `dicomnode status`): ready or not, listeners,
// associations, what arrived today, storage used and free, the queue, the analysis findings.
import { bytes, el, json, markNav } from "./api.js";

const main = document.getElementById("main");
const cards = el("div", { class: "cards", "aria-live": "polite" });
main.append(el("div", { class: "page" }, el("h1", { text: "Status" }), cards));
markNav("status");

function card(title, rows) {
  return el("section", { class: "card", "aria-label": title }, el("h2", { text: title }),
    el("dl", {}, rows.flatMap(([k, v, cls]) => [el("dt", { text: k }), el("dd", { class: cls || null, text: String(v ?? "") })])));
}

async function load() {
  let r;
  try {
    r = await json("/api/status");
  } catch (e) {
    cards.replaceChildren(el("p", { class: "error", text: `Cannot read the status: ${e.message}` }));
    return;
  }
  const today = r.today || {};
  const objects = Object.entries(r.received_objects || {}).map(([s, n]) => `${n} ${s}`).join(", ") || "none";
  cards.replaceChildren(
    card("Node", [["state", r.ready ? "ready" : `not ready: ${r.problems.join("; ")}`, r.ready ? "ok" : "bad"],
      ["process", r.running ? `running, PID ${r.pid}` : "not running"],
      ...(r.listeners || []).map((l) => ["listening", `${l.kind} ${l.address}`]),
      ["index", r.index.up ? "up" : r.index.error, r.index.up ? "ok" : "bad"]]),
    card("Associations", [["open now", r.associations_open ?? "–"], ["since start", r.associations ?? "–"],
      ["rejected", r.associations_rejected ?? "–"], ["objects this run", objects]]),
    card("Today", [["received", today.received ?? "–"], ["last arrival", (r.last_received_at || "never").replace("T", " ").slice(0, 19)]]),
    card("Storage", [["used", bytes(r.bytes)], ["free", bytes(r.disk.free_bytes), r.disk.free_bytes < r.disk.min_free_bytes ? "bad" : ""],
      ["reserve (min_free_mb)", bytes(r.disk.min_free_bytes)], ["archive", r.archive]]),
    card("Holdings", [["patients", r.patients], ["studies", r.studies], ["series", r.series], ["instances", r.instances]]),
    card("Jobs", Object.entries(r.jobs || {}).map(([s, n]) => [s, n, s === "failed" && n ? "bad" : ""])),
    card("Analysis findings", [["analysed", today.analysed ?? "–"], ["with errors", today.with_errors ?? "–", today.with_errors ? "bad" : ""],
      ["with warnings", today.with_warnings ?? "–", today.with_warnings ? "warn" : ""],
      ...Object.entries(today.codes || {}).slice(0, 12).map(([c, n]) => [c, n])]),
  );
}

load();
setInterval(() => { if (!document.hidden) load(); }, 5000);
