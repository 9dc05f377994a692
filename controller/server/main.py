"""Run the controller: `python -m controller.server.main --state-dir DIR [--listen IP] [--port N]`.

Wires the pieces: SQLite store -> core -> os-ken app (OpenFlow 1.3 on --listen:--port)
and the API on DIR/nvctl.sock. Logs to stderr (the lab sends it to DIR/controller.log).

For hosts on other machines (`nvctl host join`): with --pki DIR the controller also
listens for OpenFlow over TLS on --tls-port and for the join API over TLS on
--api-port, both requiring a host certificate signed by the PKI's switch CA. With
--insecure (and no --pki) the join API is plain TCP instead.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="nvctl-controller", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--state-dir", required=True, help="where the store and API socket live")
    ap.add_argument("--listen", default="0.0.0.0", help="OpenFlow listen address (default %(default)s)")
    ap.add_argument("--port", type=int, default=6653, help="OpenFlow TCP port (default %(default)s)")
    ap.add_argument("--pki", metavar="DIR", help="ovs-pki directory (see controller/transport/pki.py); "
                    "created if missing; enables OpenFlow and the join API over TLS")
    ap.add_argument("--tls-port", type=int, default=6654, help="OpenFlow over TLS (default %(default)s)")
    ap.add_argument("--api-port", type=int, default=6655, help="join API for remote hosts (default %(default)s)")
    ap.add_argument("--api-listen", metavar="ADDR:PORT",
                    help="serve the API over HTTPS + JSON here (needs --pki: TLS with the controller's CA; "
                         "callers authenticate with credentials, see 'nvctl credential issue')")
    ap.add_argument("--insecure", action="store_true",
                    help="without --pki: serve the join API over plain TCP (trusted networks only)")
    ap.add_argument("--store", default="sqlite",
                    help="where the desired state lives: sqlite (STATE_DIR/desired.db, one controller) or "
                         "etcd://HOST:PORT[,HOST:PORT...] (a cluster: one leader, the others follow)")
    ap.add_argument("--name", default="controller", help="this member's name in a cluster")
    ap.add_argument("--verify-changes", action=argparse.BooleanOptionalAction,
                    default=os.environ.get("NVCTL_VERIFY_CHANGES", "1") != "0",
                    help="prove every tenant change's compiled flows (isolation, shared state, network "
                         "policies) before anything is stored or sent, and refuse one that breaks them, with "
                         "its counterexample (default: on, unless NVCTL_VERIFY_CHANGES=0 in the environment; "
                         "see docs/verify.md)")
    ap.add_argument("--bgp", metavar="FILE",
                    help="BGP toward the provider's routers, per provider network (YAML: bgp: {NETWORK: "
                         "{asn, peers: [{address, asn}]}}; see docs/bgp.md). The leader announces the "
                         "platform's addresses from the hosts that carry them and learns the routes "
                         "tenant routers import")
    ap.add_argument("--log-level", default="INFO")
    a = ap.parse_args(argv)
    if a.api_listen:
        if not a.pki:
            ap.error("--api-listen needs --pki DIR: the network API is served over TLS only")
        host, sep, port = a.api_listen.rpartition(":")
        if not sep or not port.isdigit() or not host:
            ap.error(f"--api-listen {a.api_listen!r}: give ADDR:PORT, e.g. 198.51.100.1:6443")
        a.api_addr = (host.strip("[]"), int(port))
    bgp = None
    if a.bgp:
        import yaml
        from controller.server.routes import load_config
        try:
            with open(a.bgp) as f:
                bgp = load_config(yaml.safe_load(f))
        except (OSError, yaml.YAMLError, ValueError) as e:
            ap.error(f"--bgp {a.bgp}: {e}")
    logging.basicConfig(level=a.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from os_ken.lib import hub
    hub.patch(thread=True)
    from os_ken import cfg
    from os_ken.base.app_manager import AppManager
    import os_ken.controller.controller  # noqa: F401  (registers the ofp-* options)

    cfg.CONF(args=[], project="os_ken")
    cfg.CONF.set_override("ofp_listen_host", a.listen)
    cfg.CONF.set_override("ofp_tcp_listen_port", a.port)

    if a.store != "sqlite" and not a.store.startswith("etcd://"):
        ap.error(f"--store {a.store!r}: sqlite or etcd://HOST:PORT[,HOST:PORT...]")
    os.makedirs(a.state_dir, exist_ok=True)
    api_path = os.path.join(a.state_dir, "nvctl.sock")

    # OpenFlow listens first: the switches reconnect (OVS retries once a second) while the
    # state loads and compiles, and their sessions wait in the app until it is attached.
    mgr = AppManager.get_instance()
    mgr.load_apps(["controller.switch.ofadapter"])
    contexts = mgr.create_contexts()
    services = mgr.instantiate_apps(**contexts)
    app = next(x for x in mgr.applications.values() if type(x).__name__ == "NvApp")
    t0 = time.monotonic()
    core = member = None
    if a.store == "sqlite":  # in a native thread: the green threads meanwhile answer the switches
        from eventlet import tpool
        try:
            core, member = tpool.execute(_load, a, api_path)
        except OSError as e:  # tpool talks to its threads over 127.0.0.1: a namespace whose lo is down has none
            logging.warning("state loaded in this thread (no native thread for it: %s)", e)
    if core is None:  # etcd's client talks through green sockets: here
        core, member = _load(a, api_path)
    logging.info("state loaded and compiled in %.0f ms: %d tenants, %d hosts", (time.monotonic() - t0) * 1000,
                 len(core.tenants), len(core.hosts))
    if bgp:  # before the switches sync: the routes learned before a restart are compiled in
        core.bgp.config = bgp
        with core.mutex:
            core.load_learned()
    app.attach(core)
    if bgp and member is None:
        core.start_bgp()  # the leader speaks (take_over); a standalone controller now

    from controller.server.api import ApiServer
    services += _network_services(core, a)  # before the local API: invitations need the PKI
    api = ApiServer(core, api_path)
    if getattr(core, "join_api", None) is not None:
        core.join_api.api = api  # a follower hands a join to the leader through it
    services.append(hub.spawn(api.serve_forever))
    core.audit_trail.member = a.name
    services.append(hub.spawn(core.audit_trail.run))
    if a.api_listen:
        services.append(hub.spawn(_https_api(core, api, a).serve_forever))
    if member is None:
        core.number_hosts()  # hosts stored before peer-tunnel numbers existed (controller.server.peers)
        core.ensure_workloads_in_background()  # beside the flow sync, outside the core's lock
    else:
        member.start()  # the leader, once elected, checks the workloads
    hub.spawn(_warm, core)
    services.append(hub.spawn(core.health_loop))  # load balancers' health checks (controller.server.health)
    logging.info("controller up: OpenFlow on %s:%d, API on %s, store %s", a.listen, a.port, api.path, a.store)
    import signal

    main_pid = os.getpid()

    def stop(*_):
        # pyroute2 forks helpers that inherit this handler and get SIGTERM when done: only
        # the controller itself gives up its lease (a helper revoking it deposed the leader)
        if member is not None and os.getpid() == main_pid:
            member.close()  # give up leadership at once: a follower takes over without waiting
        os._exit(0)
    signal.signal(signal.SIGTERM, stop)

    def stacks(*_):  # SIGUSR1: every green thread's stack into the log (what is it waiting for?)
        import gc
        import traceback
        import greenlet
        for g in [o for o in gc.get_objects() if isinstance(o, greenlet.greenlet)]:
            if g.gr_frame is not None:
                logging.warning("green thread %r:\n%s", g, "".join(traceback.format_stack(g.gr_frame)))
    signal.signal(signal.SIGUSR1, stacks)

    def lag():  # a green thread that notices when something blocks all the others
        import time
        while True:
            t0 = time.monotonic()
            hub.sleep(0.1)
            late = time.monotonic() - t0 - 0.1
            if late > 0.5:
                logging.warning("the controller's event loop was blocked for %.1f s", late)
    services.append(hub.spawn(lag))
    try:
        hub.joinall(services)
    finally:
        mgr.close()
    return 0


def _warm(core) -> None:
    """Import what the first DHCP, DNS or too-big packet needs (scapy), once the start-up
    is done: the workloads checked and every switch synced since it connected (or after
    10 s), not in a restart's way. (Here, not in a native thread: scapy's import waits
    forever there under eventlet.)"""
    from os_ken.lib import hub
    from controller.packetin import punt

    def started() -> bool:
        return not core.plugging and all(st.session is not None and st.synced_session is st.session
                                         for st in list(core.state.values()))
    deadline = time.monotonic() + 10
    while not started() and time.monotonic() < deadline:
        hub.sleep(0.1)
    t0 = time.monotonic()
    punt.warm()
    logging.info("packet-in responder imported in %.0f ms", (time.monotonic() - t0) * 1000)


def _load(a, api_path: str):
    """The core with the stored state, compiled: (core, cluster member or None)."""
    from controller.server.core import Core, freeze_heap
    from controller.state.store import SqliteStore
    from tep.driver import LabDriver

    member = None
    if a.store == "sqlite":
        core = Core(SqliteStore(os.path.join(a.state_dir, "desired.db")), make_driver=LabDriver)
    else:
        from controller.state.cluster import Member
        from controller.state.etcd_store import EtcdClient, EtcdStore, parse_endpoints
        store = EtcdStore(EtcdClient(parse_endpoints(a.store)))
        _, revision = store.client.range(store.key("leader"))  # follow every change after this read
        core = Core(store, make_driver=LabDriver)
        info = {"address": a.listen, "api": api_path, "of_port": a.port, "api_port": a.api_port,
                **({"of_tls_port": a.tls_port} if a.pki else {})}
        if a.api_listen:
            info["url"] = f"https://{a.api_listen}"
        member = Member(a.name, store, core, info, watch_from=revision + 1)
        core.cluster = member
    core.guard.enabled = a.verify_changes
    core.acl_log.path = os.path.join(a.state_dir, "acl.log")  # logged ACL rules' lines, as JSON lines
    freeze_heap()
    return core, member


def _https_api(core, api, a):
    """The network API (controller.server.netapi) on --api-listen, and the client a
    follower hands requests to the leader with (its own certificate: mutual TLS)."""
    import json

    from controller.server.netapi import HttpsApiServer, server_context
    from controller.transport.https import Connection, client_context

    pki = core.pki
    core.endpoints["api_urls"] = [f"https://{a.api_listen}"]
    ctx = server_context(pki.ctl_cert, pki.ctl_key, [pki.switch_ca, pki.controller_ca])
    srv = HttpsApiServer(api, core, a.api_addr[0], a.api_addr[1], ctx)
    member_ctx = client_context(ca_file=pki.controller_ca, cert=pki.ctl_cert, key=pki.ctl_key)
    idle: dict[str, list] = {}  # url -> connections not in use (one request at a time on each)

    def member_client(url, op, args, rid, principal):
        pool = idle.setdefault(url, [])
        conn = pool.pop() if pool else Connection(url, member_ctx)
        try:
            conn.post("ping", {}, timeout=2)  # a stopped leader must not hold us
            out = conn.post(op, args, rid=rid, headers={"X-Nvctl-On-Behalf": json.dumps(principal.to_json())},
                            timeout=600)[1]
        except BaseException:
            conn.close()
            raise
        pool.append(conn)
        return out
    api.member_client = member_client
    logging.info("network API: HTTPS on %s (TLS with %s)", a.api_listen, pki.controller_ca)
    return srv


def _network_services(core, a) -> list:
    """OpenFlow over TLS and the join API, for hosts that join over a network."""
    import ssl

    from os_ken.controller.controller import datapath_connection_factory
    from os_ken.lib import hub

    from controller.server.api import NetworkApiServer
    from controller.transport.pki import Pki, server_context

    core.endpoints = {"ip": a.listen, "of_port": a.port, "api_port": a.api_port}
    if a.pki:
        pki = core.pki = Pki(a.pki).ensure()
        core.endpoints["of_tls_port"] = a.tls_port
        of_tls = hub.StreamServer((a.listen, a.tls_port), datapath_connection_factory,
                                  ssl_ctx=ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER),
                                  keyfile=pki.ctl_key, certfile=pki.ctl_cert,
                                  cert_reqs=ssl.CERT_REQUIRED, ca_certs=pki.switch_ca)
        join = NetworkApiServer(core, a.listen, a.api_port,
                                server_context(pki.ctl_key, pki.ctl_cert, pki.switch_ca))
        core.join_api = join
        logging.info("OpenFlow over TLS on %s:%d, join API over TLS on %s:%d",
                     a.listen, a.tls_port, a.listen, a.api_port)
        return [hub.spawn(of_tls.serve_forever), hub.spawn(join.serve_forever)]
    if a.insecure:
        join = NetworkApiServer(core, a.listen, a.api_port, None)
        core.join_api = join
        logging.warning("join API over plain TCP on %s:%d (--insecure)", a.listen, a.api_port)
        return [hub.spawn(join.serve_forever)]
    return []


if __name__ == "__main__":
    sys.exit(main())
