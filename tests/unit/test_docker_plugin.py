"""The Docker driver's decisions, on a real controller core (no OVS: these calls only
change intent): addresses held between Docker's IPAM and its endpoint, twin networks of
one subnet getting a pool each, networks that disagree with the switch refused with the
fix, a network's leftover ports deleted with it."""
import pytest

from controller.server.api import operations
from controller.server.errors import ApiError
from controller.runtimes.docker_plugin import (GATEWAY_REQUEST, GENERIC, DockerPlugin, PluginError, option_labels,
                                               port_name)
from tests.unit.test_port_api import ROUTED


class OnCore(DockerPlugin):
    """The plugin with its API calls made straight on a Core."""

    def __init__(self, core, path):
        super().__init__("unused", path, "hv2", "nvctl")
        self.ops = operations(core)
        self.unplugged = []

    def _unplug(self, eid):  # the veth and OVSDB side is the integration test's (real OVS)
        self.unplugged.append(eid)

    def _call(self, op, **kw):
        try:
            return self.ops[op](**kw)
        except ApiError as e:
            raise PluginError(f"nvctl: {e} {e.errors}") from None


@pytest.fixture
def plugin(core, tmp_path):
    for t in ("blue", "red"):
        core.create(ROUTED.replace("NAME", t))  # web 10.0.0.0/29: .1 router, .2 VIP, .3 port a
    return OnCore(core, str(tmp_path / "docker.json"))


def network(plugin, nid, tenant, pool="10.0.0.0/29", gateway="10.0.0.1/29", **opts):
    return plugin.dispatch("NetworkDriver.CreateNetwork", {
        "NetworkID": nid, "Options": {GENERIC: {"tenant": tenant, "switch": "web", **opts}},
        "IPv4Data": [{"AddressSpace": "nvctl", "Pool": pool, "Gateway": gateway}]})


def docker_creates(plugin, nid, tenant):
    """What Docker does for `docker network create --ipam-driver nvctl`: pool, gateway, network."""
    pool = plugin.dispatch("IpamDriver.RequestPool", {"AddressSpace": "nvctl", "Pool": "10.0.0.0/29"})
    gw = plugin.dispatch("IpamDriver.RequestAddress", {"PoolID": pool["PoolID"], "Address": "10.0.0.1",
                                                      "Options": {"RequestAddressType": GATEWAY_REQUEST}})
    assert gw["Address"] == "10.0.0.1/29"
    return pool["PoolID"]


def endpoint(plugin, pool, nid, eid, **driver_opts):
    """CreateEndpoint as Docker 20.10 sends it: its own options, then the endpoint's
    driver options (`docker run --network name=NET,driver-opt=K=V`) beside them."""
    addr = plugin.dispatch("IpamDriver.RequestAddress", {"PoolID": pool, "Options": {}})["Address"]
    opts = {"com.docker.network.endpoint.exposedports": [], "com.docker.network.portmap": [], **driver_opts}
    out = plugin.dispatch("NetworkDriver.CreateEndpoint", {"NetworkID": nid, "EndpointID": eid,
                                                           "Interface": {"Address": addr}, "Options": opts})
    return addr, out


def test_twin_networks_of_one_subnet_get_a_pool_each_and_the_same_addresses(core, plugin):
    # both pools are asked for before either network is made: they are bound in order
    pb, pr = docker_creates(plugin, "nb", "blue"), docker_creates(plugin, "nr", "red")
    network(plugin, "nb", "blue")
    network(plugin, "nr", "red")
    assert {plugin.state["pools"][p]["network"] for p in (pb, pr)} == {"nb", "nr"}
    (ab, outb), (ar, _) = endpoint(plugin, pb, "nb", "e" * 64), endpoint(plugin, pr, "nr", "f" * 64)
    assert ab == ar == "10.0.0.4/29"  # .1 router, .2 VIP, .3 port a
    assert core.tenants["blue"].tenant.port(port_name("e" * 64)).made_by == "docker"
    assert outb["Interface"]["MacAddress"] == core.tenants["blue"].tenant.port(port_name("e" * 64)).mac


def test_an_address_held_for_docker_is_given_to_no_one_else_until_released(core, plugin):
    pool = docker_creates(plugin, "nb", "blue")
    network(plugin, "nb", "blue")
    held = plugin.dispatch("IpamDriver.RequestAddress", {"PoolID": pool, "Options": {}})["Address"]
    assert held == "10.0.0.4/29"
    assert core.port_add("blue", "web", workload=False)["port"]["ip"] == "10.0.0.5"  # not the held .4
    with pytest.raises(PluginError, match="in use"):  # nor a second hold of it
        plugin.dispatch("IpamDriver.RequestAddress", {"PoolID": pool, "Address": "10.0.0.4", "Options": {}})
    plugin.dispatch("IpamDriver.ReleaseAddress", {"PoolID": pool, "Address": held})
    assert core.port_add("blue", "web", workload=False)["port"]["ip"] == "10.0.0.4"


def test_a_hold_expires(core, plugin):
    now = [100.0]
    core.clock = lambda: now[0]
    assert core.ipam_hold("blue", "web", seconds=5)["ip"] == "10.0.0.4"
    assert core.port_add("blue", "web", workload=False)["port"]["ip"] == "10.0.0.5"
    now[0] += 6
    assert core.port_add("blue", "web", workload=False)["port"]["ip"] == "10.0.0.4"


