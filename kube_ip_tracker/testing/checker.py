"""Convergence checker: compare an agent's mirror with the truth listed from every API server.

``await list_truth({"cluster-1": api_client, ...})`` lists Pods, Namespaces and Nodes of each API
server and converts them with the tracker's own converter (:mod:`kube_ip_tracker.kube.convert`),
so the truth has exactly the objects a correct tracker indexes (pods with IPs, not terminal), with
namespace labels stamped by the tracker's ``--cluster-labels`` rule (default ``enforce``).
``compare(mirror, truth)`` then checks object by object and returns a :class:`Diff`:

- ``missing``: in the API server, not in the mirror (a missed create, or a cluster not synced),
- ``extra``: in the mirror, gone from the API server (a missed delete),
- ``different``: in both, but a field differs (a missed update).

Usage (tests, benchmarks)::

    truth = await list_truth({c.name: api for c, api in clients})
    diff = compare(mirror, truth, clusters={"cluster-1"})
    assert not diff, diff.summary()
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from kubernetes_asyncio import client

from kube_ip_tracker.cluster_labels import DEFAULT_RULE, LabelRule, stamp
from kube_ip_tracker.kube.convert import to_record
from kube_ip_tracker.model import Kind, NamespaceRecord, NodeRecord, PodRecord
from kube_ip_tracker.sources.kube import list_method

Record = PodRecord | NamespaceRecord | NodeRecord


class MirrorLike(Protocol):
    """What the checker reads: the agent's :class:`~kube_ip_tracker.agent.store.AgentStore` has it."""

    def pods(self, cluster: str | None = None) -> Iterator[PodRecord]: ...

    def namespaces(self, cluster: str | None = None) -> Iterator[NamespaceRecord]: ...

    def nodes(self, cluster: str | None = None) -> Iterator[NodeRecord]: ...


@dataclass
class Truth:
    """Every indexed object of every listed cluster, by (kind, cluster, [namespace,] name)."""

    objects: dict[tuple[str, ...], Record] = field(default_factory=dict)
    clusters: set[str] = field(default_factory=set)

    def add(self, record: Record) -> None:
        self.objects[key(record)] = record

    def counts(self) -> dict[str, int]:
        out = {"pod": 0, "namespace": 0, "node": 0}
        for k in self.objects:
            out[k[0]] += 1
        return out


@dataclass
class Diff:
    """What a mirror gets wrong compared with the truth."""

    missing: list[tuple[str, ...]] = field(default_factory=list)
    extra: list[tuple[str, ...]] = field(default_factory=list)
    different: list[tuple[tuple[str, ...], str]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.missing or self.extra or self.different)

    def summary(self, limit: int = 10) -> str:
        """Counts and the first ``limit`` objects of each category."""
        if not self:
            return "mirror equals the truth"
        parts = []
        for name, items in (
            ("missing (missed creates)", self.missing),
            ("extra (missed deletes)", self.extra),
            ("different (missed updates)", self.different),
        ):
            if items:
                shown = "; ".join(str(i) for i in items[:limit])
                parts.append(f"{len(items)} {name}: {shown}{' ...' if len(items) > limit else ''}")
        return "\n".join(parts)


def key(record: Record) -> tuple[str, ...]:
    """(kind, cluster, namespace, name) of a pod, (kind, cluster, name) of a namespace or node."""
    if isinstance(record, PodRecord):
        return ("pod", record.cluster, record.namespace, record.name)
    if isinstance(record, NamespaceRecord):
        return ("namespace", record.cluster, record.name)
    return ("node", record.cluster, record.name)


async def _list_raw(api: client.ApiClient, kind: Kind) -> list[dict[str, Any]]:
    method = list_method(api, kind)
    items: list[dict[str, Any]] = []
    token = None
    while True:
        params: dict[str, Any] = {"limit": 500, "_preload_content": False}
        if token:
            params["_continue"] = token
        resp = await method(**params)
        body = json.loads(await resp.read())
        items.extend(body.get("items") or [])
        token = (body.get("metadata") or {}).get("continue")
        if not token:
            return items


async def list_truth(apis: Mapping[str, client.ApiClient], rule: LabelRule = DEFAULT_RULE) -> Truth:
    """List Pods, Namespaces and Nodes of every cluster (cluster id -> API client).

    ``rule`` is the trackers' ``--cluster-labels`` rule, applied to the namespaces as they apply it.
    """
    truth = Truth()
    for cluster, api in apis.items():
        truth.clusters.add(cluster)
        for kind in (Kind.POD, Kind.NAMESPACE, Kind.NODE):
            for obj in await _list_raw(api, kind):
                record = to_record(kind, cluster, obj)
                if isinstance(record, NamespaceRecord):
                    record = replace(record, labels=stamp(rule, cluster, record.labels)[0])
                if record is not None:
                    truth.add(record)  # type: ignore[arg-type]
    return truth


def _normal(record: Record) -> tuple[Any, ...]:
    """The compared fields: labels as sorted items (a mirror may hold them in another mapping type).

    A pod's uid is not compared: the agent store does not keep it (no verdict depends on it); a pod
    recreated under the same name differs in its creation timestamp.
    """
    if isinstance(record, PodRecord):
        return (
            sorted(record.labels.items()),
            tuple(record.ports),
            record.node,
            tuple(record.ips),
            record.creation_timestamp,
        )
    if isinstance(record, NamespaceRecord):
        return (sorted(record.labels.items()),)
    return (sorted(record.labels.items()), tuple(record.internal_ips))


def _fields(record: Record) -> str:
    return repr(_normal(record))


def mirror_objects(mirror: MirrorLike, clusters: Iterable[str]) -> dict[tuple[str, ...], Record]:
    """Every pod, namespace and node the mirror holds for ``clusters``."""
    out: dict[tuple[str, ...], Record] = {}
    for cluster in clusters:
        for record in (*mirror.pods(cluster), *mirror.namespaces(cluster), *mirror.nodes(cluster)):
            out[key(record)] = record
    return out


def compare(mirror: MirrorLike, truth: Truth, clusters: Collection[str] | None = None) -> Diff:
    """Compare the mirror with the truth for ``clusters`` (default: every listed cluster)."""
    wanted = set(truth.clusters if clusters is None else clusters)
    have = mirror_objects(mirror, wanted)
    want = {k: r for k, r in truth.objects.items() if k[1] in wanted}
    diff = Diff()
    for k, record in sorted(want.items()):
        got = have.get(k)
        if got is None:
            diff.missing.append(k)
        elif _normal(got) != _normal(record):
            diff.different.append((k, f"mirror {_fields(got)} != truth {_fields(record)}"))
    diff.extra = sorted(k for k in have if k not in want)
    return diff
