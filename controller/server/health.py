"""Load-balancer health checks in the server: the probes' loop, their answers, and a
backend found down (or up again) taken through the one change path.

A piece of `Core` (controller/server/core.py): the state it uses (`self.health`, a
`controller.packetin.health.Monitor`) is made in `Core.__init__`.

Health is operational state, not intent: the backends found down ride in the tenant's
`LoadBalancer.down` (controller state, never in its YAML), so the compiler's view of
the tenant leaves them out of the select group. A change of health is a
`change.HealthChange` run through `change.run` like any other change: only that
tenant is compiled again (its unchanged ports' flows are kept), only its flows that
differ (the load balancer's `lb_dnat` flows and group, on the hosts of its switches)
are sent, and nothing is written to the store: the tenant's spec and revision stay
as they were. A controller that starts knows nothing yet: every backend is unknown,
and in service, until its probes say otherwise.

The loop runs in the controller's event loop (a green thread, as the API's), only on
the leader; the packet-in handler only records an answer (no lock but the monitor's,
no change), and the loop's next tick (TICK seconds) makes the change.
"""
from __future__ import annotations

import logging
import time

from controller.server import change as change_path

LOG = logging.getLogger("nvctl.health")
TICK = 0.05  # seconds between two looks at what is due
RETRY = 1.0  # seconds before a health change that failed is tried again (not every tick)


class HealthMixin:
    def health_tick(self, wall=time.time) -> None:
        """Probes due sent, unanswered ones expired, changes of state made."""
        if not self.leading():
            return
        now = self.clock()
        entries = dict(self.tenants)
        self.health.sync({n: e.tenant for n, e in entries.items()
                          if e.tenant.load_balancers and any(lb.health_check for lb in e.tenant.load_balancers)})
        self.health.expire(now, wall())
        live = {h for h, st in self.state.items() if st.session is not None and st.synced_session is st.session}
        ofports = {n: e.alloc.ofport for n, e in entries.items() if e.tenant.load_balancers}
        for probe in self.health.due(now, ofports, live):
            st = self.state.get(probe.host)
            session = st.session if st is not None else None
            if session is not None:
                try:
                    session.packet_out(probe.ofport, probe.frame)
                except Exception as e:  # noqa: BLE001 - the switch went away: its timeout says so
                    LOG.debug("health probe on %s: %s", probe.host, e)
        self.apply_health()

    def apply_health(self) -> list[str]:
        """Every tenant whose compiled `down` differs from what its probes found, changed
        (one HealthChange each); returns their names."""
        done = []
        retry = self._health_retry  # tenant -> not before (clock)
        for name, want in sorted(self.health.down_all().items()):  # only tenants with health checks
            e = self.tenants.get(name)
            if e is None or all(lb.down == want.get(lb.name, ()) for lb in e.tenant.load_balancers):
                retry.pop(name, None)
                continue
            if self.clock() < retry.get(name, 0.0):
                continue
            with self.mutex:
                e = self.tenants.get(name)
                if e is None:
                    continue
                want = self.health.down(name)
                if all(lb.down == want.get(lb.name, ()) for lb in e.tenant.load_balancers):
                    continue
                try:
                    r = change_path.run(self, change_path.HealthChange(e, want))
                except Exception as ex:  # noqa: BLE001 - tried again in RETRY seconds
                    LOG.warning("tenant %s: health change not made (again in %g s): %s", name, RETRY, ex)
                    retry[name] = self.clock() + RETRY
                    continue
            retry.pop(name, None)
            LOG.info("tenant %s: %s (%s)", name, r.get("action"), r.get("hosts"))
            done.append(name)
        return done

    def health_answer(self, host: str, regs: dict, data: bytes, wall=time.time) -> list[bytes]:
        """A backend's answer to a probe (the lb_monitor table's packet-in): recorded;
        the frames to send back out of its port."""
        where = self.punt.by_vni.get(regs.get("reg13", -1))
        if where is None:
            return []
        return self.health.answer(where[0], data, wall())

    def health_loop(self, sleep=time.sleep) -> None:
        """The controller's health-check loop (main spawns it)."""
        while True:
            try:
                self.health_tick()
            except Exception:  # noqa: BLE001 - a tick's trouble must not end health checking
                LOG.exception("health check tick failed")
            sleep(TICK)

    def health_of(self, tenant: str) -> dict:
        """{(load balancer, port, l4 port): state...} of one tenant's checked backends."""
        return self.health.report(tenant)
