"""Run the controller: `python -m controller.main --state-dir DIR [--listen IP] [--port N]`.

Wires the pieces: SQLite store -> core -> os-ken app (OpenFlow 1.3 on --listen:--port)
and the API on DIR/nvctl.sock. Logs to stderr (the lab sends it to DIR/controller.log).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="nvctl-controller", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--state-dir", required=True, help="where the store and API socket live")
    ap.add_argument("--listen", default="0.0.0.0", help="OpenFlow listen address (default %(default)s)")
    ap.add_argument("--port", type=int, default=6653, help="OpenFlow TCP port (default %(default)s)")
    ap.add_argument("--log-level", default="INFO")
    a = ap.parse_args(argv)
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

    from controller.api import ApiServer
    from controller.core import Core
    from controller.store import SqliteStore

    os.makedirs(a.state_dir, exist_ok=True)
    store = SqliteStore(os.path.join(a.state_dir, "desired.db"))
    core = Core(store)
    errors = core.ensure_workloads()
    for e in errors:
        logging.error("start-up: %s", e)

    mgr = AppManager.get_instance()
    mgr.load_apps(["controller.ofadapter"])
    contexts = mgr.create_contexts()
    services = mgr.instantiate_apps(**contexts)
    app = next(x for x in mgr.applications.values() if type(x).__name__ == "NvApp")
    app.attach(core)

    api = ApiServer(core, os.path.join(a.state_dir, "nvctl.sock"))
    services.append(hub.spawn(api.serve_forever))
    logging.info("controller up: OpenFlow on %s:%d, API on %s", a.listen, a.port, api.path)
    try:
        hub.joinall(services)
    finally:
        mgr.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
