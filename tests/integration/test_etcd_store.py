"""The etcd store on a real 3-member etcd cluster (Debian's etcd-server on loopback):
compare-and-swap on revisions, all-or-nothing writes, a deposed leader's writes refused,
writes going on with a member killed, a watch that follows every change across it, and a
controller core that restarts from etcd with every tenant."""
import os
import signal
import threading

import pytest

from controller.server.core import Core
from controller.state.etcd_store import EtcdClient, EtcdStore, EtcdUnavailable, NotLeader, delete, parse_endpoints, put
from controller.state.store import Conflict
from scenarios.etcd import free_ports, loopback_cluster
from topology.builder import tenant_yaml


@pytest.fixture(scope="module")
def etcd(tmp_path_factory):
    cluster = loopback_cluster(str(tmp_path_factory.mktemp("etcd")), token=f"t{os.getpid()}")
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.remove()
    assert all(cluster.pid(m.name) is None for m in cluster.members)


@pytest.fixture
def store(etcd, request):
    client = EtcdClient(parse_endpoints(etcd.url))
    return EtcdStore(client, prefix=f"/t/{request.node.name}")


def test_revisions_compare_and_swap(store):
    assert store.put_tenant("blue", {"a": 1}, {"x": 1}, None) == 1
    with pytest.raises(Conflict):  # created twice
        store.put_tenant("blue", {"a": 2}, {}, None)
    assert store.put_tenant("blue", {"a": 2}, {"x": 2}, 1) == 2
    with pytest.raises(Conflict):  # a writer that read revision 1 lost the race
        store.put_tenant("blue", {"a": 3}, {}, 1)
    rec = store.tenant("blue")
    assert (rec.doc, rec.alloc, rec.revision) == ({"a": 2}, {"x": 2}, 2)
    with pytest.raises(Conflict):
        store.delete_tenant("blue", 1)
    store.delete_tenant("blue", 2)
    assert store.tenant("blue") is None and list(store.tenants()) == []
    assert store.put_tenant("blue", {"a": 4}, {}, None) == 1  # made again: a new life


def test_a_deposed_leaders_write_is_refused_and_writes_nothing(store):
    c = store.client
    leader = store.key("leader")
    ok, out = c.txn([], [put(leader, "me")])
    assert ok
    kvs, _ = c.range(leader)
    store.fence = (leader, kvs[0]["create_revision"])
    store.put_tenant("blue", {"a": 1}, {}, None)
    c.txn([], [delete(leader)])
    c.txn([], [put(leader, "someone else")])  # a new election: a new create revision
    with pytest.raises(NotLeader):
        store.put_tenant("blue", {"a": 2}, {}, 1)
    assert store.tenant("blue").doc == {"a": 1}
    store.request_id.value = "r1"  # the request mark goes with the write, or not at all
    with pytest.raises(NotLeader):
        store.put_tenant("red", {"a": 1}, {}, None)
    assert store.request_done("r1") is None and store.tenant("red") is None
    store.fence = None
    store.put_tenant("red", {"a": 1}, {}, None)
    assert store.request_done("r1")["what"] == "tenant red"
    del store.request_id.value


def test_writes_and_a_watch_go_on_when_a_member_is_killed(etcd, store):
    _, rev = store.client.range(store.key(""), prefix=True)
    seen, stop = [], threading.Event()

    def follow():
        for kind, kv in EtcdClient(parse_endpoints(etcd.url)).watch(store.key("tenants", ""), rev + 1, stop):
            seen.append((kind, kv["key"].rsplit("/", 1)[1], kv["version"]))
            if len(seen) == 3:
                return
    t = threading.Thread(target=follow, daemon=True)
    t.start()
    store.put_tenant("a", {}, {}, None)
    store.client._current = 0  # the member we talk to (and the watch's) is the one that dies
    etcd.kill("e0", signal.SIGKILL)
    try:
        store.put_tenant("a", {"v": 2}, {}, 1)  # fails over to e1 or e2
        store.delete_tenant("a", 2)
        assert store.client.current != f"127.0.0.1:{etcd.members[0].client_port}"
        t.join(20)
        assert seen == [("PUT", "a", 1), ("PUT", "a", 2), ("DELETE", "a", 0)]
    finally:
        stop.set()
        etcd.start(["e0"])  # it rejoins with its data


def test_no_member_answering_is_a_clear_error(etcd):
    client = EtcdClient([("127.0.0.1", p) for p in free_ports(2)], timeout=0.5)
    with pytest.raises(EtcdUnavailable, match="no etcd member answers"):
        client.range("/x")


def test_a_core_on_etcd_restarts_with_every_tenant(store):
    core = Core(store)
    core.register_host("hv1", "192.0.2.11", 0x101, {"kind": "test"})
    core.create(tenant_yaml("blue", "web", [("vm1", "10.0.0.11", "hv1")]))
    core.create(tenant_yaml("red", "web", [("vm1", "10.0.0.11", "hv1")]))
    core.port_add("blue", "web", workload=False)
    again = Core(store)
    assert sorted(again.tenants) == ["blue", "red"] and list(again.hosts) == ["hv1"]
    assert again.tenants["blue"].revision == 2 and len(again.tenants["blue"].tenant.ports) == 2
    assert again.desired.get("hv1") == core.desired.get("hv1")


def test_a_tenants_layer_owners_are_stored_with_it_and_survive_a_restart(store):
    """The record of which credential owns which policy layer (controller.server.owners)
    is part of the tenant's value: one write with the spec, read back by a new core."""
    core = Core(store)
    core.register_host("hv1", "192.0.2.11", 0x101, {"kind": "test"})
    core.create(tenant_yaml("blue", "web", [("vm1", "10.0.0.11", "hv1")]))
    acls = [{"priority": 100, "direction": "to-port", "ports": ["vm1"], "action": "deny"}]
    core.layer_put("blue", "acls", acls, principal={"name": "sec", "role": "layer:acls"})
    rec = store.tenant("blue")
    assert (rec.layers["acls"]["owner"], rec.layers["acls"]["version"], rec.revision) == ("sec", 1, 2)
    again = Core(store)
    assert again.layer_show("blue", "acls")["owner"] == "sec"
    assert [a.ports for a in again.tenants["blue"].tenant.acls] == [("vm1",)]
