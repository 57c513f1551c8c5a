"""Typed change notifications the :class:`~.store.AgentStore` sends to its listeners.

Listeners receive the events of one applied message (or of one whole snapshot) as one batch, after
the store's state already reflects them, so a listener may read the store while handling them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from kube_ip_tracker.model import ClusterStatusRecord, NamespaceRecord, NodeRecord, PodRecord


@dataclass(frozen=True, slots=True)
class PodUpserted:
    pod: PodRecord
    previous: PodRecord | None


@dataclass(frozen=True, slots=True)
class PodDeleted:
    pod: PodRecord


@dataclass(frozen=True, slots=True)
class NamespaceUpserted:
    namespace: NamespaceRecord
    previous: NamespaceRecord | None


@dataclass(frozen=True, slots=True)
class NamespaceDeleted:
    namespace: NamespaceRecord


@dataclass(frozen=True, slots=True)
class NodeUpserted:
    node: NodeRecord
    previous: NodeRecord | None


@dataclass(frozen=True, slots=True)
class NodeDeleted:
    node: NodeRecord


@dataclass(frozen=True, slots=True)
class ClusterStatusUpdated:
    status: ClusterStatusRecord
    previous: ClusterStatusRecord | None


@dataclass(frozen=True, slots=True)
class ClusterRemoved:
    """The cluster and all its objects are gone (their deletions come in the same batch)."""

    cluster: str


@dataclass(frozen=True, slots=True)
class SnapshotApplied:
    """A full snapshot replaced the state ("reset done"); the batch holds the differences it made."""

    epoch: str
    revision: int
    reset: bool


@dataclass(frozen=True, slots=True)
class Ready:
    """The store holds a complete state for the first time."""

    epoch: str
    revision: int


MirrorEvent = (
    PodUpserted
    | PodDeleted
    | NamespaceUpserted
    | NamespaceDeleted
    | NodeUpserted
    | NodeDeleted
    | ClusterStatusUpdated
    | ClusterRemoved
    | SnapshotApplied
    | Ready
)

Listener = Callable[[Sequence[MirrorEvent]], None]
