// Sluice dashboard: live tiles and a throughput chart from the status stream (SSE), and a
// chosen device's readings from the series API with its anomalies marked. Plain JS served
// as is (no build step); uPlot is vendored. What a person sees is also left in the DOM
// (tile text, data-points and data-anomalies on the charts) for the browser test to read.
"use strict";

// The series API picks the bucket width for a range (a few hundred points); short ranges
// then read raw readings, so the newest seconds show before the rollup has them.
const RANGES = {
  "15m": { seconds: 15 * 60 },
  "1h": { seconds: 3600 },
  "6h": { seconds: 6 * 3600 },
  "24h": { seconds: 24 * 3600 },
  "7d": { seconds: 7 * 24 * 3600 },
};
const LIVE_WINDOW_SECONDS = 300;
const DEVICE_REFRESH_MS = 5000;
const SEARCH_LIMIT = 20;
const ANOMALY_LIMIT = 500;
// The stream sends every second: this long without an event means it is stuck.
const STREAM_STALE_MS = 5000;

const $ = (selector) => document.querySelector(selector);

// ---- API and errors -------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
  }
}

async function api(path) {
  let response;
  try {
    response = await fetch(path, { headers: { Accept: "application/json" }, credentials: "same-origin" });
  } catch (e) {
    throw new ApiError(0, "Sluice is unreachable");
  }
  if (!response.ok) {
    let detail = response.statusText;
    try {
      const body = await response.json();
      detail = [body.error, body.detail].filter(Boolean).join(": ") || detail;
    } catch (e) {
      // Not our JSON (a proxy's page): the status says enough.
    }
    throw new ApiError(response.status, detail);
  }
  return response.json();
}

function explain(what, error) {
  const detail = error.message ? ` (${error.message})` : "";
  switch (true) {
    case error.status === 401:
      return `${what}: sign-in needed: the API reads only for identities in api.readers${detail}`;
    case error.status === 403:
      return `${what}: this identity may not read the API (add it to api.readers)${detail}`;
    case error.status >= 500:
      return `${what}: Sluice answered ${error.status}${detail}`;
    case error.status > 0:
      return `${what}: ${error.status}${detail}`;
    default:
      return `${what}: ${error.message}`;
  }
}

// One message per source of trouble, each cleared when that source works again.
const problems = new Map();

function problem(key, message) {
  problems.set(key, message);
  renderBanner();
}

function clear(key) {
  if (problems.delete(key)) renderBanner();
}

function renderBanner() {
  const banner = $("#banner");
  banner.replaceChildren(...[...problems.values()].map((m) => el("p", {}, m)));
  banner.hidden = problems.size === 0;
}

// ---- DOM helpers ----------------------------------------------------------------------

function el(tag, attributes, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attributes)) node.setAttribute(k, v);
  node.append(...children);
  return node;
}

function number(value, digits = 0) {
  if (value === null || value === undefined || Number.isNaN(value)) return "–";
  return value.toLocaleString("en-US", { minimumFractionDigits: digits, maximumFractionDigits: digits });
}

function setTile(id, value, details = []) {
  const tile = document.getElementById(id);
  tile.querySelector(".value").textContent = value;
  const list = tile.querySelector(".detail");
  if (list) list.replaceChildren(...details.map((d) => el("li", {}, d)));
}

function seconds(time) {
  return Date.parse(time) / 1000;
}

function chartWidth(node) {
  return Math.max(node.clientWidth, 300);
}

// ---- Live status ----------------------------------------------------------------------

const live = { t: [], in: [], written: [], chart: null };

