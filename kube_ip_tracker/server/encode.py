"""Encoding of Watch messages: filters, DELTA chunks of a committed batch, snapshots.

Each change is serialized once per batch (``wire.encode_change``) and framed; the DELTA messages of
every watcher filter are then concatenations of those frames, so watchers with the same filter share
the same bytes and different filters only cost a join.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass

from kube_ip_tracker import wire
from kube_ip_tracker.api.v1 import tracker_pb2 as pb
from kube_ip_tracker.index import Batch, Change, ClusterContent, Index, Snapshot
from kube_ip_tracker.model import ClusterStatusRecord
from kube_ip_tracker.server import metrics

log = logging.getLogger(__name__)

WR = pb.WatchResponse

MAX_CHANGES_PER_MESSAGE = 1000
MAX_BYTES_PER_MESSAGE = 1 << 20


@dataclass(frozen=True, slots=True)
class WatchFilter:
    """Which clusters a watcher gets: a cluster list (empty: all), clusters never sent (``exclude``)
    and loop exclusion by tracker id."""

    clusters: frozenset[str] = frozenset()
    tracker_id: str = ""
    exclude: frozenset[str] = frozenset()

    @property
    def everything(self) -> bool:
        """True when the filter lets every cluster through."""
        return not self.clusters and not self.tracker_id and not self.exclude

    def admits(self, status: ClusterStatusRecord) -> bool:
        """Whether a cluster with this status is sent to the watcher."""
        if self.clusters and status.cluster not in self.clusters:
            return False
        if status.cluster in self.exclude:
            return False
        return not (self.tracker_id and self.tracker_id in status.via)

    def stream_epoch(self, epoch: str) -> str:
        """The epoch a watcher with this filter sees: the index epoch, plus a fingerprint of the cluster
        filters when there are any, so a resume point only resumes a stream with the same filters."""
        if not self.clusters and not self.exclude:
            return epoch
        digest = hashlib.sha256()
        for name in sorted(self.clusters):
            digest.update(b"+" + name.encode("utf-8", "surrogatepass") + b"\0")
        for name in sorted(self.exclude):
            digest.update(b"-" + name.encode("utf-8", "surrogatepass") + b"\0")
        return f"{epoch}.f{digest.hexdigest()[:16]}"

    def describe(self) -> str:
        parts = []
        if self.clusters:
            parts.append("clusters=" + ",".join(sorted(self.clusters)))
        if self.exclude:
            shown = sorted(self.exclude)
            more = f" (+{len(shown) - 20} more)" if len(shown) > 20 else ""
            parts.append("exclude=" + ",".join(shown[:20]) + more)
        if self.tracker_id:
            parts.append(f"tracker_id={self.tracker_id}")
        return " ".join(parts) or "all clusters"


MAX_EXCLUDE_CLUSTERS = 10_000
MAX_CLUSTER_ID_LENGTH = 253


def parse_exclude(names: Sequence[str]) -> frozenset[str]:
    """``WatchRequest.exclude_clusters`` as a set; ``ValueError`` names what is wrong with it."""
    if len(names) > MAX_EXCLUDE_CLUSTERS:
        raise ValueError(f"exclude_clusters has {len(names)} entries, at most {MAX_EXCLUDE_CLUSTERS} are allowed")
    for i, name in enumerate(names):
        problem = ""
        if not name:
            problem = "is empty"
        elif len(name) > MAX_CLUSTER_ID_LENGTH:
            problem = f"has {len(name)} characters, at most {MAX_CLUSTER_ID_LENGTH} are allowed"
        elif any(c.isspace() or not c.isprintable() for c in name):
            problem = "contains whitespace or control characters"
        if problem:
            shown = name if len(name) <= 64 else f"{name[:64]}..."
            raise ValueError(f"exclude_clusters[{i}] {shown!r} {problem}")
    return frozenset(names)


@dataclass(frozen=True, slots=True)
class DeltaMessage:
    """One encoded DELTA and the revisions it covers (known from encoding: never read back from the bytes)."""

    first_revision: int
    revision: int
    data: bytes


def _message_end(framed: Sequence[bytes], start: int) -> int:
    """End of the DELTA that starts at ``framed[start]``: at most ``MAX_CHANGES_PER_MESSAGE`` changes and
    ``MAX_BYTES_PER_MESSAGE`` bytes, at least one change."""
    end = min(len(framed), start + MAX_CHANGES_PER_MESSAGE)
    if sum(map(len, framed[start:end])) <= MAX_BYTES_PER_MESSAGE:  # nearly always: changes are ~250 B
        return end
    size, i = len(framed[start]), start + 1
    while i < end and size + len(framed[i]) <= MAX_BYTES_PER_MESSAGE:
        size += len(framed[i])
        i += 1
    return i


def chunk_run(epoch: str, revisions: Sequence[int], framed: Sequence[bytes], last_revision: int) -> list[DeltaMessage]:
    """DELTA messages for framed changes at ``revisions`` (a ``range`` for a run without gaps, so nothing is
    looked at per change but its size); the last message carries ``last_revision``."""
    out: list[DeltaMessage] = []
    start, n = 0, len(framed)
    while start < n:
        end = _message_end(framed, start)
        revision = last_revision if end == n else revisions[end - 1]
        first = revisions[start]
        data = wire.encode_response(WR.DELTA, epoch, revision, first_revision=first, framed_changes=framed[start:end])
        out.append(DeltaMessage(first, revision, data))
        start = end
    metrics.DELTA_ENCODINGS.inc(len(out))
    return out


def chunk_deltas(epoch: str, items: Sequence[tuple[int, bytes]], last_revision: int) -> list[DeltaMessage]:
    """DELTA messages for ``(revision, framed change)`` items; the last message carries ``last_revision``."""
    return chunk_run(epoch, [r for r, _ in items], [f for _, f in items], last_revision)


def fits_after(first: DeltaMessage, size: int, nxt: DeltaMessage) -> bool:
    """Whether ``nxt`` may join a merged DELTA that starts with ``first`` and has ``size`` bytes so far.

    The merged message stays within the limits of :func:`chunk_deltas`: a revision span of
    ``MAX_CHANGES_PER_MESSAGE`` and ``MAX_BYTES_PER_MESSAGE``.
    """
    return (
        nxt.revision - first.first_revision < MAX_CHANGES_PER_MESSAGE and size + len(nxt.data) <= MAX_BYTES_PER_MESSAGE
    )


def merge_deltas(messages: Sequence[DeltaMessage]) -> bytes:
    """One DELTA equal to consecutive DELTAs of one stream.

    Protobuf parses concatenated messages as one: repeated changes add up and the last value of a
    scalar wins, so the result carries the last message's revision; a trailing ``first_revision``
    makes it cover the whole range.
    """
    if len(messages) == 1:
        return messages[0].data
    return b"".join(m.data for m in messages) + b"\x20" + wire.varint(messages[0].first_revision)


def content_items(content: ClusterContent, revision: int) -> list[tuple[int, bytes]]:
    """Every object of a cluster as framed upserts, all tagged with ``revision``."""
    records: list = [content.status, *content.namespaces, *content.nodes, *content.pods]
    return [(revision, wire.frame_change(wire.encode_change(r))) for r in records]


class FilterGroup:
    """The one filter implementation: which changes a watcher with ``flt`` gets, tracking which
    clusters it currently sees.

    A cluster becomes visible (its status now passes the filter) -> its whole current content is sent;
    it stops being visible -> a deleted cluster is sent. For an unfiltered group every change goes out.
    Live, a group shared by the watchers of one filter encodes each committed batch. To catch a watcher
    up (a resume, a shared older snapshot) a group is made with what the filter admitted at the
    watcher's revision (``visible``) and encodes the whole missed range as one batch: what the watcher
    would have received live, up to repeated changes of one object, so the result is exact for cluster
    filters and tracker ids alike.
    """

    def __init__(self, flt: WatchFilter, index: Index, visible: set[str] | None = None) -> None:
        self.filter = flt
        self.index = index
        self.visible: set[str] = set()
        if visible is not None:
            self.visible = visible
        elif not flt.everything:
            for name in index.cluster_names():
                status = index.cluster_status(name)
                if status is not None and flt.admits(status):
                    self.visible.add(name)

    def encode(self, batch: Batch, framed_changes: Sequence[bytes], epoch: str) -> list[DeltaMessage]:
        """DELTA messages of a batch just committed, for this group (shared by its watchers)."""
        if self.filter.everything:
            return self.encode_run(batch.first_revision, framed_changes, epoch, batch.revision)
        return self.encode_changes(zip(batch.changes, framed_changes, strict=True), epoch, batch.revision)

    def encode_run(
        self, first_revision: int, framed_changes: Sequence[bytes], epoch: str, last_revision: int
    ) -> list[DeltaMessage]:
        """DELTA messages of every change from ``first_revision`` on, without gaps (an unfiltered group:
        every change goes out, none is looked at)."""
        assert self.filter.everything, "a filtered group decides per change"
        revisions = range(first_revision, first_revision + len(framed_changes))
        epoch = self.filter.stream_epoch(epoch)
        return chunk_run(epoch, revisions, framed_changes, last_revision) if framed_changes else []

    def encode_changes(
        self, changes: Iterable[tuple[Change, bytes]], epoch: str, last_revision: int
    ) -> list[DeltaMessage]:
        """DELTA messages of ``(change, framed)`` committed up to ``last_revision`` (the index's state now);
        updates visibility."""
        epoch = self.filter.stream_epoch(epoch)
        if self.filter.everything:
            items = [(c.revision, framed) for c, framed in changes]
            return chunk_deltas(epoch, items, last_revision) if items else []
        decided: dict[str, str] = {}  # cluster -> "send" | "skip" | "done"
        items = []
        for change, framed in changes:
            name = change.cluster
            action = decided.get(name)
            if action is None:
                action = decided[name] = self._decide(change, items)
            if action == "send":
                items.append((change.revision, framed))
        if not items:
            return []
        return chunk_deltas(epoch, items, last_revision)

    def _decide(self, change: Change, items: list[tuple[int, bytes]]) -> str:
        name = change.cluster
        status = self.index.cluster_status(name)
        was = name in self.visible
        now = status is not None and self.filter.admits(status)
        if status is None:  # removed by the end of this batch: its changes end with the deleted status
            self.visible.discard(name)
            return "send" if was else "skip"
        if was and now:
            return "send"
        if was and not now:
            self.visible.discard(name)
            items.append((change.revision, wire.frame_change(wire.encode_change(ClusterStatusRecord(name), True))))
            log.info("Cluster %s is no longer sent to watchers with filter %s", name, self.filter.describe())
            return "done"
        if now:
            self.visible.add(name)
            snap = self.index.snapshot(lambda s: s.cluster == name)
            for content in snap.clusters:
                items.extend(content_items(content, change.revision))
            return "done"
        return "skip"


class EncodedSnapshot:
    """A snapshot encoded once, in chunks, while watchers that connected together stream it.

    Encoding runs in a task that yields to the event loop between chunks, so a large snapshot does
    not stall other watchers. ``messages(reset)`` streams SNAPSHOT*, CLUSTER_SYNCED*, END_OF_SNAPSHOT.
    """

    CHUNK_OBJECTS = 500

    def __init__(self, snapshot: Snapshot, flt: WatchFilter) -> None:
        self.snapshot = snapshot
        self.filter = flt
        self.revision = snapshot.revision
        self.bodies: list[bytes] = []  # framed changes of each SNAPSHOT message
        self.total_bytes = 0
        self.done = False
        self.error: BaseException | None = None
        self._progress = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._build(), name=f"snapshot-encode-{self.revision}")
        metrics.SNAPSHOT_ENCODINGS.inc()

    async def _build(self) -> None:
        try:
            pending: list[bytes] = []
            count = 0
            for content in self.snapshot.clusters:
                records: list = [content.status, *content.namespaces, *content.nodes, *content.pods]
                for record in records:
                    pending.append(wire.frame_change(wire.encode_change(record)))
                    count += 1
                    if count >= self.CHUNK_OBJECTS:
                        self._add(b"".join(pending))
                        pending, count = [], 0
                        await asyncio.sleep(0)
            if pending or not self.bodies:
                self._add(b"".join(pending))
        except Exception as e:  # pragma: no cover - encoding a valid record does not fail
            log.exception("Encoding the snapshot at revision %d failed", self.revision)
            self.error = e
        finally:
            self.done = True
            self._progress.set()

    def _add(self, body: bytes) -> None:
        self.bodies.append(body)
        self.total_bytes += len(body)
        self._progress.set()
        self._progress = asyncio.Event()

    async def messages(self, reset: bool) -> AsyncIterator[tuple[bytes, str]]:
        """Yield ``(message, kind)`` for one watcher (``reset`` marks the first SNAPSHOT)."""
        epoch, rev = self.filter.stream_epoch(self.snapshot.epoch), self.revision
        header = wire.encode_response(WR.SNAPSHOT, epoch, rev)
        i = 0
        while True:
            if i < len(self.bodies):
                head = wire.encode_response(WR.SNAPSHOT, epoch, rev, reset=True) if (i == 0 and reset) else header
                yield head + self.bodies[i], "SNAPSHOT"
                i += 1
                continue
            if self.done:
                break
            await self._progress.wait()
        if self.error is not None:
            raise RuntimeError(f"snapshot encoding failed: {self.error}")
        for content in self.snapshot.clusters:
            if content.status.synced:
                yield (
                    wire.encode_response(WR.CLUSTER_SYNCED, epoch, rev, cluster=content.status.cluster),
                    "CLUSTER_SYNCED",
                )
        yield wire.encode_response(WR.END_OF_SNAPSHOT, epoch, rev), "END_OF_SNAPSHOT"

    def cancel(self) -> None:
        self._task.cancel()
