"""Which (source, target) pairs the all-pairs reachability probe waits for."""
from bench.reach import pairs


def test_without_groups_every_source_reaches_every_other_address():
    assert pairs(["10.0.0.1", "10.0.0.2", "10.0.0.3"], ["10.0.0.1", "10.0.0.2", "10.0.0.3"]) == {
        (0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1)}


def test_twin_tenants_sharing_addresses_only_reach_their_own_members():
    own = ["10.0.1.10", "10.0.2.10", "10.0.1.10", "10.0.2.10"]  # t0 and t1, the same CAs
    got = pairs(own, own, ["t0", "t0", "t1", "t1"])
    assert got == {(0, 1), (1, 0), (2, 3), (3, 2)}
    # without the groups the same addresses would make cross-tenant pairs (and skip none of them)
    assert (0, 3) in pairs(own, own)
