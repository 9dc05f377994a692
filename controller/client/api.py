"""The client side of the controller's API: `call` (the unix socket, or a cluster's
members) and `remote_call` (a controller's network join API). The framing is
controller.transport.framing's; nothing here imports the server, so the command line,
the runtimes' plugins and the scenarios run without it.

The operations, their arguments and what each touches: ask the controller
(`call(path, "api.operations")`).
"""
from __future__ import annotations

import itertools
import json
import os
import socket
import time
import uuid

from controller.transport.framing import receive, request, send

FAILOVER_WAIT = 30.0  # seconds a client keeps trying the cluster's members


class ApiClientError(Exception):
    def __init__(self, message: str, errors=None):
        super().__init__(message)
        self.errors = errors or []


def members(path: str) -> list[str]:
    """The API sockets to try: a cluster's members (members.json beside `path`, written
    by the lab), else just `path`."""
    try:
        with open(os.path.join(os.path.dirname(path), "members.json")) as f:
            apis = [m["api"] for m in json.load(f)]
    except (OSError, ValueError, KeyError):
        return [path]
    return [path] + [a for a in apis if a != path] if path in apis else apis


def call(path: str, op: str, timeout: float = 600, **args):
    """Send one request; return its result or raise ApiClientError. To a cluster: any
    member that answers (followers hand it to the leader); while a failover is under
    way, the same request (one id: a change is made once) again, for FAILOVER_WAIT s."""
    req = {"op": op, "args": args, "id": uuid.uuid4().hex}
    targets = members(path)
    deadline = time.monotonic() + FAILOVER_WAIT
    last = None
    for attempt in itertools.count():
        target = targets[attempt % len(targets)]
        try:
            if len(targets) > 1:  # a member that is stopped (not dead) must not hold the client
                request(target, {"op": "ping", "args": {}}, 1.0)
            answer = request(target, req, timeout)
        except (FileNotFoundError, ConnectionRefusedError, ConnectionResetError, BrokenPipeError, TimeoutError) as e:
            if len(targets) == 1:
                if isinstance(e, TimeoutError):
                    raise
                raise ApiClientError(f"no controller answers on {path} (is the lab up? try 'nvctl lab up')") from None
            last, answer = f"{target}: {e}", None
        if answer is not None and not answer.get("retry"):
            if not answer.get("ok"):
                raise ApiClientError(answer.get("error", "failed"), answer.get("errors"))
            return answer["result"]
        if answer is not None:
            last = answer.get("error")
            if len(targets) == 1:
                raise ApiClientError(last or "failed")
        if time.monotonic() > deadline:
            raise ApiClientError(f"no controller of the cluster answered for {FAILOVER_WAIT:.0f}s ({last})")
        if attempt % len(targets) == len(targets) - 1:
            time.sleep(0.2)


def remote_call(ip: str, port: int, op: str, ctx=None, timeout: float = 60, **args):
    """One request to a controller's network API (TLS when ctx is given)."""
    try:
        s = socket.create_connection((ip, port), timeout=timeout)
    except OSError as e:
        raise ApiClientError(f"cannot reach the controller at {ip}:{port}: {e.strerror or e}") from None
    try:
        if ctx is not None:
            s = ctx.wrap_socket(s)
        send(s, {"op": op, "args": args})
        answer = receive(s)
    except (OSError, ValueError) as e:
        raise ApiClientError(f"the controller at {ip}:{port} refused the connection: {e}") from None
    finally:
        s.close()
    if not answer:
        raise ApiClientError(f"the controller at {ip}:{port} closed the connection without an answer "
                             "(it refused our certificate?)")
    if not answer.get("ok"):
        raise ApiClientError(answer.get("error", "failed"), answer.get("errors"))
    return answer["result"]
