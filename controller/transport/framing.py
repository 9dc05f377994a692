"""The API's framing, shared by the controller and its clients: one JSON object per
line (a request, then its answer), over a unix socket or a TLS/TCP connection.

Only the bytes on the wire live here; what a request means is the server's
(controller.server.ops) and what a client does with an answer is the client's
(controller.client.api).
"""
from __future__ import annotations

import json
import socket

MAX_REQUEST = 16 << 20  # bytes of one line (a request or an answer)


def read_line(conn: socket.socket, limit: int = MAX_REQUEST) -> bytes:
    """Bytes up to and including the first newline, or up to the peer's close (b"" when
    it sent nothing). ValueError past `limit` bytes."""
    buf = bytearray()
    while not buf.endswith(b"\n"):
        chunk = conn.recv(65536)
        if not chunk:
            break
        buf += chunk
        if len(buf) > limit:
            raise ValueError(f"message too large (more than {limit} bytes)")
    return bytes(buf)


def send(conn: socket.socket, obj) -> None:
    """One object as one line."""
    conn.sendall(json.dumps(obj).encode() + b"\n")


def receive(conn: socket.socket):
    """The object of one line; None when the peer closed without one."""
    return json.loads(read_line(conn) or b"null")


def request(path: str, req: dict, timeout: float) -> dict:
    """One request over the unix socket at `path`, and its answer. OSError when no one
    answers there, TimeoutError after `timeout` s, ConnectionResetError when the server
    closed without an answer, ValueError when the answer is not JSON."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    with s:
        s.connect(path)
        send(s, req)
        answer = receive(s)
    if not answer:
        raise ConnectionResetError("the controller closed the connection without an answer")
    return answer
