"""The evaluator's world: the tracker's objects of every cluster plus the local policies.

* :attr:`World.objects` (:class:`~.objects.Objects`): pods, namespaces, nodes and cluster statuses,
  with pods found by key and by IP (one ownership rule, :mod:`kube_ip_tracker.ipclaims`). The agent
  store builds a new one for a tracker snapshot and swaps it in whole (:meth:`World.replace_objects`).
* policies by (cluster, namespace), each bucket with a generation counter.

The policies selecting a pod are computed once per :class:`~.objects.Identity` (pods sharing
cluster, namespace, labels and ports share one) and cached there with the world's policy
generation (a process-wide counter, drawn again on every policy change), so a decision checks one
number and never scans all policies or all pods. After a change the selection is computed again
from the pod's namespace bucket only, and the cached object is kept when the result is the same.

Staged policies (``CompiledPolicy.staged``) live in buckets of their own, which the enforced
selection never reads. :meth:`World.staged_selection` is the selection with them applied (enforced
and staged policies together); for a pod whose namespace has no staged policy it is the enforced one.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from kube_ip_tracker.model import NamespaceRecord, NodeRecord, PodRecord

from .compiled import CompiledPolicy, IPAddress
from .objects import NAME_LABEL, Identities, Objects, PodEntry, address_key

__all__ = ["EMPTY_SELECTION", "NAME_LABEL", "PodEntry", "PolicyBucket", "Selection", "World"]


@dataclass(frozen=True, slots=True)
class Selection:
    """Policies of the pod's cluster and namespace that select it, per direction (sorted by name)."""

    ingress: tuple[CompiledPolicy, ...] = ()
    egress: tuple[CompiledPolicy, ...] = ()


EMPTY_SELECTION = Selection()

