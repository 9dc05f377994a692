"""Tenant YAML validation: every error names its field path and reason."""
import pytest

from topology.schema import ValidationError, load_tenant

HOSTS = ["hv1", "hv2", "hv3"]

GOOD = """
apiVersion: nvctl/v1
kind: Tenant
metadata: {name: blue}
spec:
  switches:
    - {name: web, cidr: 10.0.0.0/24}
    - {name: db, cidr: 10.0.1.0/24}
  ports:
    - {name: vm1, switch: web, ip: 10.0.0.11, host: hv1}
    - {name: vm2, switch: web, ip: 10.0.0.12, mac: "02:00:00:00:01:02", host: hv2}
    - {name: db1, switch: db, ip: 10.0.1.5, host: hv3}
"""


def errors_of(text, hosts=HOSTS):
    with pytest.raises(ValidationError) as e:
        load_tenant(text, hosts)
    return e.value.errors


def test_valid_tenant_and_derived_mac():
    t = load_tenant(GOOD, HOSTS)
    assert t.name == "blue"
    assert [p.name for p in t.ports] == ["vm1", "vm2", "db1"]
    assert t.port("vm1").mac == "02:00:0a:00:00:0b"  # derived from 10.0.0.11
    assert t.port("vm2").mac == "02:00:00:00:01:02"


def test_ip_outside_cidr_names_the_field():
    bad = GOOD.replace("{name: db1, switch: db, ip: 10.0.1.5", "{name: db1, switch: web, ip: 10.0.1.5")
    assert errors_of(bad) == [("spec.ports[2].ip", "10.0.1.5 is outside switch web's cidr 10.0.0.0/24")]


@pytest.mark.parametrize("old,new,path,reason", [
    ("metadata: {name: blue}", "metadata: {name: blue, color: x}", "metadata.color", "unknown key"),
    ("{name: vm1, switch: web,", "{name: vm1, colour: red, switch: web,", "spec.ports[0].colour", "unknown key"),
    ("{name: vm2,", "{name: vm1,", "spec.ports[1].name", "duplicate port name 'vm1'"),
    ("{name: db, cidr", "{name: web, cidr", "spec.switches[1].name", "duplicate switch name 'web'"),
    ("ip: 10.0.0.12", "ip: 10.0.0.11", "spec.ports[1].ip", "10.0.0.11 is already used on switch web by vm1"),
    ('mac: "02:00:00:00:01:02"', 'mac: "02:00:0a:00:00:0b"', "spec.ports[1].mac",
     "02:00:0a:00:00:0b is already used on switch web by vm1"),
    ("ip: 10.0.0.12", "ip: 10.0.0.0", "spec.ports[1].ip", "10.0.0.0 is the network address of 10.0.0.0/24"),
    ("ip: 10.0.0.12", "ip: 10.0.0.255", "spec.ports[1].ip", "10.0.0.255 is the broadcast address"),
    ("switch: db, ip: 10.0.1.5", "switch: dbx, ip: 10.0.1.5", "spec.ports[2].switch", "unknown switch 'dbx'"),
    ("host: hv3", "host: hv9", "spec.ports[2].host", "unknown host 'hv9' (hosts: hv1, hv2, hv3)"),
    ("ip: 10.0.0.12", "ip: 10.0.0.300", "spec.ports[1].ip", "is not an IPv4 address"),
    ('mac: "02:00:00:00:01:02"', 'mac: "zz:00"', "spec.ports[1].mac", "is not a MAC address"),
    ('mac: "02:00:00:00:01:02"', 'mac: "01:00:00:00:01:02"', "spec.ports[1].mac", "multicast"),
    ("cidr: 10.0.1.0/24", "cidr: 10.0.1.0/33", "spec.switches[1].cidr", "is not an IPv4 network"),
    ("cidr: 10.0.1.0/24", "cidr: 10.0.1.1/24", "spec.switches[1].cidr", "has host bits set"),
    ("cidr: 10.0.1.0/24", "cidr: 10.0.0.128/25", "spec.switches[1].cidr", "overlaps switch web's 10.0.0.0/24"),
    ("metadata: {name: blue}", "metadata: {name: Blue_1}", "metadata.name", "is not a valid name"),
    ("apiVersion: nvctl/v1", "apiVersion: nvctl/v2", "apiVersion", "is not supported"),
    ("kind: Tenant", "kind: Tenants", "kind", "is not supported"),
    ("{name: vm1, switch: web, ip: 10.0.0.11, host: hv1}", "{name: vm1, switch: web, host: hv1}",
     "spec.ports[0].ip", "is required"),
])
def test_each_rejection_names_field_and_reason(old, new, path, reason):
    assert old in GOOD
    errs = errors_of(GOOD.replace(old, new, 1))
    assert any(p == path and reason in r for p, r in errs), errs


