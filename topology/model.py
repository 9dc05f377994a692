"""The validated tenant model: plain frozen values, nothing of OpenFlow here."""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass


@dataclass(frozen=True)
class Switch:
    name: str
    cidr: ipaddress.IPv4Network


@dataclass(frozen=True)
class Port:
    name: str
    switch: str
    ip: ipaddress.IPv4Address
    mac: str
    host: str


@dataclass(frozen=True)
class Tenant:
    name: str
    switches: tuple[Switch, ...]
    ports: tuple[Port, ...]

    def switch(self, name: str) -> Switch:
        for s in self.switches:
            if s.name == name:
                return s
        raise KeyError(name)

    def port(self, name: str) -> Port:
        for p in self.ports:
            if p.name == name:
                return p
        raise KeyError(name)

    def ports_on(self, switch: str) -> list[Port]:
        return [p for p in self.ports if p.switch == switch]

    def hosts(self) -> set[str]:
        return {p.host for p in self.ports}


def derived_mac(ip: ipaddress.IPv4Address) -> str:
    """A locally administered unicast MAC from the port's IP: unique within a switch
    because IPs are, and stable when the port moves between hosts."""
    b = ip.packed
    return "02:00:" + ":".join(f"{x:02x}" for x in b)