# Policy generations of every world in the process: a cached selection never matches another world's state.
_GENERATIONS = itertools.count(1)


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
    """The tracker's objects and the policies of every cluster, with incremental updates."""

    def __init__(self) -> None:
        self._identities = Identities()
        self.objects = Objects(self._identities)
        self._buckets: dict[tuple[str, str], PolicyBucket] = {}
        self._staged_buckets: dict[tuple[str, str], PolicyBucket] = {}  # staged policies only
        self._policy_count = 0
        self.policy_generation = next(_GENERATIONS)  # drawn again whenever a policy changes

    def new_objects(self) -> Objects:
        """An empty set of objects sharing this world's identities (to stage a snapshot in)."""
        return Objects(self._identities)

    def replace_objects(self, objects: Objects) -> Objects:
        """Make ``objects`` the world's objects at once (policies stay); returns the replaced ones."""
        previous, self.objects = self.objects, objects
        return previous

    # ---- namespaces -------------------------------------------------------------------------

    def set_namespace(self, record: NamespaceRecord) -> None:
        """Add or replace a namespace. ``kubernetes.io/metadata.name`` is set as the API server does."""
        self.objects.set_namespace(record)

    def delete_namespace(self, cluster: str, name: str) -> None:
        """Remove a namespace (its pods and policies stay until deleted themselves)."""
        self.objects.delete_namespace(cluster, name)

    def namespace_labels(self, cluster: str, name: str) -> Mapping[str, str]:
        """Labels of a namespace; an unknown namespace has only its immutable name label."""
        return self.objects.labels_of_namespace(cluster, name)

    # ---- nodes ------------------------------------------------------------------------------

    def set_node(self, record: NodeRecord) -> None:
        """Add or replace a node (its labels and InternalIPs: what ``nodes`` peers match).
        Raises ValueError for an unparsable IP."""
        self.objects.set_node(record)

    def delete_node(self, cluster: str, name: str) -> None:
        """Remove a node; unknown keys are ignored."""
        self.objects.delete_node(cluster, name)

    def nodes_at(self, ip: IPAddress) -> Iterator[NodeRecord]:
        """The nodes (of any cluster) that have ``ip`` as an InternalIP."""
        return self.objects.nodes_at(address_key(ip))

    # ---- pods -------------------------------------------------------------------------------

    def set_pod(self, record: PodRecord) -> PodEntry:
        """Add or replace a pod. Raises ValueError for an unparsable IP."""
        return self.objects.set_pod(record)[0]

    def delete_pod(self, cluster: str, namespace: str, name: str) -> None:
        """Remove a pod; unknown keys are ignored."""
        self.objects.delete_pod(cluster, namespace, name)

    def pod(self, cluster: str, namespace: str, name: str) -> PodEntry | None:
        """The pod with this key, or None."""
        return self.objects.pod(cluster, namespace, name)

    def pod_by_ip(self, ip: str | IPAddress) -> PodEntry | None:
        """The pod owning ``ip`` (text or address); if several do (overlapping clusters, a stale
        pod), the newest wins (:mod:`kube_ip_tracker.ipclaims`)."""
        if isinstance(ip, str):
            return self.objects.pod_by_ip(ip)
        return self.objects.claims.owner_record(address_key(ip))

    def pod_by_key(self, key: int) -> PodEntry | None:
        """The pod owning the address of ``key`` (:func:`~.objects.ip_key`): the decision path."""
        return self.objects.claims.owner_record(key)

    def pods(self) -> Iterator[PodEntry]:
        """Every pod (for tooling and tests, never used on the decision path)."""
        return self.objects.iter_pods()

    @property
    def namespace_count(self) -> int:
        return len(self.objects.namespaces)

    @property
    def pod_count(self) -> int:
        return self.objects.pod_count

    # ---- policies ---------------------------------------------------------------------------

    def set_policy(self, policy: CompiledPolicy) -> None:
        """Add or replace a policy; a staged one goes to the staged buckets (and leaves the enforced, and
        the other way round)."""
        buckets, others = (
            (self._staged_buckets, self._buckets) if policy.staged else (self._buckets, self._staged_buckets)
        )
        known = _drop(others, policy.cluster, policy.namespace, policy.name)
        bucket = buckets.get((policy.cluster, policy.namespace))
        if bucket is None:
            bucket = buckets[(policy.cluster, policy.namespace)] = PolicyBucket()
        if not known and policy.name not in bucket.policies:
            self._policy_count += 1
        bucket.policies[policy.name] = policy
        bucket.changed()
        self.policy_generation = next(_GENERATIONS)

    def delete_policy(self, cluster: str, namespace: str, name: str) -> None:
        """Remove a policy (enforced or staged); unknown keys are ignored."""
        if _drop(self._buckets, cluster, namespace, name) or _drop(self._staged_buckets, cluster, namespace, name):
            self._policy_count -= 1
            self.policy_generation = next(_GENERATIONS)

    def policies(self, cluster: str, namespace: str) -> tuple[CompiledPolicy, ...]:
        """The enforced policies of one namespace of one cluster, sorted by name."""
        bucket = self._buckets.get((cluster, namespace))
        return bucket.ordered if bucket is not None else ()

    def staged_policies(self, cluster: str, namespace: str) -> tuple[CompiledPolicy, ...]:
        """The staged policies of one namespace of one cluster, sorted by name."""
        bucket = self._staged_buckets.get((cluster, namespace))
        return bucket.ordered if bucket is not None else ()

    def has_staged_policies(self, cluster: str, namespace: str) -> bool:
        """Whether pods of this namespace may decide differently with the staged policies applied."""
        return (cluster, namespace) in self._staged_buckets

    @property
    def policy_count(self) -> int:
        """Policies held, enforced and staged."""
        return self._policy_count

    @property
    def staged_count(self) -> int:
        """Staged policies held."""
        return sum(len(bucket.policies) for bucket in self._staged_buckets.values())

    # ---- clusters ---------------------------------------------------------------------------

    def remove_cluster(self, cluster: str) -> None:
        """Drop every pod, namespace, node and policy of ``cluster``."""
        self.objects.remove_cluster(cluster)
        for buckets in (self._buckets, self._staged_buckets):
            for key in [key for key in buckets if key[0] == cluster]:
                self._policy_count -= len(buckets.pop(key).policies)
        self.policy_generation = next(_GENERATIONS)

    # ---- selection cache --------------------------------------------------------------------

    def selection(self, entry: PodEntry) -> Selection:
        """Policies selecting ``entry`` (only its own cluster and namespace), cached per identity."""
        identity = entry.identity
        if identity.selection_gen == self.policy_generation:
            return identity.selection  # type: ignore[return-value]
        bucket = self._buckets.get((identity.cluster, identity.namespace))
        selection = EMPTY_SELECTION
        if bucket is not None:
            labels = identity.labels
            selecting = [p for p in bucket.ordered if p.pod_selector.matches(labels)]
            if selecting:
                selection = Selection(
                    ingress=tuple(p for p in selecting if p.affects_ingress),
                    egress=tuple(p for p in selecting if p.affects_egress),
                )
                if not selection.ingress and not selection.egress:
                    selection = EMPTY_SELECTION
        if selection != identity.selection:  # (policies compare by value: equal is the same verdicts)
            identity.selection = selection
        identity.selection_gen = self.policy_generation
        return identity.selection  # type: ignore[return-value]

    def staged_selection(self, entry: PodEntry) -> Selection:
        """:meth:`selection` with the staged policies of the pod's namespace applied (enforced and
        staged together, sorted by name), cached per identity; the enforced selection where none is staged."""
        identity = entry.identity
        staged = self._staged_buckets.get((identity.cluster, identity.namespace))
        if staged is None:
            return self.selection(entry)
        if identity.staged_selection_gen == self.policy_generation:
            return identity.staged_selection  # type: ignore[return-value]
        enforced = self.selection(entry)
        labels = identity.labels
        selecting = [p for p in staged.ordered if p.pod_selector.matches(labels)]
        selection = enforced
        if selecting:
            selection = Selection(
                ingress=_merged(enforced.ingress, [p for p in selecting if p.affects_ingress]),
                egress=_merged(enforced.egress, [p for p in selecting if p.affects_egress]),
            )
        identity.staged_selection = selection
        identity.staged_selection_gen = self.policy_generation
        return selection


def _merged(enforced: tuple[CompiledPolicy, ...], staged: list[CompiledPolicy]) -> tuple[CompiledPolicy, ...]:
    """Enforced and staged policies of one namespace in one tuple, sorted by name (names are unique there)."""
    if not staged:
        return enforced
    return tuple(sorted((*enforced, *staged), key=lambda p: p.name))


def _drop(buckets: dict[tuple[str, str], PolicyBucket], cluster: str, namespace: str, name: str) -> bool:
    """Remove a policy from one set of buckets; whether it was there. An emptied bucket is removed."""
    bucket = buckets.get((cluster, namespace))
    if bucket is None or name not in bucket.policies:
        return False
    del bucket.policies[name]
    bucket.changed()
    if not bucket.policies:
        # Safe: cached selections are keyed by the policy generation, drawn again on every change, and
        # no bucket means no selecting policy.
        del buckets[(cluster, namespace)]
    return True
