"""Merging clusters from upstream trackers into the index: who owns which cluster, and path stamping.

Every cluster in the index has exactly one owner that may write it:

- ``LOCAL``: this tracker watches the cluster's API server (its informers write through
  :class:`LocalWriter`). Local always wins: a local claim takes a cluster over from an upstream, and
  the local informers' first list replaces whatever the upstream had written.
- an :class:`UpstreamWriter`: the first upstream tracker that sent the cluster. Other upstreams that
  send it too are skipped for it (and remember it, so they can be resynced if the owner lets go).

Paths: a status written by the local informers gets ``via = (tracker_id,)``; a status learned from
an upstream gets the upstream's path plus this tracker's id. The server never sends a cluster to a
watcher whose ``tracker_id`` is on its path, and an upstream writer drops any status whose path holds
this tracker's id already, so data never flows back to where it came from.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Callable, Iterable

from kube_ip_tracker.model import ClusterStatusRecord, IndexWriter, Kind, Record
from kube_ip_tracker.sources import upstream_metrics as metrics

log = logging.getLogger(__name__)

LOCAL = "local"


class ClusterOwners:
    """Which writer owns each cluster; hands a released cluster to the upstreams that skipped it."""

    def __init__(self) -> None:
        self._owner: dict[str, object] = {}
        self._upstreams: list[UpstreamWriter] = []
        self._local_uids: dict[str, str] = {}  # kube-system UID -> id of a cluster watched directly
        self.local_listeners: list[Callable[[], None]] = []  # called when the set of local clusters may change

    def owner(self, cluster: str) -> object | None:
        """``LOCAL``, an :class:`UpstreamWriter`, or ``None`` when nobody writes the cluster."""
        return self._owner.get(cluster)

    def local_clusters(self) -> set[str]:
        """The clusters the local informers own."""
        return {c for c, w in self._owner.items() if w == LOCAL}

    def local_changed(self) -> None:
        """Tell the listeners (the upstream sources, to update their exclude_clusters) to look again."""
        for listener in list(self.local_listeners):
            listener()

    def register(self, writer: UpstreamWriter) -> None:
        self._upstreams.append(writer)

    def claim_local(self, cluster: str) -> None:
        """The local informers write ``cluster`` from now on (taken over from an upstream if needed)."""
        current = self._owner.get(cluster)
        if current == LOCAL:
            return
        self._owner[cluster] = LOCAL
        if isinstance(current, UpstreamWriter):
            log.info("Cluster %s is watched directly now; no longer taken from upstream %s", cluster, current.name)
            current.lost(cluster)
        self.local_changed()

    def note_local_uid(self, cluster: str, uid: str) -> None:
        """A cluster watched directly has this kube-system UID; upstream copies under other ids are dropped."""
        if not uid or self._local_uids.get(uid) == cluster:
            return
        self._local_uids[uid] = cluster
        for writer in self._upstreams:
            for name, status in list(writer.statuses.items()):
                if status.kube_system_uid == uid and name != cluster:
                    writer.alias(name, cluster)

    def local_alias(self, status: ClusterStatusRecord) -> str | None:
        """The id under which this tracker watches the cluster of ``status`` directly, if another id."""
        local = self._local_uids.get(status.kube_system_uid) if status.kube_system_uid else None
        return local if local is not None and local != status.cluster and self._owner.get(local) == LOCAL else None

    def forget_local(self, cluster: str) -> None:
        """A cluster watched directly is gone: upstream copies of it under other ids may serve again."""
        for uid in [u for u, c in self._local_uids.items() if c == cluster]:
            del self._local_uids[uid]
        for writer in self._upstreams:
            if cluster in writer.aliases.values():
                for name in [n for n, c in writer.aliases.items() if c == cluster]:
                    del writer.aliases[name]
                writer.request_resync()

    def claim(self, cluster: str, writer: UpstreamWriter) -> bool:
        """Let ``writer`` own ``cluster`` if nobody does; True if it owns it (now or before)."""
        current = self._owner.setdefault(cluster, writer)
        return current is writer

    def release(self, cluster: str, writer: object) -> None:
        """``writer`` no longer has ``cluster``: upstreams that skipped it are asked for a full resync."""
        if self._owner.get(cluster) is not writer:
            return
        del self._owner[cluster]
        for other in self._upstreams:
            if other is not writer and cluster in other.skipped:
                log.info("Cluster %s released; asking upstream %s for it again", cluster, other.name)
                other.skipped.discard(cluster)
                other.request_resync()

    def fail_over(self, writer: UpstreamWriter) -> None:
        """``writer``'s upstream is down: hand each of its clusters to a live upstream that has it too."""
        for cluster in self.owned_by(writer):
            other = next((o for o in self._upstreams if o is not writer and o.live and cluster in o.skipped), None)
            if other is not None:
                self._transfer(cluster, writer, other)

    def adopt(self, writer: UpstreamWriter) -> None:
        """``writer``'s upstream is live: take the clusters it has whose upstream is down."""
        if not writer.live:
            return
        for cluster in sorted(writer.skipped):
            owner = self._owner.get(cluster)
            if isinstance(owner, UpstreamWriter) and not owner.live:
                self._transfer(cluster, owner, writer)

    def _transfer(self, cluster: str, old: UpstreamWriter, new: UpstreamWriter) -> None:
        log.info("Cluster %s: upstream %s is down; taking it from upstream %s", cluster, old.name, new.name)
        self._owner[cluster] = new
        old.lost(cluster)
        new.skipped.discard(cluster)
        new.request_resync()  # its full snapshot reconciles the data the old upstream left

    def owned_by(self, writer: object) -> list[str]:
        return [c for c, w in self._owner.items() if w is writer]


