"""The Watch RPC: admission, snapshot or resume, then the watcher's queue until the stream ends.

Resume rules (see the proto): same epoch and a revision the change log still reaches -> END_OF_SNAPSHOT
at that revision, then only the missed changes. Unknown epoch, or a revision older than the log ->
a snapshot whose first message has ``reset``. A revision *ahead* of the tracker's in the current
epoch cannot come from this tracker and is refused with INVALID_ARGUMENT naming both revisions.
A watcher with cluster filters sees the epoch plus a fingerprint of them (``WatchFilter.stream_epoch``):
resuming with other filters is an unknown epoch, so it gets a reset snapshot of what the new filters admit.

The handler is registered with ``response_serializer=None``: it writes ready ``bytes`` so a DELTA
encoded once is shared by all watchers with the same filter, and a snapshot encoded once is shared
by watchers that connect at the same revision.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import grpc
import grpc.aio

from kube_ip_tracker import wire
from kube_ip_tracker.api.v1 import tracker_pb2 as pb
from kube_ip_tracker.index import Batch, Index
from kube_ip_tracker.model import ClusterStatusRecord
from kube_ip_tracker.server import metrics
from kube_ip_tracker.server.encode import (
    EncodedSnapshot,
    WatchFilter,
    chunk_deltas,
    filter_resume_batches,
    parse_exclude,
)
from kube_ip_tracker.server.fanout import Fanout, Watcher

log = logging.getLogger(__name__)

WR = pb.WatchResponse


class SnapshotCache:
    """Encoded snapshots kept for ``ttl`` seconds, one per filter.

    A watcher may get a cached snapshot at an older revision followed by the changes since then from
    the change log (as Typha does), so watchers that connect within ``ttl`` share one encoding even
    while the index changes. Filters with a tracker id only share a snapshot of the current revision
    (their visibility depends on the cluster paths at snapshot time).
    """

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._entries: dict[WatchFilter, tuple[EncodedSnapshot, float]] = {}

    def get(self, index: Index, flt: WatchFilter) -> tuple[EncodedSnapshot, bool]:
        """A snapshot for ``flt`` that the change log can bring up to date; True if it was shared."""
        now = self.expire()
        revision = index.revision  # commits pending writes
        entry = self._entries.get(flt)
        if entry is not None and entry[0].error is None and entry[0].snapshot.epoch == index.epoch:
            snap = entry[0]
            if snap.revision == revision or (
                not flt.tracker_id and now - entry[1] <= self.ttl and index.log_first_revision <= snap.revision + 1
            ):
                return snap, True
        snap = EncodedSnapshot(index.snapshot(None if flt.everything else flt.admits), flt)
        self._entries[flt] = (snap, now)
        return snap, False

    def expire(self) -> float:
        """Drop snapshots older than the TTL (streams using them keep their own reference); returns now."""
        now = time.monotonic()
        for key, (snap, created) in list(self._entries.items()):
            if now - created > self.ttl and snap.done:
                del self._entries[key]
        return now

    def clear(self) -> None:
        for snap, _ in self._entries.values():
            snap.cancel()
        self._entries.clear()


class WatchService:
    """State shared by all Watch streams of one server."""

    def __init__(
        self,
        index: Index,
        fanout: Fanout,
        *,
        max_watchers: int,
        buffer_messages: int,
        buffer_bytes: int,
        snapshot_cache_ttl: float,
    ) -> None:
        self.index = index
        self.fanout = fanout
        self.max_watchers = max_watchers
        self.buffer_messages = buffer_messages
        self.buffer_bytes = buffer_bytes
        self.snapshots = SnapshotCache(snapshot_cache_ttl)
        self.active = 0
        self.closing = False

    async def watch(self, request: pb.WatchRequest, context: grpc.aio.ServicerContext) -> None:
        """Serve one Watch stream."""
        peer = context.peer()
        name = request.watcher_name or peer
        if self.closing:
            metrics.WATCHERS_REJECTED.labels("shutting_down").inc()
            await context.abort(grpc.StatusCode.UNAVAILABLE, "tracker is shutting down; connect to another one")
        if self.active >= self.max_watchers:
            metrics.WATCHERS_REJECTED.labels("max_watchers").inc()
            log.warning("Refusing watcher %r (%s): %d watchers open (--max-watchers)", name, peer, self.active)
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"tracker has {self.active} watchers open, the limit (--max-watchers) is {self.max_watchers}; "
                "retry later or use another tracker",
            )
        try:
            exclude = parse_exclude(request.exclude_clusters)
        except ValueError as e:
            metrics.WATCHERS_REJECTED.labels("invalid_filter").inc()
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        flt = WatchFilter(frozenset(c for c in request.clusters if c), request.tracker_id, exclude)
        unknown = sorted(c for c in flt.clusters if self.index.cluster_status(c) is None)
        if unknown:
            shown = ", ".join(unknown[:10]) + (f" and {len(unknown) - 10} more" if len(unknown) > 10 else "")
            log.info("Watcher %r (%s) asks for clusters not (yet) known: %s", name[:100], peer, shown)

        resume_batches = None
        reset = False
        epoch = flt.stream_epoch(self.index.epoch)  # a resume point is only valid with the same cluster filters
        if request.epoch:
            if request.epoch == epoch:
                current = self.index.revision
                if request.revision > current:
                    metrics.WATCHERS_REJECTED.labels("revision_ahead").inc()
                    await context.abort(
                        grpc.StatusCode.INVALID_ARGUMENT,
                        f"resume revision {request.revision} is ahead of the tracker's revision {current} "
                        f"in epoch {epoch}; drop the resume point and watch again",
                    )
                resume_batches = self.index.changes_since(request.revision)
                if resume_batches and flt.tracker_id and _status_changed(resume_batches):
                    # Which clusters the watcher saw depended on their paths at the time; not in the log.
                    log.info(
                        "Watcher %r (%s): cluster statuses changed since revision %d", name, peer, request.revision
                    )
                    resume_batches = None
            if resume_batches is None:
                reset = True
                log.info(
                    "Watcher %r (%s) cannot resume from epoch %s revision %d (epoch %s, log from revision %d): "
                    "sending a reset snapshot",
                    name,
                    peer,
                    request.epoch,
                    request.revision,
                    epoch,
                    self.index.log_first_revision,
                )

        watcher = Watcher(name, peer, flt, self.buffer_messages, self.buffer_bytes)
        initial: AsyncIterator[tuple[bytes, str]]
        if resume_batches is not None:
            # Nothing awaited between changes_since() and add(): no batch is missed or repeated.
            items = filter_resume_batches(flt, self.index, resume_batches)
            current = self.index.committed_revision
            self.fanout.add(watcher)
            messages = [(wire.encode_response(WR.END_OF_SNAPSHOT, epoch, request.revision), "END_OF_SNAPSHOT")]
            messages += [(m, "DELTA") for m in chunk_deltas(epoch, items, current)] if items else []
            initial = _from_list(messages)
            metrics.SNAPSHOTS_SENT.labels("resume").inc()
            log.info(
                "Watcher %r (%s, %s) resumes from revision %d: %d missed changes",
                name,
                peer,
                flt.describe(),
                request.revision,
                len(items),
            )
        else:
            snap, shared = self.snapshots.get(self.index, flt)
            catch_up: list[tuple[bytes, str]] = []
            current = self.index.committed_revision
            if snap.revision < current:  # a shared older snapshot: add the changes since, from the log
                batches = self.index.changes_since(snap.revision) or []
                items = filter_resume_batches(flt, self.index, batches)
                catch_up = [(m, "DELTA") for m in chunk_deltas(epoch, items, current)] if items else []
            self.fanout.add(watcher)
            initial = _chain(snap.messages(reset), catch_up)
            metrics.SNAPSHOTS_SENT.labels("reset" if reset else "full").inc()
            log.info(
                "Watcher %r (%s, %s) gets a %ssnapshot at revision %d (%d objects%s, %d catch-up messages)",
                name,
                peer,
                flt.describe(),
                "reset " if reset else "",
                snap.revision,
                snap.snapshot.object_count(),
                ", shared encoding" if shared else "",
                len(catch_up),
            )

        self.active += 1
        pump = asyncio.create_task(self._pump(watcher, initial, context), name=f"watch-pump-{name}")
        overflow = asyncio.create_task(watcher.overflowed.wait())
        try:
            await asyncio.wait({pump, overflow}, return_when=asyncio.FIRST_COMPLETED)
            if watcher.overflow_reason:
                pump.cancel()
                await context.abort(watcher.fail_code, watcher.overflow_reason)
            await pump  # re-raise a failed write
            log.info("Watch stream of %r (%s) ended by the tracker", name, peer)
        finally:
            self.active -= 1
            self.fanout.remove(watcher)
            for task in (pump, overflow):
                task.cancel()

    async def _pump(
        self, watcher: Watcher, initial: AsyncIterator[tuple[bytes, str]], context: grpc.aio.ServicerContext
    ) -> None:
        async for data, kind in initial:
            await _write(context, data, kind)
        while True:
            item = await watcher.next()
            if item is None:
                return
            await _write(context, *item)


async def _write(context: grpc.aio.ServicerContext, data: bytes, kind: str) -> None:
    await context.write(data)  # type: ignore[arg-type]  # bytes: the method has no response serializer
    metrics.MESSAGES_SENT.labels(kind).inc()
    metrics.BYTES_SENT.labels(kind).inc(len(data))


async def _from_list(messages: list[tuple[bytes, str]]) -> AsyncIterator[tuple[bytes, str]]:
    for m in messages:
        yield m


async def _chain(
    first: AsyncIterator[tuple[bytes, str]], then: list[tuple[bytes, str]]
) -> AsyncIterator[tuple[bytes, str]]:
    async for m in first:
        yield m
    for m in then:
        yield m


def _status_changed(batches: list[Batch]) -> bool:
    """True if a cluster status was set (not deleted) in ``batches``."""
    return any(isinstance(c.record, ClusterStatusRecord) and not c.deleted for b in batches for c in b.changes)
