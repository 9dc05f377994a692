"""What the server keeps of one tenant: its intent, its numbers, its compiled flows, and
the record of its policy layers (versions and owners, controller.server.owners)."""
from __future__ import annotations

from dataclasses import dataclass, field

from topology.model import Tenant
from controller.compile.allocator import Allocation


@dataclass
class TenantEntry:
    tenant: Tenant
    alloc: Allocation
    revision: int
    flows: dict  # host -> list[Flow]
    layers: dict = field(default_factory=dict)  # layer -> {"version", "owner", ...}; stored with the spec
    # host -> the meters and groups its flows there need (controller.compile.desired.extras),
    # as the last change worked them out; empty: not known (worked out when needed)
    extras: dict = field(default_factory=dict, compare=False)
