// The operator screen: one city's map, alerts and panels, live from /api/v1/stream. No library, no
// request leaves the machine. After a (re)connect the screen loads everything again, so what it
// shows is exactly what a fresh load would show.
import { t, category } from "/screen/i18n.js";

const SEVERITY_ORDER = { critical: 0, warning: 1, info: 2 };
const SIAGA_COLOUR = { 1: "#ff3b30", 2: "#ff9500", 3: "#f5d400", 4: "#2ecc71" };
const LOS_COLOUR = { A: "#2ecc71", B: "#8bd448", C: "#f5d400", D: "#ff9500", E: "#ff3b30", F: "#8b0000" };
const RAIN_COLOUR = { none: "#5b6b7a", ringan: "#7dd3fc", sedang: "#3b82f6", lebat: "#6d28d9", sangat_lebat: "#be123c", ekstrem: "#7f1d1d" };
const ISPU_COLOUR = { green: "#2ecc71", blue: "#3b82f6", yellow: "#f5d400", red: "#ff3b30", black: "#111" };
const STALE_AFTER_MS = 40000;

const state = {
  lang: localStorage.getItem("pantau.lang") || "id",
  me: null, csrf: "", city: null, cities: [], sensors: [], latest: {}, alerts: [], air: [], rivers: [],
  traffic: [], rain: [], tab: "air", conn: "reconnecting", lastMessage: 0, newestData: null, stream: null,
  connectedOnce: false,
};

// The alert events this screen has received, in order (for whoever checks the screen: tests, support).
const received = [];
window.pantauReceived = received;

const $ = (sel) => document.querySelector(sel);
const el = (tag, attrs = {}, ...children) => {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (v !== null && v !== undefined && v !== false) node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
};
const svg = (tag, attrs = {}, ...children) => {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
};
const tr = (key, vars) => t(state.lang, key, vars);

async function api(path, options = {}) {
  const headers = { "Content-Type": "application/json", ...(options.headers || {}) };
  if (options.method && options.method !== "GET") headers["X-CSRF-Token"] = state.csrf;
  const response = await fetch(path, { credentials: "same-origin", ...options, headers });
  if (response.status === 401) { showLogin(); throw new Error("signed out"); }
  if (!response.ok) {
    const problem = await response.json().catch(() => ({}));
    throw new Error(problem.detail || response.statusText);
  }
  return response.json();
}

// -- time in the city's zone, with the zone shown ----------------------------------------------------

function cityOf() { return state.cities.find((c) => c.id === state.city) || { timezone: "Asia/Jakarta", zone: "WIB" }; }
function localTime(iso, withDate = false) {
  if (!iso) return "–";
  const city = cityOf();
  const fmt = new Intl.DateTimeFormat(state.lang === "en" ? "en-GB" : "id-ID", {
    timeZone: city.timezone, hour: "2-digit", minute: "2-digit", second: "2-digit",
    ...(withDate ? { day: "2-digit", month: "short" } : {}),
  });
  return `${fmt.format(new Date(iso))} ${city.zone}`;
}
function ago(ms) {
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 120) return tr("seconds", { n: s });
  if (s < 7200) return tr("minutes_ago", { n: Math.round(s / 60) });
  return tr("hours_ago", { n: Math.round(s / 3600) });
}

// -- signing in ----------------------------------------------------------------------------------------

function showLogin() {
  if (state.stream) { state.stream.close(); state.stream = null; }
  $("#app").hidden = true;
  $("#login").hidden = false;
  translate();
}

async function signIn(event) {
  event.preventDefault();
  const form = new FormData(event.target);
  const response = await fetch("/api/v1/auth/login", {
    method: "POST", headers: { "Content-Type": "application/json" }, credentials: "same-origin",
    body: JSON.stringify({ username: form.get("username"), password: form.get("password") }),
  });
  if (!response.ok) {
    $("#login-error").textContent = tr(response.status === 429 ? "throttled" : "login_failed");
    return;
  }
  await start();
}

