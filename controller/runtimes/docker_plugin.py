"""`nvctl docker-plugin`: a Docker remote network driver and IPAM driver that put
containers on a tenant's switch.

    nvctl docker-plugin &                         # /run/docker/plugins/nvctl.sock
    docker network create -d nvctl --ipam-driver nvctl \\
        -o tenant=blue -o switch=web --subnet 10.0.0.0/24 blue-web
    docker run --network blue-web ...

Docker finds the plugin by its socket's name in /run/docker/plugins and speaks HTTP
over it (POST, JSON in and out). What each call does here:

CreateNetwork    checks the network against the switch: its subnet must be the switch's
                 CIDR and its gateway the switch's router address; remembers tenant,
                 switch and host (options `-o tenant= -o switch= [-o host=]`) and the
                 labels every container of the network gets (`-o nvctl.label.KEY=VALUE`,
                 `-o nvctl.labels=K=V,K2=V2`)
CreateEndpoint   makes the container's port through the API (madeBy: docker, named "d"
                 and the endpoint id's first 12 characters) with the address Docker's
                 IPAM gave and its labels: the network's, and the endpoint's driver
                 options (`docker run --network name=NET,driver-opt=nvctl.label.K=V`,
                 `docker network connect --driver-opt nvctl.label.K=V NET C`), which win
                 on a key
Join             a veth from the port's host's br-int (OVSDB as for every port) to
                 Docker's namespace, with the port's MAC and MTU; Docker moves it into the
                 container as eth0 and routes through the switch's gateway (no second NIC
                 on docker_gwbridge: a switch without a router gets no default route)
Leave            removes the veth and its OVSDB port
DeleteEndpoint   deletes the port
DeleteNetwork    deletes any port of the network still left

The IPAM driver (`--ipam-driver nvctl`) takes addresses from nvctl's IPAM: an address is
held by the controller from RequestAddress until CreateEndpoint's port takes it, so a
`nvctl port add` at the same moment cannot get it. Docker asks for the pool before it
tells any driver which network it is for; the pool is bound to its network at
CreateNetwork (pools of one subnet are alike until then). With Docker's own IPAM the
network works too, as long as the addresses Docker picks are free on the switch (a port
of the tenant's YAML may have one: CreateEndpoint then fails and says so).

The plugin's record of networks, pools and endpoints is a JSON file (--state), so a
restarted plugin serves the networks Docker already has.
"""
from __future__ import annotations

import argparse
import hashlib
import ipaddress
import json
import logging
import os
import signal
import socket
import socketserver
import subprocess
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler

from controller.client.api import ApiClientError, call
from tep import container
from tep.ovs import DEFAULT_DB, Ovsdb, OvsError
from topology.schema import label_problem

LOG = logging.getLogger("nvctl.docker")
DEFAULT_SOCKET = "/run/docker/plugins/nvctl.sock"
CONTENT_TYPE = "application/vnd.docker.plugins.v1.2+json"
GATEWAY_REQUEST = "com.docker.network.gateway"  # RequestAddressType of the gateway's address
GENERIC = "com.docker.network.generic"  # where `docker network create -o` options arrive
OPTIONS = ("tenant", "switch", "host")
LABEL_OPTION = "nvctl.label."  # nvctl.label.KEY=VALUE: one label
LABELS_OPTION = "nvctl.labels"  # nvctl.labels=K=V,K2=V2: several (the single ones win on a key)


class PluginError(Exception):
    """An answer Docker shows to its user (as {"Err": ...})."""


def option_labels(opts: dict, where: str) -> dict:
    """The labels asked for in driver options: `nvctl.labels=K=V,K2=V2`, then each
    `nvctl.label.KEY=VALUE` (which wins on its key); other options are not looked at.
    Each is checked as the tenant YAML's labels are; a malformed or bad one is a
    PluginError naming the option and `where` it was given."""
    out: dict = {}
    for part in filter(None, str(opts.get(LABELS_OPTION) or "").split(",")):
        k, eq, v = part.partition("=")
        if not eq or not k:
            raise PluginError(f"nvctl: {where} {LABELS_OPTION}: {part!r} is not KEY=VALUE")
        out[k] = v
    for opt in sorted(opts):
        if opt.startswith(LABEL_OPTION):
            k = opt[len(LABEL_OPTION):]
            if not k:
                raise PluginError(f"nvctl: {where} {opt}: no label key (give {LABEL_OPTION}KEY=VALUE)")
            out[k] = "" if opts[opt] is None else opts[opt]
        elif opt.startswith("nvctl.") and opt != LABELS_OPTION:
            raise PluginError(f"nvctl: {where}: unknown option {opt!r}; nvctl's are {LABEL_OPTION}KEY=VALUE and "
                              f"{LABELS_OPTION}=K=V,...")
    for k, v in out.items():
        problem = label_problem(k, v)
        if problem:
            raise PluginError(f"nvctl: {where} label {k}={v}: the {problem[0]} {problem[1]}")
    return out


