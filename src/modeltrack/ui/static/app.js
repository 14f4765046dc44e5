// ModelTrack dashboard: plain ES module, no build step. Every figure comes from /api/v1 (the same JSON any
// script can read); the page and its filters live in the URL, so any view can be shared by copying it.

import { ADMIN_PAGES } from "./admin.js";
import { LOG_PAGES, logLink, openLog, usageCharts } from "./requests.js";

const DIMS = ["team", "app", "feature", "user", "provider", "model"];
const FILTERS = [...DIMS, "status", "cache_hit", "error", "prompt_id", "key_id", "processing"];
const PAGES = { teams: "team", apps: "app", features: "feature", users: "user", models: "model" };
const TITLES = { team: "Teams", app: "Apps", feature: "Features", user: "Users", model: "Models", provider: "Providers" };
let meta = null;
let charts = [];

// ---- formatting --------------------------------------------------------------------------------------------
export function money(v) {
  if (v === null || v === undefined) return "—";
  const a = Math.abs(v);
  const sign = v < 0 ? "−" : "";
  if (a === 0) return "$0.00";
  if (a >= 1000) return sign + "$" + a.toLocaleString("en-US", { maximumFractionDigits: 0 });
  if (a >= 1) return sign + "$" + a.toLocaleString("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 2 });
  if (a >= 0.01) return sign + "$" + a.toFixed(3);
  return sign + "$" + a.toPrecision(3);
}
function axisMoney(v) {
  if (v === 0) return "$0";
  const a = Math.abs(v);
  if (a >= 1000) return "$" + (v / 1000).toFixed(a >= 10000 ? 0 : 1) + "k";
  if (a >= 1) return "$" + v.toFixed(a >= 100 ? 0 : 2);
  return "$" + v.toPrecision(2);
}
const count = (n) => (n ?? 0).toLocaleString("en-US");
function compact(n) {
  if (n >= 1e9) return (n / 1e9).toFixed(1) + "B";
  if (n >= 1e6) return (n / 1e6).toFixed(1) + "M";
  if (n >= 1e4) return (n / 1e3).toFixed(1) + "k";
  return count(n);
}
const pct = (r) => (r === null || r === undefined ? "—" : (100 * r).toFixed(1) + "%");
const ms = (v) => (v === null || v === undefined ? "—" : v >= 1000 ? (v / 1000).toFixed(2) + " s" : Math.round(v) + " ms");
function duration(v) {  // a session's wall-clock span: ms and s for short runs, then minutes, hours, days
  if (v < 60000) return ms(v);
  const m = Math.round(v / 60000), hrs = Math.floor(m / 60), d = Math.floor(hrs / 24);
  if (hrs < 1) return `${m} min`;
  if (d < 1) return `${hrs} h ${m % 60} min`;
  return `${d} d ${hrs % 24} h`;
}
function label(v) {
  if (v === "__other__") return "others";
  if (v === null || v === undefined || v === "") return "(none)";
  return String(v);
}
function when(iso, tz) {
  const d = new Date(iso);
  return d.toLocaleString("en-GB", { timeZone: tz || "UTC", dateStyle: "medium", timeStyle: "short" });
}
function day(iso, tz) {
  return new Date(iso).toLocaleDateString("en-GB", { timeZone: tz || "UTC", day: "numeric", month: "short" });
}

// ---- DOM -----------------------------------------------------------------------------------------------------
function h(tag, attrs, ...kids) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "on") for (const [ev, fn] of Object.entries(v)) el.addEventListener(ev, fn);
    else if (k === "text") el.textContent = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const kid of kids.flat()) if (kid !== null && kid !== undefined && kid !== false) el.append(kid);
  return el;
}
const view = () => document.getElementById("view");
function render(...nodes) {
  for (const c of charts) c.destroy();
  charts = [];
  view().replaceChildren(...nodes);
}
function kpi(testid, labelText, value, display, note) {
  return h("div", { class: "card kpi", "data-testid": testid },
    h("div", { class: "label", text: labelText }),
    h("div", { class: "value", "data-value": value, text: display }),
    note ? h("div", { class: "note", text: note }) : null);
}
function unpricedNote(n) { return n ? ` · ${count(n)} unpriced (not in the sum)` : ""; }
// A KPI card that opens the requests behind its figure.
function linked(card, params) {
  card.classList.add("click");
  card.addEventListener("click", () => openLog(params));
  card.append(logLink(params));
  return card;
}
function shareBar(r) {
  const fill = h("i");
  fill.style.width = Math.round(100 * Math.min(Math.max(r, 0), 1)) + "%";
  return h("span", { class: "share" }, fill);
}
function change(pctValue) {
  if (pctValue === null || pctValue === undefined) return h("span", { class: "none", text: "new" });
  const cls = pctValue > 0 ? "up" : pctValue < 0 ? "down" : "";
  return h("span", { class: cls, text: (pctValue > 0 ? "+" : "") + pctValue.toFixed(0) + "%" });
}
function emptyState(title, text, code) {
  return h("div", { class: "card empty", "data-testid": "empty" }, h("h2", { text: title }), h("p", { text: text }),
    code ? h("pre", { text: code }) : null);
}
function errorCard(message) {
  return h("div", { class: "card error", "data-testid": "error", text: message });
}

