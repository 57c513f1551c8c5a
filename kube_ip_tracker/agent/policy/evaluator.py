"""The policy decision: world in, verdict out (no I/O).

A connection is allowed when egress from the source AND ingress to the destination allow it.
Each direction goes through three tiers, as in sig-network-policy-api's ClusterNetworkPolicy:

1. **Admin** (ClusterNetworkPolicy ``tier: Admin``, AdminNetworkPolicy): the rules of the policies
   of the pod's cluster whose subject selects the pod, lowest priority first, rules in written
   order. The first rule whose peer and port match decides: Accept or Deny is final; Pass ends
   the tier.
2. **NetworkPolicy** (v1): the policies of the pod's cluster and namespace that select it. If any
   does for this direction, its verdict (allowed by a rule, or denied) is final.
3. **Baseline** (ClusterNetworkPolicy ``tier: Baseline``, BaselineAdminNetworkPolicy): as Admin;
   Pass goes to the default.
4. Allow.

Egress is decided at the source (its cluster's policies), ingress at the destination (its
cluster's). Peer selectors match pods, namespaces and nodes of every cluster; a podSelector-only
NetworkPolicy peer matches pods in a namespace named like the policy's namespace, in any cluster.
An address that belongs to no known pod can only be matched by ipBlock, ``networks`` and
``nodes`` peers and is not subject to any policy itself.

Staged policies (annotation ``kube-ip-tracker.io/staged: "true"``) never change a verdict: the
enforced decision reads only the enforced policies. While any staged policy exists, a decision is
also made with the staged policies applied (enforced and staged together) for each direction whose
pod they may concern; where that differs, :attr:`Verdict.staged` is the verdict with them applied,
and :meth:`PolicyEngine.staged_cause` names the staged policy and rule that made the difference.
Without staged policies a decision costs one attribute test more.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass
from typing import Protocol

from kube_ip_tracker.model import NamespaceRecord, NodeRecord, PodRecord

from .cluster_compiled import Action, ClusterPeer, ClusterPolicy, ClusterRule, PeerKind, PortMatch, RuleRef
from .compiled import CompiledPolicy, IPAddress, Peer, PolicyKey, PortSpec, Rule
from .objects import address_key, ip_key
from .tiers import NO_RULES, TierStore
from .world import PodEntry, World


class Reason(enum.Enum):
    """Why one direction allowed or denied."""

    NOT_A_POD = "not-a-pod"  # the endpoint is an address of no known pod: no policy applies
    NOT_ISOLATED = "not-isolated"  # no tier decided: the default allow
    ALLOWED = "allowed"  # an Accept rule, or a rule of a selecting NetworkPolicy, matched
    DENIED = "denied"  # a Deny rule matched, or selected by a NetworkPolicy and no rule matched


NETWORK_POLICY_TIER = "NetworkPolicy"


@dataclass(frozen=True, slots=True)
class Verdict:
    """The decision for one connection, with the reason for each direction.

    Per direction, what decided: ``*_rule`` names the Admin or Baseline rule (tier, policy, rule
    index and name, action); ``*_policy`` the NetworkPolicy whose rule allowed, ``*_policy_rule``
    that rule's index in the policy's ``ingress``/``egress`` list. A NetworkPolicy deny has neither
    (every selecting policy was checked); the default allow has neither.
    """

    allowed: bool
    egress: Reason
    ingress: Reason
    egress_policy: PolicyKey | None = None
    ingress_policy: PolicyKey | None = None
    egress_rule: RuleRef | None = None
    ingress_rule: RuleRef | None = None
    egress_policy_rule: int | None = None
    ingress_policy_rule: int | None = None
    # The verdict with the staged policies applied, when it differs from this one in any direction
    # (None: no staged policy exists, or they change nothing here).
    staged: Verdict | None = None

    def __str__(self) -> str:
        return "allow" if self.allowed else "deny"

    @property
    def egress_tier(self) -> str | None:
        """``Admin``, ``NetworkPolicy``, ``Baseline`` or None (default allow, not a pod)."""
        return _tier_of(self.egress, self.egress_rule)

    @property
    def ingress_tier(self) -> str | None:
        """As :attr:`egress_tier`, for ingress."""
        return _tier_of(self.ingress, self.ingress_rule)


@dataclass(frozen=True, slots=True)
class StagedCause:
    """What made one direction decide differently with the staged policies applied.

    ``rule``: the staged Admin/Baseline rule that matched first (its Accept/Deny decided, or its Pass
    moved the decision on). ``policy``/``policy_rule``: the staged NetworkPolicy whose rule allowed.
    ``isolating``: the staged NetworkPolicies that isolate the pod when none of the selecting policies'
    rules matched. Empty when no staged policy decided (cannot happen for a real difference).
    """

    rule: RuleRef | None = None
    policy: PolicyKey | None = None
    policy_rule: int | None = None
    isolating: tuple[PolicyKey, ...] = ()


class _CauseTracer:
    """A tracer that remembers the first staged rule that matched, and the staged policies selecting the pod."""

    def __init__(self) -> None:
        self.first_rule: RuleRef | None = None
        self.first_policy: tuple[PolicyKey, int] | None = None
        self.isolating: tuple[PolicyKey, ...] = ()

    def tier_rule(self, direction: str, rule: ClusterRule, matched: bool) -> None:
        if matched and rule.ref.staged and self.first_rule is None and self.first_policy is None:
            self.first_rule = rule.ref

    def selected(self, direction: str, subject: PodEntry, policies: tuple[CompiledPolicy, ...]) -> None:
        self.isolating = tuple(p.key for p in policies if p.staged)

    def rule(self, direction: str, policy: CompiledPolicy, index: int, matched: bool) -> None:
        if matched and policy.staged and self.first_rule is None and self.first_policy is None:
            self.first_policy = (policy.key, index)

    def cause(self, outcome: Outcome) -> StagedCause:
        if self.first_rule is not None:
            return StagedCause(rule=self.first_rule)
        if self.first_policy is not None:
            return StagedCause(policy=self.first_policy[0], policy_rule=self.first_policy[1])
        if outcome is _NP_DENIED:
            return StagedCause(isolating=self.isolating)
        return StagedCause()


def _tier_of(reason: Reason, rule: RuleRef | None) -> str | None:
    if rule is not None:
        return rule.tier.value
    if reason is Reason.ALLOWED or reason is Reason.DENIED:
        return NETWORK_POLICY_TIER
    return None


# What one direction's evaluation returns: the reason, the NetworkPolicy that allowed, the tier rule,
# the index of the NetworkPolicy rule that allowed.
Outcome = tuple[Reason, PolicyKey | None, RuleRef | None, int | None]
_NOT_A_POD: Outcome = (Reason.NOT_A_POD, None, None, None)
_NOT_ISOLATED: Outcome = (Reason.NOT_ISOLATED, None, None, None)
_NP_DENIED: Outcome = (Reason.DENIED, None, None, None)


# One Verdict object for each pair of outcomes that name no policy or rule (most decisions), keyed by
# the ids of the module's outcome constants (which live as long as the module).
_SHARED_VERDICTS: dict[tuple[int, int], Verdict] = {
    (id(e), id(i)): Verdict(e[0] is not Reason.DENIED and i[0] is not Reason.DENIED, e[0], i[0])
    for e in (_NOT_A_POD, _NOT_ISOLATED, _NP_DENIED)
    for i in (_NOT_A_POD, _NOT_ISOLATED, _NP_DENIED)
}


def _verdict(egress_outcome: Outcome, ingress_outcome: Outcome, staged: Verdict | None = None) -> Verdict:
    """The verdict of two direction outcomes (a shared object when they name no policy and nothing is staged)."""
    e, i = egress_outcome, ingress_outcome
    if staged is None:
        shared = _SHARED_VERDICTS.get((id(e), id(i)))
        if shared is not None:
            return shared
    allowed = e[0] is not Reason.DENIED and i[0] is not Reason.DENIED
    return Verdict(allowed, e[0], i[0], e[1], i[1], e[2], i[2], e[3], i[3], staged)


class Tracer(Protocol):
    """Told what a decision considers, in order (``kube-ip-agent explain``); decisions without one tell nothing."""

    def tier_rule(self, direction: str, rule: ClusterRule, matched: bool) -> None:
        """An Admin or Baseline rule that applies to the pod was checked (``matched``: its action applies)."""

    def selected(self, direction: str, subject: PodEntry, policies: tuple[CompiledPolicy, ...]) -> None:
        """The NetworkPolicies of ``direction`` that select ``subject`` (empty: the tier does not decide)."""

    def rule(self, direction: str, policy: CompiledPolicy, index: int, matched: bool) -> None:
        """Rule ``index`` of ``policy``'s rules for ``direction`` was checked (``matched``: it allows)."""


