"""Informers: keep the index equal to one cluster's Pods, Namespaces and Nodes.

Each kind is one instance of the shared reflector (:mod:`kube_ip_tracker.kube.reflector`) whose
store is the index: a full list is committed with :meth:`IndexWriter.replace` (so nothing the API
server no longer has survives), then watches from its resourceVersion apply each event, relisting
on 410 Gone.

Lists and watches are read as raw JSON (no client-model deserialization) and only the fields the
index needs are kept (see :mod:`kube_ip_tracker.kube.convert`). A :class:`ClusterSource` first reads the kube-system
namespace (its UID identifies the cluster), then runs the three informers and reports the
cluster's status (connected, synced, last error) to the index.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from kubernetes_asyncio import client

from kube_ip_tracker.kube.convert import fingerprint, object_key, to_record
from kube_ip_tracker.kube.kubeconfig import api_client
from kube_ip_tracker.kube.reflector import (
    ApiClientFactory,
    InformerOptions,
    Reflector,
    Resource,
    keep_connected,
    kube_system_uid,
    run_with_probe,
)
from kube_ip_tracker.model import ClusterSpec, IndexWriter, Kind, Record
from kube_ip_tracker.sources.status import KINDS, ClusterState

log = logging.getLogger(__name__)

PLURALS: dict[Kind, str] = {Kind.POD: "pods", Kind.NAMESPACE: "namespaces", Kind.NODE: "nodes"}
RESOURCES: dict[Kind, Resource] = {kind: Resource.core(plural) for kind, plural in PLURALS.items()}

Key = tuple[str, str]


def list_method(api: client.ApiClient, kind: Kind) -> Callable[..., Awaitable[Any]]:
    """The cluster-wide list (and watch) call of ``kind`` on the core/v1 API."""
    core = client.CoreV1Api(api)
    return {
        Kind.POD: core.list_pod_for_all_namespaces,
        Kind.NAMESPACE: core.list_namespace,
        Kind.NODE: core.list_node,
    }[kind]


class IndexStore:
    """The reflector store of one kind in one cluster: the index, through its writer.

    Objects are converted to records (:func:`kube_ip_tracker.kube.convert.to_record`) as they arrive; the store keeps
    fingerprints of what it put in the index, by (namespace, name): they skip no-op updates, and
    tell whether an object that stops qualifying (or is deleted) must be removed.
    """

    def __init__(self, cluster: str, kind: Kind, writer: IndexWriter) -> None:
        self.cluster = cluster
        self.kind = kind
        self.writer = writer
        self.indexed: dict[Key, int] = {}

    def __len__(self) -> int:
        return len(self.indexed)

    def replacement(self) -> IndexReplacement:
        return IndexReplacement(self)

    def upsert(self, obj: dict[str, Any]) -> None:
        record = to_record(self.kind, self.cluster, obj)
        if record is None:  # stopped qualifying
            self.delete(obj)
            return
        key = object_key(self.kind, obj)
        new = fingerprint(record)
        if self.indexed.get(key) == new:
            return  # nothing the index keeps has changed
        self.indexed[key] = new
        self.writer.upsert(record)

    def delete(self, obj: dict[str, Any]) -> None:
        key = object_key(self.kind, obj)
        if self.indexed.pop(key, None) is None:
            return  # was not indexed: nothing to remove
        self.writer.delete(self.kind, self.cluster, key[0], key[1])


class IndexReplacement:
    """A full list of one kind, converted as it arrives (only the kept fields of earlier pages stay in memory)."""

    def __init__(self, store: IndexStore) -> None:
        self.store = store
        self.records: dict[Key, Record] = {}

    def add(self, obj: dict[str, Any]) -> None:
        record = to_record(self.store.kind, self.store.cluster, obj)
        if record is not None:
            self.records[object_key(self.store.kind, obj)] = record

    def commit(self, resource_version: str) -> str:
        store = self.store
        store.writer.replace(store.cluster, store.kind, list(self.records.values()))
        removed = len(store.indexed.keys() - self.records.keys())
        store.indexed = {key: fingerprint(record) for key, record in self.records.items()}
        return f"{len(self.records)} indexed, {removed} stale removed"


def informer(
    cluster: str,
    kind: Kind,
    api: client.ApiClient | None,
    writer: IndexWriter,
    state: ClusterState,
    options: InformerOptions,
    first_list_reason: str = "initial",
) -> Reflector:
    """The reflector of one kind in one cluster into the index, reporting to the cluster's ``state``."""
    return Reflector(
        cluster,
        RESOURCES[kind],
        IndexStore(cluster, kind, writer),
        options,
        api=api,
        first_list_reason=first_list_reason,
        on_listed=lambda: state.kind_listed(kind),
        on_watching=lambda: state.kind_ok(kind),
        on_failure=lambda message: state.kind_failed(kind, message),
    )


@dataclass
class ClusterSource:
    """Connects to one cluster and runs its three informers until cancelled, reconnecting with backoff."""

    spec: ClusterSpec
    writer: IndexWriter
    options: InformerOptions = field(default_factory=InformerOptions)
    client_factory: ApiClientFactory = api_client
    previously_synced: bool = False

    def __post_init__(self) -> None:
        self.state = ClusterState(self.spec.cluster_id, self.writer, synced=self.previously_synced)
        self.informers: dict[Kind, Reflector] = {}

    @property
    def cluster(self) -> str:
        return self.spec.cluster_id

    @property
    def synced(self) -> bool:
        return self.state.synced

    async def run(self) -> None:
        """Connect, read the kube-system UID, run the informers; retry the whole on connection errors."""
        self.state.publish()
        sessions = 0

        async def session(api: client.ApiClient, connected: Callable[[], None]) -> None:
            nonlocal sessions
            sessions += 1
            uid = await kube_system_uid(api, self.options, self.options.request_timeout)
            log.info("Successfully connected to cluster %s (UID: %s). Starting informers...", self.cluster, uid)
            self.state.connect_ok(uid)
            connected()
            reason = "initial" if sessions == 1 else "reconnect"
            self.informers = {
                kind: informer(self.cluster, kind, api, self.writer, self.state, self.options, reason) for kind in KINDS
            }
            await run_with_probe(
                api, self.options, self.cluster, self.informers.values(), self.state.probe_failed, self.state.probe_ok
            )

        await keep_connected(
            self.spec, self.client_factory, self.options, session, self.state.connect_failed, kind="", what="connect"
        )
