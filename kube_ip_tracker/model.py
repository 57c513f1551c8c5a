"""Records shared by the sources, the index, the server and the agent store.

Sources turn Kubernetes objects (or upstream tracker messages) into these records and hand them to
an :class:`IndexWriter`. Records are immutable, so one record can be shared by the index, the change
log and any encoder without copying.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol


class Kind(enum.Enum):
    """Object kinds held in the index."""

    POD = "pod"
    NAMESPACE = "namespace"
    NODE = "node"


@dataclass(slots=True, frozen=True)
class ContainerPort:
    name: str
    port: int
    protocol: str  # "TCP", "UDP" or "SCTP"


@dataclass(slots=True, frozen=True)
class PodRecord:
    cluster: str
    namespace: str
    name: str
    labels: Mapping[str, str]
    ports: tuple[ContainerPort, ...]
    node: str
    ips: tuple[str, ...]
    creation_timestamp: int = 0
    uid: str = ""

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.cluster, self.namespace, self.name)


@dataclass(slots=True, frozen=True)
class NamespaceRecord:
    cluster: str
    name: str
    labels: Mapping[str, str]

    @property
    def key(self) -> tuple[str, str]:
        return (self.cluster, self.name)


@dataclass(slots=True, frozen=True)
class NodeRecord:
    cluster: str
    name: str
    labels: Mapping[str, str]
    internal_ips: tuple[str, ...] = ()

    @property
    def key(self) -> tuple[str, str]:
        return (self.cluster, self.name)


@dataclass(slots=True, frozen=True)
class ClusterStatusRecord:
    cluster: str
    connected: bool = False
    synced: bool = False
    stale: bool = False
    last_error: str = ""
    kube_system_uid: str = ""
    via: tuple[str, ...] = ()


Record = PodRecord | NamespaceRecord | NodeRecord


class IndexWriter(Protocol):
    """What a source may do to the index. All calls are made from the event loop thread."""

    def upsert(self, record: Record) -> None:
        """Add or replace one object."""

    def delete(self, kind: Kind, cluster: str, namespace: str, name: str) -> None:
        """Remove one object (namespace is "" for cluster-scoped kinds). Unknown keys are ignored."""

    def replace(self, cluster: str, kind: Kind, records: Iterable[Record]) -> None:
        """Make the index hold exactly these objects of this kind for this cluster (after a list)."""

    def set_cluster_status(self, status: ClusterStatusRecord) -> None:
        """Record the status of a cluster (connected, synced, last error, path)."""

    def remove_cluster(self, cluster: str) -> None:
        """Drop a cluster and every object of it."""


TokenProvider = Callable[[], Awaitable[str]]


@dataclass(frozen=True)
class ClusterSpec:
    """How to reach one cluster's API server.

    Either ``kubeconfig`` (+ ``context``) names a kubeconfig file to load, or ``server`` with
    ``ca_pem`` and ``token_provider`` give the connection directly (GKE discovery).
    """

    cluster_id: str
    kubeconfig: str | None = None
    context: str | None = None
    server: str | None = None
    ca_pem: bytes | None = field(default=None, repr=False)
    token_provider: TokenProvider | None = field(default=None, repr=False, compare=False)
    in_cluster: bool = False
