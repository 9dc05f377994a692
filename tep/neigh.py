"""Room in the kernel's neighbour tables for every workload of a lab.

The kernel keeps ONE ARP table (and one IPv6 neighbour table) for all network
namespaces, and its limits are the initial namespace's only:
net.ipv4.neigh.default.gc_thresh3 (default 1024) entries in all, gc_thresh2 (512) above
which entries younger than 5 s cannot be reclaimed. A lab of 100 workloads that all
talk to each other holds ~5,000 entries (each workload its ~50 neighbours on its
switch), so past 1,024 a new entry cannot be made: the packet that needed it is
dropped silently (IpOutDiscards in the sender's namespace, table_fulls in
/proc/net/stat/arp_cache, no error to the sender), and reachability comes and goes as
entries age out. Seen: 2,172-3,906 of 9,900 pairs never answering within 120 s, about
2 million table_fulls, whatever the probe's rate. A real host has its own table, so
this is the lab's to fix: it raises the limits (never lowers them) before it starts.
"""
from __future__ import annotations

# enough for 16 hosts of 1,000 workloads' neighbours on their switches, ~0.5 KB each
ROOM = {"gc_thresh1": 16384, "gc_thresh2": 65536, "gc_thresh3": 131072}
_FAMILIES = ("ipv4", "ipv6")


def make_room(log=None, room: dict | None = None, base: str = "/proc/sys/net") -> dict:
    """Raise the neighbour tables' limits to `room` where they are lower; returns
    {path: (before, after)} of what changed. Root; a kernel without the files is left."""
    changed = {}
    for fam in _FAMILIES:
        for key, want in (room or ROOM).items():
            path = f"{base}/{fam}/neigh/default/{key}"
            try:
                with open(path) as f:
                    have = int(f.read().strip())
                if have < want:
                    with open(path, "w") as f:
                        f.write(str(want))
                    changed[path] = (have, want)
            except (OSError, ValueError):
                continue
    if changed and log:
        log("[lab] neighbour tables (one for every namespace) raised: "
            + ", ".join(f"{p.split('/')[-4]} {p.rsplit('/', 1)[1]} {a}->{b}" for p, (a, b) in changed.items()))
    return changed
