"""Probe tags: a capture counts only what the probe sent, not a workload's own chatter."""
from scapy.all import ICMP, IP, Ether, Raw
from scapy.contrib.igmpv3 import IGMPv3, IGMPv3mr

from scenarios.netutil import tagged

TAG = b"\xb1\x0e\xde\x30"


def test_tagged_counts_only_probes():
    probe = Ether() / IP(src="10.0.0.11", dst="10.0.0.12") / ICMP() / Raw(bytes(16) + TAG * 10)
    other_ping = Ether() / IP(src="10.0.0.11", dst="10.0.0.12") / ICMP() / Raw(bytes(56))
    igmp = Ether() / IP(src="10.0.0.11", dst="224.0.0.22") / IGMPv3() / IGMPv3mr()
    assert tagged([probe, other_ping, igmp], TAG) == 1
    assert tagged([igmp, other_ping], TAG) == 0
    assert tagged([probe, probe], TAG) == 2


def test_dhclient_stop_ends_the_daemon_found_by_its_own_pid_file_only(tmp_path):
    """The daemon dhclient leaves is found by the pid-file path on its command line (it
    may not have written the file yet); a dhclient of another run is left alone."""
    import subprocess
    import sys
    import time
    from scenarios.netutil import Dhclient, _dhclients_with, _running
    code = "import time; time.sleep(60)"
    mine = str(tmp_path / "mine" / "dhclient.pid")
    other = str(tmp_path / "other" / "dhclient.pid")
    procs = [subprocess.Popen(["bash", "-c", f'exec -a dhclient "{sys.executable}" -c "{code}" -pf {pf} eth0'])
             for pf in (mine, other)]
    try:
        deadline = time.monotonic() + 5
        while len(_dhclients_with(mine)) + len(_dhclients_with(other)) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert _dhclients_with(mine) == [procs[0].pid] and _dhclients_with(other) == [procs[1].pid]
        d = object.__new__(Dhclient)
        d.pidfile = mine
        d.proc = subprocess.Popen(["true"])
        d.proc.wait()
        d.stop()
        assert procs[0].wait(timeout=5) is not None
        assert _running(procs[1].pid) and _dhclients_with(other) == [procs[1].pid]
    finally:
        for p in procs:
            p.kill()
            p.wait()
