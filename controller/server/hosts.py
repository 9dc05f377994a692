"""Hosts: registration, invitations, joining over the network, admission of switches, MTUs.

A piece of `Core` (controller/server/core.py): the state it uses is made in
`Core.__init__`."""
from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
import secrets

from controller.compile.compiler import DEFAULT_UPLINK_MTU, VXLAN_OVERHEAD
from controller.state.store import HostRecord
from controller.spaces.ids import FIRST_OFPORT
from controller.server.errors import ApiError
from controller.server import change as change_path
from controller.server.change import HostRegistration
from tep.ovs import DPID_PREFIX, INTEGRATION_BRIDGE, OVSDB_PORT, TUNNEL_PORT_NAME, Ovsdb, OvsError

HOST_NAME = re.compile(r"^[a-z][a-z0-9-]{0,31}$")


class HostsMixin:
    def register_host(self, name: str, pa: str, dpid: int, info: dict) -> dict:
        return change_path.run(self, HostRegistration(HostRecord(name, pa, dpid, info)), lock=self.mutex)

    def invite_host(self, name: str, pa: str, tls: bool = True, workloads: dict | None = None) -> dict:
        """Allow one host to join: record its name, PA and datapath id, and return the
        join bundle it needs (a one-time token, and with TLS its own key and certificate
        signed by our switch CA plus the CA that signed ours). The bundle is a secret."""
        with self.mutex:
            if not HOST_NAME.match(name or ""):
                raise ApiError(f"host name {name!r}: use 1-32 of a-z, 0-9 and '-', starting with a letter")
            try:
                ipaddress.IPv4Address(pa)
            except ValueError:
                raise ApiError(f"host {name}: provider address (--pa) {pa!r} is not an IPv4 address") from None
            if name in self.hosts:
                raise ApiError(f"host {name} is already registered")
            invites = self.store.invites()
            for other, inv in invites.items():
                if other != name and inv["pa"] == pa:
                    raise ApiError(f"host {name}: PA {pa} is already invited as {other}")
            for h in self.hosts.values():
                if h.pa == pa:
                    raise ApiError(f"host {name}: PA {pa} is already used by {h.name}")
            if tls and self.pki is None:
                raise ApiError("this controller has no PKI (start it with --pki DIR), so it cannot "
                               "issue certificates; invite with --insecure for plain TCP")
            taken = {h.dpid for h in self.hosts.values()} | {i["dpid"] for i in invites.values()}
            dpid = DPID_PREFIX | int.from_bytes(hashlib.blake2b(name.encode(), digest_size=4).digest(), "big")
            while dpid in taken:
                dpid += 1
            inv = {"name": name, "pa": pa, "dpid": dpid, "token": secrets.token_hex(16), "tls": bool(tls),
                   "workloads": workloads or None}
            bundle = {**inv, "controller": dict(self.endpoints), "controllers": self._controllers()}
            if tls:
                key, cert = self.pki.sign_host(name)
                bundle.update(key=key, cert=cert, ca=self.pki.read(self.pki.controller_ca))
            self.store.put_invite(name, inv)
            return bundle

    def _controllers(self) -> list[dict]:
        """Where a joining host's br-int connects: every member of a cluster (the leader
        takes the master role on it), else this controller."""
        if self.cluster is None:
            return [dict(self.endpoints)]
        out = []
        for m in self.cluster.member_infos():
            if m.get("address"):
                out.append({"ip": m["address"], "of_port": m.get("of_port", self.endpoints.get("of_port")),
                            "of_tls_port": m.get("of_tls_port", self.endpoints.get("of_tls_port")),
                            "api_port": m.get("api_port", self.endpoints.get("api_port"))})
        return out or [dict(self.endpoints)]

    def _invitation(self, token: str, peer_name: str | None) -> dict:
        inv = next((i for i in self.store.invites().values()
                    if hmac.compare_digest(i["token"], str(token or ""))), None)
        if inv is None:
            raise ApiError("refused: no invitation matches this join token "
                           "(the operator runs 'nvctl host invite NAME --pa PA' first)")
        if inv["tls"] and peer_name != inv["name"]:
            raise ApiError(f"refused: host {inv['name']} was invited with TLS, but this connection "
                           f"{'is plain TCP' if peer_name is None else 'presents a certificate for ' + repr(peer_name)}")
        return inv

    def join_host(self, token: str, peer_ip: str, peer_name: str | None, mtu: int | None = None,
                  provider_networks: dict | None = None, provider_address: str | None = None) -> dict:
        """A host asks to join (called by the network API with the connection's facts).
        Refused unless an invitation matches its token and, with TLS, its certificate's
        name; then its OVS is checked over OVSDB before it is registered."""
        inv = self._invitation(token, peer_name)
        name = inv["name"]
        if name in self.hosts and self.hosts[name].info.get("mgmt") not in (None, peer_ip):
            raise ApiError(f"refused: host {name} has already joined from {self.hosts[name].info['mgmt']}")
        remote = f"{'ssl' if inv['tls'] else 'tcp'}:{peer_ip}:{OVSDB_PORT}"
        tls = [self.pki.ctl_key, self.pki.ctl_cert, self.pki.switch_ca] if inv["tls"] else None
        db = Ovsdb(remote, tuple(tls) if tls else None)
        try:
            got_dpid = db.vsctl("get", "bridge", INTEGRATION_BRIDGE, "other-config:datapath-id",
                                timeout=10).strip().strip('"')
            got_ip = db.vsctl("get", "interface", TUNNEL_PORT_NAME, "options:local_ip",
                              timeout=10).strip().strip('"')
        except OvsError as e:
            raise ApiError(f"host {name}: cannot read its OVS over OVSDB at {remote}: {e}") from None
        if int(got_dpid, 16) != inv["dpid"] or got_ip != inv["pa"]:
            raise ApiError(f"host {name}: its br-int has datapath-id {got_dpid} and tunnel IP {got_ip}, "
                           f"expected {inv['dpid']:016x} and {inv['pa']}")
        external = self._provider_network(name, provider_networks) if provider_networks else None
        if provider_address is not None:
            if external is None:
                raise ApiError(f"host {name}: a provider-network address without a provider network",
                               [("provider_address", "give --provider-network NAME=IFACE@ADDRESS")])
            external["address"] = provider_address  # checked with the registration (peers.check_host_address)
        info = {"kind": "lab" if inv["workloads"] else "remote", "joined": True, "tls": inv["tls"],
                **({"mtu": mtu} if mtu is not None else {}),  # checked with the registration
                **({"external": external} if external else {}),
                "mgmt": peer_ip, "ovsdb": remote, **({"ovsdb_tls": tls} if tls else {}),
                **(inv["workloads"] or {})}
        self.register_host(name, inv["pa"], inv["dpid"], info)
        out = {"host": name, "pa": inv["pa"], "dpid": f"{inv['dpid']:016x}", "ovsdb": remote}
        if self.endpoints.get("api_urls") or (self.cluster is not None and self.cluster.api_urls()):
            out["credential"] = self.host_credential(name)  # for the runtimes on the host (role host:NAME)
        return out

    def _provider_network(self, host: str, networks: dict) -> dict:
        """A joining host's provider network {NAME: its ofport on br-int}: the network's
        facts (prefix, next hop and its MAC) are those the hosts already on it have."""
        if len(networks) != 1:
            raise ApiError(f"host {host}: {len(networks)} provider networks; one per host is supported",
                           [("provider_networks", "give one NAME=IFACE")])
        (net, ofport), = networks.items()
        if not isinstance(ofport, int) or not 1 <= ofport < FIRST_OFPORT:
            raise ApiError(f"host {host}: provider network {net}: ofport {ofport!r} is not an infrastructure "
                           f"port (1..{FIRST_OFPORT - 1})", [(f"provider_networks.{net}", "an ofport")])
        known = {}
        for other in self.hosts.values():
            ext = other.info.get("external")
            if ext and other.name != host:
                known.setdefault(ext.get("name", "external"), ext)
        facts = known.get(net)
        if facts is None:
            raise ApiError(f"host {host}: no host is on provider network {net!r} to take its facts from "
                           f"(known: {', '.join(sorted(known)) or 'none'})",
                           [(f"provider_networks.{net}", "unknown provider network")])
        return {**{k: v for k, v in facts.items() if k not in ("ofport", "peer_port", "address")},
                "name": net, "ofport": ofport}

    def admit(self, dpid: int, peer_name: str | None) -> bool:
        """May this OpenFlow connection speak for datapath `dpid`? A host that joined
        with TLS must present its own certificate; a certificate never speaks for
        another host's datapath."""
        host = self.host_of_dpid(dpid)
        if host is None:
            inv = next((i for i in self.store.invites().values() if i["dpid"] == dpid), None)
            return inv is None or not inv["tls"] or peer_name == inv["name"]
        if self.hosts[host].info.get("tls") or peer_name is not None:
            return peer_name == host
        return True

    def host_self(self, token: str, peer_name: str | None) -> dict:
        """What a joined host may ask about itself."""
        name = self._invitation(token, peer_name)["name"]
        if name not in self.hosts:
            raise ApiError(f"host {name} is not registered")
        return {"name": name, **self.host_status(name)}

    def host_mtu(self, host: str) -> int:
        """The largest frame a workload on `host` may send into the overlay: its uplink's
        MTU less the encapsulation (VXLAN over IPv4: 50 bytes)."""
        rec = self.hosts.get(host)
        uplink = (rec.info.get("mtu") if rec else None) or DEFAULT_UPLINK_MTU
        return uplink - VXLAN_OVERHEAD
