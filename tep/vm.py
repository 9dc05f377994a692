"""QEMU guests as tenant workloads: the guest image, starting and stopping a guest on a
host, and the agent channel that runs commands inside it.

The image is built by the project from Debian's own packages, offline, and cached:
Debian's kernel (`linux-image-amd64`: /boot/vmlinuz-VERSION) and an initramfs made of
busybox-static plus the kernel's virtio modules (loaded in dependency order). Its init
brings up eth0 by DHCP from the platform (udhcpc: address, gateway, MTU, DNS), starts a
serial console shell on ttyS0, and an agent on the virtio-serial port `nvctl.agent`:
one command per line in, its output and then a line `__nvctl_rc=N` out.

A guest runs under TCG (`-accel tcg`; a KVM guest here hung in its firmware, so KVM is
used only where asked), 128 MB, its NIC virtio-net on a tap in the host's br-int that
carries only `external_ids:iface-id=TENANT/PORT` (the controller binds it wherever OVS
numbers it) and the port's MAC; `romfile=` skips iPXE.

Each guest has a QMP socket (`Guest.qmp`) for what live migration needs: a destination
started with `incoming="tcp:ADDR:PORT"` waits (paused, `inmigrate`) for the stream;
`Guest.migrate(uri)` on the source sends it and returns QEMU's own figures (total time,
downtime, RAM sent); `Guest.cancel_migration()` stops a migration under way, and
`Guest.state()` says where a guest stands (running, paused, inmigrate, postmigrate).
A completed migration leaves the source paused in `postmigrate`: the caller stops it.
After the switch the destination announces the guest's MAC (see
tests/integration/test_vm_qemu.py for what is sent and when).

Commands that must keep running in the guest go through `Guest.spawn`, which puts them
in the background with their stdio on /dev/null (or a log file) and returns at once with
their pid; `Guest.run` would wait for them. The guest's busybox has what traffic tests
need, nothing else is installed:

    pid = guest.spawn("nc -ll -p 9000 -e cat")           # a TCP echo server on 9000
    guest.spawn("yes | nc 192.0.2.1 9001")               # a client that streams to a host
    guest.run(f"kill -- -{pid}")                         # the server and its children

(busybox nc has no -k: `-ll` with `-e` is its persistent server, one `cat` per
connection; as a client it ends when its input does.)  `ping` is busybox's too.
"""
from __future__ import annotations

import glob
import gzip
import hashlib
import json
import os
import shlex
import signal
import socket
import subprocess
import time

MODULES = ("virtio_ring", "virtio", "virtio_pci_modern_dev", "virtio_pci_legacy_dev", "virtio_pci", "failover",
           "net_failover", "virtio_net", "virtio_console")
BUSYBOX = "/bin/busybox"
CACHE = "/var/cache/nvctl/vm"
MEMORY_MB = 128
AGENT_PORT = "nvctl.agent"
RC_MARK = "__nvctl_rc="
# The NIC offers the guest no checksum or segmentation offload (nor takes any from the
# host): OVS's userspace datapath forwards the frames as they are, into VXLAN, and a TCP
# segment with a partial checksum (the guest's kernel leaving it to "the hardware") would
# arrive at the other end with a wrong one and be dropped there; ICMP, always summed in
# software, works either way. The same reason the lab turns tx offload off on its veths.
NIC_OFFLOADS_OFF = ",".join(f"{k}=off" for k in (
    "csum", "guest_csum", "gso", "host_tso4", "host_tso6", "host_ecn", "host_ufo",
    "guest_tso4", "guest_tso6", "guest_ecn", "guest_ufo"))

INIT = r"""#!/bin/sh
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in MODULES; do insmod /lib/modules/$m.ko 2>/dev/null; done
hostname nvctl-guest
ip link set lo up
ip link set eth0 up
udhcpc -i eth0 -s /bin/dhcp-event -f -t 0 -T 1 -A 1 >/dev/console 2>&1 &
# the agent: one command per line on the virtio-serial port (opened once: a port takes
# one opener), its output and then the exit code back
(
  port=$(ls -d /sys/class/virtio-ports/vport* 2>/dev/null | while read p; do
           [ "$(cat $p/name)" = "AGENT" ] && echo /dev/$(basename $p); done)
  [ -n "$port" ] || exit 0
  exec 3<>"$port"
  while true; do
    if IFS= read -r line <&3; then
      sh -c "$line" </dev/null >/tmp/out 2>&1; rc=$?
      cat /tmp/out >&3; echo "RCMARK$rc" >&3
    else
      sleep 0.2
    fi
  done
) &
echo "nvctl guest up" >/dev/console
while true; do setsid cttyhack sh </dev/ttyS0 >/dev/ttyS0 2>&1; done
"""

