"""The status page: one self-contained HTML document served at / on the admin listener only.

For people who would rather look than read `p2pcache status`. The page carries its CSS and
script inline and loads nothing else; its script reads /api/v1/status (the same JSON as the
command) every few seconds and fills the page in with `textContent` (never as HTML: peer URLs
and error details come from other machines). The Content-Security-Policy header forbids any
other source, so a mistake cannot quietly add an external asset.
"""

from __future__ import annotations

from aiohttp import web

# How often the page asks for a fresh status.
REFRESH_SECONDS = 5

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)

STATUS_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>p2pcache status</title>
<style>
  :root { --fg: #1d2125; --muted: #5f6b76; --line: #d8dee4; --ok: #1a7f37; --bad: #cf222e;
          --bg: #ffffff; --panel: #f6f8fa; }
  @media (prefers-color-scheme: dark) {
    :root { --fg: #e6edf3; --muted: #8d96a0; --line: #30363d; --ok: #3fb950; --bad: #f85149;
            --bg: #0d1117; --panel: #161b22; }
  }
  body { font: 15px/1.45 system-ui, sans-serif; color: var(--fg); background: var(--bg);
         margin: 0 auto; max-width: 72rem; padding: 1rem 1.5rem; }
  h1 { font-size: 1.4rem; margin: 0.2rem 0; }
  h2 { font-size: 1.05rem; margin: 0 0 0.5rem; }
  .sub { color: var(--muted); }
  .grid { display: grid; gap: 1rem; grid-template-columns: repeat(auto-fit, minmax(20rem, 1fr));
          margin-top: 1rem; }
  section { background: var(--panel); border: 1px solid var(--line); border-radius: 6px;
            padding: 0.8rem 1rem; }
  section.wide { grid-column: 1 / -1; }
  dl { display: grid; grid-template-columns: max-content 1fr; gap: 0.2rem 1rem; margin: 0; }
  dt { color: var(--muted); }
  dd { margin: 0; overflow-wrap: anywhere; }
  .big { font-size: 1.8rem; font-weight: 600; }
  .bar { height: 0.6rem; background: var(--line); border-radius: 3px; overflow: hidden; }
  .bar > div { height: 100%; background: var(--ok); width: 0; }
  table { border-collapse: collapse; width: 100%; }
  th, td { text-align: left; padding: 0.2rem 0.5rem 0.2rem 0; border-bottom: 1px solid
           var(--line); vertical-align: top; overflow-wrap: anywhere; }
  th { color: var(--muted); font-weight: normal; }
  .ok { color: var(--ok); } .bad { color: var(--bad); }
  #error { color: var(--bad); font-weight: 600; }
</style>
</head>
<body>
<h1>p2pcache on <span id="host">…</span></h1>
<div class="sub">version <span id="version">…</span>, up <span id="uptime">…</span>,
  updated <span id="updated">never</span> <span id="error"></span></div>
<div class="grid">
  <section>
    <h2>Identity</h2>
    <dl>
      <dt>node id</dt><dd id="node-id">…</dd>
      <dt>signing key</dt><dd id="signing-key">…</dd>
      <dt>data directory</dt><dd id="data-dir">…</dd>
    </dl>
  </section>
  <section>
    <h2>Endpoints</h2>
    <dl id="endpoints"></dl>
  </section>
  <section>
    <h2>Cache</h2>
    <div class="big" id="cache-size">…</div>
    <div class="sub">of <span id="cache-quota">…</span> (<span id="cache-used">…</span>),
      <span id="cache-items">…</span> items ready</div>
    <div class="bar"><div id="cache-bar"></div></div>
  </section>
  <section>
    <h2>Narinfo hit ratio</h2>
    <div class="big" id="hit-ratio">…</div>
    <div class="sub"><span id="hits">…</span> hits, <span id="misses">…</span> misses</div>
  </section>
  <section class="wide">
    <h2>Peers: <span id="peers-known">…</span> known, <span id="peers-banned">…</span> banned,
      <span id="dht-contacts">…</span> DHT contacts</h2>
    <table><thead><tr><th>peer</th><th>transfers</th><th>unavailable</th><th>offences</th>
      <th>state</th></tr></thead><tbody id="peers"></tbody></table>
  </section>
  <section class="wide">
    <h2>Recent transfers (<span id="transfer-counts">…</span>)</h2>
    <table><thead><tr><th>when</th><th>item</th><th>from</th><th>result</th></tr></thead>
      <tbody id="transfers"></tbody></table>
  </section>
  <section class="wide">
    <h2>Verification failures: <span id="failure-total">…</span></h2>
    <table><thead><tr><th>when</th><th>check</th><th>item</th><th>from</th><th>detail</th>
      </tr></thead><tbody id="failures"></tbody></table>
  </section>
</div>
<script>
"use strict";
const REFRESH_MS = __REFRESH_MS__;
const $ = (id) => document.getElementById(id);
function set(id, text) { $(id).textContent = text; }
function bytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return i === 0 ? n + " B" : n.toFixed(1) + " " + units[i];
}
function duration(s) {
  s = Math.floor(s);
  if (s < 60) return s + " s";
  if (s < 3600) return Math.floor(s / 60) + " min " + (s % 60) + " s";
  if (s < 86400) return Math.floor(s / 3600) + " h " + Math.floor(s % 3600 / 60) + " min";
  return Math.floor(s / 86400) + " d " + Math.floor(s % 86400 / 3600) + " h";
}
function ago(t) { return duration(Math.max(0, Date.now() / 1000 - t)) + " ago"; }
function percent(r) { return r === null ? "no requests yet" : (r * 100).toFixed(1) + " %"; }
function rows(id, items, cells, empty, columns) {
  const body = $(id);
  body.replaceChildren();
  if (items.length === 0) {
    const td = document.createElement("td");
    td.colSpan = columns;
    td.className = "sub";
    td.textContent = empty;
    body.appendChild(document.createElement("tr")).appendChild(td);
  }
  for (const item of items) {
    const tr = body.appendChild(document.createElement("tr"));
    for (const [text, cls] of cells(item)) {
      const td = tr.appendChild(document.createElement("td"));
      td.textContent = text;
      if (cls) td.className = cls;
    }
  }
}
function counts(c) {
  const parts = Object.entries(c).map(([k, v]) => v + " " + k);
  return parts.length ? parts.join(", ") : "none yet";
}
function show(s) {
  set("host", s.identity.host_name);
  set("version", s.version);
  set("uptime", duration(s.uptime_seconds));
  set("node-id", s.identity.node_id || "(no peer network)");
  set("signing-key", s.identity.signing_key);
  set("data-dir", s.identity.data_dir);
  const dl = $("endpoints");
  dl.replaceChildren();
  const names = {guix: "Guix substitutes", peer: "peer API", admin: "admin and /metrics",
                 metrics: "/metrics only", dht: "DHT",
                 lan: "advertised on LAN"};
  for (const [key, label] of Object.entries(names)) {
    if (!s.endpoints[key]) continue;
    dl.appendChild(document.createElement("dt")).textContent = label;
    dl.appendChild(document.createElement("dd")).textContent = s.endpoints[key];
  }
  set("cache-size", bytes(s.cache.size_bytes));
  set("cache-quota", bytes(s.cache.max_size_bytes));
  set("cache-used", s.cache.used_ratio === null ? "no quota"
      : (s.cache.used_ratio * 100).toFixed(1) + " % used");
  set("cache-items", s.cache.baked);
  $("cache-bar").style.width = Math.min(100, (s.cache.used_ratio || 0) * 100) + "%";
  set("hit-ratio", percent(s.narinfo.hit_ratio));
  set("hits", s.narinfo.hits);
  set("misses", s.narinfo.misses);
  const peers = s.peers || {known: 0, banned: 0, dht_contacts: 0, scored: []};
  set("peers-known", peers.known);
  set("peers-banned", peers.banned);
  set("dht-contacts", peers.dht_contacts);
  rows("peers", peers.scored, (p) => [[p.url], [p.successes], [p.unavailable],
       [p.misbehaved], p.banned ? ["banned", "bad"] : ["usable", "ok"]],
       "no peer has sent this node anything yet", 5);
  set("transfer-counts", counts(s.transfers.counts));
  rows("transfers", s.transfers.recent, (t) => [[ago(t.time)], [t.item], [t.source],
       t.outcome === "ok" ? [bytes(t.nar_bytes) + " in " + t.seconds.toFixed(2) + " s", "ok"]
                          : ["failed: " + t.detail, "bad"]],
       "no transfer yet", 4);
  const total = Object.values(s.verification_failures.counts).reduce((a, b) => a + b, 0);
  set("failure-total", total);
  $("failure-total").className = total ? "bad" : "ok";
  rows("failures", s.verification_failures.recent, (f) => [[ago(f.time)], [f.check, "bad"],
       [f.item || "–"], [f.source || "–"], [f.detail]],
       "none: every byte received so far matched what was signed", 5);
}
async function refresh() {
  try {
    const response = await fetch("api/v1/status", {cache: "no-store"});
    if (!response.ok) throw new Error("HTTP " + response.status);
    show(await response.json());
    set("updated", new Date().toLocaleTimeString());
    set("error", "");
  } catch (e) {
    set("error", "(cannot reach the node: " + e.message + ")");
  }
}
refresh();
setInterval(refresh, REFRESH_MS);
</script>
</body>
</html>
""".replace("__REFRESH_MS__", str(REFRESH_SECONDS * 1000))


async def status_page(request: web.Request) -> web.Response:
    """GET / (and /status) on the admin listener."""
    return web.Response(
        text=STATUS_PAGE,
        content_type="text/html",
        headers={
            "Content-Security-Policy": CONTENT_SECURITY_POLICY,
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
        },
    )
