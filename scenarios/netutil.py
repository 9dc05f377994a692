"""Traffic and capture helpers for scenarios and tests (lab namespaces only)."""
from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import tempfile
import time


def in_ns(ns: str, *cmd, timeout=60, check=False) -> subprocess.CompletedProcess:
    p = subprocess.run(["ip", "netns", "exec", ns, *cmd], capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} in {ns} failed: {p.stderr}{p.stdout}")
    return p


def eth0_addresses(ns: str) -> tuple[str, str]:
    """A workload's (CA/prefix, MAC) as its own kernel sees them on eth0."""
    link = in_ns(ns, "ip", "-o", "link", "show", "eth0", check=True).stdout
    addr = in_ns(ns, "ip", "-o", "-4", "addr", "show", "eth0", check=True).stdout
    return re.search(r"inet (\S+)", addr).group(1), re.search(r"link/ether (\S+)", link).group(1)


def ping_many(pairs, count=3, interval=0.2, pattern: str = "") -> dict:
    """pairs: [(ns, dst_ip, label)], run at once -> {label: (received, transmitted)}.
    `pattern` (hex, up to 16 bytes) fills the payload, to tag the probes (`ping -p`)."""
    tag = ["-p", pattern] if pattern else []
    procs = {label: subprocess.Popen(["ip", "netns", "exec", ns, "ping", "-n", "-c", str(count),
                                      "-i", str(interval), "-W", "2", *tag, ip],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for ns, ip, label in pairs}
    out = {}
    for label, p in procs.items():
        text, _ = p.communicate(timeout=60)
        m = re.search(r"(\d+) packets transmitted, (\d+) received", text)
        out[label] = (int(m.group(2)), int(m.group(1))) if m else (0, count)
    return out


def tagged(packets, tag: bytes) -> int:
    """How many captured packets carry `tag` in their payload (a probe's mark)."""
    return sum(1 for p in packets if tag in bytes(p))


class Capture:
    """tcpdump in a namespace into a pcap. stop() returns the packet count; packets()
    parses the pcap with scapy (a test dependency)."""

    def __init__(self, ns: str, iface: str, bpf: str = "", inbound_only=False):
        fd, self.path = tempfile.mkstemp(suffix=".pcap")
        os.close(fd)
        # --immediate-mode: otherwise packets wait in the ring for a block timeout, and
        # SIGINT ends tcpdump without writing them ("N received by filter, 0 captured")
        cmd = ["ip", "netns", "exec", ns, "tcpdump", "--immediate-mode", "-i", iface, "-n", "-U",
               "-w", self.path]
        if inbound_only:
            cmd += ["-Q", "in"]
        cmd += bpf.split()
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.count: int | None = None
        said = ""
        while "listening on" not in said:
            ready, _, _ = select.select([self.proc.stderr], [], [], 10)
            line = self.proc.stderr.readline().decode() if ready else ""
            if not line:
                self.proc.kill()
                self.proc.wait()
                os.unlink(self.path)
                raise RuntimeError(f"tcpdump in {ns} did not start: {said}")
            said += line

    def stop(self) -> int:
        if self.count is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                _, err = self.proc.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                _, err = self.proc.communicate()
            m = re.search(rb"(\d+) packets? captured", err or b"")
            self.count = int(m.group(1)) if m else 0
        return self.count

    def packets(self) -> list:
        from scapy.all import rdpcap  # registers every link type and layer
        self.stop()
        try:
            return list(rdpcap(self.path))
        finally:
            os.unlink(self.path)

    def discard(self) -> int:
        n = self.stop()
        if os.path.exists(self.path):
            os.unlink(self.path)
        return n


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _probe_cmd(ns: str, *args) -> list[str]:
    import sys
    return ["ip", "netns", "exec", ns, sys.executable, "-m", "scenarios.tcpprobe", *args]


class TcpServer:
    """An echo server in a workload namespace, ended (by its PID) on stop()."""

    def __init__(self, ns: str, port: int, name: str = ""):
        args = ["serve", str(port)] + (["--name", name] if name else [])
        self.proc = subprocess.Popen(_probe_cmd(ns, *args), cwd=ROOT,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        line = self.proc.stdout.readline()
        if "listening" not in line:
            self.stop()
            raise RuntimeError(f"tcp server in {ns} did not start: {line}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class EchoServers(TcpServer):
    """TCP and UDP echo servers on the given ports, in one process in a namespace."""

    def __init__(self, ns: str, tcp=(), udp=(), name: str = ""):
        self.proc = subprocess.Popen(_probe_cmd(ns, "serve-many", "--tcp", ",".join(map(str, tcp)),
                                                "--udp", ",".join(map(str, udp)), "--name", name), cwd=ROOT,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        line = self.proc.stdout.readline()
        if "listening" not in line:
            self.stop()
            raise RuntimeError(f"echo servers in {ns} did not start: {line}")


def probe_matrix(targets: dict, timeout: float = 1.0) -> dict:
    """{ns: ["IP/PROTO/PORT", ...]} -> {(ns, target): "ok:NAME" | "timeout" | "refused" | "error"},
    every namespace's targets at once (one prober process per namespace, in parallel)."""
    import json as _json
    procs = {ns: subprocess.Popen(_probe_cmd(ns, "matrix", *ts, "--timeout", str(timeout)), cwd=ROOT,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for ns, ts in targets.items() if ts}
    out = {}
    for ns, p in procs.items():
        stdout, stderr = p.communicate(timeout=timeout * 4 + 60)
        if p.returncode != 0:
            raise RuntimeError(f"prober in {ns} failed ({p.returncode}): {stderr[-500:]}")
        out.update({(ns, t): r for t, r in _json.loads(stdout).items()})
    return out


def tcp_connect(ns: str, ip: str, port: int, timeout: float = 2.0) -> str:
    """'connected', 'refused', 'timeout' or 'error'."""
    p = subprocess.run(_probe_cmd(ns, "connect", ip, str(port), "--timeout", str(timeout)),
                       cwd=ROOT, capture_output=True, text=True, timeout=timeout + 30)
    return {0: "connected", 3: "refused", 4: "timeout"}.get(p.returncode, "error")


def tcp_whois(ns: str, ip: str, port: int, count: int, timeout: float = 2.0) -> list:
    """Open `count` connections one after another; the greeting (server name) of each."""
    import json as _json
    p = subprocess.run(_probe_cmd(ns, "whois", ip, str(port), "--count", str(count), "--timeout", str(timeout)),
                       cwd=ROOT, capture_output=True, text=True, timeout=count * (timeout + 1) + 30)
    if p.returncode != 0:
        raise RuntimeError(f"tcpprobe whois in {ns} failed ({p.returncode}): {p.stdout}{p.stderr}")
    return _json.loads(p.stdout)


def tcp_stream(ns: str, ip: str, port: int, seconds: float, interval: float = 0.05) -> subprocess.Popen:
    """Start a long-lived echo stream; .communicate() gives its JSON report."""
    return subprocess.Popen(_probe_cmd(ns, "stream", ip, str(port), "--seconds", str(seconds),
                                       "--interval", str(interval)),
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_listening(ns: str, port: int, udp: bool = False, timeout: float = 10) -> None:
    """Wait until something in namespace `ns` listens on `port` (read with ss)."""
    deadline = time.monotonic() + timeout
    flag = "-Hlun" if udp else "-Hltn"
    while True:
        p = in_ns(ns, "ss", flag, f"sport = :{port}", timeout=10)
        if p.stdout.strip():
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"nothing listens on port {port} in {ns} after {timeout:g} s")
        time.sleep(0.05)


def iperf3(client_ns: str, server_ns: str, server_ip: str, seconds: float = 3, port: int = 5201,
           udp_mbps: float | None = None) -> dict:
    """Run one iperf3 test between two lab namespaces; returns
    {"mbps": received Mbit/s, "retransmits": n}. The server is ours and ends with the test."""
    import json as _json
    srv = subprocess.Popen(["ip", "netns", "exec", server_ns, "iperf3", "-s", "-1", "-p", str(port)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        cmd = ["ip", "netns", "exec", client_ns, "iperf3", "-c", server_ip, "-p", str(port),
               "-t", str(seconds), "-J"]
        if udp_mbps:
            cmd += ["-u", "-b", f"{udp_mbps}M"]
        wait_listening(server_ns, port, udp=False, timeout=10)
        for attempt in range(20):
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30)
            # iperf3 -J can exit 0 with the connect error only in its JSON: look at the text
            if "Connection refused" not in p.stdout + p.stderr:
                break
            time.sleep(0.1)
        if p.returncode != 0:
            raise RuntimeError(f"iperf3 failed: {p.stdout[-500:]}{p.stderr[-500:]}")
        doc = _json.loads(p.stdout)
        r = doc["end"]
        received = r.get("sum_received") or r.get("sum")
        if received is None:
            raise RuntimeError(f"iperf3 {client_ns} -> {server_ip}: {doc.get('error') or 'no result'}")
        return {"mbps": round(received["bits_per_second"] / 1e6, 1),
                "retransmits": r.get("sum_sent", {}).get("retransmits", 0)}
    finally:
        if srv.poll() is None:
            srv.terminate()
        srv.wait(timeout=10)


class PingTimeline:
    """ping at a fixed interval in a namespace for `seconds`, every reply and every loss
    with its time.

    `ping -D -O` prints a wall-clock timestamp on each line and reports a probe that got
    no answer before the next one was due, so the result is a timeline, not only totals.
    (At -i 0.01 the kernel's timer tick stretches the real interval to 10-16 ms, so the
    ping is ended by time, with SIGINT, not by a count.)"""

    def __init__(self, ns: str, ip: str, seconds: float, interval: float = 0.01):
        self.interval = interval
        self.seconds = seconds
        self.started = time.time()
        # its lines go to a file, not a pipe: nobody reads until result(), and a full pipe
        # (64 KiB: some 800 lines, 8 s at 10 ms) would stop ping in its write, sending nothing more
        self.out = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(["ip", "netns", "exec", ns, "ping", "-D", "-O", "-n", "-i", str(interval),
                                      "-W", "1", "-c", str(int(seconds / interval) * 3 + 10), ip],
                                     stdout=self.out, stderr=subprocess.STDOUT, text=True)

    def result(self, timeout: float = 300) -> dict:
        """{sent, received, lost, lost_seqs, samples: [[t, rtt_ms or None], ...]} where t is
        seconds since the ping started (wall clock, comparable with time.time() marks).
        A lost probe's time is interpolated between the replies around it."""
        time.sleep(max(0.0, self.started + self.seconds - time.time()))
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        self.proc.wait(timeout=timeout)
        self.out.seek(0)
        out = self.out.read()
        self.out.close()
        replies: dict[int, tuple[float, float]] = {}
        for m in re.finditer(r"\[(\d+\.\d+)\] \d+ bytes from \S+ icmp_seq=(\d+) ttl=\d+ time=([\d.]+) ms", out):
            seq = int(m.group(2))
            replies.setdefault(seq, (float(m.group(1)) - float(m.group(3)) / 1000 - self.started, float(m.group(3))))
        m = re.search(r"(\d+) packets transmitted, (\d+) received", out)
        if m is None:
            raise RuntimeError(f"ping did not report: {out[-300:]}")
        sent = int(m.group(1))
        if sent and sent not in replies:
            sent -= 1  # the probe in flight when SIGINT came: neither answered nor lost
        seqs = sorted(replies)
        pace = ((replies[seqs[-1]][0] - replies[seqs[0]][0]) / (seqs[-1] - seqs[0])
                if len(seqs) > 1 else self.interval)
        samples, lost = [], []
        for seq in range(1, sent + 1):
            if seq in replies:
                t, rtt = replies[seq]
                samples.append([round(t, 4), rtt])
                continue
            lost.append(seq)
            before = max((q for q in seqs if q < seq), default=None)
            after = min((q for q in seqs if q > seq), default=None)
            if before is not None and after is not None:
                tb, ta = replies[before][0], replies[after][0]
                t = tb + (ta - tb) * (seq - before) / (after - before)
            elif before is not None:
                t = replies[before][0] + (seq - before) * pace
            elif after is not None:
                t = replies[after][0] - (after - seq) * pace
            else:
                t = (seq - 1) * pace
            samples.append([round(t, 4), None])
        return {"sent": sent, "received": sent - len(lost), "lost": len(lost), "lost_seqs": lost,
                "interval_s": self.interval, "samples": samples}

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


DHCLIENT_SCRIPT = """#!/bin/sh
# nvctl's private dhclient script: it sets the one interface it is given, and nothing else
# (the stock script also rewrites /etc/resolv.conf and runs hooks outside the namespace)
case "$reason" in BOUND|RENEW|REBIND|REBOOT)
  ip -4 addr flush dev "$interface"
  ip addr add "$new_ip_address/$new_subnet_mask" dev "$interface"
  [ -n "$new_interface_mtu" ] && ip link set "$interface" mtu "$new_interface_mtu"
  for r in $new_routers; do ip route replace default via "$r"; break; done
  printf '%s\\n' "at=$(date +%s.%N)" "ip=$new_ip_address" "mask=$new_subnet_mask" "mtu=$new_interface_mtu" \\
    "routers=$new_routers" "dns=$new_domain_name_servers" "domain=$new_domain_name" > "$(dirname "$0")/bound"
  ;;
esac
exit 0
"""


class Dhclient:
    """isc-dhcp-client, once (-1: one attempt, then give up), in a namespace, with its own
    lease file, pid file and script in `workdir`: it changes nothing outside the namespace.
    On success dhclient goes to the background; wait() ends that daemon by its PID."""

    def __init__(self, ns: str, ifname: str, workdir: str, timeout: float = 30):
        os.makedirs(workdir, exist_ok=True)
        self.dir, self.timeout = workdir, timeout
        self.script, self.pidfile = os.path.join(workdir, "dhclient-script"), os.path.join(workdir, "dhclient.pid")
        with open(self.script, "w") as f:
            f.write(DHCLIENT_SCRIPT)
        os.chmod(self.script, 0o755)
        self.started = time.time()
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, "timeout", str(int(timeout)), "dhclient", "-1", "-v",
             "-lf", os.path.join(workdir, "dhclient.leases"), "-pf", self.pidfile, "-sf", self.script, ifname],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def wait(self) -> dict:
        """{ok, seconds (start to address), lease: what the script was given, log}."""
        try:
            out, _ = self.proc.communicate(timeout=self.timeout + 30)
        finally:
            self.stop()
        lease = None
        try:
            with open(os.path.join(self.dir, "bound")) as f:
                lease = dict(line.rstrip("\n").split("=", 1) for line in f if "=" in line)
        except FileNotFoundError:
            pass
        seconds = round(float(lease["at"]) - self.started, 3) if lease else None
        return {"ok": self.proc.returncode == 0 and lease is not None, "seconds": seconds, "lease": lease,
                "exit": self.proc.returncode, "log": out[-1500:]}

    def stop(self) -> None:
        """End the daemon dhclient left behind: every dhclient whose command line names our
        own pid file (a path only this run uses). The daemon may write its pid file a
        moment after the foreground dhclient exits, so it is looked for by its command line,
        for up to a second when dhclient said it got a lease."""
        deadline = time.monotonic() + (1.0 if self.proc.poll() == 0 else 0.0)
        while True:
            pids = _dhclients_with(self.pidfile)
            if pids or time.monotonic() >= deadline:
                break
            time.sleep(0.05)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 5
        while any(_running(p) for p in pids) and time.monotonic() < deadline:
            time.sleep(0.02)


def _dhclients_with(pidfile: str) -> list[int]:
    """PIDs of the dhclient processes whose command line has `pidfile` as an argument."""
    out, want = [], pidfile.encode()
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                cmd = f.read().split(b"\0")
        except OSError:
            continue
        if cmd and b"dhclient" in os.path.basename(cmd[0]) and want in cmd:
            out.append(int(d))
    return out


def _running(pid: int) -> bool:
    """Whether a process is there and not a zombie (an orphan waits for its reaper)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