function renderStatus(s) {
  $("#tiles").dataset.time = s.time;
  setTile("t-in", number(s.readings_in_per_second, 1));
  setTile("t-written", number(s.readings_written_per_second, 1));
  const ack = s.ack_latency_ms || {};
  setTile("t-ack", `${number(ack.p50, 1)} / ${number(ack.p99, 1)}`);

  const partitions = s.kafka_lag || [];
  const known = partitions.filter((p) => p.lag !== null && p.lag !== undefined);
  const total = known.length ? known.reduce((sum, p) => sum + p.lag, 0) : null;
  // The topic is named only where there are several, so a line stays short.
  const topics = new Set(partitions.map((p) => p.topic));
  const name = (p) => (topics.size > 1 ? `${p.topic} ` : "") + `p${p.partition}`;
  const shown = partitions.slice(0, 12).map((p) => `${name(p)}: ${number(p.lag)}`);
  if (partitions.length > shown.length) shown.push(`… ${partitions.length - shown.length} more`);
  setTile("t-kafka-lag", number(total), shown);
  document.getElementById("t-kafka-lag").title = [...topics].join(", ");

  setTile("t-writer-lag", number(s.writer_lag_seconds, 1));

  const dead = Object.entries(s.dead_letters || {}).sort((a, b) => b[1] - a[1]);
  const deadTotal = dead.reduce((sum, [, n]) => sum + (n || 0), 0);
  setTile("t-dead", number(deadTotal), dead.map(([reason, n]) => `${reason}: ${number(n)}`));

  const connections = Object.entries(s.connections || {});
  const connected = connections.reduce((sum, [, n]) => sum + (n || 0), 0);
  setTile("t-conn", number(connected), connections.map(([kind, n]) => `${kind.toUpperCase()}: ${number(n)}`));

  pushLive(s);
}

function pushLive(s) {
  const t = seconds(s.time);
  if (Number.isNaN(t)) return;
  live.t.push(t);
  live.in.push(s.readings_in_per_second ?? null);
  live.written.push(s.readings_written_per_second ?? null);
  while (live.t.length && live.t[0] < t - LIVE_WINDOW_SECONDS) {
    live.t.shift();
    live.in.shift();
    live.written.shift();
  }
  const node = $("#live-chart");
  const data = [live.t, live.in, live.written];
  if (!live.chart) {
    live.chart = new uPlot(
      {
        width: chartWidth(node),
        height: 220,
        scales: {
          x: { time: true, range: (u, min, max) => [max - LIVE_WINDOW_SECONDS, max] },
          y: { range: (u, min, max) => [0, Math.max(max ?? 0, 1) * 1.1] },
        },
        series: [
          {},
          { label: "in /s", stroke: "#2563eb", width: 2, value: (u, v) => number(v, 1) },
          { label: "written /s", stroke: "#16a34a", width: 2, value: (u, v) => number(v, 1) },
        ],
        axes: [{}, { label: "readings/s", size: 60 }],
      },
      data,
      node,
    );
  } else {
    live.chart.setData(data);
  }
  node.dataset.points = String(live.t.length);
}

let stream = null;
let lastEvent = 0;
let reconnectDelay = 1000;

function setLive(ok, text) {
  const badge = $("#live");
  badge.textContent = text;
  badge.classList.toggle("ok", ok);
}

function connectStream() {
  if (stream) stream.close();
  stream = new EventSource("/v1/status/stream");
  lastEvent = Date.now();
  stream.addEventListener("status", (event) => {
    lastEvent = Date.now();
    reconnectDelay = 1000;
    let status;
    try {
      status = JSON.parse(event.data);
    } catch (e) {
      problem("stream", `Live status: unreadable event (${e.message})`);
      return;
    }
    clear("stream");
    setLive(true, "live");
    renderStatus(status);
  });
  stream.onerror = () => {
    setLive(false, "reconnecting…");
    if (stream.readyState !== EventSource.CLOSED) {
      // The browser retries by itself after a dropped connection (the server ends each
      // stream after 10 minutes); watchStream speaks up if no event comes for a while.
      return;
    }
    // Refused (an error status or not an event stream): the browser gives up, so we retry,
    // and ask the plain endpoint why.
    stream.close();
    api("/v1/status")
      .then(() => problem("stream", "Live status stream refused; retrying…"))
      .catch((e) => problem("stream", explain("Live status", e)));
    setTimeout(connectStream, reconnectDelay);
    reconnectDelay = Math.min(reconnectDelay * 2, 30000);
  };
}

