"""The web view's pages, escaping and drawing, without a controller: a stand-in `call`
that answers from a tenant document (no root, no OVS)."""
from __future__ import annotations

import copy
import html
import io
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
from contextlib import redirect_stdout

import pytest

from controller.client import cli
from controller.client import ui
from controller.client.api import ApiClientError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

HOSTILE = "<script>alert('x')</script>&"

SPEC = {
    "switches": [{"name": "web", "cidr": "10.0.0.0/24"}, {"name": "db", "cidr": "10.0.1.0/24"}],
    "ports": [
        {"name": "web1", "switch": "web", "ip": "10.0.0.11", "mac": "02:aa:00:00:00:11", "host": "hv1"},
        {"name": "web2", "switch": "web", "ip": "10.0.0.12", "mac": "02:aa:00:00:00:12", "host": "hv2"},
        {"name": "db1", "switch": "db", "ip": "10.0.1.10", "mac": "02:00:0a:00:01:0a", "host": "hv2"},
    ],
    "routers": [{"name": "r1", "ports": [{"switch": "web", "ip": "10.0.0.1", "mac": "02:00:00:00:01:01"},
                                         {"switch": "db", "ip": "10.0.1.1", "mac": "02:00:00:00:01:02"}]}],
    "loadBalancers": [{"name": "web-lb", "vip": "10.0.0.100", "protocol": "tcp", "port": 80,
                       "backends": ["web2:8080", "db1:8080"]}],
}


def show_of(name: str, spec: dict = SPEC) -> dict:
    """What tenant.show answers for a tenant with this spec."""
    return {"spec": {"apiVersion": "nvctl/v1", "kind": "Tenant", "metadata": {"name": name}, "spec": spec},
            "revision": 3, "ids": {"tenant_id": 7, "vni": {s["name"]: 1000 + i for i, s in enumerate(spec["switches"])}},
            "mtu": {s["name"]: 1550 for s in spec["switches"]},
            "ports": [{**p, "ofport": 10 + i, "up": True, "madeBy": "yaml", "namespace": f"nvx-{name}.{p['name']}"}
                      for i, p in enumerate(spec["ports"])],
            "hosts": {"hv1": {"flows": 30, "installed": True, "connected": True},
                      "hv2": {"flows": 28, "installed": False, "connected": True}}}


def hostile_spec() -> dict:
    s = copy.deepcopy(SPEC)
    s["ports"][0]["name"] = HOSTILE
    s["ports"][0]["host"] = "<hv1>"
    s["switches"][0]["name"] = "w<e>b"
    for x in s["ports"][:2] + s["routers"][0]["ports"][:1]:
        x["switch"] = "w<e>b"
    return s


TRACE = {
    "packet": "icmp,in_port=10,dl_src=02:aa:00:00:00:11,nw_dst=10.0.0.12", "from": "t/web1", "host": "hv1",
    "hops": [
        {"host": "hv1", "in_port": "t/web1",
         "tables": [{"table": "classify", "priority": 100, "layer": "classify", "tenant": "t", "rule": "port web1"},
                    {"table": "(resubmit)"},
                    {"table": "acl", "priority": 0, "layer": "acl", "tenant": "", "rule": "default <allow>"}],
         "outputs": ["vxlan to hv2 (192.0.2.12) vni 1000"],
         "real": {"outputs": ["vxlan to hv2 (192.0.2.12) vni 1000"], "agree": True}},
        {"host": "hv2", "in_port": "vxlan from hv1", "tables": [{"table": "delivery"}], "outputs": [],
         "dropped_by": {"layer": "delivery", "rule": "no flow"},
         "real": {"outputs": [], "agree": None, "note": "datapath hash"}},
    ],
    "delivered": [], "agree": None,
}

VERIFY = {"ok": True, "text": "verify: OK: 0 violation(s); checked 3 ports\n  detail <x>", "interfaces": [],
          "errors": [], "flows_read": 58, "read_seconds": 0.01}


