// The operator screen: one city's map, alerts and panels, live from /api/v1/stream. No library, no
// request leaves the machine. After a (re)connect the screen loads everything again, so what it
// shows is exactly what a fresh load would show.
import { t, category } from "/screen/i18n.js";
import { world, drawBasemap } from "/screen/basemap.js";

const SEVERITY_ORDER = { critical: 0, warning: 1, info: 2 };
const SIAGA_COLOUR = { 1: "#ff3b30", 2: "#ff9500", 3: "#f5d400", 4: "#2ecc71" };
const LOS_COLOUR = { A: "#2ecc71", B: "#8bd448", C: "#f5d400", D: "#ff9500", E: "#ff3b30", F: "#8b0000" };
const RAIN_COLOUR = { none: "#5b6b7a", ringan: "#7dd3fc", sedang: "#3b82f6", lebat: "#6d28d9", sangat_lebat: "#be123c", ekstrem: "#7f1d1d" };
const ISPU_COLOUR = { green: "#2ecc71", blue: "#3b82f6", yellow: "#f5d400", red: "#ff3b30", black: "#111" };
const ISPU_LABEL = { green: "Baik", blue: "Sedang", yellow: "Tidak Sehat", red: "Sangat Tidak Sehat", black: "Berbahaya" };
const STALE_AFTER_MS = 40000;
const PANELS_EVERY_MS = 2000; // a busy city's panels are fetched again at most this often
const AIR_EVERY_MS = 10000; // ISPU rests on means over 1 to 24 hours: no need to ask more often
const TODAY_EVERY_MS = 300000; // today's ISPU (the daily report so far) moves with whole hours
const TAGS_ALL_UP_TO = 400; // more markers than this: text tags only where a marker needs attention
const PANEL_ROWS = 200; // a panel's table shows this many rows, the worst first

const state = {
  lang: localStorage.getItem("pantau.lang") || "id",
  me: null, csrf: "", city: null, cities: [], sensors: [], latest: {}, alerts: [], air: [], rivers: [],
  traffic: [], rain: [], basemap: null, tab: "air", conn: "reconnecting", lastMessage: 0, newestData: null, stream: null,
  connectedOnce: false,
  // Lookups by sensor id, rebuilt when their data is loaded: a 10,000-sensor city draws in one pass.
  index: { sensors: new Map(), air: new Map(), flood: new Map(), traffic: new Map(), rain: new Map(), today: new Map() },
  markers: new Map(), // sensor id -> its circle and tag on the map, recoloured in place
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
  state.basemap = await api("/api/v1/basemap");
  const saved = localStorage.getItem("pantau.city");
  state.city = state.cities.some((c) => c.id === saved) ? saved : (state.cities[0] || {}).id;
  renderCities();
  await reload();
  connect();
  // The screen is usable once this first load is drawn: the mark after the next frame.
  requestAnimationFrame(() => setTimeout(() => performance.mark("pantau:ready"), 0));
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
  reindex("sensors", "air", "flood", "traffic", "rain");
  render();
  // Today's ISPU a few seconds after the screen is drawn: a big city's daily report is not in its way.
  if (state.sensors.some((s) => s.kind === "air")) { clearTimeout(todayTimer); todayTimer = setTimeout(loadToday, 3000); }
}

// Each station's ISPU of the local day so far (the daily report for today), beside the ISPU now.
let todayTimer = null;
async function loadToday() {
  clearTimeout(todayTimer);
  todayTimer = setTimeout(loadToday, TODAY_EVERY_MS);
  const date = new Intl.DateTimeFormat("en-CA", { timeZone: cityOf().timezone }).format(new Date());
  const city = state.city;
  const report = await api(`/api/v1/air/ispu/daily?city=${encodeURIComponent(city)}&date=${date}`);
  if (city !== state.city) return;
  state.index.today = new Map(report.stations.map((s) => [s.sensor, s]));
  if (state.tab === "air") renderPanel();
}

function reindex(...kinds) {
  const ix = state.index;
  if (kinds.includes("sensors")) ix.sensors = new Map(state.sensors.map((s) => [s.id, s]));
  if (kinds.includes("air")) ix.air = new Map(state.air.map((a) => [a.sensor, a]));
  if (kinds.includes("flood")) ix.flood = new Map(state.rivers.flatMap((r) => r.gauges.map((g) => [g.sensor, g])));
  if (kinds.includes("traffic")) ix.traffic = new Map(state.traffic.map((c) => [c.sensor, c]));
  if (kinds.includes("rain")) ix.rain = new Map(state.rain.map((r) => [r.sensor, r]));
}

