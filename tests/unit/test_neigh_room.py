"""The lab's room in the kernel's neighbour tables (tep/neigh.py): limits raised where
lower, never lowered, a missing file left alone."""
from tep.neigh import make_room


def test_limits_are_raised_never_lowered(tmp_path):
    for fam, v in (("ipv4", "1024"), ("ipv6", "500000")):
        d = tmp_path / fam / "neigh" / "default"
        d.mkdir(parents=True)
        (d / "gc_thresh3").write_text(v + "\n")
    logged = []
    got = make_room(logged.append, {"gc_thresh3": 131072, "gc_thresh2": 65536}, base=str(tmp_path))
    assert (tmp_path / "ipv4/neigh/default/gc_thresh3").read_text() == "131072"
    assert (tmp_path / "ipv6/neigh/default/gc_thresh3").read_text() == "500000\n"  # higher already: kept
    assert list(got.values()) == [(1024, 131072)]
    assert not (tmp_path / "ipv4/neigh/default/gc_thresh2").exists()  # no such file: left alone
    assert logged == ["[lab] neighbour tables (one for every namespace) raised: ipv4 gc_thresh3 1024->131072"]
    assert make_room(None, {"gc_thresh3": 131072}, base=str(tmp_path)) == {}  # a second lab changes nothing
