"""What the server keeps of one tenant: its intent, its numbers, its compiled flows."""
from __future__ import annotations

from dataclasses import dataclass

from topology.model import Tenant
from controller.compile.allocator import Allocation


@dataclass
class TenantEntry:
    tenant: Tenant
    alloc: Allocation
    revision: int
    flows: dict  # host -> list[Flow]