def test_networks_that_disagree_with_the_switch_are_refused_with_the_fix(plugin):
    with pytest.raises(PluginError, match="--subnet 10.0.0.0/29"):
        network(plugin, "n1", "blue", pool="10.0.0.0/24")
    with pytest.raises(PluginError, match="--gateway 10.0.0.1"):
        network(plugin, "n1", "blue", gateway="10.0.0.6/29")
    with pytest.raises(PluginError, match="unknown option 'vlan'"):
        network(plugin, "n1", "blue", vlan="7")
    with pytest.raises(PluginError, match="no tenant 'green'"):
        network(plugin, "n1", "green")
    with pytest.raises(PluginError, match="IPv6"):
        plugin.dispatch("IpamDriver.RequestPool", {"Pool": "fd00::/64", "V6": True})
    assert plugin.state["networks"] == {}


def test_deleting_a_network_deletes_the_ports_left_on_it_and_the_record_survives_a_restart(core, plugin, tmp_path):
    pool = docker_creates(plugin, "nb", "blue")
    network(plugin, "nb", "blue")
    endpoint(plugin, pool, "nb", "e" * 64)
    again = OnCore(core, str(tmp_path / "docker.json"))  # a restarted plugin reads its record
    assert again.state["endpoints"] == {"e" * 64: {"network": "nb", "port": port_name("e" * 64)}}
    again.dispatch("NetworkDriver.DeleteNetwork", {"NetworkID": "nb"})
    assert [p.name for p in core.tenants["blue"].tenant.ports] == ["a"]
    assert again.state["networks"] == {} and again.state["endpoints"] == {}
    assert again.unplugged == ["e" * 64]


def test_option_labels_single_ones_win_over_the_list_and_other_options_are_not_looked_at():
    opts = {"nvctl.labels": "app=web,tier=back,example.com/canary=", "nvctl.label.tier": "front",
            "com.docker.network.portmap": [], "tenant": "blue"}
    assert option_labels(opts, "x") == {"app": "web", "tier": "front", "example.com/canary": ""}
    assert option_labels({}, "x") == {}


@pytest.mark.parametrize("opts, says", [
    ({"nvctl.labels": "app"}, "the endpoint's driver-opt nvctl.labels: 'app' is not KEY=VALUE"),
    ({"nvctl.labels": "=web"}, "'=web' is not KEY=VALUE"),
    ({"nvctl.label.": "web"}, "no label key"),
    ({"nvctl.lable.app": "web"}, "unknown option 'nvctl.lable.app'"),
    ({"nvctl.label.App!": "web"}, "label App!=web: the key 'App!'"),
    ({"nvctl.label.app": "-web"}, "label app=-web: the value '-web'"),
])
def test_a_bad_label_option_is_refused_naming_it(opts, says):
    with pytest.raises(PluginError) as e:
        option_labels(opts, "the endpoint's driver-opt")
    assert says in str(e.value)


def test_a_containers_port_gets_the_networks_labels_and_its_own_driver_opts_win(core, plugin, tmp_path):
    pool = docker_creates(plugin, "nb", "blue")
    network(plugin, "nb", "blue", **{"nvctl.label.app": "web", "nvctl.labels": "tier=back,env=prod"})
    endpoint(plugin, pool, "nb", "e" * 64, **{"nvctl.label.tier": "front"})
    endpoint(plugin, pool, "nb", "f" * 64)
    ports = core.tenants["blue"].tenant
    assert dict(ports.port(port_name("e" * 64)).labels) == {"app": "web", "tier": "front", "env": "prod"}
    assert dict(ports.port(port_name("f" * 64)).labels) == {"app": "web", "tier": "back", "env": "prod"}
    again = OnCore(core, str(tmp_path / "docker.json"))  # the network's labels are in the record
    assert again.state["networks"]["nb"]["labels"] == {"app": "web", "tier": "back", "env": "prod"}


def test_a_network_or_endpoint_with_a_bad_label_is_refused_and_makes_nothing(core, plugin):
    with pytest.raises(PluginError, match="the network's option label App!=web"):
        network(plugin, "n1", "blue", **{"nvctl.label.App!": "web"})
    assert plugin.state["networks"] == {}
    pool = docker_creates(plugin, "nb", "blue")
    network(plugin, "nb", "blue")
    with pytest.raises(PluginError, match="the endpoint's driver-opt label tier=-x"):
        endpoint(plugin, pool, "nb", "e" * 64, **{"nvctl.label.tier": "-x"})
    assert [p.name for p in core.tenants["blue"].tenant.ports] == ["a"] and plugin.state["endpoints"] == {}


def test_a_network_recorded_before_labels_still_serves(core, plugin):
    pool = docker_creates(plugin, "nb", "blue")
    network(plugin, "nb", "blue")
    del plugin.state["networks"]["nb"]["labels"]  # a record written by an older plugin
    endpoint(plugin, pool, "nb", "e" * 64, **{"nvctl.label.app": "web"})
    assert dict(core.tenants["blue"].tenant.port(port_name("e" * 64)).labels) == {"app": "web"}
