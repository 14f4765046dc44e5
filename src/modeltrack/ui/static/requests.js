// The way from a number to the requests behind it: the Requests page (the log, newest first, keyset pages, a
// filter on every event field, each row's full event), the Errors page (by status and type, and whose doing),
// and the charts beyond spend (requests, tokens by kind, latency percentiles, error rate) that the Overview
// and the detail pages draw. Every chart point, KPI and breakdown row leads here (logLink).
import {
  FILTERS, api, chart, compact, count, emptyState, filters, go, h, kpi, label, money, ms, pct, rangeParams, render, route,
  when,
} from "./app.js";

const EVENT_ONLY = ["session_id", "routed", "stream", "unpriced", "batch_id"];
const fields = () => [...FILTERS, ...EVENT_ONLY];  // (a function: app.js's constants exist once it has run)

// The log's own filters from the URL: every rollup filter, and what only an event answers (with property.NAME).
function logFilters(q) {
  const out = { ...filters(q) };
  for (const [k, v] of q) if (EVENT_ONLY.includes(k) || k.startsWith("property.")) out[k] = v;
  return out;
}

// A link to the requests behind a figure: the current period, the given filters.
export function logLink(params, text = "requests →", testid = "log-link") {
  return h("a", {
    href: "#", class: "log-link", "data-testid": testid, text,
    on: { click: (e) => { e.preventDefault(); e.stopPropagation(); openLog(params); } },
  });
}
// The requests behind a figure: the current period and filters, narrowed by ``params``.
function openLog(params) {
  const u = new URL(location.href);
  const keep = {};
  for (const k of ["range", "since", "until", "tz", ...FILTERS]) if (u.searchParams.has(k)) keep[k] = u.searchParams.get(k);
  const clean = Object.fromEntries(Object.entries({ ...keep, ...params }).filter(([, v]) => v !== undefined && v !== null));
  history.pushState(null, "", "/requests?" + new URLSearchParams(clean));
  route();
}

function addFilterForm(q) {
  const field = h("select", { "data-testid": "filter-field" }, [...fields(), "property.…"].map((f) => h("option", { value: f, text: f })));
  const value = h("input", { placeholder: "value ((none): leave empty)", "data-testid": "filter-value" });
  const prop = h("input", { placeholder: "property name", hidden: true, "data-testid": "filter-property" });
  field.addEventListener("change", () => { prop.hidden = field.value !== "property.…"; });
  return h("form", { class: "row", on: { submit: (e) => {
    e.preventDefault();
    const name = field.value === "property.…" ? `property.${prop.value.trim()}` : field.value;
    go(null, { [name]: value.value.trim(), before: null, request: null });
  } } }, h("label", {}, "Filter", field), prop, value, h("button", { type: "submit", text: "Add filter" }));
}

function detail(ev, tz) {
  const rows = Object.entries(ev).filter(([k]) => k !== "properties");
  const clickable = new Set(fields());
  return h("div", { class: "card", "data-testid": "request-detail" },
    h("h2", { text: `Request ${ev.request_id}` }),
    h("p", { class: "sub", text: `${when(ev.timestamp, tz)} · ${ev.provider} ${ev.endpoint}` }),
    h("dl", { class: "detail" }, rows.flatMap(([k, v]) => [
      h("dt", { text: k }),
      h("dd", { "data-field": k }, clickable.has(k) && v !== null && v !== ""
        ? h("a", { href: "#", text: String(v), on: { click: (e) => { e.preventDefault(); go("requests", { [k]: String(v), request: null, before: null }); } } })
        : (k.endsWith("_usd") ? money(v) : v === null ? "—" : String(v))),
    ]),
    ...Object.entries(ev.properties || {}).flatMap(([k, v]) => [h("dt", { text: `property ${k}` }),
      h("dd", {}, h("a", { href: "#", text: v, on: { click: (e) => { e.preventDefault(); go("requests", { [`property.${k}`]: v, request: null }); } } }))])));
}

