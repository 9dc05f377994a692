"""Polling with a deadline, for tests that wait on something outside (a switch, BIRD,
a session): one loop, so every wait fails the same way, naming what it waited for."""
from __future__ import annotations

import time


def wait_for(what: str, check, timeout: float = 30.0, every: float = 0.1):
    """Call `check()` until it returns something true and return that; after `timeout`
    seconds fail, saying `what` and the last value seen."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:g} s (last: {got!r})")
        time.sleep(every)
