"""The convergence checker itself: it must see every kind of divergence (else the churn test proves nothing)."""

from __future__ import annotations

from kube_ip_tracker.agent.store import AgentStore
from kube_ip_tracker.client.sink import Delete, Upsert
from kube_ip_tracker.model import ContainerPort, Kind, NamespaceRecord, NodeRecord, PodRecord
from kube_ip_tracker.testing.checker import Truth, compare


def pod(name: str, ip: str, cluster: str = "c1", labels: dict[str, str] | None = None) -> PodRecord:
    return PodRecord(
        cluster, "ns", name, labels or {"app": name}, (ContainerPort("http", 80, "TCP"),), "n1", (ip,), 5, f"uid-{name}"
    )


def world() -> list[PodRecord | NamespaceRecord | NodeRecord]:
    return [
        NamespaceRecord("c1", "ns", {"team": "a"}),
        NodeRecord("c1", "n1", {"zone": "z"}, ("192.0.2.1",)),
        pod("a", "10.0.0.1"),
        pod("b", "10.0.0.2"),
        pod("x", "10.1.0.1", cluster="c2"),
    ]


def mirror_of(records: list[PodRecord | NamespaceRecord | NodeRecord]) -> AgentStore:
    mirror = AgentStore()
    snap = mirror.begin_snapshot("e1", reset=False)
    snap.add([Upsert(r) for r in records])
    snap.commit(1)
    return mirror


def truth_of(records: list[PodRecord | NamespaceRecord | NodeRecord], clusters: set[str]) -> Truth:
    truth = Truth(clusters=clusters)
    for r in records:
        truth.add(r)
    return truth


def test_equal_mirror_passes_and_each_divergence_is_named() -> None:
    truth = truth_of(world(), {"c1", "c2"})
    mirror = mirror_of(world())
    assert not compare(mirror, truth)

    mirror.apply_delta(
        [
            Delete(Kind.POD, "c1", "ns", "a"),  # a missed create (from the truth's view: missing)
            Upsert(pod("gone", "10.0.0.9")),  # a missed delete
            Upsert(pod("b", "10.0.0.2", labels={"app": "old"})),  # a missed update
            Upsert(NamespaceRecord("c1", "ns", {"team": "old"})),
        ],
        2,
    )
    diff = compare(mirror, truth)
    assert diff.missing == [("pod", "c1", "ns", "a")]
    assert diff.extra == [("pod", "c1", "ns", "gone")]
    assert [k for k, _ in diff.different] == [("namespace", "c1", "ns"), ("pod", "c1", "ns", "b")]
    summary = diff.summary()
    assert "1 missing" in summary and "1 extra (missed deletes)" in summary and "2 different" in summary


def test_only_the_given_clusters_are_compared() -> None:
    truth = truth_of(world(), {"c1", "c2"})
    mirror = mirror_of([r for r in world() if r.cluster == "c1"])
    assert compare(mirror, truth).missing == [("pod", "c2", "ns", "x")]
    assert not compare(mirror, truth, clusters={"c1"})
