"""Fixtures every unit test module may ask for by name, without importing them.

The data they are made of (HOSTS, BLUE, RED, routed_tenant(), SHOP, world, Net) is in
tests/unit/fixtures.py, which tests import from: a conftest is not meant to be imported.
"""
import pytest

from tests.unit.fixtures import BLUE, GW_HOSTS, RED, SHOP, world


@pytest.fixture
def core(tmp_path):
    """A controller core over a fresh store, hosts hv1..hv3 registered, no switch connected."""
    from controller.server.core import Core  # here: a module that fails to import fails only its users
    from controller.state.store import SqliteStore
    store = SqliteStore(str(tmp_path / "desired.db"))
    c = Core(store)
    for i in (1, 2, 3):
        c.register_host(f"hv{i}", f"192.0.2.{10 + i}", 0x100 + i, {"kind": "test"})
    yield c
    store.close()


@pytest.fixture
def switched_core(core):
    """`core` with a fake switch (OpenFlow's semantics, no OVS) connected for each host,
    in `core.switches`."""
    from controller.switch.fake import FakeSwitch
    core.switches = {}
    for i in (1, 2, 3):
        sw = core.switches[f"hv{i}"] = FakeSwitch(0x100 + i)
        core.switch_connected(sw)
    return core


@pytest.fixture
def blue_red():
    """world(BLUE, RED): two one-switch tenants with the same CIDR and port names."""
    return world(BLUE, RED)


@pytest.fixture
def shop_world():
    """world(SHOP) on GW_HOSTS: one tenant that uses every layer."""
    return world(SHOP, hosts=GW_HOSTS)
