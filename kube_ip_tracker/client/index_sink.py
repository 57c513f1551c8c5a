"""An :class:`~.sink.ApplySink` that feeds an :class:`~kube_ip_tracker.model.IndexWriter`.

This is how a tracker watching an upstream (hub) tracker can keep its own index in step: the
client and stream logic are the agent's, only the sink differs. A snapshot is staged per
(cluster, kind) and committed with ``replace`` per cluster and kind, so objects the upstream no
longer has are dropped; clusters this sink fed before and the snapshot lacks are removed.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence

from kube_ip_tracker.client.sink import ClusterStatusChange, Delete, RecordChange, Upsert
from kube_ip_tracker.model import ClusterStatusRecord, IndexWriter, Kind, Record
from kube_ip_tracker.wire import record_kind

log = logging.getLogger(__name__)


class _IndexSnapshot:
    def __init__(self, sink: IndexWriterSink) -> None:
        self._sink = sink
        self._records: dict[str, dict[Kind, list[Record]]] = defaultdict(lambda: {k: [] for k in Kind})
        self._statuses: dict[str, ClusterStatusRecord] = {}

    def add(self, changes: Sequence[RecordChange]) -> None:
        for change in changes:
            if isinstance(change, Upsert):
                self._records[change.record.cluster][record_kind(change.record)].append(change.record)
            elif isinstance(change, ClusterStatusChange) and not change.deleted:
                self._statuses[change.status.cluster] = change.status
            else:
                log.warning("Ignoring a deletion inside a snapshot: %r", change)

    def cluster_synced(self, cluster: str) -> None:
        """Synced state travels in the cluster's status; nothing to stage."""

    def commit(self, revision: int) -> None:
        self._sink._commit(self._records, self._statuses)


class IndexWriterSink:
    """Applies a watched tracker's state to an index through its writer interface."""

    def __init__(self, writer: IndexWriter) -> None:
        self._writer = writer
        self.clusters: set[str] = set()

    def begin_snapshot(self, epoch: str, reset: bool) -> _IndexSnapshot:
        """Stage a snapshot; the index is untouched until it commits."""
        return _IndexSnapshot(self)

    def apply_delta(self, changes: Sequence[RecordChange], revision: int) -> None:
        """Apply changes one by one to the index."""
        w = self._writer
        for change in changes:
            if isinstance(change, Upsert):
                self.clusters.add(change.record.cluster)
                w.upsert(change.record)
            elif isinstance(change, Delete):
                w.delete(change.kind, change.cluster, change.namespace, change.name)
            elif change.deleted:
                self.clusters.discard(change.status.cluster)
                w.remove_cluster(change.status.cluster)
            else:
                self.clusters.add(change.status.cluster)
                w.set_cluster_status(change.status)

    def _commit(self, records: dict[str, dict[Kind, list[Record]]], statuses: dict[str, ClusterStatusRecord]) -> None:
        w = self._writer
        present = set(records) | set(statuses)
        for cluster in sorted(self.clusters - present):
            log.info("Cluster %s is gone from the upstream snapshot; removing it", cluster)
            w.remove_cluster(cluster)
        for cluster in sorted(present):
            if cluster in statuses:
                w.set_cluster_status(statuses[cluster])
            by_kind = records.get(cluster) or {k: [] for k in Kind}
            # Namespaces and nodes first, so pods never reference a name the index lacks.
            for kind in (Kind.NAMESPACE, Kind.NODE, Kind.POD):
                w.replace(cluster, kind, by_kind[kind])
        self.clusters = present
