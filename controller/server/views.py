"""Read-only views: hosts, tenants, a tenant's ports and flows, trace and verify.

A piece of `Core` (controller/server/core.py): the state it uses is made in
`Core.__init__`."""
from __future__ import annotations

import time

from dataplane.match_action import cookie_layer, cookie_tenant
from topology import schema
from controller.compile.pipeline import LAYER_BY_ID
from controller.switch import reconciler
from controller.switch.reconciler import HostState
from controller.server.errors import ApiError, unknown_host, unknown_tenant


class ViewsMixin:
    def host_status(self, host: str) -> dict:
        st = self.state.get(host, HostState())
        want = self.desired.get(host, {})
        with st.lock:
            synced = reconciler.in_sync(st, want)
        return {
            "connected": st.session is not None,
            "flows_desired": len(want),
            "in_sync": synced,
            "workloads_ready": not self.plugging,  # the start-up (or take-over) check of workloads is done
            "drift_corrected": st.drift_corrected,
            "flow_mods_sent": st.flow_mods,
            "bundles": st.bundles,
            "syncs": st.syncs,
            "last_sync_flow_mods": st.last_sync_mods,
            "error": st.error,
        }

    def list_hosts(self, check: bool = False) -> list[dict]:
        """Every host and whether its switch holds exactly its desired state. With
        `check`, each switch is read again first (and any drift corrected), so the answer
        is about the switches, not the controller's memory of them."""
        found = self.audit_all() if check else {}
        live = self.liveness()
        return [{"name": h.name, "pa": h.pa, "dpid": f"{h.dpid:016x}", "uplink_mtu": h.info.get("mtu"),
                 "overlay_mtu": self.host_mtu(h.name), **self.host_status(h.name),
                 "provider_network": (h.info["external"].get("name", "external") if h.info.get("external") else None),
                 "provider_address": (h.info.get("external") or {}).get("address"),
                 "bfd": self.bfd_view(h.name, live),
                 **({"drift": found[h.name]} if h.name in found else {})}
                for h in sorted(self.hosts.values(), key=lambda h: h.name)]

    def list_tenants(self) -> list[dict]:
        return [{"name": n, "revision": e.revision, "switches": len(e.tenant.switches),
                 "ports": len(e.tenant.ports), "tenant_id": e.alloc.tenant_id}
                for n, e in sorted(self.tenants.items())]

    def show(self, name: str) -> dict:
        e = self.tenants.get(name)
        if e is None:
            raise unknown_tenant(name)
        ports = []
        self.interfaces_settled({p.host for p in e.tenant.ports})  # port events already in: read
        claims = self._claims()
        for p in e.tenant.ports:
            b = self.port_binding(name, e, p, claims)
            ports.append({"name": p.name, "switch": p.switch, "ip": str(p.ip), "mac": p.mac,
                          **({"ip6": str(p.ip6)} if p.ip6 is not None else {}),
                          "host": p.host, "ofport": e.alloc.ofport[p.name],
                          "up": b["up"], "seen": b["seen"], "madeBy": p.made_by,
                          **({"containerId": p.container_id} if p.container_id else {}),
                          "labels": dict(p.labels),
                          "namespace": self.driver.namespace(name, p.name, p.host) if p.workload else None})
        hosts = {}
        for h in sorted({p.host for p in e.tenant.ports} | set(e.flows)):
            if h not in self.hosts:
                hosts[h] = {"flows": 0, "installed": False, "note": "host is not registered"}
                continue
            st = self.state[h]
            mine = e.flows.get(h, ())
            with st.lock:
                have = st.installed
                installed = (st.session is not None and have is not None
                             and all(have.get(f.identity) == f for f in mine))
            hosts[h] = {"flows": len(set(mine)), "installed": installed, "connected": st.session is not None}
        return {"spec": schema.to_doc(e.tenant), "revision": e.revision,
                "ids": {"tenant_id": e.alloc.tenant_id, "vni": e.alloc.vni},
                "mtu": self.switch_mtus(e.tenant),
                "ports": ports, "hosts": hosts, "gateways": self.gateway_status(e.tenant),
                "routes": self.routes_view(e.tenant)}

    def trace(self, tenant: str, port: str, packet: str, real: bool = False) -> dict:
        """Simulate `packet` sent by tenant/port through every host it crosses; with
        real=True also ask each host's OVS (ofproto/trace) and compare."""
        from controller.analysis import trace as tr
        e, p = self._port(tenant, port)
        if p.host not in self.hosts:
            raise ApiError(f"{tenant}/{port} is on {p.host}, which is not a registered host")
        try:
            proto, fields = tr.parse_spec(packet)
            pkt = tr.build_packet(e.tenant, p, proto, fields)
            tr.ofctl_flow(e.alloc.ofport[p.name], pkt)  # a field that does not fit says so here
        except (tr.TraceError, ValueError) as ex:
            raise ApiError(f"packet {packet!r}: {ex}") from None
        pas = {h: rec.pa for h, rec in self.hosts.items()}
        by_pa = {v: k for k, v in pas.items()}
        names = {e2.alloc.tenant_id: n for n, e2 in self.tenants.items()}
        where = {}
        for n, e2 in self.tenants.items():
            for q in e2.tenant.ports:
                where[(q.host, e2.alloc.ofport[q.name])] = f"{n}/{q.name}"
        fabric = tr.simulate(self.desired, pas, p.host, e.alloc.ofport[p.name], pkt, live=self.liveness())

        def label(host, item):
            if item[0] == "tunnel":
                return f"vxlan to {by_pa.get(item[1], item[1])} ({item[1]}) vni {item[2]}"
            return f"port {where.get((host, item[1]), item[1])} (ofport {item[1]})"

        hops = []
        for host, in_port, pkt_in, fate in fabric.hops:
            tables = []
            for h in fate.path:
                row = {"table": h.table}
                if h.flow is not None:
                    row.update(tr._flow_row(h.flow, names))
                tables.append(row)
            sim = tr.hop_outputs(fate)
            came = (f"vxlan from {by_pa.get(pkt_in.get('tun_ipv4_src'), '?')}"
                    if in_port == tr.TUNNEL_OFPORT else where.get((host, in_port), in_port))
            hop = {"host": host, "in_port": came, "tables": tables,
                   "outputs": [label(host, o) for o in sim]}
            if not sim:
                last = fate.decided_by()
                hop["dropped_by"] = tr._flow_row(last, names) if last else {"rule": "no flow"}
            if real:
                rundir = self.hosts[host].info.get("rundir")
                if not rundir:
                    hop["real"] = {"error": "host has no local OVS run directory"}
                else:
                    got, raw = tr.real_hop(rundir, in_port, pkt_in)
                    hop["real"] = {"outputs": [label(host, o) for o in got], "agree": got == sim,
                                   "flow": tr.ofctl_flow(in_port, pkt_in)}
                    if tr.DATAPATH_HASH in raw:
                        hop["real"].update(agree=None, note="OVS picks the select group's bucket by a "
                                           "datapath hash; ofproto/trace cannot follow it")
            hops.append(hop)
        delivered = [where.get((host, port_), f"{host}:{port_}")
                     for host, _i, _p, fate in fabric.hops for port_ in fate.ports()
                     if port_ != tr.TUNNEL_OFPORT]
        return {"packet": tr.ofctl_flow(e.alloc.ofport[p.name], pkt), "from": f"{tenant}/{port}",
                "host": p.host, "hops": hops, "delivered": delivered,
                "agree": all(h["real"].get("agree") is not False for h in hops) if real else None}

    def verify(self, tenant: str | None = None, host: str | None = None) -> dict:
        """`nvctl verify`: isolation and policy proved over the flows installed now."""
        if tenant is not None and tenant not in self.tenants:
            raise unknown_tenant(tenant)
        if host is not None and host not in self.hosts:
            raise unknown_host(host, self.hosts)
        from controller.analysis import installed
        with self.mutex:  # one consistent view: intent and the switches, read together
            view = installed.View(self._placement(), {n: (e.tenant, e.alloc) for n, e in self.tenants.items()},
                                  dict(self.hosts), {h: st.session for h, st in self.state.items()},
                                  {h: self.desired.get(h, {}) for h in self.hosts})
            got = installed.read(view)
        r = installed.verify(view, got, tenant, host)
        if host is None:
            self.verified[tenant or ""] = (time.time(), bool(r.get("ok")), len(r.get("violations") or ()))
        return r

    def verify_changes(self, after: int = 0, tenant: str | None = None) -> dict:
        """Verify before install's results (controller.server.guard) after sequence `after`."""
        if tenant is not None and tenant not in self.tenants:
            raise unknown_tenant(tenant)
        return self.guard.since(after, tenant)

    def port_info(self, tenant: str, port: str) -> dict:
        """Where a port is and whether it is up: bound to an interface with its iface-id
        at its ofport on its host; `seen` says where else its iface-id was found."""
        e, p = self._port(tenant, port)
        self.interfaces_settled({p.host})
        return {"tenant": tenant, "port": port, "host": p.host, "ip": str(p.ip), "mac": p.mac,
                "ofport": e.alloc.ofport[port], **self.port_binding(tenant, e, p),
                **self._workload_fields(tenant, e, p)}

    def flows(self, host: str, read_switch: bool = True) -> dict:
        if host not in self.hosts:
            raise unknown_host(host, self.hosts)
        st = self.state[host]
        on_switch = None
        if read_switch and st.session is not None:
            try:
                on_switch = {f.identity: f for f in st.session.flows()}
            except Exception as e:
                raise ApiError(f"host {host}: could not read flows: {e}") from None
        names = self._tenant_names()
        desired = self.desired.get(host, {})
        rows = []
        for f in sorted(desired.values(), key=lambda f: (f.table.number, -f.priority, f.body)):
            got = None if on_switch is None else on_switch.get(f.identity)
            rows.append({"table": f.table.name, "layer": f.table.layer, "cookie": f"{f.cookie:#x}",
                         "tenant": names.get(f.tenant_id, ""), "rule": f.rule, "flow": f.body,
                         "installed": None if on_switch is None else got == f,
                         **({"on_switch": got.ofctl()} if got is not None and got != f else {})})
        extra = []
        if on_switch is not None:
            for i, f in sorted(on_switch.items(), key=lambda kv: (kv[0][0], -kv[0][1], kv[1].body)):
                if i not in desired:
                    layer = LAYER_BY_ID.get(cookie_layer(f.cookie))
                    extra.append({"cookie": f"{f.cookie:#x}", "table": f.table.name,
                                  "layer": layer.name if layer else "?", "flow": f.body,
                                  "tenant": names.get(cookie_tenant(f.cookie), "")})
        return {"host": host, "flows": rows, "unexpected": extra,
                "connected": st.session is not None}
