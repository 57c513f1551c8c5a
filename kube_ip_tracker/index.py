"""The tracker's in-memory index: the only owner of state.

Pods are held by (cluster, namespace, name), namespaces and nodes by (cluster, name) in their own
tables (a pod names its namespace and node, so a namespace label change is one change), and each
IP maps to its owning pod by :mod:`kube_ip_tracker.ipclaims`. Every real change bumps the
revision; writes are applied at once but *committed* in batches: all writes of one event-loop turn
become one :class:`Batch` (a commit is scheduled with ``loop.call_soon``, and any read that needs a
revision commits first), which is appended to a bounded change log for resuming watchers and handed
to subscribers (the server's fan-out) so it is encoded once.

Memory: records are stored once (no protos); cluster, namespace, node names, label keys and values
are interned, identical label maps and port lists are shared between pods.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from kube_ip_tracker import index_metrics as metrics
from kube_ip_tracker.interning import Interner
from kube_ip_tracker.ipclaims import IPClaims
from kube_ip_tracker.model import (
    ClusterStatusRecord,
    Kind,
    NamespaceRecord,
    NodeRecord,
    PodRecord,
    Record,
)

log = logging.getLogger(__name__)

DEFAULT_LOG_SIZE = 100_000

AnyRecord = PodRecord | NamespaceRecord | NodeRecord | ClusterStatusRecord
PodLookup = tuple[PodRecord, NamespaceRecord | None, NodeRecord | None]

_intern = sys.intern
# The running loop or None, without the exception get_running_loop() raises outside a loop.
_running_loop = asyncio._get_running_loop


@dataclass(frozen=True, slots=True)
class Change:
    """One committed change. A deletion holds the last record of the object (only its key matters);
    a deleted :class:`ClusterStatusRecord` removes the whole cluster. A cluster status change also
    holds the status it replaced (``previous``; ``None`` for a new cluster), so what a filter admitted
    at an older revision can be told from the log."""

    revision: int
    record: AnyRecord
    deleted: bool = False
    previous: ClusterStatusRecord | None = None

    @property
    def cluster(self) -> str:
        return self.record.cluster


@dataclass(frozen=True, slots=True)
class Batch:
    """Changes committed together, revisions ``first_revision..revision`` without gaps."""

    first_revision: int
    revision: int
    changes: tuple[Change, ...]

    def after(self, revision: int) -> Batch:
        """The part of this batch after ``revision``."""
        if revision < self.first_revision:
            return self
        rest = self.changes[revision - self.first_revision + 1 :]
        return Batch(revision + 1, self.revision, rest)


@dataclass(frozen=True, slots=True)
class ClusterInfo:
    """What ListClusters reports for one cluster."""

    status: ClusterStatusRecord
    pods: int
    namespaces: int
    nodes: int
    last_change_time: float


@dataclass(frozen=True, slots=True)
class ClusterContent:
    """Every object of one cluster at a snapshot's revision (lists of shared immutable records)."""

    status: ClusterStatusRecord
    namespaces: list[NamespaceRecord]
    nodes: list[NodeRecord]
    pods: list[PodRecord]


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A consistent copy of the index at ``revision`` (records are shared, not copied)."""

    epoch: str
    revision: int
    clusters: list[ClusterContent]

    def object_count(self) -> int:
        return sum(1 + len(c.namespaces) + len(c.nodes) + len(c.pods) for c in self.clusters)


class _Cluster:
    __slots__ = ("last_change_time", "name", "namespaces", "nodes", "pod_count", "pods", "status")

    def __init__(self, name: str) -> None:
        self.name = name
        self.status = ClusterStatusRecord(name)
        self.pods: dict[str, dict[str, PodRecord]] = {}
        self.namespaces: dict[str, NamespaceRecord] = {}
        self.nodes: dict[str, NodeRecord] = {}
        self.pod_count = 0
        self.last_change_time = 0.0

    def iter_pods(self) -> Iterator[PodRecord]:
        for by_name in self.pods.values():
            yield from by_name.values()


class _Interner(Interner):
    """Shares strings, label maps and port tuples between records (:mod:`kube_ip_tracker.interning`)."""

    def pod(self, r: PodRecord) -> PodRecord:
        return PodRecord(
            cluster=_intern(r.cluster),
            namespace=_intern(r.namespace),
            name=r.name,
            labels=self.labels(r.labels),
            ports=self.ports(tuple(r.ports)),
            node=_intern(r.node),
            ips=tuple(r.ips),
            creation_timestamp=r.creation_timestamp,
            uid=r.uid,
        )

    def namespace(self, r: NamespaceRecord) -> NamespaceRecord:
        return NamespaceRecord(_intern(r.cluster), _intern(r.name), self.labels(r.labels))

    def node(self, r: NodeRecord) -> NodeRecord:
        return NodeRecord(_intern(r.cluster), _intern(r.name), self.labels(r.labels), tuple(r.internal_ips))


BatchListener = Callable[[Batch], None]


class Index:
    """Implements :class:`~kube_ip_tracker.model.IndexWriter` plus the reads the server needs.

    All calls must come from one thread (the event loop's). ``clock`` gives Unix seconds.
    """

    def __init__(
        self, *, log_size: int = DEFAULT_LOG_SIZE, epoch: str | None = None, clock: Callable[[], float] = time.time
    ) -> None:
        if log_size < 1:
            raise ValueError(f"change log size must be at least 1, got {log_size}")
        self.epoch = epoch or secrets.token_hex(8)
        self._log_size = log_size
        self._clock = clock
        self._clusters: dict[str, _Cluster] = {}
        self._claims = IPClaims[PodRecord]()
        self._interner = _Interner()
        self._revision = 0
        self._committed = 0
        self._pending: list[Change] = []
        self._touched: set[str] = set()
        self._log: deque[Batch] = deque()
        self._log_changes = 0
        self._listeners: list[BatchListener] = []
        self._flush_scheduled = False
        self._events: dict[tuple[str, str], int] = {(k.value, op): 0 for k in Kind for op in ("upsert", "delete")}

    # -- writes (IndexWriter) ------------------------------------------------------------------

    def upsert(self, record: Record) -> None:
        """Add or replace one object; a pod without IPs is removed instead (it is not indexed)."""
        if isinstance(record, PodRecord):
            self._events[("pod", "upsert")] += 1
            self._upsert_pod(record)
        elif isinstance(record, NamespaceRecord):
            self._events[("namespace", "upsert")] += 1
            self._upsert_simple(record, "namespaces", self._interner.namespace)
        elif isinstance(record, NodeRecord):
            self._events[("node", "upsert")] += 1
            self._upsert_simple(record, "nodes", self._interner.node)
        else:
            raise TypeError(f"index upsert: not a pod, namespace or node record: {type(record).__name__}")

    def delete(self, kind: Kind, cluster: str, namespace: str, name: str) -> None:
        """Remove one object; unknown keys are ignored."""
        self._events[(kind.value, "delete")] += 1
        c = self._clusters.get(cluster)
        if c is None:
            return
        if kind is Kind.POD:
            self._delete_pod(c, namespace, name)
        elif kind is Kind.NAMESPACE:
            self._delete_simple(c, c.namespaces, name)
        elif kind is Kind.NODE:
            self._delete_simple(c, c.nodes, name)
        else:
            raise ValueError(f"index delete: unknown kind {kind!r}")

    def replace(self, cluster: str, kind: Kind, records: Iterable[Record]) -> None:
        """Make the index hold exactly ``records`` of ``kind`` for ``cluster``; only real changes are emitted."""
        want = {Kind.POD: PodRecord, Kind.NAMESPACE: NamespaceRecord, Kind.NODE: NodeRecord}[kind]
        present: set[tuple[str, str]] = set()
        for record in records:
            if not isinstance(record, want) or record.cluster != cluster:
                raise ValueError(
                    f"replace({cluster!r}, {kind.value}): got {type(record).__name__} of cluster {record.cluster!r}"
                )
            if kind is Kind.POD:
                if record.ips:  # type: ignore[union-attr]
                    present.add((record.namespace, record.name))  # type: ignore[union-attr]
            else:
                present.add(("", record.name))
            self.upsert(record)
        c = self._clusters.get(cluster)
        if c is None:
            return
        if kind is Kind.POD:
            gone = [p for p in c.iter_pods() if (p.namespace, p.name) not in present]
            for p in gone:
                self._delete_pod(c, p.namespace, p.name)
        else:
            table = c.namespaces if kind is Kind.NAMESPACE else c.nodes
            for name in [n for n in table if ("", n) not in present]:
                self._delete_simple(c, table, name)
        log.debug("Replaced %s of cluster %s: %d present", kind.value, cluster, len(present))

    def set_cluster_status(self, status: ClusterStatusRecord) -> None:
        """Record a cluster's status (creates the cluster if it is new)."""
        if not status.cluster:
            raise ValueError("cluster status without a cluster name")
        c = self._clusters.get(status.cluster)
        previous = None if c is None else c.status
        if c is None:
            c = self._clusters[_intern(status.cluster)] = _Cluster(_intern(status.cluster))
            log.info("Cluster %s added to the index", status.cluster)
        elif c.status == status:
            return
        c.status = status
        self._emit(c, status, False, previous)

    def remove_cluster(self, cluster: str) -> None:
        """Drop a cluster and every object of it: one change (a deleted cluster status)."""
        c = self._clusters.pop(cluster, None)
        if c is None:
            return
        for p in c.iter_pods():
            self._claims.remove(p)
        log.info(
            "Cluster %s removed from the index (%d pods, %d namespaces, %d nodes)",
            cluster,
            c.pod_count,
            len(c.namespaces),
            len(c.nodes),
        )
        self._emit(c, ClusterStatusRecord(c.name), True, c.status)
        for kind in Kind:
            try:
                metrics.INDEX_OBJECTS.remove(cluster, kind.value)
            except KeyError:
                pass
        self._touched.discard(cluster)

    # -- internal writes ------------------------------------------------------------------------

    def _cluster(self, name: str) -> _Cluster:
        c = self._clusters.get(name)
        if c is None:
            if not name:
                raise ValueError("record without a cluster name")
            c = self._clusters[name] = _Cluster(name)
            log.info("Cluster %s added to the index (first object before any status)", name)
            self._emit(c, c.status, False)
        return c

    def _upsert_pod(self, record: PodRecord) -> None:
        if not record.ips:
            c = self._clusters.get(record.cluster)
            if c is not None:
                self._delete_pod(c, record.namespace, record.name)
            return
        if not record.name or not record.namespace:
            raise ValueError(f"pod record without namespace or name in cluster {record.cluster!r}: {record!r}")
        c = self._cluster(record.cluster)
        by_name = c.pods.get(record.namespace)
        old = by_name.get(record.name) if by_name is not None else None
        if old is not None and old == record:
            return
        rec = self._interner.pod(record)
        if by_name is None:
            by_name = c.pods[rec.namespace] = {}
        if old is not None:
            self._claims.remove(old)
        else:
            c.pod_count += 1
        by_name[rec.name] = rec
        contested = self._claims.add(rec)
        if contested:
            metrics.IP_CONFLICTS.inc(contested)
            log.info(
                "Pod %s/%s/%s (uid %s) claims %d IP(s) another pod claims too; the newest pod owns them",
                rec.cluster,
                rec.namespace,
                rec.name,
                rec.uid,
                contested,
            )
        self._emit(c, rec, False)

    def _delete_pod(self, c: _Cluster, namespace: str, name: str) -> None:
        by_name = c.pods.get(namespace)
        if by_name is None:
            return
        old = by_name.pop(name, None)
        if old is None:
            return
        if not by_name:
            del c.pods[namespace]
        c.pod_count -= 1
        self._claims.remove(old)
        self._emit(c, old, True)

    def _upsert_simple(self, record: NamespaceRecord | NodeRecord, table_name: str, intern: Callable) -> None:
        if not record.name:
            raise ValueError(f"{table_name[:-1]} record without a name in cluster {record.cluster!r}")
        c = self._cluster(record.cluster)
        table = getattr(c, table_name)
        old = table.get(record.name)
        if old is not None and old == record:
            return
        rec = intern(record)
        table[rec.name] = rec
        self._emit(c, rec, False)

    def _delete_simple(self, c: _Cluster, table: dict, name: str) -> None:
        old = table.pop(name, None)
        if old is not None:
            self._emit(c, old, True)

    def _emit(self, c: _Cluster, record: AnyRecord, deleted: bool, previous: ClusterStatusRecord | None = None) -> None:
        self._revision += 1
        self._pending.append(Change(self._revision, record, deleted, previous))
        if c.name not in self._touched:
            c.last_change_time = self._clock()
            self._touched.add(c.name)
        if not self._flush_scheduled:
            loop = _running_loop()
            if loop is None:
                return  # no loop: committed by the next flush() or read
            self._flush_scheduled = True
            loop.call_soon(self.flush)

    # -- commit -------------------------------------------------------------------------------

    def flush(self) -> Batch | None:
        """Commit pending changes as one batch, log it and hand it to listeners; returns it (or ``None``)."""
        self._flush_scheduled = False
        self._push_event_counts()
        if not self._pending:
            return None
        changes = tuple(self._pending)
        self._pending.clear()
        batch = Batch(changes[0].revision, changes[-1].revision, changes)
        self._committed = batch.revision
        self._log.append(batch)
        self._log_changes += len(changes)
        while self._log_changes > self._log_size and len(self._log) > 1:
            self._log_changes -= len(self._log.popleft().changes)
        self._record_metrics(batch)
        for listener in list(self._listeners):
            try:
                listener(batch)
            except Exception:
                log.exception(
                    "Index listener %r failed on batch %d..%d", listener, batch.first_revision, batch.revision
                )
        return batch

    def _push_event_counts(self) -> None:
        for (kind, op), n in self._events.items():
            if n:
                metrics.INDEX_EVENTS_APPLIED.labels(kind, op).inc(n)
                self._events[(kind, op)] = 0

    def _record_metrics(self, batch: Batch) -> None:
        metrics.IP_CONFLICTS_CURRENT.set(self._claims.conflicts)
        metrics.INDEX_BATCHES.inc()
        metrics.INDEX_REVISION.set(batch.revision)
        metrics.INDEX_LOG_CHANGES.set(self._log_changes)
        kinds: dict[str, int] = {}
        for ch in batch.changes:
            k = _KIND_NAMES[type(ch.record)]
            kinds[k] = kinds.get(k, 0) + 1
        for k, n in kinds.items():
            metrics.INDEX_CHANGES.labels(k).inc(n)
        for name in self._touched:
            c = self._clusters.get(name)
            if c is not None:
                metrics.INDEX_OBJECTS.labels(name, "pod").set(c.pod_count)
                metrics.INDEX_OBJECTS.labels(name, "namespace").set(len(c.namespaces))
                metrics.INDEX_OBJECTS.labels(name, "node").set(len(c.nodes))
        self._touched.clear()

    def subscribe(self, listener: BatchListener) -> Callable[[], None]:
        """Call ``listener(batch)`` for each committed batch (synchronously; it must not block or raise)."""
        self._listeners.append(listener)

        def unsubscribe() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return unsubscribe

    # -- reads --------------------------------------------------------------------------------

    @property
    def revision(self) -> int:
        """Current revision (pending writes are committed first)."""
        self.flush()
        return self._committed

    @property
    def committed_revision(self) -> int:
        """Revision of the last committed batch, without committing pending writes."""
        return self._committed

    @property
    def log_first_revision(self) -> int:
        """Oldest revision the change log still holds (``committed_revision + 1`` when it is empty)."""
        return self._log[0].first_revision if self._log else self._committed + 1

    def changes_since(self, revision: int) -> list[Batch] | None:
        """Committed batches after ``revision``, or ``None`` when the log no longer reaches back to it.

        Raises ``ValueError`` if ``revision`` is ahead of the index.
        """
        self.flush()
        if revision > self._committed:
            raise ValueError(f"revision {revision} is ahead of the index revision {self._committed}")
        if revision == self._committed:
            return []
        if revision + 1 < self.log_first_revision:
            return None
        out: list[Batch] = []
        for batch in reversed(self._log):
            if batch.revision <= revision:
                break
            out.append(batch.after(revision))
        out.reverse()
        return out

    def snapshot(self, clusters: Callable[[ClusterStatusRecord], bool] | None = None) -> Snapshot:
        """A consistent copy of the index (optionally only clusters whose status passes ``clusters``)."""
        self.flush()
        content = []
        for c in self._clusters.values():
            if clusters is not None and not clusters(c.status):
                continue
            content.append(
                ClusterContent(c.status, list(c.namespaces.values()), list(c.nodes.values()), list(c.iter_pods()))
            )
        return Snapshot(self.epoch, self._committed, content)

    def get_pod_by_ip(self, ip: str) -> PodLookup | None:
        """The pod owning ``ip`` with its namespace and node records (``None`` where unknown)."""
        pod = self._claims.owner_record(ip)
        if pod is None:
            return None
        c = self._clusters[pod.cluster]
        return pod, c.namespaces.get(pod.namespace), c.nodes.get(pod.node)

    def cluster_status(self, cluster: str) -> ClusterStatusRecord | None:
        """The status of ``cluster``, or ``None`` if the index does not know it."""
        c = self._clusters.get(cluster)
        return None if c is None else c.status

    def cluster_names(self) -> list[str]:
        """Clusters in the index."""
        return list(self._clusters)

    def clusters(self) -> list[ClusterInfo]:
        """Status, object counts and last change time of every cluster."""
        return [
            ClusterInfo(c.status, c.pod_count, len(c.namespaces), len(c.nodes), c.last_change_time)
            for c in self._clusters.values()
        ]

    def pod(self, cluster: str, namespace: str, name: str) -> PodRecord | None:
        c = self._clusters.get(cluster)
        by_name = c.pods.get(namespace) if c is not None else None
        return None if by_name is None else by_name.get(name)

    def namespace(self, cluster: str, name: str) -> NamespaceRecord | None:
        c = self._clusters.get(cluster)
        return None if c is None else c.namespaces.get(name)

    def node(self, cluster: str, name: str) -> NodeRecord | None:
        c = self._clusters.get(cluster)
        return None if c is None else c.nodes.get(name)

    def pods(self, cluster: str | None = None) -> Iterator[PodRecord]:
        """Every pod (of one cluster, or all)."""
        for c in self._clusters.values():
            if cluster is None or c.name == cluster:
                yield from c.iter_pods()

    @property
    def ip_conflicts(self) -> int:
        """IPs currently claimed by more than one pod."""
        return self._claims.conflicts


_KIND_NAMES: dict[type, str] = {
    PodRecord: "pod",
    NamespaceRecord: "namespace",
    NodeRecord: "node",
    ClusterStatusRecord: "cluster",
}
