"""The local informers' writer stamps ClusterSet labels on namespaces (real Index behind it)."""

from __future__ import annotations

from kube_ip_tracker.cluster_labels import CLUSTER_LABEL, CLUSTER_NAME_LABEL, LabelRule, Mode
from kube_ip_tracker.index import Index
from kube_ip_tracker.model import Kind, NamespaceRecord, PodRecord
from kube_ip_tracker.sources.cluster_labels import ClusterLabelWriter

STAMPED = {CLUSTER_LABEL: "c1", CLUSTER_NAME_LABEL: "c1"}


def ns(name: str, labels: dict[str, str]) -> NamespaceRecord:
    return NamespaceRecord("c1", name, labels)


def labels(index: Index, name: str) -> dict[str, str] | None:
    record = index.namespace("c1", name)
    return None if record is None else dict(record.labels)


def test_upserts_and_lists_of_namespaces_are_stamped_other_kinds_untouched() -> None:
    index = Index()
    writer = ClusterLabelWriter(index, LabelRule(Mode.ENFORCE))
    writer.replace("c1", Kind.NAMESPACE, [ns("a", {}), ns("b", {CLUSTER_LABEL: "c2", "team": "b"})])
    assert labels(index, "a") == STAMPED and labels(index, "b") == {**STAMPED, "team": "b"}
    writer.upsert(ns("c", {CLUSTER_NAME_LABEL: "c9"}))
    assert labels(index, "c") == STAMPED
    assert writer.stamper.mismatched() == {("c1", "b"), ("c1", "c")}

    pod = PodRecord("c1", "a", "p", {CLUSTER_LABEL: "c2"}, (), "n", ("10.0.0.1",))
    writer.upsert(pod)
    assert index.pod("c1", "a", "p") == pod  # pod labels are the pod's own

    writer.delete(Kind.NAMESPACE, "c1", "", "c")
    assert index.namespace("c1", "c") is None and writer.stamper.mismatched() == {("c1", "b")}
    writer.remove_cluster("c1")
    assert index.namespace("c1", "a") is None and writer.stamper.mismatched() == set()


def test_stamped_label_maps_stay_shared_in_the_index() -> None:
    index = Index()
    writer = ClusterLabelWriter(index, LabelRule(Mode.ENFORCE))
    writer.replace("c1", Kind.NAMESPACE, [ns("a", {"team": "x"}), ns("b", {"team": "x"})])
    a, b = index.namespace("c1", "a"), index.namespace("c1", "b")
    assert a is not None and b is not None and a.labels is b.labels