DHCP_EVENT = r"""#!/bin/sh
# udhcpc's events: configure eth0 as the platform's DHCP server says
case "$1" in
  deconfig) ip addr flush dev eth0 ;;
  bound|renew)
    ip addr flush dev eth0
    ip addr add "$ip/${mask:-24}" dev eth0
    [ -n "$mtu" ] && ip link set eth0 mtu "$mtu"
    for r in $router; do ip route replace default via "$r" dev eth0; break; done
    : >/etc/resolv.conf
    [ -n "$domain" ] && echo "search $domain" >>/etc/resolv.conf
    for d in $dns; do echo "nameserver $d" >>/etc/resolv.conf; done
    echo "nvctl guest lease $ip" >/dev/console ;;
esac
"""


class VmError(RuntimeError):
    pass


class MigrationFailed(VmError):
    """A migration that ended `failed` or `cancelled` (or did not end in time: `timeout`)."""

    def __init__(self, status: str, info: dict | None = None):
        self.status, self.info = status, info or {}
        detail = self.info.get("error-desc")
        super().__init__(f"migration {status}" + (f": {detail}" if detail else ""))


def kernel() -> tuple[str, str]:
    """(vmlinuz path, version): Debian's newest kernel in /boot."""
    found = sorted(glob.glob("/boot/vmlinuz-*"))
    if not found:
        raise VmError("no kernel in /boot: install linux-image-amd64 (make deps)")
    path = found[-1]
    return path, path.split("vmlinuz-", 1)[1]


def _module_path(version: str, name: str) -> str:
    for ext in (".ko", ".ko.xz"):
        hits = glob.glob(f"/lib/modules/{version}/kernel/**/{name}{ext}", recursive=True)
        if hits:
            return hits[0]
    raise VmError(f"kernel module {name} not found for {version}")


def _module_bytes(path: str) -> bytes:
    data = open(path, "rb").read()
    if path.endswith(".xz"):
        import lzma
        data = lzma.decompress(data)
    return data


def image(cache: str = CACHE) -> tuple[str, str]:
    """(kernel, initramfs): built once per kernel, busybox and init, then cached."""
    vmlinuz, version = kernel()
    if not os.path.exists(BUSYBOX):
        raise VmError(f"{BUSYBOX} is missing: install busybox-static (make deps)")
    init = INIT.replace("MODULES", " ".join(MODULES)).replace("AGENT", AGENT_PORT).replace("RCMARK", RC_MARK)
    key = hashlib.sha256("\0".join([version, init, DHCP_EVENT, str(os.path.getsize(BUSYBOX)),
                                    str(os.path.getmtime(BUSYBOX))]).encode()).hexdigest()[:16]
    out = os.path.join(cache, f"initramfs-{version}-{key}.cpio.gz")
    if os.path.exists(out):
        return vmlinuz, out
    os.makedirs(cache, exist_ok=True)
    tmp = out + f".{os.getpid()}.tmp"
    _write_cpio(tmp, init, version)
    os.replace(tmp, out)
    return vmlinuz, out


def _write_cpio(path: str, init: str, version: str) -> None:
    """A newc cpio archive, gzipped: what the kernel unpacks as its first root."""
    files: list[tuple[str, int, bytes]] = []  # (name, mode, data); a directory has no data
    for d in ("bin", "sbin", "dev", "proc", "sys", "tmp", "etc", "lib", "lib/modules", "root"):
        files.append((d, 0o040755, b""))
    files.append(("bin/busybox", 0o100755, open(BUSYBOX, "rb").read()))
    applets = subprocess.run([BUSYBOX, "--list"], capture_output=True, text=True, check=True).stdout.split()
    for a in applets:
        if a != "busybox":
            files.append((f"bin/{a}", 0o120777, b"busybox"))  # symlinks
    files.append(("init", 0o100755, init.encode()))
    files.append(("bin/dhcp-event", 0o100755, DHCP_EVENT.encode()))
    for m in MODULES:
        files.append((f"lib/modules/{m}.ko", 0o100644, _module_bytes(_module_path(version, m))))
    with gzip.open(path, "wb", compresslevel=6) as gz:
        for ino, (name, mode, data) in enumerate(files, start=1):
            _cpio_entry(gz, ino, name, mode, data)
        _cpio_entry(gz, 0, "TRAILER!!!", 0, b"")


