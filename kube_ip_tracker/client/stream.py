"""One Watch stream's protocol state machine: message order, epoch and revision checks.

A :class:`WatchSession` is fed the ``WatchResponse`` messages of one stream, checks them against
the order the proto documents (``SNAPSHOT* CLUSTER_SYNCED* END_OF_SNAPSHOT (DELTA|PROGRESS)*``,
or ``END_OF_SNAPSHOT (DELTA|PROGRESS)*`` for a resumed stream) and drives an
:class:`~.sink.ApplySink`. Anything that would leave the sink out of step with the tracker (a gap in
revisions, a message out of order, an epoch change) raises :class:`ResyncRequired`: the client then
drops its resume point and reconnects for a full snapshot, which replaces the sink's state.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from kube_ip_tracker import wire
from kube_ip_tracker.api.v1 import tracker_pb2 as pb
from kube_ip_tracker.client.sink import (
    ApplySink,
    ClusterStatusChange,
    Delete,
    RecordChange,
    SnapshotBuilder,
    Upsert,
    WireSnapshotBuilder,
)
from kube_ip_tracker.model import Kind

log = logging.getLogger(__name__)

WR = pb.WatchResponse


class ResyncRequired(Exception):
    """The stream cannot be trusted to continue the sink's state; a full snapshot is needed."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


def decode_change(change: pb.Change) -> RecordChange:
    """Turn one wire ``Change`` into a record change; raise ``ValueError`` if no object is set."""
    which = change.WhichOneof("object")
    if which == "pod":
        p = change.pod
        if change.deleted:
            return Delete(Kind.POD, p.cluster, p.namespace, p.name)
        return Upsert(wire.pod_from_proto(p))
    if which == "namespace":
        n = change.namespace
        if change.deleted:
            return Delete(Kind.NAMESPACE, n.cluster, "", n.name)
        return Upsert(wire.namespace_from_proto(n))
    if which == "node":
        n = change.node
        if change.deleted:
            return Delete(Kind.NODE, n.cluster, "", n.name)
        return Upsert(wire.node_from_proto(n))
    if which == "cluster":
        return ClusterStatusChange(wire.cluster_status_from_proto(change.cluster), deleted=change.deleted)
    raise ValueError("Change message has no object set")


def decode_changes(changes: Iterable[pb.Change]) -> list[RecordChange]:
    """Decode a message's changes, in order."""
    return [decode_change(c) for c in changes]


class Phase(enum.Enum):
    START = "start"
    SNAPSHOT = "snapshot"
    LIVE = "live"


@dataclass(frozen=True, slots=True)
class Applied:
    """What one message did, for the caller's logs and metrics."""

    kind: str
    changes: int
    snapshot_committed: bool = False
    resumed: bool = False


