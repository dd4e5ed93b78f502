// The crawl dashboard: asks /api/state every two seconds and draws what it answers.
// Everything that comes from the crawl (URLs, messages, host names) is set as text, never
// as HTML: the pages crawled are not trusted.
"use strict";

const REFRESH_MS = 2000;
const run = new URLSearchParams(window.location.search).get("run");
let refreshes = 0;

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

function number(value) {
  if (value === null || value === undefined) return "–";
  if (typeof value !== "number") return String(value);
  return Number.isInteger(value) ? value.toLocaleString("en") : value.toLocaleString("en", { maximumFractionDigits: 2 });
}

function bytes(value) {
  const units = ["B", "kB", "MB", "GB", "TB"];
  let shown = value || 0;
  let unit = 0;
  while (shown >= 1000 && unit < units.length - 1) { shown /= 1000; unit += 1; }
  return shown.toLocaleString("en", { maximumFractionDigits: 1 }) + " " + units[unit];
}

function duration(seconds) {
  const s = Math.round(seconds || 0);
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), rest = s % 60;
  const pad = (n) => String(n).padStart(2, "0");
  return (h ? h + ":" + pad(m) : m) + ":" + pad(rest);
}

function time(iso) {
  return iso ? String(iso).replace("T", " ").slice(0, 19) : "–";
}

function fill(id, rows, cells) {
  const body = document.querySelector("#" + id + " tbody");
  const fresh = document.createElement("tbody");
  for (const row of rows) {
    const tr = document.createElement("tr");
    for (const cell of cells(row)) tr.appendChild(cell instanceof Node ? cell : el("td", cell));
    fresh.appendChild(tr);
  }
  if (!rows.length) {
    const tr = document.createElement("tr");
    const td = el("td", "none", "muted");
    td.colSpan = 12;
    tr.appendChild(td);
    fresh.appendChild(tr);
  }
  body.replaceWith(fresh);
}

function counts(id, breakdown) {
  fill(id, Object.entries(breakdown), ([name, count]) => [name, el("td", number(count), "num")]);
}

function setTotal(name, value, shown) {
  const node = document.getElementById("total-" + name);
  node.dataset.value = String(value);
  node.textContent = shown;
}

function renderTotals(totals) {
  for (const name of ["pages", "items", "errors", "failed", "skipped", "queued", "in_flight"]) {
    setTotal(name, totals[name], number(totals[name]));
  }
  setTotal("pages_per_s", totals.pages_per_s, number(totals.pages_per_s));
  setTotal("bytes", totals.bytes, bytes(totals.bytes));
  setTotal("elapsed_s", totals.elapsed_s, duration(totals.elapsed_s));
}

// The rate between two consecutive points of a (possibly thinned) series of counts.
function rates(series, key) {
  const points = [];
  for (let i = 1; i < series.length; i += 1) {
    const span = series[i].elapsed_s - series[i - 1].elapsed_s;
    if (span > 0) points.push([series[i].elapsed_s, Math.max(0, (series[i][key] - series[i - 1][key]) / span)]);
  }
  if (series.length === 1) points.push([series[0].elapsed_s, series[0][key + "_per_s"] || 0]);
  return points;
}

function svg(tag, attrs, text) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = text;
  return node;
}

function chart(id, points, cls) {
  const box = document.getElementById(id);
  const W = 600, H = 180, L = 44, B = 20, T = 8, R = 8;
  while (box.firstChild) box.removeChild(box.firstChild);
  const maxY = Math.max(1, ...points.map((p) => p[1])) * 1.1;
  const minX = points.length ? points[0][0] : 0;
  const maxX = points.length ? Math.max(minX + 1, points[points.length - 1][0]) : 1;
  const x = (v) => L + ((v - minX) / (maxX - minX)) * (W - L - R);
  const y = (v) => T + (1 - v / maxY) * (H - T - B);
  for (let i = 0; i <= 3; i += 1) {
    const value = (maxY * i) / 3;
    box.appendChild(svg("line", { x1: L, x2: W - R, y1: y(value), y2: y(value), class: "grid" }));
    box.appendChild(svg("text", { x: L - 4, y: y(value) + 4, class: "axis", "text-anchor": "end" }, number(Math.round(value * 10) / 10)));
  }
  for (const [at, anchor] of [[minX, "start"], [(minX + maxX) / 2, "middle"], [maxX, "end"]]) {
    box.appendChild(svg("text", { x: x(at), y: H - 4, class: "axis", "text-anchor": anchor }, duration(at)));
  }
  if (points.length) {
    const line = points.map((p) => x(p[0]).toFixed(1) + "," + y(p[1]).toFixed(1)).join(" ");
    const area = L + "," + y(0) + " " + line + " " + x(points[points.length - 1][0]).toFixed(1) + "," + y(0);
    box.appendChild(svg("polygon", { points: area, class: "area " + cls }));
    box.appendChild(svg("polyline", { points: line, class: "line " + cls }));
  }
  box.dataset.points = String(points.length);
}