class Endpoint:
    """One end of a connection: a pod (and the address used), or a bare address.

    The address may be given as text only (``ip_text``); it is parsed the first time :attr:`ip` is
    read (a ``networks`` peer), so most decisions never parse an address. ipBlock peers read
    :attr:`key`, the address's number (:func:`~.objects.ip_key`), given by whoever looked the pod up.
    """

    __slots__ = ("_ip", "_key", "_text", "pod")

    def __init__(
        self, pod: PodEntry | None, ip: IPAddress | None = None, ip_text: str | None = None, key: int | None = None
    ) -> None:
        self.pod = pod
        self._ip = ip
        self._text = ip_text
        self._key = key

    @property
    def ip(self) -> IPAddress | None:
        if self._ip is None and self._text is not None:
            self._ip = ipaddress.ip_address(self._text)
        return self._ip

    @property
    def key(self) -> int | None:
        """The address as a number (:func:`~.objects.ip_key`), or None without an address."""
        if self._key is None:
            if self._ip is not None:
                self._key = address_key(self._ip)
            elif self._text is not None:
                self._key = ip_key(self._text)
        return self._key

    def of_pod(self, pod: PodEntry) -> Endpoint:
        """This address as ``pod``'s (a pod known from elsewhere than the world's claims)."""
        return Endpoint(pod, self._ip, self._text, self._key)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Endpoint) and self.pod is other.pod and self.ip == other.ip

    def __hash__(self) -> int:
        return hash((id(self.pod), self.ip))

    def __repr__(self) -> str:
        return f"Endpoint(pod={self.pod!r}, ip={self.ip})"


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
        return port in dst.identity.named_ports.get((spec.name, protocol), ())
    if spec.port is None:
        return True
    if port is None:
        return False
    if spec.end_port is None:
        return port == spec.port
    return spec.port <= port <= spec.end_port


