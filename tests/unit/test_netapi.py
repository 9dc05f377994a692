"""The network API on loopback, with real TLS (certificates made by the openssl command)
and a real core: who each kind of caller is taken for (token, host certificate, member
certificate forwarding a caller), what each is refused, and that plain HTTP or another
CA's certificate gets no answer at all."""
import http.client
import json
import os
import socket
import ssl
import subprocess
import threading
import time

import pytest

from controller.server.api import ApiServer
from controller.server.netapi import HttpsApiServer, server_context
from controller.transport.https import Connection, client_context
from tests.unit.fixtures import BLUE, RED


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def ca(d, unit):
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{unit}.key", "-out", f"{unit}.pem",
            "-subj", f"/OU={unit}/CN={unit} CA", "-days", "2", cwd=d)


def signed(d, name, cn, unit):
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
            "-subj", f"/OU=certifier/CN={cn}", cwd=d)
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{unit}.pem", "-CAkey", f"{unit}.key",
            "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", cwd=d)
    return os.path.join(d, f"{name}.pem"), os.path.join(d, f"{name}.key")


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("pki"))
    for unit in ("controllerca", "switchca", "elsewhere"):
        ca(d, unit)
    return {"dir": d, "server": signed(d, "ctl1", "ctl1 id:1", "controllerca"),
            "member": signed(d, "ctl2", "ctl2 id:2", "controllerca"),
            "hv1": signed(d, "hv1", "hv1 id:3", "switchca"),
            "foreign": signed(d, "rogue", "hv1 id:4", "elsewhere"),
            "controllerca": os.path.join(d, "controllerca.pem"), "switchca": os.path.join(d, "switchca.pem")}


@pytest.fixture
def net(core, pki, tmp_path):
    core.create(BLUE)
    core.create(RED)
    api = ApiServer(core, str(tmp_path / "api.sock"))
    ctx = server_context(*pki["server"], [pki["switchca"], pki["controllerca"]])
    srv = HttpsApiServer(api, core, "127.0.0.1", 0, ctx)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"https://127.0.0.1:{srv.address[1]}", srv
    srv.sock.close()
    api.sock.close()


def post(url, pki, op, args=None, token=None, cert=None, headers=None):
    conn = Connection(url, client_context(ca_file=pki["controllerca"], cert=cert and cert[0],
                                          key=cert and cert[1]), timeout=10)
    try:
        return conn.post(op, args or {}, token, headers=headers)
    finally:
        conn.close()


def test_a_token_is_its_credential_and_nothing_else_is(net, core, pki):
    url, _ = net
    tok = core.credential_issue("blue-ci", "tenant:blue", None)["token"]
    status, a = post(url, pki, "tenant.list", token=tok)
    assert status == 200 and [r["name"] for r in a["result"]] == ["blue"]
    assert post(url, pki, "auth.whoami", token=tok)[1]["result"]["role"] == "tenant:blue"
    for bad in (None, tok[:-1] + ("x" if tok[-1] != "x" else "y"), "nvctl1.nobody.secret", "Basic abc"):
        status, a = post(url, pki, "tenant.list", token=bad)
        assert status == 401 and "result" not in a, bad
    # another tenant: the status and the answer of a tenant that does not exist
    red, ghost = (post(url, pki, "tenant.show", {"name": n}, token=tok) for n in ("red", "ghost"))
    assert red[0] == ghost[0] == 400 and red[1]["error"] == "no tenant 'red'"
    status, a = post(url, pki, "tenant.delete", {"name": "red"}, token=tok)
    assert status == 403 and "red" in core.tenants


def test_a_host_certificate_is_that_host(net, core, pki):
    url, _ = net
    assert post(url, pki, "auth.whoami", cert=pki["hv1"])[1]["result"]["role"] == "host:hv1"
    status, _ = post(url, pki, "port.add", {"tenant": "blue", "switch": "web", "host": "hv2"}, cert=pki["hv1"])
    assert status == 403
    status, a = post(url, pki, "port.add", {"tenant": "blue", "switch": "web", "host": "hv1", "workload": False},
                     cert=pki["hv1"])
    assert status == 200, a
    # a host cannot speak for someone else
    status, a = post(url, pki, "auth.whoami", cert=pki["hv1"],
                     headers={"X-Nvctl-On-Behalf": json.dumps({"name": "x", "role": "admin"})})
    assert a["result"]["role"] == "host:hv1"


def test_a_member_forwards_a_caller_who_is_decided_again(net, core, pki):
    url, _ = net
    behalf = {"X-Nvctl-On-Behalf": json.dumps({"name": "blue-ci", "role": "tenant:blue", "peer": "10.1.1.1"})}
    status, a = post(url, pki, "tenant.show", {"name": "red"}, cert=pki["member"], headers=behalf)
    assert status == 400 and a["error"] == "no tenant 'red'"
    assert post(url, pki, "tenant.show", {"name": "blue"}, cert=pki["member"], headers=behalf)[0] == 200
    assert post(url, pki, "auth.whoami", cert=pki["member"])[1]["result"]["role"] == "member"
    core.audit_trail.flush()
    last = core.store.audit_entries(3)
    assert last[0]["who"] == "blue-ci" and last[0]["peer"] == "10.1.1.1" and last[0]["result"].startswith("refused")


def test_plain_http_and_another_cas_certificate_get_no_answer(net, core, pki):
    url, _ = net
    port = int(url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), 10) as s:
        s.sendall(b"POST /v1/op/ping HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
        s.settimeout(10)
        got = b""
        try:
            while chunk := s.recv(4096):
                got += chunk
        except OSError:
            pass
    assert b"HTTP/" not in got and b"pong" not in got
    with pytest.raises((ssl.SSLError, OSError, http.client.HTTPException)):
        post(url, pki, "ping", cert=pki["foreign"])
    for _ in range(100):  # the server records a failed handshake on its side, a moment after the client gave up
        core.audit_trail.flush()
        if sum(e["op"] == "(handshake)" for e in core.store.audit_entries(20)) >= 2:
            break
        time.sleep(0.05)
    assert sum(e["op"] == "(handshake)" for e in core.store.audit_entries(20)) >= 2
