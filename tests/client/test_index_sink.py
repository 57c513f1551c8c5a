"""IndexWriterSink: a watch stream applied through the IndexWriter interface (upstream-tracker use)."""

from __future__ import annotations

from collections.abc import Iterable

from kube_ip_tracker.client.index_sink import IndexWriterSink
from kube_ip_tracker.client.stream import WatchSession
from kube_ip_tracker.model import ClusterStatusRecord, Kind, Record
from kube_ip_tracker.testing.messages import (
    BASE,
    EPOCH,
    delta,
    end,
    namespace,
    pod,
    pod_deleted,
    snapshot,
    status,
    synced,
)
from kube_ip_tracker.wire import record_kind


class DictIndex:
    """A plain-dict IndexWriter: the state the writer calls describe, for comparison."""

    def __init__(self) -> None:
        self.objects: dict[tuple[Kind, str, str, str], Record] = {}
        self.statuses: dict[str, ClusterStatusRecord] = {}
        self.calls: list[str] = []

    @staticmethod
    def _key(record: Record) -> tuple[Kind, str, str, str]:
        return (record_kind(record), record.cluster, getattr(record, "namespace", ""), record.name)

    def upsert(self, record: Record) -> None:
        self.calls.append("upsert")
        self.objects[self._key(record)] = record

    def delete(self, kind: Kind, cluster: str, namespace: str, name: str) -> None:
        self.calls.append("delete")
        self.objects.pop((kind, cluster, namespace, name), None)

    def replace(self, cluster: str, kind: Kind, records: Iterable[Record]) -> None:
        self.calls.append(f"replace {cluster} {kind.value}")
        for key in [k for k in self.objects if k[0] is kind and k[1] == cluster]:
            del self.objects[key]
        for r in records:
            self.objects[self._key(r)] = r

    def set_cluster_status(self, status: ClusterStatusRecord) -> None:
        self.calls.append(f"status {status.cluster}")
        self.statuses[status.cluster] = status

    def remove_cluster(self, cluster: str) -> None:
        self.calls.append(f"remove {cluster}")
        self.statuses.pop(cluster, None)
        for key in [k for k in self.objects if k[1] == cluster]:
            del self.objects[key]

    def names(self, kind: Kind) -> set[tuple[str, str]]:
        return {(k[1], k[3]) for k in self.objects if k[0] is kind}


def test_snapshot_replaces_per_cluster_and_kind_and_drops_vanished_clusters() -> None:
    index = DictIndex()
    sink = IndexWriterSink(index)
    session = WatchSession(sink)
    session.handle(snapshot([*BASE, status("b"), pod("x", ["10.1.0.1"], cluster="b")], 5))
    assert index.calls == []  # staged until END_OF_SNAPSHOT
    session.handle(synced("a", 5))
    session.handle(end(5))
    assert index.names(Kind.POD) == {("a", "web"), ("a", "db"), ("b", "x")}
    assert set(index.statuses) == {"a", "b"}
    assert index.calls.index("replace a namespace") < index.calls.index("replace a pod")
    session.handle(delta(6, [pod_deleted("db"), namespace("extra"), status("b", deleted=True)]))
    assert index.names(Kind.POD) == {("a", "web")}
    assert index.names(Kind.NAMESPACE) == {("a", "default"), ("a", "extra")}
    assert set(index.statuses) == {"a"} and sink.clusters == {"a"}
    # Upstream restarted with cluster c only: a is removed, c replaces.
    index.calls.clear()
    session = WatchSession(sink, resume_epoch=EPOCH, resume_revision=8)
    session.handle(snapshot([status("c"), pod("y", ["10.2.0.1"], cluster="c")], 2, reset=True, epoch="epoch-2"))
    session.handle(end(2, epoch="epoch-2"))
    assert "remove a" in index.calls
    assert index.names(Kind.POD) == {("c", "y")} and set(index.statuses) == {"c"}
