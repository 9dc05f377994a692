"""Ports made by the API and runtimes, addresses held for them (IPAM), migration.

A piece of `Core` (controller/server/core.py): the state it uses is made in
`Core.__init__`."""
from __future__ import annotations

import ipaddress

from topology import schema
from controller.server.errors import ApiError, unknown_host, unknown_tenant
from controller.server import change as change_path
from controller.server.change import Migration, TenantChange
from controller.spaces.names import pending_name

HOLD_SECONDS = 60.0  # how long an address held for a runtime waits for its port


class PortsMixin:
    def _switch(self, tenant: str, switch: str):
        """(tenant entry, switch) or an ApiError naming what is missing."""
        e = self.tenants.get(tenant)
        if e is None:
            raise unknown_tenant(tenant)
        names = [s.name for s in e.tenant.switches]
        if switch not in names:
            raise ApiError(f"tenant {tenant} has no switch {switch!r}", [("--switch", f"one of {', '.join(names)}")])
        return e, e.tenant.switch(switch)

    def _held(self, tenant: str, switch: str) -> dict[str, float]:
        """The switch's addresses held for runtimes, the expired ones dropped (under the mutex)."""
        now = self.clock()
        held = self.holds.setdefault((tenant, switch), {})
        for ip in [ip for ip, until in held.items() if until <= now]:
            del held[ip]
        return held

    def switch_info(self, tenant: str, switch: str) -> dict:
        """What a runtime's network needs to agree with: the switch's CIDRs, gateway, MTU."""
        with self.mutex:
            e, sw = self._switch(tenant, switch)
            svc = e.tenant.service(switch)
            return {"tenant": tenant, "switch": switch, "cidr": str(sw.cidr),
                    "cidr6": str(sw.cidr6) if sw.cidr6 else None, "mtu": self.switch_mtus(e.tenant)[switch],
                    "gateway": str(svc.router) if svc.router else None}

    def ipam_hold(self, tenant: str, switch: str, ip: str | None = None, seconds: float = HOLD_SECONDS) -> dict:
        """An address of the switch kept for a runtime that makes the port next (Docker asks
        its IPAM driver before its network driver makes the endpoint): no `port add` and no
        other hold gets it until a port takes it, it is released, or `seconds` pass."""
        from topology import ipam
        with self.mutex:
            e, sw = self._switch(tenant, switch)
            held = self._held(tenant, switch)
            if ip is None:
                try:
                    addr = ipam.next_ipv4(e.tenant, switch, held)
                except ipam.AddressesExhausted as ex:
                    raise ApiError(f"tenant {tenant}: no address held", [("ip", str(ex))]) from None
            else:
                try:
                    addr = ipaddress.ip_address(ip)
                except ValueError:
                    raise ApiError(f"{ip!r} is not an IP address", [("ip", "not an address")]) from None
                if addr not in sw.cidr:
                    raise ApiError(f"{addr} is not in switch {switch}'s {sw.cidr}", [("ip", "outside the switch")])
                if addr in ipam.used_addresses(e.tenant, switch) or str(addr) in held:
                    raise ApiError(f"{addr} is in use on {tenant}/{switch}", [("ip", "in use")])
            held[str(addr)] = self.clock() + seconds
            return {"tenant": tenant, "switch": switch, "ip": str(addr), "prefixlen": sw.cidr.prefixlen,
                    "seconds": seconds}

    def ipam_release(self, tenant: str, switch: str, ip: str) -> dict:
        """Give back a held address (a port that took it keeps it)."""
        with self.mutex:
            return {"released": self.holds.get((tenant, switch), {}).pop(ip, None) is not None}

    def port_add(self, tenant: str, switch: str, name: str | None = None, ip: str = "auto",
                 mac: str | None = None, host: str | None = None, workload: bool | str = True,
                 ip6: str | None = None, made_by: str = "api", container_id: str | None = None,
                 labels: dict | None = None) -> dict:
        """A port made by the API: stored with the tenant (marked madeBy: api), with the
        lowest free address of the switch unless `ip` is given, on the least busy host
        unless `host` is, and every policy a YAML port of that switch gets."""
        from topology import ipam
        with self.mutex:
            e, _ = self._switch(tenant, switch)
            t = e.tenant
            held = self._held(tenant, switch)
            names = {p.name for p in t.ports}
            if name is None:
                name = next(f"{switch}-{k}" for k in range(1, len(names) + 2) if f"{switch}-{k}" not in names)
            elif name in names:
                raise ApiError(f"tenant {tenant} already has a port {name!r}", [("--name", "taken")])
            if host is None:
                if not self.hosts:
                    raise ApiError("no host is registered to put the port on")
                load = {h: 0 for h in self.hosts}
                for other in self.tenants.values():
                    for p in other.tenant.ports:
                        if p.host in load:
                            load[p.host] += 1
                host = min(sorted(load), key=load.get)
            if ip in (None, "auto"):
                try:
                    ip = str(ipam.next_ipv4(t, switch, held))
                except ipam.AddressesExhausted as ex:
                    raise ApiError(f"tenant {tenant}: no port added", [("--ip", str(ex))]) from None
            if made_by not in schema.MADE_BY or made_by == "yaml":
                raise ApiError(f"made_by {made_by!r}: one of {', '.join(schema.MADE_BY[1:])}")
            item = {"name": name, "switch": switch, "ip": ip, "host": host, "madeBy": made_by}
            if mac:
                item["mac"] = mac
            if ip6:
                item["ip6"] = ip6
            if workload is not True:  # false, or a kind: namespace, vm, none (checked as YAML's)
                item["workload"] = workload
            if labels:  # checked as YAML's: each bad one named with its key
                item["labels"] = labels
            if container_id:
                item["containerId"] = container_id
            doc = schema.to_doc(t)
            doc["spec"]["ports"].append(item)
            new_t = self._validated(doc, f"tenant {tenant}: port {name} is invalid; nothing was changed")
            out = change_path.run(self, TenantChange(e, new_t, f"added port {name}"))
            held.pop(ip, None)  # a held address, taken by its port
        out["port"] = self.port_attachment(tenant, name)
        return out

    def port_label(self, tenant: str, port: str, set: dict | None = None, remove: list | None = None) -> dict:
        """Set labels (`set`: key -> value) and take some away (`remove`: keys) on a
        port, as one change: the policies whose selectors it enters or leaves follow.
        A YAML port's labels come back with the next `tenant apply` of that YAML."""
        with self.mutex:
            e = self.tenants.get(tenant)
            if e is None:
                raise unknown_tenant(tenant)
            try:
                p = e.tenant.port(port)
            except KeyError:
                raise ApiError(f"tenant {tenant} has no port {port!r}", [("port", "unknown")]) from None
            labels = dict(p.labels)
            missing = [k for k in (remove or []) if k not in labels]
            if missing:
                raise ApiError(f"port {tenant}/{port} has no label {', '.join(map(repr, missing))}; nothing "
                               f"was changed", [(f"labels.{k}", "not set") for k in missing])
            for k in remove or []:
                labels.pop(k)
            labels.update(set or {})
            doc = schema.to_doc(e.tenant)
            for item in doc["spec"]["ports"]:
                if item["name"] == port:
                    if labels:
                        item["labels"] = labels
                    else:
                        item.pop("labels", None)
            new_t = self._validated(doc, f"tenant {tenant}: port {port}'s labels are invalid; nothing was changed")
            if new_t.port(port).labels == p.labels:
                return {"tenant": tenant, "port": port, "labels": labels, "changed": False}
            out = change_path.run(self, TenantChange(e, new_t, f"labelled port {port}"))
        out.update({"port": port, "labels": labels, "changed": True})
        return out

    def port_attachment(self, tenant: str, port: str) -> dict:
        """All that plugging the port's interface needs (a CNI plugin on its host): where
        (host, its br-int's OVSDB and namespace in the lab, ofport, iface-id, the host-side
        interface name) and what (MAC, addresses, MTU, gateways, DNS)."""
        from tep.driver import host_ifname
        e, p = self._port(tenant, port)
        t = e.tenant
        sw, svc = t.switch(p.switch), t.service(p.switch)
        rr = t.router_of(p.switch)
        info = self.hosts[p.host].info if p.host in self.hosts else {}
        return {"tenant": tenant, "name": port, "switch": p.switch, "host": p.host, "ip": str(p.ip),
                "prefixlen": sw.cidr.prefixlen, "mac": p.mac, "mtu": self.switch_mtus(t)[p.switch],
                "gateway": str(svc.router) if svc.router else None,
                **({"ip6": str(p.ip6), "prefixlen6": sw.cidr6.prefixlen,
                    "gateway6": str(rr[1].ip6) if rr and rr[1].ip6 else None} if p.ip6 else {}),
                "dns": str(svc.ip) if sw.dhcp else None, "domain": t.domain,
                "ofport": e.alloc.ofport[port], "iface_id": f"{tenant}/{port}", "workload": p.workload,
                "made_by": p.made_by, "container_id": p.container_id, "host_ifname": host_ifname(tenant, port),
                **self._workload_fields(tenant, e, p),
                "host_netns": info.get("netns"), "host_ovsdb": info.get("ovsdb") if info.get("netns") else None}

    def _workload_fields(self, tenant: str, e, p) -> dict:
        """What port.info and port.attachment say of a port's workload: its namespace or
        its VM's guest, and a migration's pending binding."""
        return {"namespace": self.driver.namespace(tenant, p.name, p.host) if p.workload and not p.vm else None,
                "vm": self._guest_info(tenant, p.name, p.host) if p.vm else None,
                **({"pending": p.pending, "pending_ofport": e.alloc.ofport.get(pending_name(p.name))}
                   if p.pending else {})}

    def _guest_info(self, tenant: str, port: str, host: str) -> dict | None:
        """Where a VM port's guest is reached on its host (the lab's): its agent and
        serial console sockets, its console log, whether QEMU runs."""
        g = self.driver.guest(tenant, port, host)
        if g is None:
            return None
        return {"name": g.name, "agent": g.path("agent"), "console": g.path("console"), "log": g.path("log"),
                "running": g.pid() is not None}

    def port_del(self, tenant: str, port: str) -> dict:
        """Remove a port (any port; one the YAML names comes back with the next apply)."""
        with self.mutex:
            e, p = self._port(tenant, port)
            doc = schema.to_doc(e.tenant)
            doc["spec"]["ports"] = [d for d in doc["spec"]["ports"] if d["name"] != port]
            new_t = self._validated(doc, f"tenant {tenant}: port {port} is still named by its policy; "
                                         f"nothing was changed")
            return change_path.run(self, TenantChange(e, new_t, f"deleted port {port}"))

    def migrate(self, tenant: str, port: str, to: str, prepare: bool = False,
                bandwidth_mbps: float | None = None) -> dict:
        """Move a port to another host: a namespace make-before-break
        (controller.server.change.Migration); a VM live, by QEMU, the network following
        its announcement (controller.server.vmmigrate), its copy at most `bandwidth_mbps`
        (QEMU's default: 128 MiB/s); `prepare`: only bind it pending on `to`, for a
        hypervisor that migrates it itself."""
        with self.mutex:
            e, p = self._port(tenant, port)
            if to not in self.hosts:
                raise unknown_host(to, self.hosts, "to")
            if not (p.vm or prepare or p.pending):
                return change_path.run(self, Migration(e, port, to))
        if bandwidth_mbps is not None and not 0 < bandwidth_mbps <= 100_000:
            raise ApiError(f"bandwidth_mbps {bandwidth_mbps!r} is not a rate in Mbit/s (0 < rate <= 100000)",
                           [("bandwidth_mbps", "out of range")])
        return self.migrate_vm(tenant, port, to, prepare, bandwidth_mbps)
