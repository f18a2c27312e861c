// Sign in: HTTP Basic (user name and password) or a bearer token (JWT), as the node's [web] auth
// asks. The credentials stay in this tab's session storage and go with every request in the
// Authorization header; nothing is sent until the node has checked them.
import { el, signIn } from "./api.js";

const q = new URLSearchParams(location.search);
const scheme = q.get("scheme") === "bearer" ? "bearer" : "basic";
const nextPage = /^\/[A-Za-z0-9./-]*$/.test(q.get("next") || "") ? q.get("next") : "/";
const main = document.getElementById("main");
const message = el("p", { role: "alert", class: "error" });
const fields = scheme === "basic"
  ? [el("label", { for: "user" }, "User name", el("input", { id: "user", autocomplete: "username", required: true })),
    el("label", { for: "password" }, "Password", el("input", { id: "password", type: "password", autocomplete: "current-password", required: true }))]
  : [el("label", { for: "token" }, "Access token (JWT)", el("input", { id: "token", autocomplete: "off", required: true }))];
const form = el("form", { class: "login", "aria-label": "Sign in" }, el("h1", { text: "Sign in to dicomnode" }), ...fields,
  el("button", { type: "submit", text: "Sign in" }), message);
main.append(form);
form.querySelector("input").focus();
form.addEventListener("submit", async (e) => {
  e.preventDefault();
  const value = scheme === "basic"
    ? "Basic " + btoa(unescape(encodeURIComponent(`${form.querySelector("#user").value}:${form.querySelector("#password").value}`)))
    : "Bearer " + form.querySelector("#token").value.trim();
  const r = await fetch("/api/status", { headers: { Authorization: value, "X-Dicomnode-Login": "form" } });
  if (r.status === 401) {
    message.textContent = (await r.text()).trim() || "not accepted";
    return;
  }
  signIn(value);
  location.assign(nextPage);
});