class Controller:
    """A stand-in for the controller's API: tenant.list/show, verify, trace; stats and
    metrics only when given (else the API's own answer to an unknown operation)."""

    def __init__(self, shows: dict, stats=None, metrics=None):
        self.shows, self.stats, self.metrics = shows, stats, metrics
        self.calls: list[tuple] = []

    def __call__(self, op, timeout=600, **args):
        self.calls.append((op, args))
        if op == "tenant.list":
            return [{"name": n, "revision": s["revision"], "switches": len(s["spec"]["spec"]["switches"]),
                     "ports": len(s["ports"]), "tenant_id": s["ids"]["tenant_id"]} for n, s in self.shows.items()]
        if op == "tenant.show":
            if args["name"] not in self.shows:
                raise ApiClientError(f"no tenant {args['name']!r}")
            return self.shows[args["name"]]
        if op == "verify":
            return VERIFY
        if op == "trace":
            return {**TRACE, "from": f"{args['tenant']}/{args['port']}"}
        if op == "stats" and self.stats is not None:
            return self.stats
        if op == "metrics" and self.metrics is not None:
            return {"text": self.metrics}
        raise ApiClientError(f"unknown operation {op!r}")


@pytest.fixture
def client_for():
    def make(ctl):
        app = ui.create_app("/nonexistent.sock", call=ctl, login=False)
        app.testing = True
        return app.test_client()
    return make


# the CLI's lines, shared ----------------------------------------------------------------

def test_trace_lines_are_what_nvctl_trace_prints(monkeypatch):
    monkeypatch.setattr(cli, "call", lambda path, op, **kw: TRACE)
    a = cli.build_parser().parse_args(["trace", "t/web1", "icmp,nw_dst=10.0.0.12"])
    a.state_dir, a.json = "/tmp/x", False
    buf = io.StringIO()
    with redirect_stdout(buf):
        cli.cmd_trace(a)
    assert buf.getvalue() == "\n".join(cli.trace_lines(TRACE)) + "\n"
    lines = cli.trace_lines(TRACE)
    assert lines[0] == f"packet from t/web1 on hv1: {TRACE['packet']}"
    assert "  classify       prio 100   [classify] t: port web1" in lines
    assert "  -> DROPPED by delivery: no flow" in lines
    assert "  real OVS (ofproto/trace): agrees: vxlan to hv2 (192.0.2.12) vni 1000" in lines
    assert "  real OVS (ofproto/trace): not comparable: datapath hash" in lines
    assert lines[-1] == "delivered to: nothing (dropped)"


def test_trace_disagreement_exits_2_after_the_lines(monkeypatch):
    r = copy.deepcopy(TRACE)
    r["agree"] = False
    monkeypatch.setattr(cli, "call", lambda path, op, **kw: r)
    a = cli.build_parser().parse_args(["trace", "t/web1", "icmp"])
    a.state_dir, a.json = "/tmp/x", False
    buf = io.StringIO()
    with redirect_stdout(buf), pytest.raises(SystemExit) as e:
        cli.cmd_trace(a)
    assert e.value.code == 2 and buf.getvalue().endswith("simulator and OVS disagree\n")


def test_verify_lines_are_what_nvctl_verify_prints(monkeypatch):
    r = {**VERIFY, "ok": False, "interfaces": [{"host": "hv2", "problem": "ofport 12 is not ours"}],
         "errors": ["hv3: not connected"]}
    monkeypatch.setattr(cli, "call", lambda path, op, **kw: r)
    a = cli.build_parser().parse_args(["verify"])
    a.state_dir, a.json = "/tmp/x", False
    buf = io.StringIO()
    with redirect_stdout(buf), pytest.raises(SystemExit) as e:
        cli.cmd_verify(a)
    assert e.value.code == 2
    assert buf.getvalue() == "\n".join(cli.verify_lines(r)) + "\n"
    assert buf.getvalue() == (f"{r['text']}\n\nVIOLATION interface on hv2: ofport 12 is not ours\n\n"
                              "ERROR hv3: not connected\n\n(read 58 flows from the switches in 0.01s)\n")