function watchStream() {
  if (!stream || stream.readyState !== EventSource.OPEN) return;
  const quiet = Date.now() - lastEvent;
  if (quiet > STREAM_STALE_MS) {
    problem("stream", `No live status for ${Math.round(quiet / 1000)} s; reconnecting…`);
    setLive(false, "stalled");
    connectStream();
  }
}

// ---- Device, metric and range (kept in the URL hash) ------------------------------------

const state = { device: "", metric: "", range: "1h" };

function readHash() {
  const p = new URLSearchParams(location.hash.slice(1));
  state.device = p.get("device") || "";
  state.metric = p.get("metric") || "";
  state.range = RANGES[p.get("range")] ? p.get("range") : "1h";
}

function writeHash() {
  const p = new URLSearchParams();
  if (state.device) p.set("device", state.device);
  if (state.metric) p.set("metric", state.metric);
  p.set("range", state.range);
  // replaceState: no hashchange event, and Back leaves the page rather than the choices.
  history.replaceState(null, "", `#${p}`);
}

let searchSeq = 0;
let searchTimer = null;
let matches = [];

function onSearchInput() {
  clearTimeout(searchTimer);
  searchTimer = setTimeout(search, 250);
}

async function search() {
  const q = $("#device-search").value.trim();
  const list = $("#device-matches");
  const seq = ++searchSeq;
  if (!q) {
    list.hidden = true;
    matches = [];
    return;
  }
  let page;
  try {
    page = await api(`/v1/devices?search=${encodeURIComponent(q)}&limit=${SEARCH_LIMIT}`);
    clear("devices");
  } catch (e) {
    problem("devices", explain("Device search", e));
    return;
  }
  if (seq !== searchSeq) return;
  const items = page.devices.map((d) => {
    const item = el("li", { role: "option", tabindex: "-1" }, el("b", {}, d.device_id), " ", el("span", {}, d.metrics.join(", ")));
    item.addEventListener("click", () => chooseDevice(d));
    item.addEventListener("keydown", (e) => e.key === "Enter" && chooseDevice(d));
    return item;
  });
  if (!items.length) items.push(el("li", { class: "none" }, "No device id contains that."));
  if (page.next) items.push(el("li", { class: "none" }, `First ${SEARCH_LIMIT} shown: type more to narrow.`));
  list.replaceChildren(...items);
  list.dataset.count = String(page.devices.length);
  list.hidden = false;
  matches = page.devices;
}

function onSearchKey(e) {
  const list = $("#device-matches");
  if (e.key === "Escape") list.hidden = true;
  if (e.key === "Enter" && matches.length) chooseDevice(matches[0]);
  if (e.key === "ArrowDown" && !list.hidden) list.querySelector("[role=option]")?.focus();
}

function chooseDevice(device) {
  state.device = device.device_id;
  if (!device.metrics.includes(state.metric)) state.metric = device.metrics[0] || "";
  $("#device-search").value = device.device_id;
  $("#device-matches").hidden = true;
  showDevice(device);
  writeHash();
  resetDeviceChart();
  loadDevice();
}

function showDevice(device) {
  const metrics = device ? device.metrics : state.metric ? [state.metric] : [];
  const select = $("#metric");
  select.replaceChildren(...metrics.map((m) => el("option", { value: m }, m)));
  select.value = state.metric;
  select.disabled = metrics.length === 0;
  const info = $("#device-info");
  if (!device) {
    info.textContent = `${state.device}: not found in the device list (yet).`;
    return;
  }
  const last = device.last && device.last[state.metric];
  const parts = [
    `${device.device_id}`,
    `${number(device.readings_last_hour)} readings in the last hour`,
    `last seen ${new Date(device.last_seen).toLocaleString()}`,
  ];
  if (last) parts.push(`last ${state.metric} ${number(last.value, 2)}`);
  info.textContent = parts.join(" · ");
}

