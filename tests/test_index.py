"""The in-memory index: changes, batches, change log, reconcile, IP ownership, lookups."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import REGISTRY

from kube_ip_tracker.index import Batch, Index
from kube_ip_tracker.model import ClusterStatusRecord, ContainerPort, Kind, NamespaceRecord, NodeRecord, PodRecord


def pod(
    name: str, ip: str | None = "10.0.0.1", *, cluster: str = "a", ts: int = 100, ns: str = "default", **kw
) -> PodRecord:
    return PodRecord(
        cluster=cluster,
        namespace=ns,
        name=name,
        labels=kw.get("labels", {"app": name}),
        ports=(ContainerPort("http", 80, "TCP"),),
        node=kw.get("node", "node-1"),
        ips=(ip,) if ip else (),
        creation_timestamp=ts,
        uid=f"uid-{cluster}-{name}",
    )


def collect(index: Index) -> list[Batch]:
    batches: list[Batch] = []
    index.subscribe(batches.append)
    return batches


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_changes_bump_revision_and_identical_upsert_is_no_change() -> None:
    index = Index()
    batches = collect(index)
    index.set_cluster_status(ClusterStatusRecord("a", connected=True))
    index.upsert(pod("web"))
    index.upsert(pod("web"))  # identical
    index.upsert(NamespaceRecord("a", "default", {"t": "1"}))
    index.upsert(NamespaceRecord("a", "default", {"t": "1"}))
    index.set_cluster_status(ClusterStatusRecord("a", connected=True))
    assert index.revision == 3
    assert len(batches) == 1 and [c.revision for c in batches[0].changes] == [1, 2, 3]


def test_namespace_label_change_is_one_change() -> None:
    index = Index()
    index.upsert(NamespaceRecord("a", "default", {"team": "x"}))
    for i in range(50):
        index.upsert(pod(f"p{i}", f"10.0.0.{i + 1}"))
    before = index.revision
    batches = collect(index)
    index.upsert(NamespaceRecord("a", "default", {"team": "y"}))
    assert index.revision == before + 1
    (change,) = batches[0].changes
    assert change.record == NamespaceRecord("a", "default", {"team": "y"}) and not change.deleted


def test_first_object_of_a_cluster_creates_its_status_first() -> None:
    index = Index()
    batches = collect(index)
    index.upsert(pod("web"))
    index.flush()
    kinds = [type(c.record).__name__ for c in batches[0].changes]
    assert kinds == ["ClusterStatusRecord", "PodRecord"]
    assert index.cluster_status("a") == ClusterStatusRecord("a")


def test_pod_without_ips_is_not_indexed_and_losing_ips_deletes() -> None:
    index = Index()
    index.upsert(pod("pending", None))
    assert index.revision == 0 and index.cluster_names() == []
    index.upsert(pod("web", "10.0.0.1"))
    index.flush()
    batches = collect(index)
    index.upsert(pod("web", None))
    index.flush()
    (change,) = batches[0].changes
    assert change.deleted and change.record.name == "web"
    assert index.get_pod_by_ip("10.0.0.1") is None and index.pod("a", "default", "web") is None


async def test_writes_of_one_loop_turn_are_one_batch() -> None:
    index = Index()
    batches = collect(index)
    for i in range(10):
        index.upsert(pod(f"p{i}", f"10.0.0.{i + 1}"))
    assert batches == []  # committed on the next loop iteration
    await asyncio.sleep(0)
    assert len(batches) == 1 and batches[0].first_revision == 1 and batches[0].revision == 11
    index.delete(Kind.POD, "a", "default", "p0")
    await asyncio.sleep(0)
    assert len(batches) == 2 and batches[1].first_revision == 12 == batches[1].revision


def test_replace_reconciles_and_emits_only_real_changes() -> None:
    index = Index()
    index.replace("a", Kind.POD, [pod("keep", "10.0.0.1"), pod("change", "10.0.0.2"), pod("gone", "10.0.0.3")])
    index.replace("a", Kind.NODE, [NodeRecord("a", "n1", {}), NodeRecord("a", "n2", {})])
    index.replace("a", Kind.NAMESPACE, [NamespaceRecord("a", "default", {})])
    index.flush()
    batches = collect(index)
    index.replace("a", Kind.POD, [pod("keep", "10.0.0.1"), pod("change", "10.0.0.9"), pod("new", "10.0.0.4")])
    index.replace("a", Kind.NODE, [NodeRecord("a", "n1", {})])
    index.replace("a", Kind.NAMESPACE, [NamespaceRecord("a", "default", {})])
    index.flush()
    got = {(c.record.name, c.deleted) for c in batches[0].changes}
    assert got == {("change", False), ("new", False), ("gone", True), ("n2", True)}
    assert {p.name for p in index.pods()} == {"keep", "change", "new"}
    assert index.get_pod_by_ip("10.0.0.3") is None and index.get_pod_by_ip("10.0.0.2") is None
    (info,) = index.clusters()
    assert (info.pods, info.namespaces, info.nodes) == (3, 1, 1)


def test_replace_rejects_records_of_another_cluster_or_kind() -> None:
    index = Index()
    with pytest.raises(ValueError, match="cluster 'b'"):
        index.replace("a", Kind.POD, [pod("x", cluster="b")])
    with pytest.raises(ValueError, match="NodeRecord"):
        index.replace("a", Kind.POD, [NodeRecord("a", "n", {})])


def test_remove_cluster_is_one_change_and_drops_everything() -> None:
    index = Index()
    for c in ("a", "b"):
        index.set_cluster_status(ClusterStatusRecord(c, synced=True))
        index.upsert(NamespaceRecord(c, "default", {}))
        index.upsert(NodeRecord(c, "node-1", {}))
        index.upsert(pod("web", "10.0.0.1" if c == "a" else "10.1.0.1", cluster=c))
    index.flush()
    batches = collect(index)
    index.remove_cluster("b")
    index.remove_cluster("unknown")
    index.flush()
    (change,) = batches[0].changes
    assert change.deleted and change.record == ClusterStatusRecord("b")
    assert index.cluster_names() == ["a"] and index.get_pod_by_ip("10.1.0.1") is None
    assert list(index.pods("b")) == [] and index.node("b", "node-1") is None


def test_ip_conflict_newest_wins_and_older_claim_is_restored() -> None:
    index = Index()
    conflicts = metric("kube_ip_tracker_index_ip_conflicts_total")
    index.upsert(pod("old", "10.0.0.1", ts=100))
    index.upsert(pod("new", "10.0.0.1", ts=200, cluster="b"))
    assert index.get_pod_by_ip("10.0.0.1")[0].name == "new"  # type: ignore[index]
    index.upsert(pod("older", "10.0.0.1", ts=50, cluster="c"))
    assert index.get_pod_by_ip("10.0.0.1")[0].name == "new"  # type: ignore[index]
    assert metric("kube_ip_tracker_index_ip_conflicts_total") == conflicts + 2 and index.ip_conflicts == 1
    index.delete(Kind.POD, "b", "default", "new")
    assert index.get_pod_by_ip("10.0.0.1")[0].name == "old"  # type: ignore[index]
    index.remove_cluster("a")
    assert index.get_pod_by_ip("10.0.0.1")[0].name == "older"  # type: ignore[index]
    assert index.ip_conflicts == 0


def test_get_pod_by_ip_returns_namespace_and_node() -> None:
    index = Index()
    index.upsert(NamespaceRecord("a", "default", {"team": "x"}))
    index.upsert(pod("web", "fd00::5", node="node-9"))
    p, ns, node = index.get_pod_by_ip("fd00::5")  # type: ignore[misc]
    assert p.name == "web" and ns is not None and ns.labels == {"team": "x"} and node is None
    index.upsert(NodeRecord("a", "node-9", {"zone": "z"}))
    assert index.get_pod_by_ip("fd00::5")[2].name == "node-9"  # type: ignore[index]


def test_change_log_resume_and_bounds() -> None:
    index = Index(log_size=10)
    for i in range(4):  # four batches of 3 changes (first has the implicit status)
        index.upsert(pod(f"p{i}", f"10.0.0.{i + 1}"))
        index.upsert(pod(f"q{i}", f"10.0.1.{i + 1}"))
        if i == 0:
            index.flush()
        else:
            index.upsert(pod(f"r{i}", f"10.0.2.{i + 1}"))
            index.flush()
    assert index.revision == 12
    # 12 changes > 10: the oldest batch (revisions 1-3) is gone.
    assert index.log_first_revision == 4
    assert index.changes_since(2) is None
    batches = index.changes_since(5)
    assert batches is not None and [c.revision for b in batches for c in b.changes] == list(range(6, 13))
    assert index.changes_since(3) is not None and index.changes_since(12) == []
    with pytest.raises(ValueError, match="revision 13 is ahead"):
        index.changes_since(13)


def test_epoch_is_new_per_index_and_strings_are_shared() -> None:
    assert Index().epoch != Index().epoch
    index = Index()
    a = pod("a1", "10.0.0.1", labels={"app": "web", "tier": "x"})
    b = pod("a2", "10.0.0.2", labels={"app": "web", "tier": "x"})
    index.upsert(a)
    index.upsert(b)
    stored_a, stored_b = index.pod("a", "default", "a1"), index.pod("a", "default", "a2")
    assert stored_a is not None and stored_b is not None
    assert stored_a.labels is stored_b.labels and stored_a.ports is stored_b.ports
    assert stored_a == a


def test_cluster_status_and_counts_metrics() -> None:
    index = Index()
    index.set_cluster_status(ClusterStatusRecord("metrics-c", connected=True, synced=True))
    index.upsert(pod("web", "10.7.0.1", cluster="metrics-c"))
    index.flush()
    assert metric("kube_ip_tracker_index_objects", cluster="metrics-c", kind="pod") == 1
    (info,) = index.clusters()
    assert info.status.synced and info.pods == 1 and info.last_change_time > 0
    index.remove_cluster("metrics-c")
    index.flush()
    assert REGISTRY.get_sample_value("kube_ip_tracker_index_objects", {"cluster": "metrics-c", "kind": "pod"}) is None


def test_snapshot_is_consistent_copy() -> None:
    index = Index()
    index.set_cluster_status(ClusterStatusRecord("a", synced=True))
    index.upsert(NamespaceRecord("a", "default", {}))
    index.upsert(pod("web"))
    snap = index.snapshot()
    index.upsert(pod("later", "10.0.0.2"))
    assert snap.revision == 3 and [p.name for p in snap.clusters[0].pods] == ["web"]
    assert snap.object_count() == 3
