// Storefront ops dashboard. Plain JavaScript, no dependencies, no build step.
// Data: the admin-only /api/v1/ops/* routes polled every 2 s, /readyz, and, when the
// server has it, the `ops` topic of /api/v1/ws for restarts the moment they happen.
"use strict";

const TOKEN_KEY = "storefront.ops.token";
const EMAIL_KEY = "storefront.ops.email";
const POLL_MS = 2000;
const WINDOW_MS = 10 * 60 * 1000;
const FAULTS = [
  { actor: "db_executor", fault: "panic", label: "db_executor panic" },
  { actor: "db_executor", fault: "stall", millis: 2000, label: "db_executor stall 2 s" },
  { actor: "cache", fault: "panic", label: "cache panic" },
  { actor: "rate_limiter", fault: "panic", label: "rate_limiter panic" },
  { actor: "health", fault: "panic", label: "health panic" },
  { actor: "janitor", fault: "panic", label: "janitor panic" },
  { actor: "event_relay", fault: "panic", label: "event_relay panic" },
  { actor: "event_hub", fault: "panic", label: "event_hub panic" },
  // A crash loop makes every message the actor handles panic, so it goes past
  // ACTOR_MAX_RESTARTS and backs off; "clear" ends it early.
  { actor: "cache", fault: "crash_loop", millis: 20000, label: "cache crash loop 20 s" },
  { actor: "cache", fault: "clear", label: "cache: end crash loop" },
  { actor: "db_executor", fault: "crash_loop", millis: 20000, label: "db_executor crash loop 20 s" },
  { actor: "db_executor", fault: "clear", label: "db_executor: end crash loop" },
];
const CHARTS = [
  { key: "rps", title: "Requests", unit: "/s", digits: 1 },
  { key: "errors", title: "Errors (5xx)", unit: "%", digits: 1 },
  { key: "p99", title: "p99 latency", unit: "ms", digits: 1 },
  { key: "hit", title: "Cache hit ratio", unit: "%", digits: 0 },
  { key: "limited", title: "Rate-limited", unit: "/s", digits: 1 },
  { key: "ws", title: "WebSocket connections", unit: "", digits: 0 },
];