// Finds the hash's device by its exact id.
async function lookupDevice() {
  try {
    const page = await api(`/v1/devices?id=${encodeURIComponent(state.device)}`);
    clear("devices");
    return page.devices.find((d) => d.device_id === state.device) || null;
  } catch (e) {
    problem("devices", explain("Device", e));
    return null;
  }
}

// ---- Device chart ---------------------------------------------------------------------

// `loading`: a refresh waits for the last one; `restUntil`: after a 503, wait a while.
const view = { chart: null, from: 0, to: 0, seq: 0, loading: false, restUntil: 0 };

function resetDeviceChart() {
  if (view.chart) view.chart.destroy();
  view.chart = null;
  const node = $("#device-chart");
  node.dataset.points = "0";
  node.dataset.anomalies = "0";
  $("#anomalies").hidden = true;
}

// The timer's refresh skips a turn while a load is in flight or resting after a 503;
// a person's choice always loads.
function refreshDevice() {
  if (!view.loading && Date.now() >= view.restUntil) loadDevice();
}

async function loadDevice() {
  if (!state.device || !state.metric || document.hidden) return;
  const seq = ++view.seq;
  const range = RANGES[state.range];
  const to = new Date();
  const from = new Date(to.getTime() - range.seconds * 1000);
  const q = new URLSearchParams({
    device: state.device,
    metric: state.metric,
    from: from.toISOString(),
    to: to.toISOString(),
  });
  let series, anomalies;
  view.loading = true;
  try {
    [series, anomalies] = await Promise.all([
      api(`/v1/series?${q}`),
      api(`/v1/anomalies?${q}&order=desc&limit=${ANOMALY_LIMIT}`),
    ]);
    clear("series");
  } catch (e) {
    if (e.status === 503) view.restUntil = Date.now() + 15000;
    problem("series", explain(`Series of ${state.device} ${state.metric}`, e));
    return;
  } finally {
    view.loading = false;
  }
  if (seq !== view.seq) return;
  view.from = from.getTime() / 1000;
  view.to = to.getTime() / 1000;
  const found = series.series.find((s) => s.device_id === state.device);
  drawDevice(found ? found.points : [], anomalies.anomalies, anomalies.next !== null);
}

function drawDevice(points, anomalies, moreAnomalies) {
  // Anomalies fall between buckets: both go on one sorted x axis, each series null where
  // it has nothing (lines span those gaps).
  const rows = new Map();
  const row = (t) => {
    if (!rows.has(t)) rows.set(t, [t, null, null, null, null]);
    return rows.get(t);
  };
  for (const p of points) {
    const r = row(seconds(p.time));
    r[1] = p.avg;
    r[2] = p.min;
    r[3] = p.max;
  }
  let marked = 0;
  for (const a of anomalies) {
    const t = seconds(a.time);
    // A dropout's numbers are seconds, not the metric: it sits on the line instead.
    const y = a.kind === "dropout" ? nearest(points, t) : a.value ?? a.expected;
    if (y === null || y === undefined || Number.isNaN(t)) continue;
    row(t)[4] = y;
    marked += 1;
  }
  const sorted = [...rows.values()].sort((a, b) => a[0] - b[0]);
  const data = [0, 1, 2, 3, 4].map((i) => sorted.map((r) => r[i]));
  const node = $("#device-chart");
  if (!view.chart) {
    view.chart = new uPlot(deviceOptions(node), data, node);
  } else {
    view.chart.setData(data);
  }
  node.dataset.points = String(points.filter((p) => p.avg !== null).length);
  node.dataset.anomalies = String(marked);
  renderAnomalies(anomalies, moreAnomalies);
}