async function requestsPage(q) {
  const rp = rangeParams(q);
  const f = logFilters(q);
  if (q.get("request")) {
    const ev = await api("requests/" + encodeURIComponent(q.get("request")));
    return render(
      h("p", {}, h("a", { href: "#", text: "← The request log", on: { click: (e) => { e.preventDefault(); go("requests", { request: null }); } } })),
      detail(ev, rp.tz));
  }
  const data = await api("requests", { limit: 50, ...rp, ...f, before: q.get("before") });
  const chips = Object.entries(f).filter(([k]) => !FILTERS.includes(k)).map(([k, v]) => h("span", { class: "chip", "data-filter": k },
    `${k}: ${label(v)}`, h("button", { type: "button", text: "×", on: { click: () => go(null, { [k]: null, before: null }) } })));
  const head = [
    h("h1", { text: "Requests" }),
    h("p", { class: "sub", text: `Newest first, ${rp.since} to ${rp.until} (${rp.tz}). Click a row for the whole event.` }),
    chips.length ? h("p", { class: "chips" }, chips) : null,
    h("div", { class: "card" }, addFilterForm(q)),
  ];
  if (!data.requests.length) {
    return render(...head, emptyState(data.stopped_at_scan_cap ? "None in the newest events looked at" : "No requests match",
      data.stopped_at_scan_cap ? `Looked at ${count(data.scanned)} events without a match: go on to older ones.` : "Nothing in this period matches these filters.",
      null), data.next ? h("p", {}, h("button", { type: "button", text: "Older →", on: { click: () => go(null, { before: data.next }) } })) : null);
  }
  const table = h("table", { "data-testid": "requests" },
    h("thead", {}, h("tr", {}, ["Time", "Model", "Status", "Team", "App", "User", "Input tok.", "Output tok.", "Cost", "Latency"]
      .map((t, i) => h("th", { class: i >= 6 ? "num" : "", text: t })))),
    h("tbody", {}, data.requests.map((r) => h("tr", { class: "click", "data-key": r.request_id, on: { click: () => go(null, { request: r.request_id }) } },
      h("td", { text: when(r.timestamp, rp.tz) }),
      h("td", { class: "name", text: `${label(r.model)}${r.cache_hit ? " (cached)" : ""}${r.routed ? " (routed)" : ""}${r.processing === "batch" ? " (batch)" : ""}` }),
      h("td", { class: r.status >= 400 || r.error ? "up" : "", text: r.error ? `${r.status} ${r.error}` : String(r.status) }),
      h("td", { text: label(r.team) }), h("td", { text: label(r.app) }), h("td", { text: label(r.user) }),
      h("td", { class: "num", text: compact(r.input_tokens + r.cache_read_tokens + r.cache_write_tokens) }),
      h("td", { class: "num", text: compact(r.output_tokens) }),
      h("td", { class: "num", "data-value": r.cost_usd, text: r.unpriced ? "unpriced" : money(r.cost_usd) }),
      h("td", { class: "num", text: ms(r.latency_ms) })))));
  render(...head, h("div", { class: "card" }, table),
    h("p", { class: "row" },
      q.get("before") ? h("button", { type: "button", text: "← Newest", on: { click: () => go(null, { before: null }) } }) : null,
      data.next ? h("button", { type: "button", "data-testid": "older", text: "Older →", on: { click: () => go(null, { before: data.next }) } }) : null));
}

const CLASS_TEXT = {
  budget: "Refused by a budget, a limit or a rule",
  upstream: "Upstream failures (5xx, unreachable, reset, timed out)",
  client_disconnected: "The client went away",
  shutdown: "Cut by a stop",
  provider_refused: "Refused by the provider (4xx)",
  stream_error: "Streams that carried an error or were cut",
  other: "Other",
};

