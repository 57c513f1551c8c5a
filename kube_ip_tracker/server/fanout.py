"""Fan-out of committed index batches to Watch streams.

The fan-out subscribes to the index. For each committed batch it encodes the DELTA messages once per
watcher filter (:class:`~.encode.FilterGroup`) and appends the same ``bytes`` objects to every
watcher's queue. Queues are bounded by messages and bytes: a watcher that cannot keep up is marked
overflowed (its stream is then ended with RESOURCE_EXHAUSTED) and nothing more is queued for it, so
it never delays the others nor holds unbounded memory.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque

import grpc

from kube_ip_tracker import wire
from kube_ip_tracker.api.v1 import tracker_pb2 as pb
from kube_ip_tracker.index import Batch, Index
from kube_ip_tracker.server import metrics
from kube_ip_tracker.server.encode import EncodedBatch, FilterGroup, WatchFilter, merge_queued_deltas

log = logging.getLogger(__name__)

WR = pb.WatchResponse


class Watcher:
    """One Watch stream's send queue."""

    def __init__(self, name: str, peer: str, flt: WatchFilter, max_messages: int, max_bytes: int) -> None:
        self.name = name
        self.peer = peer
        self.filter = flt
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self._queue: deque[tuple[bytes, str]] = deque()
        self.queued_bytes = 0
        self.overflow_reason = ""
        self.fail_code = grpc.StatusCode.RESOURCE_EXHAUSTED
        self.overflowed = asyncio.Event()
        self.closing = False
        self._wakeup = asyncio.Event()

    def offer(self, data: bytes, kind: str) -> bool:
        """Queue one message; on overflow mark the watcher and drop its queue. False if not queued."""
        if self.overflow_reason or self.closing:
            return False
        if len(self._queue) >= self.max_messages or self.queued_bytes + len(data) > self.max_bytes:
            self.overflow_reason = (
                f"watcher {self.name!r} ({self.peer}) is too slow: its send queue is full "
                f"({len(self._queue)} messages, {self.queued_bytes} bytes; limits {self.max_messages} messages, "
                f"{self.max_bytes} bytes); reconnect to resume from the last applied revision"
            )
            self._queue.clear()
            self.queued_bytes = 0
            self.overflowed.set()
            self._wakeup.set()
            return False
        self._queue.append((data, kind))
        self.queued_bytes += len(data)
        self._wakeup.set()
        return True

    def close(self) -> None:
        """Stop accepting messages; :meth:`next` returns ``None`` once the queue is drained."""
        self.closing = True
        self._wakeup.set()

    async def next(self) -> tuple[bytes, str] | None:
        """The next queued message, waiting for one; ``None`` when closed and drained.

        DELTAs queued back to back (the stream fell behind) go out merged into one message
        (:func:`~.encode.merge_queued_deltas`): one write instead of many.
        """
        while True:
            if self._queue:
                data, kind = self._queue.popleft()
                self.queued_bytes -= len(data)
                if kind == "DELTA" and self._queue and self._queue[0][1] == "DELTA":
                    data, taken = merge_queued_deltas(data, self._queue)
                    self.queued_bytes -= taken
                return data, kind
            if self.closing or self.overflow_reason:
                return None
            self._wakeup.clear()
            await self._wakeup.wait()


class Fanout:
    """Delivers index batches to watchers, encoding once per filter."""

    def __init__(self, index: Index) -> None:
        self.index = index
        self._groups: dict[WatchFilter, FilterGroup] = {}
        self._members: dict[WatchFilter, set[Watcher]] = {}
        self._unsubscribe = index.subscribe(self._on_batch)

    @property
    def watchers(self) -> list[Watcher]:
        return [w for members in self._members.values() for w in members]

    def __len__(self) -> int:
        return sum(len(m) for m in self._members.values())

    def add(self, watcher: Watcher) -> None:
        """Start queueing batches committed from now on for ``watcher``."""
        flt = watcher.filter
        if flt not in self._groups:
            self._groups[flt] = FilterGroup(flt, self.index)
            self._members[flt] = set()
        self._members[flt].add(watcher)
        metrics.WATCHERS.inc()

    def remove(self, watcher: Watcher) -> bool:
        """Stop queueing for ``watcher``; False if it was not registered."""
        members = self._members.get(watcher.filter)
        if members is None or watcher not in members:
            return False
        members.discard(watcher)
        metrics.WATCHERS.dec()
        if not members:
            del self._members[watcher.filter]
            del self._groups[watcher.filter]
        return True

    def broadcast_progress(self, epoch: str, revision: int) -> None:
        """Queue a PROGRESS at ``revision`` for every watcher, in the epoch of its stream (one encoding per epoch)."""
        encoded: dict[str, bytes] = {}
        for flt, members in list(self._members.items()):
            stream_epoch = flt.stream_epoch(epoch)
            data = encoded.get(stream_epoch)
            if data is None:
                data = encoded[stream_epoch] = wire.encode_response(WR.PROGRESS, stream_epoch, revision)
            for w in list(members):
                self._offer(w, data, "PROGRESS")

    def close(self) -> None:
        """Detach from the index and close every watcher's queue."""
        self._unsubscribe()
        for w in self.watchers:
            w.close()

    def _offer(self, watcher: Watcher, data: bytes, kind: str) -> None:
        if not watcher.offer(data, kind) and watcher.overflow_reason and self.remove(watcher):
            metrics.SLOW_WATCHER_DISCONNECTS.inc()
            log.warning("Disconnecting slow watcher: %s", watcher.overflow_reason)

    def _on_batch(self, batch: Batch) -> None:
        if not self._groups:
            return
        enc = EncodedBatch(batch)
        epoch = self.index.epoch
        for flt, group in list(self._groups.items()):
            try:
                messages = group.encode(enc, epoch)
            except Exception:
                log.exception("Encoding batch %d..%d for filter %s failed", batch.first_revision, batch.revision, flt)
                for w in list(self._members.get(flt, ())):
                    w.overflow_reason = "internal error encoding changes; reconnect"
                    w.fail_code = grpc.StatusCode.INTERNAL
                    w.overflowed.set()
                    self.remove(w)
                continue
            if not messages:
                continue
            for w in list(self._members.get(flt, ())):
                for m in messages:
                    self._offer(w, m, "DELTA")
                    if w.overflow_reason:
                        break
