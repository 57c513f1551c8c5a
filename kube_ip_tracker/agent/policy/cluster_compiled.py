"""Typed, validated ClusterNetworkPolicy / AdminNetworkPolicy / BaselineAdminNetworkPolicy objects.

All three kinds compile into one shape, :class:`ClusterPolicy`, on one of two tiers: Admin
(ClusterNetworkPolicy ``tier: Admin`` and AdminNetworkPolicy) and Baseline (ClusterNetworkPolicy
``tier: Baseline`` and the BaselineAdminNetworkPolicy ``default``). v1alpha1's ``Allow`` is
compiled as ``Accept``, ``portNumber``/``portRange``/``namedPort`` as the v1alpha2 protocol matches.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from .compiled import IPNetwork
from .selectors import LabelSelector


class Tier(enum.Enum):
    """Where a policy sits in the evaluation order (Admin, then NetworkPolicy, then Baseline)."""

    ADMIN = "Admin"
    BASELINE = "Baseline"


class Action(enum.Enum):
    """What a matching rule does. ``Pass`` ends the tier: evaluation goes on in the next one."""

    ACCEPT = "Accept"
    DENY = "Deny"
    PASS = "Pass"


class PeerKind(enum.Enum):
    """Which field of a peer is set."""

    NAMESPACES = "namespaces"  # pods in namespaces whose labels match
    PODS = "pods"  # namespaceSelector AND podSelector
    NETWORKS = "networks"  # the address is in one of the CIDRs (pod or not)
    NODES = "nodes"  # the address is an InternalIP of a node whose labels match


CNP_KIND = "ClusterNetworkPolicy"
ANP_KIND = "AdminNetworkPolicy"
BANP_KIND = "BaselineAdminNetworkPolicy"
KIND_ORDER = {CNP_KIND: 0, ANP_KIND: 1, BANP_KIND: 2}


@dataclass(frozen=True, slots=True)
class ClusterPeer:
    """One ``from``/``to`` entry: exactly one kind, with the selectors or CIDRs it needs."""

    kind: PeerKind
    namespace_selector: LabelSelector | None = None  # NAMESPACES, PODS
    pod_selector: LabelSelector | None = None  # PODS
    node_selector: LabelSelector | None = None  # NODES
    networks: tuple[IPNetwork, ...] = ()  # NETWORKS
    # NETWORKS as (IP version, netmask, network address) integers, for matching without properties.
    masks: tuple[tuple[int, int, int], ...] = ()
    # NAMESPACES/PODS: the namespace selector matches every namespace (no label lookup needed).
    any_namespace: bool = field(default=False, init=False, compare=False)

    def __post_init__(self) -> None:
        selector = self.namespace_selector
        object.__setattr__(self, "any_namespace", selector is None or selector.is_empty)

    @classmethod
    def of_networks(cls, networks: tuple[IPNetwork, ...]) -> ClusterPeer:
        """A ``networks`` peer."""
        masks = tuple((n.version, int(n.netmask), int(n.network_address)) for n in networks)
        return cls(PeerKind.NETWORKS, networks=networks, masks=masks)


@dataclass(frozen=True, slots=True)
class PortMatch:
    """One ``protocols`` (v1alpha2) or ``ports`` (v1alpha1) entry.

    ``name`` set: a named port, resolved on the destination pod for any protocol. Otherwise
    ``protocol`` with ``start..end`` (inclusive; None means every port of the protocol).
    """

    protocol: str | None = None
    start: int | None = None
    end: int | None = None
    name: str | None = None


@dataclass(frozen=True, slots=True)
class RuleRef:
    """Names the rule that decided a direction: for logs, ``evaluate`` output and explain traces."""

    tier: Tier
    kind: str
    cluster: str
    policy: str
    index: int  # position in spec.ingress / spec.egress as written
    name: str
    action: Action
    staged: bool = False  # a rule of a staged policy (kube-ip-tracker.io/staged)

    def __str__(self) -> str:
        label = f" ({self.name})" if self.name else ""
        staged = " (staged)" if self.staged else ""
        return (
            f"{self.tier.value.lower()} {self.kind} {self.cluster}/{self.policy}{staged} rule {self.index}{label} "
            f"{self.action.value}"
        )


@dataclass(frozen=True, slots=True)
class ClusterRule:
    """One rule: when the other end matches one of ``peers`` and the port matches one of ``ports``
    (empty: every port and protocol), ``action`` applies. ``all_peers``: the rule matches every
    peer (fail-closed rewrite of a Deny/Pass rule with a peer the agent cannot enforce)."""

    action: Action
    peers: tuple[ClusterPeer, ...]
    ports: tuple[PortMatch, ...]
    ref: RuleRef
    all_peers: bool = False


@dataclass(frozen=True, slots=True)
class Subject:
    """Pods of the policy's own cluster in namespaces matching ``namespace_selector`` and, when
    given, with labels matching ``pod_selector``."""

    namespace_selector: LabelSelector
    pod_selector: LabelSelector | None = None


ClusterPolicyKey = tuple[str, str, str]  # (cluster, kind, name)


@dataclass(frozen=True, slots=True)
class ClusterPolicy:
    """A validated cluster-scoped policy of one cluster, on one tier.

    ``warnings`` lists what the agent cannot enforce and how it was made safe (never wider
    access): reported per policy by the informer and by ``kube-ip-agent evaluate``.
    """

    cluster: str
    kind: str
    name: str
    tier: Tier
    priority: int
    subject: Subject
    ingress: tuple[ClusterRule, ...] = ()
    egress: tuple[ClusterRule, ...] = ()
    warnings: tuple[str, ...] = field(default=(), compare=True)
    # kube-ip-tracker.io/staged "true": evaluated beside the enforced policies, never enforced (see staged.py).
    staged: bool = False
    staged_problem: str = ""  # an invalid value of that annotation (the policy is then enforced)

    @property
    def key(self) -> ClusterPolicyKey:
        return (self.cluster, self.kind, self.name)

    @property
    def order(self) -> tuple[int, int, str]:
        """Evaluation order inside the tier: priority (lower first), then kind and name (the API
        leaves equal priorities to the implementation; this makes them deterministic)."""
        return (self.priority, KIND_ORDER.get(self.kind, 9), self.name)
