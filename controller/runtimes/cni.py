"""`nvctl-cni`: a CNI plugin (spec 1.0/1.1) that puts a container on a tenant's switch.

A container runtime (podman, containerd, cnitool) runs it with CNI_COMMAND and friends
in the environment and the network configuration on stdin:

    {"cniVersion": "1.0.0", "name": "blue-web", "type": "nvctl-cni",
     "tenant": "blue", "switch": "web",
     "host": "hv2",                       optional: default, the credential's host, else the
                                          host named as this machine
     "credential": "/etc/nvctl/host.cred"}  the controller's network API with this
                                          credential (a joined host's: `nvctl host join`
                                          leaves it); or "stateDir": "/var/lib/nvctl" or
                                          "controller": the API socket's path, on the
                                          controller's own machine
     "ovsdb": "unix:/run/openvswitch/db.sock"  optional: this host's OVSDB (default
                                          Debian's)

ADD     makes a port for the container through the API (madeBy: cni; its name from
        K8S_POD_NAME, else "c" + the container id; IP= and MAC= in CNI_ARGS are honoured;
        labels from the network configuration's args.cni.labels and CNI_ARGS's
        NVCTL_LABELS=k=v,k2=v2),
        plugs a veth from the container's CNI_IFNAME into that host's br-int, sets the
        port's MAC, MTU, addresses and routes, and prints the result
DEL     unplugs and deletes the port; idempotent, also when the namespace is gone
CHECK   compares the container's interface and the port with what ADD gave
VERSION the versions it speaks
STATUS  ready when the controller answers
GC      deletes this network's container ports whose attachment is not in
        cni.dev/valid-attachments

Errors are CNI error objects on stdout ({"code", "msg", "details"}) with exit status 1.
"""
from __future__ import annotations

import json
import os
import re
import socket
import sys

from controller.client.api import ApiClientError, call
from tep import container as workload
from tep.ovs import DEFAULT_DB, Ovsdb, OvsError

SUPPORTED = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]
# CNI spec error codes
E_VERSION, E_FIELD, E_UNKNOWN_CONTAINER, E_ENV, E_IO, E_DECODE, E_CONFIG, E_TRY_AGAIN = 1, 2, 3, 4, 5, 6, 7, 11
E_NOT_AVAILABLE = 50
E_CHECK = 100  # ours: CHECK found a difference


class CniError(Exception):
    def __init__(self, code: int, msg: str, details: str = ""):
        super().__init__(msg)
        self.code, self.msg, self.details = code, msg, details


def port_name(container_id: str, args: dict) -> str:
    """A port name for the container, stable across ADD/CHECK/DEL of one attachment."""
    pod = args.get("K8S_POD_NAME")
    if pod:
        name = re.sub(r"[^a-z0-9-]", "-", pod.lower()).strip("-")
        if name and name[0].isalpha():
            return name[:32]
    cid = re.sub(r"[^a-z0-9]", "", container_id.lower())
    if not cid:
        raise CniError(E_ENV, "CNI_CONTAINERID is empty")
    return "c" + cid[:31]


def request_labels(cfg: dict, args: dict) -> dict:
    """The labels the runtime asks for the container's port: the CNI convention's
    `args.cni.labels` in the network configuration ([{"key": K, "value": V}, ...]; in a
    conflist, or injected by the runtime), then CNI_ARGS's NVCTL_LABELS=K=V,K2=V2 (a
    container of its own: `cnitool` passes CNI_ARGS through), which wins on the same key.
    The controller checks them as it checks the YAML's."""
    out: dict = {}
    conv = ((cfg.get("args") or {}).get("cni") or {}).get("labels") if isinstance(cfg.get("args"), dict) else None
    for k, item in enumerate(conv or []):
        if not isinstance(item, dict) or not isinstance(item.get("key"), str) or "value" not in item:
            raise CniError(E_CONFIG, f"args.cni.labels[{k}]: must be {{\"key\": ..., \"value\": ...}}")
        out[item["key"]] = item["value"]
    for part in filter(None, args.get("NVCTL_LABELS", "").split(",")):
        k, eq, v = part.partition("=")
        if not eq or not k:
            raise CniError(E_ENV, f"CNI_ARGS: NVCTL_LABELS: {part!r} is not KEY=VALUE")
        out[k] = v
    return out


