"""The cluster supervisor: one :class:`~kube_ip_tracker.sources.kube.ClusterSource` task per cluster.

API (used by the CLI, the ``--kubeconfig-dir`` watcher and the GKE reconciler):

- ``await ensure(spec, restart=False)``: start the cluster's informers; if a different spec (or
  ``restart``) is given for a running cluster, its informers are restarted with the new spec. The
  index keeps the cluster's data meanwhile; the new informers' first list reconciles it.
- ``await remove(cluster_id, grace_seconds=0)``: stop the informers now; the cluster's data stays
  (reported stale) for the grace period, then is purged with ``IndexWriter.remove_cluster``. An
  ``ensure`` of the same id before then cancels the purge.
- ``specs()``: the supervised specs by cluster id.
- ``await wait_synced(ids, within)``: wait until those clusters completed a first full list.
- ``await stop()``: stop everything (no purge).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from kube_ip_tracker.kube.reflector import InformerOptions
from kube_ip_tracker.model import ClusterSpec, ClusterStatusRecord, IndexWriter
from kube_ip_tracker.sources import metrics
from kube_ip_tracker.sources.kube import ClusterSource

log = logging.getLogger(__name__)

SourceFactory = Callable[[ClusterSpec, IndexWriter, InformerOptions, bool], ClusterSource]


def _default_factory(spec: ClusterSpec, writer: IndexWriter, options: InformerOptions, synced: bool) -> ClusterSource:
    return ClusterSource(spec, writer, options, previously_synced=synced)


@dataclass
class _Running:
    spec: ClusterSpec
    source: ClusterSource
    task: asyncio.Task[None]


class ClusterSupervisor:
    """Starts, restarts and stops per-cluster informers; purges removed clusters after a grace period."""

    def __init__(
        self,
        writer: IndexWriter,
        *,
        options: InformerOptions | None = None,
        source_factory: SourceFactory = _default_factory,
    ) -> None:
        self.writer = writer
        self.options = options or InformerOptions()
        self._factory = source_factory
        self._running: dict[str, _Running] = {}
        self._purges: dict[str, asyncio.Task[None]] = {}
        self._lock = asyncio.Lock()

    def specs(self) -> dict[str, ClusterSpec]:
        """The specs of all supervised clusters, by cluster id."""
        return {cid: running.spec for cid, running in self._running.items()}

    def source(self, cluster_id: str) -> ClusterSource | None:
        """The running source of a cluster (for status and tests)."""
        running = self._running.get(cluster_id)
        return running.source if running else None

    def synced(self) -> set[str]:
        """Ids of the supervised clusters that completed a first full list."""
        return {cid for cid, running in self._running.items() if running.source.synced}

    async def ensure(self, spec: ClusterSpec, *, restart: bool = False) -> None:
        """Start the cluster, or restart it when the spec differs (or ``restart`` is set). Idempotent."""
        async with self._lock:
            purge = self._purges.pop(spec.cluster_id, None)
            if purge is not None:
                purge.cancel()
                log.info("Cluster %s configured again; its data will not be purged", spec.cluster_id)
            current = self._running.get(spec.cluster_id)
            if current is not None and current.spec == spec and not restart and not current.task.done():
                return
            synced = False
            if current is not None:
                log.info("Restarting informers of cluster %s", spec.cluster_id)
                synced = current.source.synced
                await self._cancel(current)
            else:
                log.info("Starting informers of cluster %s", spec.cluster_id)
            source = self._factory(spec, self.writer, self.options, synced)
            task = asyncio.create_task(source.run(), name=f"cluster-{spec.cluster_id}")
            task.add_done_callback(self._task_done)
            self._running[spec.cluster_id] = _Running(spec, source, task)
            metrics.CLUSTERS.set(len(self._running))

    async def remove(self, cluster_id: str, grace_seconds: float = 0.0) -> None:
        """Stop the cluster's informers; purge its data after ``grace_seconds`` (at once when 0)."""
        async with self._lock:
            current = self._running.pop(cluster_id, None)
            metrics.CLUSTERS.set(len(self._running))
            if current is not None:
                log.info("Stopping informers of cluster %s", cluster_id)
                await self._cancel(current)
            old = self._purges.pop(cluster_id, None)
            if old is not None:
                old.cancel()
            if grace_seconds <= 0:
                self._purge(cluster_id)
                return
            if current is not None:
                status = current.source.state.status()
                self.writer.set_cluster_status(
                    ClusterStatusRecord(
                        cluster=cluster_id,
                        connected=False,
                        synced=status.synced,
                        stale=True,
                        last_error=f"removed from the configuration; data purged in {grace_seconds:.0f}s",
                        kube_system_uid=status.kube_system_uid,
                    )
                )
            log.info("Cluster %s removed; purging its data in %.0fs", cluster_id, grace_seconds)
            self._purges[cluster_id] = asyncio.create_task(self._purge_later(cluster_id, grace_seconds))

    async def wait_synced(self, cluster_ids: Iterable[str], within: float) -> set[str]:
        """Wait up to ``within`` seconds for these clusters' first full list; returns the ids still not synced."""
        ids = set(cluster_ids)

        async def one(cid: str) -> None:
            while True:
                running = self._running.get(cid)
                if running is not None and running.source.synced:
                    return
                if running is not None:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(running.source.state.synced_event.wait(), 1.0)
                else:
                    await asyncio.sleep(0.2)

        waits = [asyncio.create_task(one(cid)) for cid in ids]
        if waits:
            _, pending = await asyncio.wait(waits, timeout=within)
            for task in pending:
                task.cancel()
            await asyncio.gather(*waits, return_exceptions=True)
        return ids - self.synced()

    async def stop(self) -> None:
        """Cancel every informer and pending purge (the index keeps its data)."""
        async with self._lock:
            for task in self._purges.values():
                task.cancel()
            await asyncio.gather(*self._purges.values(), return_exceptions=True)
            self._purges.clear()
            running = list(self._running.values())
            self._running.clear()
            for item in running:
                item.task.cancel()
            await asyncio.gather(*(item.task for item in running), return_exceptions=True)
            metrics.CLUSTERS.set(0)

    async def _cancel(self, running: _Running) -> None:
        running.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running.task

    async def _purge_later(self, cluster_id: str, delay: float) -> None:
        await asyncio.sleep(delay)
        self._purges.pop(cluster_id, None)
        self._purge(cluster_id)

    def _purge(self, cluster_id: str) -> None:
        log.info("Purging the data of cluster %s", cluster_id)
        self.writer.remove_cluster(cluster_id)
        metrics.forget_cluster(cluster_id)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error("Source task %s died: %r", task.get_name(), exc, exc_info=exc)