class LocalWriter:
    """The index writer given to the local informers: stamps this tracker's id and claims the cluster."""

    def __init__(self, index: IndexWriter, owners: ClusterOwners, tracker_id: str) -> None:
        self._index = index
        self._owners = owners
        self.tracker_id = tracker_id

    def upsert(self, record: Record) -> None:
        self._owners.claim_local(record.cluster)
        self._index.upsert(record)

    def delete(self, kind: Kind, cluster: str, namespace: str, name: str) -> None:
        self._index.delete(kind, cluster, namespace, name)

    def replace(self, cluster: str, kind: Kind, records: Iterable[Record]) -> None:
        self._owners.claim_local(cluster)
        self._index.replace(cluster, kind, records)

    def set_cluster_status(self, status: ClusterStatusRecord) -> None:
        self._owners.claim_local(status.cluster)
        if not status.via:
            status = dataclasses.replace(status, via=(self.tracker_id,))
        self._index.set_cluster_status(status)
        self._owners.note_local_uid(status.cluster, status.kube_system_uid)

    def remove_cluster(self, cluster: str) -> None:
        self._index.remove_cluster(cluster)
        self._owners.release(cluster, LOCAL)
        self._owners.forget_local(cluster)
        self._owners.local_changed()


class UpstreamWriter:
    """The index writer behind one upstream tracker's :class:`IndexWriterSink`.

    Writes only the clusters it owns, appends ``tracker_id`` to their paths, and while the upstream is
    down (:meth:`set_down`) publishes them disconnected and stale with the last known data.

    A restarted upstream serves before it has listed every cluster again. So a cluster this tracker
    holds complete data of is *held* (last data kept, reported stale, the upstream's writes for it
    ignored) while the upstream reports it not synced, or while a snapshot lacks it; once the upstream
    reports it synced, a full resync replaces the held data with only the real differences. A cluster
    missing from snapshots for ``removal_grace`` seconds is removed; one the upstream deletes in a
    delta is removed at once.
    """

    def __init__(
        self,
        index: IndexWriter,
        owners: ClusterOwners,
        tracker_id: str,
        name: str,
        request_resync: Callable[[], None] = lambda: None,
        *,
        removal_grace: float = 60.0,
    ) -> None:
        self._index = index
        self._owners = self.owners = owners
        self.tracker_id = tracker_id
        self.name = name
        self.request_resync = request_resync
        self.removal_grace = removal_grace
        self.statuses: dict[str, ClusterStatusRecord] = {}  # last status the upstream sent, per owned cluster
        self.skipped: set[str] = set()
        self.aliases: dict[str, str] = {}  # upstream cluster id -> local id of the same cluster (kube-system UID)
        self.complete: set[str] = set()  # owned clusters whose data here is a complete list
        self.held: dict[str, str] = {}  # cluster -> why its last data is kept and the upstream's ignored
        self.committing = False  # a snapshot is being committed (set by the sink)
        self.down = False
        self.down_reason = ""
        self.live = False  # the upstream's stream holds a current state (set by its source)
        self._purges: dict[str, asyncio.TimerHandle] = {}
        self._loops_logged: set[str] = set()
        owners.register(self)

    # -- ownership -------------------------------------------------------------------------------

    def _admit(self, cluster: str) -> bool:
        if cluster in self.aliases:
            return False
        if self._owners.claim(cluster, self):
            return cluster not in self.held
        if cluster not in self.skipped:
            self.skipped.add(cluster)
            owner = self._owners.owner(cluster)
            log.info(
                "Upstream %s: skipping cluster %s (%s)",
                self.name,
                cluster,
                "watched directly" if owner == LOCAL else f"taken from upstream {getattr(owner, 'name', owner)}",
            )
            self._count()
        return False

    def lost(self, cluster: str) -> None:
        """Another owner (the local informers) took ``cluster``; its data is theirs to replace now."""
        self._forget(cluster)
        self.skipped.add(cluster)
        self._count()

    def _forget(self, cluster: str) -> None:
        self.statuses.pop(cluster, None)
        self.complete.discard(cluster)
        self.held.pop(cluster, None)
        timer = self._purges.pop(cluster, None)
        if timer is not None:
            timer.cancel()
        with contextlib.suppress(KeyError):
            metrics.CLUSTER_STALE.remove(cluster)

    def _count(self) -> None:
        metrics.UPSTREAM_CLUSTERS.labels(self.name).set(len(self._owners.owned_by(self)))
        metrics.UPSTREAM_SKIPPED.labels(self.name).set(len(self.skipped))

    # -- IndexWriter -----------------------------------------------------------------------------

    def upsert(self, record: Record) -> None:
        if self._admit(record.cluster):
            self._index.upsert(record)

    def delete(self, kind: Kind, cluster: str, namespace: str, name: str) -> None:
        if self._owners.owner(cluster) is self and cluster not in self.held:
            self._index.delete(kind, cluster, namespace, name)

    def replace(self, cluster: str, kind: Kind, records: Iterable[Record]) -> None:
        if self._admit(cluster):
            self._index.replace(cluster, kind, records)

    def set_cluster_status(self, status: ClusterStatusRecord) -> None:
        cluster = status.cluster
        if self.tracker_id in status.via:
            metrics.UPSTREAM_LOOPS.labels(self.name).inc()
            if cluster not in self._loops_logged:
                self._loops_logged.add(cluster)
                log.warning(
                    "Upstream %s sent cluster %s with path %s, which holds this tracker (%s); dropping it (loop)",
                    self.name,
                    cluster,
                    "/".join(status.via),
                    self.tracker_id,
                )
            if self._owners.owner(cluster) is self:
                self._drop(cluster)
            return
        local = self._owners.local_alias(status)
        if local is not None:
            self.alias(cluster, local)
            return
        if not self._owners.claim(cluster, self):
            self._admit(cluster)  # records the skip
            return
        self.statuses[cluster] = status
        timer = self._purges.pop(cluster, None)
        if timer is not None:
            timer.cancel()
        if cluster in self.held:
            if status.synced and self.committing:
                log.info("Upstream %s has cluster %s synced again; reconciling the held data", self.name, cluster)
                del self.held[cluster]
            elif status.synced:
                self.held[cluster] = "waiting for a full resync from the upstream"
                self.request_resync()
            else:
                self.held[cluster] = "not synced at the upstream (restarted?)"
        elif not status.synced and cluster in self.complete:
            self._hold(cluster, "not synced at the upstream (restarted?)")
        self._publish(cluster)

    def remove_cluster(self, cluster: str) -> None:
        self.aliases.pop(cluster, None)
        if self._owners.owner(cluster) is not self:
            self.skipped.discard(cluster)
            self._count()
            return
        if self.committing and cluster in self.complete and self.removal_grace > 0:
            if cluster not in self._purges:
                self._hold(cluster, f"missing from the upstream's state; removed in {self.removal_grace:.0f}s")
                loop = asyncio.get_running_loop()
                self._purges[cluster] = loop.call_later(self.removal_grace, self._purge, cluster)
                self._publish(cluster)
            return
        self._drop(cluster)

    def alias(self, cluster: str, local: str) -> None:
        """``cluster`` is the cluster watched directly as ``local`` (same kube-system UID): never serve it."""
        if self.aliases.get(cluster) != local:
            log.warning(
                "Upstream %s sends cluster %s, which is the cluster watched directly here as %s (same kube-system "
                "UID); skipping it. Use the same cluster id on every tracker",
                self.name,
                cluster,
                local,
            )
        self.aliases[cluster] = local
        if self._owners.owner(cluster) is self:
            self._drop(cluster)
        self.statuses.pop(cluster, None)

    # -- internal --------------------------------------------------------------------------------

    def _hold(self, cluster: str, why: str) -> None:
        if cluster not in self.held:
            log.info("Upstream %s: keeping the last data of cluster %s, stale: %s", self.name, cluster, why)
        self.held[cluster] = why

    def _purge(self, cluster: str) -> None:
        self._purges.pop(cluster, None)
        if cluster in self.held and self._owners.owner(cluster) is self:
            self._drop(cluster)

    def _drop(self, cluster: str) -> None:
        log.info("Upstream %s removed cluster %s", self.name, cluster)
        self._forget(cluster)
        self._index.remove_cluster(cluster)
        self._owners.release(cluster, self)
        self._count()

    # -- liveness --------------------------------------------------------------------------------

    def set_down(self, down: bool, reason: str = "") -> None:
        """Mark the upstream down (its clusters turn stale) or back up (their last statuses return)."""
        self.down = down
        self.down_reason = reason
        for cluster in self._owners.owned_by(self):
            if cluster in self.statuses:
                self._publish(cluster)

    def _publish(self, cluster: str) -> None:
        status = self.statuses[cluster]
        out = dataclasses.replace(status, via=(*status.via, self.tracker_id))
        why = self.held.get(cluster) or ((self.down_reason or "disconnected") if self.down else "")
        if why:
            synced = status.synced or cluster in self.complete
            out = dataclasses.replace(
                out,
                connected=False,
                synced=synced,
                stale=synced or status.stale,
                last_error=f"upstream tracker {self.name}: {why}",
            )
        elif status.synced:
            self.complete.add(cluster)
        self._index.set_cluster_status(out)
        metrics.CLUSTER_STALE.labels(cluster).set(1 if out.stale else 0)
        self._count()
