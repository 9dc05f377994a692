"""What the network API costs against the unix socket (`python -m bench.api_latency`, root).

One controller (`python -m controller.server.main`, SQLite, a temp state dir, loopback
only, the root network namespace, no switches) serves its API on the unix socket and
over HTTPS (`--api-listen 127.0.0.1:PORT`); an admin credential is issued through the
socket and written as `nvctl credential issue` writes it. A small tenant (one host
registered, 10 ports on it, two switches, a router and two ACL rules) makes the reads real.

1. One client, one request after another, REQUESTS each, for `tenant.show` of that
   tenant and for `ping`, over
     (a) the unix socket, a new connection per request (as the CLI does: client.api.call),
     (b) HTTPS with one kept-alive connection and a bearer token (client.api.call with
         one Remote),
     (c) HTTPS with a new TLS connection per request: the credential file loaded, a new
         SSL context, a full handshake, the request, closed (what a one-shot
         `nvctl --credential` command pays, interpreter start-up apart).
   Per repetition: median and p99 latency of each, the ratios b/a and c/a of both, and
   the CPU per request of the controller (its process CPU clock, less what it uses with
   nothing asked: its timers, measured for 5 s first) and of this client.
2. CLIENTS threads at once, each PER_CLIENT `tenant.show` requests, each thread its own
   client: (a) the unix socket, a new connection per request; (b) HTTPS, each thread its
   own kept-alive connection (opened before the clock); (c) HTTPS, a new TLS connection
   per request (one-shot callers at once: a process per call, each with a credential).
   Throughput (requests/s from the start barrier to the last answer) and median/p99
   latency; ratios against (a).

Every figure is the median over REPS repetitions with its range (min-max); the modes
are interleaved within each repetition and their order rotates from one to the next.
The client runs on the same machine as the controller (Python, the GIL): client-side
costs are in every latency, for all modes alike. A failed request is an error, never
a figure.

    python -m bench.api_latency [--requests 200] [--reps 5] [--clients 50] [--per-client 20] [--json]
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from bench.stats import percentile, spread

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODES = ("unix", "https_keepalive", "https_new_tls")
LABEL = {"unix": "(a) unix socket, new connection per request",
         "https_keepalive": "(b) HTTPS, kept-alive connection, bearer token",
         "https_new_tls": "(c) HTTPS, new TLS connection per request"}
TENANT = "bench"


def tenant_yaml(name: str = TENANT, ports: int = 10) -> str:
    """A small tenant on host hv1: two switches, a router between them, ACLs guarding the
    db ports, `ports` ports (no workloads: hv1 is registered, not a lab host)."""
    rows = "\n".join(f"    - {{name: {'web' if i % 2 else 'db'}{i}, switch: {'web' if i % 2 else 'db'}, "
                     f"ip: 10.0.{0 if i % 2 else 1}.{10 + i}, host: hv1}}" for i in range(ports))
    db = ", ".join(f"db{i}" for i in range(0, ports, 2))
    return (f"apiVersion: nvctl/v1\nkind: Tenant\nmetadata: {{name: {name}}}\nspec:\n"
            f"  switches:\n    - {{name: web, cidr: 10.0.0.0/24}}\n    - {{name: db, cidr: 10.0.1.0/24}}\n"
            f"  routers:\n    - name: r1\n      ports: [{{switch: web, ip: 10.0.0.1}}, {{switch: db, ip: 10.0.1.1}}]\n"
            f"  acls:\n"
            f"    - {{priority: 200, direction: to-port, ports: [{db}], from: web, protocol: tcp, dstPorts: [5432], "
            f"action: allow}}\n"
            f"    - {{priority: 100, direction: to-port, ports: [{db}], action: deny}}\n"
            f"  ports:\n{rows}\n")


# --- summaries (pure) ------------------------------------------------------------------

def latency_summary(samples: list[float]) -> dict:
    """Median and p99 in ms of one run's per-request latencies (seconds)."""
    return {"n": len(samples), "median_ms": round(statistics.median(samples) * 1000, 3),
            "p99_ms": round(percentile(samples, 0.99) * 1000, 3)}


def ratio_of(a: float | None, b: float | None, nd: int = 3) -> float | None:
    return round(a / b, nd) if a and b else None


def rotated(modes, rep: int) -> list:
    """The modes in the order repetition `rep` runs them (rotated: none always first)."""
    modes = list(modes)
    k = rep % len(modes)
    return modes[k:] + modes[:k]


