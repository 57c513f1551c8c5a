"""The agent's local mirror of a tracker's index, fed by the tracker client through :class:`~.sink.ApplySink`.

Pods are held by (cluster, namespace, name), namespaces and nodes by (cluster, name), and an IP maps
to its owning pod by the tracker's own rule (:mod:`kube_ip_tracker.ipclaims`: the newest pod wins,
the older claim comes back when the newer pod goes away). A snapshot is built in a separate
:class:`MirrorState` and swapped in whole on commit, so readers never see a half-applied snapshot
and whatever the snapshot lacks is gone afterwards. Listeners get typed events for every change.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from kube_ip_tracker.agent import events as ev
from kube_ip_tracker.client.sink import Delete, RecordChange, Upsert
from kube_ip_tracker.ipclaims import IPClaims
from kube_ip_tracker.model import ClusterStatusRecord, Kind, NamespaceRecord, NodeRecord, PodRecord

log = logging.getLogger(__name__)

PodKey = tuple[str, str, str]
ObjectKey = tuple[str, str]
PodLookup = tuple[PodRecord, NamespaceRecord | None, NodeRecord | None]


@dataclass
class MirrorState:
    """One consistent state of the mirror; a snapshot builds a new one."""

    pods: dict[PodKey, PodRecord] = field(default_factory=dict)
    namespaces: dict[ObjectKey, NamespaceRecord] = field(default_factory=dict)
    nodes: dict[ObjectKey, NodeRecord] = field(default_factory=dict)
    clusters: dict[str, ClusterStatusRecord] = field(default_factory=dict)
    synced: set[str] = field(default_factory=set)
    claims: IPClaims = field(default_factory=IPClaims)

    def apply(self, change: RecordChange, out: list[ev.MirrorEvent] | None) -> None:
        """Apply one change; append the events it causes to ``out`` (``None``: no events)."""
        if isinstance(change, Upsert):
            self._upsert(change.record, out)
        elif isinstance(change, Delete):
            self._delete(change, out)
        elif change.deleted:
            self.purge_cluster(change.status.cluster, out)
        else:
            status = change.status
            previous = self.clusters.get(status.cluster)
            self.clusters[status.cluster] = status
            if status.synced:
                self.synced.add(status.cluster)
            if out is not None and previous != status:
                out.append(ev.ClusterStatusUpdated(status, previous))

    def _upsert(self, record: PodRecord | NamespaceRecord | NodeRecord, out: list[ev.MirrorEvent] | None) -> None:
        if isinstance(record, PodRecord):
            previous = self.pods.get(record.key)
            if previous is not None:
                self.claims.remove(previous)
            self.pods[record.key] = record
            self.claims.add(record)
            if out is not None and previous != record:
                out.append(ev.PodUpserted(record, previous))
        elif isinstance(record, NamespaceRecord):
            prev_ns = self.namespaces.get(record.key)
            self.namespaces[record.key] = record
            if out is not None and prev_ns != record:
                out.append(ev.NamespaceUpserted(record, prev_ns))
        else:
            prev_node = self.nodes.get(record.key)
            self.nodes[record.key] = record
            if out is not None and prev_node != record:
                out.append(ev.NodeUpserted(record, prev_node))

    def _delete(self, change: Delete, out: list[ev.MirrorEvent] | None) -> None:
        if change.kind is Kind.POD:
            pod = self.pods.pop((change.cluster, change.namespace, change.name), None)
            if pod is not None:
                self.claims.remove(pod)
                if out is not None:
                    out.append(ev.PodDeleted(pod))
        elif change.kind is Kind.NAMESPACE:
            ns = self.namespaces.pop((change.cluster, change.name), None)
            if ns is not None and out is not None:
                out.append(ev.NamespaceDeleted(ns))
        else:
            node = self.nodes.pop((change.cluster, change.name), None)
            if node is not None and out is not None:
                out.append(ev.NodeDeleted(node))

    def purge_cluster(self, cluster: str, out: list[ev.MirrorEvent] | None) -> None:
        """Drop a cluster's status and every pod, namespace and node of it."""
        for key in [k for k in self.pods if k[0] == cluster]:
            self._delete(Delete(Kind.POD, *key), out)
        for key in [k for k in self.namespaces if k[0] == cluster]:
            self._delete(Delete(Kind.NAMESPACE, cluster, "", key[1]), out)
        for key in [k for k in self.nodes if k[0] == cluster]:
            self._delete(Delete(Kind.NODE, cluster, "", key[1]), out)
        self.synced.discard(cluster)
        if self.clusters.pop(cluster, None) is not None and out is not None:
            out.append(ev.ClusterRemoved(cluster))


def _diff(old: dict, new: dict, upserted: Callable, deleted: Callable, out: list[ev.MirrorEvent]) -> None:
    for key, record in old.items():
        if key not in new:
            out.append(deleted(record))
    for key, record in new.items():
        previous = old.get(key)
        if previous != record:
            out.append(upserted(record, previous))


def diff_states(old: MirrorState, new: MirrorState) -> list[ev.MirrorEvent]:
    """The events that turn ``old`` into ``new`` (deletions first, per kind)."""
    out: list[ev.MirrorEvent] = []
    _diff(old.namespaces, new.namespaces, ev.NamespaceUpserted, ev.NamespaceDeleted, out)
    _diff(old.nodes, new.nodes, ev.NodeUpserted, ev.NodeDeleted, out)
    _diff(old.pods, new.pods, ev.PodUpserted, ev.PodDeleted, out)
    for cluster in old.clusters.keys() - new.clusters.keys():
        out.append(ev.ClusterRemoved(cluster))
    for cluster, status in new.clusters.items():
        if old.clusters.get(cluster) != status:
            out.append(ev.ClusterStatusUpdated(status, old.clusters.get(cluster)))
    return out