async function reloadAlerts() {
  if (!state.city) return;
  const alerts = await api(`/api/v1/alerts?city=${encodeURIComponent(state.city)}&state=active&limit=500`);
  state.alerts = alerts.alerts;
  renderAlerts();
}

function newest() {
  let best = null;
  for (const values of Object.values(state.latest)) for (const v of Object.values(values)) if (!best || v.ts > best) best = v.ts;
  return best;
}

// `work` run at most once at a time, `delayMs` after it is asked for, and always once more after
// asks that came while it ran: a steady stream of events (a flood escalating) never postpones an
// update, and a burst of them costs one.
function coalesced(work, delayMs) {
  let running = false, again = false;
  const soon = () => {
    if (running) { again = true; return; }
    running = true;
    setTimeout(async () => {
      try { await work(); } catch (e) { console.error(e); }
      running = false;
      if (again) { again = false; soon(); }
    }, delayMs);
  };
  return soon;
}
const reloadSoon = coalesced(reload, 150); // everything: after a reconnect
const alertsSoon = coalesced(reloadAlerts, 30); // the alert list only: after an alert event

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
    alertsSoon();
  });
  stream.addEventListener("values", (e) => {
    seen();
    for (const v of JSON.parse(e.data).values) {
      (state.latest[v.sensor] ||= {})[v.metric] = { ts: v.ts, value: v.value };
      if (!state.newestData || v.ts > state.newestData) state.newestData = v.ts;
      const sensor = state.index.sensors.get(v.sensor);
      if (sensor) touched.add(sensor.kind);
    }
    panelsSoon();
  });
  stream.addEventListener("status", (e) => {
    seen();
    for (const c of JSON.parse(e.data).changes) {
      const s = state.index.sensors.get(c.sensor);
      if (s) { s.status = c.status; recolour(s); }
    }
    if (state.tab === "health") renderPanel();
  });
  stream.addEventListener("heartbeat", seen);
  stream.addEventListener("reset", () => { stream.close(); state.connectedOnce = false; reload().then(connect); });
  stream.onerror = () => { state.conn = "reconnecting"; renderConn(); };
}

// The panels of the kinds whose values moved, fetched again at most every PANELS_EVERY_MS; the
// markers of those kinds recoloured in place.
const touched = new Set();
const PANEL_OF = {
  air: ["/api/v1/air/ispu", (r) => { state.air = r.stations; }],
  flood: ["/api/v1/flood/rivers", (r) => { state.rivers = r.rivers; }],
  traffic: ["/api/v1/traffic/corridors", (r) => { state.traffic = r.counters; }],
  rain: ["/api/v1/rain", (r) => { state.rain = r.gauges; }],
};
let airAt = 0, airTimer = null;
const panelsSoon = coalesced(async () => {
  const kinds = [...touched].filter((k) => PANEL_OF[k] && (k !== "air" || Date.now() - airAt >= AIR_EVERY_MS));
  for (const k of kinds) touched.delete(k); // air's turn comes again later: it stays touched
  if (kinds.includes("air")) airAt = Date.now();
  const q = `city=${encodeURIComponent(state.city)}`;
  const answers = await Promise.all(kinds.map((k) => api(`${PANEL_OF[k][0]}?${q}`)));
  kinds.forEach((k, i) => PANEL_OF[k][1](answers[i]));
  reindex(...kinds);
  for (const s of state.sensors) if (kinds.includes(s.kind)) recolour(s);
  if (kinds.includes(state.tab)) renderPanel();
  if (touched.has("air") && !airTimer) {
    airTimer = setTimeout(() => { airTimer = null; panelsSoon(); }, Math.max(0, AIR_EVERY_MS - (Date.now() - airAt)));
  }
  await new Promise((resolve) => setTimeout(resolve, PANELS_EVERY_MS));
}, 50);

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
  // Colour and the text beside it: never colour alone. `attention`: worth a tag on a crowded map.
  const ix = state.index;
  if (sensor.status === "offline") return { colour: "#7a8794", text: tr("offline"), attention: true };
  if (sensor.kind === "air") {
    const st = ix.air.get(sensor.id);
    if (st && st.category) return { colour: ISPU_COLOUR[st.category.colour] || "#888",
      text: `${st.ispu} ${category(state.lang, st.category.label)}`, attention: st.ispu > 100 };
  } else if (sensor.kind === "flood") {
    const g = ix.flood.get(sensor.id);
    if (g && g.siaga) return { colour: SIAGA_COLOUR[g.siaga.siaga], text: category(state.lang, g.siaga.label),
      attention: g.siaga.siaga <= 2 };
  } else if (sensor.kind === "traffic") {
    const c = ix.traffic.get(sensor.id);
    if (c && c.los) return { colour: LOS_COLOUR[c.los], text: `LOS ${c.los}`, attention: c.los >= "E" };
  } else if (sensor.kind === "rain") {
    const r = ix.rain.get(sensor.id);
    if (r && r.last_hour.class) return { colour: RAIN_COLOUR[r.last_hour.class], text: category(state.lang, r.last_hour.class),
      attention: ["lebat", "sangat_lebat", "ekstrem"].includes(r.last_hour.class) };
  }
  return { colour: "#9fb0c0", text: tr("no_data"), attention: false };
}