const $ = (id) => document.getElementById(id);
const state = {
  token: sessionStorage.getItem(TOKEN_KEY),
  pollTimer: null,
  restartCounts: new Map(),
  // `actor.backing_off` / `actor.recovered` seen on the ops topic, newest first: the
  // timeline shows them among the ledger's restarts.
  supervisionEvents: [],
  samples: [],
  socket: null,
  socketRetry: 0,
  socketTimer: null,
  lastEventId: 0,
};

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else node.setAttribute(name, value);
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function ago(iso) {
  if (!iso) return "";
  const seconds = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000));
  if (seconds < 60) return `${seconds}s ago`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)}m ago`;
  if (seconds < 86400) return `${Math.floor(seconds / 3600)}h ago`;
  return `${Math.floor(seconds / 86400)}d ago`;
}

function clock(iso) {
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? "" : date.toLocaleTimeString();
}

// ---- signing in ------------------------------------------------------------------

class SignedOut extends Error {}

async function api(path, options = {}) {
  const headers = Object.assign({ Accept: "application/json" }, options.headers || {});
  if (state.token && !headers.Authorization) headers.Authorization = `Bearer ${state.token}`;
  const response = await fetch(path, Object.assign({}, options, { headers, cache: "no-store" }));
  if (response.status === 401 && headers.Authorization === `Bearer ${state.token}`) {
    signOut("Your session has expired; sign in again.");
    throw new SignedOut();
  }
  return response;
}

async function problemText(response) {
  try {
    const body = await response.json();
    return body.detail || body.title || `HTTP ${response.status}`;
  } catch (_) {
    return `HTTP ${response.status}`;
  }
}

async function signIn(event) {
  event.preventDefault();
  const button = $("sign-in-button");
  const error = $("sign-in-error");
  error.textContent = "";
  button.disabled = true;
  try {
    const email = $("email").value.trim();
    const response = await fetch("/api/v1/auth/login", {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "application/json" },
      body: JSON.stringify({ email, password: $("password").value }),
    });
    if (!response.ok) {
      error.textContent = response.status === 401 ? "Wrong email or password." : await problemText(response);
      return;
    }
    const body = await response.json();
    const probe = await fetch("/api/v1/ops/actors", { headers: { Authorization: `Bearer ${body.access_token}` } });
    if (probe.status === 403) {
      error.textContent = "This account is not an admin.";
      return;
    }
    state.token = body.access_token;
    sessionStorage.setItem(TOKEN_KEY, state.token);
    sessionStorage.setItem(EMAIL_KEY, email);
    $("password").value = "";
    showDashboard();
  } catch (failure) {
    error.textContent = `Cannot reach the service (${failure.message}).`;
  } finally {
    button.disabled = false;
  }
}

function signOut(message) {
  state.token = null;
  sessionStorage.removeItem(TOKEN_KEY);
  clearInterval(state.pollTimer);
  state.pollTimer = null;
  closeSocket();
  $("dashboard").hidden = true;
  $("pills").hidden = true;
  $("who").hidden = true;
  $("sign-in").hidden = false;
  $("sign-in-error").textContent = message || "";
  $("email").focus();
}

function showDashboard() {
  $("sign-in").hidden = true;
  $("dashboard").hidden = false;
  $("pills").hidden = false;
  $("who").hidden = false;
  $("who-email").textContent = sessionStorage.getItem(EMAIL_KEY) || "admin";
  buildCharts();
  refresh();
  clearInterval(state.pollTimer);
  state.pollTimer = setInterval(refresh, POLL_MS);
  openSocket();
}

// ---- polling -----------------------------------------------------------------------

async function refresh() {
  if (!state.token) return;
  try {
    const [actors, restarts, ready, metrics] = await Promise.all([
      api("/api/v1/ops/actors"),
      api("/api/v1/ops/restarts"),
      fetch("/readyz", { cache: "no-store" }),
      api("/api/v1/ops/metrics"),
    ]);
    if (actors.ok) renderActors(await actors.json());
    if (restarts.ok) renderRestarts((await restarts.json()).restarts);
    renderReadiness(await ready.json().catch(() => null));
    if (metrics.ok) addSample(await metrics.json());
    $("actors-updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
  } catch (failure) {
    if (failure instanceof SignedOut) return;
    $("actors-updated").textContent = `service unreachable (${failure.message}); retrying`;
  }
}

function fact(name, value) {
  if (value === null || value === undefined || value === "") return null;
  return el("span", { class: "fact" }, `${name} `, el("b", { text: String(value) }));
}

function percent(ratio) {
  return ratio === null || ratio === undefined ? "–" : `${Math.round(ratio * 100)}%`;
}

// What each actor knows about its own work, in a few words.
function facts(actor) {
  const s = actor.state || {};
  if (s.disabled) return [fact("disabled:", s.disabled)];
  if (s.error) return [fact("not answering:", s.error)];
  switch (actor.name) {
    case "db_executor":
      return [fact("connections", `${s.connections}/${s.pool_size}`), fact("idle", s.idle_connections), fact("breaker", s.breaker)];
    case "db_breaker":
      return [
        fact("state", s.state), fact("failures", `${s.consecutive_failures}/${s.failure_threshold}`),
        fact("cooldown", `${s.cooldown_ms} ms`), fact("opened", s.transitions && s.transitions.open),
      ];
    case "cache": {
      const products = (s.caches && s.caches.products) || {};
      const users = (s.caches && s.caches.users) || {};
      return [fact("entries", `${s.entries}/${s.capacity}`), fact("product hits", percent(products.hit_ratio)),
        fact("user hits", percent(users.hit_ratio)), fact("loading", s.loads_in_flight)];
    }
    case "rate_limiter": {
      // Mode: local (no Redis), redis (limits shared by every replica), fallback (Redis failing).
      const leases = s.leases || {};
      const redis = s.redis || {};
      const mode = fact("mode", s.mode);
      if (mode && s.mode === "fallback") mode.dataset.status = "warn";
      return [mode, fact("keys", `${s.keys_tracked}/${s.max_keys}`),
        fact("limited", s.limited && (s.limited.default + s.limited.auth)),
        fact("leases", leases.granted === undefined ? null : `${leases.granted} granted, ${leases.settled} back, ${leases.recalled} recalled`),
        fact("waiting", s.requests_waiting || null),
        fact("forgotten", s.keys && s.keys.evicted ? `${s.keys.evicted} to make room, ${s.keys.decided_without_ledger} without a ledger` : null),
        redis.configured ? fact("redis calls", `${redis.calls_ok} ok, ${redis.calls_failed} failed`) : null,
        redis.configured ? fact("fallbacks", redis.fallbacks) : null];
    }
    case "health":
      return [fact("probe", s.probe && s.probe.status), fact("latency", s.probe && s.probe.latency_ms !== undefined ? `${s.probe.latency_ms.toFixed(1)} ms` : null)];
    case "event_relay":
      return [fact("last event", s.last_event_id), fact("lag", s.lag_seconds !== undefined ? `${s.lag_seconds.toFixed(1)} s` : null),
        fact("last poll", ago(s.last_success_at)), fact("failing", s.consecutive_failures || null)];
    case "event_hub": {
      const topics = s.subscriptions || {};
      const subscribed = Object.entries(topics).filter(([, n]) => n > 0).map(([t, n]) => `${t} ${n}`).join(", ");
      return [fact("connections", `${s.connections}/${s.max_connections}`), fact("subscriptions", subscribed || "none"),
        fact("last event", s.last_event_id)];
    }
    case "janitor":
      return [fact("last run", s.last_run_at ? ago(s.last_run_at) : "not yet"), fact("pruned", s.rows_pruned_total),
        fact("every", `${s.interval_seconds} s`), fact("error", s.last_error)];
    default:
      return Object.entries(s).filter(([, v]) => typeof v !== "object").slice(0, 4).map(([k, v]) => fact(k, v));
  }
}

function inSeconds(iso) {
  return Math.max(0, Math.ceil((Date.parse(iso) - Date.now()) / 1000));
}

// Restart intensity: how many restarts the window holds against how many it allows, and
// while the actor backs off, when it restarts next (or that it is on probation).
function supervisionCell(supervision) {
  if (!supervision) return null;
  const budget = el("span", { class: "restart-window", "data-state": supervision.state,
    text: `${supervision.restarts_in_window}/${supervision.max_restarts} in ${supervision.window_seconds} s` });
  if (supervision.state !== "backing_off") return budget;
  const next = supervision.next_restart_at
    ? `restarts in ${inSeconds(supervision.next_restart_at)} s`
    : `recovers after ${supervision.window_seconds} s without a panic`;
  return [el("span", { class: "badge backing-off", "data-status": "warn", text: "backing off" }), budget,
    el("span", { class: "restart-when", text: next })];
}

function aliveStatus(instances) {
  if (instances.configured === 0) return "unknown";
  if (instances.alive >= instances.configured) return "pass";
  return instances.alive === 0 ? "fail" : "warn";
}

function renderActors(body) {
  const tbody = $("actors-body");
  const rows = body.actors.map((actor) => {
    const { instances, queue, restarts, supervision } = actor;
    const previous = state.restartCounts.get(actor.name);
    const restarted = previous !== undefined && restarts.count > previous;
    state.restartCounts.set(actor.name, restarts.count);
    const load = queue && queue.capacity ? Math.min(100, (100 * queue.in_flight) / queue.capacity) : 0;
    const queueCell = queue
      ? [`${queue.in_flight} / ${queue.capacity}`, el("span", { class: "meter" }, el("span", { style: null, "data-load": load }))]
      : [el("span", { class: "muted", text: "—" })];
    const backingOff = supervision && supervision.state === "backing_off";
    const classes = [restarted ? "restarted" : null, backingOff ? "backing-off" : null].filter(Boolean).join(" ");
    const row = el("tr", { "data-actor": actor.name, "data-supervision": supervision ? supervision.state : null, class: classes || null },
      el("td", { class: "name" }, actor.name, el("span", { class: "kind", text: actor.kind.replace("_", " ") })),
      el("td", { "data-label": "alive" },
        el("span", { class: "dot", "data-status": aliveStatus(instances), "data-alive": instances.alive },
          `${instances.alive} / ${instances.configured}`)),
      el("td", { "data-label": "queue" }, ...queueCell),
      el("td", { "data-label": "restarts" },
        el("span", { class: "restart-count", "data-restarts": restarts.count, text: String(restarts.count) }),
        restarts.last_at ? el("span", { class: "restart-when", text: ago(restarts.last_at), title: restarts.last_reason || "" }) : null,
        ...[supervisionCell(supervision)].flat()),
      el("td", { class: "facts" }, ...facts(actor)));
    // Keep the highlight going across refreshes while its animation runs.
    const old = tbody.querySelector(`tr[data-actor="${CSS.escape(actor.name)}"]`);
    if (!restarted && old && old.classList.contains("restarted") && Date.now() - Number(old.dataset.flashedAt || 0) < 4000) {
      row.classList.add("restarted");
      row.dataset.flashedAt = old.dataset.flashedAt;
    } else if (restarted) {
      row.dataset.flashedAt = String(Date.now());
    }
    return row;
  });
  tbody.replaceChildren(...rows);
  // Widths via CSSOM: a style attribute would need 'unsafe-inline' under the page's CSP.
  for (const bar of tbody.querySelectorAll("[data-load]")) bar.style.width = `${bar.dataset.load}%`;
  $("chaos").hidden = !body.chaos_enabled;
}

function noteRestartEvent(data) {
  // A live `actor.restarted`: bump the row now rather than at the next poll.
  const row = $("actors-body").querySelector(`tr[data-actor="${CSS.escape(data.actor)}"]`);
  const count = Number(data.count || (state.restartCounts.get(data.actor) || 0) + 1);
  if (row && count > (state.restartCounts.get(data.actor) || 0)) {
    state.restartCounts.set(data.actor, count);
    const cell = row.querySelector(".restart-count");
    cell.textContent = String(count);
    cell.dataset.restarts = String(count);
    row.classList.remove("restarted");
    void row.offsetWidth; // restart the animation
    row.classList.add("restarted");
    row.dataset.flashedAt = String(Date.now());
  }
  const list = $("restarts");
  if (list.firstElementChild && list.firstElementChild.classList.contains("muted")) list.replaceChildren();
  list.prepend(restartItem({ actor: data.actor, at: data.at, reason: data.reason }, true));
}

// `actor.backing_off` / `actor.recovered`: onto the timeline now, the row at the next poll.
function noteSupervisionEvent(kind, data) {
  const backingOff = kind === "actor.backing_off";
  const reason = backingOff
    ? `backing off: ${data.restarts_in_window} restarts in ${data.window_seconds} s (at most ${data.max_restarts} at once)` +
      (data.next_restart_at ? `, next restart at ${clock(data.next_restart_at)}` : "")
    : `recovered: ran ${data.window_seconds} s without a panic`;
  const entry = { actor: data.actor, at: data.at, reason, kind };
  state.supervisionEvents = [entry, ...state.supervisionEvents].slice(0, 20);
  const list = $("restarts");
  if (list.firstElementChild && list.firstElementChild.classList.contains("muted")) list.replaceChildren();
  list.prepend(restartItem(entry, true));
  refresh();
}

function restartItem(restart, fresh) {
  return el("li", { class: fresh ? "fresh" : null, "data-kind": restart.kind || "actor.restarted" },
    el("div", null, el("b", { text: restart.actor }), " ", el("span", { class: "when", text: `${clock(restart.at)} · ${ago(restart.at)}` })),
    el("div", { class: "reason", text: restart.reason }));
}

function renderRestarts(restarts) {
  const list = $("restarts");
  const newest = list.dataset.newest;
  const entries = [...restarts, ...state.supervisionEvents].sort((a, b) => Date.parse(b.at) - Date.parse(a.at));
  if (!entries.length) {
    list.replaceChildren(el("li", { class: "muted", text: "No restarts yet." }));
    return;
  }
  list.replaceChildren(...entries.slice(0, 50).map((restart, index) =>
    restartItem(restart, newest !== undefined && index === 0 && restart.at !== newest)));
  list.dataset.newest = entries[0].at;
}

function checkStatus(entries) {
  const statuses = entries.map((entry) => entry.status);
  if (statuses.includes("fail")) return "fail";
  if (statuses.includes("warn")) return "warn";
  return "pass";
}

function checkValue(name, entries) {
  if (name === "actors:restarts") return entries.map((e) => `${e.componentId} ×${e.observedValue}`).join(", ");
  if (name === "actors:supervision") return entries.map((e) => `${e.componentId} backing off`).join(", ");
  const entry = entries[0] || {};
  if (entry.output) return entry.observedValue !== undefined && typeof entry.observedValue === "string" ? `${entry.observedValue} · ${entry.output}` : entry.output;
  if (typeof entry.observedValue === "number") {
    const unit = entry.observedUnit || "";
    const value = Number.isInteger(entry.observedValue) ? entry.observedValue : entry.observedValue.toFixed(2);
    return entry.targetValue !== undefined ? `${value} of ${entry.targetValue}` : `${value} ${unit}`.trim();
  }
  return entry.observedValue !== undefined ? String(entry.observedValue) : "";
}

function renderReadiness(report) {
  const pill = $("ready-pill");
  if (!report) {
    pill.dataset.status = "fail";
    pill.textContent = "readiness: no answer";
    return;
  }
  const ready = report.status === "pass";
  pill.dataset.status = ready ? "pass" : "fail";
  pill.textContent = ready ? "ready" : "not ready";
  const checks = Object.entries(report.checks || {});
  $("checks").replaceChildren(...checks.map(([name, entries]) =>
    el("li", null,
      el("span", { class: "dot", "data-status": name === "actors:restarts" ? "warn" : checkStatus(entries) }, name),
      el("span", { class: "value", text: checkValue(name, entries) }))));
  const breaker = (report.checks || {})["database:breaker"];
  if (breaker) showBreaker(breaker[0].observedValue, breaker[0].status);
}

function showBreaker(stateName, status) {
  const label = String(stateName || "unknown").replace("_", "-");
  for (const node of [$("breaker-pill"), $("breaker-badge")]) {
    node.dataset.status = status;
    node.textContent = `breaker ${label}`;
  }
}

// ---- charts ------------------------------------------------------------------------

function buildCharts() {
  $("charts").replaceChildren(...CHARTS.map((chart) => {
    const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
    svg.setAttribute("viewBox", "0 0 100 40");
    svg.setAttribute("preserveAspectRatio", "none");
    const area = document.createElementNS(svg.namespaceURI, "polygon");
    const line = document.createElementNS(svg.namespaceURI, "polyline");
    line.setAttribute("fill", "none");
    svg.append(area, line);
    return el("div", { class: "chart", "data-chart": chart.key },
      el("div", { class: "chart-title" }, el("span", { text: chart.title }), el("span", { class: "muted", "data-peak": "" })),
      el("div", { class: "chart-value", text: "–" }), svg);
  }));
}

// Smallest bucket bound covering 99% of the requests between two reads (ms).
function p99(before, after) {
  const total = after.latency_count - before.latency_count;
  if (total <= 0) return null;
  for (let i = 0; i < after.latency_buckets.length; i++) {
    const count = after.latency_buckets[i].count - ((before.latency_buckets[i] || {}).count || 0);
    if (count >= 0.99 * total) return after.latency_buckets[i].le * 1000;
  }
  const last = after.latency_buckets[after.latency_buckets.length - 1];
  return last ? last.le * 1000 : null;
}

function point(before, after) {
  const seconds = Math.max(0.001, (Date.parse(after.at) - Date.parse(before.at)) / 1000);
  const requests = after.requests_total - before.requests_total;
  const lookups = after.cache_lookups_total - before.cache_lookups_total;
  return {
    t: Date.parse(after.at),
    rps: requests / seconds,
    errors: requests > 0 ? (100 * (after.errors_total - before.errors_total)) / requests : 0,
    p99: p99(before, after),
    hit: lookups > 0 ? (100 * (after.cache_hits_total - before.cache_hits_total)) / lookups : null,
    limited: (after.rate_limited_total - before.rate_limited_total) / seconds,
    ws: after.ws_connections,
  };
}

function addSample(summary) {
  const samples = state.samples;
  if (samples.length && samples[samples.length - 1].raw.requests_total > summary.requests_total) samples.length = 0; // server restarted
  const previous = samples[samples.length - 1];
  samples.push({ raw: summary, point: previous ? point(previous.raw, summary) : null });
  const horizon = Date.parse(summary.at) - WINDOW_MS;
  while (samples.length > 2 && Date.parse(samples[0].raw.at) < horizon) samples.shift();
  drawCharts();
}

function drawCharts() {
  const points = state.samples.map((sample) => sample.point).filter(Boolean);
  $("charts").dataset.points = String(points.length);
  for (const chart of CHARTS) {
    const box = document.querySelector(`[data-chart="${chart.key}"]`);
    if (!box) continue;
    const values = points.map((p) => p[chart.key]);
    const latest = values.length ? values[values.length - 1] : null;
    box.querySelector(".chart-value").textContent =
      latest === null || latest === undefined ? (chart.key === "ws" ? "n/a" : "–") : `${latest.toFixed(chart.digits)} ${chart.unit}`.trim();
    const numeric = values.map((v) => (v === null || v === undefined ? 0 : v));
    const peak = Math.max(1e-9, ...numeric);
    box.querySelector("[data-peak]").textContent = numeric.length ? `max ${Math.max(...numeric).toFixed(chart.digits)}` : "";
    const n = numeric.length;
    const xy = numeric.map((v, i) => `${n === 1 ? 100 : (100 * i) / (n - 1)},${(38 - (36 * v) / peak).toFixed(2)}`);
    box.querySelector("polyline").setAttribute("points", xy.join(" "));
    box.querySelector("polygon").setAttribute("points", n ? `0,40 ${xy.join(" ")} 100,40` : "");
  }
}

// ---- live updates (the `ops` topic) -------------------------------------------------

function setLive(status, text) {
  const pill = $("live-pill");
  pill.dataset.status = status;
  pill.textContent = `live updates: ${text}`;
}

function closeSocket() {
  clearTimeout(state.socketTimer);
  if (state.socket) {
    state.socket.onclose = null;
    state.socket.close();
    state.socket = null;
  }
}

function openSocket() {
  closeSocket();
  if (!state.token) return;
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  let socket;
  try {
    socket = new WebSocket(`${scheme}://${location.host}/api/v1/ws?access_token=${encodeURIComponent(state.token)}`);
  } catch (_) {
    scheduleReconnect();
    return;
  }
  state.socket = socket;
  state.lastEventId = 0; // no `since` is sent, so a new connection replays nothing
  setLive("warn", "connecting");
  socket.onopen = () => socket.send(JSON.stringify({ op: "subscribe", topics: ["ops"] }));
  socket.onmessage = (message) => {
    let frame;
    try { frame = JSON.parse(message.data); } catch (_) { return; }
    if (frame.type === "subscribed") {
      state.socketRetry = 0;
      setLive("pass", "on");
    } else if (frame.type === "event" && frame.topic === "ops") {
      // Event ids grow strictly: anything not newer is a replay already shown.
      if (typeof frame.id === "number") {
        if (frame.id <= state.lastEventId) return;
        state.lastEventId = frame.id;
      }
      if (frame.kind === "actor.restarted") noteRestartEvent(frame.data || {});
      else if (frame.kind === "actor.backing_off" || frame.kind === "actor.recovered") noteSupervisionEvent(frame.kind, frame.data || {});
      else if (frame.kind === "breaker.changed") showBreaker(frame.data.to, frame.data.to === "open" ? "fail" : frame.data.to === "closed" ? "pass" : "warn");
      else if (frame.kind === "health.changed") refresh();
    }
  };
  socket.onclose = () => {
    state.socket = null;
    scheduleReconnect();
  };
}

