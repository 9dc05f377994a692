"""The controller's Prometheus metrics (prometheus-client), served by `nvctl ui` at
/metrics (and by the API op `metrics`).

Measured as it happens: reconcile duration and flow-mods per host, API request latency
per operation. Read at each scrape: every tenant's counters by intent (one flow-stats
read per host for all tenants, `Core.stats_all`), hosts connected and in sync, the
last verify result, ACL log lines. Series that belong to one tenant carry
`tenant="NAME"`.
"""
from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

LOG = logging.getLogger("nvctl.metrics")
SECONDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    def __init__(self, core):
        self.registry = CollectorRegistry(auto_describe=False)
        self.reconcile_seconds = Histogram("nvctl_reconcile_seconds", "Time to bring one host's switch to its "
                                           "desired state", ["host"], registry=self.registry, buckets=SECONDS)
        self.flow_mods = Counter("nvctl_flow_mods", "Flow-, meter- and group-mods sent", ["host"],
                                 registry=self.registry)
        self.api_seconds = Histogram("nvctl_api_request_seconds", "API request latency", ["op"],
                                     registry=self.registry, buckets=SECONDS)
        self.registry.register(_Live(core))

    def text(self) -> str:
        return generate_latest(self.registry).decode()


def _counter(name, doc, labels):
    return CounterMetricFamily(name, doc, labels=labels)


class _Live:
    """Read at each scrape."""

    def __init__(self, core):
        self.core = core

    def describe(self):
        return []

    def collect(self):
        core = self.core
        hosts = core.list_hosts()
        up = GaugeMetricFamily("nvctl_host_connected", "1 if the host's switch is connected", labels=["host"])
        sync = GaugeMetricFamily("nvctl_host_in_sync", "1 if the host's switch holds exactly its desired flows",
                                 labels=["host"])
        desired = GaugeMetricFamily("nvctl_host_flows_desired", "Flows the host should hold", labels=["host"])
        for h in hosts:
            up.add_metric([h["name"]], 1 if h["connected"] else 0)
            sync.add_metric([h["name"]], 1 if h["in_sync"] else 0)
            desired.add_metric([h["name"]], h["flows_desired"])
        yield up
        yield sync
        yield desired
        yield GaugeMetricFamily("nvctl_hosts_connected", "Hosts whose switch is connected",
                                value=sum(1 for h in hosts if h["connected"]))
        yield GaugeMetricFamily("nvctl_hosts_in_sync", "Hosts whose switch holds exactly its desired flows",
                                value=sum(1 for h in hosts if h["in_sync"]))
        yield GaugeMetricFamily("nvctl_tenants", "Tenants", value=len(core.tenants))

        ok = GaugeMetricFamily("nvctl_verify_ok", "1 if the last verify passed (tenant \"\": all tenants)",
                               labels=["tenant"])
        bad = GaugeMetricFamily("nvctl_verify_violations", "Violations the last verify found", labels=["tenant"])
        when = GaugeMetricFamily("nvctl_verify_timestamp_seconds", "When the last verify ran", labels=["tenant"])
        for t, (ts, passed, n) in sorted(core.verified.items()):
            ok.add_metric([t], 1 if passed else 0)
            bad.add_metric([t], n)
            when.add_metric([t], ts)
        yield ok
        yield bad
        yield when
        g = core.guard  # verify before install (controller.server.guard)
        yield GaugeMetricFamily("nvctl_verify_changes_enabled", "1 if every tenant change is proved before install",
                                value=1 if g.enabled else 0)
        done = _counter("nvctl_verify_changes", "Tenant changes proved before install, by result", ["result"])
        with g.lock:
            counts, last = dict(g.counts), g.last
        for k in ("checked", "refused", "unproved"):  # unproved: over the guard's size budget
            done.add_metric([k], counts[k])
        yield done
        if last is not None:
            yield GaugeMetricFamily("nvctl_verify_change_last_ms", "How long the last change's proof took",
                                    value=last["ms"])
            yield GaugeMetricFamily("nvctl_verify_change_last_ok", "1 if the last change proved was let through",
                                    value=1 if last["result"] != "refused" else 0)

        logged = _counter("nvctl_acl_log_lines", "Lines written by logged ACL rules", ["tenant"])
        for t, n in sorted(core.acl_log.written.items()):
            logged.add_metric([t], n)
        yield logged
        dropped = _counter("nvctl_acl_log_suppressed", "Log lines over the controller's per-tenant rate, not kept",
                           ["tenant"])
        for t, n in sorted(core.acl_log.suppressed.items()):
            dropped.add_metric([t], n)
        yield dropped

        port_pkts = _counter("nvctl_port_packets", "Packets a port sent or received", ["tenant", "port", "host",
                                                                                      "direction"])
        port_bytes = _counter("nvctl_port_bytes", "Bytes a port sent or received", ["tenant", "port", "host",
                                                                                  "direction"])
        drop_pkts = _counter("nvctl_port_dropped_packets", "Packets of a port dropped, by reason",
                             ["tenant", "port", "host", "reason"])
        acl_pkts = _counter("nvctl_acl_packets", "Packets an ACL rule decided", ["tenant", "rule", "index", "action"])
        acl_bytes = _counter("nvctl_acl_bytes", "Bytes an ACL rule decided", ["tenant", "rule", "index", "action"])
        lb_conns = _counter("nvctl_lb_backend_connections", "New connections sent to a load balancer's backend",
                            ["tenant", "lb", "backend"])
        nat_pkts = _counter("nvctl_nat_packets", "Packets translated by a NAT rule",
                            ["tenant", "kind", "rule", "direction"])
        unread = GaugeMetricFamily("nvctl_stats_hosts_unread", "Hosts whose counters could not be read",
                                   labels=["tenant"])
        try:
            reports = core.stats_all()
        except Exception:  # noqa: BLE001 - the rest of the metrics still serve
            LOG.exception("reading counters for /metrics")
            reports = {}
        for name, r in sorted(reports.items()):
            unread.add_metric([name], len(r["unread"]))
            for p in r["ports"]:
                for d in ("sent", "received"):
                    port_pkts.add_metric([name, p["name"], p["host"], d], p[d]["packets"])
                    port_bytes.add_metric([name, p["name"], p["host"], d], p[d]["bytes"])
                for reason, c in p["dropped"].items():
                    drop_pkts.add_metric([name, p["name"], p["host"], reason], c["packets"])
            for a in r["acls"]:
                labels = [name, a["name"], str(a["index"]), a["action"]]
                acl_pkts.add_metric(labels, a["packets"])
                acl_bytes.add_metric(labels, a["bytes"])
            for lb in r["loadBalancers"]:
                for b in lb["backends"]:
                    lb_conns.add_metric([name, lb["name"], f"{b['name']}:{b['port']}"], b["connections"])
            for n in r["nat"]:
                nat_pkts.add_metric([name, n["kind"], n["name"], n["direction"]], n["packets"])
        yield from (port_pkts, port_bytes, drop_pkts, acl_pkts, acl_bytes, lb_conns, nat_pkts, unread)
