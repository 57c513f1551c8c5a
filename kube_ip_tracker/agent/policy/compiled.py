"""Typed, validated NetworkPolicy objects, ready for evaluation."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from .selectors import LabelSelector

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

PROTOCOLS = ("TCP", "UDP", "SCTP")

V6_FLAG = 1 << 128  # set in the numeric key of an IPv6 address (objects.ip_key), so no IPv4 key equals an IPv6 one


def _key_mask(network: IPNetwork) -> tuple[int, int]:
    """``(mask, value)``: an address key ``k`` is in ``network`` when ``k & mask == value``."""
    flag = V6_FLAG if network.version == 6 else 0
    return int(network.netmask) | V6_FLAG, int(network.network_address) | flag


@dataclass(frozen=True, slots=True)
class IPBlock:
    """``ipBlock``: a CIDR (host bits masked off) minus ``except`` CIDRs."""

    cidr: IPNetwork
    excepts: tuple[IPNetwork, ...] = ()
    # The same as masks over address keys (objects.ip_key), for the decision path.
    _key_masks: tuple[tuple[int, int], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_key_masks", tuple(_key_mask(n) for n in (self.cidr, *self.excepts)))

    def contains_key(self, key: int) -> bool:
        """:meth:`contains` for the numeric key of an address."""
        masks = self._key_masks
        mask, value = masks[0]
        if key & mask != value:
            return False
        for mask, value in masks[1:]:
            if key & mask == value:
                return False
        return True

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
    # kube-ip-tracker.io/staged "true": evaluated beside the enforced policies, never enforced (see staged.py).
    staged: bool = False
    staged_problem: str = ""  # an invalid value of that annotation (the policy is then enforced)

    @property
    def key(self) -> PolicyKey:
        return (self.cluster, self.namespace, self.name)
