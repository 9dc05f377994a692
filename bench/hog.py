"""A CPU hog for the benchmarks: one process spinning in a busy loop, so one core of
the machine is kept busy while a benchmark runs (`python -m bench.run --cpu-hog`).

Pinned (`cpu=1`: taskset's effect, through sched_setaffinity) it keeps that core busy
and the scheduler moves everything else to the others; unpinned it takes a core's worth
wherever the scheduler puts it. Started by the bench, stopped by its PID, whatever
happens (a context manager)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

_LOOP = "while True:\n    pass\n"


class CpuHog:
    def __init__(self, cpu: int | None = None):
        self.cpu = cpu
        self.proc: subprocess.Popen | None = None
        self.t0 = 0.0

    def start(self) -> "CpuHog":
        cpu = self.cpu

        def pin():
            if cpu is not None:
                os.sched_setaffinity(0, {cpu})
        self.proc = subprocess.Popen([sys.executable, "-c", _LOOP], preexec_fn=pin, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.t0 = time.monotonic()
        return self

    def cpu_s(self) -> float | None:
        """CPU seconds the hog has had so far (utime + stime)."""
        try:
            with open(f"/proc/{self.proc.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, AttributeError):
            return None

    def info(self) -> dict:
        """The hog's pid, pinning, how long it ran and the share of one core it had."""
        wall = time.monotonic() - self.t0
        cpu = self.cpu_s()
        return {"pid": self.proc.pid if self.proc else None, "cpu": self.cpu if self.cpu is not None else "any",
                "wall_s": round(wall, 1), "cpu_s": cpu,
                "core_share": round(cpu / wall, 3) if cpu is not None and wall > 0 else None}

    def stop(self) -> dict:
        info = self.info()
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)  # our own child, by its PID
            self.proc.wait(timeout=10)
        return info

    def __enter__(self) -> "CpuHog":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
