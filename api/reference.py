"""A browsable reference of the API, served by the API itself (offline: no CDN, no script from
elsewhere): one page that reads /api/v1/openapi.json and lists every operation with its
parameters and answers."""

from __future__ import annotations

from aiohttp import web

from api.openapi import API

_PAGE = """<!doctype html>
<html lang="id">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>pantau API — rujukan / reference</title>
<style>
body { font: 16px/1.5 system-ui, sans-serif; margin: 2rem auto; max-width: 60rem; padding: 0 1rem; color: #1b1b1b; }
h1 { font-size: 1.6rem; } h2 { font-size: 1.2rem; margin-top: 2rem; border-bottom: 1px solid #ccc; }
.op { margin: 1rem 0; padding: .75rem 1rem; border-left: 4px solid #2b6cb0; background: #f5f8fb; }
.method { font-weight: 700; font-family: monospace; margin-right: .5rem; }
.path { font-family: monospace; } table { border-collapse: collapse; margin-top: .5rem; }
td, th { text-align: left; padding: .15rem .6rem .15rem 0; vertical-align: top; } code { font-size: .9em; }
</style>
</head>
<body>
<h1>pantau API</h1>
<p>Rujukan semua operasi, dibaca dari <a href="/api/v1/openapi.json">/api/v1/openapi.json</a>.
Every operation, read from the OpenAPI document.</p>
<div id="ops">Memuat… / Loading…</div>
<script>
fetch("/api/v1/openapi.json").then(r => r.json()).then(doc => {
  const byTag = {};
  for (const [path, ops] of Object.entries(doc.paths))
    for (const [method, op] of Object.entries(ops)) (byTag[op.tags[0]] ||= []).push([method, path, op]);
  const root = document.getElementById("ops");
  root.textContent = "";
  for (const [tag, ops] of Object.entries(byTag)) {
    const h = document.createElement("h2"); h.textContent = tag; root.append(h);
    for (const [method, path, op] of ops) {
      const box = document.createElement("div"); box.className = "op";
      const head = document.createElement("div");
      const m = document.createElement("span"); m.className = "method"; m.textContent = method.toUpperCase();
      const p = document.createElement("span"); p.className = "path"; p.textContent = path;
      head.append(m, p); box.append(head);
      const s = document.createElement("div"); s.textContent = op.summary; box.append(s);
      if (op.parameters.length) {
        const t = document.createElement("table");
        for (const prm of op.parameters) {
          const row = t.insertRow();
          const schema = prm.schema.enum ? prm.schema.enum.join(" | ") : (prm.schema.format || prm.schema.type || "");
          for (const text of [prm.name + (prm.required ? " *" : ""), prm.in, schema, prm.description]) {
            const c = row.insertCell(); c.textContent = text;
          }
        }
        box.append(t);
      }
      const body = op.requestBody && op.requestBody.content["application/json"].schema;
      if (body && body.properties) {
        const b = document.createElement("div");
        b.textContent = "JSON: " + Object.entries(body.properties)
          .map(([k, v]) => k + ((body.required || []).includes(k) ? " *" : "") + " (" + v.type + ")").join(", ");
        box.append(b);
      }
      root.append(box);
    }
  }
});
</script>
</body>
</html>
"""


@API.get("/api/v1/docs", summary="This reference, as a page (offline)", tag="meta", responses={200: "HTML"},
         media=("text/html",), roles=None)  # fmt: skip
async def reference(request: web.Request) -> web.Response:
    return web.Response(text=_PAGE, content_type="text/html")
