"""The agent's one store of the tracker's state: the tracker client's apply sink is the evaluator's world.

:class:`AgentStore` implements :class:`~kube_ip_tracker.client.sink.ApplySink`. Deltas are applied
straight to the :class:`~kube_ip_tracker.agent.policy.PolicyEngine`'s world (its compact
:class:`~kube_ip_tracker.agent.policy.objects.Objects`); a snapshot is staged in a new ``Objects``
and swapped in whole on commit, so the evaluator never sees a half-applied snapshot and whatever
the snapshot lacks is gone afterwards. Policies are not touched: they come from the local
NetworkPolicy informer, so a cluster removed by the tracker loses its pods and namespaces but never
the agent's own policies.

Every namespace record enters through one place, where the ``--cluster-labels`` rule
(:mod:`kube_ip_tracker.cluster_labels`) stamps it with its cluster's id, as the trackers do for the
clusters they watch: a no-op behind a tracker that stamped already, the protection behind one
running ``off`` (docs/agent.md, "Cluster labels").

What changed is told to

* ``on_change()``: after a batch that can change a verdict (a pod moving to another node does not;
  a node's labels or InternalIPs do, for ``nodes`` peers of cluster-scoped policies),
  which the agent turns into a (rate-limited) revalidation of accepted connections;
* ``on_local_pods(addresses)``: the addresses of the local pods (pods of ``local_cluster``, on
  ``node`` when given) whenever they change, which the dataplane enforces without ``--pod-cidr``;
* listeners (:meth:`AgentStore.subscribe`): typed :mod:`~kube_ip_tracker.agent.events` per applied
  message or snapshot, built only while someone listens (tests, benchmarks, tooling).

The read methods (``pod_by_ip``, ``pods`` ...) give :class:`~kube_ip_tracker.model.PodRecord`\\ s
built from the compact entries, for tooling and tests; decisions read the world directly.
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Callable, Iterator, Sequence

from prometheus_client import Counter, Gauge

from kube_ip_tracker.agent import events as ev
from kube_ip_tracker.agent.policy import PolicyEngine
from kube_ip_tracker.agent.policy.objects import Objects, PodEntry
from kube_ip_tracker.agent.wire_pods import PodDecoder
from kube_ip_tracker.api.v1 import tracker_pb2 as pb
from kube_ip_tracker.client.sink import Delete, RecordChange, Upsert
from kube_ip_tracker.client.stream import decode_change
from kube_ip_tracker.cluster_labels import LabelRule, Mode, NamespaceStamper
from kube_ip_tracker.model import ClusterStatusRecord, Kind, NamespaceRecord, NodeRecord, PodRecord

log = logging.getLogger(__name__)

PodLookup = tuple[PodRecord, NamespaceRecord | None, NodeRecord | None]

APPLIED = Counter(
    "kube_ip_agent_mirror_events_applied_total",
    "Tracker changes applied to the agent store (kind: pod, namespace; op: upsert, delete).",
    ["kind", "op"],
)
REJECTED = Counter(
    "kube_ip_agent_mirror_pods_rejected_total",
    "Pods from the tracker the agent could not take (an unparsable IP); logged with the pod name.",
)
REJECTED_NODES = Counter(
    "kube_ip_agent_mirror_nodes_rejected_total",
    "Nodes from the tracker the agent could not take (an unparsable InternalIP); logged with the node name.",
)
# The store applies the rule it is given; ``kube-ip-agent run`` gives its --cluster-labels (default enforce).
PASS_THROUGH = LabelRule(Mode.OFF)
LABEL_MISMATCHES = Counter(
    "kube_ip_agent_cluster_label_mismatches_total",
    "Namespaces from the tracker whose --cluster-label-keys held another value than their cluster's id "
    "(counted once per namespace and value found; overwritten in enforce mode, kept in fill).",
    ["cluster"],
)
LOCAL_PODS = Gauge("kube_ip_agent_local_pod_addresses", "Addresses of local pods the dataplane enforces.")
_POD_UPSERTS = APPLIED.labels("pod", "upsert")
_POD_DELETES = APPLIED.labels("pod", "delete")
_NS_UPSERTS = APPLIED.labels("namespace", "upsert")
_NS_DELETES = APPLIED.labels("namespace", "delete")


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL(None).malloc_trim  # type: ignore[no-any-return]
    except (AttributeError, OSError):  # not glibc
        return None


_MALLOC_TRIM = _malloc_trim()


def release_free_memory() -> None:
    """Return the C allocator's free pages to the OS (glibc ``malloc_trim``; a no-op elsewhere).

    A snapshot frees a whole state (and the decoding leaves freed message buffers and dict tables
    behind); without this the process keeps that memory in its heap (~70 B per pod at 100k pods).
    """
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


class _Batch:
    """What applying one message changed: the verdict flag, applied counts and (if listened to) events."""

    __slots__ = ("changed", "events", "local_dirty")

    def __init__(self, listening: bool) -> None:
        self.changed = False
        self.local_dirty = False
        self.events: list[ev.MirrorEvent] | None = [] if listening else None


class _Snapshot:
    """A snapshot being received into a fresh :class:`Objects` (implements ``WireSnapshotBuilder``)."""

    def __init__(self, store: AgentStore, epoch: str, reset: bool) -> None:
        self._store = store
        self._epoch = epoch
        self._reset = reset
        self._objects = store.engine.world.new_objects()
        self._pods = PodDecoder(self._objects.identities)
        self._committed = False

    def add(self, changes: Sequence[RecordChange]) -> None:
        apply = self._store._apply
        objects = self._objects
        for change in changes:
            apply(objects, change, None)

    def add_message(self, msg: pb.WatchResponse) -> int:
        """Stage a SNAPSHOT message: pod upserts decoded straight into entries (:mod:`.wire_pods`),
        everything else (and a pod with an unparsable IP, rejected and logged there) as :meth:`add` does."""
        apply = self._store._apply
        objects = self._objects
        put = objects.put
        entry = self._pods.entry
        pods = 0
        changes = msg.changes
        for change in changes:
            if change.HasField("pod") and not change.deleted:
                try:
                    put(entry(change.pod))
                    pods += 1
                    continue
                except ValueError:
                    pass
            apply(objects, decode_change(change), None)
        _POD_UPSERTS.inc(pods)
        return len(changes)

    def cluster_synced(self, cluster: str) -> None:
        self._objects.synced.add(cluster)

    def commit(self, revision: int) -> None:
        if self._committed:
            raise RuntimeError("snapshot already committed")
        self._committed = True
        self._pods = PodDecoder(self._objects.identities)  # forget the identities it remembered
        self._store._swap(self._objects, self._epoch, revision, self._reset)


class AgentStore:
    """The tracker's pods, namespaces, nodes and cluster statuses, held once, in the evaluator's world."""

    def __init__(
        self,
        engine: PolicyEngine | None = None,
        *,
        local_cluster: str | None = None,
        node: str | None = None,
        on_change: Callable[[], None] | None = None,
        on_local_pods: Callable[[frozenset[str]], None] | None = None,
        cluster_labels: LabelRule = PASS_THROUGH,
    ) -> None:
        self.engine = engine if engine is not None else PolicyEngine()
        # Namespaces enter the store here, stamped with their cluster's id (safe against a tracker running off).
        self.stamper = NamespaceStamper(cluster_labels, "agent", lambda cluster: LABEL_MISMATCHES.labels(cluster).inc())
        self.local_cluster = local_cluster
        self.local_node = node or None
        self.on_change = on_change
        self.on_local_pods = on_local_pods
        self._listeners: list[ev.Listener] = []
        self._local: dict[tuple[str, str], tuple[str, ...]] = {}  # (namespace, name) -> IPs of a local pod
        self.local_addresses: frozenset[str] = frozenset()
        self.epoch = ""
        self.revision = 0
        self.ready = False
        self.snapshots = 0

    @property
    def objects(self) -> Objects:
        """The live objects (replaced as a whole by each snapshot)."""
        return self.engine.world.objects

    # -- ApplySink ---------------------------------------------------------------------------

    def begin_snapshot(self, epoch: str, reset: bool) -> _Snapshot:
        """Stage a full snapshot; the current state stays visible until it commits."""
        return _Snapshot(self, epoch, reset)

    def apply_delta(self, changes: Sequence[RecordChange], revision: int) -> None:
        """Apply live changes in order, then tell the hooks and listeners what they changed."""
        batch = _Batch(bool(self._listeners))
        objects = self.objects
        for change in changes:
            self._apply(objects, change, batch)
        self.revision = revision
        self._publish_local(batch.local_dirty)
        if batch.changed and self.on_change is not None:
            self.on_change()
        if batch.events:
            self._notify(batch.events)

    # -- applying one change -----------------------------------------------------------------

    def _apply(self, objects: Objects, change: RecordChange, batch: _Batch | None) -> None:
        """Apply one change to ``objects``; with ``batch`` (live state) record what it changed."""
        if isinstance(change, Upsert):
            record = change.record
            if isinstance(record, PodRecord):
                self._set_pod(objects, record, batch)
            elif isinstance(record, NamespaceRecord):
                self._set_namespace(objects, record, batch)
            else:
                self._set_node(objects, record, batch)
        elif isinstance(change, Delete):
            self._delete(objects, change, batch)
        elif change.deleted:
            self._remove_cluster(objects, change.status.cluster, batch)
        else:
            status = change.status
            previous = objects.set_cluster_status(status)
            if batch is not None and batch.events is not None and previous != status:
                batch.events.append(ev.ClusterStatusUpdated(status, previous))

    def _set_pod(self, objects: Objects, record: PodRecord, batch: _Batch | None) -> None:
        try:
            entry = objects.entry(record)
        except ValueError as exc:
            REJECTED.inc()
            log.error(
                "Pod %s/%s/%s from the tracker has an invalid IP (%s); it is not known to the agent",
                record.cluster,
                record.namespace,
                record.name,
                exc,
            )
            self._delete(objects, Delete(Kind.POD, record.cluster, record.namespace, record.name), batch)
            return
        _, previous = objects.put(entry)
        _POD_UPSERTS.inc()
        if batch is None:
            return
        if previous is None or not entry.decides_like(previous):
            batch.changed = True
        if self.local_cluster is not None:
            self._track_local(entry, batch)
        if batch.events is not None and (previous is None or not _same_pod(entry, previous)):
            batch.events.append(ev.PodUpserted(record, None if previous is None else previous.record))

    def _set_namespace(self, objects: Objects, record: NamespaceRecord, batch: _Batch | None) -> None:
        record = self.stamper.apply(record)
        previous = objects.set_namespace(record)
        _NS_UPSERTS.inc()
        if batch is None or previous == record:
            return
        if previous is None or previous.labels != record.labels:
            batch.changed = True
        if batch.events is not None:
            batch.events.append(ev.NamespaceUpserted(record, previous))

    def _set_node(self, objects: Objects, record: NodeRecord, batch: _Batch | None) -> None:
        try:
            previous = objects.set_node(record)
        except ValueError as exc:
            REJECTED_NODES.inc()
            log.error(
                "Node %s/%s from the tracker has an invalid InternalIP (%s); it is not known to the agent",
                record.cluster,
                record.name,
                exc,
            )
            self._delete(objects, Delete(Kind.NODE, record.cluster, "", record.name), batch)
            return
        if batch is None or previous == record:
            return
        # Node labels and InternalIPs are what "nodes" peers of cluster-scoped policies match.
        if previous is None or previous.labels != record.labels or previous.internal_ips != record.internal_ips:
            batch.changed = True
        if batch.events is not None:
            batch.events.append(ev.NodeUpserted(record, previous))

    def _delete(self, objects: Objects, change: Delete, batch: _Batch | None) -> None:
        if change.kind is Kind.POD:
            entry = objects.delete_pod(change.cluster, change.namespace, change.name)
            if entry is not None:
                _POD_DELETES.inc()
                if batch is not None:
                    self._pod_gone(entry, batch)
        elif change.kind is Kind.NAMESPACE:
            self.stamper.forget(change.cluster, change.name)
            ns = objects.delete_namespace(change.cluster, change.name)
            if ns is not None:
                _NS_DELETES.inc()
                if batch is not None:
                    batch.changed = True
                    if batch.events is not None:
                        batch.events.append(ev.NamespaceDeleted(ns))
        else:
            node = objects.delete_node(change.cluster, change.name)
            if node is not None and batch is not None:
                batch.changed = True
                if batch.events is not None:
                    batch.events.append(ev.NodeDeleted(node))

    def _pod_gone(self, entry: PodEntry, batch: _Batch) -> None:
        batch.changed = True
        if self.local_cluster is not None:
            self._forget_local(entry, batch)
        if batch.events is not None:
            batch.events.append(ev.PodDeleted(entry.record))

    def _remove_cluster(self, objects: Objects, cluster: str, batch: _Batch | None) -> None:
        """Drop a cluster's status and every pod, namespace and node of it (one deletion event each)."""
        if batch is not None:
            for entry in list(objects.iter_pods(cluster)):
                self._delete(objects, Delete(Kind.POD, *entry.key), batch)
            for key in [k for k in objects.namespaces if k[0] == cluster]:
                self._delete(objects, Delete(Kind.NAMESPACE, cluster, "", key[1]), batch)
            for key in [k for k in objects.nodes if k[0] == cluster]:
                self._delete(objects, Delete(Kind.NODE, cluster, "", key[1]), batch)
        known = cluster in objects.clusters
        objects.remove_cluster(cluster)
        self.stamper.forget_cluster(cluster)
        if batch is not None and batch.events is not None and known:
            batch.events.append(ev.ClusterRemoved(cluster))

    # -- local pods --------------------------------------------------------------------------

    def _is_local(self, entry: PodEntry) -> bool:
        return entry.identity.cluster == self.local_cluster and (
            self.local_node is None or entry.node == self.local_node
        )

    def _track_local(self, entry: PodEntry, batch: _Batch) -> None:
        if self._is_local(entry):
            key = (entry.identity.namespace, entry.name)
            texts = entry.ip_texts
            if self._local.get(key) != texts:
                self._local[key] = texts
                batch.local_dirty = True
        else:
            self._forget_local(entry, batch)

    def _forget_local(self, entry: PodEntry, batch: _Batch) -> None:
        identity = entry.identity
        if identity.cluster == self.local_cluster and self._local.pop((identity.namespace, entry.name), None):
            batch.local_dirty = True

    def _publish_local(self, dirty: bool) -> None:
        if not dirty:
            return
        addresses = frozenset(ip for ips in self._local.values() for ip in ips)
        if addresses == self.local_addresses:
            return
        self.local_addresses = addresses
        LOCAL_PODS.set(len(addresses))
        if self.on_local_pods is not None:
            self.on_local_pods(addresses)

    # -- snapshots ---------------------------------------------------------------------------

    def _swap(self, objects: Objects, epoch: str, revision: int, reset: bool) -> None:
        old = self.engine.world.replace_objects(objects)
        self.stamper.keep_only(objects.namespaces.__contains__)
        self.epoch, self.revision = epoch, revision
        self.snapshots += 1
        events = _diff(old, objects) if self._listeners else []
        if self.local_cluster is not None:
            self._local = {
                (entry.identity.namespace, entry.name): entry.ip_texts
                for entry in objects.iter_pods(self.local_cluster)
                if self._is_local(entry)
            }
            self._publish_local(True)
        events.append(ev.SnapshotApplied(epoch, revision, reset))
        if not self.ready:
            self.ready = True
            events.append(ev.Ready(epoch, revision))
        log.info(
            "Agent store replaced by snapshot of epoch %s at revision %d: %d pods (%d identities), %d namespaces, "
            "%d nodes in %d clusters",
            epoch,
            revision,
            objects.pod_count,
            len(objects.identities),
            len(objects.namespaces),
            len(objects.nodes),
            len(objects.clusters),
        )
        if self.on_change is not None:
            self.on_change()  # a snapshot is rare: every verdict is rechecked rather than the states diffed
        self._notify(events)
        del old, events
        release_free_memory()

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
                log.exception("Agent store listener %r failed on a batch of %d events", listener, len(batch))

    # -- reads (tooling and tests; decisions read the engine's world) -------------------------

    def pod_by_ip(self, ip: str) -> PodLookup | None:
        """The pod owning ``ip`` with its namespace and node (``None`` where not known), or ``None``."""
        objects = self.objects
        entry = objects.pod_by_ip(ip)
        if entry is None:
            return None
        cluster = entry.identity.cluster
        return (
            entry.record,
            objects.namespaces.get((cluster, entry.identity.namespace)),
            objects.nodes.get((cluster, entry.node)),
        )

    def pod(self, cluster: str, namespace: str, name: str) -> PodRecord | None:
        entry = self.objects.pod(cluster, namespace, name)
        return None if entry is None else entry.record

    def namespace(self, cluster: str, name: str) -> NamespaceRecord | None:
        return self.objects.namespaces.get((cluster, name))

    def node(self, cluster: str, name: str) -> NodeRecord | None:
        return self.objects.nodes.get((cluster, name))

    def pods(self, cluster: str | None = None) -> Iterator[PodRecord]:
        """All pods (of one cluster if given), from one consistent state."""
        return (entry.record for entry in list(self.objects.iter_pods(cluster)))

    def namespaces(self, cluster: str | None = None) -> Iterator[NamespaceRecord]:
        return (n for n in list(self.objects.namespaces.values()) if cluster is None or n.cluster == cluster)

    def nodes(self, cluster: str | None = None) -> Iterator[NodeRecord]:
        return (n for n in list(self.objects.nodes.values()) if cluster is None or n.cluster == cluster)

    def cluster_statuses(self) -> dict[str, ClusterStatusRecord]:
        """Status of every cluster the tracker sent, by cluster id."""
        return dict(self.objects.clusters)

    def cluster_synced(self, cluster: str) -> bool:
        """A complete list of ``cluster`` is in the store (CLUSTER_SYNCED or a synced status)."""
        return cluster in self.objects.synced

    def counts(self) -> dict[str, int]:
        """Number of pods, namespaces, nodes and clusters held."""
        o = self.objects
        return {
            "pods": o.pod_count,
            "namespaces": len(o.namespaces),
            "nodes": len(o.nodes),
            "clusters": len(o.clusters),
        }