function link(url) {
  const td = el("td", null, "url");
  const a = el("a", url);
  a.href = url;
  a.rel = "noreferrer noopener";
  a.target = "_blank";
  td.appendChild(a);
  return td;
}

function statusCell(status) {
  const cls = status === null || status === undefined ? "" : status >= 400 ? "bad" : status >= 300 ? "warn" : "good";
  return el("td", status === null || status === undefined ? "–" : status, "num " + cls);
}

function renderHosts(state) {
  document.getElementById("host-count").textContent = state.host_count > state.hosts.length
    ? "(" + state.hosts.length + " of " + number(state.host_count) + ")" : "";
  fill("hosts", state.hosts, (h) => [
    el("td", h.host, "host" + (h.paused_s > 0 || h.throttled > 0 ? " warn" : "") + (h.failed > 0 ? " bad" : "")),
    el("td", number(h.in_flight), "num"),
    el("td", number(h.delay_s), "num"),
    el("td", number(h.concurrency), "num"),
    el("td", number(h.paused_s), "num" + (h.paused_s > 0 ? " warn" : "")),
    el("td", number(h.pages), "num"),
    el("td", number(h.errors), "num" + (h.errors > 0 ? " bad" : "")),
    el("td", number(h.failed), "num" + (h.failed > 0 ? " bad" : "")),
    el("td", number(h.throttled), "num" + (h.throttled > 0 ? " warn" : "")),
    el("td", number(h.avg_ms), "num"),
    statusCell(h.last_status),
  ]);
}

function renderRuns(state) {
  const shown = state.run ? state.run.id : null;
  fill("runs", state.runs, (r) => {
    const cell = el("td");
    const a = el("a", "#" + r.id);
    a.href = "?run=" + r.id;
    cell.appendChild(a);
    const tr = [cell, r.spider, el("td", r.status, "status-" + r.status), time(r.started_at), time(r.finished_at),
      el("td", r.stats && r.stats.pages !== undefined ? number(r.stats.pages) : "–", "num"), r.reason || ""];
    if (r.id === shown) cell.className = "current";
    return tr;
  });
}

function render(state) {
  document.getElementById("db").textContent = state.db || "";
  const notice = document.getElementById("notice");
  const live = document.getElementById("live");
  if (state.waiting || state.error) {
    notice.hidden = false;
    notice.textContent = state.waiting ? "waiting: " + state.waiting : "cannot read: " + state.error;
    live.textContent = state.waiting ? "waiting" : "error";
    live.className = "badge " + (state.waiting ? "idle" : "bad");
    return;
  }
  notice.hidden = !!state.run;
  notice.textContent = state.run ? "" : "no crawl run in this file yet";
  const r = state.run;
  document.getElementById("run-title").textContent = r ? "#" + r.id + " · " + r.spider : "–";
  live.textContent = r ? r.status : "no run";
  live.className = "badge " + (r && r.status === "running" ? "live" : "idle");
  document.body.dataset.sample = state.sample_id === null ? "" : String(state.sample_id);
  document.body.dataset.status = r ? r.status : "";
  renderTotals(state.totals);
  chart("chart-pages", rates(state.series, "pages"), "pages");
  chart("chart-errors", rates(state.series, "errors"), "errors");
  renderHosts(state);
  counts("error-kinds", state.errors_by_kind);
  counts("skip-reasons", state.skipped_by_reason);
  counts("statuses", state.statuses);
  fill("latest-pages", state.pages, (p) => [time(p.fetched_at), statusCell(p.status), link(p.url),
    p.content_type, el("td", number(p.size_bytes), "num"), el("td", number(p.elapsed_ms), "num")]);
  fill("latest-errors", state.errors, (e) => [time(e.created_at), e.kind, link(e.url), el("td", e.message, "message")]);
  renderRuns(state);
}

async function refresh() {
  try {
    const response = await fetch("api/state" + (run ? "?run=" + encodeURIComponent(run) : ""), { cache: "no-store" });
    const state = await response.json();
    render(state);
    refreshes += 1;
    document.body.dataset.refreshes = String(refreshes);
    document.getElementById("updated").textContent = "updated " + new Date().toLocaleTimeString();
  } catch (error) {
    const live = document.getElementById("live");
    live.textContent = "dashboard unreachable";
    live.className = "badge bad";
  } finally {
    window.setTimeout(refresh, REFRESH_MS);
  }
}

refresh();
