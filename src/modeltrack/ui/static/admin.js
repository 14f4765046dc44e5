// The administration pages: Keys, Org (teams, members, budgets, limits) and Audit, on /api/v1/admin/.
// app.js routes to ADMIN_PAGES and lends its helpers (a module cycle: only functions cross it, at call time).
// A key's or a member's secret is shown once, in the answer to its creation, and never kept by the page.
import { ApiError, errorCard, h, render, route } from "./app.js";

async function adminApi(method, path, body) {
  const init = { method, credentials: "same-origin", headers: {} };
  if (body !== undefined) { init.body = JSON.stringify(body); init.headers["Content-Type"] = "application/json"; }
  const r = await fetch("/api/v1/admin/" + path, init);
  const data = await r.json().catch(() => null);
  if (!r.ok) throw new ApiError(r.status, data);
  return data;
}

function adminLogin(then) {
  const input = h("input", { type: "password", "data-testid": "admin-token", placeholder: "admin or member token", autocomplete: "off" });
  const msg = h("p", { class: "sub" });
  const go = async () => {
    try { await adminApi("POST", "login", { token: input.value }); then(); }
    catch (e) { msg.textContent = e.message; }
  };
  input.addEventListener("keydown", (ev) => { if (ev.key === "Enter") go(); });
  return h("div", { class: "card", "data-testid": "admin-login" },
    h("h2", { text: "Sign in to administer" }),
    h("p", { class: "sub", text: "An admin token (MODELTRACK_ADMIN_TOKENS) or the mtm_ token you were given when you were added." }),
    h("div", { class: "row" }, input, h("button", { type: "button", text: "Sign in", on: { click: go } })), msg,
    h("p", { class: "sub" }, "Or, when an OIDC provider is configured: ", h("a", { href: "/api/v1/oidc/login", text: "sign in with your organisation (SSO)" })));
}

async function whoAmI(page) {
  try { return await adminApi("GET", "me"); }
  catch (e) { if (e.status === 401) { render(h("h1", { text: page }), adminLogin(() => route())); return null; } throw e; }
}

function field(name, label, attrs) {
  return h("label", {}, label, h("input", { name, "data-field": name, ...(attrs || {}) }));
}
function formValues(form) {
  const out = {};
  for (const el of form.querySelectorAll("[data-field]")) {
    const v = el.value.trim();
    if (!v) continue;
    if (el.dataset.kind === "number") out[el.dataset.field] = Number(v);
    else if (el.dataset.kind === "list") out[el.dataset.field] = v.split(",").map((s) => s.trim()).filter(Boolean);
    else if (el.dataset.kind === "instant") out[el.dataset.field] = new Date(v).toISOString().replace(/\.\d{3}Z$/, "Z");
    else out[el.dataset.field] = v;
  }
  return out;
}
function secretBox(what, secret) {
  return h("div", { class: "card secret", "data-testid": "secret" },
    h("h2", { text: `Your new ${what}: copy it now` }),
    h("pre", { text: secret }),
    h("p", { class: "sub", text: "It is shown this once. ModelTrack keeps only its digest: if it is lost, rotate it." }));
}
function table(cols, rows, testid) {
  return h("table", { "data-testid": testid },
    h("thead", {}, h("tr", {}, cols.map((c) => h("th", { text: c })))),
    h("tbody", {}, rows));
}
function teamSelect(teams, name, optional) {
  return h("label", {}, "Team", h("select", { "data-field": name, "data-testid": `${name}-select` },
    optional ? h("option", { value: "", text: "(none)" }) : null,
    teams.map((t) => h("option", { value: t.id, text: t.name }))));
}

// Each key's spend over the last 30 days, from the spend API's breakdown by key (what a key's budget reads too);
// null when this sign-in may not read spend (the page then shows "-").
async function keySpend() {
  try {
    const meta = await fetch("/api/v1/meta", { credentials: "same-origin" });
    if (!meta.ok) return null;
    if (!(await meta.json()).store.exists) return {};  // no events stored yet: nothing spent
    const r = await fetch("/api/v1/breakdown?" + new URLSearchParams({ dimension: "key_id", days: 30, limit: 1000 }), { credentials: "same-origin" });
    if (!r.ok) return null;
    return Object.fromEntries((await r.json()).rows.map((row) => [row.key_id, row.cost_usd]));
  } catch { return null; }
}
function spendText(spent, k) {
  if (!spent) return "-";
  const usd = `$${(spent[k.id] || 0).toFixed(4)}`;
  return k.budget_usd ? `${usd} of $${k.budget_usd} / ${k.budget_period || "monthly"}` : usd;
}

