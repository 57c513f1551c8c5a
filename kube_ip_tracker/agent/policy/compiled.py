"""Typed, validated NetworkPolicy objects, ready for evaluation."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from .selectors import LabelSelector

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

PROTOCOLS = ("TCP", "UDP", "SCTP")


@dataclass(frozen=True, slots=True)
class IPBlock:
    """``ipBlock``: a CIDR (host bits masked off) minus ``except`` CIDRs."""

    cidr: IPNetwork
    excepts: tuple[IPNetwork, ...] = ()

    def contains(self, ip: IPAddress) -> bool:
        """Whether ``ip`` is in the CIDR and in none of the exceptions."""
        cidr = self.cidr
        if ip.version != cidr.version:
            return False
        value = int(ip)
        if value & int(cidr.netmask) != int(cidr.network_address):
            return False
        for excluded in self.excepts:
            if value & int(excluded.netmask) == int(excluded.network_address):
                return False
        return True


@dataclass(frozen=True, slots=True)
class Peer:
    """One ``from``/``to`` entry. Either ``ip_block``, or at least one of the two selectors."""

    pod_selector: LabelSelector | None = None
    namespace_selector: LabelSelector | None = None
    ip_block: IPBlock | None = None


@dataclass(frozen=True, slots=True)
class PortSpec:
    """One ``ports`` entry. ``port``/``name`` None means every port of ``protocol``."""

    protocol: str = "TCP"
    port: int | None = None
    end_port: int | None = None
    name: str | None = None


@dataclass(frozen=True, slots=True)
class Rule:
    """One ingress or egress rule; empty ``ports``/``peers`` mean every port/peer."""

    ports: tuple[PortSpec, ...] = ()
    peers: tuple[Peer, ...] = ()


PolicyKey = tuple[str, str, str]


@dataclass(frozen=True, slots=True)
class CompiledPolicy:
    """A validated NetworkPolicy of one cluster, with ``policyTypes`` already defaulted."""

    cluster: str
    namespace: str
    name: str
    pod_selector: LabelSelector
    ingress: tuple[Rule, ...] = ()
    egress: tuple[Rule, ...] = ()
    affects_ingress: bool = True
    affects_egress: bool = False

    @property
    def key(self) -> PolicyKey:
        return (self.cluster, self.namespace, self.name)
