"""The API's declared operations (controller.server.ops): each one answered by a real
Core method taking exactly the declared arguments; requests checked against the
declaration before anything is called; an error inside an operation answered as the
controller's, with a request id, never as the caller's; what each request touches."""
import inspect
import json
import logging
import types
import typing

import pytest

from controller.client.api import call
from controller.server.api import ApiServer, NetworkApiServer, operations
from controller.server.errors import ApiError
from controller.server.ops import LOCAL_OPS, NETWORK_OPS, NONE, OPS, WRITE_OPS, resolve, scope_of, tenant_of_yaml
from tests.unit.fixtures import BLUE

# what the API answered before its operations were declared: none may go missing
BEFORE = {"ping", "host.register", "host.invite", "host.resync", "host.list", "tenant.validate", "tenant.create",
          "tenant.apply", "tenant.delete", "port.migrate", "port.add", "port.del", "port.attachment",
          "switch.info", "ipam.hold", "ipam.release", "tenant.list", "tenant.show", "port.info", "trace", "flows",
          "verify", "stats", "drops", "logs", "metrics", "progress", "cluster.status", "member.probe"}


def hinted_types(hint) -> set:
    """{str, NoneType} for `str | None`; dict for dict[str, int]."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return {typing.get_origin(t) or t for t in typing.get_args(hint)}
    return {typing.get_origin(hint) or hint}


def test_every_operation_of_before_is_declared_and_the_network_ones_too():
    added = {"api.operations", "host.join", "host.self", "credential.issue", "credential.list", "credential.revoke",
             "audit.list", "api.endpoints", "auth.whoami"}
    assert BEFORE | added <= set(OPS)
    assert NETWORK_OPS == {"ping", "host.join", "host.self"}
    assert {"ping", "cluster.status", "member.probe", "api.operations", "audit.list", "api.endpoints"} <= LOCAL_OPS


def test_writes_are_the_changes(core):  # noqa: F811
    before = {"host.register", "host.invite", "host.resync", "tenant.create", "tenant.apply", "tenant.delete",
              "port.migrate", "port.add", "port.del"}
    # and what the declaration found to change too: address holds, a switch's role, a host joining
    assert before | {"ipam.hold", "ipam.release", "member.probe", "host.join", "credential.issue",
                     "credential.revoke"} <= WRITE_OPS
    assert all(OPS[n].kind == "read" for n in set(OPS) - WRITE_OPS)


def test_each_operation_is_a_core_method_taking_exactly_the_declared_arguments(core):  # noqa: F811
    for op in OPS.values():
        if op.call is None:
            continue
        fn = resolve(core, op)
        params = dict(inspect.signature(fn).parameters)
        assert set(params) == set(op.args) | set(op.context), (op.name, list(params))
        hints = typing.get_type_hints(fn)
        for name, a in op.args.items():
            p = params[name]
            assert p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY), (op.name, name)
            if a.required:
                assert p.default is p.empty, f"{op.name}: {name} has a default in Core, declared required"
            else:
                assert p.default is not p.empty and p.default == a.default and type(p.default) is type(a.default), \
                    f"{op.name}: {name} defaults to {p.default!r} in Core, declared {a.default!r}"
            assert hinted_types(hints[name]) == set(a.types), (op.name, name, hints[name], a.types)


def test_the_servers_answer_their_own_operations(tmp_path):
    unix = ApiServer(object(), str(tmp_path / "api.sock"))
    net = NetworkApiServer(object(), "127.0.0.1", 0)
    try:
        for op in OPS.values():
            if op.call is None:
                assert ("unix" not in op.over or op.name in unix.builtins) and \
                       ("network" not in op.over or op.name in net.builtins), op.name
    finally:
        unix.sock.close()
        net.sock.close()


class Stub:
    """Core's methods by name: each records its call (or raises `raises`)."""
    cluster = None
    metrics = None

    def __init__(self, raises=None):
        self.calls, self.raises = [], raises

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)

        def method(**kw):
            self.calls.append((name, kw))
            if self.raises is not None:
                raise self.raises
            return {"called": name}
        return method


@pytest.fixture
def stub():
    return Stub()


@pytest.fixture
def server(stub, tmp_path):
    s = ApiServer(stub, str(tmp_path / "api.sock"))
    yield s
    s.sock.close()


