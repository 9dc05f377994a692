"""bench/northd.py's translation of synth tenants to one OVN northbound transaction: pure,
no OVN processes, no root."""
import ipaddress
import json
import os
import re
from collections import Counter

import pytest

from bench import northd
from bench.synth import deployment
from topology.model import derived_mac

NB_SCHEMA = "/usr/share/ovn/ovn-nb.ovsschema"
NON_ROOT = ("Logical_Switch_Port", "Logical_Router_Port", "ACL")


@pytest.fixture(scope="module")
def two():
    _, _, docs = deployment(2, 10, 3)
    return docs, northd.nb_transaction(docs)


def _rows(txn, table):
    return [op["row"] for op in txn[1:] if op["table"] == table]


def _refs(value):
    """Every ["named-uuid", x] inside a row value."""
    if isinstance(value, list) and len(value) == 2 and value[0] == "named-uuid":
        return [value[1]]
    if isinstance(value, list):
        return [r for v in value for r in _refs(v)]
    if isinstance(value, dict):
        return [r for v in value.values() for r in _refs(v)]
    return []


def test_two_tenants_give_exactly_the_expected_rows_per_table(two):
    _, txn = two
    assert txn[0] == "OVN_Northbound"
    assert all(op["op"] == "insert" for op in txn[1:])
    assert Counter(op["table"] for op in txn[1:]) == {
        "Logical_Switch": 2 * 2, "Logical_Switch_Port": 2 * (10 + 2), "Logical_Router": 2,
        "Logical_Router_Port": 2 * 2, "ACL": 2 * 2}  # both rules guard back ports only: one switch each
    json.dumps(txn)  # what is sent on the socket


def test_names_are_unique_and_prefixed_with_the_tenant(two):
    _, txn = two
    for table in ("Logical_Switch", "Logical_Switch_Port", "Logical_Router", "Logical_Router_Port"):
        names = [r["name"] for r in _rows(txn, table)]
        assert len(names) == len(set(names)), table
        assert all(re.match(r"t[01]-", n) for n in names), table
    assert {r["name"] for r in _rows(txn, "Logical_Switch")} == {"t0-front", "t0-back", "t1-front", "t1-back"}


