"""`nvctl ui`: a read-only web view of the controller.

A separate process that asks the controller through its API socket (the one the command
line uses, `controller.client.api.call`) and shows:

  /                        the tenants
  /tenant/NAME             the logical topology drawn (SVG), where each port runs, live
                           counters, the last `verify` of the tenant, a trace form
  /tenant/NAME/trace       `nvctl trace` from the browser: the same lines
  /tenant/NAME/topology.svg
  /metrics                 the controller's Prometheus text
  /api/...                 the JSON the page's script polls

Everything put into a page is escaped (Jinja2 autoescaping; the SVG's text by
matplotlib's SVG writer); the script writes with textContent only. The view changes
nothing on the controller: `verify` and `trace` only read.

It asks for a credential: a person signs in at /login with a token (or a credential
file's contents), kept in an HttpOnly cookie; a program sends `Authorization: Bearer
TOKEN`. Every request is made to the controller as that credential's holder, so a
tenant's credential sees its own tenant and nothing else, exactly as on the command
line. Without one: /login for a page, 401 for /api/... and /metrics.
"""
from __future__ import annotations

import io
import ipaddress
import json
import signal
import sys
import threading
import time
from urllib.parse import quote

from jinja2 import Environment
from markupsafe import Markup

from controller.client.api import ApiClientError, call as api_call
from controller.client.render import trace_lines, verify_lines

PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"
STATS_TIMEOUT = 5      # s: the page polls every second, a slow answer is shown as one
VERIFY_TIMEOUT = 300
CHANGES_SHOWN = 10  # verify-before-install results on a tenant page, newest first
TRACE_TIMEOUT = 120

_env = Environment(autoescape=True, trim_blocks=True, lstrip_blocks=True)

CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 0 1.5em 2em; color: #1d2330; }
header { display: flex; gap: 1.5em; align-items: baseline; border-bottom: 1px solid #ccd; margin-bottom: 1em; }
header h1 { font-size: 1.3em; margin: .6em 0; }
a { color: #1f5fbf; }
table { border-collapse: collapse; margin: .4em 0 1em; }
th, td { padding: .2em .7em; border-bottom: 1px solid #e3e6ee; text-align: left; vertical-align: top; }
th { background: #f3f5f9; font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
pre { background: #f6f7fa; border: 1px solid #e3e6ee; padding: .6em; overflow-x: auto; }
.ok { color: #167a3a; font-weight: 600; } .bad { color: #b3261e; font-weight: 600; }
.muted { color: #6b7385; } .error { color: #b3261e; }
section { margin-bottom: 1.5em; }
.grid { display: flex; flex-wrap: wrap; gap: 2em; }
#topology svg { max-width: 100%; height: auto; border: 1px solid #e3e6ee; }
form.inline { display: inline; }
input[name=packet] { width: 28em; font-family: monospace; }
"""

BASE = _env.from_string("""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>{{ title }} - nvctl</title>
<style>{{ css }}</style></head>
<body>
<header><h1><a href="/">nvctl</a>{% if tenant %} / <span id="tenant-name">{{ tenant }}</span>{% endif %}</h1>
<nav><a href="/">tenants</a> &middot; <a href="/metrics">metrics</a></nav></header>
{{ body }}
</body></html>
""")

TENANTS = _env.from_string("""
<section>
<h2>Tenants</h2>
{% if error %}<p class="error" id="error">controller unavailable: {{ error }}</p>
{% elif not rows %}<p class="muted">no tenants yet (nvctl tenant create -f FILE)</p>
{% else %}
<table id="tenants">
<thead><tr><th>name</th><th class="num">id</th><th class="num">switches</th><th class="num">ports</th>
<th class="num">revision</th></tr></thead>
<tbody>
{% for r in rows %}
<tr data-tenant="{{ r.name }}"><td class="name"><a href="/tenant/{{ r.name | urlencode }}">{{ r.name }}</a></td>
<td class="num">{{ r.tenant_id }}</td><td class="num">{{ r.switches }}</td><td class="num">{{ r.ports }}</td>
<td class="num">{{ r.revision }}</td></tr>
{% endfor %}
</tbody></table>
{% endif %}
</section>
""")

ERROR = _env.from_string("""<p class="error" id="error">{{ message }}</p>""")

TENANT = _env.from_string("""
<p class="muted" id="summary">revision {{ show.revision }} &middot; tenant id <span id="tenant-id">{{ show.ids.tenant_id }}</span>
&middot; VNIs {% for k, v in show.ids.vni.items() %}{{ k }}={{ v }}{% if not loop.last %}, {% endif %}{% endfor %}
&middot; MTU {% for k, v in show.mtu.items() %}{{ k }}={{ v }}{% if not loop.last %}, {% endif %}{% endfor %}</p>

<section id="topology"><h2>Topology</h2>
{{ svg }}
</section>

<div class="grid">
<section><h2>Ports</h2>
<table id="ports">
<thead><tr><th>port</th><th>switch</th><th>CA</th><th>MAC</th><th>host</th><th class="num">ofport</th>
<th>state</th><th>made by</th><th>namespace</th></tr></thead>
<tbody>
{% for p in show.ports %}
<tr data-port="{{ p.name }}"><td class="name">{{ p.name }}</td><td class="switch">{{ p.switch }}</td>
<td class="ip">{{ p.ip }}{% if p.ip6 %}<br>{{ p.ip6 }}{% endif %}</td><td class="mac">{{ p.mac }}</td>
<td class="host">{{ p.host }}</td><td class="num ofport">{{ p.ofport }}</td>
<td class="state {{ 'ok' if p.up else 'bad' }}">{{ 'up' if p.up else 'DOWN' }}</td>
<td class="made-by">{{ p.madeBy }}</td><td class="namespace">{{ p.namespace or '-' }}</td></tr>
{% endfor %}
</tbody></table>
</section>
<section><h2>Hosts</h2>
<table id="hosts">
<thead><tr><th>host</th><th class="num">flows</th><th>installed</th></tr></thead>
<tbody>
{% for h, s in show.hosts.items() %}
<tr data-host="{{ h }}"><td>{{ h }}</td><td class="num">{{ s.flows }}</td>
<td class="{{ 'ok' if s.installed else 'bad' }}">{{ 'yes' if s.installed else 'NO' }}{% if s.note %} ({{ s.note }}){% endif %}</td></tr>
{% endfor %}
</tbody></table>
</section>
</div>

<section id="counters"><h2>Counters</h2>
<p id="counters-status" class="muted">loading&hellip;</p>
<table id="port-counters">
<thead><tr><th>port</th><th>host</th><th class="num">sent pkts</th><th class="num">sent bytes</th>
<th class="num">recv pkts</th><th class="num">recv bytes</th><th class="num">pkts/s out</th>
<th class="num">pkts/s in</th><th class="num">dropped (port security / ACL / rate limit / BUM)</th></tr></thead>
<tbody>
{% for p in show.ports %}
<tr data-port="{{ p.name }}"><td>{{ p.name }}</td><td>{{ p.host }}</td>
<td class="num sent-packets">-</td><td class="num sent-bytes">-</td>
<td class="num received-packets">-</td><td class="num received-bytes">-</td>
<td class="num sent-rate">-</td><td class="num received-rate">-</td><td class="num dropped">-</td></tr>
{% endfor %}
</tbody></table>
<div class="grid">
<div><h3>ACLs</h3><table id="acl-counters"><thead><tr><th class="num">#</th><th>name</th><th>direction</th>
<th>action</th><th class="num">priority</th><th class="num">pkts</th><th class="num">bytes</th></tr></thead><tbody></tbody></table></div>
<div><h3>Load balancers</h3><table id="lb-counters"><thead><tr><th>load balancer</th><th>backend</th>
<th>health</th><th class="num">connections</th><th class="num">reply pkts</th><th class="num">reply bytes</th></tr></thead><tbody></tbody></table></div>
<div><h3>NAT</h3><table id="nat-counters"><thead><tr><th>kind</th><th>name</th><th>external IP</th>
<th>direction</th><th class="num">pkts</th><th class="num">bytes</th></tr></thead><tbody></tbody></table></div>
</div>
</section>

<section id="verify"><h2>Verify</h2>
{% if verify %}
<p id="verify-status"><span class="{{ 'ok' if verify.ok else 'bad' }}" id="verify-verdict">{{ verify.verdict }}</span>
<span class="muted">at <span id="verify-time">{{ verify.when }}</span></span></p>
<pre id="verify-output">{{ verify.text }}</pre>
{% else %}
<p id="verify-status" class="muted">not run yet</p>
{% endif %}
<form method="post" action="/tenant/{{ name | urlencode }}/verify"><button id="verify-run" type="submit">run verify again</button></form>
<h3>Before install</h3>
{% if changes is none %}
<p id="verify-changes" class="muted">the controller does not prove changes before it installs them</p>
{% elif not changes %}
<p id="verify-changes" class="muted">no change of this tenant proved since the controller started</p>
{% else %}
<table id="verify-changes"><thead><tr><th class="num">#</th><th>when</th><th>change</th><th>result</th>
<th class="num">ms</th><th>violations</th></tr></thead><tbody>
{% for e in changes %}<tr><td class="num">{{ e.seq }}</td><td>{{ e.when }}</td><td>{{ e.action }}</td>
<td class="{{ 'bad' if e.result == 'refused' else 'ok' }}">{{ e.result }}</td><td class="num">{{ e.ms }}</td>
<td>{% for v in e.violations %}{{ v.kind }}: {{ v.message }}<br>{% endfor %}</td></tr>{% endfor %}
</tbody></table>
{% endif %}
</section>

<section id="trace"><h2>Trace a packet</h2>
<form id="trace-form" method="get" action="/tenant/{{ name | urlencode }}/trace">
<label>from port <select name="port" id="trace-port">
{% for p in show.ports %}<option value="{{ p.name }}"{% if p.name == trace.port %} selected{% endif %}>{{ p.name }} ({{ p.ip }}, {{ p.host }})</option>{% endfor %}
</select></label>
<label>packet <input name="packet" id="trace-packet" value="{{ trace.packet }}" placeholder="icmp,nw_dst=10.0.0.12"></label>
<label><input type="checkbox" name="real" value="1" id="trace-real"{% if trace.real %} checked{% endif %}> also ask OVS (ofproto/trace)</label>
<button type="submit" id="trace-run">trace</button>
</form>
<p class="muted">ip|icmp|tcp|udp|arp (or ipv6, icmp6, tcp6, udp6) plus fields: nw_dst, nw_src, tp_src, tp_dst,
nw_ttl, icmp_type, dl_dst, arp_tpa ... e.g. <code>tcp,nw_dst=10.0.1.10,tp_dst=5432</code></p>
{% if trace.error %}<p class="error" id="trace-error">{{ trace.error }}</p>{% endif %}
{% if trace.lines %}<pre id="trace-output">{{ trace.lines | join('\n') }}</pre>{% endif %}
</section>

<script>
(function () {
  "use strict";
  var url = {{ stats_url | tojson }};
  var last = null;
  function cell(tr, text, cls) {
    var td = document.createElement("td");
    td.textContent = String(text);
    if (cls) td.className = cls;
    tr.appendChild(td);
  }
  function fill(tableId, rows) {
    var body = document.querySelector("#" + tableId + " tbody");
    while (body.firstChild) body.removeChild(body.firstChild);
    if (!rows.length) {
      var tr = document.createElement("tr"), td = document.createElement("td");
      td.textContent = "none";
      td.className = "muted";
      td.colSpan = document.querySelectorAll("#" + tableId + " thead th").length;
      tr.appendChild(td);
      body.appendChild(tr);
    }
    rows.forEach(function (r) {
      var tr = document.createElement("tr");
      r.forEach(function (c) { cell(tr, c[0], c[1]); });
      body.appendChild(tr);
    });
  }
  function set(tr, cls, text) { var td = tr.querySelector("td." + cls); if (td) td.textContent = String(text); }
  function rate(now, before, dt) { return before == null || dt <= 0 ? "-" : ((now - before) / dt).toFixed(1); }
  function show(s) {
    var seen = {};
    s.ports.forEach(function (p) {
      var tr = null;
      document.querySelectorAll("#port-counters tbody tr").forEach(function (row) {
        if (row.getAttribute("data-port") === p.name) tr = row;
      });
      if (!tr) return;
      var prev = last && last.byPort[p.name], dt = last ? s.time - last.time : 0;
      set(tr, "sent-packets", p.sent.packets); set(tr, "sent-bytes", p.sent.bytes);
      set(tr, "received-packets", p.received.packets); set(tr, "received-bytes", p.received.bytes);
      set(tr, "sent-rate", rate(p.sent.packets, prev && prev.sent.packets, dt));
      set(tr, "received-rate", rate(p.received.packets, prev && prev.received.packets, dt));
      var d = p.dropped || {};
      set(tr, "dropped", ["portSecurity", "acl", "rateLimit", "bum"].map(function (k) {
        return d[k] ? d[k].packets : 0; }).join(" / "));
      seen[p.name] = p;
    });
    fill("acl-counters", (s.acls || []).map(function (a) {
      return [[a.index, "num"], [a.name || "-"], [a.direction], [a.action], [a.priority, "num"],
              [a.packets, "num"], [a.bytes, "num"]]; }));
    var lbs = [];
    (s.loadBalancers || []).forEach(function (lb) {
      (lb.backends || []).forEach(function (b) {
        lbs.push([[lb.name + " " + lb.vip + ":" + lb.port + "/" + lb.protocol], [b.name + " " + b.ip],
                  [b.health ? b.health.state : "-"], [b.connections, "num"], [b.replyPackets, "num"],
                  [b.replyBytes, "num"]]); }); });
    fill("lb-counters", lbs);
    fill("nat-counters", (s.nat || []).map(function (n) {
      return [[n.kind], [n.name], [n.externalIp], [n.direction], [n.packets, "num"], [n.bytes, "num"]]; }));
    last = {time: s.time, byPort: seen};
    var st = document.getElementById("counters-status");
    st.className = "muted";
    var t = new Date(s.time * 1000), two = function (n) { return String(n).padStart(2, "0"); };
    st.textContent = "as of " + two(t.getHours()) + ":" + two(t.getMinutes()) + ":" + two(t.getSeconds()) +
      " (every second)";
  }
  function poll() {
    fetch(url, {cache: "no-store"}).then(function (r) { return r.json(); }).then(function (j) {
      if (j.ok) { show(j.stats); } else {
        var st = document.getElementById("counters-status");
        st.className = "error";
        st.textContent = "counters unavailable: " + j.error;
      }
    }).catch(function (e) {
      var st = document.getElementById("counters-status");
      st.className = "error";
      st.textContent = "counters unavailable: the ui does not answer (" + e + ")";
    }).finally(function () { setTimeout(poll, 1000); });
  }
  poll();
})();
</script>
""")


LOGIN = _env.from_string("""
<section>
<h2>Sign in</h2>
<p>Paste a token (nvctl1....) or the whole credential file (<code>nvctl credential issue NAME --role ROLE</code>).
What you see is what that credential may see.</p>
{% if error %}<p class="error" id="error">{{ error }}</p>{% endif %}
<form method="post" action="/login">
<textarea name="token" id="token" rows="4" cols="80" autocomplete="off"></textarea><br>
<button type="submit" id="sign-in">sign in</button>
</form>
</section>
""")
COOKIE = "nvctl_token"


def status_of_error(e: Exception) -> int:
    """The HTTP status for the controller's refusal: not signed in, not allowed, not
    there, or the controller itself away."""
    text = str(e)
    if "authentication failed" in text or "refused the credential" in text:
        return 401
    if "permission denied" in text:
        return 403
    return 404 if text.startswith("no tenant") else 502


def token_of(text: str) -> str:
    """A token pasted as is, or taken from a pasted credential file."""
    text = (text or "").strip()
    if text.startswith("{"):
        try:
            return str(json.loads(text).get("token") or "")
        except (ValueError, AttributeError):
            return ""
    return text


def page(title: str, body: str, tenant: str | None = None) -> str:
    return BASE.render(title=title, body=Markup(body), tenant=tenant, css=Markup(CSS))


def tenants_html(rows: list[dict] | None, error: str | None = None) -> str:
    return page("tenants", TENANTS.render(rows=rows or [], error=error))


def error_html(title: str, message: str) -> str:
    return page(title, ERROR.render(message=message))


def tenant_html(name: str, show: dict, svg: str, verify: dict | None, trace: dict | None = None,
                changes: list | None = None) -> str:
    """The tenant's page. `verify`: {"ok", "verdict", "when", "text"} or None; `trace`:
    {"port", "packet", "real", "lines", "error"} or None; `changes`: the tenant's newest
    verify-before-install results (verify.changes), None when the controller does not prove them."""
    trace = {"port": "", "packet": "", "real": False, "lines": None, "error": None, **(trace or {})}
    if changes is not None:
        changes = [{**e, "when": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e["time"]))}
                   for e in reversed(changes[-CHANGES_SHOWN:])]
    body = TENANT.render(name=name, show=show, svg=Markup(svg), verify=verify, trace=trace, changes=changes,
                         stats_url=f"/api/tenant/{quote(name, safe='')}/stats")
    return page(name, body, tenant=name)


# the drawing ---------------------------------------------------------------------------

HOST_COLORS = ["#8ecae6", "#ffb703", "#90be6d", "#f28482", "#cdb4db", "#84a59d", "#f6bd60", "#a3c4f3"]


def topology_graph(spec: dict, ports: list[dict]):
    """The tenant's logical topology as a networkx graph: switches, routers, ports (with
    CA and host), load balancers; edges port-switch, router-switch (the router port's
    address) and load balancer-backend (the VIP's switch is in the balancer's label)."""
    import networkx as nx
    where = {p["name"]: p for p in ports}
    g = nx.Graph()
    for s in spec.get("switches", []):
        g.add_node(("switch", s["name"]), kind="switch", label=f"{s['name']}\n{s['cidr']}")
    for r in spec.get("routers", []):
        ext = r.get("external", {}).get("ip")
        g.add_node(("router", r["name"]), kind="router",
                   label=r["name"] + (f"\nexternal\n{ext}" if ext else ""))
        for rp in r.get("ports", []):
            if ("switch", rp["switch"]) in g:
                g.add_edge(("router", r["name"]), ("switch", rp["switch"]), label=rp["ip"])
    for p in spec.get("ports", []):
        host = where.get(p["name"], p).get("host", p.get("host", "?"))
        g.add_node(("port", p["name"]), kind="port", host=host, switch=p["switch"],
                   label=f"{p['name']}\n{p['ip']}\n{host}")
        if ("switch", p["switch"]) in g:
            g.add_edge(("port", p["name"]), ("switch", p["switch"]))
    cidrs = {s["name"]: ipaddress.ip_network(s["cidr"]) for s in spec.get("switches", [])}
    for lb in spec.get("loadBalancers", []):
        n = ("lb", lb["name"])
        g.add_node(n, kind="lb", label=f"{lb['name']}\n{lb['vip']}:{lb['port']}/{lb['protocol']}")
        vip = ipaddress.ip_address(lb["vip"])
        on = [sw for sw, net in cidrs.items() if vip in net]
        if on:
            g.nodes[n]["label"] += f"\non {on[0]}"
        for b in lb.get("backends", []):
            port, _, tport = b.rpartition(":")
            if ("port", port) in g:
                g.add_edge(n, ("port", port), label=f":{tport}", backend=True)
    return g


def _layout(g) -> dict:
    """Rows: routers on top, switches, ports under their switch, load balancers below."""
    ports = sorted((n for n, d in g.nodes(data=True) if d["kind"] == "port"),
                   key=lambda n: (g.nodes[n]["switch"], n[1]))
    pos = {n: (float(i), 1.0) for i, n in enumerate(ports)}
    switches = [n for n, d in g.nodes(data=True) if d["kind"] == "switch"]
    for i, s in enumerate(switches):
        xs = [pos[p][0] for p in g.neighbors(s) if p in pos]
        pos[s] = (sum(xs) / len(xs) if xs else float(len(ports) + i), 2.0)
    for kind, y in (("router", 3.0), ("lb", 0.0)):
        taken: list[float] = []
        for i, n in enumerate(n for n, d in g.nodes(data=True) if d["kind"] == kind):
            xs = [pos[m][0] for m in g.neighbors(n) if m in pos]
            x = sum(xs) / len(xs) if xs else float(i)
            while any(abs(x - t) < 0.9 for t in taken):  # two in one row never on top of each other
                x += 1.0
            taken.append(x)
            pos[n] = (x, y)
    return pos


def topology_svg(spec: dict, ports: list[dict]) -> str:
    """The drawing, as an SVG document whose labels stay text (names, CAs and hosts are
    searchable and escaped by matplotlib's SVG writer)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import networkx as nx
    from matplotlib.lines import Line2D

    g = topology_graph(spec, ports)
    pos = _layout(g)
    hosts = sorted({d["host"] for _, d in g.nodes(data=True) if d["kind"] == "port"})
    color = {h: HOST_COLORS[i % len(HOST_COLORS)] for i, h in enumerate(hosts)}
    n_ports = sum(1 for _, d in g.nodes(data=True) if d["kind"] == "port")
    width = max(6.0, 1.5 * max(n_ports, 1) + 1.5)
    rows = 2 + any(d["kind"] == "router" for _, d in g.nodes(data=True)) + \
        any(d["kind"] == "lb" for _, d in g.nodes(data=True))
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "nvctl", "font.size": 9}):
        fig, ax = plt.subplots(figsize=(width, 1.5 * rows + 0.8))
        try:
            plain = [(u, v) for u, v, d in g.edges(data=True) if not d.get("backend")]
            backend = [(u, v) for u, v, d in g.edges(data=True) if d.get("backend")]
            nx.draw_networkx_edges(g, pos, edgelist=plain, ax=ax, edge_color="#8a93a6", width=1.4)
            nx.draw_networkx_edges(g, pos, edgelist=backend, ax=ax, edge_color="#c77d00", width=1.2,
                                   style="dashed")
            styles = {"switch": ("s", "#dfe7fd", 2600), "router": ("D", "#ffd6a5", 3400),
                      "lb": ("h", "#fde2e4", 3600)}
            for kind, (shape, fill, size) in styles.items():
                nodes = [n for n, d in g.nodes(data=True) if d["kind"] == kind]
                if nodes:
                    nx.draw_networkx_nodes(g, pos, nodelist=nodes, node_shape=shape, node_color=fill,
                                           node_size=size, edgecolors="#4a5368", ax=ax)
            port_nodes = [n for n, d in g.nodes(data=True) if d["kind"] == "port"]
            if port_nodes:
                nx.draw_networkx_nodes(g, pos, nodelist=port_nodes, node_shape="o", node_size=2200,
                                       node_color=[color[g.nodes[n]["host"]] for n in port_nodes],
                                       edgecolors="#4a5368", ax=ax)
            nx.draw_networkx_labels(g, pos, labels={n: d["label"] for n, d in g.nodes(data=True)},
                                    font_size=8, ax=ax)
            nx.draw_networkx_edge_labels(g, pos, edge_labels={(u, v): d["label"] for u, v, d in
                                                              g.edges(data=True) if d.get("label")},
                                         font_size=7, font_color="#4a5368", ax=ax, rotate=False)
            if hosts:
                ax.legend(handles=[Line2D([], [], marker="o", linestyle="", markersize=9,
                                          markerfacecolor=color[h], markeredgecolor="#4a5368", label=h)
                                   for h in hosts], title="port runs on", loc="upper left",
                          bbox_to_anchor=(1.0, 1.0), frameon=False, fontsize=8)
            ax.margins(x=0.12, y=0.18)
            ax.set_axis_off()
            fig.tight_layout()
            buf = io.StringIO()
            fig.savefig(buf, format="svg", metadata={"Date": None})
        finally:
            plt.close(fig)
    svg = buf.getvalue()
    return svg[svg.index("<svg"):]  # inline in HTML: no XML prolog or DOCTYPE


# the server ---------------------------------------------------------------------------

class VerifyCache:
    """The last verify result per tenant, with when it ran (in this process only), for
    the tenant as it was then: a result is shown only for the same tenant id and
    revision (a tenant changed, or deleted and made again under its name, is verified
    afresh)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.results: dict[str, dict] = {}

    def get(self, name: str, version: tuple | None = None) -> dict | None:
        with self.lock:
            e = self.results.get(name)
        if e is not None and version is not None and e.get("version") != version:
            return None
        return e

    def run(self, call, name: str) -> dict:
        t = time.time()
        version = None
        try:
            show = call("tenant.show", name=name, timeout=30)
            version = (show["ids"]["tenant_id"], show["revision"])
        except (ApiClientError, OSError, KeyError, TypeError):
            pass  # verify says what is wrong
        try:
            r = call("verify", tenant=name, timeout=VERIFY_TIMEOUT)
            entry = {"ok": bool(r["ok"]), "time": t, "text": "\n".join(verify_lines(r)),
                     "verdict": "OK" if r["ok"] else ("could not verify" if r["errors"] else "VIOLATION"),
                     "result": r}
        except (ApiClientError, OSError) as e:
            entry = {"ok": False, "time": t, "text": str(e), "verdict": "could not verify", "result": None}
        entry["when"] = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))
        entry["version"] = version
        with self.lock:
            self.results[name] = entry
        return entry


def create_app(api_path, call=None, login: bool = True):
    """The Flask application. `call(op, **args)` reaches the controller (default: the API
    at api_path, a socket's path or a credential's Remote, as the signed-in person)."""
    from flask import Flask, Response, g, jsonify, redirect, request

    if call is None:
        def call(op, timeout=600, **args):
            return api_call(api_path, op, timeout=timeout, _as=g.get("token"), **args)
    app = Flask("nvctl-ui")

    @app.before_request
    def who():
        auth = request.headers.get("Authorization", "")
        g.token = auth[7:].strip() if auth.lower().startswith("bearer ") else request.cookies.get(COOKIE)
        if not login or g.token or request.path in ("/login", "/logout"):
            return None
        if request.path.startswith("/api/") or request.path == "/metrics":
            return jsonify({"ok": False, "error": "sign in: Authorization: Bearer TOKEN"}), 401
        return redirect("/login", code=303)

    @app.route("/login", methods=["GET", "POST"])
    def sign_in():
        if request.method == "GET":
            return html(page("sign in", LOGIN.render(error=None)))
        token = token_of(request.form.get("token", ""))
        try:
            me = api_call(api_path, "auth.whoami", timeout=30, _as=token or "-")
        except (ApiClientError, OSError) as e:
            return html(page("sign in", LOGIN.render(error=f"not signed in: {e}")), 401)
        resp = redirect("/", code=303)
        resp.set_cookie(COOKIE, token, httponly=True, samesite="Strict")
        resp.headers["X-Nvctl-Principal"] = f"{me['name']} ({me['role']})"
        return resp

    @app.get("/logout")
    def sign_out():
        resp = redirect("/login", code=303)
        resp.delete_cookie(COOKIE)
        return resp
    app.json.sort_keys = False
    verifies = VerifyCache()
    drawings: dict[str, str] = {}  # the spec and placement drawn -> SVG (drawing takes ~0.1 s)
    drawings_lock = threading.Lock()

    def drawing(show: dict) -> str:
        key = json.dumps([show["spec"]["spec"], [(p["name"], p["host"]) for p in show["ports"]]], sort_keys=True)
        with drawings_lock:
            svg = drawings.get(key)
        if svg is None:
            svg = topology_svg(show["spec"]["spec"], show["ports"])
            with drawings_lock:
                if len(drawings) >= 64:
                    drawings.clear()
                drawings[key] = svg
        return svg

    def html(text: str, status: int = 200):
        return Response(text, status=status, mimetype="text/html")

    def tenant_or_error(name: str):
        try:
            return call("tenant.show", name=name, timeout=30), None
        except ApiClientError as e:
            return None, html(error_html(name, str(e)), status_of_error(e))
        except OSError as e:
            return None, html(error_html(name, f"controller unavailable: {e}"), 502)

    @app.get("/")
    def index():
        try:
            return html(tenants_html(call("tenant.list", timeout=30)))
        except (ApiClientError, OSError) as e:
            return html(tenants_html(None, str(e)), 502)

    def render_tenant(name: str, trace: dict | None = None):
        show, err = tenant_or_error(name)
        if err is not None:
            return err
        try:
            svg = drawing(show)
        except Exception as e:  # the rest of the page is still worth having
            svg = str(Markup("<p class='error'>drawing failed: {}</p>").format(f"{type(e).__name__}: {e}"))
        v = verifies.get(name, (show["ids"]["tenant_id"], show["revision"])) or verifies.run(call, name)
        return html(tenant_html(name, show, svg, v, trace, proved_changes(name)))

    def proved_changes(name: str) -> list | None:
        try:
            r = call("verify.changes", tenant=name, timeout=30)
        except (ApiClientError, OSError):
            return None
        return r["changes"] if r["enabled"] else None

    @app.get("/tenant/<name>")
    def tenant(name):
        return render_tenant(name)

    @app.post("/tenant/<name>/verify")
    def tenant_verify(name):
        verifies.run(call, name)
        return redirect(f"/tenant/{quote(name, safe='')}#verify", code=303)

    def run_trace(name: str) -> tuple[dict, dict | None]:
        port, packet = request.args.get("port", ""), request.args.get("packet", "")
        real = request.args.get("real") in ("1", "on", "true")
        form = {"port": port, "packet": packet, "real": real, "lines": None, "error": None}
        if not port or not packet:
            form["error"] = "give a port and a packet"
            return form, None
        try:
            r = call("trace", tenant=name, port=port, packet=packet, real=real, timeout=TRACE_TIMEOUT)
        except (ApiClientError, OSError) as e:
            form["error"] = f"trace failed: {e}"
            return form, None
        form["lines"] = trace_lines(r)
        return form, r

    @app.get("/tenant/<name>/trace")
    def tenant_trace(name):
        form, _ = run_trace(name)
        return render_tenant(name, form)

    @app.get("/tenant/<name>/topology.svg")
    def tenant_svg(name):
        show, err = tenant_or_error(name)
        if err is not None:
            return err
        return Response(drawing(show), mimetype="image/svg+xml")

    @app.get("/metrics")
    def metrics():
        try:
            text = call("metrics", timeout=30)["text"]
        except (ApiClientError, OSError, KeyError, TypeError) as e:
            return Response(f"metrics unavailable: {e}\n", status=503, mimetype="text/plain")
        return Response(text, content_type=PROMETHEUS_TEXT)

    def api_answer(fn, *args, **kw):
        try:
            return jsonify({"ok": True, **fn(*args, **kw)})
        except (ApiClientError, OSError) as e:
            return jsonify({"ok": False, "error": str(e)}), status_of_error(e)

    @app.get("/api/tenants")
    def api_tenants():
        return api_answer(lambda: {"tenants": call("tenant.list", timeout=30)})

    @app.get("/api/tenant/<name>")
    def api_tenant(name):
        return api_answer(lambda: {"tenant": call("tenant.show", name=name, timeout=30)})

    @app.get("/api/tenant/<name>/stats")
    def api_stats(name):
        """The counters the page polls; {"ok": false, "error"} when the controller has none."""
        return api_answer(lambda: {"stats": call("stats", tenant=name, timeout=STATS_TIMEOUT)})

    @app.get("/api/tenant/<name>/verify")
    def api_verify(name):
        try:  # the cache is shared: first, may this caller see the tenant at all
            call("tenant.show", name=name, timeout=30)
        except (ApiClientError, OSError) as e:
            return jsonify({"ok": False, "error": str(e)}), 404 if str(e).startswith("no tenant") else 502
        v = verifies.get(name)
        return jsonify({"ok": True, "verify": None if v is None else
                        {k: v[k] for k in ("ok", "verdict", "time", "when", "text")},
                        "before_install": proved_changes(name)})

    @app.get("/api/tenant/<name>/trace")
    def api_trace(name):
        form, r = run_trace(name)
        if r is None:
            return jsonify({"ok": False, "error": form["error"]}), 400
        return jsonify({"ok": True, "lines": form["lines"], "trace": r})

    return app


def serve(api_path: str, listen: str = "127.0.0.1", port: int = 8080, out=sys.stdout) -> int:
    """Serve until SIGINT or SIGTERM; 0 after a clean stop."""
    from werkzeug.serving import make_server
    app = create_app(api_path)
    try:
        srv = make_server(listen, port, app, threaded=True)
    except OSError as e:
        print(f"nvctl ui: cannot listen on {listen}:{port}: {e.strerror or e}", file=sys.stderr)
        return 1
    stopping = threading.Event()

    def stop(signum, _frame):
        if not stopping.is_set():
            stopping.set()
            threading.Thread(target=srv.shutdown, daemon=True).start()  # not from serve_forever's thread

    old = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    host = f"[{listen}]" if ":" in listen else listen
    print(f"nvctl ui: http://{host}:{srv.server_port}/ (controller API {api_path}); Ctrl-C stops it",
          file=out, flush=True)
    try:
        srv.serve_forever()
    finally:
        srv.server_close()
        for s, h in old.items():
            signal.signal(s, h)
    print("nvctl ui: stopped", file=out, flush=True)
    return 0