# the drawing -----------------------------------------------------------------------------

def test_graph_has_every_switch_router_port_and_balancer():
    g = ui.topology_graph(SPEC, show_of("t")["ports"])
    kinds = {n: d["kind"] for n, d in g.nodes(data=True)}
    assert kinds == {("switch", "web"): "switch", ("switch", "db"): "switch", ("router", "r1"): "router",
                     ("port", "web1"): "port", ("port", "web2"): "port", ("port", "db1"): "port",
                     ("lb", "web-lb"): "lb"}
    assert g.has_edge(("port", "db1"), ("switch", "db")) and not g.has_edge(("port", "db1"), ("switch", "web"))
    assert g.edges[("router", "r1"), ("switch", "db")]["label"] == "10.0.1.1"
    backends = {v if u == ("lb", "web-lb") else u for u, v, d in g.edges(data=True) if d.get("backend")}
    assert backends == {("port", "web2"), ("port", "db1")}
    assert g.nodes[("port", "web2")]["label"] == "web2\n10.0.0.12\nhv2"
    assert g.nodes[("lb", "web-lb")]["label"] == "web-lb\n10.0.0.100:80/tcp\non web"


def test_placement_comes_from_the_controller_not_the_spec():
    ports = show_of("t")["ports"]
    ports[0] = {**ports[0], "host": "hv9"}  # migrated: tenant.show knows, the YAML still says hv1
    g = ui.topology_graph(SPEC, ports)
    assert g.nodes[("port", "web1")]["host"] == "hv9"


def svg_texts(svg: str) -> list[str]:
    root = ET.fromstring(svg)  # well-formed XML, or this raises
    return ["".join(t.itertext()) for t in root.iter("{http://www.w3.org/2000/svg}text")]


def test_svg_keeps_labels_as_text_and_is_well_formed():
    svg = ui.topology_svg(SPEC, show_of("t")["ports"])
    assert svg.startswith("<svg")
    texts = " ".join(svg_texts(svg))
    for p in SPEC["ports"]:
        assert p["ip"] in texts and p["name"] in texts
    for want in ("web-lb", "10.0.0.100:80/tcp", "r1", "10.0.1.0/24", "hv1", "hv2", "port runs on"):
        assert want in texts


def test_svg_escapes_names():
    svg = ui.topology_svg(hostile_spec(), show_of("t", hostile_spec())["ports"])
    assert "<script" not in svg and "<hv1>" not in svg
    texts = " ".join(svg_texts(svg))  # the parser undoes the escaping: the text is intact
    assert HOSTILE in texts and "<hv1>" in texts and "w<e>b" in texts


def test_layout_puts_ports_under_their_switch_and_keeps_a_row_apart():
    spec = copy.deepcopy(SPEC)
    spec["loadBalancers"].append({"name": "lb2", "vip": "10.0.0.101", "protocol": "tcp", "port": 81,
                                  "backends": ["web2:8080", "db1:8080"]})
    g = ui.topology_graph(spec, show_of("t", spec)["ports"])
    pos = ui._layout(g)
    assert set(pos) == set(g.nodes)
    assert pos[("router", "r1")][1] > pos[("switch", "web")][1] > pos[("port", "web1")][1] > pos[("lb", "lb2")][1]
    web = [pos[("port", n)][0] for n in ("web1", "web2")]
    assert min(web) <= pos[("switch", "web")][0] <= max(web)
    assert abs(pos[("lb", "web-lb")][0] - pos[("lb", "lb2")][0]) >= 0.9  # same backends, not stacked


# pages -----------------------------------------------------------------------------------