def _cpio_entry(f, ino: int, name: str, mode: int, data: bytes) -> None:
    nm = name.encode() + b"\0"
    hdr = "070701" + "".join(f"{v:08x}" for v in (ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(nm), 0))
    f.write(hdr.encode() + nm)
    f.write(b"\0" * ((4 - (110 + len(nm)) % 4) % 4))
    f.write(data)
    f.write(b"\0" * ((4 - len(data) % 4) % 4))


# a guest on a host ---------------------------------------------------------------------

def _running(pid: int) -> bool:
    """The process exists and has not exited. A daemonized QEMU is not our child: once
    it exits it stays a zombie until whoever adopted it reaps it, which can take a
    second; /proc/PID is there all the while."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


class Guest:
    """One QEMU guest: its files (pid, agent and console sockets, log) in `rundir`."""

    def __init__(self, rundir: str, name: str):
        self.rundir, self.name = rundir, name

    def path(self, what: str) -> str:
        return os.path.join(self.rundir, f"{self.name}.{what}")

    def pid(self) -> int | None:
        try:
            pid = int(open(self.path("pid")).read().strip())
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                return pid if b"qemu-system" in f.read() else None
        except (OSError, ValueError):
            return None

    def start(self, netns: str, tap: str, mac: str, memory: int = MEMORY_MB, accel: str = "tcg",
              incoming: str | None = None) -> int:
        vmlinuz, initrd = image()
        os.makedirs(self.rundir, exist_ok=True)
        self._remove_files()
        cmd = ["nsenter", f"--net=/run/netns/{netns}", "qemu-system-x86_64", "-name", self.name,
               "-accel", accel, "-m", str(memory), "-smp", "1", "-nodefaults", "-no-user-config",
               "-display", "none", "-kernel", vmlinuz, "-initrd", initrd,
               "-append", "console=ttyS0 quiet panic=1",
               "-netdev", f"tap,id=n0,ifname={tap},script=no,downscript=no",
               "-device", f"virtio-net-pci,netdev=n0,mac={mac},romfile=,{NIC_OFFLOADS_OFF}",
               "-device", "virtio-serial-pci",
               "-chardev", f"socket,id=agent,path={self.path('agent')},server=on,wait=off",
               "-device", f"virtserialport,chardev=agent,name={AGENT_PORT}",
               "-chardev", f"socket,id=con,path={self.path('console')},server=on,wait=off,logfile={self.path('log')}",
               "-serial", "chardev:con",
               "-qmp", f"unix:{self.path('qmp')},server=on,wait=off",
               "-pidfile", self.path("pid"), "-daemonize"]
        if incoming:
            # paused until a migration stream arrives; QEMU listens before -daemonize lets
            # the parent exit, the wait below only makes sure
            cmd += ["-incoming", incoming]
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        if p.returncode != 0:
            raise VmError(f"qemu for {self.name} did not start: {p.stderr.strip()}")
        pid = self.pid()
        if pid is None:
            raise VmError(f"qemu for {self.name} started but its pid file is missing")
        if incoming:
            self._wait_state("inmigrate", 10)
        return pid

    def stop(self) -> bool:
        """Stop the guest's QEMU (if it runs) and remove its sockets and pid file (even if
        QEMU already went, e.g. a destination whose incoming migration failed)."""
        pid = self.pid()
        if pid is not None:
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 5
            while _running(pid) and time.monotonic() < deadline:
                time.sleep(0.01)
            if _running(pid):
                os.kill(pid, signal.SIGKILL)
        self._remove_files()
        return pid is not None

    def _remove_files(self) -> None:
        for what in ("agent", "console", "qmp", "pid"):
            if os.path.lexists(self.path(what)):
                os.unlink(self.path(what))

    def console_text(self) -> str:
        try:
            return open(self.path("log"), errors="replace").read()
        except OSError:
            return ""

    def wait_console(self, text: str, timeout: float = 60) -> float:
        """Seconds until `text` appears on the serial console; VmError after timeout."""
        t0 = time.monotonic()
        while text not in self.console_text():
            if self.pid() is None:
                raise VmError(f"{self.name} stopped; console:\n{self.console_text()[-2000:]}")
            if time.monotonic() - t0 > timeout:
                raise VmError(f"{self.name}: no {text!r} on the console in {timeout:.0f}s:\n"
                              f"{self.console_text()[-2000:]}")
            time.sleep(0.1)
        return time.monotonic() - t0

    def run(self, command: str, timeout: float = 60) -> tuple[int, str]:
        """Run a shell command in the guest through the agent: (exit code, output)."""
        if "\n" in command:
            raise ValueError("one line per command")
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(timeout)
        try:
            s.connect(self.path("agent"))
            s.sendall(command.encode() + b"\n")
            buf = b""
            deadline = time.monotonic() + timeout
            while RC_MARK.encode() not in buf or not buf.endswith(b"\n"):
                if time.monotonic() > deadline:
                    raise VmError(f"{self.name}: {command!r} did not finish in {timeout:.0f}s")
                chunk = s.recv(65536)
                if not chunk:
                    raise VmError(f"{self.name}: the agent closed the channel")
                buf += chunk
        finally:
            s.close()
        text = buf.decode(errors="replace")
        out, _, rc = text.rpartition(RC_MARK)
        return int(rc.strip().splitlines()[0]), out

    def spawn(self, command: str, log: str = "/dev/null") -> int:
        """Start `command` in the guest in the background and return its pid at once.

        Its stdio goes to /dev/null (or `log`, a path in the guest): the agent's own
        output file is left alone, and the agent, which waits only for its `sh -c`, is
        back right away. setsid gives it its own process group: `kill -- -PID` ends it
        with its children (a pipeline, say)."""
        rc, out = self.run(f"setsid sh -c {shlex.quote(command)} </dev/null >{shlex.quote(log)} 2>&1 & echo $!")
        if rc != 0 or not out.strip().isdigit():
            raise VmError(f"{self.name}: could not start {command!r}: {out.strip()}")
        return int(out.strip())

    # QMP: QEMU's control socket --------------------------------------------------------

    def qmp(self, command: str, **args):
        """One QMP command's return value; VmError if QEMU answers with an error.

        Arguments go as they are (QMP's names have hyphens: pass them as
        **{"downtime-limit": 300}). Each call is its own connection: QEMU serves one
        client per monitor socket, so a long-held one would lock everybody else out
        (cancel_migration while migrate polls, say)."""
        with _Qmp(self.path("qmp")) as q:
            return q.command(command, **args)

    def state(self) -> str:
        """QEMU's run state: running, paused, inmigrate, postmigrate, ..."""
        return self.qmp("query-status")["status"]

    def _wait_state(self, want: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            try:
                last = self.state()
                if last == want:
                    return
            except (OSError, VmError) as e:  # socket not there yet
                last = repr(e)
            time.sleep(0.05)
        raise VmError(f"{self.name}: not {want} after {timeout:.0f}s (last: {last})")

    def migrate(self, uri: str, downtime_ms: int | None = None, max_bandwidth: int | None = None,
                progress=None, timeout: float = 120) -> dict:
        """Migrate this (source) guest to a destination started with `incoming=uri`.

        `downtime_ms` is the most QEMU may pause the guest for the final copy,
        `max_bandwidth` bytes/s for the stream (QEMU 7.2's defaults: 300 ms, 128 MiB/s).
        `progress(info)`, if given, sees every `query-migrate` answer (polled every
        20 ms). Returns QEMU's own figures (times in ms, as QEMU reports them) once it
        says `completed`; MigrationFailed if it says failed or cancelled, or if it did
        not finish in `timeout` s (then it is cancelled first). The source is left
        paused (`postmigrate`): stopping it is the caller's."""
        params = {}
        if downtime_ms is not None:
            params["downtime-limit"] = int(downtime_ms)
        if max_bandwidth is not None:
            params["max-bandwidth"] = int(max_bandwidth)
        if params:
            self.qmp("migrate-set-parameters", **params)
        # MIGRATION events on status changes, for whoever listens; we poll anyway
        self.qmp("migrate-set-capabilities", capabilities=[{"capability": "events", "state": True}])
        self.qmp("migrate", uri=uri)  # returns at once; the stream runs in QEMU's thread
        deadline = time.monotonic() + timeout
        while True:
            info = self.qmp("query-migrate")
            if progress is not None:
                progress(info)
            status = info.get("status")
            if status == "completed":
                # QEMU 7.2 says `completed` a moment before it has worked out the times:
                # total-time and downtime read 0 then; ask again until they are in
                settle = time.monotonic() + 2
                while not info.get("total-time") and time.monotonic() < settle:
                    time.sleep(0.005)
                    info = self.qmp("query-migrate")
                return _migration_summary(info)
            if status in ("failed", "cancelled"):
                raise MigrationFailed(status, info)
            if time.monotonic() > deadline:
                self.cancel_migration()
                raise MigrationFailed("timeout", info)
            time.sleep(0.02)

    def cancel_migration(self) -> None:
        """Stop an outgoing migration; the source goes on running (status `cancelled`)."""
        self.qmp("migrate_cancel")


def _migration_summary(info: dict) -> dict:
    ram = info.get("ram", {})
    return {"status": info.get("status"), "total_ms": info.get("total-time"), "downtime_ms": info.get("downtime"),
            "setup_ms": info.get("setup-time"), "ram_transferred": ram.get("transferred"),
            "ram_total": ram.get("total"), "ram_duplicate_pages": ram.get("duplicate"),
            "ram_normal_pages": ram.get("normal"), "dirty_sync_count": ram.get("dirty-sync-count"),
            "mbps": ram.get("mbps"), "info": info}


class _Qmp:
    """A QMP connection: the greeting read, capabilities negotiated, then commands one
    at a time. QEMU writes one JSON object per line; asynchronous events (a MIGRATION
    status change, say) may come before a reply and are skipped (kept in `events`)."""

    def __init__(self, path: str, timeout: float = 10):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.buf = b""
        self.events: list[dict] = []
        try:
            self.sock.connect(path)
            greeting = self._read()
            while "event" in greeting:  # seen: a MIGRATION_PASS event ahead of the greeting
                self.events.append(greeting)
                greeting = self._read()
            if "QMP" not in greeting:
                raise VmError(f"{path}: not a QMP greeting: {greeting}")
            self.command("qmp_capabilities")
        except BaseException:
            self.sock.close()
            raise

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.sock.close()

    def _read(self) -> dict:
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise VmError("QMP: QEMU closed the connection")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return json.loads(line)

    def command(self, name: str, **args):
        msg: dict = {"execute": name}
        if args:
            msg["arguments"] = args
        self.sock.sendall(json.dumps(msg).encode() + b"\n")
        while True:
            reply = self._read()
            if "event" in reply:
                self.events.append(reply)
            elif "error" in reply:
                err = reply["error"]
                raise VmError(f"QMP {name}: {err.get('class')}: {err.get('desc')}")
            elif "return" in reply:
                return reply["return"]


def make_tap(netns: str, tap: str, mtu: int | None = None) -> None:
    """A tap in the host's namespace, up, for QEMU to open (it opens it by name)."""
    base = ["ip", "netns", "exec", netns, "ip"]
    subprocess.run(base + ["tuntap", "add", "dev", tap, "mode", "tap"], check=True, capture_output=True)
    if mtu:
        subprocess.run(base + ["link", "set", tap, "mtu", str(mtu)], check=True, capture_output=True)
    subprocess.run(base + ["link", "set", tap, "up"], check=True, capture_output=True)


def remove_tap(netns: str, tap: str) -> None:
    subprocess.run(["ip", "netns", "exec", netns, "ip", "link", "del", tap], capture_output=True)


__all__ = ["Guest", "MigrationFailed", "VmError", "image", "kernel", "make_tap", "remove_tap"]