def parse_args(text: str) -> dict:
    """CNI_ARGS: 'IgnoreUnknown=1;IP=10.0.0.5;K8S_POD_NAME=web' -> dict."""
    out = {}
    for part in filter(None, (text or "").split(";")):
        if "=" not in part:
            raise CniError(E_ENV, f"CNI_ARGS: {part!r} is not KEY=VALUE")
        k, v = part.split("=", 1)
        out[k] = v
    return out


def _config(stdin: str) -> dict:
    try:
        cfg = json.loads(stdin)
    except ValueError as e:
        raise CniError(E_DECODE, "the network configuration is not JSON", str(e)) from None
    if not isinstance(cfg, dict):
        raise CniError(E_DECODE, "the network configuration is not a JSON object")
    version = cfg.get("cniVersion", "1.0.0")
    if version not in SUPPORTED:
        raise CniError(E_VERSION, f"cniVersion {version} is not supported", f"supported: {SUPPORTED}")
    for key in ("tenant", "switch"):
        if not isinstance(cfg.get(key), str) or not cfg[key]:
            raise CniError(E_CONFIG, f'the network configuration needs "{key}" (a string)')
    return cfg


_remotes: dict = {}


def _api_path(cfg: dict):
    """The unix socket, or with "credential" (else $NVCTL_CREDENTIAL) the network API."""
    cred = cfg.get("credential") or os.environ.get("NVCTL_CREDENTIAL")
    if cred:
        if cred not in _remotes:
            from controller.client.api import load_credential
            try:
                _remotes[cred] = load_credential(cred)
            except ApiClientError as e:
                raise CniError(E_CONFIG, str(e)) from None
        return _remotes[cred]
    if cfg.get("controller"):
        return cfg["controller"]
    state = cfg.get("stateDir") or os.environ.get("NVCTL_STATE_DIR") or "/var/lib/nvctl"
    return os.path.join(state, "nvctl.sock")


def _call(cfg: dict, op: str, **kw):
    try:
        return call(_api_path(cfg), op, timeout=120, **kw)
    except ApiClientError as e:
        if "no controller answers" in str(e):
            raise CniError(E_TRY_AGAIN, str(e)) from None
        code = E_CONFIG if "no tenant" in str(e) or "no switch" in str(e) else 101
        raise CniError(code, str(e), json.dumps(getattr(e, "errors", None) or [])) from None
    except OSError as e:
        raise CniError(E_TRY_AGAIN, f"the controller at {_api_path(cfg)} does not answer", str(e)) from None


def _env(*names: str) -> dict:
    missing = [n for n in names if not os.environ.get(n)]
    if missing:
        raise CniError(E_ENV, f"missing environment: {', '.join(missing)}")
    return {n: os.environ[n] for n in names}


def _ovsdb(att: dict, cfg: dict) -> Ovsdb:
    """The br-int of the port's host: the lab's per-host OVSDB, else this machine's
    ("ovsdb" in the configuration, else Debian's default socket)."""
    return Ovsdb(att.get("host_ovsdb") or cfg.get("ovsdb") or DEFAULT_DB)


def result(cfg: dict, att: dict, netns: str, ifname: str) -> dict:
    """The ADD result in the configuration's cniVersion."""
    old = cfg.get("cniVersion", "1.0.0").startswith("0.")
    ips = [{"address": f"{att['ip']}/{att['prefixlen']}", "interface": 1,
            **({"gateway": att["gateway"]} if att.get("gateway") else {}), **({"version": "4"} if old else {})}]
    routes = [{"dst": "0.0.0.0/0", "gw": att["gateway"]}] if att.get("gateway") else []
    if att.get("ip6"):
        ips.append({"address": f"{att['ip6']}/{att['prefixlen6']}", "interface": 1,
                    **({"gateway": att["gateway6"]} if att.get("gateway6") else {}),
                    **({"version": "6"} if old else {})})
        if att.get("gateway6"):
            routes.append({"dst": "::/0", "gw": att["gateway6"]})
    out = {"cniVersion": cfg.get("cniVersion", "1.0.0"),
           "interfaces": [{"name": att["host_ifname"], **({} if old else {"mtu": att["mtu"]})},
                          {"name": ifname, "mac": att["mac"], "sandbox": netns, **({} if old else {"mtu": att["mtu"]})}],
           "ips": ips, "routes": routes}
    if att.get("dns"):
        out["dns"] = {"nameservers": [att["dns"]], "domain": att["domain"], "search": [att["domain"]]}
    return out


