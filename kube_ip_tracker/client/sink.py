"""The apply-sink interface between a Watch stream and whatever holds the watched state.

The stream side (:mod:`.stream`, :mod:`.client`) speaks the wire protocol: message order, epochs,
revisions, resume, gaps. It hands decoded record changes to an :class:`ApplySink` and nothing else,
so the same client can feed

* the agent's :class:`~kube_ip_tracker.agent.store.AgentStore` (the evaluator's world), or
* a tracker's index when it watches an upstream hub tracker: an implementation stages the snapshot
  per (cluster, kind) and, on commit, calls ``IndexWriter.replace`` for each of them,
  ``set_cluster_status`` for every status, and ``remove_cluster`` for the clusters it fed before
  that the snapshot no longer has; deltas map one to one onto ``upsert``/``delete``/
  ``set_cluster_status``/``remove_cluster``.

Contract:

* ``begin_snapshot`` starts a full snapshot. Everything up to ``SnapshotBuilder.commit`` is staged;
  the live state is untouched until then, and on commit it is replaced as a whole (what the
  snapshot does not hold is deleted). A builder that is dropped without commit (the stream broke)
  must leave no trace.
* ``apply_delta`` applies changes to the live state, in order. Deletes of unknown keys are ignored.
* All calls come from the event loop thread, one at a time.

A builder may also decode the wire messages itself (:class:`WireSnapshotBuilder`): the session then
hands it each SNAPSHOT message instead of decoded changes, so a sink that keeps its own compact form
(the agent store) skips building a record per object. The index sink does not need this.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from kube_ip_tracker.api.v1 import tracker_pb2 as pb
from kube_ip_tracker.model import ClusterStatusRecord, Kind, Record


@dataclass(frozen=True, slots=True)
class Upsert:
    """Add or replace a pod, namespace or node."""

    record: Record


@dataclass(frozen=True, slots=True)
class Delete:
    """Remove a pod, namespace or node by key (namespace is "" for namespaces and nodes)."""

    kind: Kind
    cluster: str
    namespace: str
    name: str


@dataclass(frozen=True, slots=True)
class ClusterStatusChange:
    """A cluster's status changed; with ``deleted`` the cluster and all its objects are gone."""

    status: ClusterStatusRecord
    deleted: bool = False


RecordChange = Upsert | Delete | ClusterStatusChange


class SnapshotBuilder(Protocol):
    """A snapshot being received; invisible to readers until :meth:`commit`."""

    def add(self, changes: Sequence[RecordChange]) -> None:
        """Stage snapshot entries (upserts and cluster statuses)."""

    def cluster_synced(self, cluster: str) -> None:
        """The snapshot holds a complete list of this cluster."""

    def commit(self, revision: int) -> None:
        """Replace the live state with the staged one, atomically for readers."""


@runtime_checkable
class WireSnapshotBuilder(SnapshotBuilder, Protocol):
    """A snapshot builder that decodes the wire's changes itself."""

    def add_message(self, msg: pb.WatchResponse) -> int:
        """Stage the changes of one SNAPSHOT message, as :meth:`add` would their decoded form;
        returns how many there were. ``ValueError`` for a change that cannot be decoded."""


class ApplySink(Protocol):
    """Where a Watch stream's state goes (the agent store, or a tracker index fed by an upstream)."""

    def begin_snapshot(self, epoch: str, reset: bool) -> SnapshotBuilder:
        """Start staging a full snapshot of tracker ``epoch`` (``reset``: the tracker said state must be dropped)."""

    def apply_delta(self, changes: Sequence[RecordChange], revision: int) -> None:
        """Apply live changes; ``revision`` is the tracker revision once they are applied."""
