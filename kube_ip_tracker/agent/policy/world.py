"""The evaluator's world: pods, namespaces and policies of every cluster, with lookup indexes.

Indexes kept up to date on every change:

- pods by key and by IP address,
- namespace labels by (cluster, name),
- policies by (cluster, namespace), each bucket with a generation counter.

Per pod, the policies that select it are computed once and cached; the cache entry is reused while
the pod and its namespace's policy bucket are unchanged, so a decision never scans all policies or
all pods.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from kube_ip_tracker.model import NamespaceRecord, NodeRecord, PodRecord

from .compiled import CompiledPolicy, IPAddress

PodKey = tuple[str, str, str]
NAME_LABEL = "kubernetes.io/metadata.name"


@dataclass(frozen=True, slots=True)
class Selection:
    """Policies of the pod's cluster and namespace that select it, per direction (sorted by name)."""

    ingress: tuple[CompiledPolicy, ...] = ()
    egress: tuple[CompiledPolicy, ...] = ()


EMPTY_SELECTION = Selection()


class PodEntry:
    """A pod as the evaluator sees it: record, parsed IPs, named ports and cached selection."""

    __slots__ = (
        "ip_by_text",
        "ips",
        "named_ports",
        "record",
        "selection",
        "selection_bucket",
        "selection_gen",
        "tiers",
    )

    def __init__(self, record: PodRecord) -> None:
        self.record = record
        self.ips: tuple[IPAddress, ...] = tuple(ipaddress.ip_address(ip) for ip in record.ips)
        # Canonical text form -> address, so lookups by string need no parsing.
        self.ip_by_text: dict[str, IPAddress] = {str(ip): ip for ip in self.ips}
        named: dict[tuple[str, str], set[int]] = {}
        for port in record.ports:
            if port.name:
                named.setdefault((port.name, port.protocol), set()).add(port.port)
        self.named_ports: dict[tuple[str, str], frozenset[int]] = {
            key: frozenset(ports) for key, ports in named.items()
        }
        self.selection: Selection = EMPTY_SELECTION
        self.selection_bucket: PolicyBucket | None = None
        self.selection_gen = -1
        # (tier generation, namespace labels, TierRules): the Admin/Baseline rules cached by tiers.py.
        self.tiers: tuple[int, Mapping[str, str], Any] | None = None

    @property
    def primary_ip(self) -> IPAddress | None:
        """The pod's first IP (status.podIP), or None for a pod without an address."""
        return self.ips[0] if self.ips else None


class PolicyBucket:
    """The policies of one (cluster, namespace); ``generation`` changes whenever they do."""

    __slots__ = ("generation", "ordered", "policies")

    def __init__(self) -> None:
        self.policies: dict[str, CompiledPolicy] = {}
        self.ordered: tuple[CompiledPolicy, ...] = ()
        self.generation = 0

    def changed(self) -> None:
        """Refresh the ordered view and bump the generation."""
        self.ordered = tuple(self.policies[name] for name in sorted(self.policies))
        self.generation += 1


