"""A lab of the bench's own for one suite, removed afterwards whatever happens."""
from __future__ import annotations

import shutil
import tempfile


def on_fresh_lab(fn, hosts: int = 3, **up):
    """fn(lab) on a lab of `hosts` hosts of its own (`up`: Lab.up's options), removed
    afterwards whatever happens."""
    from scenarios.lab import Lab
    d = tempfile.mkdtemp(prefix="nvbench-")
    lab = Lab(d, log=lambda m: print(m, flush=True))
    try:
        lab.up(hosts=hosts, **up)
        return fn(lab)
    finally:
        lab.down(quiet=True)
        shutil.rmtree(d, ignore_errors=True)