async function keysPage(q, notice) {
  const me = await whoAmI("Keys");
  if (!me) return;
  const [{ keys }, { teams }, spent] = await Promise.all([adminApi("GET", "keys"), adminApi("GET", "teams"), keySpend()]);
  const teamName = Object.fromEntries(teams.map((t) => [t.id, t.name]));
  const act = async (fn) => { try { await fn(); } catch (e) { render(errorCard(e.message)); } };
  const rows = keys.map((k) => h("tr", { "data-key": k.id },
    h("td", { text: k.name }), h("td", { text: k.prefix }), h("td", { text: teamName[k.team_id] || "-" }),
    h("td", { text: [k.app, k.user].filter(Boolean).join(" / ") || "-" }),
    h("td", { text: (k.allowed_models || []).join(", ") || "any" }),
    h("td", { text: [k.rpm ? `${k.rpm} rpm` : "", k.tpm ? `${k.tpm} tpm` : ""].filter(Boolean).join(", ") || "-" }),
    h("td", { text: spendText(spent, k), "data-testid": "key-spend" }),
    h("td", { text: k.expires || "never" }), h("td", { text: k.last_used || "never" }),
    h("td", { text: k.revoked ? `revoked ${k.revoked}` : k.blocked ? "blocked" : "active", "data-testid": "status" }),
    h("td", {}, k.revoked ? null : [
      h("button", { type: "button", text: "Rotate", "data-testid": "rotate", on: { click: () => act(async () => {
        const r = await adminApi("POST", `keys/${k.id}/rotate`); await keysPage(q, secretBox("key", r.secret)); }) } }),
      h("button", { type: "button", text: k.blocked ? "Unblock" : "Block", "data-testid": "block", on: { click: () => act(async () => {
        await adminApi("PATCH", `keys/${k.id}`, { blocked: !k.blocked }); await keysPage(q); }) } }),
      h("button", { type: "button", text: "Revoke", "data-testid": "revoke", on: { click: () => act(async () => {
        await adminApi("DELETE", `keys/${k.id}`); await keysPage(q); }) } })])));
  const form = h("form", { class: "row", "data-testid": "create-key" },
    field("name", "Name", { required: true }), teamSelect(teams, "team_id", true), field("app", "App"), field("user", "User"),
    field("allowed_models", "Allowed models", { "data-kind": "list", placeholder: "gpt-4o-mini, claude-*" }),
    field("rpm", "RPM", { "data-kind": "number", type: "number", min: 1 }),
    field("tpm", "TPM", { "data-kind": "number", type: "number", min: 1 }),
    field("budget_usd", "Budget (USD / month)", { "data-kind": "number", type: "number", min: 0, step: "any" }),
    field("expires", "Expires", { "data-kind": "instant", type: "datetime-local" }),
    h("button", { type: "submit", text: "Create key" }));
  form.addEventListener("submit", (ev) => { ev.preventDefault(); act(async () => {
    const made = await adminApi("POST", "keys", formValues(form)); await keysPage(q, secretBox("key", made.secret)); }); });
  render(h("h1", { text: "Keys" }),
    h("p", { class: "sub", text: `Signed in as ${me.subject} (${me.role}). Clients send a key in X-ModelTrack-Key; its team, app and user are fixed.` }),
    notice || null,
    h("div", { class: "card" }, h("h2", { text: "New key" }), form),
    h("div", { class: "card" }, keys.length ? table(["Name", "Key", "Team", "App / user", "Models", "Limits", "Spend (30 d)", "Expires", "Last used", "Status", ""], rows, "keys")
      : h("p", { class: "sub", text: "No keys yet." })));
}

