"""The front door: the README's first command, run exactly as a new user runs it."""
import os
import shutil
import subprocess
import tempfile

from pyroute2 import netns

from scenarios.lab import Lab
from tests.integration.helpers import ROOT


def test_make_demo_passes_and_leaves_nothing_behind():
    d = tempfile.mkdtemp(prefix="nvdemo-")
    prefix = Lab(d, log=lambda *a: None).prefix
    try:
        p = subprocess.run(["make", "demo"], cwd=ROOT, capture_output=True, text=True, timeout=600,
                           env={**os.environ, "NVCTL_STATE_DIR": d})
        out = p.stdout + p.stderr
        assert p.returncode == 0, f"make demo failed ({p.returncode}):\n{out[-4000:]}"
        assert "demo: all claims hold" in out, out[-4000:]
        assert "received by red's workloads: {'vm1': 0, 'vm2': 0, 'vm3': 0, 'vm4': 0}" in out, out[-4000:]
        assert "web2 (app=blog)            -> db1:5432  timeout" in out, out[-4000:]
        left = [n for n in netns.listnetns() if n.startswith(prefix)]
        assert not left, f"make demo left namespaces behind: {left}"
    finally:
        Lab(d, log=lambda *a: None).down(quiet=True)
        shutil.rmtree(d, ignore_errors=True)