class WatchSession:
    """Applies one stream's messages to a sink, starting from an optional resume point.

    ``checked_continuity`` is true when the watcher sees every change (no cluster filter, no
    tracker id): then each DELTA must start right after the revision already applied.
    """

    def __init__(
        self,
        sink: ApplySink,
        *,
        resume_epoch: str = "",
        resume_revision: int = 0,
        checked_continuity: bool = True,
    ) -> None:
        self._sink = sink
        self._resume_epoch = resume_epoch
        self._resume_revision = resume_revision
        self._checked = checked_continuity
        self._phase = Phase.START
        self._builder: SnapshotBuilder | None = None
        self._wire_builder: WireSnapshotBuilder | None = None  # the same builder, when it decodes itself
        self.epoch = resume_epoch
        self.revision = resume_revision
        self.reset_seen = False

    @property
    def live(self) -> bool:
        """END_OF_SNAPSHOT was received: the sink holds a complete state of ``epoch``."""
        return self._phase is Phase.LIVE

    def handle(self, msg: pb.WatchResponse) -> Applied:
        """Apply one message; raise :class:`ResyncRequired` if the stream broke the protocol."""
        kind = WR.Kind.Name(msg.kind) if msg.kind in WR.Kind.values() else str(msg.kind)
        if self._phase is Phase.LIVE:
            return self._handle_live(msg, kind)
        if msg.kind == WR.SNAPSHOT:
            builder = self._begin(msg)
            if self._wire_builder is not None:
                try:
                    return Applied(kind, self._wire_builder.add_message(msg))
                except ValueError as e:
                    raise ResyncRequired("protocol", str(e)) from e
            changes = self._decode(msg.changes)
            builder.add(changes)
            return Applied(kind, len(changes))
        if msg.kind == WR.CLUSTER_SYNCED:
            if not msg.cluster:
                raise ResyncRequired("protocol", "CLUSTER_SYNCED without a cluster")
            self._begin(msg).cluster_synced(msg.cluster)
            return Applied(kind, 0)
        if msg.kind == WR.END_OF_SNAPSHOT:
            return self._end_of_snapshot(msg, kind)
        raise ResyncRequired("protocol", f"{kind} before END_OF_SNAPSHOT")

    def _begin(self, msg: pb.WatchResponse) -> SnapshotBuilder:
        if self._builder is None:
            if not msg.epoch:
                raise ResyncRequired("protocol", "snapshot without an epoch")
            if self._resume_epoch and not msg.reset:
                log.warning("Tracker sent a snapshot without reset to a resuming watcher; replacing state anyway")
            self.reset_seen = msg.reset
            self.epoch = msg.epoch
            self._builder = self._sink.begin_snapshot(msg.epoch, msg.reset)
            self._wire_builder = self._builder if isinstance(self._builder, WireSnapshotBuilder) else None
            self._phase = Phase.SNAPSHOT
        elif msg.epoch and msg.epoch != self.epoch:
            raise ResyncRequired("epoch", f"epoch changed from {self.epoch} to {msg.epoch} inside a snapshot")
        return self._builder

    def _end_of_snapshot(self, msg: pb.WatchResponse, kind: str) -> Applied:
        if self._phase is Phase.START and self._resume_epoch:
            if msg.epoch != self._resume_epoch:
                raise ResyncRequired(
                    "epoch", f"resume from epoch {self._resume_epoch} answered by epoch {msg.epoch} without a snapshot"
                )
            if msg.revision < self._resume_revision:
                raise ResyncRequired(
                    "revision", f"resume from revision {self._resume_revision} answered at revision {msg.revision}"
                )
            # Only a filtered watcher may be moved forward: it does not see every revision.
            if not self._checked:
                self.revision = msg.revision
            self._phase = Phase.LIVE
            return Applied(kind, 0, resumed=True)
        builder = self._begin(msg)  # a snapshot with no entries is a valid (empty) snapshot
        builder.commit(msg.revision)
        self._builder = self._wire_builder = None
        self.revision = msg.revision
        self._phase = Phase.LIVE
        return Applied(kind, 0, snapshot_committed=True)

    def _handle_live(self, msg: pb.WatchResponse, kind: str) -> Applied:
        if msg.epoch and msg.epoch != self.epoch:
            raise ResyncRequired("epoch", f"{kind} of epoch {msg.epoch} on a stream of epoch {self.epoch}")
        if msg.kind == WR.DELTA:
            first = msg.first_revision or (msg.revision - len(msg.changes) + 1)
            if self._checked and first != self.revision + 1:
                raise ResyncRequired("gap", f"DELTA starts at revision {first}, expected {self.revision + 1}")
            if first <= self.revision or msg.revision < first:
                raise ResyncRequired(
                    "revision", f"DELTA {first}..{msg.revision} does not follow revision {self.revision}"
                )
            changes = self._decode(msg.changes)
            self._sink.apply_delta(changes, msg.revision)
            self.revision = msg.revision
            return Applied(kind, len(changes))
        if msg.kind == WR.PROGRESS:
            if msg.revision < self.revision:
                raise ResyncRequired("revision", f"PROGRESS to {msg.revision} behind revision {self.revision}")
            if self._checked and msg.revision > self.revision:
                raise ResyncRequired("gap", f"PROGRESS to {msg.revision} skips changes after {self.revision}")
            self.revision = msg.revision
            return Applied(kind, 0)
        raise ResyncRequired("protocol", f"{kind} after END_OF_SNAPSHOT")

    @staticmethod
    def _decode(changes: Sequence[pb.Change]) -> list[RecordChange]:
        try:
            return decode_changes(changes)
        except ValueError as e:
            raise ResyncRequired("protocol", str(e)) from e