def test_all_errors_are_reported_at_once():
    bad = GOOD.replace("host: hv3", "host: hv9").replace("ip: 10.0.0.12", "ip: 10.0.9.12")
    paths = [p for p, _ in errors_of(bad)]
    assert paths == ["spec.ports[1].ip", "spec.ports[2].host"]


def test_not_yaml_and_not_a_mapping():
    assert "not valid YAML" in errors_of("spec: [unclosed")[0][1]
    assert "must be a mapping" in errors_of("- just\n- a list\n")[0][1]
    assert "exactly one YAML document" in errors_of(GOOD + "\n---\n" + GOOD)[0][1]


def test_hosts_unchecked_when_not_given():
    t = load_tenant(GOOD.replace("host: hv3", "host: anywhere"), None)
    assert t.port("db1").host == "anywhere"


ROUTED = GOOD.replace("  ports:\n", """  routers:
    - name: r1
      ports: [{switch: web, ip: 10.0.0.1}, {switch: db, ip: 10.0.1.1}]
      routes: [{prefix: 192.168.50.0/24, nextHop: 10.0.1.5}]
  acls:
    - {priority: 200, direction: to-port, ports: [db1], from: web, protocol: tcp, dstPorts: [5432, "6000-6010"], action: allow}
    - {priority: 100, direction: to-port, ports: [db1], action: deny}
    - {priority: 100, direction: to-port, ports: [vm1], from: db, action: deny}
  ports:
""", 1)


def test_routers_and_acls_parse_and_round_trip():
    from topology.schema import to_doc, validate
    t = load_tenant(ROUTED, HOSTS)
    assert [rp.switch for rp in t.routers[0].ports] == ["web", "db"]
    assert t.routers[0].ports[0].mac == "02:01:0a:00:00:01"
    assert t.acls[0].dst_ports == ((5432, 5432), (6000, 6010))
    assert str(t.acls[0].src[0]) == "10.0.0.0/24"
    assert validate(to_doc(t), HOSTS) == t


@pytest.mark.parametrize("old,new,path,reason", [
    ("{switch: db, ip: 10.0.1.1}", "{switch: web, ip: 10.0.0.2}", "spec.routers[0].ports[1].switch",
     "switch web is already attached to router"),
    ("{switch: db, ip: 10.0.1.1}", "{switch: db, ip: 10.0.1.5}", "spec.routers[0].ports[1].ip",
     "10.0.1.5 is already used on switch db by db1"),
    ("{switch: db, ip: 10.0.1.1}", "{switch: dbx, ip: 10.0.1.1}", "spec.routers[0].ports[1].switch",
     "unknown switch 'dbx'"),
    ("nextHop: 10.0.1.5", "nextHop: 10.0.1.99", "spec.routers[0].routes[0].nextHop",
     "10.0.1.99 is not a port on a switch of router r1"),
    ("prefix: 192.168.50.0/24", "prefix: 192.168.50.1/24", "spec.routers[0].routes[0].prefix",
     "is not an IPv4 network"),
    ("ports: [db1], from: web", "ports: [db9], from: web", "spec.acls[0].ports", "unknown port 'db9'"),
    ("from: web, protocol", "from: nowhere, protocol", "spec.acls[0].from",
     "'nowhere' is not a port, a switch or an IPv4 or IPv6 CIDR"),
    ("protocol: tcp, dstPorts", "protocol: icmp, dstPorts", "spec.acls[0].dstPorts", "needs protocol tcp or udp"),
    ('"6000-6010"', '"6010-6000"', "spec.acls[0].dstPorts[1]", "within 1-65535 with low <= high"),
    ("action: allow}", "action: permit}", "spec.acls[0].action", "'permit' is not one of allow"),
    ("direction: to-port, ports: [db1], action: deny", "direction: inbound, ports: [db1], action: deny",
     "spec.acls[1].direction", "is not one of to-port, from-port"),
    ("{priority: 100, direction: to-port, ports: [vm1]", "{priority: 100, direction: to-port, ports: [db1]",
     "spec.acls[2].priority", "100 is also the priority of spec.acls[1]"),
])
def test_router_and_acl_rejections(old, new, path, reason):
    assert old in ROUTED
    errs = errors_of(ROUTED.replace(old, new, 1))
    assert any(p == path and reason in r for p, r in errs), errs


def test_rate_limit_must_be_a_positive_rate():
    bad = GOOD.replace("host: hv1}", "host: hv1, rateLimitMbps: -5}")
    assert errors_of(bad)[0][0] == "spec.ports[0].rateLimitMbps"
    ok = load_tenant(GOOD.replace("host: hv1}", "host: hv1, rateLimitMbps: 100}"), HOSTS)
    assert ok.port("vm1").rate_limit_mbps == 100.0