def cmd_add(cfg: dict) -> dict:
    env = _env("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME")
    args = parse_args(os.environ.get("CNI_ARGS", ""))
    name = port_name(env["CNI_CONTAINERID"], args)
    api = _api_path(cfg)
    host = cfg.get("host") or (api.role.split(":", 1)[1] if getattr(api, "role", "").startswith("host:")
                               else socket.gethostname())
    if not os.path.exists(env["CNI_NETNS"]):
        raise CniError(E_ENV, f"CNI_NETNS {env['CNI_NETNS']} does not exist")
    try:
        att = _call(cfg, "port.attachment", tenant=cfg["tenant"], port=name)  # ADD again: the same port
    except CniError:
        att = _call(cfg, "port.add", tenant=cfg["tenant"], switch=cfg["switch"], name=name, host=host,
                    ip=args.get("IP", "auto"), mac=args.get("MAC"), workload=False, made_by="cni",
                    container_id=env["CNI_CONTAINERID"], labels=request_labels(cfg, args) or None)["port"]
    try:
        if workload.container_interface(env["CNI_NETNS"], env["CNI_IFNAME"]) is None:
            workload.plug_container(env["CNI_NETNS"], env["CNI_IFNAME"], att.get("host_netns"), att["host_ifname"],
                                    att["mac"], att["mtu"], att["ip"], att["prefixlen"], att.get("gateway"),
                                    att.get("ip6"), att.get("prefixlen6", 64), att.get("gateway6"))
        _ovsdb(att, cfg).plug(att["host_ifname"], None,
                         {"iface-id": att["iface_id"], "nvctl-tenant": cfg["tenant"], "nvctl-port": name,
                          "attached-mac": att["mac"], "nvctl-cni-container": env["CNI_CONTAINERID"]})
    except (OvsError, OSError) as e:  # nothing half-made stays: the port and its veth go
        _del(cfg, name, env["CNI_NETNS"], env["CNI_IFNAME"])
        raise CniError(E_IO, f"plugging {cfg['tenant']}/{name} failed", str(e)) from None
    _wait_bound(cfg, name)
    return result(cfg, att, env["CNI_NETNS"], env["CNI_IFNAME"])


BIND_WAIT = 5.0  # s: how long ADD waits for the controller to bind the new interface


def _wait_bound(cfg: dict, name: str) -> None:
    """Until the controller has bound the port to the interface just plugged (it finds
    it by iface-id, and may renumber it first: ~0.1 s), so the container's first packets
    are not dropped; after BIND_WAIT s the result is given anyway (the binding follows)."""
    import time
    deadline = time.monotonic() + BIND_WAIT
    while time.monotonic() < deadline:
        try:
            if _call(cfg, "port.info", tenant=cfg["tenant"], port=name).get("up"):
                return
        except CniError:
            return
        time.sleep(0.1)


def _del(cfg: dict, name: str, netns: str, ifname: str) -> None:
    try:
        att = _call(cfg, "port.attachment", tenant=cfg["tenant"], port=name)
    except CniError:
        att = None  # already gone: only the container's side may be left
    if att is not None and att.get("made_by") == "yaml":
        raise CniError(E_CONFIG, f"{cfg['tenant']}/{name} is a port of the tenant's YAML, not a container's")
    if att is not None:
        workload.unplug_container(netns, ifname, att.get("host_netns"), att["host_ifname"])
        try:
            _ovsdb(att, cfg).unplug(att["host_ifname"], wait=False)
        except OvsError:
            pass
        try:
            _call(cfg, "port.del", tenant=cfg["tenant"], port=name)
        except CniError as e:
            if "has no port" not in e.msg:
                raise
    elif netns:
        workload.unplug_container(netns, ifname, None, "")


