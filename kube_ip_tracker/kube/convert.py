"""Turn Kubernetes API objects (decoded JSON, camelCase keys) into records.

Shared by the tracker's informers (records for the index) and the agent's watch of its node's pods,
so both see a pod the same way. Only the fields the index needs are kept. A pod is indexed when it
has at least one IP, is not ``hostNetwork`` (its IP is the node's) and is not terminal (phase
Succeeded or Failed: its IP may already belong to another pod). A pod being deleted
(``deletionTimestamp`` set) stays indexed until it is gone or terminal, because it still owns its IP
while it shuts down.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from kube_ip_tracker.model import ContainerPort, Kind, NamespaceRecord, NodeRecord, PodRecord, Record

TERMINAL_PHASES = frozenset({"Succeeded", "Failed"})


def parse_timestamp(value: str | None) -> int:
    """RFC 3339 timestamp (``2024-05-01T10:00:00Z``) to Unix seconds; 0 when absent or malformed."""
    if not value:
        return 0
    try:
        return int(dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp())
    except ValueError:
        return 0


def _labels(meta: Mapping[str, Any]) -> dict[str, str]:
    return {str(k): str(v) for k, v in (meta.get("labels") or {}).items()}


def _ports(spec: Mapping[str, Any]) -> tuple[ContainerPort, ...]:
    containers = list(spec.get("containers") or [])
    # Sidecars (init containers that keep running) serve traffic too.
    containers += [c for c in spec.get("initContainers") or [] if c.get("restartPolicy") == "Always"]
    ports: list[ContainerPort] = []
    for container in containers:
        for port in container.get("ports") or []:
            number = port.get("containerPort")
            if not isinstance(number, int):
                continue
            protocol = port.get("protocol") or "TCP"
            ports.append(ContainerPort(name=port.get("name") or "", port=number, protocol=protocol))
    return tuple(ports)


def pod_ips(status: Mapping[str, Any]) -> tuple[str, ...]:
    """status.podIPs in order (primary first), falling back to status.podIP."""
    ips = tuple(entry["ip"] for entry in status.get("podIPs") or [] if entry.get("ip"))
    if not ips and status.get("podIP"):
        ips = (status["podIP"],)
    return ips


def pod_record(cluster: str, obj: Mapping[str, Any]) -> PodRecord | None:
    """The record of a pod, or None when the pod must not be in the index."""
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    if spec.get("hostNetwork") or status.get("phase") in TERMINAL_PHASES:
        return None
    ips = pod_ips(status)
    if not ips:
        return None
    return PodRecord(
        cluster=cluster,
        namespace=meta.get("namespace") or "",
        name=meta.get("name") or "",
        labels=_labels(meta),
        ports=_ports(spec),
        node=spec.get("nodeName") or "",
        ips=ips,
        creation_timestamp=parse_timestamp(meta.get("creationTimestamp")),
        uid=meta.get("uid") or "",
    )


def namespace_record(cluster: str, obj: Mapping[str, Any]) -> NamespaceRecord:
    """The record of a namespace (name and labels)."""
    meta = obj.get("metadata") or {}
    return NamespaceRecord(cluster=cluster, name=meta.get("name") or "", labels=_labels(meta))


def node_record(cluster: str, obj: Mapping[str, Any]) -> NodeRecord:
    """The record of a node (name, labels, InternalIP addresses)."""
    meta = obj.get("metadata") or {}
    addresses = (obj.get("status") or {}).get("addresses") or []
    internal = tuple(a["address"] for a in addresses if a.get("type") == "InternalIP" and a.get("address"))
    return NodeRecord(cluster=cluster, name=meta.get("name") or "", labels=_labels(meta), internal_ips=internal)


def to_record(kind: Kind, cluster: str, obj: Mapping[str, Any]) -> Record | None:
    """Dispatch on kind; None means "not indexed" (the source deletes it if it was)."""
    if kind is Kind.POD:
        return pod_record(cluster, obj)
    if kind is Kind.NAMESPACE:
        return namespace_record(cluster, obj)
    return node_record(cluster, obj)


def object_key(kind: Kind, obj: Mapping[str, Any]) -> tuple[str, str]:
    """(namespace, name) of an object; namespace is "" for cluster-scoped kinds."""
    meta = obj.get("metadata") or {}
    namespace = (meta.get("namespace") or "") if kind is Kind.POD else ""
    return namespace, meta.get("name") or ""


def fingerprint(record: Record) -> int:
    """A hash of everything the index keeps of a record: equal records have equal fingerprints.

    Sources remember fingerprints instead of records to skip no-op updates without holding a
    second copy of every object (the index holds the records).
    """
    labels = frozenset(record.labels.items())
    if isinstance(record, PodRecord):
        return hash((labels, record.ports, record.node, record.ips, record.creation_timestamp, record.uid))
    if isinstance(record, NodeRecord):
        return hash((labels, record.internal_ips))
    return hash(labels)
