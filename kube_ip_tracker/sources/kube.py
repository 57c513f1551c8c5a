"""Informers: keep the index equal to one cluster's Pods, Namespaces and Nodes.

Each kind runs the shared reflector loop (:mod:`kube_ip_tracker.kube.reflector`): a paginated list
applied with :meth:`IndexWriter.replace` (so nothing the API server no longer has survives), then
watches from its resourceVersion, relisting on 410 Gone.

Lists and watches are read as raw JSON (no client-model deserialization) and only the fields the
index needs are kept (see :mod:`.convert`). A :class:`ClusterSource` first reads the kube-system
namespace (its UID identifies the cluster), then runs the three informers and reports the
cluster's status (connected, synced, last error) to the index.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from kubernetes_asyncio import client

from kube_ip_tracker.backoff import Backoff
from kube_ip_tracker.kube import metrics as reflector_metrics
from kube_ip_tracker.kube.errors import ResourceExpired, WatchError, describe_error
from kube_ip_tracker.kube.kubeconfig import api_client
from kube_ip_tracker.kube.reflector import (
    ApiClientFactory,
    InformerOptions,
    Reflector,
    apply_events,
    kube_system_uid,
    liveness_probe,
    open_response,
    paginated_list,
    watch_request,
)
from kube_ip_tracker.model import ClusterSpec, IndexWriter, Kind, Record
from kube_ip_tracker.sources.convert import fingerprint, object_key, to_record
from kube_ip_tracker.sources.status import KINDS, ClusterState

log = logging.getLogger(__name__)

PLURALS: dict[Kind, str] = {Kind.POD: "pods", Kind.NAMESPACE: "namespaces", Kind.NODE: "nodes"}


def list_method(api: client.ApiClient, kind: Kind) -> Callable[..., Awaitable[Any]]:
    """The cluster-wide list (and watch) call of ``kind`` on the core/v1 API."""
    core = client.CoreV1Api(api)
    return {
        Kind.POD: core.list_pod_for_all_namespaces,
        Kind.NAMESPACE: core.list_namespace,
        Kind.NODE: core.list_node,
    }[kind]


async def _open(
    api: client.ApiClient, kind: Kind, client_timeout: aiohttp.ClientTimeout, **params: Any
) -> aiohttp.ClientResponse:
    """Start a list or watch request for ``kind`` and return the unread response (raises on non-2xx)."""
    return await open_response(list_method(api, kind), client_timeout, **params)


class Informer(Reflector):
    """The list/watch loop of one kind in one cluster, applied to the index."""

    def __init__(
        self,
        cluster: str,
        kind: Kind,
        api: client.ApiClient,
        writer: IndexWriter,
        state: ClusterState,
        options: InformerOptions,
        first_list_reason: str = "initial",
    ) -> None:
        self.first_list_reason = first_list_reason
        self.cluster = cluster
        self.kind = kind
        self.plural = PLURALS[kind]
        self.api = api
        self.writer = writer
        self.state = state
        self.options = options
        self.resource_version: str | None = None
        # Fingerprints of what this informer put in the index, by (namespace, name): skips no-op
        # updates, and tells whether an object that stops qualifying (or is deleted) must be removed.
        self.indexed: dict[tuple[str, str], int] = {}
        self._rng = random.Random()
        self._objects_gauge = reflector_metrics.OBJECTS.labels(cluster, self.plural)
        self._event_counters = {
            etype: reflector_metrics.EVENTS.labels(cluster, self.plural, etype)
            for etype in ("ADDED", "MODIFIED", "DELETED", "BOOKMARK", "ERROR")
        }

    def failed(self, message: str) -> None:
        self.state.kind_failed(self.kind, message)

    async def list(self, reason: str) -> None:
        """Paginated list, then make the index hold exactly the listed objects."""
        timeout = aiohttp.ClientTimeout(total=self.options.request_timeout, sock_connect=self.options.connect_timeout)
        # Pages are converted as they arrive, so only the kept fields of earlier pages stay in memory.
        records: dict[tuple[str, str], Record] = {}
        listed = 0

        def restart() -> None:
            nonlocal listed
            records.clear()
            listed = 0

        def collect(obj: dict[str, Any]) -> None:
            nonlocal listed
            listed += 1
            record = to_record(self.kind, self.cluster, obj)
            if record is not None:
                records[object_key(self.kind, obj)] = record

        def open_page(token: str | None) -> Awaitable[aiohttp.ClientResponse]:
            return _open(self.api, self.kind, timeout, limit=self.options.page_size, _continue=token)

        resource_version = await paginated_list(
            open_page, collect, restart, f"Cluster {self.cluster}: list of {self.plural}"
        )
        self.writer.replace(self.cluster, self.kind, list(records.values()))
        removed = len(self.indexed.keys() - records.keys())
        self.indexed = {key: fingerprint(record) for key, record in records.items()}
        self.resource_version = resource_version
        reflector_metrics.RELISTS.labels(self.cluster, self.plural, reason).inc()
        self._objects_gauge.set(len(records))
        log.log(
            logging.DEBUG if reason == "initial" else logging.INFO,
            "Cluster %s: listed %d %s (%d indexed, %d stale removed) at resourceVersion %s (%s)",
            self.cluster,
            listed,
            self.plural,
            len(records),
            removed,
            resource_version,
            reason,
        )
        self.state.kind_listed(self.kind)

    async def watch(self) -> int:
        """One watch request from the current resourceVersion, applied until the server ends it; returns the event count."""
        timeout, params = watch_request(self.options, self._rng, self.resource_version)
        resp = await _open(self.api, self.kind, timeout, **params)
        reflector_metrics.WATCHES.labels(self.cluster, self.plural).inc()
        self.state.kind_ok(self.kind)
        return await apply_events(resp, self.handle_event)

    def handle_event(self, event: dict[str, Any]) -> None:
        """Apply one watch event to the index and advance the resourceVersion."""
        etype = event.get("type")
        obj = event.get("object") or {}
        if etype == "ERROR":
            code, message = obj.get("code"), obj.get("message") or obj.get("reason") or ""
            self._event_counters["ERROR"].inc()
            if code == 410:
                raise ResourceExpired(message)
            raise WatchError(code, message)
        counter = self._event_counters.get(str(etype))
        (counter or reflector_metrics.EVENTS.labels(self.cluster, self.plural, str(etype))).inc()
        rv = (obj.get("metadata") or {}).get("resourceVersion")
        if etype in ("ADDED", "MODIFIED", "DELETED"):
            self._apply(etype, obj)
        elif etype != "BOOKMARK":
            log.warning("Cluster %s: ignoring watch event of unknown type %r for %s", self.cluster, etype, self.plural)
        if rv:
            self.resource_version = rv

    def _apply(self, etype: str, obj: dict[str, Any]) -> None:
        key = object_key(self.kind, obj)
        record = None if etype == "DELETED" else to_record(self.kind, self.cluster, obj)
        if record is None:
            if self.indexed.pop(key, None) is None:
                return  # was not indexed: nothing to remove
            self.writer.delete(self.kind, self.cluster, key[0], key[1])
        else:
            new = fingerprint(record)
            if self.indexed.get(key) == new:
                return  # nothing the index keeps has changed
            self.indexed[key] = new
            self.writer.upsert(record)
        self._objects_gauge.set(len(self.indexed))


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
        self.informers: dict[Kind, Informer] = {}

    @property
    def cluster(self) -> str:
        return self.spec.cluster_id

    @property
    def synced(self) -> bool:
        return self.state.synced

    async def run(self) -> None:
        """Connect, read the kube-system UID, run the informers; retry the whole on connection errors."""
        backoff = Backoff(self.options.backoff_base, self.options.backoff_cap)
        self.state.publish()
        reason = "initial"
        while True:
            try:
                async with self.client_factory(self.spec) as api:
                    uid = await kube_system_uid(api, self.options, self.options.request_timeout)
                    log.info("Successfully connected to cluster %s (UID: %s). Starting informers...", self.cluster, uid)
                    self.state.connect_ok(uid)
                    backoff.reset()
                    async with asyncio.TaskGroup() as group:
                        for kind in KINDS:
                            informer = Informer(self.cluster, kind, api, self.writer, self.state, self.options, reason)
                            self.informers[kind] = informer
                            group.create_task(informer.run(), name=f"informer-{self.cluster}-{informer.plural}")
                        probe = liveness_probe(
                            api, self.options, self.cluster, self.state.probe_failed, self.state.probe_ok
                        )
                        group.create_task(probe, name=f"probe-{self.cluster}")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                label, message = describe_error(exc, "connect")
                reflector_metrics.ERRORS.labels(self.cluster, "", label).inc()
                reason = "reconnect"
                self.state.connect_failed(message)
                delay = backoff.next_delay()
                log.error("Cannot connect to cluster %s: %s; retrying in %.1fs", self.cluster, message, delay)
                if label == "other":
                    log.debug("Cluster %s: unexpected error details", self.cluster, exc_info=exc)
                await asyncio.sleep(delay)
