"""Fan-out: every Watch stream reads the server's change log (:mod:`.changelog`) from its own position.

The fan-out subscribes to the index. Each committed batch becomes one log entry, framed once, and
for each filter that has watchers (:class:`~.encode.FilterGroup`) its DELTA messages are encoded
once and memoised on the entry. A :class:`Watcher` is a cursor: its stream sends "from my position
to the head", merging consecutive entries' DELTAs into one message within the per-message limits,
so live streaming, catching up after a snapshot and resuming are one path.

A watcher whose unsent part of the log grows beyond its lag limits (messages, bytes), or whose
position falls off the log's tail, is marked overflowed: its stream ends with RESOURCE_EXHAUSTED
and the watcher resumes from its last revision (a reset snapshot if the log no longer reaches it).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque

import grpc

from kube_ip_tracker.index import Batch, Index
from kube_ip_tracker.server import metrics
from kube_ip_tracker.server.changelog import DEFAULT_MAX_BYTES, ChangeLog, LogEntry
from kube_ip_tracker.server.encode import (
    DeltaMessage,
    FilterGroup,
    WatchFilter,
    fits_after,
    merge_deltas,
)

log = logging.getLogger(__name__)


class Watcher:
    """One Watch stream's position in the change log and how far behind the head it is."""

    def __init__(self, name: str, peer: str, flt: WatchFilter, epoch: str, max_messages: int, max_bytes: int) -> None:
        self.name = name
        self.peer = peer
        self.filter = flt
        self.epoch = epoch  # the stream's epoch (WatchFilter.stream_epoch)
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.cursor = 0  # seq of the next log entry to send
        self.revision = 0  # revision the watcher is at once it has what was taken from the log
        self.counted_from = 0  # entries from this seq on are counted in behind_*
        self.behind_messages = 0
        self.behind_bytes = 0
        self.pending: deque[DeltaMessage] = deque()  # the rest of a taken entry that did not fit one message
        self.progress_due = False
        self.overflow_reason = ""
        self.fail_code = grpc.StatusCode.RESOURCE_EXHAUSTED
        self.overflowed = asyncio.Event()

    def fail(self, reason: str, code: grpc.StatusCode = grpc.StatusCode.RESOURCE_EXHAUSTED) -> None:
        """Mark the watcher for disconnection (its handler ends the stream with ``code``)."""
        if not self.overflow_reason:
            self.overflow_reason = reason
            self.fail_code = code
            self.overflowed.set()