class World:
    """Pods, namespaces and policies of every cluster, with incremental updates."""

    def __init__(self) -> None:
        self._pods: dict[PodKey, PodEntry] = {}
        self._by_ip: dict[str, dict[PodKey, PodEntry]] = {}
        self._namespaces: dict[tuple[str, str], Mapping[str, str]] = {}
        self._buckets: dict[tuple[str, str], PolicyBucket] = {}
        self._policy_count = 0
        self._nodes: dict[tuple[str, str], NodeRecord] = {}
        self._nodes_by_ip: dict[str, dict[tuple[str, str], NodeRecord]] = {}

    # ---- namespaces -------------------------------------------------------------------------

    def set_namespace(self, record: NamespaceRecord) -> None:
        """Add or replace a namespace. ``kubernetes.io/metadata.name`` is set as the API server does."""
        labels = dict(record.labels)
        labels[NAME_LABEL] = record.name
        self._namespaces[(record.cluster, record.name)] = labels

    def delete_namespace(self, cluster: str, name: str) -> None:
        """Remove a namespace (its pods and policies stay until deleted themselves)."""
        self._namespaces.pop((cluster, name), None)

    def namespace_labels(self, cluster: str, name: str) -> Mapping[str, str]:
        """Labels of a namespace; an unknown namespace has only its immutable name label."""
        labels = self._namespaces.get((cluster, name))
        if labels is None:
            return {NAME_LABEL: name}
        return labels

    # ---- nodes ------------------------------------------------------------------------------

    def set_node(self, record: NodeRecord) -> None:
        """Add or replace a node (its labels and InternalIPs: what ``nodes`` peers match).
        Raises ValueError for an unparsable IP."""
        texts = [str(ipaddress.ip_address(ip)) for ip in record.internal_ips]
        self.delete_node(record.cluster, record.name)
        self._nodes[record.key] = record
        for text in texts:
            self._nodes_by_ip.setdefault(text, {})[record.key] = record

    def delete_node(self, cluster: str, name: str) -> None:
        """Remove a node; unknown keys are ignored."""
        record = self._nodes.pop((cluster, name), None)
        if record is None:
            return
        for ip in record.internal_ips:
            text = str(ipaddress.ip_address(ip))
            owners = self._nodes_by_ip.get(text)
            if owners is not None:
                owners.pop(record.key, None)
                if not owners:
                    del self._nodes_by_ip[text]

    def nodes_at(self, ip: IPAddress) -> Iterator[NodeRecord]:
        """The nodes (of any cluster) that have ``ip`` as an InternalIP."""
        owners = self._nodes_by_ip.get(str(ip))
        return iter(owners.values()) if owners else iter(())

    # ---- pods -------------------------------------------------------------------------------

    def set_pod(self, record: PodRecord) -> PodEntry:
        """Add or replace a pod. Raises ValueError for an unparsable IP."""
        entry = PodEntry(record)
        old = self._pods.get(record.key)
        if old is not None and old.record.labels == record.labels:
            # Same labels (e.g. only the IP or node changed): the cached selection still holds.
            entry.selection = old.selection
            entry.selection_bucket = old.selection_bucket
            entry.selection_gen = old.selection_gen
        self.delete_pod(*record.key)
        self._pods[record.key] = entry
        for text in entry.ip_by_text:
            self._by_ip.setdefault(text, {})[record.key] = entry
        return entry

    def delete_pod(self, cluster: str, namespace: str, name: str) -> None:
        """Remove a pod; unknown keys are ignored."""
        key = (cluster, namespace, name)
        entry = self._pods.pop(key, None)
        if entry is None:
            return
        for text in entry.ip_by_text:
            owners = self._by_ip.get(text)
            if owners is not None:
                owners.pop(key, None)
                if not owners:
                    del self._by_ip[text]

    def pod(self, cluster: str, namespace: str, name: str) -> PodEntry | None:
        """The pod with this key, or None."""
        return self._pods.get((cluster, namespace, name))

    def pod_by_ip(self, ip: str | IPAddress) -> PodEntry | None:
        """The pod owning ``ip`` (canonical text or address); if several do (overlapping clusters,
        a stale pod), the newest wins."""
        owners = self._by_ip.get(ip if isinstance(ip, str) else str(ip))
        if not owners:
            return None
        if len(owners) == 1:
            return next(iter(owners.values()))
        return max(owners.values(), key=lambda e: (e.record.creation_timestamp, e.record.key))

    def pods(self) -> Iterator[PodEntry]:
        """Every pod (for tooling and tests, never used on the decision path)."""
        return iter(self._pods.values())

    @property
    def namespace_count(self) -> int:
        return len(self._namespaces)

    @property
    def pod_count(self) -> int:
        return len(self._pods)

    # ---- policies ---------------------------------------------------------------------------

    def set_policy(self, policy: CompiledPolicy) -> None:
        """Add or replace a policy."""
        bucket = self._buckets.get((policy.cluster, policy.namespace))
        if bucket is None:
            bucket = self._buckets[(policy.cluster, policy.namespace)] = PolicyBucket()
        if policy.name not in bucket.policies:
            self._policy_count += 1
        bucket.policies[policy.name] = policy
        bucket.changed()

    def delete_policy(self, cluster: str, namespace: str, name: str) -> None:
        """Remove a policy; unknown keys are ignored."""
        bucket = self._buckets.get((cluster, namespace))
        if bucket is None or name not in bucket.policies:
            return
        del bucket.policies[name]
        self._policy_count -= 1
        bucket.changed()
        if not bucket.policies:
            # Safe: cached selections are keyed by bucket identity, so a later bucket for the same
            # namespace never matches a stale entry, and no bucket means no selecting policy.
            del self._buckets[(cluster, namespace)]

    def policies(self, cluster: str, namespace: str) -> tuple[CompiledPolicy, ...]:
        """The policies of one namespace of one cluster, sorted by name."""
        bucket = self._buckets.get((cluster, namespace))
        return bucket.ordered if bucket is not None else ()

    @property
    def policy_count(self) -> int:
        return self._policy_count

    # ---- clusters ---------------------------------------------------------------------------

    def remove_cluster(self, cluster: str) -> None:
        """Drop every pod, namespace, node and policy of ``cluster``."""
        for key in [key for key in self._pods if key[0] == cluster]:
            self.delete_pod(*key)
        for key in [key for key in self._namespaces if key[0] == cluster]:
            del self._namespaces[key]
        for key in [key for key in self._buckets if key[0] == cluster]:
            self._policy_count -= len(self._buckets.pop(key).policies)
        for key in [key for key in self._nodes if key[0] == cluster]:
            self.delete_node(*key)

    # ---- selection cache --------------------------------------------------------------------

    def selection(self, entry: PodEntry) -> Selection:
        """Policies selecting ``entry`` (only its own cluster and namespace), cached per pod."""
        record = entry.record
        bucket = self._buckets.get((record.cluster, record.namespace))
        if bucket is None:
            return EMPTY_SELECTION
        if entry.selection_bucket is bucket and entry.selection_gen == bucket.generation:
            return entry.selection
        labels = record.labels
        selecting = [p for p in bucket.ordered if p.pod_selector.matches(labels)]
        selection = Selection(
            ingress=tuple(p for p in selecting if p.affects_ingress),
            egress=tuple(p for p in selecting if p.affects_egress),
        )
        if not selection.ingress and not selection.egress:
            selection = EMPTY_SELECTION
        entry.selection = selection
        entry.selection_bucket = bucket
        entry.selection_gen = bucket.generation
        return selection