async function start() {
  let me;
  try {
    const response = await fetch("/api/v1/auth/me", { credentials: "same-origin" });
    if (!response.ok) return showLogin();
    me = await response.json();
  } catch { return showLogin(); }
  state.me = me;
  state.csrf = me.csrf_token || "";
  $("#login").hidden = true;
  $("#app").hidden = false;
  state.cities = (await api("/api/v1/cities")).cities;
  const saved = localStorage.getItem("pantau.city");
  state.city = state.cities.some((c) => c.id === saved) ? saved : (state.cities[0] || {}).id;
  renderCities();
  await reload();
  connect();
}

// -- loading: everything the screen shows, from the API ------------------------------------------------

async function reload() {
  if (!state.city) return;
  const q = `city=${encodeURIComponent(state.city)}`;
  const [sensors, latest, alerts, air, rivers, traffic, rain] = await Promise.all([
    api(`/api/v1/sensors?${q}`), api(`/api/v1/latest?${q}`), api(`/api/v1/alerts?${q}&state=active&limit=500`),
    api(`/api/v1/air/ispu?${q}`), api(`/api/v1/flood/rivers?${q}`), api(`/api/v1/traffic/corridors?${q}`),
    api(`/api/v1/rain?${q}`),
  ]);
  state.sensors = sensors.sensors;
  state.latest = Object.fromEntries(latest.sensors.map((s) => [s.id, s.values]));
  state.alerts = alerts.alerts;
  state.air = air.stations;
  state.rivers = rivers.rivers;
  state.traffic = traffic.counters;
  state.rain = rain.gauges;
  state.newestData = newest();
  render();
}

function newest() {
  let best = null;
  for (const values of Object.values(state.latest)) for (const v of Object.values(values)) if (!best || v.ts > best) best = v.ts;
  return best;
}

// At most one reload at a time, and always one more after events that came during it: a steady
// stream of events (a flood escalating) never postpones the list's update.
let reloading = false, reloadAgain = false;
function reloadSoon() {
  if (reloading) { reloadAgain = true; return; }
  reloading = true;
  setTimeout(async () => {
    try { await reload(); } catch (e) { console.error(e); }
    reloading = false;
    if (reloadAgain) { reloadAgain = false; reloadSoon(); }
  }, 150);
}

// -- the live stream ---------------------------------------------------------------------------------

function connect() {
  if (state.stream) state.stream.close();
  const stream = new EventSource(`/api/v1/stream?city=${encodeURIComponent(state.city)}`);
  state.stream = stream;
  const seen = () => { state.lastMessage = Date.now(); if (state.conn !== "live") { state.conn = "live"; renderConn(); } };
  stream.addEventListener("hello", () => {
    seen();
    if (state.connectedOnce) reloadSoon(); // a reconnect: load what a fresh screen would show
    state.connectedOnce = true;
  });
  stream.addEventListener("alert", (e) => {
    seen();
    const { alert, event } = JSON.parse(e.data);
    received.push({ id: Number(e.lastEventId), kind: event.kind, severity: alert.severity, alert: alert.id });
    if (event.kind === "opened" && alert.severity === "critical") beep();
    reloadSoon();
  });
  stream.addEventListener("values", (e) => {
    seen();
    for (const v of JSON.parse(e.data).values) {
      (state.latest[v.sensor] ||= {})[v.metric] = { ts: v.ts, value: v.value };
      if (!state.newestData || v.ts > state.newestData) state.newestData = v.ts;
    }
    reloadPanelsSoon();
  });
  stream.addEventListener("status", (e) => {
    seen();
    for (const c of JSON.parse(e.data).changes) {
      const s = state.sensors.find((x) => x.id === c.sensor);
      if (s) s.status = c.status;
    }
    renderMap(); if (state.tab === "health") renderPanel();
  });
  stream.addEventListener("heartbeat", seen);
  stream.addEventListener("reset", () => { stream.close(); state.connectedOnce = false; reload().then(connect); });
  stream.onerror = () => { state.conn = "reconnecting"; renderConn(); };
}