def summarize(runs: list[dict], keys: tuple[str, ...], base: str = "unix") -> dict:
    """Repetitions of {mode: {figure: value}} -> {mode: {figure: spread}} and the ratios of
    every other mode to `base`, computed per repetition and then summarized the same way
    (the median of the ratios, with their range)."""
    modes = [m for m in runs[0] if isinstance(runs[0][m], dict)]
    out: dict = {m: {k: spread([r[m].get(k) for r in runs]) for k in keys} for m in modes}
    ratios: dict = {}
    for m in modes:
        if m == base:
            continue
        for k in keys:
            xs = [ratio_of(r[m].get(k), r[base].get(k)) for r in runs]
            s = spread([x for x in xs if x is not None])
            if s is not None:
                ratios[f"{m}_over_{base}_{k}"] = s
    out["ratios"] = ratios
    return out


# --- the controller ----------------------------------------------------------------------

def free_ports(n: int) -> list[int]:
    """n TCP ports free on loopback now (all bound at once, so they differ)."""
    import socket
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def process_cpu_ns(pid: int) -> int:
    """CPU time (ns) of process `pid` so far, every thread, the ones that ended too: its
    process CPU clock (Linux: clock id ((~pid) << 3) | 2, CPUCLOCK_SCHED), as precise as
    the scheduler's; /proc/PID/stat would count in 10 ms ticks, and per-thread schedstat
    loses the threads the controller ends after each connection."""
    return time.clock_gettime_ns(((~pid) << 3) | 2)


