"""`nvctl host join`: make this machine's Open vSwitch a tunnel endpoint of a controller.

Run on the host, with the join bundle the operator made on the controller
(`nvctl host invite NAME --pa PA`). Steps, each idempotent:

  1. install the host's key, certificate and the controller's CA (TLS bundles);
  2. br-phy on --uplink with the PA on it (the userspace datapath's tunnels leave
     through an OVS bridge); without --uplink the PA must already be on this machine;
  3. br-int: secure fail mode, the datapath id the controller assigned, the VXLAN port
     on the PA, the controller as ssl:IP:PORT (tcp: for an --insecure bundle);
  4. ovsdb-server listens on pssl:6640 (ptcp: when insecure) so the controller can
     check this host and plug workloads;
  5. ask the controller to register us over the join API (TLS, client certificate);
  6. keep the host credential the controller answers with (role host:NAME, mode 0600,
     default /etc/nvctl/host.cred): the runtimes on this host (nvctl-cni, nvctl
     docker-plugin) reach the controller's network API with it;
  7. wait until the controller reports our switch connected and its flows installed.
"""
from __future__ import annotations

import ipaddress
import json
import os
import time

from pyroute2 import IPRoute

from tep.ovs import (DEFAULT_DB, INTEGRATION_BRIDGE, OVSDB_PORT, PHYSICAL_BRIDGE, TUNNEL_OFPORT,  # noqa: F401
                     Ovsdb, OvsError, quiet_uplink, run)

BUNDLE_KEYS = ("name", "pa", "dpid", "token", "tls", "controller")
EXTERNAL_OFPORT = 2  # a provider network's interface on br-int (the lab uses the same number)


class JoinError(RuntimeError):
    pass


def load_bundle(path: str) -> dict:
    try:
        with open(path) as f:
            b = json.load(f)
    except OSError as e:
        raise JoinError(f"cannot read the join bundle {path}: {e.strerror}") from None
    except ValueError as e:
        raise JoinError(f"{path} is not a join bundle (not JSON: {e})") from None
    missing = [k for k in BUNDLE_KEYS if k not in b] + \
              ([k for k in ("key", "cert", "ca") if k not in b] if b.get("tls") else [])
    if missing:
        raise JoinError(f"{path} is not a join bundle: missing {', '.join(missing)}")
    return b


def install_credentials(b: dict, pki_dir: str) -> tuple[str, str, str]:
    """Write key, certificate and CA (mode 0600); return their paths."""
    os.makedirs(pki_dir, mode=0o700, exist_ok=True)
    paths = tuple(os.path.join(pki_dir, f"{b['name']}-{what}.pem") for what in ("privkey", "cert", "cacert"))
    for path, text in zip(paths, (b["key"], b["cert"], b["ca"])):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
    return paths  # type: ignore[return-value]


def _pa_on_bridge(pa: str, prefixlen: int) -> None:
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=PHYSICAL_BRIDGE)
        deadline = time.monotonic() + 10
        while not found:  # ovs-vswitchd creates the device shortly after the transaction
            if time.monotonic() > deadline:
                raise JoinError(f"{PHYSICAL_BRIDGE} did not appear; is ovs-vswitchd running?")
            time.sleep(0.05)
            found = ipr.link_lookup(ifname=PHYSICAL_BRIDGE)
        idx = found[0]
        if not any(a.get_attr("IFA_ADDRESS") == pa for a in ipr.get_addr(index=idx, family=2)):
            ipr.addr("add", index=idx, address=pa, prefixlen=prefixlen)
        ipr.link("set", index=idx, state="up")


def _local_addresses() -> set[str]:
    with IPRoute() as ipr:
        return {a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(family=2)}


def _uplink_mtu(uplink: str) -> int:
    with IPRoute() as ipr:
        idx = ipr.link_lookup(ifname=uplink)
        if not idx:
            raise JoinError(f"--uplink {uplink}: no such interface on this host")
        return ipr.get_links(idx[0])[0].get_attr("IFLA_MTU")


