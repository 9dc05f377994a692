"""`nvctl stats`, `nvctl drops` and `nvctl logs`: what the traffic that really flows did,
by intent (see controller.analysis.stats and controller.packetin.acl_log for what is counted)."""
from __future__ import annotations

import json
import sys
import time

from controller.client.render import log_line
from controller.client.api import call


def _n(x: float) -> str:
    """A count as people read it: 1234 -> 1,234; 12345678 -> 12.3M."""
    if x >= 10_000_000:
        return f"{x / 1e6:.1f}M"
    return f"{int(x):,}"


def _rate(now: float, before: float | None, dt: float | None) -> str:
    if before is None or not dt:
        return ""
    return f" ({(now - before) / dt:,.1f}/s)"


def stats_tables(r: dict, prev: dict | None = None) -> list[tuple[str, list[str], list[list[str]]]]:
    """(title, header, rows) of a stats report; with `prev` (the report before), rates
    per second beside the packet counts."""
    dt = (r["time"] - prev["time"]) if prev else None
    pp = {p["name"]: p for p in prev["ports"]} if prev else {}
    pa = {a["index"]: a for a in prev["acls"]} if prev else {}
    ports = []
    for p in r["ports"]:
        q = pp.get(p["name"])
        d = p["dropped"]
        ports.append([p["name"], p["host"],
                      _n(p["sent"]["packets"]) + _rate(p["sent"]["packets"], q and q["sent"]["packets"], dt),
                      _n(p["sent"]["bytes"]),
                      _n(p["received"]["packets"]) + _rate(p["received"]["packets"],
                                                           q and q["received"]["packets"], dt),
                      _n(p["received"]["bytes"]),
                      _n(d["portSecurity"]["packets"]), _n(d["acl"]["packets"]),
                      _n(d.get("policy", {}).get("packets", 0)), _n(d["rateLimit"]["packets"]),
                      _n(d["bum"]["packets"])])
    out = [("ports", ["PORT", "HOST", "SENT PKTS", "BYTES", "RECEIVED PKTS", "BYTES", "DROP PORTSEC", "DROP ACL",
                      "DROP POLICY", "DROP RATE", "DROP BUM"], ports)]
    if r["acls"]:
        rows = []
        for a in r["acls"]:
            q = pa.get(a["index"])
            rows.append([str(a["index"]), a["name"] + (" (log)" if a["log"] else ""), a["direction"], a["action"],
                         str(a["priority"]), _n(a["packets"]) + _rate(a["packets"], q and q["packets"], dt),
                         _n(a["bytes"])])
        out.append(("acl rules", ["#", "RULE", "DIRECTION", "ACTION", "PRIO", "PACKETS", "BYTES"], rows))
    if r.get("networkPolicies"):
        rows = [[p["name"] + (" (log)" if p["log"] else ""), p["namespace"] or "*", f"{x['kind'].lower()}[{x['index']}]",
                 _n(x["connections"])] for p in r["networkPolicies"] for x in p["rules"]]
        rows += [[p["name"] + (" (log)" if p["log"] else ""), p["namespace"] or "*",
                  "(" + "+".join(t.lower() for t in p["types"]) + ": no rules, isolates only)", "-"]
                 for p in r["networkPolicies"] if not p["rules"]]
        out.append(("network policies", ["POLICY", "NAMESPACE", "RULE", "CONNECTIONS ALLOWED"], rows))
    if r["loadBalancers"]:
        rows = [[lb["name"], f"{lb['vip']}:{lb['port']}/{lb['protocol']}", f"{b['name']} {b['ip']}:{b['port']}",
                 _health(b.get("health")), _n(b["connections"]), _n(b["replyPackets"]), _n(b["replyBytes"])]
                for lb in r["loadBalancers"] for b in lb["backends"]]
        out.append(("load balancers", ["LB", "VIP", "BACKEND", "HEALTH", "CONNECTIONS", "REPLY PKTS", "REPLY BYTES"],
                    rows))
    if r["nat"]:
        rows = [[n["kind"], n["name"], n["router"], n["externalIp"], n["direction"], _n(n["packets"]),
                 _n(n["bytes"])] for n in r["nat"]]
        out.append(("nat", ["KIND", "RULE", "ROUTER", "EXTERNAL IP", "DIR", "PACKETS", "BYTES"], rows))
    return out


def _health(h) -> str:
    """A backend's health check in a word and since when: "up since 12:03:04", "-" unchecked."""
    if not h:
        return "-"
    if h.get("since") is None:
        return h["state"]
    return f"{h['state']} since {time.strftime('%H:%M:%S', time.localtime(h['since']))}"