// Backoff 1, 2, 4 … 30 s; the 2 s polling keeps the page correct in the meantime.
function scheduleReconnect() {
  if (!state.token) return;
  const delay = Math.min(30, 2 ** state.socketRetry);
  state.socketRetry = Math.min(state.socketRetry + 1, 5);
  setLive("warn", `reconnecting in ${delay} s (polling meanwhile)`);
  state.socketTimer = setTimeout(openSocket, delay * 1000);
}

// ---- fault injection ---------------------------------------------------------------

function buildFaults() {
  $("faults").replaceChildren(...FAULTS.map((fault) => {
    const button = el("button", { type: "button", "data-actor": fault.actor, "data-fault": fault.fault, text: fault.label });
    button.addEventListener("click", () => inject(fault, button));
    return button;
  }));
}

async function inject(fault, button) {
  const result = $("chaos-result");
  const token = $("chaos-token").value.trim();
  if (!token) {
    result.textContent = "Paste the chaos token first.";
    return;
  }
  button.disabled = true;
  result.textContent = `Injecting ${fault.label}…`;
  try {
    const body = { actor: fault.actor, fault: fault.fault };
    if (fault.millis) body.millis = fault.millis;
    const response = await fetch("/ops/chaos", {
      method: "POST",
      headers: { "Content-Type": "application/json", Authorization: `Bearer ${token}` },
      body: JSON.stringify(body),
    });
    if (response.status === 401) result.textContent = "The chaos token was refused.";
    else if (response.status === 500) result.textContent = `${fault.actor} panicked as asked; watch it come back.`;
    else if (response.ok && fault.fault === "crash_loop") result.textContent = `${fault.actor} now panics on every message; watch it back off.`;
    else if (response.ok && fault.fault === "clear") result.textContent = `${fault.actor}: crash loop ended; it recovers after a clean window.`;
    else if (response.ok) result.textContent = `${fault.label}: done, the actor survived it.`;
    else result.textContent = `${fault.label}: ${await problemText(response)}`;
    refresh();
  } catch (failure) {
    result.textContent = `Cannot reach the service (${failure.message}).`;
  } finally {
    button.disabled = false;
  }
}

// ---- start -------------------------------------------------------------------------

// Counted where a test (or a curious operator) can read it: the page must run clean under its CSP.
document.addEventListener("securitypolicyviolation", () => {
  document.body.dataset.cspViolations = String(Number(document.body.dataset.cspViolations || 0) + 1);
});

document.addEventListener("DOMContentLoaded", () => {
  $("sign-in-form").addEventListener("submit", signIn);
  $("sign-out").addEventListener("click", () => signOut());
  buildFaults();
  if (state.token) showDashboard();
  else signOut();
});
