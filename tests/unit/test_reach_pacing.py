"""The reachability probe's pacing (bench/reach.py Pacer) on a simulated clock: what it
offers stays under its cap, unanswered pairs back off, answered ones are left alone."""
import pytest

from bench.reach import Pacer, parse_workload_counters
from bench import drops


def drive(pacer, until, step=0.001, answer=lambda t, p: False):
    """Run the pacer on a simulated clock: [(time, pair)] of every request it sends."""
    sent, t = [], 0.0
    while t <= until and pacer.pending:
        for p in pacer.take(t):
            sent.append((t, p))
            if answer(t, p):
                pacer.answered(p)
        t = round(t + step, 6)
    return sent


def test_the_rate_cap_holds_over_every_window():
    pending = {(i, j) for i in range(100) for j in range(100) if i != j}  # 9,900 pairs, none answering
    pacer = Pacer(pending, 0.0, rate=2000, first=0.1, cap=1.0, burst=50)
    sent = drive(pacer, 5.0)
    times = [t for t, _ in sent]
    assert len(sent) > 9000  # the cap binds: it sends about as much as it may
    for w in (0.01, 0.1, 1.0):
        j = 0
        for i, t in enumerate(times):
            while times[j] < t - w + 1e-9:
                j += 1
            assert i - j + 1 <= 50 + 2000 * w + 1, (w, t)
    assert len(sent) <= 50 + 2000 * 5.0 + 1


def test_an_unanswered_pair_is_probed_at_doubling_intervals_up_to_the_cap():
    pacer = Pacer({(0, 1), (1, 0)}, 0.0, rate=1000, first=0.1, cap=0.8)
    sent = drive(pacer, 5.0)
    times = [t for t, p in sent if p == (0, 1)]
    gaps = [round(b - a, 3) for a, b in zip(times, times[1:])]
    assert gaps[:4] == pytest.approx([0.1, 0.2, 0.4, 0.8], abs=0.002)  # the clock's 1 ms step
    assert len(gaps) > 5 and all(g == pytest.approx(0.8, abs=0.002) for g in gaps[3:])  # capped


def test_an_answered_pair_is_never_probed_again():
    pending = {(i, j) for i in range(10) for j in range(10) if i != j}
    pacer = Pacer(pending, 0.0, rate=10000, first=0.05, cap=0.5)
    # (0, 1) answers its third request; every other pair its first after t=1.0
    count = {}

    def answer(t, p):
        count[p] = count.get(p, 0) + 1
        return count[p] == 3 if p == (0, 1) else t >= 1.0
    sent = drive(pacer, 5.0, answer=answer)
    assert sum(1 for _, p in sent if p == (0, 1)) == 3
    assert not pacer.pending
    last = {}
    for t, p in sent:
        last[p] = t
    assert all(sum(1 for t, q in sent if q == p and t > last[p]) == 0 for p in pending)
    assert pacer.wake(5.0) is None  # nothing left to send


def test_the_first_round_spreads_over_sources_and_every_pair_gets_a_turn_when_the_cap_binds():
    pending = {(i, j) for i in range(50) for j in range(50) if i != j}  # 2,450 pairs
    pacer = Pacer(pending, 0.0, rate=1000, first=0.1, cap=0.2, burst=10, seed=1)
    sent = drive(pacer, 6.0)
    first_100 = {p[0] for _, p in sent[:100]}
    assert len(first_100) > 30  # not source 0's 49 targets first
    # at 1,000/s the 2,450 pairs wait their turn: each is probed about every 2.45 s, none starved
    by_pair = {}
    for t, p in sent:
        by_pair.setdefault(p, []).append(t)
    assert set(by_pair) == pending
    worst = max(b - a for ts in by_pair.values() for a, b in zip(ts, ts[1:]))
    assert worst < 2.45 * 1.2


def test_wake_says_when_the_next_request_may_go():
    pacer = Pacer({(0, 1)}, 0.0, rate=10, first=0.5, cap=1.0, burst=1)
    assert pacer.take(0.0) == [(0, 1)]
    assert pacer.wake(0.0) == pytest.approx(0.5)  # its interval, the token back after 0.1 s
    assert pacer.take(0.4) == []
    assert pacer.take(0.5) == [(0, 1)]


def test_bad_pacing_is_refused():
    with pytest.raises(ValueError):
        Pacer({(0, 1)}, 0.0, rate=0)
    with pytest.raises(ValueError):
        Pacer({(0, 1)}, 0.0, first=1.0, cap=0.5)