// The whole map: districts, rivers through their gauges upstream → downstream, every sensor as a
// marker. Drawn again on a (re)load and a resize; values and status changes only recolour markers.
function renderMap() {
  renderLegend(); // first: the map takes the height the legend leaves
  const map = $("#map");
  map.replaceChildren();
  state.markers = new Map();
  const placed = state.sensors.filter((s) => s.lat !== null && s.lon !== null);
  if (!placed.length) return;
  const { width, height } = map.getBoundingClientRect();
  const at = new Map(placed.map((s) => [s.id, world(s.lon, s.lat)]));
  let [minX, minY, maxX, maxY] = [Infinity, Infinity, -Infinity, -Infinity];
  for (const [x, y] of at.values()) {
    minX = Math.min(minX, x); maxX = Math.max(maxX, x); minY = Math.min(minY, y); maxY = Math.max(maxY, y);
  }
  const pad = 40, spanX = Math.max(maxX - minX, 1e-5), spanY = Math.max(maxY - minY, 1e-5);
  const S = Math.min((width - 2 * pad) / spanX, (height - 2 * pad) / spanY);
  const ox = (width - spanX * S) / 2 - minX * S, oy = (height - spanY * S) / 2 - minY * S; // centred
  const xy = (s) => { const [x, y] = at.get(s.id); return [ox + x * S, oy + y * S]; };
  state.view = { S, ox, oy, width, height };
  const layer = (name) => map.appendChild(svg("g", { class: name }));
  const basemap = layer("basemap"), districts = layer("districts"), rivers = layer("rivers");
  const markers = layer("markers"), tags = layer("tags");
  drawBasemap(basemap, state.basemap, state.view);
  const byDistrict = {};
  for (const s of placed) if (s.district) (byDistrict[s.district] ||= []).push(xy(s));
  for (const [name, points] of Object.entries(byDistrict)) {
    const x = points.reduce((a, p) => a + p[0], 0) / points.length, y = points.reduce((a, p) => a + p[1], 0) / points.length;
    districts.append(svg("text", { class: "district", x, y: y - 18 }, name));
  }
  for (const river of state.rivers) {
    const points = river.gauges.filter((g) => at.has(g.sensor)).map((g) => xy(state.index.sensors.get(g.sensor)));
    if (points.length > 1) rivers.append(svg("polyline", { class: "river", points: points.map((p) => p.join(",")).join(" ") }));
  }
  const crowded = placed.length > TAGS_ALL_UP_TO;
  const r = crowded ? 4 : 9;
  for (const s of placed) {
    const [x, y] = xy(s);
    const circle = svg("circle", { class: "marker", cx: x, cy: y, r, "data-sensor": s.id });
    markers.append(circle);
    state.markers.set(s.id, { circle, tag: null, tags, x: x + r + 3, y: y + 4, crowded });
    recolour(s);
  }
}

// One listener for every marker: its trend on a click, its name and state on hovering.
$("#map").addEventListener("click", (e) => {
  const sensor = state.index.sensors.get(e.target.dataset?.sensor);
  if (sensor) showTrend(sensor);
});
$("#map").addEventListener("mouseover", (e) => {
  const sensor = state.index.sensors.get(e.target.dataset?.sensor);
  if (!sensor) return;
  const look = sensorLook(sensor), stuck = sensor.status === "stuck";
  const title = e.target.querySelector("title") || e.target.appendChild(svg("title"));
  title.textContent = `${sensor.name || sensor.id} — ${look.text}${stuck ? " · " + tr("stuck") : ""}`;
});