let panelTimer = null;
function reloadPanelsSoon() {
  if (panelTimer) return;
  panelTimer = setTimeout(async () => {
    panelTimer = null;
    const q = `city=${encodeURIComponent(state.city)}`;
    const [air, rivers, traffic, rain] = await Promise.all([api(`/api/v1/air/ispu?${q}`),
      api(`/api/v1/flood/rivers?${q}`), api(`/api/v1/traffic/corridors?${q}`), api(`/api/v1/rain?${q}`)]);
    Object.assign(state, { air: air.stations, rivers: rivers.rivers, traffic: traffic.counters, rain: rain.gauges });
    renderMap(); renderPanel();
  }, 1000);
}

function renderClock() {
  if (state.city) $("#clock").textContent = localTime(new Date().toISOString());
}

setInterval(() => {
  if (state.conn === "live" && Date.now() - state.lastMessage > STALE_AFTER_MS) state.conn = "stale";
  renderConn();
  renderClock();
}, 1000);

function beep() {
  if (!$("#sound").checked) return;
  const ctx = new AudioContext();
  const osc = ctx.createOscillator();
  osc.frequency.value = 880; osc.connect(ctx.destination); osc.start(); osc.stop(ctx.currentTime + 0.4);
}

// -- rendering ---------------------------------------------------------------------------------------

function translate() {
  document.documentElement.lang = state.lang;
  for (const node of document.querySelectorAll("[data-t]")) node.textContent = tr(node.dataset.t);
  for (const node of document.querySelectorAll("[data-action=lang]")) node.textContent = state.lang === "id" ? "EN" : "ID";
}

function render() {
  translate();
  const me = state.me;
  $("#who").textContent = tr("sign_in_as", { name: me.name, role: tr(`role_${me.role}`),
    cities: me.cities ? me.cities.join(", ") : tr("every_city") });
  renderConn(); renderClock(); renderMap(); renderAlerts(); renderPanel();
}

function renderCities() {
  const select = $("#city");
  select.replaceChildren(...state.cities.map((c) => el("option", { value: c.id, selected: c.id === state.city }, c.name || c.id)));
}

function renderConn() {
  const conn = $("#conn");
  if (!conn) return;
  conn.className = `conn ${state.conn}`;
  const age = state.newestData ? ` · ${tr("age", { age: ago(Date.now() - Date.parse(state.newestData)) })}` : "";
  conn.textContent = tr(state.conn) + (state.conn === "live" ? "" : age);
  conn.dataset.state = state.conn;
}

function sensorLook(sensor) {
  // Colour and the text beside it: never colour alone.
  if (sensor.status === "offline") return { colour: "#7a8794", text: tr("offline") };
  if (sensor.kind === "air") {
    const st = state.air.find((a) => a.sensor === sensor.id);
    if (st && st.category) return { colour: ISPU_COLOUR[st.category.colour] || "#888", text: `${st.ispu} ${category(state.lang, st.category.label)}` };
  } else if (sensor.kind === "flood") {
    for (const river of state.rivers) {
      const g = river.gauges.find((x) => x.sensor === sensor.id);
      if (g && g.siaga) return { colour: SIAGA_COLOUR[g.siaga.siaga], text: category(state.lang, g.siaga.label) };
    }
  } else if (sensor.kind === "traffic") {
    const c = state.traffic.find((x) => x.sensor === sensor.id);
    if (c && c.los) return { colour: LOS_COLOUR[c.los], text: `LOS ${c.los}` };
  } else if (sensor.kind === "rain") {
    const r = state.rain.find((x) => x.sensor === sensor.id);
    if (r && r.last_hour.class) return { colour: RAIN_COLOUR[r.last_hour.class], text: category(state.lang, r.last_hour.class) };
  }
  return { colour: "#9fb0c0", text: tr("no_data") };
}