def test_workload_counters_are_read_from_a_namespaces_proc_files():
    raw = ("  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref "
           "pointer drops\n"
           "    1: 00000000:0001 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 4242 2 "
           "0000000000000000 17\n"
           "    1: 00000000:0001 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 999 2 "
           "0000000000000000 5\n")
    dev = ("Inter-|   Receive                                                |  Transmit\n"
           " face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls "
           "carrier compressed\n"
           "    lo:       0       0    0    0    0     0          0         0        0       0    0    0    0     0"
           "       0          0\n"
           "  eth0:    1000      10    0    3    0     0          0         0     2000      20    0    4    0     0"
           "       0          0\n")
    arp = ("entries  allocs   destroys hash_grows lookups  hits     res_failed rcv_probes_mcast rcv_probes_ucast "
           "periodic_gc_runs forced_gc_runs unresolved_discards table_fulls\n"
           "00000002 00000001 00000000 00000000 00000004 00000000 00000000 00000000 00000000 00000000 00000000 "
           "0000000a 00000002\n"
           "00000002 00000001 00000000 00000000 00000004 00000000 00000000 00000000 00000000 00000000 00000000 "
           "00000001 00000000\n")
    snmp = ("Ip: Forwarding DefaultTTL InReceives InHdrErrors InAddrErrors ForwDatagrams InUnknownProtos InDiscards "
            "InDelivers OutRequests OutDiscards\n"
            "Ip: 2 64 100 0 0 0 0 6 94 50 7\n"
            "Icmp: InMsgs InErrors InCsumErrors OutRateLimitGlobal OutRateLimitHost\n"
            "Icmp: 10 2 0 1 1\n")
    got = parse_workload_counters({"raw": raw, "dev": dev, "snmp": snmp}, {4242})
    assert got == {"raw_socket_drops": 17, "eth_rx_dropped": 3, "eth_tx_dropped": 4, "ip_in_discards": 6,
                   "ip_out_discards": 7, "icmp_in_errors": 2, "icmp_out_rate_limited": 2}
    # the ARP table is one for every namespace: its counters are the machine's, per CPU in hex
    assert drops.parse_neigh_stat(arp, "arp") == {"arp_table_fulls": 2, "arp_unresolved_discards": 11,
                                                  "arp_forced_gc_runs": 0}


def test_switch_drop_counters_and_their_difference():
    ss = ("Netid State  Recv-Q Send-Q Local Address:Port Peer Address:PortProcess\n"
          "p_raw UNCONN 0      0                  *:veth1               *     ino:11 sk:1\n"
          "\tver:0 cpy_thresh:0 flags( running ) skmem:(r0,rb212992,t0,tb212992,f0,w0,o0,bl0,d7)\n"
          "p_raw UNCONN 0      0                  *:veth2               *     ino:12 sk:2\n"
          "\tver:0 cpy_thresh:0 flags( running ) skmem:(r0,rb212992,t0,tb212992,f0,w0,o0,bl0,d0)\n")
    assert drops.parse_ss_packet(ss) == {"11": 7, "12": 0}
    dp = ("netdev@ovs-netdev:\n  lookups: hit:100 missed:20 lost:3\n  flows: 5\n"
          "  port 1: a\n    RX packets:10 errors:0 dropped:2 overruns:0 frame:0\n"
          "    TX packets:10 errors:1 dropped:4 aborted:0 carrier:0\n")
    assert drops.parse_dpctl(dp) == {"lookups_lost": 3, "lookups_missed": 20, "port_rx_dropped": 2,
                                     "port_tx_dropped": 4, "port_rx_errors": 0, "port_tx_errors": 1}
    cov = ("Event coverage, avg rate over last: 5 seconds, last minute, last hour,  hash=1:\n"
           "datapath_drop_upcall_error   0.0/sec     0.000/sec        0.0000/sec   total: 9\n"
           "netdev_sent                 10.0/sec     0.000/sec        0.0000/sec   total: 500\n")
    assert drops.parse_coverage(cov) == {"datapath_drop_upcall_error": 9}
    snap = {"pmd": {"dp_packets": 5, "dp_upcalls": 1, "dp_upcalls_failed": 0},
            "dpctl": drops.parse_dpctl(dp), "coverage": {"datapath_drop_upcall_error": 9},
            "af_packet": {"11": 7, "12": 0}, "links": {"a": {"rx_dropped": 1, "tx_dropped": 0, "rx_missed": 0}}}
    later = {**snap, "pmd": {**snap["pmd"], "dp_upcalls_failed": 4}, "coverage": {"datapath_drop_upcall_error": 12},
             "af_packet": {"11": 9, "13": 5},  # 12 went away, 13 is new
             "links": {"a": {"rx_dropped": 3, "tx_dropped": 0, "rx_missed": 0},
                       "b": {"rx_dropped": 1, "tx_dropped": 2, "rx_missed": 0}}}
    soft = {"softnet_processed": 0, "softnet_dropped": 0, "softnet_time_squeeze": 0}
    d = drops.delta({"hosts": {"hv1": snap}, "softnet": soft},
                    {"hosts": {"hv1": later}, "softnet": {**soft, "softnet_dropped": 2}})
    h = d["hosts"]["hv1"]
    assert h["dp_upcalls_failed"] == 4 and h["af_packet_drops"] == 2 + 5
    assert h["veth_rx_dropped"] == 2 + 1 and h["veth_tx_dropped"] == 2
    assert h["coverage"] == {"datapath_drop_upcall_error": 3}
    assert d["all"]["af_packet_drops"] == 7 and d["machine"]["softnet_dropped"] == 2
    assert "af_packet_drops=7" in drops.brief(d)
