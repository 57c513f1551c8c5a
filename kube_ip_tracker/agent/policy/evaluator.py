"""The NetworkPolicy decision: world in, verdict out (no I/O).

A connection is allowed when egress from the source AND ingress to the destination allow it.
Egress is decided by the policies of the source's cluster and namespace that select the source;
ingress by those of the destination's cluster and namespace that select the destination. Peer
selectors match pods and namespaces of every cluster; a podSelector-only peer matches pods in a
namespace named like the policy's namespace, in any cluster. An address that belongs to no known
pod can only be matched by ipBlock peers and is not subject to any policy itself.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass

from kube_ip_tracker.model import NamespaceRecord, PodRecord

from .compiled import CompiledPolicy, IPAddress, Peer, PolicyKey, PortSpec, Rule
from .world import PodEntry, World


class Reason(enum.Enum):
    """Why one direction allowed or denied."""

    NOT_A_POD = "not-a-pod"  # the endpoint is an address of no known pod: no policy applies
    NOT_ISOLATED = "not-isolated"  # no policy of this direction selects the endpoint
    ALLOWED = "allowed"  # a rule of a selecting policy matched
    DENIED = "denied"  # selected, and no rule matched


@dataclass(frozen=True, slots=True)
class Verdict:
    """The decision for one connection, with the reason for each direction."""

    allowed: bool
    egress: Reason
    ingress: Reason
    egress_policy: PolicyKey | None = None
    ingress_policy: PolicyKey | None = None

    def __str__(self) -> str:
        return "allow" if self.allowed else "deny"


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One end of a connection: a pod (and the address used), or a bare address."""

    pod: PodEntry | None
    ip: IPAddress | None


_PROTOCOL_NAMES = {6: "TCP", 17: "UDP", 132: "SCTP"}


def normalize_protocol(protocol: str | int) -> str:
    """``"tcp"``/``6`` -> ``"TCP"``; other protocols keep their (upper-cased) name or number."""
    if isinstance(protocol, int):
        return _PROTOCOL_NAMES.get(protocol, str(protocol))
    return protocol.upper()


def _port_matches(spec: PortSpec, protocol: str, port: int | None, dst: PodEntry | None) -> bool:
    if spec.protocol != protocol:
        return False
    if spec.name is not None:
        # Named ports resolve on the destination pod: name and protocol must both match.
        if dst is None or port is None:
            return False
        return port in dst.named_ports.get((spec.name, protocol), ())
    if spec.port is None:
        return True
    if port is None:
        return False
    if spec.end_port is None:
        return port == spec.port
    return spec.port <= port <= spec.end_port


def _ports_match(rule: Rule, protocol: str, port: int | None, dst: PodEntry | None) -> bool:
    if not rule.ports:
        return True
    return any(_port_matches(spec, protocol, port, dst) for spec in rule.ports)


