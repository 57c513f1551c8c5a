"""An in-memory IndexWriter that records every call, for source tests."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from kube_ip_tracker.model import ClusterStatusRecord, Kind, NamespaceRecord, NodeRecord, PodRecord, Record


def _kind_of(record: Record) -> Kind:
    if isinstance(record, PodRecord):
        return Kind.POD
    if isinstance(record, NamespaceRecord):
        return Kind.NAMESPACE
    assert isinstance(record, NodeRecord)
    return Kind.NODE


def _key(record: Record) -> tuple[str, str, str]:
    if isinstance(record, PodRecord):
        return record.key
    return (record.cluster, "", record.name)


@dataclass
class RecordingWriter:
    """Holds objects like the index does and logs calls as tuples (method, details...)."""

    objects: dict[Kind, dict[tuple[str, str, str], Record]] = field(default_factory=lambda: {kind: {} for kind in Kind})
    status: dict[str, ClusterStatusRecord] = field(default_factory=dict)
    calls: list[tuple[Any, ...]] = field(default_factory=list)

    def upsert(self, record: Record) -> None:
        self.objects[_kind_of(record)][_key(record)] = record
        self.calls.append(("upsert", record))

    def delete(self, kind: Kind, cluster: str, namespace: str, name: str) -> None:
        self.objects[kind].pop((cluster, namespace, name), None)
        self.calls.append(("delete", kind, cluster, namespace, name))

    def replace(self, cluster: str, kind: Kind, records: Iterable[Record]) -> None:
        records = list(records)
        table = self.objects[kind]
        for key in [k for k in table if k[0] == cluster]:
            del table[key]
        for record in records:
            assert record.cluster == cluster
            table[_key(record)] = record
        self.calls.append(("replace", cluster, kind, len(records)))

    def set_cluster_status(self, status: ClusterStatusRecord) -> None:
        self.status[status.cluster] = status
        self.calls.append(("status", status))

    def remove_cluster(self, cluster: str) -> None:
        for table in self.objects.values():
            for key in [k for k in table if k[0] == cluster]:
                del table[key]
        self.status.pop(cluster, None)
        self.calls.append(("remove_cluster", cluster))

    # ------------------------------------------------------------------ queries for tests

    def pods(self, cluster: str | None = None) -> dict[tuple[str, str], PodRecord]:
        return {
            (k[1], k[2]): r  # type: ignore[misc]
            for k, r in self.objects[Kind.POD].items()
            if cluster is None or k[0] == cluster
        }

    def pod(self, cluster: str, namespace: str, name: str) -> PodRecord | None:
        return self.objects[Kind.POD].get((cluster, namespace, name))  # type: ignore[return-value]

    def namespace(self, cluster: str, name: str) -> NamespaceRecord | None:
        return self.objects[Kind.NAMESPACE].get((cluster, "", name))  # type: ignore[return-value]

    def node(self, cluster: str, name: str) -> NodeRecord | None:
        return self.objects[Kind.NODE].get((cluster, "", name))  # type: ignore[return-value]