def test_switch_mtu_must_be_a_sane_number_of_bytes():
    from topology.schema import ValidationError, load_tenant
    doc = ("apiVersion: nvctl/v1\nkind: Tenant\nmetadata: {name: m}\nspec:\n"
           "  switches: [{name: s, cidr: 10.0.0.0/24, mtu: MTU}]\n  ports: []\n")
    for bad in ("100", "70000", "1450.5", "true", "big"):
        with pytest.raises(ValidationError) as e:
            load_tenant(doc.replace("MTU", bad), None)
        assert [p for p, _ in e.value.errors] == ["spec.switches[0].mtu"], (bad, e.value.errors)
    assert load_tenant(doc.replace("MTU", "1400"), None).switches[0].mtu == 1400


def test_workload_kinds_and_their_round_trip():
    from topology.schema import to_doc, validate
    text = GOOD.replace("host: hv1}", "host: hv1, workload: vm}").replace("host: hv3}", "host: hv3, workload: none}")
    t = load_tenant(text, HOSTS)
    vm1, vm2, db1 = t.port("vm1"), t.port("vm2"), t.port("db1")
    assert (vm1.workload, vm1.vm) == (True, True)
    assert (vm2.workload, vm2.vm) == (True, False)
    assert (db1.workload, db1.vm) == (False, False)
    doc = to_doc(t)
    assert [p.get("workload", True) for p in doc["spec"]["ports"]] == ["vm", True, False]
    assert validate(doc, HOSTS) == t


@pytest.mark.parametrize("value", ["qemu", 1, "VM", [], None])
def test_workload_must_be_a_known_kind(value):
    import yaml
    doc = yaml.safe_load(GOOD)
    doc["spec"]["ports"][0]["workload"] = value
    errs = errors_of(yaml.safe_dump(doc))
    assert errs == [("spec.ports[0].workload", f"{value!r} is not one of namespace (or true), vm, none (or false)")]


LABELLED = GOOD.replace("{name: web, cidr: 10.0.0.0/24}", "{name: web, cidr: 10.0.0.0/24, labels: {env: prod}}").replace(
    "{name: vm1, switch: web, ip: 10.0.0.11, host: hv1}",
    "{name: vm1, switch: web, ip: 10.0.0.11, host: hv1, labels: {app: web, app.kubernetes.io/tier: front, "
    "canary: ''}}")


def test_labels_on_ports_and_switches_round_trip():
    from topology.schema import to_doc, validate
    t = load_tenant(LABELLED, HOSTS)
    assert dict(t.port("vm1").labels) == {"app": "web", "app.kubernetes.io/tier": "front", "canary": ""}
    assert dict(t.switch("web").labels) == {"env": "prod"} and t.port("vm2").labels == ()
    doc = to_doc(t)
    assert doc["spec"]["ports"][0]["labels"] == {"app": "web", "app.kubernetes.io/tier": "front", "canary": ""}
    assert "labels" not in doc["spec"]["ports"][1] and doc["spec"]["switches"][0]["labels"] == {"env": "prod"}
    assert validate(doc, HOSTS) == t
    # the same labels in another order are the same tenant
    again = LABELLED.replace("{app: web, app.kubernetes.io/tier: front, canary: ''}",
                             "{canary: '', app.kubernetes.io/tier: front, app: web}")
    assert load_tenant(again, HOSTS) == t


@pytest.mark.parametrize("labels, field, reason", [
    ("{version: 2}", "version", "2 is not a string (quote it: \"2\")"),
    ("{enabled: true}", "enabled", "True is not a string (quote it: \"true\")"),
    ("{-app: web}", "-app", "'-app': the name '-app' must be 1 to 63 characters, letters, digits, '-', '_' "
                            "and '.', beginning and ending with a letter or digit"),
    ("{Example.COM/app: web}", "Example.COM/app", "'Example.COM/app': the prefix 'Example.COM' is not a DNS "
                                                  "subdomain (lowercase letters, digits, '-' and '.', at most 253 "
                                                  "characters)"),
    ("{app: 'web server'}", "app", "'web server' must be empty or 1 to 63 characters, letters, digits, '-', '_' "
                                   "and '.', beginning and ending with a letter or digit"),
    ("{app: " + "x" * 64 + "}", "app", f"'{'x' * 64}' must be empty or 1 to 63 characters, letters, digits, '-', "
                                       "'_' and '.', beginning and ending with a letter or digit"),
])
def test_a_label_that_kubernetes_would_refuse_is_refused_naming_it(labels, field, reason):
    bad = GOOD.replace("{name: vm1, switch: web, ip: 10.0.0.11, host: hv1}",
                       "{name: vm1, switch: web, ip: 10.0.0.11, host: hv1, labels: " + labels + "}")
    assert errors_of(bad) == [(f"spec.ports[0].labels.{field}", reason)]


def test_labels_must_be_a_mapping():
    bad = GOOD.replace("{name: web, cidr: 10.0.0.0/24}", "{name: web, cidr: 10.0.0.0/24, labels: [app]}")
    errs = errors_of(bad)
    assert ("spec.switches[0].labels", "must be a mapping of key: value, got list") in errs