class PolicyEngine:
    """Incrementally updated world plus the decision functions. Not thread-safe."""

    def __init__(self) -> None:
        self.world = World()

    # ---- world updates ----------------------------------------------------------------------

    def set_namespace(self, record: NamespaceRecord) -> None:
        """Add or replace a namespace."""
        self.world.set_namespace(record)

    def delete_namespace(self, cluster: str, name: str) -> None:
        """Remove a namespace."""
        self.world.delete_namespace(cluster, name)

    def set_pod(self, record: PodRecord) -> None:
        """Add or replace a pod (ValueError for an unparsable IP)."""
        self.world.set_pod(record)

    def delete_pod(self, cluster: str, namespace: str, name: str) -> None:
        """Remove a pod."""
        self.world.delete_pod(cluster, namespace, name)

    def set_policy(self, policy: CompiledPolicy) -> None:
        """Add or replace a compiled policy (see :func:`parse_network_policy`)."""
        self.world.set_policy(policy)

    def delete_policy(self, cluster: str, namespace: str, name: str) -> None:
        """Remove a policy."""
        self.world.delete_policy(cluster, namespace, name)

    def remove_cluster(self, cluster: str) -> None:
        """Drop everything of one cluster."""
        self.world.remove_cluster(cluster)

    # ---- decisions --------------------------------------------------------------------------

    def endpoint_for_ip(self, ip: str | IPAddress) -> Endpoint:
        """The endpoint owning ``ip`` (a pod if one has it). ValueError for an invalid address."""
        world = self.world
        if isinstance(ip, str):
            entry = world.pod_by_ip(ip)
            if entry is not None:  # fast path: a pod address in canonical form, no parsing
                return Endpoint(entry, entry.ip_by_text[ip])
            address = ipaddress.ip_address(ip)
            text = str(address)
            return Endpoint(world.pod_by_ip(text) if text != ip else None, address)
        return Endpoint(world.pod_by_ip(ip), ip)

    def endpoint_for_pod(self, cluster: str, namespace: str, name: str) -> Endpoint:
        """The endpoint of a named pod, addressed by its primary IP. KeyError if it is unknown."""
        entry = self.world.pod(cluster, namespace, name)
        if entry is None:
            raise KeyError(f"pod {cluster}/{namespace}/{name} not found")
        return Endpoint(entry, entry.primary_ip)

    def decide(
        self, src_ip: str | IPAddress, dst_ip: str | IPAddress, protocol: str | int, port: int | None
    ) -> Verdict:
        """Decide a connection given by addresses (the dataplane's view)."""
        return self.decide_endpoints(self.endpoint_for_ip(src_ip), self.endpoint_for_ip(dst_ip), protocol, port)

    def decide_pods(
        self,
        src: tuple[str, str, str],
        dst: tuple[str, str, str],
        protocol: str | int,
        port: int | None,
    ) -> Verdict:
        """Decide a connection between two named pods ``(cluster, namespace, name)`` (conformance probes)."""
        return self.decide_endpoints(self.endpoint_for_pod(*src), self.endpoint_for_pod(*dst), protocol, port)

    def decide_endpoints(self, src: Endpoint, dst: Endpoint, protocol: str | int, port: int | None) -> Verdict:
        """Decide a connection between two endpoints."""
        proto = normalize_protocol(protocol)
        egress, egress_policy = self._egress(src, dst, proto, port)
        ingress, ingress_policy = self._ingress(src, dst, proto, port)
        allowed = egress is not Reason.DENIED and ingress is not Reason.DENIED
        return Verdict(allowed, egress, ingress, egress_policy, ingress_policy)

    def _egress(self, src: Endpoint, dst: Endpoint, protocol: str, port: int | None) -> tuple[Reason, PolicyKey | None]:
        if src.pod is None:
            return Reason.NOT_A_POD, None
        policies = self.world.selection(src.pod).egress
        if not policies:
            return Reason.NOT_ISOLATED, None
        for policy in policies:
            for rule in policy.egress:
                if _ports_match(rule, protocol, port, dst.pod) and self._peers_match(rule, policy, dst):
                    return Reason.ALLOWED, policy.key
        return Reason.DENIED, None

    def _ingress(
        self, src: Endpoint, dst: Endpoint, protocol: str, port: int | None
    ) -> tuple[Reason, PolicyKey | None]:
        if dst.pod is None:
            return Reason.NOT_A_POD, None
        policies = self.world.selection(dst.pod).ingress
        if not policies:
            return Reason.NOT_ISOLATED, None
        for policy in policies:
            for rule in policy.ingress:
                if _ports_match(rule, protocol, port, dst.pod) and self._peers_match(rule, policy, src):
                    return Reason.ALLOWED, policy.key
        return Reason.DENIED, None

    def _peers_match(self, rule: Rule, policy: CompiledPolicy, peer: Endpoint) -> bool:
        if not rule.peers:
            return True
        return any(self._peer_matches(candidate, policy, peer) for candidate in rule.peers)

    def _peer_matches(self, peer: Peer, policy: CompiledPolicy, endpoint: Endpoint) -> bool:
        if peer.ip_block is not None:
            return endpoint.ip is not None and peer.ip_block.contains(endpoint.ip)
        entry = endpoint.pod
        if entry is None:
            return False
        record = entry.record
        if peer.namespace_selector is None:
            # podSelector only: the policy's namespace name, in any cluster.
            if record.namespace != policy.namespace:
                return False
        elif not peer.namespace_selector.is_empty and not peer.namespace_selector.matches(
            self.world.namespace_labels(record.cluster, record.namespace)
        ):
            return False
        return peer.pod_selector is None or peer.pod_selector.matches(record.labels)