@pytest.mark.parametrize("op, args, name, says", [
    ("tenant.create", {"yaml": "x", "yml": "x"}, "yml", "is unknown (it takes: yaml)"),
    ("tenant.delete", {}, "name", "is required"),
    ("tenant.create", {"yaml": 7}, "yaml", "must be string, not integer"),
    ("port.add", {"tenant": "blue", "switch": "web", "workload": 1}, "workload", "must be boolean or string, not integer"),
    ("logs", {"tenant": "blue", "after": True}, "after", "must be integer, not boolean"),  # bool is not int
    ("drops", {"tenant": "blue", "window": "60"}, "window", "must be number, not string"),
    ("port.add", {"tenant": "blue", "switch": "web", "ip": None}, "ip", "must be string, not null"),
    ("tenant.show", {"name": None}, "name", "must be string, not null"),
    ("host.register", {"name": "hv9", "pa": "192.0.2.9", "dpid": 9, "info": []}, "info", "must be object, not array"),
    ("host.list", {"check": 1}, "check", "must be boolean, not integer"),
])
def test_a_request_that_does_not_fit_is_answered_naming_the_argument_and_nothing_is_called(
        server, stub, op, args, name, says):
    r = server.dispatch(op, args, "r1")
    assert r == {"ok": False, "error": f"{op}: argument '{name}' {says}", "errors": [[name, says]]}
    assert stub.calls == []


def test_every_wrong_argument_is_listed_and_the_first_named(server, stub):
    r = server.dispatch("port.add", {"tenant": 1, "workload": None, "colour": "red"})
    assert [e[0] for e in r["errors"]] == ["tenant", "workload", "colour", "switch"]
    assert r["error"].startswith("port.add: argument 'tenant' must be string, not integer (and 3 more: ")
    assert server.dispatch("tenant.list", ["blue"])["errors"] == [["args", "must be an object, not array"]]
    assert stub.calls == []


def test_what_fits_is_called_as_sent(server, stub):
    assert server.dispatch("drops", {"tenant": "blue", "window": 30})["ok"]  # an integer is a number
    assert server.dispatch("port.add", {"tenant": "blue", "switch": "web", "host": None, "mac": None})["ok"]
    assert server.dispatch("verify", {})["ok"]
    assert stub.calls == [("drops", {"tenant": "blue", "window": 30}),
                          ("port_add", {"tenant": "blue", "switch": "web", "host": None, "mac": None}),
                          ("verify", {})]


def test_unknown_and_network_only_operations_are_refused_on_the_socket(server, stub):
    assert server.dispatch("tenant.make", {}) == {"ok": False, "error": "unknown operation 'tenant.make'"}
    assert "only over the network" in server.dispatch("host.join", {"token": "t"})["error"]
    assert stub.calls == []


def test_an_error_inside_an_operation_is_the_controllers_with_a_request_id(tmp_path, caplog):
    for raised in (RuntimeError("boom"), TypeError("f() got an unexpected keyword argument 'x'")):
        stub = Stub(raises=raised)
        server = ApiServer(stub, str(tmp_path / "api.sock"))
        try:
            caplog.clear()
            with caplog.at_level(logging.ERROR, logger="nvctl.api"):
                r = server.dispatch("tenant.show", {"name": "blue"})  # the client sent no id: one is made
            rid = r["request_id"]
            assert len(rid) >= 8 and r == {"ok": False, "request_id": rid, "error":
                                           f"internal error in tenant.show (request {rid}); see the controller's log"}
            assert stub.calls == [("show", {"name": "blue"})]
            (rec,) = caplog.records
            assert rid in rec.getMessage() and "tenant.show" in rec.getMessage()
            assert rec.exc_info[1] is raised and type(raised).__name__ in caplog.text  # the traceback
            assert server.dispatch("tenant.show", {"name": "blue"}, "client-id-1")["request_id"] == "client-id-1"
        finally:
            server.sock.close()


def test_the_callers_mistakes_and_a_lost_leadership_keep_their_answers(tmp_path):
    class NotLeader(Exception):
        pass
    for raised, want in ((ApiError("no tenant 'x'", [("name", "no such tenant")]),
                          {"ok": False, "error": "no tenant 'x'", "errors": [("name", "no such tenant")]}),
                         (NotLeader("deposed"), {"ok": False, "retry": True, "error": "deposed"})):
        server = ApiServer(Stub(raises=raised), str(tmp_path / "api.sock"))
        try:
            assert server.dispatch("tenant.show", {"name": "x"}, "r1") == want
        finally:
            server.sock.close()


def test_a_follower_hands_over_and_a_retried_change_is_not_made_again(server, stub):
    class Cluster:
        is_leader, leader, name = False, None, "c2"

    class Store:
        request_id = types.SimpleNamespace(value=None)

        def request_done(self, rid):
            return {"what": "created blue"} if rid == "done-1" else None
    stub.cluster, stub.store = Cluster(), Store()
    assert server.dispatch("tenant.create", {"yaml": BLUE}, "r1")["retry"]  # no leader yet
    Cluster.is_leader = True
    r = server.dispatch("tenant.create", {"yaml": BLUE}, "done-1")
    assert r["ok"] and r["result"]["retried"] and r["result"]["tenant"] == "blue"
    assert stub.calls == []
    seen = []
    stub.create = lambda yaml: seen.append(stub.store.request_id.value) or {}
    assert server.dispatch("tenant.create", {"yaml": BLUE}, "new-1")["ok"]
    assert seen == ["new-1"] and stub.store.request_id.value is None  # written under its id, then cleared


