"""A 3-member (or N-member) etcd cluster from Debian's etcd-server, for the lab and the
tests: each member a process with its own data directory, on loopback ports or inside a
network namespace on the lab's management network; started and stopped by PID."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass

ETCD = "/usr/bin/etcd"


def free_ports(n: int) -> list[int]:
    """n TCP ports free on loopback now (for members on loopback: client and peer each)."""
    import socket
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def loopback_cluster(base: str, token: str) -> "EtcdCluster":
    """Three members on loopback ports of their own."""
    p = free_ports(6)
    return EtcdCluster(base, [EtcdMember(f"e{i}", "127.0.0.1", p[2 * i], p[2 * i + 1]) for i in range(3)], token=token)


@dataclass(frozen=True)
class EtcdMember:
    name: str
    ip: str
    client_port: int = 2379
    peer_port: int = 2380
    netns: str | None = None  # a namespace name; None: this one

    @property
    def client_url(self) -> str:
        return f"http://{self.ip}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://{self.ip}:{self.peer_port}"


class EtcdCluster:
    def __init__(self, base: str, members: list[EtcdMember], token: str = "nvctl"):
        if not os.path.exists(ETCD):
            raise RuntimeError("etcd is needed: Debian's etcd-server (make deps)")
        self.base, self.members, self.token = base, members, token
        os.makedirs(base, exist_ok=True)

    @property
    def url(self) -> str:
        """The controller's --store argument."""
        return "etcd://" + ",".join(f"{m.ip}:{m.client_port}" for m in self.members)

    def _pidfile(self, m: EtcdMember) -> str:
        return os.path.join(self.base, f"{m.name}.pid")

    def pid(self, name: str) -> int | None:
        m = self.member(name)
        try:
            with open(self._pidfile(m)) as f:
                pid = int(f.read())
        except (OSError, ValueError):
            return None
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                return pid if b"etcd" in f.read() else None
        except OSError:
            return None

    def member(self, name: str) -> EtcdMember:
        return next(m for m in self.members if m.name == name)

    def start(self, names: list[str] | None = None, timeout: float = 30) -> None:
        """Start members (all by default; a member whose data directory exists rejoins)."""
        initial = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        for m in self.members:
            if names is not None and m.name not in names or self.pid(m.name):
                continue
            data = os.path.join(self.base, m.name)
            cmd = [ETCD, "--name", m.name, "--data-dir", data,
                   "--listen-client-urls", m.client_url, "--advertise-client-urls", m.client_url,
                   "--listen-peer-urls", m.peer_url, "--initial-advertise-peer-urls", m.peer_url,
                   "--initial-cluster", initial, "--initial-cluster-token", self.token,
                   "--initial-cluster-state", "existing" if os.path.isdir(data) else "new",
                   "--heartbeat-interval", "100", "--election-timeout", "1000",
                   "--logger", "zap", "--log-level", "warn"]
            if m.netns:
                cmd = ["ip", "netns", "exec", m.netns, *cmd]
            log = open(os.path.join(self.base, f"{m.name}.log"), "ab")
            p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            log.close()
            # `ip netns exec` execs etcd in place: the PID is etcd's
            with open(self._pidfile(m), "w") as f:
                f.write(str(p.pid))
        self.wait_healthy(timeout, names)

    def healthy(self, name: str) -> bool:
        """etcdctl's health check of one member (from inside its namespace)."""
        m = self.member(name)
        cmd = ["etcdctl", f"--endpoints={m.client_url}", "--command-timeout=1s", "endpoint", "health"]
        if m.netns:
            cmd = ["ip", "netns", "exec", m.netns, *cmd]
        return subprocess.run(cmd, capture_output=True, env={**os.environ, "ETCDCTL_API": "3"}).returncode == 0

    def wait_healthy(self, timeout: float, names: list[str] | None = None) -> None:
        deadline = time.monotonic() + timeout
        want = names or [m.name for m in self.members]
        while not all(self.healthy(n) for n in want):
            if time.monotonic() > deadline:
                logs = {n: open(os.path.join(self.base, f"{n}.log"), errors="replace").read()[-800:] for n in want}
                raise RuntimeError(f"etcd members {want} not healthy after {timeout}s: {logs}")
            time.sleep(0.2)

    def kill(self, name: str, sig=signal.SIGKILL) -> None:
        pid = self.pid(name)
        if pid:
            os.kill(pid, sig)
            _wait_gone(pid)

    def stop(self) -> None:
        for m in self.members:
            self.kill(m.name, signal.SIGTERM)

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)


def _wait_gone(pid: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        try:  # our child: reap it
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return
        except ChildProcessError:
            pass
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