def render_plain(tables) -> str:
    lines = []
    for title, header, rows in tables:
        widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
        lines.append(f"# {title}")
        lines.append("  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip())
        for r in rows:
            lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def _footer(r: dict) -> str:
    s = f"{r['tenant']}: counters of {len(r['hosts'])} host(s) at {time.strftime('%H:%M:%S', time.localtime(r['time']))}"
    if r["unread"]:
        s += "; NOT READ: " + ", ".join(f"{h} ({why})" for h, why in r["unread"].items())
    return s


def cmd_stats(a):
    api = a.api_path
    if not a.watch:
        r = call(api, "stats", tenant=a.tenant)
        if a.json:
            print(json.dumps(r, indent=2))
        else:
            sys.stdout.write(render_plain(stats_tables(r)) + _footer(r) + "\n")
        return
    prev = None
    if sys.stdout.isatty() and not a.json:
        from rich.console import Group
        from rich.live import Live
        from rich.table import Table
        from rich.text import Text

        def view(r, prev):
            parts = []
            for title, header, rows in stats_tables(r, prev):
                t = Table(title=title, title_justify="left")
                for h in header:
                    t.add_column(h, justify="left" if h in ("PORT", "HOST", "RULE", "LB", "VIP", "BACKEND", "KIND",
                                                             "DIRECTION", "ACTION", "DIR", "ROUTER") else "right")
                for row in rows:
                    t.add_row(*row)
                parts.append(t)
            parts.append(Text(_footer(r) + f"; every {a.watch:g}s, Ctrl-C to stop"))
            return Group(*parts)
        try:
            r = call(api, "stats", tenant=a.tenant)
            with Live(view(r, None), auto_refresh=False) as live:
                while True:
                    time.sleep(a.watch)
                    prev, r = r, call(api, "stats", tenant=a.tenant)
                    live.update(view(r, prev), refresh=True)
        except KeyboardInterrupt:
            return
    try:
        while True:  # not a terminal (or --json): one report per interval
            r = call(api, "stats", tenant=a.tenant)
            if a.json:
                print(json.dumps(r), flush=True)
            else:
                sys.stdout.write(render_plain(stats_tables(r, prev)) + _footer(r) + "\n\n")
                sys.stdout.flush()
            prev = r
            time.sleep(a.watch)
    except KeyboardInterrupt:
        return


def drops_lines(r: dict) -> list[str]:
    out = []
    if not r["drops"]:
        out.append(f"{r['tenant']}: no drops counted")
    else:
        since = (f"since {time.strftime('%H:%M:%S', time.localtime(r['since']))}" if r["since"] else None)
        header = ["REASON", "WHERE", "HOST", "PACKETS"] + ([f"RECENT ({since})"] if since else [])
        rows = [[d["reason"], f"{d['kind']} {d['name']}", d.get("host", ""), _n(d["packets"])]
                + ([_n(d["recent"])] if since else []) for d in r["drops"]]
        out += render_plain([(f"drops of {r['tenant']}", header, rows)]).rstrip("\n").split("\n")
        if not since:
            out.append("(no earlier reading in the window: RECENT shows next time)")
    if r["logged"]:
        out += ["", "# last denials of logged rules"] + [log_line(e) for e in r["logged"]]
    if r["unread"]:
        out.append("NOT READ: " + ", ".join(f"{h} ({why})" for h, why in r["unread"].items()))
    return out


def cmd_drops(a):
    r = call(a.api_path, "drops", tenant=a.tenant, window=a.window)
    if a.json:
        print(json.dumps(r, indent=2))
    else:
        print("\n".join(drops_lines(r)))


def cmd_logs(a):
    r = call(a.api_path, "logs", tenant=a.tenant, after=0, limit=a.last)
    if not r["logged"] and not r["entries"]:
        print(f"{a.tenant}: no ACL rule or network policy has log: true (add it to log its connections)",
              file=sys.stderr)

    def show(entries):
        for e in entries:
            print(json.dumps(e, sort_keys=True) if a.json else log_line(e), flush=True)
    show(r["entries"])
    if not a.follow:
        return
    last, epoch = r["last"], r.get("epoch")
    try:
        while True:
            time.sleep(0.5)
            r = call(a.api_path, "logs", tenant=a.tenant, after=last, limit=0)
            if r.get("epoch") != epoch:  # another controller (a restart, a failover): its lines from the start
                epoch = r.get("epoch")
                r = call(a.api_path, "logs", tenant=a.tenant, after=0, limit=0)
            show(r["entries"])
            last = r["last"]
    except KeyboardInterrupt:
        return