class _MirrorSnapshot:
    """A snapshot being received into a fresh :class:`MirrorState`."""

    def __init__(self, mirror: Mirror, epoch: str, reset: bool) -> None:
        self._mirror = mirror
        self._epoch = epoch
        self._reset = reset
        self._state = MirrorState()
        self._committed = False

    def add(self, changes: Sequence[RecordChange]) -> None:
        for change in changes:
            self._state.apply(change, None)

    def cluster_synced(self, cluster: str) -> None:
        self._state.synced.add(cluster)

    def commit(self, revision: int) -> None:
        if self._committed:
            raise RuntimeError("snapshot already committed")
        self._committed = True
        self._mirror._swap(self._state, self._epoch, revision, self._reset)


class Mirror:
    """Read-optimised copy of a tracker's state with change notifications. Implements ``ApplySink``."""

    def __init__(self) -> None:
        self._state = MirrorState()
        self._listeners: list[ev.Listener] = []
        self.epoch = ""
        self.revision = 0
        self.ready = False
        self.snapshots = 0

    # -- ApplySink ---------------------------------------------------------------------------

    def begin_snapshot(self, epoch: str, reset: bool) -> _MirrorSnapshot:
        """Stage a full snapshot; the current state stays visible until it commits."""
        return _MirrorSnapshot(self, epoch, reset)

    def apply_delta(self, changes: Sequence[RecordChange], revision: int) -> None:
        """Apply live changes in order and notify listeners with their events."""
        out: list[ev.MirrorEvent] = []
        for change in changes:
            self._state.apply(change, out)
        self.revision = revision
        self._notify(out)

    def _swap(self, state: MirrorState, epoch: str, revision: int, reset: bool) -> None:
        old = self._state
        out = diff_states(old, state)
        self._state = state
        self.epoch, self.revision = epoch, revision
        self.snapshots += 1
        out.append(ev.SnapshotApplied(epoch, revision, reset))
        if not self.ready:
            self.ready = True
            out.append(ev.Ready(epoch, revision))
        log.info(
            "Mirror replaced by snapshot of epoch %s at revision %d: %d pods, %d namespaces, %d nodes in %d clusters "
            "(%d changes)",
            epoch,
            revision,
            len(state.pods),
            len(state.namespaces),
            len(state.nodes),
            len(state.clusters),
            len(out) - 1,
        )
        self._notify(out)

    # -- listeners ---------------------------------------------------------------------------

    def subscribe(self, listener: ev.Listener) -> Callable[[], None]:
        """Call ``listener`` with each batch of events; returns a function that unsubscribes it."""
        self._listeners.append(listener)

        def unsubscribe() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return unsubscribe

    def _notify(self, batch: list[ev.MirrorEvent]) -> None:
        if not batch:
            return
        for listener in list(self._listeners):
            try:
                listener(batch)
            except Exception:
                log.exception("Mirror listener %r failed on a batch of %d events", listener, len(batch))

    # -- lookups -----------------------------------------------------------------------------

    def pod_by_ip(self, ip: str) -> PodLookup | None:
        """The pod owning ``ip`` with its namespace and node (``None`` where not known), or ``None``."""
        state = self._state
        pod = state.claims.owner_record(ip)
        if pod is None:
            return None
        return pod, state.namespaces.get((pod.cluster, pod.namespace)), state.nodes.get((pod.cluster, pod.node))

    def pod(self, cluster: str, namespace: str, name: str) -> PodRecord | None:
        return self._state.pods.get((cluster, namespace, name))

    def namespace(self, cluster: str, name: str) -> NamespaceRecord | None:
        return self._state.namespaces.get((cluster, name))

    def node(self, cluster: str, name: str) -> NodeRecord | None:
        return self._state.nodes.get((cluster, name))

    def pods(self, cluster: str | None = None) -> Iterator[PodRecord]:
        """All pods (of one cluster if given), from one consistent state."""
        return (p for p in list(self._state.pods.values()) if cluster is None or p.cluster == cluster)

    def namespaces(self, cluster: str | None = None) -> Iterator[NamespaceRecord]:
        return (n for n in list(self._state.namespaces.values()) if cluster is None or n.cluster == cluster)

    def nodes(self, cluster: str | None = None) -> Iterator[NodeRecord]:
        return (n for n in list(self._state.nodes.values()) if cluster is None or n.cluster == cluster)

    def cluster_statuses(self) -> dict[str, ClusterStatusRecord]:
        """Status of every cluster the tracker sent, by cluster id."""
        return dict(self._state.clusters)

    def cluster_synced(self, cluster: str) -> bool:
        """A complete list of ``cluster`` is in the mirror (CLUSTER_SYNCED or a synced status)."""
        return cluster in self._state.synced

    def counts(self) -> dict[str, int]:
        """Number of pods, namespaces, nodes and clusters held."""
        s = self._state
        return {
            "pods": len(s.pods),
            "namespaces": len(s.namespaces),
            "nodes": len(s.nodes),
            "clusters": len(s.clusters),
        }