function recolour(sensor) {
  const m = state.markers.get(sensor.id);
  if (!m) return;
  const look = sensorLook(sensor);
  const stuck = sensor.status === "stuck";
  if (m.circle.getAttribute("fill") !== look.colour) m.circle.setAttribute("fill", look.colour);
  if (m.circle.dataset.text !== look.text) m.circle.dataset.text = look.text;
  if (m.circle.classList.contains("stuck") !== stuck) m.circle.classList.toggle("stuck", stuck);
  const tag = !m.crowded || look.attention || stuck ? look.text + (stuck ? ` · ${tr("stuck")}` : "") : "";
  if (tag && !m.tag) m.tag = m.tags.appendChild(svg("text", { class: "tag", x: m.x, y: m.y }));
  if (m.tag && m.tag.textContent !== tag) m.tag.textContent = tag;
}

// What each colour on the map says, for the kinds this city has.
function renderLegend() {
  const kinds = new Set(state.sensors.map((s) => s.kind));
  const rows = [];
  if (kinds.has("air")) rows.push([tr("kind_air"), Object.entries(ISPU_COLOUR).map(([k, c]) => [c, category(state.lang, ISPU_LABEL[k])])]);
  if (kinds.has("flood")) rows.push([tr("kind_flood"), [4, 3, 2, 1].map((n) => [SIAGA_COLOUR[n], `Siaga ${n}`])]);
  if (kinds.has("traffic")) rows.push([tr("kind_traffic"), Object.entries(LOS_COLOUR).map(([k, c]) => [c, k])]);
  if (kinds.has("rain")) rows.push([tr("kind_rain"), Object.entries(RAIN_COLOUR).map(([k, c]) => [c, category(state.lang, k)])]);
  rows.push(["", [["#7a8794", tr("offline")], ["#9fb0c0", tr("no_data")]]]);
  $("#legend").replaceChildren(...rows.map(([name, items]) => el("div", {}, name ? `${name}: ` : "",
    ...items.map(([c, text]) => el("span", { class: "key" }, el("span", { class: "dot", style: `background:${c}` }), text)))));
}