def port_name(endpoint_id: str) -> str:
    return "d" + endpoint_id[:12]


def veth_name(endpoint_id: str) -> str:
    """The container end of the veth while it is in Docker's namespace (15 characters)."""
    return "nvd" + hashlib.blake2b(endpoint_id.encode(), digest_size=6).hexdigest()


class DockerPlugin:
    """The driver's calls, by name; its record of networks, pools and endpoints."""

    def __init__(self, api: str, state_file: str, default_host: str | None = None, name: str = "nvctl"):
        self.api, self.state_file, self.name = api, state_file, name
        self.default_host = default_host or socket.gethostname()
        self.lock = threading.RLock()
        self.state = {"networks": {}, "pools": {}, "endpoints": {}}
        if os.path.exists(state_file):
            with open(state_file) as f:
                self.state.update(json.load(f))

    # record -------------------------------------------------------------------------
    def _save(self) -> None:
        tmp = f"{self.state_file}.tmp"
        with open(tmp, "w") as f:
            json.dump(self.state, f, indent=1, sort_keys=True)
        os.replace(tmp, self.state_file)

    def _call(self, op: str, **kw):
        try:
            return call(self.api, op, timeout=120, **kw)
        except ApiClientError as e:
            detail = "; ".join(f"{f}: {why}" for f, why in getattr(e, "errors", []) or [])
            raise PluginError(f"nvctl: {e}" + (f" ({detail})" if detail else "")) from None
        except OSError as e:
            raise PluginError(f"nvctl: the controller at {self.api} does not answer: {e}") from None

    def _network(self, nid: str) -> dict:
        net = self.state["networks"].get(nid)
        if net is None:
            raise PluginError(f"nvctl: network {nid[:12]} is not one of this plugin's")
        return net

    def dispatch(self, method: str, req: dict) -> dict:
        fn = self.METHODS.get(method)
        if fn is None:
            raise PluginError(f"nvctl: {method} is not implemented")
        with self.lock:
            return fn(self, req)

    # plugin ------------------------------------------------------------------------
    def activate(self, req):
        return {"Implements": ["NetworkDriver", "IpamDriver"]}

    def capabilities(self, req):
        return {"Scope": "local", "ConnectivityScope": "local"}

    def nothing(self, req):
        return {}

    # network driver ----------------------------------------------------------------
    def create_network(self, req):
        nid = req["NetworkID"]
        opts = (req.get("Options") or {}).get(GENERIC) or {}
        unknown = sorted(k for k in set(opts) - set(OPTIONS) if not k.startswith("nvctl."))
        if unknown:
            raise PluginError(f"nvctl: unknown option {unknown[0]!r}; the options are -o tenant=, -o switch=, "
                              f"-o host=, -o {LABEL_OPTION}KEY=VALUE, -o {LABELS_OPTION}=K=V,...")
        labels = option_labels(opts, "the network's option")
        for key in ("tenant", "switch"):
            if not opts.get(key):
                raise PluginError(f"nvctl: the network needs -o {key}=NAME (the tenant's switch it joins)")
        if req.get("IPv6Data"):
            raise PluginError("nvctl: IPv6 on Docker networks is not supported yet; create the network "
                              "without --ipv6")
        info = self._call("switch.info", tenant=opts["tenant"], switch=opts["switch"])
        v4 = req.get("IPv4Data") or []
        pools = {d.get("Pool") for d in v4}
        if pools != {info["cidr"]}:
            raise PluginError(f"nvctl: the network's subnet {', '.join(sorted(map(str, pools))) or '(none)'} is not "
                              f"switch {opts['tenant']}/{opts['switch']}'s {info['cidr']}: create it with "
                              f"--subnet {info['cidr']}")
        gw = (v4[0].get("Gateway") or "").split("/")[0]
        if info["gateway"] and gw != info["gateway"]:
            raise PluginError(f"nvctl: the network's gateway {gw or '(none)'} is not the switch's router "
                              f"{info['gateway']}: create it with --gateway {info['gateway']}")
        pool = next((pid for pid, p in sorted(self.state["pools"].items(), key=lambda kv: kv[1]["since"])
                     if p["pool"] == info["cidr"] and p["network"] is None), None)
        if pool is not None:
            self.state["pools"][pool]["network"] = nid
        self.state["networks"][nid] = {"tenant": opts["tenant"], "switch": opts["switch"],
                                       "host": opts.get("host") or self.default_host,
                                       "gateway": info["gateway"], "pool": pool, "labels": labels}
        self._save()
        LOG.info("network %s: %s/%s on %s (IPAM %s)", nid[:12], opts["tenant"], opts["switch"],
                 opts.get("host") or self.default_host, "nvctl" if pool else "Docker's")
        return {}

    def delete_network(self, req):
        nid = req["NetworkID"]
        net = self.state["networks"].get(nid)
        if net is None:
            return {}
        for eid in [e for e, ep in self.state["endpoints"].items() if ep["network"] == nid]:
            self._unplug(eid)
            self._delete_port(net, eid)
        del self.state["networks"][nid]
        self._save()
        return {}

    def create_endpoint(self, req):
        nid, eid = req["NetworkID"], req["EndpointID"]
        net = self._network(nid)
        iface = req.get("Interface") or {}
        if not iface.get("Address"):
            raise PluginError(f"nvctl: Docker gave the endpoint no IPv4 address (use --ipam-driver {self.name})")
        ip = iface["Address"].split("/")[0]
        labels = {**(net.get("labels") or {}), **option_labels(req.get("Options") or {}, "the endpoint's driver-opt")}
        try:
            r = self._call("port.add", tenant=net["tenant"], switch=net["switch"], name=port_name(eid), ip=ip,
                           mac=iface.get("MacAddress") or None, host=net["host"], workload=False,
                           made_by="docker", container_id=eid, labels=labels or None)
        except PluginError as e:
            hint = "" if net["pool"] else f"; Docker's own IPAM picked it: create the network with --ipam-driver {self.name}"
            raise PluginError(f"{e}{hint}") from None
        self.state["endpoints"][eid] = {"network": nid, "port": port_name(eid)}
        self._save()
        att = r["port"]
        LOG.info("endpoint %s: port %s/%s %s %s on %s", eid[:12], net["tenant"], att["name"], att["ip"],
                 att["mac"], att["host"])
        return {"Interface": {} if iface.get("MacAddress") else {"MacAddress": att["mac"]}}

    def _attachment(self, eid: str) -> tuple[dict, dict]:
        ep = self.state["endpoints"].get(eid)
        if ep is None:
            raise PluginError(f"nvctl: endpoint {eid[:12]} is not one of this plugin's")
        net = self._network(ep["network"])
        return net, self._call("port.attachment", tenant=net["tenant"], port=ep["port"])

    def oper_info(self, req):
        net, att = self._attachment(req["EndpointID"])
        return {"Value": {"tenant": net["tenant"], "switch": net["switch"], "port": att["name"],
                          "host": att["host"], "ip": att["ip"], "mac": att["mac"]}}

    def join(self, req):
        eid = req["EndpointID"]
        net, att = self._attachment(eid)
        name = veth_name(eid)
        try:
            container.veth_for_runtime(att.get("host_netns"), att["host_ifname"], name, att["mac"], att["mtu"])
            Ovsdb(att.get("host_ovsdb") or DEFAULT_DB).plug(
                att["host_ifname"], None,
                {"iface-id": att["iface_id"], "nvctl-tenant": net["tenant"], "nvctl-port": att["name"],
                 "attached-mac": att["mac"], "nvctl-docker-endpoint": eid})
        except (OvsError, OSError) as e:
            self._unplug(eid)
            raise PluginError(f"nvctl: plugging {net['tenant']}/{att['name']} failed: {e}") from None
        self._wait_bound(net["tenant"], att["name"])
        out = {"InterfaceName": {"SrcName": name, "DstPrefix": "eth"}}
        if att.get("gateway"):
            out["Gateway"] = att["gateway"]
        else:
            out["DisableGatewayService"] = True  # no docker_gwbridge NIC: the tenant's switch only
        return out

    def _wait_bound(self, tenant: str, port: str, limit: float = 5.0) -> None:
        """Until the controller has bound the port to the interface just plugged (by its
        iface-id; ~0.1 s), so the container's first packets are not dropped; after
        `limit` s Docker gets its answer anyway (the binding follows)."""
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            try:
                if self._call("port.info", tenant=tenant, port=port).get("up"):
                    return
            except PluginError:
                return
            time.sleep(0.1)

    def _unplug(self, eid: str) -> None:
        ep = self.state["endpoints"].get(eid)
        if ep is None or ep["network"] not in self.state["networks"]:
            return
        try:
            _, att = self._attachment(eid)
        except PluginError:
            return  # the port is gone, and its host end with it
        container.unplug_container("", "", att.get("host_netns"), att["host_ifname"])
        subprocess.run(["ip", "link", "del", veth_name(eid)], capture_output=True)  # if Docker left it here
        try:
            Ovsdb(att.get("host_ovsdb") or DEFAULT_DB).unplug(att["host_ifname"], wait=False)
        except OvsError:
            pass

    def leave(self, req):
        self._unplug(req["EndpointID"])
        return {}

    def _delete_port(self, net: dict, eid: str) -> None:
        ep = self.state["endpoints"].pop(eid, None)
        if ep is None:
            return
        try:
            self._call("port.del", tenant=net["tenant"], port=ep["port"])
        except PluginError as e:
            if "has no port" not in str(e) and "no tenant" not in str(e):
                self.state["endpoints"][eid] = ep
                raise

    def delete_endpoint(self, req):
        eid = req["EndpointID"]
        ep = self.state["endpoints"].get(eid)
        if ep is None:
            return {}
        net = self.state["networks"].get(ep["network"])
        if net is not None:
            self._unplug(eid)
            self._delete_port(net, eid)
        else:
            self.state["endpoints"].pop(eid)
        self._save()
        return {}

    # IPAM driver -------------------------------------------------------------------
    def ipam_capabilities(self, req):
        return {"RequiresMACAddress": False, "RequiresRequestReplay": False}

    def address_spaces(self, req):
        return {"LocalDefaultAddressSpace": "nvctl", "GlobalDefaultAddressSpace": "nvctl-global"}

    def request_pool(self, req):
        if req.get("V6"):
            raise PluginError("nvctl: IPv6 pools are not supported yet; create the network without --ipv6")
        if not req.get("Pool"):
            raise PluginError("nvctl: give the switch's CIDR as --subnet (the IPAM driver serves a tenant's switch)")
        if req.get("SubPool"):
            raise PluginError("nvctl: --ip-range is not supported: addresses come from the whole switch")
        try:
            pool = str(ipaddress.ip_network(req["Pool"]))
        except ValueError:
            raise PluginError(f"nvctl: --subnet {req['Pool']!r} is not a network address") from None
        pid = f"nvctl-{uuid.uuid4().hex[:12]}"
        self.state["pools"][pid] = {"pool": pool, "network": None, "since": time.time()}
        self._save()
        return {"PoolID": pid, "Pool": pool, "Data": {}}

    def release_pool(self, req):
        if self.state["pools"].pop(req.get("PoolID", ""), None) is not None:
            self._save()
        return {}

    def request_address(self, req):
        pool = self.state["pools"].get(req.get("PoolID", ""))
        if pool is None:
            raise PluginError(f"nvctl: no pool {req.get('PoolID')!r}")
        net = ipaddress.ip_network(pool["pool"])
        if (req.get("Options") or {}).get("RequestAddressType") == GATEWAY_REQUEST:
            # asked before the network is known; CreateNetwork checks it against the switch
            ip = req.get("Address") or str(next(net.hosts()))
            return {"Address": f"{ip}/{net.prefixlen}", "Data": {}}
        if pool["network"] is None:
            raise PluginError("nvctl: this pool belongs to no network yet")
        n = self._network(pool["network"])
        held = self._call("ipam.hold", tenant=n["tenant"], switch=n["switch"], ip=req.get("Address") or None)
        return {"Address": f"{held['ip']}/{held['prefixlen']}", "Data": {}}

    def release_address(self, req):
        pool = self.state["pools"].get(req.get("PoolID", ""))
        if pool is not None and pool["network"] in self.state["networks"]:
            n = self.state["networks"][pool["network"]]
            self._call("ipam.release", tenant=n["tenant"], switch=n["switch"], ip=req["Address"].split("/")[0])
        return {}

    METHODS = {
        "Plugin.Activate": activate,
        "NetworkDriver.GetCapabilities": capabilities,
        "NetworkDriver.CreateNetwork": create_network,
        "NetworkDriver.DeleteNetwork": delete_network,
        "NetworkDriver.AllocateNetwork": nothing,
        "NetworkDriver.FreeNetwork": nothing,
        "NetworkDriver.CreateEndpoint": create_endpoint,
        "NetworkDriver.EndpointOperInfo": oper_info,
        "NetworkDriver.DeleteEndpoint": delete_endpoint,
        "NetworkDriver.Join": join,
        "NetworkDriver.Leave": leave,
        "NetworkDriver.DiscoverNew": nothing,
        "NetworkDriver.DiscoverDelete": nothing,
        "NetworkDriver.ProgramExternalConnectivity": nothing,
        "NetworkDriver.RevokeExternalConnectivity": nothing,
        "IpamDriver.GetCapabilities": ipam_capabilities,
        "IpamDriver.GetDefaultAddressSpaces": address_spaces,
        "IpamDriver.RequestPool": request_pool,
        "IpamDriver.ReleasePool": release_pool,
        "IpamDriver.RequestAddress": request_address,
        "IpamDriver.ReleaseAddress": release_address,
    }


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        method = self.path.lstrip("/")
        t0 = time.monotonic()
        try:
            req = json.loads(body) if body.strip() else {}
            out = self.server.plugin.dispatch(method, req or {})
        except PluginError as e:
            out = {"Err": str(e)}
        except (ValueError, KeyError, TypeError) as e:
            out = {"Err": f"nvctl: bad request to {method}: {e!r}"}
        except Exception as e:  # noqa: BLE001 - Docker shows it; the plugin keeps serving
            LOG.exception("%s failed", method)
            out = {"Err": f"nvctl: {method} failed: {e}"}
        LOG.info("%s %.0f ms%s", method, (time.monotonic() - t0) * 1000,
                 f" -> error: {out['Err']}" if "Err" in out else "")
        data = json.dumps(out).encode()
        self.send_response(200)
        self.send_header("Content-Type", CONTENT_TYPE)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, fmt, *args):  # a Unix socket has no client address; our own log
        LOG.debug(fmt, *args)


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


