"""Counters, drops and ACL logs (controller.analysis.stats, controller.packetin.acl_log).

A piece of `Core` (controller/server/core.py): the state it uses is made in
`Core.__init__`."""
from __future__ import annotations

import time

from dataplane.match_action import COOKIE_TENANT_MAX, COOKIE_TENANT_SHIFT, cookie_tenant
from controller.analysis import stats as stats_mod
from controller.packetin.acl_log import five_tuple
from controller.server.errors import unknown_tenant
from controller.server.entry import TenantEntry

STATS_KEEP_SECONDS = 600.0  # readings kept for `nvctl drops` (what dropped recently)
SAMPLE_EVERY = 5.0  # at most one kept per this many seconds (every stats call reads)
SAMPLES_KEPT = 120


class CountersMixin:
    def _read_counters(self, entries: dict) -> dict:
        """{tenant: ({host: stats.Reading}, {host: why not read})} for the tenants in
        `entries` ({name: TenantEntry}): their flows' counters, the meters, the groups.
        For one tenant only its cookies cross the wire; for several, each host's whole
        flow table is read once and split by the cookies' tenant bits."""
        mask = COOKIE_TENANT_MAX << COOKIE_TENANT_SHIFT
        one_tid = next(iter(entries.values())).alloc.tenant_id if len(entries) == 1 else None
        want_groups = any(e.tenant.load_balancers for e in entries.values())
        hosts = sorted(set().union(*(e.flows for e in entries.values())) & set(self.hosts)) if entries else []
        got, failed = {}, {}

        def one(h):
            st = self.state.get(h)
            s = st.session if st is not None else None
            if s is None:
                failed[h] = "not connected"
                return
            try:
                fl = s.flow_counts(one_tid << COOKIE_TENANT_SHIFT, mask) if one_tid is not None else s.flow_counts()
                got[h] = (fl, s.meter_counts(), s.group_counts() if want_groups else {})
            except Exception as ex:  # noqa: BLE001 - one host's answer missing is reported, not fatal
                failed[h] = str(ex)
        if len(hosts) == 1:
            one(hosts[0])
        elif hosts:
            list(self._readers.map(one, hosts))  # not the reconcilers: a stuck read never delays a change
        split: dict = {}  # host -> tenant id -> its counts
        if one_tid is None:
            for h, (fl, _m, _g) in got.items():
                by = split[h] = {}
                for c in fl:
                    tid = (c[0] >> COOKIE_TENANT_SHIFT) & COOKIE_TENANT_MAX
                    lst = by.get(tid)
                    if lst is None:
                        lst = by[tid] = []
                    lst.append(c)
        out = {}
        for name, e in entries.items():
            tid = e.alloc.tenant_id
            readings, errors = {}, {}
            for h in e.flows:
                if h in failed:
                    errors[h] = failed[h]
                elif h in got:
                    fl, meters, groups = got[h]
                    readings[h] = stats_mod.Reading(fl if one_tid is not None else split[h].get(tid, []),
                                                    meters, groups)
            out[name] = (readings, errors)
        return out

    def _cookies(self, e: TenantEntry, host: str) -> dict:
        """{cookie: Flow} of a tenant's flows on a host, kept until they are recompiled."""
        flows = e.flows.get(host, ())
        key = (e.alloc.tenant_id, host)
        got = self._cookie_index.get(key)
        if got is None or got[0] is not flows:
            got = self._cookie_index[key] = (flows, {f.cookie: f for f in flows})
        return got[1]

    def _report(self, name: str, e: TenantEntry, inc, stamp: int, readings: dict, errors: dict) -> dict:
        """The stats report of one tenant from readings taken after `stamp` was. Kept
        counts and samples belong to the tenant's incarnation `inc`: a reading that
        finishes after the tenant was deleted (and maybe made again) changes neither."""
        same = inc is not None and self._incarnation.get(name) == inc
        rep = stats_mod.report(e.tenant, e.alloc, e.flows, readings, self.book if same else None, errors,
                               cookies=lambda h: self._cookies(e, h), key=(name, inc), stamp=stamp,
                               health=self.health_of(name))
        if same:
            with self._samples_lock:
                keep = self.samples.setdefault(name, [])
                if not keep or rep["time"] - keep[-1][0] >= SAMPLE_EVERY:
                    keep.append((rep["time"], stats_mod.drop_counts(rep)))
                while keep and (keep[0][0] < rep["time"] - STATS_KEEP_SECONDS or len(keep) > SAMPLES_KEPT):
                    keep.pop(0)
        return rep

    def stats(self, tenant: str) -> dict:
        """`nvctl stats`: the tenant's counters by intent, summed over its hosts."""
        e = self.tenants.get(tenant)
        if e is None:
            raise unknown_tenant(tenant)
        inc, stamp = self._incarnation.get(tenant), self.book.stamp()
        readings, errors = self._read_counters({tenant: e})[tenant]
        return self._report(tenant, e, inc, stamp, readings, errors)

    def stats_all(self) -> dict:
        """Every tenant's `stats` report, from one read of each host."""
        entries = dict(self.tenants)
        if not entries:
            return {}
        incs, stamp = dict(self._incarnation), self.book.stamp()
        return {n: self._report(n, entries[n], incs.get(n), stamp, *r)
                for n, r in self._read_counters(entries).items()}

    def metrics_text(self) -> dict:
        """The Prometheus exposition text (controller.analysis.metrics)."""
        return {"text": self.metrics.text()}

    def drops(self, tenant: str, window: float = 60.0) -> dict:
        """`nvctl drops`: the tenant's drops by reason and rule, with what dropped since
        the earliest reading within `window` seconds (taken by stats, drops, metrics or
        the web view), and the last denials its logged rules wrote."""
        before = None
        now = time.time()
        with self._samples_lock:
            for t, counts in self.samples.get(tenant, ()):
                if t >= now - window:
                    before = (t, counts)
                    break
        rep = self.stats(tenant)
        rows = stats_mod.drops(rep, before[1] if before else None)
        denied = [x for x in self.acl_log.since(tenant, 0, 0) if x["verdict"] == "deny"][-10:]
        return {"tenant": tenant, "time": rep["time"], "since": before[0] if before else None,
                "drops": rows, "logged": denied, "unread": rep["unread"]}

    def logs(self, tenant: str, after: int = 0, limit: int = 1000) -> dict:
        """`nvctl logs`: what the tenant's logged ACL rules wrote, after sequence `after`."""
        if tenant not in self.tenants:
            raise unknown_tenant(tenant)
        got = self.acl_log.since(tenant, after, limit)
        return {"tenant": tenant, "entries": got, "last": got[-1]["seq"] if got else after,
                "epoch": self.acl_log.epoch,
                "logged": [r.label for r in self.tenants[tenant].tenant.acls if r.log] +
                          [f"policy {p.name}" for p in self.tenants[tenant].tenant.network_policies if p.log]}

    def _log_policy(self, name: str, e, host: str, tags: dict, data: bytes) -> None:
        """A network policy's log line: the allowing rule's (the port is the sender for
        Egress, the receiver for Ingress: the rule flows are per switch, the frame
        says whose packet it is), or an isolated port's drop."""
        if "policyPort" in tags:
            _, port, kind = tags["policyPort"]
            names = ", ".join(p.name for p in e.tenant.network_policies if p.log)
            self.acl_log.add_policy(name, host, names, kind, None, port, data)
            return
        _, index, kind, rule_index = tags["policy"]
        pol = next((p for p in e.tenant.network_policies if p.index == index), None)
        ft = five_tuple(data)
        if pol is None or ft is None:
            return
        addr = ft["src"] if kind == "Egress" else ft["dst"]
        port = next((p.name for p in e.tenant.ports if addr in (str(p.ip), str(p.ip6))), "")
        self.acl_log.add_policy(name, host, pol, kind, rule_index, port, data)

    def _log_acl(self, host: str, cookie: int, data: bytes) -> None:
        tid = cookie_tenant(cookie)
        name = self._tid_name.get(tid)
        e = self.tenants.get(name) if name is not None else None
        if e is None:
            return
        flows = e.flows.get(host, ())
        cached = self._log_index.get((tid, host))
        if cached is None or cached[0] is not flows:
            cached = (flows, {f.cookie: f for f in flows
                              if any(t[0] in ("aclPort", "policyLog", "policyPort") for t in f.stat)})
            self._log_index[(tid, host)] = cached
        f = cached[1].get(cookie)
        if f is None:
            return
        tags = {t[0]: t for t in f.stat}
        if "policyLog" in tags or "policyPort" in tags:
            self._log_policy(name, e, host, tags, data)
            return
        index = next(t[1] for t in f.stat if t[0] == "acl")
        port = next(t[1] for t in f.stat if t[0] == "aclPort")
        rule = next((r for r in e.tenant.acls if r.index == index), None)
        if rule is not None:
            self.acl_log.add(name, host, rule, port, data)