def test_every_named_uuid_is_defined_once_and_every_child_row_has_one_parent(two):
    _, txn = two
    defined = [op["uuid-name"] for op in txn[1:]]
    assert len(defined) == len(set(defined))
    assert all(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", u) for u in defined)  # OVSDB <id> syntax
    refs = Counter(r for op in txn[1:] for r in _refs(op["row"]))
    assert set(refs) <= set(defined), set(refs) - set(defined)
    table_of = {op["uuid-name"]: op["table"] for op in txn[1:]}
    for u, table in table_of.items():
        # a child row nobody references is garbage-collected by ovsdb-server; two parents: one datapath too many
        assert refs[u] == (1 if table in NON_ROOT else 0), (u, table)


def test_workload_ports_carry_nvctls_mac_and_ip_on_their_switch(two):
    docs, txn = two
    by_uuid = {op["uuid-name"]: op["row"] for op in txn[1:]}
    switch_of = {}
    for ls in _rows(txn, "Logical_Switch"):
        for _, u in ls["ports"][1]:
            switch_of[by_uuid[u]["name"]] = ls["name"]
    lsps = {r["name"]: r for r in _rows(txn, "Logical_Switch_Port")}
    for t, doc in docs.items():
        for p in doc["spec"]["ports"]:
            row = lsps[f"{t}-{p['name']}"]
            want = f"{derived_mac(ipaddress.IPv4Address(p['ip']), 0)} {p['ip']}"
            assert row["addresses"] == ["set", [want]]
            assert row["port_security"] == ["set", [want]]
            assert "type" not in row
            assert switch_of[row["name"]] == f"{t}-{p['switch']}"
    assert lsps["t1-p3"]["addresses"] == ["set", ["02:00:0a:00:02:0b 10.0.2.11"]]  # same addresses in every tenant


def test_router_ports_pair_up_with_router_type_switch_ports(two):
    _, txn = two
    lrps = {r["name"]: r for r in _rows(txn, "Logical_Router_Port")}
    assert lrps["t0-r-front"]["networks"] == ["set", ["10.0.1.1/24"]]
    assert lrps["t1-r-back"]["mac"] == derived_mac(ipaddress.IPv4Address("10.0.2.1"), 1)
    router_lsps = [r for r in _rows(txn, "Logical_Switch_Port") if r.get("type") == "router"]
    assert len(router_lsps) == 4
    peers = [dict(r["options"][1])["router-port"] for r in router_lsps]
    assert sorted(peers) == sorted(lrps)
    assert all(r["addresses"] == "router" for r in router_lsps)
    by_uuid = {op["uuid-name"]: op["row"] for op in txn[1:]}
    for lr in _rows(txn, "Logical_Router"):
        assert [by_uuid[u]["name"] for _, u in lr["ports"][1]] == [f"{lr['name']}-front", f"{lr['name']}-back"]


def test_acls_sit_on_the_back_switch_and_guard_exactly_its_ports(two):
    _, txn = two
    by_uuid = {op["uuid-name"]: op["row"] for op in txn[1:]}
    for ls in _rows(txn, "Logical_Switch"):
        acls = [by_uuid[u] for _, u in ls["acls"][1]]
        if ls["name"].endswith("-front"):
            assert acls == []
            continue
        t = ls["name"].split("-")[0]
        guarded = ", ".join(f'"{t}-p{j}"' for j in (1, 3, 5, 7, 9))
        assert {a["priority"]: (a["direction"], a["action"], a["match"]) for a in acls} == {
            200: ("to-lport", "allow-related",
                  f"outport == {{{guarded}}} && ip4 && ip4.src == 10.0.1.0/24 && tcp && tcp.dst == 5432"),
            100: ("to-lport", "drop", f"outport == {{{guarded}}} && ip4")}


def test_acl_match_reads_ports_switches_cidrs_and_ranges_as_nvctl_does():
    _, _, docs = deployment(1, 10, 2)
    spec = docs["t0"]["spec"]
    acl = {"priority": 10, "direction": "from-port", "ports": ["p0"], "to": ["p1", "front", "192.0.2.0/24"],
           "protocol": "udp", "dstPorts": ["1000-2000", 53], "action": "deny"}
    assert northd.acl_match(acl, spec, ["t0-p0"]) == (
        'inport == "t0-p0" && ip4 && ip4.dst == {10.0.2.10/32, 10.0.1.0/24, 192.0.2.0/24} && udp && '
        "((udp.dst >= 1000 && udp.dst <= 2000) || udp.dst == 53)")


def test_what_is_not_translated_is_refused_not_dropped():
    _, _, docs = deployment(1, 10, 2)
    doc = json.loads(json.dumps(docs["t0"]))
    doc["spec"]["nat"] = [{"type": "snat", "router": "r", "cidr": "10.0.1.0/24"}]
    with pytest.raises(ValueError, match="nat"):
        northd.tenant_ops(doc)


@pytest.mark.skipif(not os.path.exists(NB_SCHEMA), reason="OVN's NB schema is not installed")
def test_every_table_and_column_is_in_ovns_schema(two):
    _, txn = two
    with open(NB_SCHEMA) as f:
        tables = json.load(f)["tables"]
    for op in txn[1:]:
        assert set(op["row"]) <= set(tables[op["table"]]["columns"]), op["table"]
    assert not tables["ACL"].get("isRoot") and tables["Logical_Switch"]["isRoot"]


def test_the_nbctl_form_describes_the_same_rows(two):
    docs, txn = two
    args = northd.nbctl_args(docs)
    cmds = Counter(a for i, a in enumerate(args) if i == 0 or args[i - 1] == "--")
    assert cmds["ls-add"] == 4 and cmds["lr-add"] == 2 and cmds["lrp-add"] == 4
    assert cmds["lsp-add"] == 24 and cmds["acl-add"] == 4 and cmds["lsp-set-port-security"] == 20
    assert northd.port_cmds("t0", "front", "x1", "10.0.1.100") == [
        "lsp-add", "t0-front", "t0-x1", "--", "lsp-set-addresses", "t0-x1", "02:00:0a:00:01:64 10.0.1.100",
        "--", "lsp-set-port-security", "t0-x1", "02:00:0a:00:01:64 10.0.1.100"]


def test_northds_engine_stats_and_stopwatches_are_parsed():
    stats = ("Node: NB_acl\n- recompute:           14\n- compute:              0\n- abort:                0\n"
             "Node: northd\n- recompute:            5\n- compute:              2\n- abort:                0\n")
    before = northd.parse_engine_stats(stats)
    assert before["northd"] == {"recompute": 5, "compute": 2, "abort": 0}
    after = northd.parse_engine_stats(stats.replace("            5", "            8"))
    assert northd._engine_recomputes(before, after) == {"northd": 3}  # input nodes left out
    sw = northd.parse_stopwatch("Statistics for 'build_lflows'\n  Total samples: 6\n  Maximum: 1030 msec\n"
                                "  Minimum: 0 msec\n  95th percentile: 3.000000 msec\n")
    assert sw == {"build_lflows": {"samples": 6.0, "max_ms": 1030.0, "p95_ms": 3.0}}