function deviceOptions(node) {
  const band = "rgba(37, 99, 235, 0.35)";
  return {
    width: chartWidth(node),
    height: 300,
    scales: { x: { time: true, range: () => [view.from, view.to] } },
    series: [
      {},
      { label: `${state.metric} avg`, stroke: "#2563eb", width: 2, spanGaps: true },
      { label: "min", stroke: band, spanGaps: true, points: { show: false } },
      { label: "max", stroke: band, spanGaps: true, points: { show: false } },
      {
        label: "anomaly",
        stroke: "#dc2626",
        paths: () => null,
        points: { show: true, size: 11, width: 2, stroke: "#dc2626", fill: "#fecaca" },
      },
    ],
    bands: [{ series: [3, 2], fill: "rgba(37, 99, 235, 0.12)" }],
    axes: [{}, { label: state.metric, size: 60 }],
  };
}

// The average of the bucket nearest to `t` (seconds), or null.
function nearest(points, t) {
  let best = null;
  for (const p of points) {
    if (p.avg === null) continue;
    if (best === null || Math.abs(seconds(p.time) - t) < Math.abs(seconds(best.time) - t)) best = p;
  }
  return best ? best.avg : null;
}

function renderAnomalies(anomalies, more) {
  const table = $("#anomalies");
  // Newest first, as the API sends them; a dropout's figures are seconds.
  const latest = anomalies.slice(0, 20);
  const unit = (a) => (a.kind === "dropout" ? " s" : "");
  table.querySelector("tbody").replaceChildren(
    ...latest.map((a) =>
      el(
        "tr",
        {},
        el("td", {}, new Date(a.time).toLocaleString()),
        el("td", {}, a.kind),
        el("td", {}, number(a.value, 2) + unit(a)),
        el("td", {}, number(a.expected, 2) + unit(a)),
        el("td", {}, `${number(a.low, 2)} – ${number(a.high, 2)}${unit(a)}`),
        el("td", {}, number(a.score, 1)),
      ),
    ),
  );
  const shown = latest.length < anomalies.length || more ? ` (latest 20 of ${anomalies.length}${more ? "+" : ""})` : "";
  table.querySelector("caption").textContent = `Anomalies in range${shown}`;
  table.hidden = anomalies.length === 0;
}

// ---- Configuration --------------------------------------------------------------------

async function loadConfig() {
  const pre = $("#config pre");
  try {
    pre.textContent = JSON.stringify(await api("/v1/config"), null, 2);
    clear("config");
  } catch (e) {
    pre.textContent = "unavailable";
    problem("config", explain("Configuration", e));
  }
}

// ---- Start ----------------------------------------------------------------------------

async function openFromHash() {
  readHash();
  $("#range").value = state.range;
  $("#device-search").value = state.device;
  resetDeviceChart();
  if (!state.device) return;
  const device = await lookupDevice();
  if (device && !device.metrics.includes(state.metric)) state.metric = device.metrics[0] || "";
  showDevice(device);
  writeHash();
  loadDevice();
}

function start() {
  $("#device-search").addEventListener("input", onSearchInput);
  $("#device-search").addEventListener("keydown", onSearchKey);
  $("#metric").addEventListener("change", (e) => {
    state.metric = e.target.value;
    writeHash();
    resetDeviceChart();
    loadDevice();
  });
  $("#range").addEventListener("change", (e) => {
    state.range = e.target.value;
    writeHash();
    resetDeviceChart();
    loadDevice();
  });
  window.addEventListener("hashchange", openFromHash);
  window.addEventListener("resize", () => {
    for (const [chart, node] of [[live.chart, $("#live-chart")], [view.chart, $("#device-chart")]]) {
      if (chart) chart.setSize({ width: chartWidth(node), height: chart.height });
    }
  });
  document.addEventListener("visibilitychange", loadDevice);
  connectStream();
  setInterval(watchStream, 1000);
  setInterval(refreshDevice, DEVICE_REFRESH_MS);
  loadConfig();
  openFromHash();
}

start();