// ---- state in the URL -----------------------------------------------------------------------------------------
function state() {
  const u = new URL(location.href);
  return { page: u.pathname.replace(/^\//, "").replace(/\/$/, ""), q: u.searchParams };
}
function go(page, changes, replace) {
  const u = new URL(location.href);
  if (page !== null) u.pathname = "/" + page;
  for (const [k, v] of Object.entries(changes || {})) {
    if (v === null || v === undefined) u.searchParams.delete(k);
    else u.searchParams.set(k, v);
  }
  (replace ? history.replaceState : history.pushState).call(history, null, "", u);
  route();
}
function tzName(q) { return q.get("tz") || "UTC"; }
function isoDay(date, tz) {
  const parts = new Intl.DateTimeFormat("en-CA", { timeZone: tz, year: "numeric", month: "2-digit", day: "2-digit" })
    .formatToParts(date);
  const get = (t) => parts.find((p) => p.type === t).value;
  return `${get("year")}-${get("month")}-${get("day")}`;
}
function rangeParams(q) {
  const tz = tzName(q);
  const r = q.get("range") || (q.get("since") ? "custom" : "30d");
  const today = isoDay(new Date(), tz);
  const back = (n) => isoDay(new Date(Date.now() - n * 86400000), tz);
  const [y, m] = today.split("-").map(Number);
  if (r === "today") return { since: today, until: today, tz };
  if (r === "7d") return { since: back(6), until: today, tz };
  if (r === "90d") return { since: back(89), until: today, tz };
  if (r === "month") return { since: `${today.slice(0, 8)}01`, until: today, tz };
  if (r === "lastmonth") {
    const last = new Date(Date.UTC(y, m - 1, 0));
    const ly = last.getUTCFullYear(), lm = String(last.getUTCMonth() + 1).padStart(2, "0");
    return { since: `${ly}-${lm}-01`, until: `${ly}-${lm}-${String(last.getUTCDate()).padStart(2, "0")}`, tz };
  }
  if (r === "custom" && q.get("since")) return { since: q.get("since"), until: q.get("until") || today, tz };
  return { since: back(29), until: today, tz };
}
function filters(q, except) {
  const out = {};
  for (const f of FILTERS) if (q.has(f) && f !== except) out[f] = q.get(f);
  return out;
}

// ---- API ------------------------------------------------------------------------------------------------------
class ApiError extends Error {
  constructor(status, body) { super(body?.error?.message || `HTTP ${status}`); this.status = status; }
}
async function api(path, params) {
  const u = new URL("/api/v1/" + path, location.origin);
  for (const [k, v] of Object.entries(params || {})) if (v !== null && v !== undefined) u.searchParams.set(k, v);
  const r = await fetch(u, { credentials: "same-origin" });
  const body = await r.json().catch(() => null);
  if (r.status === 401) { showLogin(); throw new ApiError(401, body); }
  if (!r.ok) throw new ApiError(r.status, body);
  return body;
}
function apiUrl(path, params) {
  const u = new URL("/api/v1/" + path, location.origin);
  for (const [k, v] of Object.entries(params || {})) if (v !== null && v !== undefined) u.searchParams.set(k, v);
  return u.pathname + u.search;
}

// ---- charts (uPlot) -------------------------------------------------------------------------------------------
const PALETTE = ["#2f6fed", "#12805c", "#c4320a", "#7a5af8", "#dc6803", "#0e9384", "#dd2590", "#475467", "#98a2b3"];
// opts: tz, bars, height; field (what each series draws, default cost_usd) and fmt/axis (its formatting);
// onPoint(bucketIndex, seriesKey): a click on the plot (every chart point opens the requests behind it).
function chart(container, buckets, series, opts) {
  const width = Math.max(container.clientWidth - 8, 320);
  const xs = buckets.map((b) => Date.parse(b) / 1000);
  const bars = series.length === 1 && opts?.bars !== false;
  const fmt = opts?.fmt || money;
  const values = (s) => (opts?.get ? opts.get(s) : s[opts?.field || "cost_usd"]);
  const cfg = {
    width, height: opts?.height || 240,
    tzDate: (ts) => uPlot.tzDate(new Date(ts * 1000), opts?.tz || "UTC"),
    legend: { show: series.length > 1 },
    cursor: { drag: { x: false, y: false } },
    // Bars are centred on their bucket: pad the x range by half a bucket, or the first and last are cut in half.
    scales: { x: bars && xs.length > 1 ? { time: true, range: (u, lo, hi) => [lo - (xs[1] - xs[0]) / 2, hi + (xs[1] - xs[0]) / 2] } : { time: true } },
    axes: [{ stroke: "#667085", grid: { stroke: "#f0f2f5" } },
      { stroke: "#667085", grid: { stroke: "#f0f2f5" }, size: 64, values: (u, vals) => vals.map(opts?.axis || axisMoney) }],
    series: [{}, ...series.map((s, i) => ({
      label: label(s.key), stroke: PALETTE[i % PALETTE.length], width: 2,
      fill: bars ? PALETTE[0] + "cc" : undefined,
      paths: bars ? uPlot.paths.bars({ size: [0.7, 40] }) : undefined,
      points: { show: !bars },
      value: (u, v) => fmt(v),
    }))],
  };
  const plot = new uPlot(cfg, [xs, ...series.map(values)], container);
  if (opts?.onPoint) {
    plot.over.style.cursor = "pointer";
    plot.over.addEventListener("click", () => {
      const i = plot.cursor.idx;
      if (i !== null && i !== undefined) opts.onPoint(i);
    });
  }
  charts.push(plot);
  return plot;
}

// ---- pages ----------------------------------------------------------------------------------------------------
async function overviewPage(q) {
  const tz = tzName(q);
  const rp = rangeParams(q);
  const data = await api("overview", { ...rp, ...filters(q) });
  if (data.empty) return render(Object.keys(filters(q)).length ? noMatch(filters(q)) : noEvents());
  const fc = data.forecast;
  const fcCard = fc.enough_data
    ? kpi("kpi-forecast", "Forecast, end of month", fc.forecast_usd, money(fc.forecast_usd),
      `90% band ${money(fc.low_usd)} – ${money(fc.high_usd)}`)
    : kpi("kpi-forecast", "Forecast, end of month", "", "Not enough data", fc.reason);
  const chartBox = h("div", { class: "chart", "data-testid": "trend" });
  const usage = usageCharts(data.trend, tz, (i) => openLog({ range: "custom", since: data.trend.buckets[i].slice(0, 10), until: data.trend.buckets[i].slice(0, 10) }));
  render(
    h("h1", { text: "Overview" }),
    h("p", { class: "sub", text: `Last event ${when(data.last_event, tz)} · times in ${tz}` }),
    h("div", { class: "grid kpis" },
      linked(kpi("kpi-period", `Spend, ${rp.since === rp.until ? rp.since : `${rp.since} to ${rp.until}`}`, data.period.cost_usd, money(data.period.cost_usd),
        `${count(data.period.requests)} requests${unpricedNote(data.period.unpriced)}`), {}),
      linked(kpi("kpi-today", "Spend today", data.today.cost_usd, money(data.today.cost_usd),
        `${count(data.today.requests)} requests${unpricedNote(data.today.unpriced)}`), { range: "today", since: null, until: null }),
      linked(kpi("kpi-month", "Month to date", data.month_to_date.cost_usd, money(data.month_to_date.cost_usd),
        `${count(data.month_to_date.requests)} requests${unpricedNote(data.month_to_date.unpriced)}`), { range: "month", since: null, until: null }),
      fcCard,
      kpi("kpi-saved", "Saved by the response cache", data.period.saved_usd, money(data.period.saved_usd),
        "in this period")),
    h("div", { class: "card" }, h("h2", { text: `${data.trend.granularity === "hour" ? "Hourly" : "Daily"} spend, ${rp.since} to ${rp.until}` }), chartBox),
    usage.node,
    h("div", { class: "grid two", style: null },
      topTable("Top teams in this period", "team", data.top_teams),
      topTable("Top models in this period", "model", data.top_models)),
  );
  const onDay = (i) => openLog({ range: "custom", since: data.trend.buckets[i].slice(0, 10), until: data.trend.buckets[i].slice(0, 10) });
  chart(chartBox, data.trend.buckets, data.trend.series, { tz, onPoint: onDay });
  usage.draw();
}
function topTable(title, dim, rows) {
  const page = Object.keys(PAGES).find((p) => PAGES[p] === dim);
  return h("div", { class: "card", "data-testid": `top-${dim}` }, h("h2", { text: title }),
    rows.length ? h("table", {},
      h("thead", {}, h("tr", {}, h("th", { text: TITLES[dim].slice(0, -1) }), h("th", { class: "num", text: "Spend" }),
        h("th", { class: "num", text: "Share" }))),
      h("tbody", {}, rows.map((r) => h("tr", { class: "click", on: { click: () => go(page, { [dim]: r[dim] ?? "" }) } },
        h("td", { class: "name", text: label(r[dim]) }),
        h("td", { class: "num", "data-value": r.cost_usd, text: money(r.cost_usd) }),
        h("td", { class: "num" }, shareBar(r.share), pct(r.share))))))
      : h("p", { class: "none", text: "Nothing in this period." }));
}

// A breakdown table's columns after the name: [header, cell for a row (the total row with total=true)].
const tokensIn = (r) => r.input_tokens + r.cache_read_tokens + r.cache_write_tokens;
const COLUMNS = {
  spend: ["Spend", (r) => h("td", { class: "num", "data-value": r.cost_usd }, money(r.cost_usd),
    r.unpriced ? h("span", { class: "unpriced", "data-testid": "unpriced", title: "requests with no known cost, not in the sum", text: ` +${count(r.unpriced)} unpriced` }) : null)],
  share: ["Share", (r, total) => (total ? h("td", {}) : h("td", {}, shareBar(r.share), pct(r.share)))],
  change: ["vs prev.", (r) => h("td", { class: "num" }, change(r.change_pct))],
  requests: ["Requests", (r) => h("td", { class: "num", "data-value": r.requests, text: count(r.requests) })],
  input: ["Input tok.", (r) => h("td", { class: "num", text: compact(tokensIn(r)) })],
  output: ["Output tok.", (r) => h("td", { class: "num", text: compact(r.output_tokens) })],
  hits: ["Cache hits", (r) => h("td", { class: "num", text: pct(r.cache_hit_rate) })],
  errors: ["Errors", (r) => h("td", { class: "num", text: pct(r.error_rate) })],
  p50: ["p50", (r) => h("td", { class: "num", text: ms(r.latency_p50_ms) })],
  p95: ["p95", (r) => h("td", { class: "num", text: ms(r.latency_p95_ms) })],
};
const FULL = ["spend", "share", "change", "requests", "input", "output", "hits", "errors", "p50", "p95"];
const COMPACT = ["spend", "share", "change", "requests", "p95"];  // detail pages: six tables side by side

function breakdownTable(dim, data, onRow, testid = "breakdown", cols = FULL) {
  const rows = [...data.rows, ...(data.other ? [data.other] : [])];
  return h("table", { "data-testid": testid, class: cols === COMPACT ? "compact" : null },
    h("thead", {}, h("tr", {}, h("th", { text: TITLES[dim] ? TITLES[dim].slice(0, -1) : dim }),
      cols.map((c) => h("th", { class: c === "share" ? "" : "num", text: COLUMNS[c][0] })), h("th", {}))),
    h("tbody", {}, rows.map((r) => h("tr", {
      class: r[dim] === "__other__" ? "" : "click", "data-key": r[dim] ?? "",
      on: r[dim] === "__other__" ? {} : { click: () => onRow(r[dim] ?? "") },
    },
    h("td", { class: "name", title: label(r[dim]), text: r[dim] === "__other__" ? `${r.values} others` : label(r[dim]) }),
    cols.map((c) => COLUMNS[c][1](r, false)),
    h("td", {}, r[dim] === "__other__" ? null : logLink({ [dim]: r[dim] ?? "" }, "log"))))),
    cols === FULL ? h("tfoot", {}, h("tr", { class: "total", "data-testid": "total" },
      h("td", { text: "Total" }), cols.map((c) => COLUMNS[c][1](data.total, true)), h("td", {}, logLink({}, "log")))) : null);
}

async function dimensionPage(page, q) {
  const dim = PAGES[page];
  const rp = rangeParams(q);
  if (q.has(dim)) return detailPage(page, dim, q, rp);
  const [data, ser] = await Promise.all([
    api("breakdown", { dimension: dim, limit: 25, ...rp, ...filters(q) }),
    api("series", { granularity: rp.since === rp.until ? "hour" : "day", split: dim, top: 6, latency: "false", ...rp, ...filters(q) }),
  ]);
  if (!data.rows.length && Object.keys(filters(q)).length) return render(h("h1", { text: TITLES[dim] }), noMatch(filters(q)));
  if (!data.rows.length) return render(h("h1", { text: TITLES[dim] }), emptyState(
    `No spend by ${dim} in this period`,
    dim === "model" ? "Try a longer period." :
      `Requests carry a ${dim} when they send X-ModelTrack-${dim === "user" ? "User" : dim[0].toUpperCase() + dim.slice(1)}.`,
    `client = OpenAI(base_url="http://localhost:${meta?.proxy_port || 8080}/v1",\n                default_headers={"X-ModelTrack-Team": "search", "X-ModelTrack-App": "web",\n                                 "X-ModelTrack-Feature": "answers", "X-ModelTrack-User": "customer-42"})`));
  const chartBox = h("div", { class: "chart", "data-testid": "series" });
  render(
    h("h1", { text: TITLES[dim] }),
    h("p", { class: "sub", text: `${rp.since} to ${rp.until} (${rp.tz}), compared with the period before. Click a row to drill down.` }),
    h("div", { class: "card" }, h("h2", { text: `Spend by ${dim}` }), chartBox),
    h("div", { class: "card" }, breakdownTable(dim, data, (key) => go(page, { [dim]: key }))),
  );
  chart(chartBox, ser.buckets, ser.series, { tz: rp.tz, bars: false, onPoint: (i) => openLog(bucketRange(ser, i)) });
}
// The period of one chart bucket, as the request log's range (a day, or the hour's day for hourly charts).
function bucketRange(ser, i) {
  const d = ser.buckets[i].slice(0, 10);
  return { range: "custom", since: d, until: d };
}

async function detailPage(page, dim, q, rp) {
  const value = q.get(dim);
  const others = DIMS.filter((d) => d !== dim && d !== "provider" && !q.has(d));
  const [ser, ...parts] = await Promise.all([
    api("series", { granularity: rp.since === rp.until ? "hour" : "day", ...rp, ...filters(q) }),
    ...others.map((d) => api("breakdown", { dimension: d, limit: 10, ...rp, ...filters(q) })),
  ]);
  const total = parts[0]?.total;
  const chartBox = h("div", { class: "chart", "data-testid": "series" });
  const usage = usageCharts(ser, rp.tz, (i) => openLog(bucketRange(ser, i)));
  render(
    h("p", {}, h("a", { href: "#", on: { click: (e) => { e.preventDefault(); go(page, { [dim]: null }); } }, text: `← All ${TITLES[dim].toLowerCase()}` })),
    h("h1", { "data-testid": "detail-title", text: `${TITLES[dim].slice(0, -1)}: ${label(value)}` }),
    h("p", { class: "sub", text: `${rp.since} to ${rp.until} (${rp.tz})` }),
    total ? h("div", { class: "grid kpis" },
      linked(kpi("kpi-spend", "Spend", total.cost_usd, money(total.cost_usd), (total.change_pct === null ? "new this period" : `${total.change_pct > 0 ? "+" : ""}${total.change_pct}% vs previous period`) + unpricedNote(total.unpriced)), {}),
      linked(kpi("kpi-requests", "Requests", total.requests, count(total.requests), `${pct(total.error_rate)} errors`), {}),
      kpi("kpi-latency", "Latency p95", total.latency_p95_ms, ms(total.latency_p95_ms), `p50 ${ms(total.latency_p50_ms)}`),
      kpi("kpi-cache", "Response-cache hits", total.cache_hit_rate, pct(total.cache_hit_rate), `${money(total.saved_usd)} saved`)) : null,
    h("div", { class: "card" }, h("h2", { text: "Spend over time" }), chartBox),
    usage.node,
    h("div", { class: "grid two" }, others.map((d, i) => h("div", { class: "card" }, h("h2", { text: `By ${d}` }),
      parts[i].rows.length ? breakdownTable(d, parts[i], (key) => go(Object.keys(PAGES).find((p) => PAGES[p] === d) || page, { [d]: key }), `breakdown-${d}`, COMPACT)
        : h("p", { class: "none", text: `No ${d} recorded.` })))),
  );
  chart(chartBox, ser.buckets, ser.series, { tz: rp.tz, onPoint: (i) => openLog(bucketRange(ser, i)) });
  usage.draw();
}

async function sessionsPage(q) {
  const rp = rangeParams(q);
  const tz = rp.tz;
  if (q.has("session")) {
    const s = await api("sessions/" + encodeURIComponent(q.get("session")));
    let running = 0;
    return render(
      h("p", {}, h("a", { href: "#", on: { click: (e) => { e.preventDefault(); go("sessions", { session: null }); } }, text: "← All sessions" })),
      h("h1", { "data-testid": "detail-title", text: `Session ${s.session_id}` }),
      h("p", { class: "sub", text: [s.team, s.app, s.feature, s.user].filter(Boolean).join(" · ") || "no attribution" }),
      h("div", { class: "grid kpis" },
        kpi("kpi-cost", "Cost", s.cost_usd, money(s.cost_usd)),
        kpi("kpi-steps", "Steps", s.requests, count(s.requests)),
        kpi("kpi-duration", "Duration", "", duration(Date.parse(s.last_ts) - Date.parse(s.first_ts)), `from ${when(s.first_ts, tz)}`)),
      h("div", { class: "card" }, h("table", { "data-testid": "steps" },
        h("thead", {}, h("tr", {}, ["#", "Time", "Model", "Status", "Input tok.", "Output tok.", "Cost", "Running total", "Latency"]
          .map((t, i) => h("th", { class: i >= 4 ? "num" : "", text: t })))),
        h("tbody", {}, s.steps.map((st) => {
          running += st.cost_usd || 0;
          return h("tr", {},
            h("td", { text: st.step }), h("td", { text: when(st.timestamp, tz) }),
            h("td", { text: (st.model || "—") + (st.cache_hit ? " (cached)" : "") }),
            h("td", { text: st.error ? `${st.status} ${st.error}` : st.status }),
            h("td", { class: "num", text: count(st.input_tokens + st.cache_read_tokens + st.cache_write_tokens) }),
            h("td", { class: "num", text: count(st.output_tokens) }),
            h("td", { class: "num", "data-value": st.cost_usd, text: money(st.cost_usd) }),
            h("td", { class: "num", text: money(running) }),
            h("td", { class: "num", text: ms(st.latency_ms) }));
        })))),
    );
  }
  const data = await api("sessions", { limit: 50, ...rp, ...filters(q) });
  if (!data.sessions.length) return render(h("h1", { text: "Sessions" }), emptyState("No sessions in this period",
    "A session groups the calls of one agent run or conversation: send X-ModelTrack-Session-Id with each call.",
    `with modeltrack.client.context(session_id=run_id):\n    agent.run(task)`));
  render(
    h("h1", { text: "Sessions" }),
    h("p", { class: "sub", text: "The most expensive sessions in this period. Click one to see its steps in order." }),
    h("div", { class: "card" }, h("table", { "data-testid": "sessions" },
      h("thead", {}, h("tr", {}, ["Session", "Team", "App", "Feature", "User", "Steps", "Cost", "Last seen"]
        .map((t, i) => h("th", { class: i >= 5 && i < 7 ? "num" : "", text: t })))),
      h("tbody", {}, data.sessions.map((s) => h("tr", { class: "click", "data-key": s.session_id, on: { click: () => go("sessions", { session: s.session_id }) } },
        h("td", { class: "name", text: s.session_id }), h("td", { text: label(s.team) }), h("td", { text: label(s.app) }),
        h("td", { text: label(s.feature) }), h("td", { text: label(s.user) }),
        h("td", { class: "num", text: count(s.requests) }),
        h("td", { class: "num", "data-value": s.cost_usd, text: money(s.cost_usd) }),
        h("td", { text: when(s.last_ts, tz) })))))),
  );
}

async function budgetsPage() {
  const data = await api("budgets");
  if (!data.budgets.length) return render(h("h1", { text: "Budgets" }), emptyState("No budgets configured",
    "Budgets live in the controls file (MODELTRACK_CONTROLS_FILE): they warn or block per team, app, feature, user or model.",
    "budgets:\n  - name: search-monthly\n    match: {team: search}\n    period: monthly\n    limit_usd: 500\n    warn_at: [50, 80, 100]\n    action: block"));
  render(
    h("h1", { text: "Budgets" }),
    h("p", { class: "sub", text: `From ${data.controls_file}; spend read from the store.` }),
    h("div", { class: "grid two" }, data.budgets.map((b) => {
      const cls = b.percent >= 100 ? "over" : b.warn_at.length && b.percent >= b.warn_at[0] ? "warn" : "";
      const fill = h("div", { class: "bar-fill" });
      fill.style.width = Math.min(b.percent, 100) + "%";
      return h("div", { class: `card budget ${cls}`, "data-testid": "budget", "data-name": b.name },
        h("h2", { text: b.name }),
        h("div", { class: "kpi" }, h("span", { class: "value", "data-value": b.spent_usd, text: money(b.spent_usd) }),
          h("span", { class: "note", text: ` of ${money(b.limit_usd)} (${b.percent.toFixed(1)}%)` })),
        h("div", { class: "bar-track" }, fill),
        h("dl", {},
          h("dt", { text: "Applies to" }), h("dd", { text: b.scope }),
          h("dt", { text: "Period" }), h("dd", { text: `${b.period} (${b.timezone})` }),
          h("dt", { text: "Resets" }), h("dd", { text: when(b.resets, b.timezone) }),
          h("dt", { text: "Projected" }), h("dd", { text: b.projected_usd === null ? "—" : money(b.projected_usd) }),
          h("dt", { text: "When over" }), h("dd", { text: b.action === "block" ? "refuse (429)" : "warn only" })));
    })),
  );
}

async function whatifPage(q) {
  const models = await api("models");
  const list = h("datalist", { id: "models" }, Object.values(models).flat().map((m) => h("option", { value: m })));
  const rp = rangeParams(q);  // the Period selector's range, as on every page (no second selector here)
  const over = `${rp.since} to ${rp.until}`;
  const input = h("input", { name: "to_model", list: "models", placeholder: "gpt-4.1-mini", value: q.get("to_model") || "", required: true, "data-testid": "to-model" });
  const form = h("form", { class: "row", on: { submit: (e) => { e.preventDefault(); go("whatif", { to_model: input.value.trim() || null }); } } },
    h("label", {}, "Compare with model", input), h("button", { type: "submit", text: "Re-price" }), list);
  const f = filters(q);
  const scope = Object.entries(f).map(([k, v]) => `${k}=${v || "(none)"}`).join(", ") || "all traffic";
  if (!q.get("to_model")) {
    return render(h("h1", { text: "What-if" }),
      h("p", { class: "sub", text: `Re-price the real usage of ${scope} as if another model had served it, with the proxy's own prices.` }), form);
  }
  let result;
  try {
    const data = await api("whatif", { to_model: q.get("to_model"), ...rp, ...f });
    const cheaper = data.whatif_usd <= data.actual_usd;
    result = h("div", { class: "card", "data-testid": "whatif-result" },
      h("p", { class: "answer" }, `${scope} from ${over} cost `,
        h("strong", { "data-testid": "actual", "data-value": data.actual_usd, text: money(data.actual_usd) }),
        `; on ${data.target.model} it would have cost `,
        h("strong", { "data-testid": "whatif", "data-value": data.whatif_usd, text: money(data.whatif_usd) }),
        data.change_pct === null ? "." : h("span", { class: cheaper ? "down" : "up", text: ` (${data.change_pct > 0 ? "+" : ""}${data.change_pct}%).` })),
      h("table", {}, h("thead", {}, h("tr", {}, ["Provider", "Model", "Requests", "Actual", `On ${data.target.model}`].map((t, i) => h("th", { class: i >= 2 ? "num" : "", text: t })))),
        h("tbody", {}, data.rows.map((r) => h("tr", {}, h("td", { text: r.provider }), h("td", { text: label(r.model) }),
          h("td", { class: "num", text: count(r.requests) }), h("td", { class: "num", text: money(r.actual_usd) }),
          h("td", { class: "num", text: money(r.whatif_usd) }))))),
      h("p", { class: "sub", text: `${count(data.requests)} billed requests re-priced ${data.method === "per_request" ? "one by one" : "from hourly totals (base-tier prices)"}; response-cache hits are left out${data.unpriced_requests ? `; ${data.unpriced_requests} had no price` : ""}.` }));
  } catch (e) {
    if (e.status === 400) result = errorCard(e.message); else throw e;
  }
  render(h("h1", { text: "What-if" }), h("p", { class: "sub", text: `Re-price the real usage of ${scope}.` }), form, result);
}

function exportPage(q) {
  const rp = rangeParams(q);
  const f = filters(q);
  const kind = h("select", { name: "kind" }, [["events", "Events (one row per request)"], ["breakdown", "Breakdown"], ["series", "Daily series"], ["sessions", "Sessions"]]
    .map(([v, t]) => h("option", { value: v, text: t })));
  const dimSel = h("select", { name: "dimension" }, [...DIMS, "processing"].map((d) => h("option", { value: d, text: d })));
  const fmt = h("select", { name: "format" }, h("option", { value: "csv", text: "CSV" }), h("option", { value: "jsonl", text: "JSON Lines" }));
  const link = h("a", { "data-testid": "download", download: "" });
  const cmd = h("pre", { class: "wrap", "data-testid": "curl" });
  const update = () => {
    const params = { kind: kind.value, format: fmt.value, ...rp, ...f, ...(kind.value === "breakdown" ? { dimension: dimSel.value } : {}) };
    const url = apiUrl("export", params);
    link.setAttribute("href", url);
    link.textContent = `Download ${kind.value} (${fmt.value === "csv" ? "CSV" : "JSON Lines"})`;
    cmd.textContent = `curl -H "Authorization: Bearer $TOKEN" "${location.origin}${url}" -o export.${fmt.value}`;
  };
  for (const el of [kind, fmt, dimSel]) el.addEventListener("change", update);
  update();
  render(h("h1", { text: "Export" }),
    h("p", { class: "sub", text: `${rp.since} to ${rp.until} (${rp.tz}), ${Object.keys(f).length ? "filtered by " + Object.entries(f).map(([k, v]) => `${k}=${v}`).join(", ") : "all traffic"}. Streamed: any size, constant memory.` }),
    h("div", { class: "card" }, h("form", { class: "row" }, h("label", {}, "What", kind), h("label", {}, "Breakdown by", dimSel), h("label", {}, "Format", fmt)),
      h("p", {}, link), h("p", { class: "sub", text: "Or from a script:" }), cmd));
}

function noMatch(f) {
  const what = Object.entries(f).map(([k, v]) => `${k}=${v === "" ? "(none)" : v}`).join(", ");
  return emptyState(`No spend for ${what}`,
    "Nothing in this period matches these filters. Clear them, or choose a longer period, to see all traffic.", null);
}

function noStore(where) {
  return emptyState(`No store at ${where}`,
    "The proxy creates its store with the first event it records: start it (make run) and send a request, or point " +
    "the dashboard at the proxy's store with MODELTRACK_STORE.", null);
}

function noEvents() {
  const port = meta?.proxy_port || 8080;
  const host = location.hostname || "localhost";
  return emptyState("No events yet",
    `Point your LLM client at the ModelTrack proxy (http://${host}:${port}); every call then shows up here within seconds.`,
    `from openai import OpenAI\nclient = OpenAI(base_url="http://${host}:${port}/v1",\n                default_headers={"X-ModelTrack-Team": "search"})\n\n# Anthropic: anthropic.Anthropic(base_url="http://${host}:${port}")\n# Gemini:    genai.Client(http_options=HttpOptions(base_url="http://${host}:${port}"))`);
}

// ---- login, chrome, routing -------------------------------------------------------------------------------------
let sso = false;  // an OIDC provider is configured: the login offers it beside the token
let signup = false;  // MODELTRACK_SIGNUP=open (multi-tenant): the login also offers to create an organisation
function showLogin() {
  document.getElementById("bar").hidden = true;  // no period or filters before there is anything to filter
  const input = h("input", { type: "password", placeholder: "dashboard token", autocomplete: "current-password", "data-testid": "token" });
  const msg = h("p", { class: "none" });
  render(h("form", { class: "card login", on: { submit: async (e) => {
    e.preventDefault();
    // A member's sign-in token (mtm_…) signs in through the admin API's session; a dashboard token here.
    const where = input.value.trim().startsWith("mtm_") ? "/api/v1/admin/login" : "/api/v1/login";
    const r = await fetch(where, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ token: input.value.trim() }) });
    if (r.ok) route(); else msg.textContent = "That token is not valid.";
  } } }, h("h2", { text: "Log in to ModelTrack" }), h("p", { class: "sub", text: "A dashboard token (MODELTRACK_UI_TOKENS), or your own mtm_ sign-in token." }), input, h("button", { type: "submit", text: "Log in" }), msg,
    sso ? h("p", {}, h("a", { href: "/api/v1/oidc/login", "data-testid": "sso", text: "Sign in with your organisation (SSO)" })) : null),
    signup ? signupCard() : null);
}

