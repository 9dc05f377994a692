"""Text a person reads, made from the API's answers: verify results, traces, ACL log lines.
Shared by the command line and the web view."""
from __future__ import annotations

import time


def log_line(e: dict) -> str:
    """One log entry as a person reads it."""
    t = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(e["time"])) + f".{int(e['time'] * 1000) % 1000:03d}"
    if e["proto"] in ("icmp", "icmp6"):
        flow = f"{e['proto']} {e['src']} -> {e['dst']} type {e['sport']} code {e['dport']}"
    elif e["sport"] is None:
        flow = f"{e['proto']} {e['src']} -> {e['dst']}"
    else:
        flow = f"{e['proto']} {e['src']}:{e['sport']} -> {e['dst']}:{e['dport']}"
    return (f"{t} {e['tenant']} {e['rule']} ({e['direction']}, port {e['port']}) {e['verdict'].upper():5} "
            f"{flow} on {e['host']}")



def verify_lines(r: dict) -> list[str]:
    """The lines `nvctl verify` prints for a verify result (the web view shows the same)."""
    lines = r["text"].split("\n")  # joined with newlines: exactly what print(r["text"]) shows
    for p in r["interfaces"]:
        lines += ["", f"VIOLATION interface on {p['host']}: {p['problem']}"]
    for e in r["errors"]:
        lines += ["", f"ERROR {e}"]
    lines += ["", f"(read {r['flows_read']} flows from the switches in {r['read_seconds']}s)"]
    return lines


def trace_lines(r: dict) -> list[str]:
    """The lines `nvctl trace` prints for a trace result, table by table (the web view
    shows the same)."""
    out = [f"packet from {r['from']} on {r['host']}: {r['packet']}"]
    for hop in r["hops"]:
        out += ["", f"== {hop['host']} (in from {hop['in_port']})"]
        for t in hop["tables"]:
            if "priority" not in t:
                out.append(f"  {t['table']:14} {'(no flow matched: table miss)' if not t['table'].startswith('(') else ''}")
                continue
            who = f"{t['tenant']}: " if t["tenant"] else ""
            out.append(f"  {t['table']:14} prio {t['priority']:<5} [{t['layer']}] {who}{t['rule']}")
        if hop["outputs"]:
            out += [f"  -> {o}" for o in hop["outputs"]]
        else:
            d = hop.get("dropped_by", {})
            out.append(f"  -> DROPPED by {d.get('layer', '?')}: {d.get('rule', '?')}")
        if "real" in hop:
            real = hop["real"]
            if "error" in real:
                out.append(f"  real OVS: {real['error']}")
            elif real["agree"] is None:
                out.append(f"  real OVS (ofproto/trace): not comparable: {real['note']}")
            else:
                verdict = "agrees" if real["agree"] else "DISAGREES"
                out.append(f"  real OVS (ofproto/trace): {verdict}: {', '.join(real['outputs']) or 'drop'}")
    out += ["", "delivered to: " + (", ".join(r["delivered"]) if r["delivered"] else "nothing (dropped)")]
    if r["agree"] is False:
        out.append("simulator and OVS disagree")
    return out


def change_proof_lines(e: dict) -> list[str]:
    """One verify-before-install result as `nvctl verify --watch` prints it."""
    import time as _time
    when = _time.strftime("%H:%M:%S", _time.localtime(e["time"]))
    verdict = {"ok": "OK", "refused": "REFUSED", "error": "NOT PROVED", "unproved": "UNPROVED"}.get(
        e["result"], e["result"])
    lines = [f"{when}  #{e['seq']:<5} {verdict:<8} {e['tenant']}: {e['action'] or 'change'}  ({e['ms']:.1f} ms)"]
    for v in e["violations"]:
        lines.append(f"    VIOLATION {v['kind']} [{', '.join(v['tenants'])}]: {v['message']}")
        if v.get("flow"):
            lines.append(f"      deciding flow: {v['flow']}")
    for w in e["warnings"]:
        lines.append(f"    note {w['kind']}: {w['message']}")
    if e.get("note"):
        lines.append(f"    {e['note']}")
    return lines
