"""Per-cluster status: the informers' health folded into one ClusterStatusRecord."""

from __future__ import annotations

import asyncio
import logging

from kube_ip_tracker.model import ClusterStatusRecord, IndexWriter, Kind
from kube_ip_tracker.sources import metrics

log = logging.getLogger(__name__)

# The kinds a cluster must have listed once to be synced.
KINDS: tuple[Kind, ...] = (Kind.NAMESPACE, Kind.NODE, Kind.POD)


class ClusterState:
    """Aggregates the informers' health into one ClusterStatusRecord, written only when it changes."""

    def __init__(self, cluster: str, writer: IndexWriter, *, synced: bool = False) -> None:
        self.cluster = cluster
        self.writer = writer
        self.kube_system_uid = ""
        self.api_ok = False
        self.kind_errors: dict[Kind, str] = {}
        self.listed: set[Kind] = set()
        self.last_error = ""
        self.synced = synced
        self.synced_event = asyncio.Event()
        if synced:
            self.synced_event.set()
        self._published: ClusterStatusRecord | None = None

    @property
    def connected(self) -> bool:
        return self.api_ok and not self.kind_errors

    def status(self) -> ClusterStatusRecord:
        """The status as it would be published now."""
        connected = self.connected
        return ClusterStatusRecord(
            cluster=self.cluster,
            connected=connected,
            synced=self.synced,
            stale=self.synced and not connected,
            last_error="" if connected else self.last_error,
            kube_system_uid=self.kube_system_uid,
        )

    def publish(self) -> None:
        status = self.status()
        if status != self._published:
            self._published = status
            self.writer.set_cluster_status(status)
            metrics.CONNECTED.labels(self.cluster).set(1 if status.connected else 0)
            metrics.SYNCED.labels(self.cluster).set(1 if status.synced else 0)

    def connect_failed(self, message: str) -> None:
        self.api_ok = False
        self.last_error = message
        self.publish()

    def connect_ok(self, uid: str) -> None:
        self.api_ok = True
        self.kube_system_uid = uid
        self.publish()

    def probe_failed(self, message: str) -> None:
        self.api_ok = False
        self.last_error = message
        self.publish()

    def probe_ok(self) -> None:
        self.api_ok = True
        self.publish()

    def kind_failed(self, kind: Kind, message: str) -> None:
        self.kind_errors[kind] = message
        self.last_error = message
        self.publish()

    def kind_ok(self, kind: Kind) -> None:
        if self.kind_errors.pop(kind, None) is not None or self._published is None:
            self.publish()

    def kind_listed(self, kind: Kind) -> None:
        self.listed.add(kind)
        self.kind_errors.pop(kind, None)
        if not self.synced and self.listed.issuperset(KINDS):
            self.synced = True
            self.synced_event.set()
            log.info("Cluster %s synced (UID: %s)", self.cluster, self.kube_system_uid)
        self.publish()