// Hosted sign-up: a new organisation and its first admin. The admin's sign-in token is shown once (the browser
// is signed in with it already); only its digest is stored.
function signupCard() {
  const org = h("input", { placeholder: "organisation name", "data-testid": "signup-org", required: true });
  const subject = h("input", { type: "email", placeholder: "you@example.com", "data-testid": "signup-subject", required: true });
  const out = h("div", { "data-testid": "signup-result" });
  return h("form", { class: "card login", "data-testid": "signup", on: { submit: async (e) => {
    e.preventDefault();
    const r = await fetch("/api/v1/admin/signup", { method: "POST", credentials: "same-origin", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ org: org.value.trim(), subject: subject.value.trim() }) });
    const data = await r.json().catch(() => null);
    if (!r.ok) { out.replaceChildren(h("p", { class: "none", text: data?.error?.message || `HTTP ${r.status}` })); return; }
    out.replaceChildren(
      h("p", { text: `Organisation ${data.org.name} (${data.org.id}) is yours. Your sign-in token, shown this once:` }),
      h("pre", { class: "wrap", "data-testid": "signup-token", text: data.token }),
      h("p", {}, h("a", { href: "/keys", "data-nav": "", text: "Create your first key →" })));
  } } }, h("h2", { text: "New here? Create an organisation" }), org, subject, h("button", { type: "submit", text: "Create" }), out);
}

