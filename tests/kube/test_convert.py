"""Kubernetes objects (JSON dicts) to index records."""

from __future__ import annotations

from typing import Any

from kube_ip_tracker.kube.convert import object_key, parse_timestamp, pod_record, to_record
from kube_ip_tracker.model import ContainerPort, Kind, NamespaceRecord, NodeRecord, PodRecord


def pod(**overrides: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "metadata": {
            "name": "web-0",
            "namespace": "demo",
            "uid": "u-1",
            "labels": {"app": "web"},
            "creationTimestamp": "2024-05-01T10:00:00Z",
            "managedFields": [{"manager": "kubelet"}],
        },
        "spec": {
            "nodeName": "node-1",
            "containers": [
                {
                    "name": "main",
                    "ports": [{"name": "http", "containerPort": 80}, {"containerPort": 53, "protocol": "UDP"}],
                }
            ],
            "initContainers": [
                {"name": "sidecar", "restartPolicy": "Always", "ports": [{"containerPort": 9090, "protocol": "SCTP"}]},
                {"name": "setup", "ports": [{"containerPort": 1234}]},
            ],
        },
        "status": {"phase": "Running", "podIP": "10.0.0.1", "podIPs": [{"ip": "10.0.0.1"}, {"ip": "fd00::1"}]},
    }
    for path, value in overrides.items():
        section, key = path.split("__")
        obj[section][key] = value
    return obj


def test_pod_keeps_only_indexed_fields() -> None:
    record = pod_record("c1", pod())
    assert record == PodRecord(
        cluster="c1",
        namespace="demo",
        name="web-0",
        labels={"app": "web"},
        ports=(
            ContainerPort("http", 80, "TCP"),
            ContainerPort("", 53, "UDP"),
            ContainerPort("", 9090, "SCTP"),
        ),
        node="node-1",
        ips=("10.0.0.1", "fd00::1"),
        creation_timestamp=1714557600,
        uid="u-1",
    )


def test_pod_ip_falls_back_to_pod_ip() -> None:
    record = pod_record("c1", pod(status__podIPs=None))
    assert record is not None and record.ips == ("10.0.0.1",)


def test_excluded_pods() -> None:
    assert pod_record("c1", pod(spec__hostNetwork=True)) is None
    assert pod_record("c1", pod(status__phase="Succeeded")) is None
    assert pod_record("c1", pod(status__phase="Failed")) is None
    assert pod_record("c1", pod(status__podIP=None, status__podIPs=[])) is None


def test_terminating_pod_stays_until_terminal() -> None:
    assert pod_record("c1", pod(metadata__deletionTimestamp="2024-05-01T11:00:00Z")) is not None
    obj = pod(metadata__deletionTimestamp="2024-05-01T11:00:00Z", status__phase="Succeeded")
    assert pod_record("c1", obj) is None


def test_namespace_and_node() -> None:
    ns = {"metadata": {"name": "demo", "labels": {"team": "a"}}}
    assert to_record(Kind.NAMESPACE, "c1", ns) == NamespaceRecord("c1", "demo", {"team": "a"})
    node = {
        "metadata": {"name": "n1", "labels": {"zone": "z"}},
        "status": {
            "addresses": [
                {"type": "Hostname", "address": "n1"},
                {"type": "InternalIP", "address": "192.0.2.1"},
                {"type": "ExternalIP", "address": "203.0.113.1"},
                {"type": "InternalIP", "address": "fd00::10"},
            ]
        },
    }
    assert to_record(Kind.NODE, "c1", node) == NodeRecord("c1", "n1", {"zone": "z"}, ("192.0.2.1", "fd00::10"))
    assert to_record(Kind.NODE, "c1", {"metadata": {"name": "bare"}}) == NodeRecord("c1", "bare", {}, ())
    assert object_key(Kind.NODE, node) == ("", "n1")
    assert object_key(Kind.POD, pod()) == ("demo", "web-0")


def test_parse_timestamp() -> None:
    assert parse_timestamp("1970-01-01T00:01:00Z") == 60
    assert parse_timestamp(None) == 0
    assert parse_timestamp("yesterday") == 0
