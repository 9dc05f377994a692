"""Machines that share nothing but the network: for the lab's isolated mode.

A machine is a network namespace plus a mount namespace of its own, kept alive by one
small holder process (`sleep infinity`, its PID in DIR/holder.pid). Inside it:

    /mnt/nvctl          the machine's own directory (LAB/machines/NAME outside): its
                        /etc/nvctl, state directory, credentials, OVS run directory
    LAB                 an empty tmpfs: the lab's directory, with every other machine's
                        files, the shared PKI and the controllers' sockets, is hidden

so a process in it reaches another machine only over the network. Commands run in it
with `nsenter -t HOLDER -m -n` (the namespaces of the holder), which is also how its
long-running processes (a controller) are started. Mounts made inside (podman's
network namespaces) stay inside, and go with the machine.
"""
from __future__ import annotations

import os
import shlex
import signal
import subprocess
import time

INSIDE = "/mnt/nvctl"  # where a machine sees its own directory


class MachineError(RuntimeError):
    pass


class Machine:
    def __init__(self, lab_dir: str, name: str, netns: str, binds: dict[str, str] | None = None):
        """`binds`: relative path inside INSIDE -> a directory outside, also mounted
        there (a host's OVS run directory, which the lab's OVS daemons use)."""
        self.lab_dir, self.name, self.netns = os.path.abspath(lab_dir), name, netns
        self.dir = os.path.join(self.lab_dir, "machines", name)
        self.binds = binds or {}

    @property
    def pid_file(self) -> str:
        return os.path.join(self.dir, "holder.pid")

    def pid(self) -> int | None:
        try:
            with open(self.pid_file) as f:
                pid = int(f.read().strip())
        except (OSError, ValueError):
            return None
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if not f.read().startswith(b"nvctl-machine\0"):
                    return None
        except OSError:
            return None
        return pid

    def outside(self, inside: str) -> str:
        """The path outside of a path inside the machine (under INSIDE)."""
        rel = os.path.relpath(inside, INSIDE)
        if rel.startswith(".."):
            raise ValueError(f"{inside} is not in the machine's own directory {INSIDE}")
        return os.path.join(self.dir, rel)

    def start(self) -> int:
        if self.pid() is not None:
            return self.pid()
        os.makedirs(self.dir, exist_ok=True)
        steps = ["set -e", f"mount -t tmpfs nvctl-machine {shlex.quote(os.path.dirname(INSIDE))}",
                 f"mkdir -p {INSIDE}", f"mount --bind {shlex.quote(self.dir)} {INSIDE}"]
        for rel, src in sorted(self.binds.items()):
            os.makedirs(os.path.join(self.dir, rel), exist_ok=True)
            os.makedirs(src, exist_ok=True)
            steps.append(f"mount --bind {shlex.quote(src)} {shlex.quote(os.path.join(INSIDE, rel))}")
        steps += [f"mount -t tmpfs nvctl-hidden {shlex.quote(self.lab_dir)}",
                  "exec -a nvctl-machine sleep infinity"]
        cmd = ["nsenter", f"--net=/run/netns/{self.netns}", "--", "unshare", "--mount", "--propagation", "private",
               "--", "bash", "-c", "; ".join(steps)]
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, start_new_session=True)
        with open(self.pid_file, "w") as f:
            f.write(str(proc.pid))
        deadline = time.monotonic() + 10
        while True:  # ready when its view hides the lab
            if proc.poll() is not None:
                raise MachineError(f"machine {self.name} did not start: {proc.stderr.read().decode().strip()}")
            try:
                with open(f"/proc/{proc.pid}/cmdline", "rb") as f:
                    started = f.read().startswith(b"nvctl-machine\0")
            except OSError:
                started = False
            if started:
                return proc.pid
            if time.monotonic() > deadline:
                raise MachineError(f"machine {self.name} did not start in 10 s")
            time.sleep(0.02)

    def enter(self) -> list[str]:
        """The command prefix that runs something inside."""
        pid = self.pid()
        if pid is None:
            raise MachineError(f"machine {self.name} is not running")
        return ["nsenter", "-t", str(pid), "-m", "-n", "--"]

    def run(self, cmd: list[str], **kw) -> subprocess.CompletedProcess:
        return subprocess.run(self.enter() + cmd, **kw)

    def stop(self) -> bool:
        pid = self.pid()
        if pid is None:
            return False
        os.kill(pid, signal.SIGKILL)
        for _ in range(100):
            if not os.path.exists(f"/proc/{pid}"):
                break
            time.sleep(0.02)
        return True