class Fanout:
    """The change log and the watchers reading it, with one DELTA encoding per filter and batch."""

    def __init__(self, index: Index, max_log_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.index = index
        self.log = ChangeLog(index, max_log_bytes)
        self._groups: dict[WatchFilter, FilterGroup] = {}
        self._members: dict[WatchFilter, set[Watcher]] = {}
        self._changed = asyncio.Event()
        self.closing = False
        self._unsubscribe = index.subscribe(self._on_batch)

    @property
    def watchers(self) -> list[Watcher]:
        return [w for members in self._members.values() for w in members]

    def __len__(self) -> int:
        return sum(len(m) for m in self._members.values())

    def add(self, watcher: Watcher, revision: int) -> bool:
        """Register ``watcher`` to stream the changes after ``revision``; False if the log does not reach back.

        The missed range (a resume, a shared older snapshot) is framed as one batch by a :class:`FilterGroup`
        that starts from what the filter admitted at ``revision``: the log's framed changes joined into as
        few DELTAs as the per-message limits allow, nothing encoded again. The cursor then starts at the head.
        Nothing may be awaited between choosing ``revision`` and this call.
        """
        seq = self.log.seq_after(revision)
        if seq is None:
            return False
        flt = watcher.filter
        head = self.index.committed_revision
        watcher.cursor, watcher.revision, watcher.counted_from = self.log.next_seq, head, self.log.next_seq
        if revision < head and flt.everything:  # the log's run of framed changes, sliced and joined
            framed = self.log.framed_after(revision)
            assert len(framed) == head - revision, "the change log holds every committed change"
            catch_up = FilterGroup(flt, self.index)
            watcher.pending.extend(catch_up.encode_run(revision + 1, framed, self.index.epoch, head))
        elif revision < head:
            visible = {name for name, status in self.log.statuses_at(revision).items() if flt.admits(status)}
            catch_up = FilterGroup(flt, self.index, visible)
            watcher.pending.extend(catch_up.encode_changes(self.log.changes_after(revision), self.index.epoch, head))
        if flt not in self._groups:
            self._groups[flt] = FilterGroup(flt, self.index)
            self._members[flt] = set()
        self._members[flt].add(watcher)
        metrics.WATCHERS.inc()
        return True

    def remove(self, watcher: Watcher) -> bool:
        """Stop tracking ``watcher``; False if it was not registered."""
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
        """Have every watcher send a PROGRESS once it has sent the log up to the head (``revision``)."""
        for w in self.watchers:
            w.progress_due = True
        self._wake()

    def close(self) -> None:
        """Detach from the index; each stream sends the log up to the head, then ends."""
        self._unsubscribe()
        self.closing = True
        self._wake()

    async def changed(self) -> None:
        """Wait until a batch is logged, a PROGRESS is due, or the fan-out closes."""
        await self._changed.wait()

    def _wake(self) -> None:
        event, self._changed = self._changed, asyncio.Event()
        event.set()

    # -- reading -------------------------------------------------------------------------------

    def next_delta(self, watcher: Watcher) -> bytes | None:
        """The next DELTA for ``watcher`` from its position towards the head, merged; ``None`` if caught up."""
        parts: list[DeltaMessage] = []
        size = 0
        pending = watcher.pending
        while True:
            if not pending:
                if watcher.cursor >= self.log.next_seq:
                    break
                entry = self.log.get(watcher.cursor)
                if entry is None:
                    self._fell_behind(watcher)
                    return None
                pending.extend(self._deltas(watcher, entry))
                watcher.cursor += 1
                watcher.revision = entry.batch.revision
                continue
            nxt = pending[0]
            if parts and not fits_after(parts[0], size, nxt):
                break
            parts.append(pending.popleft())
            size += len(nxt.data)
        return merge_deltas(parts) if parts else None

    def _deltas(self, watcher: Watcher, entry: LogEntry) -> list[DeltaMessage]:
        """``entry``'s DELTAs for ``watcher``, memoised on it by the watcher's filter group."""
        memo = entry.deltas.get(watcher.filter)
        if memo is None:  # the group exists from the watcher's start on and encodes every entry
            log.error(
                "No DELTAs of batch %d..%d for filter %s",
                entry.batch.first_revision,
                entry.batch.revision,
                watcher.filter,
            )
            watcher.fail("internal error: changes not encoded for this filter; reconnect", grpc.StatusCode.INTERNAL)
            return []
        if entry.seq >= watcher.counted_from:
            watcher.behind_messages -= len(memo)
            watcher.behind_bytes -= entry.delta_bytes[watcher.filter]
        return memo

    def _fell_behind(self, watcher: Watcher) -> None:
        if self.remove(watcher):
            metrics.SLOW_WATCHER_DISCONNECTS.inc()
        watcher.fail(
            f"watcher {watcher.name!r} ({watcher.peer}) is too slow: the tracker's change log no longer holds "
            f"the changes after revision {watcher.revision} it has yet to send (log from revision "
            f"{self.log.first_revision}); reconnect to resume (a reset snapshot if the log does not reach back)"
        )
        log.warning("Disconnecting slow watcher: %s", watcher.overflow_reason)

    # -- committing ----------------------------------------------------------------------------

    def _on_batch(self, batch: Batch) -> None:
        entry = self.log.append(batch)
        epoch = self.index.epoch
        for flt, group in list(self._groups.items()):
            try:
                messages = group.encode(batch, entry.framed, epoch)
            except Exception:
                log.exception("Encoding batch %d..%d for filter %s failed", batch.first_revision, batch.revision, flt)
                for w in list(self._members.get(flt, ())):
                    w.fail("internal error encoding changes; reconnect", grpc.StatusCode.INTERNAL)
                    self.remove(w)
                continue
            added = entry.memoise(flt, messages)
            self.log.grew(added)
            if messages:
                self._count(flt, len(messages), added)
        watchers = self.watchers
        self.log.trim(min((w.cursor for w in watchers), default=None))
        first = self.log.first_seq
        for w in watchers:
            if w.cursor < first:
                self._fell_behind(w)
        self._wake()

    def _count(self, flt: WatchFilter, n: int, size: int) -> None:
        """Add a new entry's ``n`` DELTAs of ``size`` bytes to how far behind each watcher of ``flt`` is; mark
        those over their limits."""
        for w in list(self._members.get(flt, ())):
            w.behind_messages += n
            w.behind_bytes += size
            if w.behind_messages > w.max_messages or w.behind_bytes > w.max_bytes:
                self.remove(w)
                metrics.SLOW_WATCHER_DISCONNECTS.inc()
                w.fail(
                    f"watcher {w.name!r} ({w.peer}) is too slow: its send queue is full "
                    f"({w.behind_messages} messages, {w.behind_bytes} bytes behind the change log's head; limits "
                    f"{w.max_messages} messages, {w.max_bytes} bytes); reconnect to resume from the last applied "
                    "revision"
                )
                log.warning("Disconnecting slow watcher: %s", w.overflow_reason)