def serve(plugin: DockerPlugin, path: str) -> None:
    """Serve Docker on `path` until SIGTERM or SIGINT; the socket goes at the end."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    if os.path.exists(path):
        probe = socket.socket(socket.AF_UNIX)
        try:
            probe.connect(path)
            raise SystemExit(f"nvctl docker-plugin: {path} is served by another process")
        except OSError:
            os.unlink(path)  # left by a plugin that died
        finally:
            probe.close()
    server = _Server(path, _Handler)
    server.plugin = plugin

    def stop(*_):
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    LOG.info("serving Docker on %s (driver name %r), controller %s", path,
             os.path.basename(path).removesuffix(".sock"), plugin.api)
    try:
        server.serve_forever()
    finally:
        server.server_close()
        if os.path.exists(path):
            os.unlink(path)
        LOG.info("stopped")


def main(argv=None, state_dir: str | None = None) -> int:
    ap = argparse.ArgumentParser(prog="nvctl docker-plugin")
    add_arguments(ap)
    ap.add_argument("--credential", metavar="FILE",
                    help="reach the controller's network API with this credential (a joined host's)")
    a = ap.parse_args(argv)
    return run(a, state_dir or "/var/lib/nvctl")


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--socket", default=DEFAULT_SOCKET,
                    help=f"where Docker finds the plugin (default {DEFAULT_SOCKET}); the file's name is the "
                         f"driver's name: -d nvctl, --ipam-driver nvctl")
    ap.add_argument("--host", help="the host a network's containers go on unless -o host= says (default: the "
                                   "host registered as this machine's name)")
    ap.add_argument("--state", help="the plugin's record of networks and endpoints (default: "
                                    "docker-<driver>.json in the state directory)")


def run(a, state_dir: str) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s docker-plugin %(levelname)s %(message)s")
    name = os.path.basename(a.socket).removesuffix(".sock")
    state = a.state or os.path.join(state_dir, f"docker-{name}.json")
    api = os.path.join(state_dir, "nvctl.sock")
    cred = getattr(a, "credential", None) or os.environ.get("NVCTL_CREDENTIAL")
    host = a.host
    if cred:  # on a joined host: the controller's network API, as that host
        from controller.client.api import load_credential
        api = load_credential(cred)
        if host is None and (api.role or "").startswith("host:"):
            host = api.role.split(":", 1)[1]
    plugin = DockerPlugin(api, state, host, name)
    serve(plugin, a.socket)
    return 0


if __name__ == "__main__":
    sys.exit(main())
