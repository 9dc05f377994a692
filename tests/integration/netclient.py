"""Requests to the network API made by hand, the way a hostile or broken client would:
run inside a lab machine by tests (test_shared_nothing.py) with a JSON list of requests:

    {"what": label, "credential": FILE, "op": NAME, "args": {...},
     "mangle": true        one character of the token changed
     "no_token": implied when what == "no-token"
     "foreign_cert": true  a client certificate from a CA the controller never saw
     "plain": true         plain HTTP to the TLS port}

Prints a JSON list: {"what", "status" (HTTP status or null), "answer", "error", "bytes"}.
"""
import http.client
import json
import socket
import ssl
import subprocess
import sys
import tempfile
from urllib.parse import urlparse


def foreign_cert(tmp: str) -> tuple[str, str]:
    subprocess.run(["ovs-pki", f"--dir={tmp}/ca", f"--log={tmp}/log", "--force", "init"], check=True,
                   capture_output=True, cwd=tmp)
    subprocess.run(["ovs-pki", f"--dir={tmp}/ca", f"--log={tmp}/log", "--force", "req+sign", "hv1", "switch"],
                   check=True, capture_output=True, cwd=tmp)
    return f"{tmp}/hv1-cert.pem", f"{tmp}/hv1-privkey.pem"


def one(r: dict, tmp: str) -> dict:
    cred = json.load(open(r["credential"]))
    u = urlparse(cred["servers"][0])
    out = {"what": r["what"], "status": None, "answer": None, "error": None, "bytes": None}
    if r.get("plain"):
        s = socket.create_connection((u.hostname, u.port), 10)
        s.sendall(f"POST /v1/op/{r['op']} HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{{}}".encode())
        s.settimeout(10)
        data = b""
        try:
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
        except OSError as e:
            out["error"] = str(e)
        out["bytes"] = len(data)
        return out
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(cadata=cred["ca"])
    if r.get("foreign_cert"):
        ctx.load_cert_chain(*foreign_cert(tmp))
    headers = {"Content-Type": "application/json"}
    token = cred["token"]
    if r.get("mangle"):
        i = len(token) // 2 + 3
        token = token[:i] + ("A" if token[i] != "A" else "B") + token[i + 1:]
    if r["what"] != "no-token":
        headers["Authorization"] = f"Bearer {token}"
    try:
        c = http.client.HTTPSConnection(u.hostname, u.port, context=ctx, timeout=30)
        c.request("POST", f"/v1/op/{r['op']}", json.dumps(r.get("args") or {}).encode(), headers)
        resp = c.getresponse()
        out["status"], out["answer"] = resp.status, json.loads(resp.read() or b"null")
    except (OSError, ssl.SSLError, http.client.HTTPException) as e:
        out["error"] = f"{type(e).__name__}: {e}"
    return out


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        print(json.dumps([one(r, tmp) for r in json.loads(sys.argv[1])]))


if __name__ == "__main__":
    main()