def _same_pod(a: PodEntry, b: PodEntry) -> bool:
    return a.decides_like(b) and a.node == b.node


def _diff_table(old: dict, new: dict, upserted: Callable, deleted: Callable, out: list[ev.MirrorEvent]) -> None:
    for key, record in old.items():
        if key not in new:
            out.append(deleted(record))
    for key, record in new.items():
        previous = old.get(key)
        if previous != record:
            out.append(upserted(record, previous))


def _diff(old: Objects, new: Objects) -> list[ev.MirrorEvent]:
    """The events that turn ``old`` into ``new`` (deletions first, per kind)."""
    out: list[ev.MirrorEvent] = []
    _diff_table(old.namespaces, new.namespaces, ev.NamespaceUpserted, ev.NamespaceDeleted, out)
    _diff_table(old.nodes, new.nodes, ev.NodeUpserted, ev.NodeDeleted, out)
    for entry in old.iter_pods():
        if new.pod(*entry.key) is None:
            out.append(ev.PodDeleted(entry.record))
    for entry in new.iter_pods():
        previous = old.pod(*entry.key)
        if previous is None or not _same_pod(entry, previous):
            out.append(ev.PodUpserted(entry.record, None if previous is None else previous.record))
    for cluster in old.clusters.keys() - new.clusters.keys():
        out.append(ev.ClusterRemoved(cluster))
    for cluster, status in new.clusters.items():
        if old.clusters.get(cluster) != status:
            out.append(ev.ClusterStatusUpdated(status, old.clusters.get(cluster)))
    return out