def test_the_join_api_checks_the_same_way_and_fills_what_the_connection_says():
    stub = Stub()
    net = NetworkApiServer(stub, "127.0.0.1", 0)
    try:
        ctx = {"peer_ip": "198.51.100.7", "peer_name": "hv7"}
        assert net.dispatch("ping", {}, ctx) == {"ok": True, "result": {"pong": True, "peer": "hv7"}}
        assert net.dispatch("host.join", {"token": "t", "mtu": 9000}, ctx)["ok"]
        forged = net.dispatch("host.join", {"token": "t", "peer_name": "hv1"}, ctx)  # never from the client
        assert forged["errors"] == [["peer_name", "is unknown (it takes: token, mtu, provider_networks, provider_address)"]]
        assert net.dispatch("host.self", {"token": 5}, ctx)["errors"] == [["token", "must be string, not integer"]]
        assert net.dispatch("tenant.create", {"yaml": BLUE}, ctx) == {
            "ok": False, "error": "operation 'tenant.create' is not offered over the network"}
        assert stub.calls == [("join_host", {"token": "t", "mtu": 9000, "peer_ip": "198.51.100.7",
                                             "peer_name": "hv7"})]
    finally:
        net.sock.close()


def test_what_a_request_touches():
    assert scope_of(OPS["tenant.create"], {"yaml": BLUE}) == ("tenant", "blue")
    assert scope_of(OPS["tenant.apply"], {"yaml": "metadata: {name: red}\nspec: {}\n"}) == ("tenant", "red")
    for bad in ("metadata: [unclosed", "- a list", "metadata: {name: Not_A_Name}", "a: 1\n---\nb: 2\n", 7, None):
        assert scope_of(OPS["tenant.create"], {"yaml": bad}) == ("tenant", None)
    assert tenant_of_yaml("metadata:\n  name:\n    deep: 1\n") is None
    assert scope_of(OPS["port.add"], {"tenant": "blue", "switch": "web"}) == ("tenant", "blue")
    assert scope_of(OPS["tenant.delete"], {"name": "red"}) == ("tenant", "red")
    assert scope_of(OPS["host.resync"], {"name": "hv2"}) == ("host", "hv2")
    assert scope_of(OPS["flows"], {"host": "hv1"}) == ("host", "hv1")
    assert scope_of(OPS["verify"], {"tenant": "blue"}) == ("tenant", "blue")
    assert scope_of(OPS["verify"], {}) == ("cluster", None)  # every tenant
    assert scope_of(OPS["host.join"], {"token": "t"}, {"peer_ip": "x", "peer_name": "hv7"}) == ("host", "hv7")
    assert scope_of(OPS["tenant.list"], {}) == ("cluster", None)
    assert scope_of(OPS["ping"], {}) == ("none", None)


def test_a_program_discovers_the_api_over_the_socket(core, tmp_path):  # noqa: F811
    import threading
    server = ApiServer(core, str(tmp_path / "api.sock"))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        table = {o["name"]: o for o in call(server.path, "api.operations", timeout=5)}
        assert set(table) == set(OPS)
        assert table["tenant.create"] == {"name": "tenant.create", "kind": "change",
                                          "scope": {"kind": "tenant", "arg": "yaml"},
                                          "args": {"yaml": {"types": ["string"], "required": True}},
                                          "over": ["unix"], "local": False, "doc": table["tenant.create"]["doc"]}
        assert table["port.add"]["args"]["host"] == {"types": ["string", "null"], "required": False, "default": None}
        assert table["host.join"]["over"] == ["network"] and "peer_name" not in table["host.join"]["args"]
        assert call(server.path, "tenant.create", yaml=BLUE, timeout=30)["action"] == "created"
        assert call(server.path, "tenant.show", name="blue", timeout=30)["revision"] >= 1
        assert 'op="tenant.show"' in core.metrics.text()  # the latency of each operation, as before
    finally:
        server.sock.close()


def test_operations_gives_every_socket_operation_as_a_callable(core):  # noqa: F811
    ops = operations(core)
    assert set(ops) == {n for n, op in OPS.items() if "unix" in op.over}
    assert ops["ping"]() == {"pong": True} and json.dumps(ops["api.operations"]())
    assert ops["tenant.validate"](yaml=BLUE)["tenant"] == "blue"
    assert all(NONE not in a.types or a.default is None for op in OPS.values() for a in op.args.values())


def test_an_unavailable_store_is_said_as_such_not_as_an_internal_error():
    from controller.server.api import failure
    from controller.state.etcd_store import EtcdUnavailable
    got = failure("tenant.create", "rid-7", EtcdUnavailable("no etcd member answers"))
    assert got["ok"] is False and "the store is unavailable: no etcd member answers" in got["error"]
    assert "internal error" not in got["error"]
