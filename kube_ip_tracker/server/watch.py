"""The Watch RPC: admission, filter, snapshot or resume, then the change log from the watcher's position.

Resume rules (see the proto): same epoch and a revision the change log still reaches -> END_OF_SNAPSHOT
at that revision, then only the missed changes. Unknown epoch, or a revision older than the log ->
a snapshot whose first message has ``reset``. A revision *ahead* of the tracker's in the current
epoch cannot come from this tracker and is refused with INVALID_ARGUMENT naming both revisions.
A watcher with cluster filters sees the epoch plus a fingerprint of them (``WatchFilter.stream_epoch``):
resuming with other filters is an unknown epoch, so it gets a reset snapshot of what the new filters admit.
With the same filters it resumes, a tracker id too: what the filter admitted at the resume revision is
told from the log (:meth:`~.changelog.ChangeLog.statuses_at`), so the missed range is exact.

After the start (a snapshot, or END_OF_SNAPSHOT for a resume) a stream is one loop: send the
server's change log (:mod:`.changelog`) from the watcher's position to the head, then wait. A snapshot
shared from the cache at an older revision and a resume are the same: a position further back.

The handler is registered with ``response_serializer=None``: it writes ready ``bytes`` so a DELTA
encoded once is shared by all watchers with the same filter, and a snapshot encoded once is shared
by watchers that connect at the same revision.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import grpc
import grpc.aio

from kube_ip_tracker import wire
from kube_ip_tracker.api.v1 import tracker_pb2 as pb
from kube_ip_tracker.index import Index
from kube_ip_tracker.model import ClusterStatusRecord
from kube_ip_tracker.server import metrics
from kube_ip_tracker.server.encode import EncodedSnapshot, WatchFilter, parse_exclude
from kube_ip_tracker.server.fanout import Fanout, Watcher

log = logging.getLogger(__name__)

WR = pb.WatchResponse


class SnapshotCache:
    """Encoded snapshots kept for ``ttl`` seconds, one per filter.

    A watcher may get a cached snapshot at an older revision followed by the changes since then from
    the change log (as Typha does), so watchers that connect within ``ttl`` share one encoding even
    while the index changes (exactly for every filter: see :meth:`~.fanout.Fanout.add`).
    """

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._entries: dict[WatchFilter, tuple[EncodedSnapshot, float]] = {}

    def get(self, index: Index, flt: WatchFilter, log_first_revision: int) -> tuple[EncodedSnapshot, bool]:
        """A snapshot for ``flt`` that a change log holding ``log_first_revision`` on can bring up to date;
        True if it was shared."""
        now = self.expire()
        revision = index.revision  # commits pending writes
        entry = self._entries.get(flt)
        if entry is not None and entry[0].error is None and entry[0].snapshot.epoch == index.epoch:
            snap = entry[0]
            if snap.revision == revision or (now - entry[1] <= self.ttl and log_first_revision <= snap.revision + 1):
                return snap, True
        snap = EncodedSnapshot(index.snapshot(_admits(flt)), flt)
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


@dataclass(frozen=True, slots=True)
class WatchStart:
    """How a stream starts: ``resume_from`` a revision (END_OF_SNAPSHOT there), or a snapshot (``reset`` or not)."""

    resume_from: int | None = None
    reset: bool = False


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
        await self._admit(name, peer, context)
        flt = await self._parse_filter(request, name, peer, context)
        epoch = flt.stream_epoch(self.index.epoch)  # a resume point is only valid with the same cluster filters
        start = await self._decide_start(request, epoch, flt, name, peer, context)
        watcher = Watcher(name, peer, flt, epoch, self.buffer_messages, self.buffer_bytes)
        # Nothing is awaited from choosing the start revision to registering the watcher at it.
        if start.resume_from is not None:
            initial = self._resume(watcher, start.resume_from)
        else:
            initial = self._snapshot(watcher, start.reset)
        await self._serve(watcher, initial, context)

    # -- the parts of a Watch call, in order ------------------------------------------------------

    async def _admit(self, name: str, peer: str, context: grpc.aio.ServicerContext) -> None:
        """Refuse the call while shutting down or at --max-watchers."""
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

    async def _parse_filter(
        self, request: pb.WatchRequest, name: str, peer: str, context: grpc.aio.ServicerContext
    ) -> WatchFilter:
        """The request's filter; INVALID_ARGUMENT naming a bad ``exclude_clusters`` entry."""
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
        return flt

    async def _decide_start(
        self,
        request: pb.WatchRequest,
        epoch: str,
        flt: WatchFilter,
        name: str,
        peer: str,
        context: grpc.aio.ServicerContext,
    ) -> WatchStart:
        """Resume, snapshot or reset snapshot (see the module docstring); a revision ahead is INVALID_ARGUMENT."""
        if not request.epoch:
            return WatchStart()
        if request.epoch == epoch:
            current = self.index.revision  # commits pending writes
            if request.revision > current:
                metrics.WATCHERS_REJECTED.labels("revision_ahead").inc()
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"resume revision {request.revision} is ahead of the tracker's revision {current} "
                    f"in epoch {epoch}; drop the resume point and watch again",
                )
            if self.fanout.log.seq_after(request.revision) is not None:
                return WatchStart(resume_from=request.revision)
        log.info(
            "Watcher %r (%s) cannot resume from epoch %s revision %d (epoch %s, log from revision %d): "
            "sending a reset snapshot",
            name,
            peer,
            request.epoch,
            request.revision,
            epoch,
            self.fanout.log.first_revision,
        )
        return WatchStart(reset=True)

    def _resume(self, watcher: Watcher, revision: int) -> list[tuple[bytes, str]]:
        """Register ``watcher`` after ``revision``; its stream starts with END_OF_SNAPSHOT there."""
        added = self.fanout.add(watcher, revision)
        assert added, "the start was decided on this log without awaiting"
        metrics.SNAPSHOTS_SENT.labels("resume").inc()
        log.info(
            "Watcher %r (%s, %s) resumes from revision %d: %d missed changes",
            watcher.name,
            watcher.peer,
            watcher.filter.describe(),
            revision,
            self.index.committed_revision - revision,
        )
        return [(wire.encode_response(WR.END_OF_SNAPSHOT, watcher.epoch, revision), "END_OF_SNAPSHOT")]

    def _snapshot(self, watcher: Watcher, reset: bool) -> AsyncIterator[tuple[bytes, str]]:
        """Register ``watcher`` at a (possibly shared, older) snapshot's revision; the log brings it up to date."""
        snap, shared = self.snapshots.get(self.index, watcher.filter, self.fanout.log.first_revision)
        if not self.fanout.add(watcher, snap.revision):  # the log was trimmed past a shared snapshot
            snap, shared = EncodedSnapshot(self.index.snapshot(_admits(watcher.filter)), watcher.filter), False
            added = self.fanout.add(watcher, snap.revision)
            assert added, "a snapshot at the committed revision is always reachable"
        metrics.SNAPSHOTS_SENT.labels("reset" if reset else "full").inc()
        log.info(
            "Watcher %r (%s, %s) gets a %ssnapshot at revision %d (%d objects%s, %d changes to catch up)",
            watcher.name,
            watcher.peer,
            watcher.filter.describe(),
            "reset " if reset else "",
            snap.revision,
            snap.snapshot.object_count(),
            ", shared encoding" if shared else "",
            self.index.committed_revision - snap.revision,
        )
        return snap.messages(reset)

    async def _serve(
        self,
        watcher: Watcher,
        initial: AsyncIterator[tuple[bytes, str]] | list[tuple[bytes, str]],
        context: grpc.aio.ServicerContext,
    ) -> None:
        """Run the send loop until the stream ends; an overflowed watcher's stream ends with its status."""
        self.active += 1
        pump = asyncio.create_task(self._send_loop(watcher, initial, context), name=f"watch-pump-{watcher.name}")
        overflow = asyncio.create_task(watcher.overflowed.wait())
        try:
            await asyncio.wait({pump, overflow}, return_when=asyncio.FIRST_COMPLETED)
            if watcher.overflow_reason:
                pump.cancel()
                await context.abort(watcher.fail_code, watcher.overflow_reason)
            await pump  # re-raise a failed write
            log.info("Watch stream of %r (%s) ended by the tracker", watcher.name, watcher.peer)
        finally:
            self.active -= 1
            self.fanout.remove(watcher)
            for task in (pump, overflow):
                task.cancel()

    async def _send_loop(
        self,
        watcher: Watcher,
        initial: AsyncIterator[tuple[bytes, str]] | list[tuple[bytes, str]],
        context: grpc.aio.ServicerContext,
    ) -> None:
        """The start messages, then the change log from the watcher's position to the head, forever."""
        if isinstance(initial, list):
            for data, kind in initial:
                await _write(context, data, kind)
        else:
            async for data, kind in initial:
                await _write(context, data, kind)
        fanout = self.fanout
        while not watcher.overflow_reason:
            data = fanout.next_delta(watcher)
            if data is not None:
                await _write(context, data, "DELTA")
            elif watcher.progress_due:
                watcher.progress_due = False
                await _write(context, wire.encode_response(WR.PROGRESS, watcher.epoch, watcher.revision), "PROGRESS")
            elif fanout.closing:
                return
            else:
                await fanout.changed()


# The counters of each message kind, looked up once (two labels() calls cost ~3 µs of a ~40 µs write).
_SENT = {kind: (metrics.MESSAGES_SENT.labels(kind), metrics.BYTES_SENT.labels(kind)) for kind in WR.Kind.keys()}


async def _write(context: grpc.aio.ServicerContext, data: bytes, kind: str) -> None:
    await context.write(data)  # type: ignore[arg-type]  # bytes: the method has no response serializer
    messages, sent = _SENT[kind]
    messages.inc()
    sent.inc(len(data))


def _admits(flt: WatchFilter) -> Callable[[ClusterStatusRecord], bool] | None:
    """The ``Index.snapshot`` predicate of a filter (``None``: every cluster)."""
    return None if flt.everything else flt.admits