async function errorsPage(q) {
  const rp = rangeParams(q);
  const [data, ser] = await Promise.all([
    api("errors", { ...rp, ...filters(q) }),
    api("series", { granularity: rp.since === rp.until ? "hour" : "day", latency: "false", ...rp, ...filters(q) }),
  ]);
  const chartBox = h("div", { class: "chart", "data-testid": "error-rate" });
  render(
    h("h1", { text: "Errors" }),
    h("p", { class: "sub", text: `${count(data.errors)} of ${count(data.requests)} requests failed (${pct(data.error_rate)}), ${rp.since} to ${rp.until} (${rp.tz}).` }),
    data.classes.length ? h("div", { class: "grid kpis" }, data.classes.map((c) => {
      const card = kpi(`class-${c.class}`, CLASS_TEXT[c.class], c.requests, count(c.requests), pct(data.requests ? c.requests / data.requests : 0) + " of requests");
      return card;
    })) : emptyState("No errors in this period", "Every request in this period succeeded.", null),
    h("div", { class: "card" }, h("h2", { text: "Error rate" }), chartBox),
    data.rows.length ? h("div", { class: "card" }, h("table", { "data-testid": "errors" },
      h("thead", {}, h("tr", {}, ["Status", "Error", "Whose doing", "Requests", ""].map((t, i) => h("th", { class: i === 3 ? "num" : "", text: t })))),
      h("tbody", {}, data.rows.map((r) => h("tr", { class: "click", on: { click: () => openLog({ status: String(r.status), error: r.error ?? "" }) } },
        h("td", { text: String(r.status) }), h("td", { text: label(r.error) }), h("td", { text: CLASS_TEXT[r.class] }),
        h("td", { class: "num", text: count(r.requests) }),
        h("td", {}, logLink({ status: String(r.status), error: r.error ?? "" }))))))) : null,
  );
  chart(chartBox, ser.buckets, ser.series, { tz: rp.tz, field: "error_rate", fmt: pct, axis: pct,
    onPoint: (i) => openLog({ range: "custom", since: ser.buckets[i].slice(0, 10), until: ser.buckets[i].slice(0, 10), status: "5xx" }) });
}

// Requests, tokens by kind, latency and time-to-first-token percentiles and error rate for one series answer
// (no split). TTFT is the streams' own: a bucket without a stream has no point.
export function usageCharts(ser, tz, onPoint) {
  const boxes = ["requests", "tokens", "latency", "ttft", "errors"].map((k) => h("div", { class: "chart small", "data-testid": `chart-${k}` }));
  const node = h("div", { class: "grid two" },
    h("div", { class: "card" }, h("h2", { text: "Requests" }), boxes[0]),
    h("div", { class: "card" }, h("h2", { text: "Tokens by kind" }), boxes[1]),
    h("div", { class: "card" }, h("h2", { text: "Latency p50 / p95" }), boxes[2]),
    h("div", { class: "card" }, h("h2", { text: "Time to first token p50 / p95 (streams)" }), boxes[3]),
    h("div", { class: "card" }, h("h2", { text: "Error rate" }), boxes[4]));
  const draw = () => {
    const total = ser.series[0] || { requests: [], tokens: {}, latency_p50_ms: [], latency_p95_ms: [], ttft_p50_ms: [], ttft_p95_ms: [], error_rate: [] };
    const small = { tz, height: 160, onPoint };
    chart(boxes[0], ser.buckets, [{ key: "requests", v: total.requests }], { ...small, get: (s) => s.v, fmt: count, axis: compact });
    chart(boxes[1], ser.buckets, Object.entries(total.tokens || {}).map(([k, v]) => ({ key: k.replace("_tokens", ""), v })),
      { ...small, bars: false, get: (s) => s.v, fmt: count, axis: compact });
    chart(boxes[2], ser.buckets, [{ key: "p50", v: total.latency_p50_ms }, { key: "p95", v: total.latency_p95_ms }],
      { ...small, bars: false, get: (s) => s.v, fmt: ms, axis: ms });
    chart(boxes[3], ser.buckets, [{ key: "p50", v: total.ttft_p50_ms || [] }, { key: "p95", v: total.ttft_p95_ms || [] }],
      { ...small, bars: false, get: (s) => s.v, fmt: ms, axis: ms });
    chart(boxes[4], ser.buckets, [{ key: "error rate", v: total.error_rate }], { ...small, get: (s) => s.v, fmt: pct, axis: pct });
  };
  return { node, draw };
}

export { openLog };
export const LOG_PAGES = { requests: requestsPage, errors: errorsPage };
