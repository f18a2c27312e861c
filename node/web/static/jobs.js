// The on-arrival queue (GET /api/jobs): state, attempts, last error; failed jobs can be retried one
// by one or all at once (POST /api/jobs/retry), as `dicomnode jobs retry` does. Refreshes every 5 s.
import { el, json, markNav, request } from "./api.js";

const main = document.getElementById("main");
const filter = el("select", { id: "state" }, ["", "pending", "running", "failed", "done"].map((s) => el("option", { value: s, text: s || "all" })));
const depth = el("p", { class: "muted", role: "status", "aria-live": "polite" });
const retryAll = el("button", { type: "button", text: "Retry all failed", onclick: () => retry({ failed: true }) });
const table = el("table", { class: "grid" }, el("caption", { class: "sr-only", text: "On-arrival jobs, newest first" }),
  el("thead", {}, el("tr", {}, ["Job", "Instance", "Action", "State", "Attempts", "Last error", "Updated", ""].map((h) => el("th", { scope: "col", text: h })))),
  el("tbody"));
main.append(el("div", { class: "page" }, el("h1", { text: "Jobs" }),
  el("div", { class: "search" }, el("label", { for: "state" }, "State", filter), retryAll), depth, table));
markNav("jobs");
filter.addEventListener("change", load);

async function retry(body) {
  await request("/api/jobs/retry", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
  load();
}

async function load() {
  let answer;
  try {
    answer = await json(`/api/jobs?limit=500${filter.value ? `&state=${filter.value}` : ""}`);
  } catch (e) {
    depth.textContent = `Cannot read the queue: ${e.message}`;
    return;
  }
  const d = answer.depth;
  depth.textContent = `${d.pending} pending · ${d.running} running · ${d.failed} failed · ${d.done} done`;
  retryAll.disabled = !d.failed;
  const body = table.tBodies[0];
  body.replaceChildren(...answer.jobs.map((j) => el("tr", {},
    el("td", { text: String(j.id) }), el("td", { text: j.sop_instance_uid }), el("td", { text: j.action }),
    el("td", { class: j.state === "failed" ? "bad" : j.state === "done" ? "ok" : "warn", text: j.state }),
    el("td", { class: "num", text: String(j.attempts) }), el("td", { class: "wrap", text: j.last_error || "" }),
    el("td", { text: j.updated_at.replace("T", " ").slice(0, 19) }),
    el("td", {}, j.state === "failed" || j.state === "done"
      ? el("button", { type: "button", text: "Retry", "aria-label": `Retry job ${j.id}`, onclick: () => retry({ id: j.id }) }) : null))));
}

load();
setInterval(() => { if (!document.hidden) load(); }, 5000);