function chrome(q, page) {
  for (const a of document.querySelectorAll("#nav a")) a.classList.toggle("active", a.dataset.page === page);
  const range = document.getElementById("range");
  range.value = q.get("range") || (q.get("since") ? "custom" : "30d");
  const custom = document.getElementById("custom");
  custom.hidden = range.value !== "custom";
  const rp = rangeParams(q);
  document.getElementById("since").value = rp.since;
  document.getElementById("until").value = rp.until;
  const tz = document.getElementById("tz");
  const local = Intl.DateTimeFormat().resolvedOptions().timeZone;
  // Every IANA zone the browser knows (the API accepts any), the likely ones first.
  const every = typeof Intl.supportedValuesOf === "function" ? Intl.supportedValuesOf("timeZone") : [];
  const zones = [...new Set(["UTC", local, tzName(q), ...every])];
  tz.replaceChildren(...zones.map((z) => h("option", { value: z, text: z, selected: z === tzName(q) })));
  document.getElementById("bar").hidden = page === "budgets" || Boolean(ADMIN_PAGES[page]);
  const chips = document.getElementById("chips");
  chips.replaceChildren(...FILTERS.filter((f) => q.has(f)).map((f) => h("span", { class: "chip", "data-filter": f },
    `${f}: ${label(q.get(f))}`, h("button", { type: "button", "aria-label": `remove ${f}`, text: "×", on: { click: () => go(null, { [f]: null }) } }))));
}