function renderMap() {
  const map = $("#map");
  const placed = state.sensors.filter((s) => s.lat !== null && s.lon !== null);
  map.replaceChildren();
  if (!placed.length) return;
  const { width, height } = map.getBoundingClientRect();
  const lats = placed.map((s) => s.lat), lons = placed.map((s) => s.lon);
  const [minLat, maxLat, minLon, maxLon] = [Math.min(...lats), Math.max(...lats), Math.min(...lons), Math.max(...lons)];
  const pad = 40, spanLon = Math.max(maxLon - minLon, 1e-4), spanLat = Math.max(maxLat - minLat, 1e-4);
  const scale = Math.min((width - 2 * pad) / spanLon, (height - 2 * pad) / spanLat);
  const dx = (width - 2 * pad - spanLon * scale) / 2, dy = (height - 2 * pad - spanLat * scale) / 2; // centred
  const xy = (s) => [pad + dx + (s.lon - minLon) * scale, height - pad - dy - (s.lat - minLat) * scale];
  const districts = {};
  for (const s of placed) if (s.district) (districts[s.district] ||= []).push(xy(s));
  for (const [name, points] of Object.entries(districts)) {
    const x = points.reduce((a, p) => a + p[0], 0) / points.length, y = points.reduce((a, p) => a + p[1], 0) / points.length;
    map.append(svg("text", { class: "district", x, y: y - 18 }, name));
  }
  for (const river of state.rivers) { // drawn through its gauges, upstream → downstream
    const points = river.gauges.map((g) => placed.find((s) => s.id === g.sensor)).filter(Boolean).map(xy);
    if (points.length > 1) map.append(svg("polyline", { class: "river", points: points.map((p) => p.join(",")).join(" ") }));
  }
  for (const s of placed) {
    const [x, y] = xy(s);
    const look = sensorLook(s);
    const marker = svg("circle", { class: `marker ${s.status === "stuck" ? "stuck" : ""}`, cx: x, cy: y, r: 9, fill: look.colour,
      "data-sensor": s.id, "data-text": look.text });
    marker.append(svg("title", {}, `${s.name || s.id} — ${look.text}${s.status === "stuck" ? " · " + tr("stuck") : ""}`));
    marker.addEventListener("click", () => showTrend(s));
    map.append(marker, svg("text", { class: "tag", x: x + 12, y: y + 4 }, look.text));
  }
}

function renderAlerts() {
  const list = $("#alert-list");
  const alerts = [...state.alerts].sort((a, b) =>
    (SEVERITY_ORDER[a.severity] - SEVERITY_ORDER[b.severity]) || a.opened_at.localeCompare(b.opened_at));
  $("#alert-count").textContent = `(${alerts.length})`;
  if (!alerts.length) { list.replaceChildren(el("li", { class: "none" }, tr("none"))); return; }
  const canAct = state.me.role === "operator";
  list.replaceChildren(...alerts.map((a) => {
    const sensor = state.sensors.find((s) => s.id === a.sensor_id);
    const flash = a.severity === "critical" && a.state === "open";
    return el("li", { class: `alert ${a.severity} ${flash ? "flash" : ""}`, "data-alert": a.id, "data-state": a.state },
      el("div", { class: "head" },
        el("span", {}, `${tr(a.severity)} · ${a.rule_id}`),
        el("span", { class: "state" }, tr(a.state))),
      el("div", {}, `${sensor ? (sensor.name || sensor.id) : a.scope} · ${a.district || (sensor && sensor.district) || ""}`
        + (a.current_value !== null ? ` · ${a.current_value}` : "")),
      el("div", { class: "meta" }, `${tr("opened")} ${localTime(a.opened_at, true)}`
        + (a.acked_by ? ` · ${tr("acknowledged")} ${tr("by")} ${a.acked_by} ${localTime(a.acked_at)}` : "")
        + (a.reason ? ` · ${a.reason}` : "")),
      canAct ? el("div", { class: "actions" },
        a.state === "open" ? el("button", { "data-act": "ack", onclick: () => act(a, "ack") }, tr("acknowledge")) : "",
        el("button", { "data-act": "resolve", onclick: () => act(a, "resolve") }, tr("resolve")),
        a.sensor_id ? el("button", { "data-act": "silence", onclick: () => silence(a) }, tr("silence")) : "") : "",
      el("details", { ontoggle: (e) => e.target.open && history(a, e.target) }, el("summary", {}, "⋯")));
  }));
}