async function orgPage(q, notice) {
  const me = await whoAmI("Org");
  if (!me) return;
  const [teams, members, budgets, limits] = await Promise.all(
    ["teams", "members", "budgets", "limits"].map(async (k) => (await adminApi("GET", k))[k]));
  const teamName = Object.fromEntries(teams.map((t) => [t.id, t.name]));
  const act = async (fn) => { try { await fn(); } catch (e) { render(errorCard(e.message)); } };
  const creator = (kind, testid, fields, after) => {
    const form = h("form", { class: "row", "data-testid": testid }, fields, h("button", { type: "submit", text: "Add" }));
    form.addEventListener("submit", (ev) => { ev.preventDefault(); act(async () => {
      const made = await adminApi("POST", kind, formValues(form)); await orgPage(q, after ? after(made) : null); }); });
    return form;
  };
  const remove = (kind, id) => h("button", { type: "button", text: "Remove", on: { click: () => act(async () => {
    await adminApi("DELETE", `${kind}/${id}`); await orgPage(q); }) } });
  render(h("h1", { text: "Org" }), notice || null,
    h("div", { class: "card" }, h("h2", { text: "Teams" }),
      table(["Team", "Allowed models", "Members", "Budgets", "Limits"], teams.map((t) => h("tr", {},
        h("td", { text: t.name }), h("td", { text: (t.allowed_models || []).join(", ") || "any" }),
        h("td", { text: members.filter((m) => m.team_id === t.id).map((m) => `${m.subject} (${m.role})`).join(", ") || "-" }),
        h("td", { text: budgets.filter((b) => b.team_id === t.id).map((b) => `$${b.limit_usd} ${b.period}`).join(", ") || "-" }),
        h("td", { text: limits.filter((l) => l.team_id === t.id).map((l) => [l.rpm && `${l.rpm} rpm`, l.tpm && `${l.tpm} tpm`].filter(Boolean).join(", ")).join("; ") || "-" }))), "teams"),
      creator("teams", "create-team", [field("name", "Name", { required: true }),
        field("allowed_models", "Allowed models", { "data-kind": "list", placeholder: "gpt-4o-mini, claude-*" })])),
    h("div", { class: "card" }, h("h2", { text: "Members" }),
      table(["Subject", "Role", "Team", ""], members.map((m) => h("tr", {}, h("td", { text: m.subject }), h("td", { text: m.role }),
        h("td", { text: teamName[m.team_id] || "whole org" }), h("td", {}, remove("members", m.id)))), "members"),
      creator("members", "create-member", [field("subject", "Email or name", { required: true }),
        h("label", {}, "Role", h("select", { "data-field": "role" }, ["viewer", "team_admin", "org_admin"].map((r) => h("option", { value: r, text: r })))),
        teamSelect(teams, "team_id", true)], (made) => secretBox("member's sign-in token", made.secret))),
    h("div", { class: "card" }, h("h2", { text: "Budgets and limits" }),
      table(["Budget", "Team", "Limit", ""], budgets.map((b) => h("tr", {}, h("td", { text: b.name }), h("td", { text: teamName[b.team_id] || "whole org" }),
        h("td", { text: `$${b.limit_usd} ${b.period} (${b.action})` }), h("td", {}, remove("budgets", b.id)))), "budgets"),
      creator("budgets", "create-budget", [field("name", "Name", { required: true }), teamSelect(teams, "team_id", true),
        field("limit_usd", "USD", { "data-kind": "number", type: "number", step: "any", required: true }),
        h("label", {}, "Period", h("select", { "data-field": "period" }, ["monthly", "weekly", "daily"].map((p) => h("option", { value: p, text: p }))))]),
      table(["Rate limit", "RPM", "TPM", ""], limits.map((l) => h("tr", {}, h("td", { text: teamName[l.team_id] || "whole org" }),
        h("td", { text: l.rpm || "-" }), h("td", { text: l.tpm || "-" }), h("td", {}, remove("limits", l.id)))), "limits"),
      creator("limits", "create-limit", [teamSelect(teams, "team_id", true),
        field("rpm", "RPM", { "data-kind": "number", type: "number", min: 1 }), field("tpm", "TPM", { "data-kind": "number", type: "number", min: 1 })])));
}

function changeText(e) {
  const before = e.before || {}, after = e.after || {};
  const keys = [...new Set([...Object.keys(before), ...Object.keys(after)])].filter((k) => JSON.stringify(before[k]) !== JSON.stringify(after[k]));
  return keys.map((k) => `${k}: ${JSON.stringify(before[k] ?? null)} → ${JSON.stringify(after[k] ?? null)}`).join("; ");
}

async function auditPage(q) {
  const me = await whoAmI("Audit log");
  if (!me) return;
  const data = await adminApi("GET", "audit?limit=100" + (q.get("before") ? `&before=${encodeURIComponent(q.get("before"))}` : ""));
  const rows = data.entries.map((e) => h("tr", {}, h("td", { text: e.ts }), h("td", { text: e.actor }), h("td", { text: e.action }),
    h("td", { text: `${e.kind} ${e.id}` }), h("td", { class: "change", text: changeText(e) })));
  render(h("h1", { text: "Audit log" }),
    h("p", { class: "sub" }, "Every change: who, what, before and after (never a secret), when. ",
      h("a", { href: "/api/v1/admin/audit?format=jsonl&limit=1000", "data-testid": "audit-download", text: "Download (JSON Lines)" })),
    h("div", { class: "card" }, data.entries.length ? table(["When (UTC)", "Who", "Action", "What", "Change"], rows, "audit")
      : h("p", { class: "sub", text: "No changes yet." }),
      data.next_before && data.entries.length === 100 ? h("a", { href: `/audit?before=${data.next_before}`, "data-nav": "", text: "Older" }) : null));
}

export const ADMIN_PAGES = { keys: keysPage, org: orgPage, audit: auditPage };
