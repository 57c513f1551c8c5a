"""The Admin and Baseline tiers: cluster-scoped policies per cluster and, per pod, the rules that apply.

A policy selects subjects in its own cluster only, so the policies are kept per cluster, in
evaluation order (priority, then kind and name). For a pod, :meth:`TierStore.rules_for` flattens
the rules of the policies whose subject selects it into one tuple per tier and direction, in the
order they are evaluated: the first matching rule decides (Accept, Deny, or Pass to the next tier).
Policies without rules for a direction contribute nothing to it (they do not isolate).

The flattened rules are cached on the pod's identity (``Identity.tiers``: pods sharing cluster,
namespace, labels and ports share it) and reused while the pod's cluster has the same policies (a per-cluster generation) and its namespace the same labels (the
labels mapping is replaced, never mutated, when a namespace changes).

Staged policies (``ClusterPolicy.staged``) are held beside the others but never in the enforced order:
:meth:`TierStore.staged_rules_for` is the rules with them applied (cached in ``Identity.staged_tiers``),
the enforced rules for a cluster without staged policies.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from .cluster_compiled import ClusterPolicy, ClusterPolicyKey, ClusterRule, Tier
from .objects import Identity


@dataclass(frozen=True, slots=True)
class TierRules:
    """The rules that apply to one pod, per tier and direction, in evaluation order."""

    admin_ingress: tuple[ClusterRule, ...] = ()
    admin_egress: tuple[ClusterRule, ...] = ()
    baseline_ingress: tuple[ClusterRule, ...] = ()
    baseline_egress: tuple[ClusterRule, ...] = ()


NO_RULES = TierRules()


def _flatten(policies: list[ClusterPolicy], direction: str) -> tuple[ClusterRule, ...]:
    return tuple(rule for policy in policies for rule in getattr(policy, direction))


class TierStore:
    """The cluster-scoped policies of every cluster, with a per-pod cache of the rules that apply."""

    def __init__(self) -> None:
        self._policies: dict[str, dict[ClusterPolicyKey, ClusterPolicy]] = {}
        self._ordered: dict[str, tuple[ClusterPolicy, ...]] = {}  # enforced policies only
        self._staged_ordered: dict[str, tuple[ClusterPolicy, ...]] = {}  # enforced and staged, where any is staged
        self._generation: dict[str, int] = {}
        self._counter = 0

    def set_policy(self, policy: ClusterPolicy) -> None:
        """Add or replace a policy (keyed by cluster, kind and name)."""
        self._policies.setdefault(policy.cluster, {})[policy.key] = policy
        self._changed(policy.cluster)

    def delete_policy(self, cluster: str, kind: str, name: str) -> None:
        """Remove a policy; unknown keys are ignored."""
        policies = self._policies.get(cluster)
        if policies is None or policies.pop((cluster, kind, name), None) is None:
            return
        self._changed(cluster)

    def remove_cluster(self, cluster: str) -> None:
        """Drop every policy of ``cluster``."""
        if self._policies.pop(cluster, None) is not None:
            self._changed(cluster)

    def policies(self, cluster: str, staged: bool = False) -> tuple[ClusterPolicy, ...]:
        """The enforced policies of ``cluster`` (with ``staged``, the staged ones too): Admin tier then
        Baseline tier, each in evaluation order."""
        if staged and cluster in self._staged_ordered:
            return self._staged_ordered[cluster]
        return self._ordered.get(cluster, ())

    def __iter__(self) -> Iterator[ClusterPolicy]:
        """Every policy, enforced and staged."""
        for policies in self._policies.values():
            yield from policies.values()

    @property
    def count(self) -> int:
        """Policies held, enforced and staged."""
        return sum(len(policies) for policies in self._policies.values())

    @property
    def staged_count(self) -> int:
        """Staged policies held."""
        return sum(1 for policy in self if policy.staged)

    def _changed(self, cluster: str) -> None:
        policies = self._policies.get(cluster) or {}
        if not policies:
            self._policies.pop(cluster, None)
        ordered = sorted(policies.values(), key=lambda p: (p.tier is not Tier.ADMIN, p.order))
        enforced = tuple(p for p in ordered if not p.staged)
        _set_or_drop(self._ordered, cluster, enforced)
        _set_or_drop(self._staged_ordered, cluster, tuple(ordered) if len(enforced) < len(ordered) else ())
        self._counter += 1
        self._generation[cluster] = self._counter

    def has_policies(self, cluster: str) -> bool:
        """Whether ``cluster`` has any cluster-scoped policy (else :meth:`rules_for` is ``NO_RULES``)."""
        return cluster in self._ordered

    def has_staged(self, cluster: str) -> bool:
        """Whether ``cluster`` has a staged cluster-scoped policy (else :meth:`staged_rules_for` is :meth:`rules_for`)."""
        return cluster in self._staged_ordered

    def rules_for(self, entry: Identity, namespace_labels: Mapping[str, str]) -> TierRules:
        """The rules applying to pods of identity ``entry`` (its own cluster's enforced policies), cached on it."""
        cluster = entry.cluster
        ordered = self._ordered.get(cluster)
        if not ordered:
            return NO_RULES
        generation = self._generation[cluster]
        cached = entry.tiers
        if (
            cached is not None
            and cached[0] == generation
            and (cached[1] is namespace_labels or cached[1] == namespace_labels)
        ):
            return cached[2]
        rules = _applying(ordered, entry, namespace_labels)
        entry.tiers = (generation, namespace_labels, rules)
        return rules

    def staged_rules_for(self, entry: Identity, namespace_labels: Mapping[str, str]) -> TierRules:
        """:meth:`rules_for` with the staged policies of the pod's cluster applied, cached on the identity."""
        cluster = entry.cluster
        ordered = self._staged_ordered.get(cluster)
        if ordered is None:
            return self.rules_for(entry, namespace_labels)
        generation = self._generation[cluster]
        cached = entry.staged_tiers
        if cached is not None and cached[0] == generation and cached[1] == namespace_labels:
            return cached[2]  # type: ignore[no-any-return]
        rules = _applying(ordered, entry, namespace_labels)
        entry.staged_tiers = (generation, namespace_labels, rules)
        return rules


def _set_or_drop(
    by_cluster: dict[str, tuple[ClusterPolicy, ...]], cluster: str, ordered: tuple[ClusterPolicy, ...]
) -> None:
    if ordered:
        by_cluster[cluster] = ordered
    else:
        by_cluster.pop(cluster, None)


def _applying(ordered: tuple[ClusterPolicy, ...], entry: Identity, namespace_labels: Mapping[str, str]) -> TierRules:
    """The rules of the policies in ``ordered`` whose subject selects pods of ``entry``, flattened per tier."""
    labels = entry.labels
    admin: list[ClusterPolicy] = []
    baseline: list[ClusterPolicy] = []
    for policy in ordered:
        subject = policy.subject
        if not subject.namespace_selector.matches(namespace_labels):
            continue
        if subject.pod_selector is not None and not subject.pod_selector.matches(labels):
            continue
        (admin if policy.tier is Tier.ADMIN else baseline).append(policy)
    rules = TierRules(
        _flatten(admin, "ingress"),
        _flatten(admin, "egress"),
        _flatten(baseline, "ingress"),
        _flatten(baseline, "egress"),
    )
    return NO_RULES if rules == NO_RULES else rules