def cmd_del(cfg: dict) -> None:
    env = _env("CNI_CONTAINERID", "CNI_IFNAME")
    args = parse_args(os.environ.get("CNI_ARGS", ""))
    _del(cfg, port_name(env["CNI_CONTAINERID"], args), os.environ.get("CNI_NETNS", ""), env["CNI_IFNAME"])


def cmd_check(cfg: dict) -> None:
    env = _env("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME")
    name = port_name(env["CNI_CONTAINERID"], parse_args(os.environ.get("CNI_ARGS", "")))
    try:
        att = _call(cfg, "port.attachment", tenant=cfg["tenant"], port=name)
    except CniError:
        raise CniError(E_UNKNOWN_CONTAINER, f"{cfg['tenant']} has no port {name} for this container") from None
    got = workload.container_interface(env["CNI_NETNS"], env["CNI_IFNAME"])
    if got is None:
        raise CniError(E_CHECK, f"{env['CNI_IFNAME']} is missing in {env['CNI_NETNS']}")
    want = {"mac": att["mac"], "mtu": att["mtu"], "address": f"{att['ip']}/{att['prefixlen']}"}
    if got["mac"] != want["mac"] or got["mtu"] != want["mtu"] or want["address"] not in got["addresses"]:
        raise CniError(E_CHECK, f"{env['CNI_IFNAME']} differs from port {cfg['tenant']}/{name}",
                       json.dumps({"want": want, "got": got}))
    prev = cfg.get("prevResult")
    if prev and [i.get("address") for i in prev.get("ips", [])][:1] != [want["address"]]:
        raise CniError(E_CHECK, "prevResult's address is not the port's", json.dumps(prev.get("ips")))


def cmd_status(cfg: dict) -> None:
    try:
        call(_api_path(cfg), "ping", timeout=5)
    except (OSError, ApiClientError) as e:
        raise CniError(E_NOT_AVAILABLE, f"the controller at {_api_path(cfg)} does not answer", str(e)) from None


def cmd_gc(cfg: dict) -> None:
    keep = {a.get("containerID") for a in cfg.get("cni.dev/valid-attachments", [])}
    show = _call(cfg, "tenant.show", name=cfg["tenant"])
    for p in show["spec"]["spec"]["ports"]:
        if p.get("madeBy") == "cni" and p["switch"] == cfg["switch"] and p.get("containerId") not in keep:
            _del(cfg, p["name"], "", "eth0")


def main(argv=None) -> int:
    command = os.environ.get("CNI_COMMAND", "")
    version = "1.1.0"
    try:
        if command == "VERSION":
            print(json.dumps({"cniVersion": version, "supportedVersions": SUPPORTED}))
            return 0
        if command not in ("ADD", "DEL", "CHECK", "STATUS", "GC"):
            raise CniError(E_ENV, f"CNI_COMMAND {command!r} is not one of ADD, DEL, CHECK, VERSION, STATUS, GC")
        text = sys.stdin.read()
        try:  # errors answer in the configuration's version, where it has a good one
            v = json.loads(text).get("cniVersion")
            version = v if v in SUPPORTED else version
        except (ValueError, AttributeError):
            pass
        cfg = _config(text)
        if command == "ADD":
            print(json.dumps(cmd_add(cfg)))
        elif command == "DEL":
            cmd_del(cfg)
        elif command == "CHECK":
            cmd_check(cfg)
        elif command == "STATUS":
            cmd_status(cfg)
        else:
            cmd_gc(cfg)
        return 0
    except CniError as e:
        print(json.dumps({"cniVersion": version, "code": e.code, "msg": e.msg, "details": e.details}))
        return 1


if __name__ == "__main__":
    sys.exit(main())
