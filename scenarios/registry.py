"""The scenarios' registry: `@scenario` adds a function to SCENARIOS (scenarios/catalog.py
uses it); the runner runs them. Kept apart so that the catalog and the runner do not
import each other."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

HERE = os.path.dirname(os.path.abspath(__file__))
EXAMPLES = os.path.join(os.path.dirname(HERE), "examples")


def example(name: str) -> str:
    with open(os.path.join(EXAMPLES, f"{name}.yaml")) as f:
        return f.read()


@dataclass
class Scenario:
    name: str
    summary: str
    fn: Callable
    hosts: int = 3
    mininet: bool = False  # can it run under --mininet?


SCENARIOS: dict[str, Scenario] = {}


def scenario(name: str, summary: str, hosts: int = 3, mininet: bool = False):
    def register(fn):
        SCENARIOS[name] = Scenario(name, summary, fn, hosts, mininet)
        return fn
    return register
