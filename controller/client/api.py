"""The client side of the controller's API: `call` (the unix socket, a cluster's
members, or the network API with a credential) and `remote_call` (a controller's
network join API).

`call(target, ...)`: a target is a unix socket's path, or a `Remote` (a credential
file's servers, CA and token: the HTTPS API of controller.transport.https). The framing is
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


CREDENTIAL_KIND = "nvctl-credential"


class Remote:
    """The network API as a credential file describes it: the servers (every member of
    the cluster, as they were when it was issued), the CA that signed them, and the
    token. `server` overrides the servers (--server URL)."""

    def __init__(self, cred: dict, server: str | None = None, source: str = "credential",
                 netns: str | None = None):
        self.source, self.netns = source, netns
        self.name, self.role, self.token = cred.get("name"), cred.get("role"), cred.get("token")
        self.servers = [server] if server else list(cred.get("servers") or [])
        if not self.servers:
            raise ApiClientError(f"{source}: names no server (give --server https://HOST:PORT)")
        from controller.transport.https import client_context
        try:
            self.ctx = client_context(ca_pem=cred["ca"])
        except (KeyError, TypeError, ValueError, OSError) as e:
            raise ApiClientError(f"{source}: its CA is not a PEM certificate ({e})") from None
        self._conns: dict = {}
        self._found = False  # the members asked for their list once

    def __repr__(self) -> str:
        return f"Remote({self.name}@{','.join(self.servers)})"

    def connection(self, url: str):
        from controller.transport.https import Connection
        c = self._conns.get(url)
        if c is None:
            c = self._conns[url] = Connection(url, self.ctx, netns=self.netns)
        return c

    def post(self, url: str, op: str, args: dict, rid: str, timeout: float, token: str | None = None) -> dict:
        status, answer = self.connection(url).post(op, args, token or self.token, rid, timeout=timeout)
        if status == 401:
            raise ApiClientError(f"{url} refused the credential {self.name!r} from {self.source}: "
                                 f"{answer.get('error')} (revoked, expired or mistyped?)")
        return answer

    def discover(self, url: str) -> None:
        """Every member the cluster has now (its members are in etcd), from one that answers."""
        if self._found:
            return
        self._found = True
        try:
            answer = self.post(url, "api.endpoints", {}, uuid.uuid4().hex, 5)
        except (OSError, ApiClientError):
            return
        for u in (answer.get("result") or {}).get("servers") or []:
            if u not in self.servers:
                self.servers.append(u)


def load_credential(path: str, server: str | None = None, netns: str | None = None) -> Remote:
    """A credential file (`nvctl credential issue`), checked, as a Remote."""
    try:
        with open(path) as f:
            cred = json.load(f)
    except OSError as e:
        raise ApiClientError(f"cannot read the credential {path}: {e.strerror}") from None
    except ValueError as e:
        raise ApiClientError(f"{path} is not a credential file (not JSON: {e})") from None
    missing = [k for k in ("name", "role", "token", "ca") if not isinstance(cred, dict) or k not in cred]
    if missing or cred.get("kind") != CREDENTIAL_KIND:
        raise ApiClientError(f"{path} is not an nvctl credential file (missing {', '.join(missing) or 'kind'})")
    return Remote(cred, server, source=path, netns=netns)


class _Away(Exception):
    """This member could not be reached (why): the next one is asked."""


def _first_answer(targets: list, ask, reached_after_failure=None):
    """The result of the first member that answers for good: `ask(target)` gives its
    answer or raises _Away; an answer that says retry (a failover under way) or a member
    away sends the same request to the next member, for FAILOVER_WAIT s in all.
    `reached_after_failure(target)`: told of a member that answered after another did not."""
    deadline = time.monotonic() + FAILOVER_WAIT
    last = None
    for attempt in itertools.count():
        target = targets[attempt % len(targets)]
        try:
            answer = ask(target)
        except _Away as e:
            last = str(e)
        else:
            if attempt and reached_after_failure is not None:
                reached_after_failure(target)
            if not answer.get("retry"):
                if not answer.get("ok"):
                    raise ApiClientError(answer.get("error", "failed"), answer.get("errors"))
                return answer["result"]
            last = answer.get("error")
        if time.monotonic() > deadline:
            raise ApiClientError(f"no controller answered for {FAILOVER_WAIT:.0f}s ({last})")
        if attempt % len(targets) == len(targets) - 1:
            time.sleep(0.2)


def _call_remote(remote: Remote, op: str, timeout: float, args: dict, token: str | None = None):
    """One request over HTTPS: any member that answers; the same request id throughout."""
    import ssl
    rid = uuid.uuid4().hex

    def ask(url):
        try:
            return remote.post(url, op, args, rid, timeout, token)
        except ssl.SSLCertVerificationError as e:
            raise ApiClientError(f"{url} is not the controller {remote.source} names: its certificate is "
                                 f"not signed by the credential's CA ({e.verify_message})") from None
        except ssl.SSLError as e:
            raise _Away(f"{url}: TLS failed: {e.reason or e}") from None
        except TimeoutError:
            raise ApiClientError(f"{url} did not answer {op} within {timeout:.0f}s") from None
        except OSError as e:
            raise _Away(f"{url}: {e.strerror or e}") from None
    return _first_answer(remote.servers, ask, remote.discover)  # one member was away: learn who else there is


def call(path, op: str, timeout: float = 600, _as: str | None = None, **args):
    """Send one request; return its result or raise ApiClientError. `path`: the unix
    socket, or a Remote (the network API). To a cluster: any member that answers
    (followers hand it to the leader); while a failover is under way, the same request
    (one id: a change is made once) again, for FAILOVER_WAIT s. `_as`: a token to ask
    as (the web view asks as the person signed in to it, not as itself)."""
    if isinstance(path, Remote):
        return _call_remote(path, op, timeout, args, _as)
    req = {"op": op, "args": args, "id": uuid.uuid4().hex, **({"as": _as} if _as is not None else {})}
    targets = members(path)
    alone = len(targets) == 1

    def ask(target):
        try:
            if not alone:  # a member that is stopped (not dead) must not hold the client
                request(target, {"op": "ping", "args": {}}, 1.0)
            answer = request(target, req, timeout)
        except (FileNotFoundError, ConnectionRefusedError, ConnectionResetError, BrokenPipeError, TimeoutError) as e:
            if not alone:
                raise _Away(f"{target}: {e}") from None
            if isinstance(e, TimeoutError):
                raise
            raise ApiClientError(f"no controller answers on {path} (is the lab up? try 'nvctl lab up')") from None
        if alone and answer.get("retry"):  # one controller: nobody else to ask
            raise ApiClientError(answer.get("error") or "failed")
        return answer
    return _first_answer(targets, ask)


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