function renderAlerts() {
  const list = $("#alert-list");
  const alerts = [...state.alerts].sort((a, b) =>
    (SEVERITY_ORDER[a.severity] - SEVERITY_ORDER[b.severity]) || a.opened_at.localeCompare(b.opened_at));
  $("#alert-count").textContent = `(${alerts.length})`;
  if (!alerts.length) { list.replaceChildren(el("li", { class: "none" }, tr("none"))); return; }
  const canAct = state.me.role === "operator";
  list.replaceChildren(...alerts.map((a) => {
    const sensor = state.index.sensors.get(a.sensor_id);
    const flash = a.severity === "critical" && a.state === "open";
    return el("li", { class: `alert ${a.severity} ${flash ? "flash" : ""}`, "data-alert": a.id, "data-state": a.state,
      "data-severity": a.severity },
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
  await reloadAlerts();
}

async function silence(alert) {
  const answer = await ask(`${tr("silence")} ${alert.sensor_id}`, [
    { name: "minutes", label: tr("minutes"), type: "number", value: "60", min: "1" },
    { name: "note", label: tr("note_required") }]);
  if (!answer) return;
  await api("/api/v1/silences", { method: "POST",
    body: JSON.stringify({ sensor: alert.sensor_id, minutes: Number(answer.minutes), note: answer.note }) });
  await reloadAlerts();
}

function table(headers, rows) {
  return el("table", {}, el("thead", {}, el("tr", {}, ...headers.map((h) => el("th", {}, tr(h))))),
    el("tbody", {}, ...rows.map((r) => el("tr", {}, ...r.map((c) => el("td", {}, c))))));
}
function swatch(colour, text) { return el("span", {}, el("span", { class: "badge", style: `background:${colour}` }, " "), " ", text); }
function fixed(v, digits = 1) { return v === null || v === undefined ? "–" : Number(v).toFixed(digits); }

// A table of the first PANEL_ROWS rows (the list comes worst first), saying how many are not shown.
function capped(rows, draw) {
  if (rows.length <= PANEL_ROWS) return [draw(rows)];
  return [draw(rows.slice(0, PANEL_ROWS)), el("p", { class: "more" }, tr("shown_of", { n: PANEL_ROWS, total: rows.length }))];
}

function renderPanel() {
  for (const b of document.querySelectorAll("[data-tab]")) b.setAttribute("aria-selected", b.dataset.tab === state.tab);
  const panel = $("#panel");
  if (state.tab === "air") {
    const stations = [...state.air].sort((a, b) => (b.ispu ?? -1) - (a.ispu ?? -1));
    const badge = (st) => st && st.category ? swatch(ISPU_COLOUR[st.category.colour], `${st.ispu} ${category(state.lang, st.category.label)}`) : "–";
    panel.replaceChildren(...capped(stations, (rows) => table(["station", "district", "ispu_now", "ispu_today", "critical_pollutant"],
      rows.map((s) => [s.name || s.sensor, s.district, badge(s), badge(state.index.today.get(s.sensor)), s.critical || "–"]))));
  } else if (state.tab === "flood") {
    panel.replaceChildren(...state.rivers.map((river) => el("div", { class: "river" },
      el("h3", {}, `${river.river || "–"} (${tr("upstream")})`),
      table(["gauge", "level", "siaga", "rate", "since"], river.gauges.map((g) => [
        g.name || g.sensor, g.level_cm === null ? "–" : `${fixed(g.level_cm, 0)} cm`,
        g.siaga ? swatch(SIAGA_COLOUR[g.siaga.siaga], category(state.lang, g.siaga.label)) : "–",
        fixed(g.rate_cm_per_h), g.since_s === null ? "–" : ago(g.since_s * 1000)])))));
  } else if (state.tab === "traffic") {
    const counters = [...state.traffic].sort((a, b) => (b.los || "").localeCompare(a.los || ""));
    panel.replaceChildren(...capped(counters, (rows) => table(["counter", "district", "flow", "speed", "ds", "los"], rows.map((c) => [
      c.name || c.sensor, c.district, fixed(c.flow_pcu_h, 0), fixed(c.speed_kmh), fixed(c.degree_of_saturation, 2),
      c.los ? swatch(LOS_COLOUR[c.los], `LOS ${c.los}`) : "–"]))));
  } else {
    const unwell = state.sensors.filter((s) => s.status !== "ok");
    panel.replaceChildren(...capped(unwell, (rows) => table(["sensor", "kind", "district", "status", "last_seen"], rows.map((s) => [
      s.name || s.id, tr(`kind_${s.kind}`), s.district, tr(s.status), localTime(s.last_seen, true)]))));
  }
}

// -- a sensor's trend, with its thresholds ------------------------------------------------------------

const METRIC_OF = { air: "pm25", flood: "water_level_cm", traffic: "avg_speed_kmh", rain: "rain_mm" };
const UNIT = { pm25: "µg/m³", water_level_cm: "cm", avg_speed_kmh: "km/h", rain_mm: "mm" };
async function showTrend(sensor, days = 1) {
  const metric = METRIC_OF[sensor.kind];
  const to = new Date(), from = new Date(to - days * 86400000);
  const [series, detail] = await Promise.all([
    api(`/api/v1/series?sensor=${encodeURIComponent(sensor.id)}&metric=${metric}`
      + `&from=${from.toISOString()}&to=${to.toISOString()}&step=auto&agg=avg`),
    api(`/api/v1/sensors/${encodeURIComponent(sensor.id)}`)]);
  // Raw readings answer "value", aggregated buckets "avg"; gaps are nulls, never drawn as values.
  const points = (series.series[0] || { points: [] }).points
    .map((p) => ({ ts: p.ts, avg: p.avg ?? p.value ?? null })).filter((p) => p.avg !== null);
  const dialog = $("#dialog");
  const chart = svg("svg", { class: "chart", viewBox: "0 0 800 300", preserveAspectRatio: "none" });
  // Where the categories begin (ISPU bands for PM2.5, a gauge's Siaga levels), from the API.
  const thresholds = (detail.thresholds || {})[metric] || [];
  const values = [...points.map((p) => p.avg), ...thresholds.map((line) => line.value)];
  if (values.length) {
    const lo = Math.min(...values), hi = Math.max(...values, lo + 1e-6);
    const x = (i) => 40 + (i / Math.max(points.length - 1, 1)) * 740, y = (v) => 280 - ((v - lo) / (hi - lo)) * 260;
    chart.append(svg("polyline", { class: "line", points: points.map((p, i) => `${x(i)},${y(p.avg)}`).join(" ") }));
    for (const line of thresholds) {
      const colour = line.colour.startsWith("siaga") ? SIAGA_COLOUR[line.colour.slice(5)] : ISPU_COLOUR[line.colour];
      chart.append(svg("line", { class: "threshold", x1: 40, x2: 780, y1: y(line.value), y2: y(line.value),
        stroke: colour === "#111" ? "#aaa" : colour }),
        svg("text", { x: 44, y: y(line.value) - 4 }, `${category(state.lang, line.label)} · ${line.value} ${UNIT[metric]}`));
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
