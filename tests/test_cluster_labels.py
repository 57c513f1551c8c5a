"""The ClusterSet label rule (:mod:`kube_ip_tracker.cluster_labels`): stamping and mismatch reports."""

from __future__ import annotations

import logging

import pytest

from kube_ip_tracker.cluster_labels import (
    CLUSTER_LABEL,
    CLUSTER_NAME_LABEL,
    LabelRule,
    Mismatch,
    Mode,
    NamespaceStamper,
    stamp,
)
from kube_ip_tracker.model import NamespaceRecord

ENFORCE, FILL, OFF = LabelRule(Mode.ENFORCE), LabelRule(Mode.FILL), LabelRule(Mode.OFF)
BOTH = {CLUSTER_LABEL: "c1", CLUSTER_NAME_LABEL: "c1"}


def test_missing_keys_are_set_in_enforce_and_fill() -> None:
    for rule in (ENFORCE, FILL):
        assert stamp(rule, "c1", {"team": "a"}) == ({"team": "a", **BOTH}, ())


def test_enforce_overwrites_another_cluster_id_and_reports_it() -> None:
    labels = {CLUSTER_LABEL: "c2", "team": "a"}
    served, mismatches = stamp(ENFORCE, "c1", labels)
    assert served == {"team": "a", **BOTH}
    assert mismatches == (Mismatch(CLUSTER_LABEL, "c2"),)
    assert labels == {CLUSTER_LABEL: "c2", "team": "a"}  # the input is not modified


def test_fill_keeps_another_value_reports_it_and_fills_the_other_key() -> None:
    served, mismatches = stamp(FILL, "c1", {CLUSTER_LABEL: ""})
    assert served == {CLUSTER_LABEL: "", CLUSTER_NAME_LABEL: "c1"}
    assert mismatches == (Mismatch(CLUSTER_LABEL, ""),)


@pytest.mark.parametrize("rule", [ENFORCE, FILL, OFF])
def test_labels_are_returned_as_they_are_when_nothing_changes(rule: LabelRule) -> None:
    labels = dict(BOTH)
    served, mismatches = stamp(rule, "c1", labels)
    assert served is labels and mismatches == ()


def test_off_passes_everything_through() -> None:
    labels = {CLUSTER_LABEL: "c2"}
    assert stamp(OFF, "c1", labels) == (labels, ())
    assert stamp(OFF, "c1", {}) == ({}, ())


def test_only_the_listed_keys_are_stamped() -> None:
    rule = LabelRule(Mode.ENFORCE, ("example.com/cluster",))
    assert stamp(rule, "c1", {CLUSTER_LABEL: "c2"}) == ({CLUSTER_LABEL: "c2", "example.com/cluster": "c1"}, ())


def test_the_rule_is_idempotent_and_enforce_after_fill_is_enforce() -> None:
    for rule in (ENFORCE, FILL):
        once, _ = stamp(rule, "c1", {CLUSTER_LABEL: "c2"})
        assert stamp(rule, "c1", once)[0] is once
    filled, _ = stamp(FILL, "c1", {CLUSTER_LABEL: "c2"})
    assert stamp(ENFORCE, "c1", filled)[0] == BOTH


def ns(name: str, labels: dict[str, str], cluster: str = "c1") -> NamespaceRecord:
    return NamespaceRecord(cluster, name, labels)


def test_stamper_reports_a_namespace_once_until_the_value_found_changes(caplog: pytest.LogCaptureFixture) -> None:
    counted: list[str] = []
    stamper = NamespaceStamper(ENFORCE, "tracker", counted.append)
    caplog.set_level(logging.WARNING, "kube_ip_tracker.cluster_labels")
    spoofed = ns("team-a", {CLUSTER_LABEL: "c2"})
    assert stamper.apply(spoofed).labels == BOTH
    assert stamper.apply(ns("team-a", {CLUSTER_LABEL: "c2", "x": "y"})).labels == {"x": "y", **BOTH}
    assert counted == ["c1"] and len(caplog.records) == 1
    message = caplog.records[0].getMessage()
    assert "Cluster c1: namespace team-a is labelled cluster.clusterset.k8s.io='c2'" in message
    assert "serving 'c1' instead (tracker --cluster-labels=enforce)" in message
    assert stamper.mismatched() == {("c1", "team-a")}

    stamper.apply(ns("team-a", {CLUSTER_LABEL: "c3"}))  # another value: reported again
    assert counted == ["c1", "c1"]
    stamper.apply(ns("team-a", {}))  # fixed, then spoofed again: reported again
    assert stamper.mismatched() == set()
    stamper.apply(spoofed)
    assert counted == ["c1"] * 3


def test_stamper_forgets_deleted_namespaces_and_clusters() -> None:
    counted: list[str] = []
    stamper = NamespaceStamper(FILL, "agent", counted.append)
    stamper.apply(ns("a", {CLUSTER_LABEL: "x"}))
    stamper.apply(ns("b", {CLUSTER_LABEL: "x"}))
    stamper.apply(ns("a", {CLUSTER_LABEL: "x"}, cluster="c2"))
    stamper.forget("c1", "a")
    assert stamper.mismatched() == {("c1", "b"), ("c2", "a")}
    assert [r.labels for r in stamper.apply_all("c1", [ns("c", {})])] == [BOTH]  # b is not listed any more
    assert stamper.mismatched() == {("c2", "a")}
    stamper.forget_cluster("c2")
    assert stamper.mismatched() == set()
    stamper.apply(ns("a", {CLUSTER_LABEL: "x"}))
    assert counted == ["c1", "c1", "c2", "c1"]


def test_stamper_returns_the_same_record_when_nothing_changes() -> None:
    record = ns("a", dict(BOTH))
    assert NamespaceStamper(ENFORCE, "tracker").apply(record) is record
    spoofed = ns("a", {CLUSTER_LABEL: "c2"})
    assert NamespaceStamper(OFF, "tracker").apply(spoofed) is spoofed


def test_a_cluster_id_that_is_not_a_label_value_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    stamper = NamespaceStamper(ENFORCE, "tracker")
    caplog.set_level(logging.ERROR, "kube_ip_tracker.cluster_labels")
    for name in ("a", "b"):
        stamper.apply(ns(name, {}, cluster="admin@kind"))
    assert len(caplog.records) == 1
    assert "Cluster id 'admin@kind' is not a valid label value" in caplog.records[0].getMessage()