def test_tenants_page_escapes_names_and_links_each():
    page = ui.tenants_html([{"name": HOSTILE, "tenant_id": 1, "switches": 1, "ports": 2, "revision": 1},
                            {"name": "blue", "tenant_id": 2, "switches": 1, "ports": 4, "revision": 5}])
    assert "<script>alert" not in page
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;" in page
    assert 'href="/tenant/blue"' in page
    assert 'href="/tenant/%3Cscript%3Ealert' in page  # the link is URL-encoded too
    assert "controller unavailable" in ui.tenants_html(None, "no controller answers <here>")
    assert "&lt;here&gt;" in ui.tenants_html(None, "no controller answers <here>")


def test_tenant_page_escapes_ports_hosts_verify_and_trace():
    show = show_of("t", hostile_spec())
    v = {"ok": False, "verdict": "VIOLATION", "when": "now", "text": "counterexample <img src=x onerror=alert(1)>"}
    tr = {"port": HOSTILE, "packet": "icmp,\"><b>", "real": True, "lines": ["  -> port <b>bold</b>"]}
    page = ui.tenant_html(HOSTILE, show, "<svg></svg>", v, tr)
    for raw in ("<script>alert", "<img src=x", "<b>bold", "\"><b>", "<hv1>"):
        assert raw not in page, raw
    assert page.count("<script>") == 1  # the page's own, and only that
    assert "&lt;img src=x onerror=alert(1)&gt;" in page and "  -&gt; port &lt;b&gt;bold&lt;/b&gt;" in page
    assert '"/api/tenant/%3Cscript%3Ealert%28%27x%27%29%3C%2Fscript%3E%26/stats"' in page


def test_tenant_page_shows_every_port_with_its_host():
    show = show_of("blue")
    page = ui.tenant_html("blue", show, "<svg></svg>", None)
    for p in show["ports"]:
        row = re.search(rf'<tr data-port="{p["name"]}"><td class="name">.*?</tr>', page, re.S).group(0)
        assert f'<td class="host">{p["host"]}</td>' in row and p["ip"] in row and p["namespace"] in row
    assert "not run yet" in page and 'id="trace-form"' in page


def test_index_lists_tenants_and_survives_a_dead_controller(client_for):
    r = client_for(Controller({"twin-a": show_of("twin-a"), "twin-b": show_of("twin-b")})).get("/")
    assert r.status_code == 200 and r.mimetype == "text/html"
    assert re.findall(r'data-tenant="([^"]+)"', r.text) == ["twin-a", "twin-b"]

    def dead(op, **kw):
        raise ApiClientError("no controller answers on /x.sock (is the lab up? try 'nvctl lab up')")
    r = client_for(dead).get("/")
    assert r.status_code == 502 and "controller unavailable: no controller answers" in r.text


def test_unknown_tenant_is_a_404_with_the_name_escaped(client_for):
    r = client_for(Controller({})).get("/tenant/%3Cb%3Enope")
    assert r.status_code == 404 and "no tenant &#39;&lt;b&gt;nope&#39;" in r.text and "<b>nope" not in r.text


def test_counters_and_metrics_degrade_without_the_ops(client_for):
    c = client_for(Controller({"t": show_of("t")}))
    assert c.get("/tenant/t").status_code == 200  # the page itself does not need them
    r = c.get("/api/tenant/t/stats")
    assert r.status_code == 502 and r.json == {"ok": False, "error": "unknown operation 'stats'"}
    r = c.get("/metrics")
    assert r.status_code == 503 and r.text == "metrics unavailable: unknown operation 'metrics'\n"


def test_counters_and_metrics_pass_through(client_for):
    stats = {"tenant": "t", "time": 1.5, "ports": [], "acls": [], "loadBalancers": [], "nat": []}
    text = "# HELP nvctl_up 1 if up\n# TYPE nvctl_up gauge\nnvctl_up 1\n"
    c = client_for(Controller({"t": show_of("t")}, stats=stats, metrics=text))
    assert c.get("/api/tenant/t/stats").json == {"ok": True, "stats": stats}
    r = c.get("/metrics")
    assert r.status_code == 200 and r.text == text
    assert r.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"