async function history(alert, details) {
  const full = await api(`/api/v1/alerts/${alert.id}`);
  details.querySelector("ol")?.remove();
  details.append(el("ol", { class: "history" }, ...full.events.map((e) =>
    el("li", {}, `${localTime(e.at, true)} · ${tr(e.kind) || e.kind} · ${e.actor}${e.reason ? " · " + e.reason : ""}`))));
}

function ask(title, fields) {
  return new Promise((resolve) => {
    const dialog = $("#dialog");
    const form = el("form", { method: "dialog" }, el("h3", {}, title),
      ...fields.map((f) => el("label", {}, el("div", {}, f.label), el("input", { name: f.name, type: f.type || "text",
        required: true, value: f.value || "", min: f.min || null }))),
      el("div", { class: "actions" },
        el("button", { type: "button", onclick: () => { dialog.close(); resolve(null); } }, tr("cancel")),
        el("button", { type: "submit", value: "ok" }, tr("save"))));
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      dialog.close();
      resolve(Object.fromEntries(new FormData(form)));
    });
    dialog.replaceChildren(form);
    dialog.showModal();
  });
}

async function act(alert, action) {
  const answer = await ask(`${tr(action === "ack" ? "acknowledge" : "resolve")} #${alert.id}`,
    [{ name: "note", label: tr("note_required") }]);
  if (!answer) return;
  await api(`/api/v1/alerts/${alert.id}/${action}`, { method: "POST", body: JSON.stringify({ note: answer.note }) });
  await reload();
}

async function silence(alert) {
  const answer = await ask(`${tr("silence")} ${alert.sensor_id}`, [
    { name: "minutes", label: tr("minutes"), type: "number", value: "60", min: "1" },
    { name: "note", label: tr("note_required") }]);
  if (!answer) return;
  await api("/api/v1/silences", { method: "POST",
    body: JSON.stringify({ sensor: alert.sensor_id, minutes: Number(answer.minutes), note: answer.note }) });
  await reload();
}

function table(headers, rows) {
  return el("table", {}, el("thead", {}, el("tr", {}, ...headers.map((h) => el("th", {}, tr(h))))),
    el("tbody", {}, ...rows.map((r) => el("tr", {}, ...r.map((c) => el("td", {}, c))))));
}
function swatch(colour, text) { return el("span", {}, el("span", { class: "badge", style: `background:${colour}` }, " "), " ", text); }
function fixed(v, digits = 1) { return v === null || v === undefined ? "–" : Number(v).toFixed(digits); }

function renderPanel() {
  for (const b of document.querySelectorAll("[data-tab]")) b.setAttribute("aria-selected", b.dataset.tab === state.tab);
  const panel = $("#panel");
  if (state.tab === "air") {
    panel.replaceChildren(table(["station", "district", "ispu", "category", "critical_pollutant"], state.air.map((s) => [
      s.name || s.sensor, s.district, s.ispu ?? "–",
      s.category ? swatch(ISPU_COLOUR[s.category.colour], category(state.lang, s.category.label)) : "–", s.critical || "–"])));
  } else if (state.tab === "flood") {
    panel.replaceChildren(...state.rivers.map((river) => el("div", { class: "river" },
      el("h3", {}, `${river.river || "–"} (${tr("upstream")})`),
      table(["gauge", "level", "siaga", "rate", "since"], river.gauges.map((g) => [
        g.name || g.sensor, g.level_cm === null ? "–" : `${fixed(g.level_cm, 0)} cm`,
        g.siaga ? swatch(SIAGA_COLOUR[g.siaga.siaga], category(state.lang, g.siaga.label)) : "–",
        fixed(g.rate_cm_per_h), g.since_s === null ? "–" : ago(g.since_s * 1000)])))));
  } else if (state.tab === "traffic") {
    const counters = [...state.traffic].sort((a, b) => (b.los || "").localeCompare(a.los || ""));
    panel.replaceChildren(table(["counter", "district", "flow", "speed", "ds", "los"], counters.map((c) => [
      c.name || c.sensor, c.district, fixed(c.flow_pcu_h, 0), fixed(c.speed_kmh), fixed(c.degree_of_saturation, 2),
      c.los ? swatch(LOS_COLOUR[c.los], `LOS ${c.los}`) : "–"])));
  } else {
    const unwell = state.sensors.filter((s) => s.status !== "ok");
    panel.replaceChildren(table(["sensor", "kind", "district", "status", "last_seen"], unwell.map((s) => [
      s.name || s.id, tr(`kind_${s.kind}`), s.district, tr(s.status), localTime(s.last_seen, true)])));
  }
}