def _ports_match(rule: Rule, protocol: str, port: int | None, dst: PodEntry | None) -> bool:
    ports = rule.ports
    if not ports:
        return True
    for spec in ports:
        if _port_matches(spec, protocol, port, dst):
            return True
    return False


def _tier_port_matches(match: PortMatch, protocol: str, port: int | None, dst: PodEntry | None) -> bool:
    if port is None:
        return False
    if match.name is not None:
        # destinationNamedPort: a containerPort of the destination pod with this name, number and protocol.
        return dst is not None and port in dst.identity.named_ports.get((match.name, protocol), ())
    if match.protocol != protocol:
        return False
    return match.start is None or match.start <= port <= match.end  # type: ignore[operator]


def _outcome(rule: ClusterRule) -> Outcome | None:
    """What a matching tier rule decides; None for Pass (on to the next tier)."""
    action = rule.action
    if action is Action.ACCEPT:
        return (Reason.ALLOWED, None, rule.ref, None)
    if action is Action.DENY:
        return (Reason.DENIED, None, rule.ref, None)
    return None


class PolicyEngine:
    """Incrementally updated world plus the decision functions. Not thread-safe."""

    def __init__(self) -> None:
        self.world = World()
        self.tiers = TierStore()
        self.staged_policies = 0  # NetworkPolicies and cluster-scoped policies staged (not enforced)

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
        self._count_staged()

    def delete_policy(self, cluster: str, namespace: str, name: str) -> None:
        """Remove a policy."""
        self.world.delete_policy(cluster, namespace, name)
        self._count_staged()

    def set_node(self, record: NodeRecord) -> None:
        """Add or replace a node (ValueError for an unparsable IP)."""
        self.world.set_node(record)

    def delete_node(self, cluster: str, name: str) -> None:
        """Remove a node."""
        self.world.delete_node(cluster, name)

    def set_cluster_policy(self, policy: ClusterPolicy) -> None:
        """Add or replace a compiled ClusterNetworkPolicy / AdminNetworkPolicy / BaselineAdminNetworkPolicy."""
        self.tiers.set_policy(policy)
        self._count_staged()

    def delete_cluster_policy(self, cluster: str, kind: str, name: str) -> None:
        """Remove a cluster-scoped policy."""
        self.tiers.delete_policy(cluster, kind, name)
        self._count_staged()

    def remove_cluster(self, cluster: str) -> None:
        """Drop everything of one cluster."""
        self.world.remove_cluster(cluster)
        self.tiers.remove_cluster(cluster)
        self._count_staged()

    def _count_staged(self) -> None:
        self.staged_policies = self.world.staged_count + self.tiers.staged_count

    # ---- decisions --------------------------------------------------------------------------

    def endpoint_for_ip(self, ip: str | IPAddress) -> Endpoint:
        """The endpoint owning ``ip`` (a pod if one has it). ValueError for an invalid address."""
        claims = self.world.objects.claims
        if isinstance(ip, str):
            # ValueError for an invalid address; parsed to an address object only if a networks peer asks.
            key = ip_key(ip)
            return Endpoint(claims.owner_record(key), ip_text=ip, key=key)
        key = address_key(ip)
        return Endpoint(claims.owner_record(key), ip, key=key)

    def endpoint_for_pod(self, cluster: str, namespace: str, name: str) -> Endpoint:
        """The endpoint of a named pod, addressed by its primary IP. KeyError if it is unknown."""
        entry = self.world.pod(cluster, namespace, name)
        if entry is None:
            raise KeyError(f"pod {cluster}/{namespace}/{name} not found")
        return Endpoint(entry, ip_text=entry.primary_ip)

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

    def decide_endpoints(
        self, src: Endpoint, dst: Endpoint, protocol: str | int, port: int | None, tracer: Tracer | None = None
    ) -> Verdict:
        """Decide a connection between two endpoints; ``tracer`` is told every rule considered (explain).

        While staged policies exist, the verdict carries the decision with them applied where it
        differs (:attr:`Verdict.staged`); the tracer hears the enforced decision only."""
        proto = normalize_protocol(protocol)
        egress_outcome = self._direction(src.pod, dst, True, proto, port, dst.pod, tracer)
        ingress_outcome = self._direction(dst.pod, src, False, proto, port, dst.pod, tracer)
        if self.staged_policies:
            return self._with_staged(src, dst, proto, port, egress_outcome, ingress_outcome)
        # _verdict(egress_outcome, ingress_outcome), written out: one Python call less per decision.
        shared = _SHARED_VERDICTS.get((id(egress_outcome), id(ingress_outcome)))
        if shared is not None:
            return shared
        egress, egress_policy, egress_rule, egress_index = egress_outcome
        ingress, ingress_policy, ingress_rule, ingress_index = ingress_outcome
        return Verdict(
            egress is not Reason.DENIED and ingress is not Reason.DENIED,
            egress,
            ingress,
            egress_policy,
            ingress_policy,
            egress_rule,
            ingress_rule,
            egress_index,
            ingress_index,
        )

    def decide_staged(
        self, src: Endpoint, dst: Endpoint, protocol: str | int, port: int | None, tracer: Tracer | None = None
    ) -> Verdict:
        """The decision with the staged policies applied, as if they were enforced (explain, tests)."""
        proto = normalize_protocol(protocol)
        return _verdict(
            self._direction(src.pod, dst, True, proto, port, dst.pod, tracer, True),
            self._direction(dst.pod, src, False, proto, port, dst.pod, tracer, True),
        )

    def staged_cause(
        self, src: Endpoint, dst: Endpoint, protocol: str | int, port: int | None, direction: str
    ) -> StagedCause:
        """The staged policy and rule that decided ``direction`` (egress, ingress) with the staged policies
        applied: asked only where that decision differs from the enforced one (verdict log, metrics)."""
        proto = normalize_protocol(protocol)
        tracer = _CauseTracer()
        if direction == "egress":
            outcome = self._direction(src.pod, dst, True, proto, port, dst.pod, tracer, True)
        else:
            outcome = self._direction(dst.pod, src, False, proto, port, dst.pod, tracer, True)
        return tracer.cause(outcome)

    def _touches_staged(self, entry: PodEntry | None) -> bool:
        """Whether a staged policy may decide a direction of ``entry`` (its namespace's or cluster's)."""
        if entry is None:
            return False
        identity = entry.identity
        return self.world.has_staged_policies(identity.cluster, identity.namespace) or self.tiers.has_staged(
            identity.cluster
        )

    def _with_staged(
        self, src: Endpoint, dst: Endpoint, proto: str, port: int | None, egress: Outcome, ingress: Outcome
    ) -> Verdict:
        staged_egress = (
            self._direction(src.pod, dst, True, proto, port, dst.pod, None, True)
            if self._touches_staged(src.pod)
            else egress
        )
        staged_ingress = (
            self._direction(dst.pod, src, False, proto, port, dst.pod, None, True)
            if self._touches_staged(dst.pod)
            else ingress
        )
        if staged_egress == egress and staged_ingress == ingress:
            return _verdict(egress, ingress)
        return _verdict(egress, ingress, _verdict(staged_egress, staged_ingress))

    def _direction(
        self,
        entry: PodEntry | None,
        peer: Endpoint,
        egress: bool,
        protocol: str,
        port: int | None,
        dst: PodEntry | None,
        tracer: Tracer | None = None,
        staged: bool = False,
    ) -> Outcome:
        """One direction for the pod ``entry`` (source for egress, destination for ingress) and the
        other end ``peer``: Admin tier, NetworkPolicy, Baseline tier, default allow. ``staged``: with
        the staged policies applied."""
        if entry is None:
            return _NOT_A_POD
        world = self.world
        identity = entry.identity
        direction = "egress" if egress else "ingress"
        if staged:
            tiers = self.tiers.staged_rules_for(identity, world.namespace_labels(identity.cluster, identity.namespace))
        elif self.tiers.has_policies(identity.cluster):
            tiers = self.tiers.rules_for(identity, world.namespace_labels(identity.cluster, identity.namespace))
        else:
            tiers = NO_RULES
        admin = tiers.admin_egress if egress else tiers.admin_ingress
        if admin:
            decided = self._tier(admin, peer, protocol, port, dst, direction, tracer)
            if decided is not None:
                return decided
        if staged:
            selection = world.staged_selection(entry)
        elif identity.selection_gen == world.policy_generation:
            selection = identity.selection  # the world's cache, checked here to save a call per direction
        else:
            selection = world.selection(entry)
        policies = selection.egress if egress else selection.ingress  # type: ignore[union-attr]
        if tracer is not None:
            tracer.selected(direction, entry, policies)
        if policies:
            peers_match = self._peers_match
            for policy in policies:
                for index, rule in enumerate(policy.egress if egress else policy.ingress):
                    matched = _ports_match(rule, protocol, port, dst) and peers_match(rule, policy, peer)
                    if tracer is not None:
                        tracer.rule(direction, policy, index, matched)
                    if matched:
                        return (Reason.ALLOWED, policy.key, None, index)
            return _NP_DENIED
        baseline = tiers.baseline_egress if egress else tiers.baseline_ingress
        if baseline:
            decided = self._tier(baseline, peer, protocol, port, dst, direction, tracer)
            if decided is not None:
                return decided
        return _NOT_ISOLATED

    def _tier(
        self,
        rules: tuple[ClusterRule, ...],
        peer: Endpoint,
        protocol: str,
        port: int | None,
        dst: PodEntry | None,
        direction: str,
        tracer: Tracer | None,
    ) -> Outcome | None:
        """The first matching rule's outcome; None when none matches or the first match is a Pass."""
        peer_matches = self._tier_peer_matches
        for rule in rules:
            if rule.ports:
                for match in rule.ports:
                    if _tier_port_matches(match, protocol, port, dst):
                        break
                else:
                    if tracer is not None:
                        tracer.tier_rule(direction, rule, False)
                    continue
            matched = rule.all_peers
            if not matched:
                for candidate in rule.peers:
                    if peer_matches(candidate, peer):
                        matched = True
                        break
            if tracer is not None:
                tracer.tier_rule(direction, rule, matched)
            if matched:
                return _outcome(rule)
        return None

    def ports_match(self, rule: Rule, protocol: str | int, port: int | None, dst: Endpoint) -> bool:
        """Whether a NetworkPolicy rule's ``ports`` admit ``protocol``/``port`` to ``dst`` (explain traces)."""
        return _ports_match(rule, normalize_protocol(protocol), port, dst.pod)

    def peer_matches(self, peer: Peer, policy: CompiledPolicy, endpoint: Endpoint) -> bool:
        """Whether one ``from``/``to`` entry of ``policy`` matches ``endpoint`` (explain traces)."""
        return self._peer_matches(peer, policy, endpoint)

    def tier_port_matches(self, match: PortMatch, protocol: str | int, port: int | None, dst: Endpoint) -> bool:
        """Whether one Admin/Baseline port match admits ``protocol``/``port`` to ``dst`` (explain traces)."""
        return _tier_port_matches(match, normalize_protocol(protocol), port, dst.pod)

    def tier_peer_matches(self, peer: ClusterPeer, endpoint: Endpoint) -> bool:
        """Whether one Admin/Baseline peer matches ``endpoint`` (explain traces)."""
        return self._tier_peer_matches(peer, endpoint)

    def _tier_peer_matches(self, peer: ClusterPeer, endpoint: Endpoint) -> bool:
        kind = peer.kind
        if kind is PeerKind.NETWORKS:
            ip = endpoint.ip
            if ip is None:
                return False
            version, value = ip.version, int(ip)
            for net_version, mask, network in peer.masks:
                if net_version == version and value & mask == network:
                    return True
            return False
        if kind is PeerKind.NODES:
            ip = endpoint.ip
            selector = peer.node_selector
            return ip is not None and any(
                selector is None or selector.matches(node.labels) for node in self.world.nodes_at(ip)
            )
        entry = endpoint.pod
        if entry is None:
            return False
        identity = entry.identity
        if not peer.any_namespace and not peer.namespace_selector.matches(  # type: ignore[union-attr]
            self.world.namespace_labels(identity.cluster, identity.namespace)
        ):
            return False
        return peer.pod_selector is None or peer.pod_selector.matches(identity.labels)

    def _peers_match(self, rule: Rule, policy: CompiledPolicy, peer: Endpoint) -> bool:
        peers = rule.peers
        if not peers:
            return True
        peer_matches = self._peer_matches
        for candidate in peers:
            if peer_matches(candidate, policy, peer):
                return True
        return False

    def _peer_matches(self, peer: Peer, policy: CompiledPolicy, endpoint: Endpoint) -> bool:
        ip_block = peer.ip_block
        if ip_block is not None:
            key = endpoint.key
            return key is not None and ip_block.contains_key(key)
        entry = endpoint.pod
        if entry is None:
            return False
        identity = entry.identity
        namespace_selector = peer.namespace_selector
        if namespace_selector is None:
            # podSelector only: the policy's namespace name, in any cluster.
            if identity.namespace != policy.namespace:
                return False
        elif (
            namespace_selector.match_labels or namespace_selector.requirements  # not the empty selector
        ) and not namespace_selector.matches(self.world.namespace_labels(identity.cluster, identity.namespace)):
            return False
        pod_selector = peer.pod_selector
        return pod_selector is None or pod_selector.matches(identity.labels)