// Optional auto-refresh: the current view is fetched again every minute while the box is ticked (kept in
// localStorage, never in the URL, so a shared link does not start refreshing someone else's screen).
let refreshTimer = null;
function setupRefresh() {
  const box = document.getElementById("refresh");
  if (!box) return;
  box.checked = localStorage.getItem("modeltrack-refresh") === "1";
  const apply = () => {
    clearInterval(refreshTimer);
    refreshTimer = box.checked ? setInterval(() => { if (!document.hidden) route(); }, 60_000) : null;
  };
  box.addEventListener("change", () => { localStorage.setItem("modeltrack-refresh", box.checked ? "1" : "0"); apply(); });
  apply();
}

async function route() {
  const { page, q } = state();
  document.body.dataset.ready = "false";  // tests and scripts wait for "true": this view is rendered
  chrome(q, page);
  try {
    if (!meta) {
      const session = await (await fetch("/api/v1/session")).json();
      sso = Boolean(session.sso);
      signup = Boolean(session.signup);
      if (session.auth && !session.logged_in) { showLogin(); document.body.dataset.ready = "true"; return; }
      meta = await api("meta");
      document.getElementById("store").textContent = `Store: ${meta.store.where}`;
    }
    if (ADMIN_PAGES[page]) await ADMIN_PAGES[page](q);
    else if (!meta.store.exists && page !== "budgets") render(noStore(meta.store.where));
    else if (page === "") await overviewPage(q);
    else if (PAGES[page]) await dimensionPage(page, q);
    else if (page === "sessions") await sessionsPage(q);
    else if (LOG_PAGES[page]) await LOG_PAGES[page](q);
    else if (page === "budgets") await budgetsPage();
    else if (page === "whatif") await whatifPage(q);
    else if (page === "export") exportPage(q);
    else render(emptyState("Not found", "This page does not exist.", null));
  } catch (e) {
    if (e.status === 503 && meta) { const where = meta.store.where; meta = null; render(noStore(where)); }
    else if (e.status !== 401) render(errorCard(e.message));
  }
  document.body.dataset.ready = "true";
}