class Controller:
    """The controller as a subprocess on loopback with its own temp state dir; stop()
    ends it by its PID."""

    def __init__(self, log=print):
        self.log = log
        self.dir = tempfile.mkdtemp(prefix="nvbench-api-")
        self.proc: subprocess.Popen | None = None
        self.sock = os.path.join(self.dir, "nvctl.sock")
        self.https_port = None

    def start(self, timeout: float = 60) -> "Controller":
        of_port, join_port, tls_port, self.https_port = free_ports(4)
        cmd = [sys.executable, "-m", "controller.server.main", "--state-dir", self.dir,
               "--pki", os.path.join(self.dir, "pki"), "--api-listen", f"127.0.0.1:{self.https_port}",
               "--listen", "127.0.0.1", "--port", str(of_port), "--api-port", str(join_port),
               "--tls-port", str(tls_port), "--log-level", "WARNING"]
        env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
        log = open(os.path.join(self.dir, "controller.log"), "ab")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env=env, cwd=ROOT, start_new_session=True)
        log.close()
        from controller.transport.framing import request
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the controller exited with {self.proc.returncode}: {self.tail()}")
            try:
                if request(self.sock, {"op": "ping", "args": {}}, 2).get("ok"):
                    break
            except (OSError, ValueError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the controller did not answer in {timeout:.0f}s: {self.tail()}")
            time.sleep(0.1)
        self.log(f"[api] controller pid {self.proc.pid}: unix socket {self.sock}, "
                 f"HTTPS on 127.0.0.1:{self.https_port}")
        return self

    def tail(self) -> str:
        try:
            with open(os.path.join(self.dir, "controller.log")) as f:
                return f.read()[-2000:]
        except OSError:
            return ""

    def cpu_ns(self) -> int:
        return process_cpu_ns(self.proc.pid)

    def stop(self) -> None:
        p = self.proc
        if p is not None and p.poll() is None:
            os.kill(p.pid, signal.SIGTERM)  # its handler exits at once
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(p.pid, signal.SIGKILL)
                p.wait(10)
        self.proc = None

    def remove(self) -> None:
        import shutil
        shutil.rmtree(self.dir, ignore_errors=True)


def prepare(ctl: Controller) -> str:
    """hv1, the tenant, an admin credential file; the credential's path."""
    from controller.client.accesscmd import issue, write_credential
    from controller.client.api import call
    call(ctl.sock, "host.register", name="hv1", pa="192.0.2.11", dpid=0x101, info={"kind": "test"})
    call(ctl.sock, "tenant.create", yaml=tenant_yaml())
    cred = issue(ctl.sock, "bench-admin", "admin")
    if not cred["servers"]:
        raise RuntimeError("the controller names no network API server in its credential")
    path = os.path.join(ctl.dir, "bench-admin.cred")
    write_credential(path, cred)
    return path


# --- the clients -------------------------------------------------------------------------

class Client:
    """One caller in one mode: `one(op, args)` makes one request."""

    def __init__(self, mode: str, sock: str, cred: str):
        from controller.client.api import call, load_credential
        self.mode, self.sock, self.cred = mode, sock, cred
        self._call, self._load = call, load_credential
        self.remote = load_credential(cred) if mode == "https_keepalive" else None
        self.load_s: list[float] = []  # (c) the credential file into a new SSL context, per request

    def one(self, op: str, args: dict):
        if self.mode == "unix":
            return self._call(self.sock, op, timeout=60, **args)
        if self.mode == "https_keepalive":
            return self._call(self.remote, op, timeout=60, **args)
        t0 = time.perf_counter()
        remote = self._load(self.cred)
        self.load_s.append(time.perf_counter() - t0)
        try:
            return self._call(remote, op, timeout=60, **args)
        finally:
            remote.connection(remote.servers[0]).close()

    def close(self) -> None:
        if self.remote is not None:
            for url in self.remote.servers:
                self.remote.connection(url).close()


OPS = {"tenant.show": {"name": TENANT}, "ping": {}}


def idle_cpu(ctl: Controller, seconds: float = 5.0) -> float:
    """The controller's CPU with nothing asked (its own timers), in cores."""
    c0, t0 = ctl.cpu_ns(), time.monotonic()
    time.sleep(seconds)
    return (ctl.cpu_ns() - c0) / 1e9 / (time.monotonic() - t0)


def sequential(ctl: Controller, cred: str, requests: int, reps: int, idle: float = 0.0, log=print) -> dict:
    """Part 1: one client, one request after another, every mode and op, REPS times.
    `idle`: the controller's CPU with nothing asked (cores), taken off its CPU per request."""
    clients = {m: Client(m, ctl.sock, cred) for m in MODES}
    for m in MODES:  # warm up: imports, the kept-alive connection, the controller's caches
        for op, args in OPS.items():
            for _ in range(20):
                clients[m].one(op, args)
    runs: dict[str, list[dict]] = {op: [] for op in OPS}
    load_ms: list[float] = []
    answer_bytes = {op: len(json.dumps(clients["unix"].one(op, args))) for op, args in OPS.items()}
    for rep in range(reps):
        per_op: dict[str, dict] = {op: {} for op in OPS}
        for m in rotated(MODES, rep):
            for op, args in OPS.items():
                c = clients[m]
                c.load_s.clear()
                lat = []
                srv0, cli0, w0 = ctl.cpu_ns(), time.process_time(), time.perf_counter()
                for _ in range(requests):
                    t0 = time.perf_counter()
                    c.one(op, args)
                    lat.append(time.perf_counter() - t0)
                srv, cli = ctl.cpu_ns() - srv0, time.process_time() - cli0
                srv -= idle * (time.perf_counter() - w0) * 1e9
                per_op[op][m] = {**latency_summary(lat),
                                 "server_cpu_ms": round(srv / 1e6 / requests, 3),
                                 "client_cpu_ms": round(cli * 1000 / requests, 3)}
                if c.load_s:
                    load_ms.append(statistics.median(c.load_s) * 1000)
        for op in OPS:
            runs[op].append(per_op[op])
        log(f"[api] rep {rep + 1}/{reps}: " + "; ".join(
            f"{op} " + " ".join(f"{m.split('_')[0] if m == 'unix' else m[6:]} {per_op[op][m]['median_ms']:.2f}"
                                for m in MODES) + " ms" for op in OPS))
    for c in clients.values():
        c.close()
    keys = ("median_ms", "p99_ms", "server_cpu_ms", "client_cpu_ms")
    return {"requests": requests, "reps": reps, "answer_bytes": answer_bytes, "server_idle_cores": round(idle, 4),
            "ops": {op: summarize(runs[op], keys) for op in OPS},
            "credential_load_ms": spread(load_ms), "runs": runs}


def _concurrent_once(ctl: Controller, cred: str, mode: str, clients: int, per_client: int, idle: float) -> dict:
    op, args = "tenant.show", OPS["tenant.show"]
    callers = [Client(mode, ctl.sock, cred) for _ in range(clients)]
    if mode == "https_keepalive":
        for c in callers:  # each its own connection, open before the clock
            c.one("ping", {})
    lat: list[list[float]] = [[] for _ in range(clients)]
    errors: list[str] = []
    ends = [0.0] * clients
    barrier = threading.Barrier(clients + 1)

    def run(i: int) -> None:
        c, mine = callers[i], lat[i]
        barrier.wait()
        try:
            for _ in range(per_client):
                t0 = time.perf_counter()
                c.one(op, args)
                mine.append(time.perf_counter() - t0)
        except Exception as e:  # noqa: BLE001  (reported, and the run fails)
            errors.append(f"{type(e).__name__}: {e}")
        ends[i] = time.perf_counter()

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    srv0 = ctl.cpu_ns()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join(600)
    srv = ctl.cpu_ns() - srv0 - idle * (time.perf_counter() - start) * 1e9
    for c in callers:
        c.close()
    if errors:
        raise RuntimeError(f"{mode}: {len(errors)} of {clients} clients failed, e.g. {errors[0]}")
    samples = [x for xs in lat for x in xs]
    wall = max(ends) - start
    return {**latency_summary(samples), "requests_per_s": round(len(samples) / wall, 1),
            "wall_s": round(wall, 3), "server_cpu_ms": round(srv / 1e6 / len(samples), 3)}


def concurrent(ctl: Controller, cred: str, clients: int, per_client: int, reps: int, idle: float = 0.0,
               log=print) -> dict:
    """Part 2: CLIENTS threads at once, each PER_CLIENT tenant.show, every mode, REPS times."""
    runs = []
    for rep in range(reps):
        one = {m: _concurrent_once(ctl, cred, m, clients, per_client, idle) for m in rotated(MODES, rep)}
        runs.append({m: one[m] for m in MODES})
        log(f"[api] {clients} clients, rep {rep + 1}/{reps}: " + "; ".join(
            f"{m} {one[m]['requests_per_s']:.0f}/s p50 {one[m]['median_ms']:.1f} p99 {one[m]['p99_ms']:.1f} ms"
            for m in MODES))
    keys = ("requests_per_s", "median_ms", "p99_ms", "server_cpu_ms")
    return {"clients": clients, "per_client": per_client, "op": "tenant.show", "reps": reps,
            **summarize(runs, keys), "runs": runs}


def ratios(res: dict) -> dict:
    """The headline ratios, flat, under names that stay the same from run to run (medians)."""
    out = {}
    for op, r in (res.get("sequential") or {}).get("ops", {}).items():
        name = op.replace(".", "_")
        for m, short in (("https_keepalive", "keepalive"), ("https_new_tls", "new_tls")):
            for k in ("median_ms", "p99_ms"):
                s = r["ratios"].get(f"{m}_over_unix_{k}")
                if s:
                    out[f"api_{name}_{short}_over_unix_{k[:-3]}"] = s["median"]
    c = res.get("concurrent") or {}
    for m, short in (("https_keepalive", "keepalive"), ("https_new_tls", "new_tls")):
        for k in ("requests_per_s", "median_ms", "p99_ms"):
            s = (c.get("ratios") or {}).get(f"{m}_over_unix_{k}")
            if s:
                out[f"api_{c['clients']}clients_{short}_over_unix_{k.replace('_ms', '')}"] = s["median"]
    return dict(sorted(out.items()))


def busy_seconds() -> float:
    """CPU seconds every process on this machine has used since boot (/proc/stat)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (sum(v[:3]) + sum(v[5:8])) / os.sysconf("SC_CLK_TCK")  # user nice system, irq softirq steal


class Quiet:
    """How busy the rest of the machine was meanwhile: every CPU's busy time (/proc/stat)
    minus this process's and the controller's, as cores in use on average."""

    def __init__(self, ctl: Controller):
        self.ctl = ctl
        self.t, self.busy, self.own, self.srv = time.monotonic(), busy_seconds(), time.process_time(), ctl.cpu_ns()

    def others_cores(self) -> float:
        wall = time.monotonic() - self.t
        own = time.process_time() - self.own + (self.ctl.cpu_ns() - self.srv) / 1e9
        return round(max(0.0, busy_seconds() - self.busy - own) / wall, 2)


def run(requests: int = 200, reps: int = 5, clients: int = 50, per_client: int = 20, log=print) -> dict:
    ctl = Controller(log=log)
    try:
        ctl.start()
        cred = prepare(ctl)
        res = {"load_before": round(os.getloadavg()[0], 2), "cpus": os.cpu_count()}
        idle = idle_cpu(ctl)
        log(f"[api] the controller idle: {idle * 100:.2f}% of a core (taken off its CPU per request)")
        q = Quiet(ctl)
        res["sequential"] = sequential(ctl, cred, requests, reps, idle, log=log)
        res["sequential"]["others_cores"] = q.others_cores()
        q = Quiet(ctl)
        res["concurrent"] = concurrent(ctl, cred, clients, per_client, reps, idle, log=log)
        res["concurrent"]["others_cores"] = q.others_cores()
    finally:
        ctl.stop()
        ctl.remove()
    res["ratios"] = ratios(res)
    return res


# --- the report --------------------------------------------------------------------------

def _fmt(s: dict | None, nd: int = 2, unit: str = "") -> str:
    if not s:
        return "-"
    return f"{s['median']:.{nd}f}{unit} ({s['min']:.{nd}f}-{s['max']:.{nd}f})"


def report(res: dict) -> str:
    lines = []
    s = res["sequential"]
    lines.append(f"One client, {s['requests']} requests per mode and op, {s['reps']} repetitions: "
                 f"median over the repetitions (min-max)")
    for op, r in s["ops"].items():
        lines.append(f"\n{op} (answer {s['answer_bytes'][op]} bytes of JSON)")
        lines.append(f"  {'mode':48} {'median ms':>20} {'p99 ms':>20} {'server CPU ms/req':>20} "
                     f"{'client CPU ms/req':>20}")
        for m in MODES:
            lines.append(f"  {LABEL[m]:48} {_fmt(r[m]['median_ms']):>20} {_fmt(r[m]['p99_ms']):>20} "
                         f"{_fmt(r[m]['server_cpu_ms']):>20} {_fmt(r[m]['client_cpu_ms']):>20}")
        for m, name in (("https_keepalive", "b/a"), ("https_new_tls", "c/a")):
            lines.append(f"  {name}: median {_fmt(r['ratios'].get(f'{m}_over_unix_median_ms'), unit='x')}, "
                         f"p99 {_fmt(r['ratios'].get(f'{m}_over_unix_p99_ms'), unit='x')}")
    if s.get("credential_load_ms"):
        lines.append(f"\n(c) includes loading the credential file into a new SSL context: "
                     f"{_fmt(s['credential_load_ms'], 3)} ms a request")
    lines.append(f"server CPU is less the controller's idle use, {s.get('server_idle_cores', 0) * 100:.2f}% of a core")
    b = s["ops"].get("ping", {}).get("https_keepalive", {}).get("median_ms")
    if b and 38 <= b["median"] <= 48:
        lines.append("note: (b) sits on the 40 ms delayed-ACK timer: an answer in two sends (headers, then body) "
                     "on a socket with Nagle on waits for the client's ACK of the first (BENCHMARKS.md)")
    c = res["concurrent"]
    lines.append(f"\n{c['clients']} clients at once, {c['per_client']} {c['op']} each, {c['reps']} repetitions")
    lines.append(f"  {'mode':48} {'requests/s':>20} {'median ms':>20} {'p99 ms':>20} {'server CPU ms/req':>20}")
    for m in MODES:
        lines.append(f"  {LABEL[m]:48} {_fmt(c[m]['requests_per_s'], 0):>20} {_fmt(c[m]['median_ms'], 1):>20} "
                     f"{_fmt(c[m]['p99_ms'], 1):>20} {_fmt(c[m]['server_cpu_ms']):>20}")
    for m, name in (("https_keepalive", "b/a"), ("https_new_tls", "c/a")):
        rr = c["ratios"]
        lines.append(f"  {name}: throughput {_fmt(rr.get(f'{m}_over_unix_requests_per_s'), unit='x')}, "
                     f"median {_fmt(rr.get(f'{m}_over_unix_median_ms'), unit='x')}, "
                     f"p99 {_fmt(rr.get(f'{m}_over_unix_p99_ms'), unit='x')}")
    lines.append(f"\nthe rest of the machine meanwhile: {s.get('others_cores', 0):.2f} cores busy on average "
                 f"(one client), {c.get('others_cores', 0):.2f} ({c['clients']} clients), of {res['cpus']}; "
                 f"load average {res['load_before']:.2f} before")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.api_latency", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=200, help="requests per mode, op and repetition (one client)")
    ap.add_argument("--reps", type=int, default=5, help="repetitions (default %(default)s)")
    ap.add_argument("--clients", type=int, default=50, help="clients at once (default %(default)s)")
    ap.add_argument("--per-client", type=int, default=20, help="requests each of them makes (default %(default)s)")
    ap.add_argument("--json", action="store_true", help="the results as JSON on stdout (progress on stderr)")
    a = ap.parse_args(argv)
    if min(a.requests, a.reps, a.clients, a.per_client) < 1:
        ap.error("--requests, --reps, --clients and --per-client take a positive number")
    log = (lambda m: print(m, file=sys.stderr, flush=True)) if a.json else (lambda m: print(m, flush=True))
    res = run(a.requests, a.reps, a.clients, a.per_client, log=log)
    if a.json:
        print(json.dumps(res, indent=1))
    else:
        print(report(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
