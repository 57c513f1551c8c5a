"""The Grafana dashboard (manifests/dashboards/) queries only metrics the tracker and the agent export,
with labels those metrics have."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

import kube_ip_tracker.agent.cli
import kube_ip_tracker.agent.run
import kube_ip_tracker.cli  # noqa: F401  (importing the programs registers every metric they export)
from kube_ip_tracker.model import Kind

DASHBOARD = Path(__file__).resolve().parents[2] / "manifests" / "dashboards" / "kube-ip-tracker.json"
OUR_METRIC = re.compile(r"\b(kube_ip_[a-z0-9_]+)\b")
BY_CLAUSE = re.compile(r"\bby\s*\(([^)]*)\)")
ADDED_BY_PROMETHEUS = {"instance", "job", "le"}
# Label values a query may filter on, where the code has a fixed set.
KNOWN_VALUES = {"kind": {k.value for k in Kind}, "result": {"allow", "deny"}}


def exported() -> dict[str, set[str]]:
    """Every sample name of our collectors (``_total``, ``_bucket``... included) with its label names."""
    names: dict[str, set[str]] = {}
    for collector, samples in REGISTRY._collector_to_names.items():  # type: ignore[attr-defined]
        labels = set(getattr(collector, "_labelnames", ()) or ())
        if not labels:  # a custom collector: the labels of the families it yields
            for family in collector.collect():
                labels |= set(getattr(family, "_labelnames", ()))
        for name in samples:
            if name.startswith("kube_ip_"):
                names[name] = labels | ({"le"} if name.endswith("_bucket") else set())
    return names


def panels() -> list[dict[str, object]]:
    return [p for p in json.loads(DASHBOARD.read_text())["panels"] if p["type"] != "row"]


def test_the_dashboard_is_grafana_json_with_panels_for_both_programs() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["schemaVersion"] >= 36
    assert [v["name"] for v in dashboard["templating"]["list"]] == ["datasource"]
    rows = [p["title"] for p in dashboard["panels"] if p["type"] == "row"]
    assert rows == ["Tracker", "Node agent"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in panels():
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24, panel["title"]


@pytest.mark.parametrize("panel", panels(), ids=lambda p: p["title"])
def test_every_query_names_exported_metrics_and_their_labels(panel: dict[str, object]) -> None:
    metrics = exported()
    for target in panel["targets"]:  # type: ignore[attr-defined]
        expr = target["expr"]
        assert expr.count("(") == expr.count(")") and expr.count("[") == expr.count("]"), expr
        used = OUR_METRIC.findall(expr)
        assert used, f"{panel['title']}: {expr} names no kube_ip_ metric"
        unknown = sorted(set(used) - set(metrics))
        assert not unknown, f"{panel['title']}: not exported: {', '.join(unknown)}"
        labels = set().union(*(metrics[name] for name in used)) | ADDED_BY_PROMETHEUS
        for clause in BY_CLAUSE.findall(expr):
            grouped = {label.strip() for label in clause.split(",") if label.strip()}
            assert grouped <= labels, f"{panel['title']}: {expr} groups by {sorted(grouped - labels)}"
        for label, value in re.findall(r'[{,]\s*([a-z_]+)="([^"]*)"', expr):
            assert label in labels, f"{panel['title']}: {expr} filters on {label}"
            if label in KNOWN_VALUES:
                assert value in KNOWN_VALUES[label], f"{panel['title']}: {expr}: no {label} is {value!r}"


def test_the_check_sees_a_metric_that_is_not_exported() -> None:
    assert "kube_ip_agent_decisions_total" in exported()
    assert "kube_ip_agent_no_such_thing_total" not in exported()
    assert "kube_ip_agent_dataplane_decision_seconds_bucket" in exported()
