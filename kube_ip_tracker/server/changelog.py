"""The server's change log: committed batches, each framed once, that every Watch stream reads with a cursor.

The shape of Calico Typha's breadcrumbs: one chain of immutable entries, each holding a batch, its
changes serialized and framed once (at commit) and, per watcher filter, the DELTA messages that
encode it (memoised on the entry by the filter's group, shared by every watcher of the filter; a
resume joins the framed changes instead: for an unfiltered watcher one slice of the log's run of
framed changes, found by revision arithmetic, with no per-change work but the copy into messages). A watcher is a position in this log (:class:`~.fanout.Watcher`), not a
queue, so memory is bounded by the log, not by the number of watchers or how far behind they are.

The log reaches back as far as the index's change log (``--change-log-changes``) and at most
``max_bytes`` of framed changes and memoised DELTAs (``--change-log-bytes``); the oldest entries
go first, except those a connected watcher has yet to send: a watcher further behind than its lag
limits (``--watcher-buffer-messages``, ``--watcher-buffer-bytes``) is disconnected instead, so
those bound what is kept beyond the log size (see :mod:`.fanout`).
"""

from __future__ import annotations

import bisect
import logging
from collections import deque
from collections.abc import Iterator
from itertools import islice

from kube_ip_tracker import wire
from kube_ip_tracker.index import Batch, Change, Index
from kube_ip_tracker.model import ClusterStatusRecord
from kube_ip_tracker.server import metrics
from kube_ip_tracker.server.encode import DeltaMessage, WatchFilter

log = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 256 << 20


class LogEntry:
    """One committed batch: its framed changes and its DELTA messages per filter (memoised)."""

    __slots__ = ("batch", "delta_bytes", "deltas", "framed", "nbytes", "seq")

    def __init__(self, seq: int, batch: Batch) -> None:
        self.seq = seq
        self.batch = batch
        # Each change serialized and framed (``wire.frame_change``) once, in revision order.
        self.framed = [wire.frame_change(wire.encode_change(c.record, c.deleted)) for c in batch.changes]
        self.deltas: dict[WatchFilter, list[DeltaMessage]] = {}
        self.delta_bytes: dict[WatchFilter, int] = {}  # the size of each filter's DELTAs
        self.nbytes = sum(map(len, self.framed))

    def memoise(self, flt: WatchFilter, messages: list[DeltaMessage]) -> int:
        """Keep ``messages`` as this entry's encoding for ``flt``; returns the bytes added."""
        self.deltas[flt] = messages
        added = self.delta_bytes[flt] = sum(len(m.data) for m in messages)
        self.nbytes += added
        return added


class ChangeLog:
    """Committed batches as :class:`LogEntry` objects, numbered by a sequence that only grows."""

    def __init__(self, index: Index, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        if max_bytes < 1:
            raise ValueError(f"change log bytes must be positive, got {max_bytes}")
        self.index = index
        self.max_bytes = max_bytes
        self.entries: deque[LogEntry] = deque()
        # Every logged change framed, in revision order, from index _run_start on (the entries' framed
        # lists end to end), so a run of changes is one list slice; trimmed from the front lazily.
        self._run: list[bytes] = []
        self._run_start = 0
        self.first_seq = 0  # seq of entries[0]
        self.next_seq = 0
        self.bytes = 0
        for batch in index.changes_since(index.log_first_revision - 1) or []:  # committed before the server started
            self.append(batch)
        self.trim()

    def append(self, batch: Batch) -> LogEntry:
        """Log a batch just committed (framed now, so no resume has to encode it)."""
        entry = LogEntry(self.next_seq, batch)
        self.entries.append(entry)
        self._run += entry.framed
        self.next_seq += 1
        self.bytes += entry.nbytes
        return entry

    def grew(self, added: int) -> None:
        """Account bytes memoised on an entry after it was appended."""
        self.bytes += added

    def trim(self, keep_from: int | None = None) -> None:
        """Drop the oldest entries beyond the bounds (those the index's log no longer holds, then down to
        ``max_bytes``), but none from seq ``keep_from`` on: a live watcher still has to send those (its
        lag limits bound how many)."""
        oldest = self.index.log_first_revision
        entries = self.entries
        while (
            entries
            and (keep_from is None or self.first_seq < keep_from)
            and (entries[0].batch.first_revision < oldest or (self.bytes > self.max_bytes and len(entries) > 1))
        ):
            dropped = entries.popleft()
            self.bytes -= dropped.nbytes
            self._run_start += len(dropped.framed)
            self.first_seq += 1
        if self._run_start > len(self._run) // 2:  # amortised: each change is moved at most once more
            del self._run[: self._run_start]
            self._run_start = 0
        metrics.CHANGE_LOG_ENTRIES.set(len(entries))
        metrics.CHANGE_LOG_BYTES.set(self.bytes)

    def get(self, seq: int) -> LogEntry | None:
        """The entry numbered ``seq``, or ``None`` if it was trimmed (or is not logged yet)."""
        if self.first_seq <= seq < self.next_seq:
            return self.entries[seq - self.first_seq]
        return None

    @property
    def first_revision(self) -> int:
        """The oldest revision the log holds (the next revision to commit when it is empty)."""
        return self.entries[0].batch.first_revision if self.entries else self.index.committed_revision + 1

    def seq_after(self, revision: int) -> int | None:
        """Seq of the first entry with a change after ``revision``; ``None`` when the log does not reach back to it."""
        if revision + 1 < self.first_revision:
            return None
        return self.first_seq + bisect.bisect_right(self.entries, revision, key=_last_revision)

    def framed_after(self, revision: int) -> list[bytes]:
        """Every logged change after ``revision``, framed, in order: one slice of the log's run (the log
        must reach back to it; revisions have no gaps, so the i-th is ``revision + 1 + i``)."""
        first = self.first_revision
        assert revision + 1 >= first, f"the change log does not reach back to revision {revision}"
        return self._run[self._run_start + revision + 1 - first :]

    def changes_after(self, revision: int) -> Iterator[tuple[Change, bytes]]:
        """Every logged ``(change, framed)`` after ``revision``, in order (the log must reach back to it)."""
        seq = self.seq_after(revision)
        assert seq is not None, f"the change log does not reach back to revision {revision}"
        for entry in islice(self.entries, seq - self.first_seq, None):
            changes = entry.batch.changes
            if entry.batch.first_revision > revision:
                yield from zip(changes, entry.framed, strict=True)
            else:  # the batch the resume revision is in
                start = revision - entry.batch.first_revision + 1
                yield from zip(changes[start:], entry.framed[start:], strict=True)

    def statuses_at(self, revision: int) -> dict[str, ClusterStatusRecord]:
        """Every cluster's status at ``revision``: today's, with the status changes after it undone."""
        statuses = {name: s for name in self.index.cluster_names() if (s := self.index.cluster_status(name))}
        undo = [c for c, _ in self.changes_after(revision) if isinstance(c.record, ClusterStatusRecord)]
        for change in reversed(undo):
            if change.previous is None:
                statuses.pop(change.cluster, None)
            else:
                statuses[change.cluster] = change.previous
        return statuses


def _last_revision(entry: LogEntry) -> int:
    return entry.batch.revision
