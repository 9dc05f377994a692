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
