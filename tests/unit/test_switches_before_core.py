"""The OpenFlow app listens before the core has loaded its state (a restart): switches
that connect meanwhile wait in the app and are handed to the core when it is attached,
unless they went away first; their port changes meanwhile are kept."""
from types import SimpleNamespace

import pytest
from os_ken.controller.handler import DEAD_DISPATCHER, MAIN_DISPATCHER

from controller.switch import ofadapter
from controller.switch.ofadapter import NvApp


class _Sock:
    def __init__(self):
        self.open = True

    def fileno(self):
        return 3 if self.open else -1


class _Dp:
    def __init__(self, dpid):
        self.id = dpid
        self.is_active = True
        self.socket = _Sock()
        self.ports = {}
        self.closed = False

    def close(self):
        self.closed = True
        self.is_active = False


class _Core:
    def __init__(self, refuse=()):
        self.connected, self.refuse = [], set(refuse)

    def admit(self, dpid, peer_name):
        return dpid not in self.refuse

    def switch_connected(self, s):
        self.connected.append(s.dpid)


@pytest.fixture
def app(monkeypatch):
    monkeypatch.setattr(ofadapter.hub, "spawn", lambda fn, *args: fn(*args) if fn.__name__ != "_watch_liveness" else None)
    return NvApp()


def _up(app, dp):
    app._state_change(SimpleNamespace(datapath=dp, state=MAIN_DISPATCHER))


def test_switches_that_connect_before_the_core_are_handed_to_it_when_it_is_attached(app):
    one, two, gone, refused = _Dp(1), _Dp(2), _Dp(3), _Dp(4)
    for dp in (one, two, gone, refused):
        _up(app, dp)
    assert set(app.waiting) == {1, 2, 3, 4} and not app.sessions
    app._state_change(SimpleNamespace(datapath=gone, state=DEAD_DISPATCHER))  # went away while waiting
    assert 3 not in app.waiting
    core = _Core(refuse={4})
    app.attach(core)
    assert sorted(core.connected) == [1, 2] and set(app.sessions) == {1, 2} and not app.waiting
    assert refused.closed and not one.closed
    _up(app, _Dp(5))  # once attached, a switch goes straight to the core
    assert core.connected[-1] == 5 and not app.waiting


def test_a_waiting_switch_whose_socket_closed_without_an_event_is_not_handed_over(app):
    dp = _Dp(7)
    _up(app, dp)
    dp.socket.open, dp.socket = False, None
    core = _Core()
    app.attach(core)
    assert core.connected == [] and not app.sessions


def test_port_changes_of_a_waiting_switch_are_kept(app):
    dp = _Dp(9)
    _up(app, dp)
    s = app.waiting[9]
    ofp = SimpleNamespace(OFPPR_ADD=0, OFPPR_DELETE=1, OFPPR_MODIFY=2)
    dp.ofproto = ofp
    msg = SimpleNamespace(datapath=dp, reason=0, desc=SimpleNamespace(port_no=12, name=b"tap-a"))
    app._port_status(SimpleNamespace(msg=msg))
    assert s.ports() == {12: "tap-a"}