def test_verify_runs_once_then_only_when_asked(client_for):
    ctl = Controller({"t": show_of("t")})
    c = client_for(ctl)
    for _ in range(3):
        assert "verify: OK" in c.get("/tenant/t").text
    assert sum(1 for op, _ in ctl.calls if op == "verify") == 1
    assert ("verify", {"tenant": "t"}) in ctl.calls
    first = c.get("/api/tenant/t/verify").json["verify"]
    assert first["verdict"] == "OK" and first["text"] == "\n".join(cli.verify_lines(VERIFY))
    r = c.post("/tenant/t/verify")
    assert r.status_code == 303 and r.headers["Location"].endswith("/tenant/t#verify")
    assert sum(1 for op, _ in ctl.calls if op == "verify") == 2
    assert c.get("/api/tenant/t/verify").json["verify"]["time"] >= first["time"]


def test_trace_page_shows_the_cli_lines(client_for):
    ctl = Controller({"t": show_of("t")})
    c = client_for(ctl)
    r = c.get("/tenant/t/trace", query_string={"port": "web1", "packet": "icmp,nw_dst=10.0.0.12", "real": "1"})
    assert r.status_code == 200
    assert ("trace", {"tenant": "t", "port": "web1", "packet": "icmp,nw_dst=10.0.0.12", "real": True}) in ctl.calls
    out = re.search(r'<pre id="trace-output">(.*?)</pre>', r.text, re.S).group(1)
    assert html.unescape(out).split("\n") == cli.trace_lines({**TRACE, "from": "t/web1"})
    j = c.get("/api/tenant/t/trace", query_string={"port": "web1", "packet": "icmp"}).json
    assert j["ok"] and j["lines"] == cli.trace_lines({**TRACE, "from": "t/web1"})
    assert c.get("/api/tenant/t/trace").status_code == 400


def test_nvctl_ui_without_a_controller_says_so_and_stops_on_ctrl_c(tmp_path):
    """The real command, as a process: it serves, says the controller is missing (no
    crash), and SIGINT (Ctrl-C) ends it with exit 0."""
    log = open(tmp_path / "ui.log", "w+")
    p = subprocess.Popen([sys.executable, "-m", "controller.client.cli", "ui", "--port", "0",
                          "--api", str(tmp_path / "none.sock")], stdout=log, stderr=subprocess.STDOUT,
                         cwd=ROOT, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while not (m := re.search(r"http://127\.0\.0\.1:(\d+)/", (tmp_path / "ui.log").read_text())):
            assert p.poll() is None and time.monotonic() < deadline, (tmp_path / "ui.log").read_text()
            time.sleep(0.1)
        base = f"http://127.0.0.1:{m.group(1)}"
        for path in ("/", "/tenant/x", "/tenant/x/topology.svg", "/api/tenant/x/stats"):
            with pytest.raises(urllib.error.HTTPError) as e:
                urllib.request.urlopen(urllib.request.Request(base + path, headers={"Authorization": "Bearer t"}),
                                       timeout=10)
            assert e.value.code == 502 and "no controller answers" in e.value.read().decode(), path
        # without a credential: a page sends the person to sign in, the JSON is refused
        with urllib.request.urlopen(base + "/tenant/x", timeout=10) as r:
            assert r.url.endswith("/login") and "Sign in" in r.read().decode()
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(base + "/api/tenants", timeout=10)
        assert e.value.code == 401
    finally:
        if p.poll() is None:
            os.kill(p.pid, signal.SIGINT)
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(p.pid, signal.SIGKILL)
                p.wait()
        log.close()
    assert p.returncode == 0 and (tmp_path / "ui.log").read_text().rstrip().endswith("nvctl ui: stopped")