def join(b: dict, *, connect, db_remote: str = DEFAULT_DB, uplink: str | None = None, prefixlen: int = 24,
         pki_dir: str = "/etc/nvctl/pki", datapath_type: str | None = None, timeout: float = 60,
         credential_path: str = "/etc/nvctl/host.cred", provider: tuple[str, str] | None = None,
         log=print) -> dict:
    """Join this host to the controller the bundle names. `connect(creds)` returns the
    controller's join API as a function `api(op, **args)` (TLS with `creds` = (key,
    certificate, CA) files, or plain TCP for None) that raises JoinError when refused;
    the command line passes one built on controller.client.api, so tep imports nothing of the
    controller's API."""

    name, pa, dpid, ctl = b["name"], b["pa"], int(b["dpid"]), b["controller"]
    ipaddress.IPv4Address(pa)
    db = Ovsdb(db_remote)
    try:
        db.vsctl("show", timeout=5)
    except OvsError as e:
        raise JoinError(f"no Open vSwitch answers at {db_remote} (install openvswitch-switch and start "
                        f"it, or give --db): {e}") from None
    dp_type = datapath_type or ("system" if os.path.isdir("/sys/module/openvswitch") else "netdev")

    creds = install_credentials(b, pki_dir) if b["tls"] else None
    if creds:
        log(f"[join] {name}: key and certificate in {pki_dir} (CN {name}, signed by the controller's CA)")

    mtu = _uplink_mtu(uplink) if uplink else None
    if uplink:
        db.ensure_physical_bridge(uplink, mtu, dp_type)
        quiet_uplink(uplink)
        _pa_on_bridge(pa, prefixlen)
        log(f"[join] {name}: {PHYSICAL_BRIDGE} on {uplink}, PA {pa}/{prefixlen}")
    elif pa not in _local_addresses():
        raise JoinError(f"PA {pa} is not an address of this host: give --uplink IFACE to put it on "
                        f"{PHYSICAL_BRIDGE}, or configure it first")

    every = b.get("controllers") or [ctl]  # a cluster: every member (the leader takes the master role)
    if b["tls"]:
        db.vsctl("set-ssl", *creds)
        targets, manager = [f"ssl:{c['ip']}:{c['of_tls_port']}" for c in every], f"pssl:{OVSDB_PORT}"
    else:
        targets, manager = [f"tcp:{c['ip']}:{c['of_port']}" for c in every], f"ptcp:{OVSDB_PORT}"
    target = ", ".join(targets)
    db.ensure_integration_bridge(dpid, targets, pa, TUNNEL_OFPORT, dp_type)
    for uuid in db.vsctl("--bare", "--columns=_uuid", "list", "Controller").split():
        db.vsctl("set", "controller", uuid, "max_backoff=1000", "inactivity_probe=5000")  # a failover: seconds
    db.vsctl("set-manager", manager)
    log(f"[join] {name}: {INTEGRATION_BRIDGE} dpid {dpid:016x} ({dp_type}), VXLAN on {pa}, "
        f"controller {target}, OVSDB {manager}")

    networks, address = None, None
    if provider is not None:  # (NAME, IFACE[, ADDRESS]): IFACE reaches provider network NAME
        net, iface, *rest = provider
        address = rest[0] if rest and rest[0] else None
        if not os.path.exists(f"/sys/class/net/{iface}"):
            raise JoinError(f"--provider-network {net}={iface}: this host has no interface {iface}")
        quiet_uplink(iface)  # OVS carries its frames; the kernel keeps out of its ARP
        run(["ip", "link", "set", "dev", iface, "up"])
        db.plug(iface, EXTERNAL_OFPORT, {"nvctl-role": "external", "nvctl-provider": net})
        networks = {net: EXTERNAL_OFPORT}
        log(f"[join] {name}: provider network {net} on {iface} ({INTEGRATION_BRIDGE} port {EXTERNAL_OFPORT})")

    api = connect(creds)
    res = api("host.join", token=b["token"], mtu=mtu,  # workloads' MTU follows the uplink's
              **({"provider_networks": networks} if networks else {}),
              **({"provider_address": address} if address else {}))
    log(f"[join] {name}: registered with the controller at {ctl['ip']}:{ctl['api_port']} "
        f"({'TLS' if creds else 'plain TCP'}); it checked this host over {res['ovsdb']}")
    cred = res.pop("credential", None)
    if cred:
        os.makedirs(os.path.dirname(os.path.abspath(credential_path)), mode=0o700, exist_ok=True)
        fd = os.open(credential_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(cred, f, indent=1)
        res["credential"] = credential_path
        log(f"[join] {name}: host credential {cred['name']} ({cred['role']}) in {credential_path} for the "
            f"runtimes; network API {', '.join(cred.get('servers') or [])}")

    deadline = time.monotonic() + timeout
    t0 = time.monotonic()
    while True:
        st = api("host.self", token=b["token"])
        if st["connected"] and st["in_sync"]:
            log(f"[join] {name}: OpenFlow connected, {st['flows_desired']} flows installed "
                f"({time.monotonic() - t0:.1f}s)")
            return {**res, **st}
        if time.monotonic() > deadline:
            raise JoinError(f"registered, but the switch is {'connected' if st['connected'] else 'not connected'}"
                            f"{' and not in sync' if st['connected'] else ''} after {timeout:.0f}s"
                            f"{': ' + st['error'] if st.get('error') else ''}")
        time.sleep(0.2)