// -- a sensor's trend, with its thresholds ------------------------------------------------------------

const METRIC_OF = { air: "pm25", flood: "water_level_cm", traffic: "avg_speed_kmh", rain: "rain_mm" };
async function showTrend(sensor, days = 1) {
  const metric = METRIC_OF[sensor.kind];
  const to = new Date(), from = new Date(to - days * 86400000);
  const series = await api(`/api/v1/series?sensor=${encodeURIComponent(sensor.id)}&metric=${metric}`
    + `&from=${from.toISOString()}&to=${to.toISOString()}&step=auto&agg=avg`);
  // Raw readings answer "value", aggregated buckets "avg"; gaps are nulls, never drawn as values.
  const points = (series.series[0] || { points: [] }).points
    .map((p) => ({ ts: p.ts, avg: p.avg ?? p.value ?? null })).filter((p) => p.avg !== null);
  const dialog = $("#dialog");
  const chart = svg("svg", { class: "chart", viewBox: "0 0 800 300", preserveAspectRatio: "none" });
  const thresholds = sensor.kind === "flood" ? Object.entries(sensor.metadata || {}).filter(([k]) => /^siaga\d_cm$/.test(k)) : [];
  const values = [...points.map((p) => p.avg), ...thresholds.map(([, v]) => v)];
  if (values.length) {
    const lo = Math.min(...values), hi = Math.max(...values, lo + 1e-6);
    const x = (i) => 40 + (i / Math.max(points.length - 1, 1)) * 740, y = (v) => 280 - ((v - lo) / (hi - lo)) * 260;
    chart.append(svg("polyline", { class: "line", points: points.map((p, i) => `${x(i)},${y(p.avg)}`).join(" ") }));
    for (const [name, v] of thresholds) {
      const level = Number(name[5]);
      chart.append(svg("line", { class: "threshold", x1: 40, x2: 780, y1: y(v), y2: y(v), stroke: SIAGA_COLOUR[level] }),
        svg("text", { x: 44, y: y(v) - 4 }, `Siaga ${level} · ${v} cm`));
    }
    chart.append(svg("text", { x: 0, y: 16 }, `${fixed(hi)}`), svg("text", { x: 0, y: 296 }, `${fixed(lo)}`));
  }
  dialog.replaceChildren(el("h3", {}, `${tr("trend")} · ${sensor.name || sensor.id} · ${metric}`),
    el("div", { class: "actions" }, ...[[1, "h24"], [7, "d7"], [30, "d30"]].map(([d, k]) =>
      el("button", { onclick: () => showTrend(sensor, d), "aria-pressed": d === days }, tr(k)))),
    points.length ? chart : el("p", {}, tr("no_data")),
    el("form", { method: "dialog" }, el("button", {}, "OK")));
  if (!dialog.open) dialog.showModal();
}

// -- wiring ------------------------------------------------------------------------------------------

document.addEventListener("click", (e) => {
  const target = e.target.closest("[data-action], [data-tab]");
  if (!target) return;
  if (target.dataset.tab) { state.tab = target.dataset.tab; renderPanel(); return; }
  if (target.dataset.action === "lang") {
    state.lang = state.lang === "id" ? "en" : "id";
    localStorage.setItem("pantau.lang", state.lang);
    if (state.me) render(); else translate();
  } else if (target.dataset.action === "logout") {
    api("/api/v1/auth/logout", { method: "POST", body: "{}" }).finally(showLogin);
  }
});
$("#login-form").addEventListener("submit", signIn);
$("#city").addEventListener("change", async (e) => {
  state.city = e.target.value;
  localStorage.setItem("pantau.city", state.city);
  state.connectedOnce = false;
  await reload();
  connect();
});
window.addEventListener("resize", () => state.me && renderMap());
translate();
start();