function wire() {
  document.addEventListener("click", (e) => {
    const a = e.target.closest("a[data-nav]");
    if (!a || e.metaKey || e.ctrlKey) return;
    e.preventDefault();
    const keep = {};
    const q = state().q;
    for (const k of ["range", "since", "until", "tz"]) if (q.has(k)) keep[k] = q.get(k);
    history.pushState(null, "", a.getAttribute("href") + (Object.keys(keep).length ? "?" + new URLSearchParams(keep) : ""));
    route();
  });
  document.getElementById("range").addEventListener("change", (e) => {
    const v = e.target.value;
    if (v === "custom") { document.getElementById("custom").hidden = false; return; }
    go(null, { range: v, since: null, until: null });
  });
  document.getElementById("apply").addEventListener("click", () => go(null, {
    range: "custom", since: document.getElementById("since").value, until: document.getElementById("until").value,
  }));
  document.getElementById("tz").addEventListener("change", (e) => go(null, { tz: e.target.value === "UTC" ? null : e.target.value }));
  window.addEventListener("popstate", route);
  setupRefresh();
  let t = null;
  window.addEventListener("resize", () => { clearTimeout(t); t = setTimeout(route, 250); });
}

function start() {
  if (typeof uPlot === "undefined") return setTimeout(start, 10);
  wire();
  route();
}
start();

export {
  ApiError, DIMS, FILTERS, PAGES, TITLES, api, chart, compact, count, emptyState, errorCard, filters, go, h, kpi, label,
  ms, pct, rangeParams, render, route, tzName, when,
};
