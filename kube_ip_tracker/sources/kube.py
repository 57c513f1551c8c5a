"""Informers: keep the index equal to one cluster's Pods, Namespaces and Nodes.

Each kind runs a reflector loop, like client-go's:

1. a paginated list (``limit``/``continue``, a consistent read), applied with
   :meth:`IndexWriter.replace` so nothing the API server no longer has survives;
2. a watch from the list's resourceVersion with bookmarks and a server-side timeout; when it ends
   the watch is reopened from the last resourceVersion seen (objects and bookmarks advance it);
3. on 410 Gone (an HTTP 410 or a watch ERROR event with code 410) the resourceVersion is too old:
   back to 1 (relist and reconcile);
4. any other error: exponential backoff with jitter, then watch again from the last resourceVersion
   (or list again if no list has succeeded yet).

Lists and watches are read as raw JSON (no client-model deserialization) and only the fields the
index needs are kept (see :mod:`.convert`). A :class:`ClusterSource` first reads the kube-system
namespace (its UID identifies the cluster), then runs the three informers and reports the
cluster's status (connected, synced, last error) to the index.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from kube_ip_tracker.model import ClusterSpec, IndexWriter, Kind, Record
from kube_ip_tracker.sources import metrics
from kube_ip_tracker.sources.backoff import Backoff
from kube_ip_tracker.sources.convert import fingerprint, object_key, to_record
from kube_ip_tracker.sources.errors import ConnectError, ProbeFailed, ResourceExpired, WatchError, describe_error
from kube_ip_tracker.sources.kubeconfig import api_client
from kube_ip_tracker.sources.status import KINDS, ClusterState

log = logging.getLogger(__name__)

PLURALS: dict[Kind, str] = {Kind.POD: "pods", Kind.NAMESPACE: "namespaces", Kind.NODE: "nodes"}

ApiClientFactory = Callable[[ClusterSpec], contextlib.AbstractAsyncContextManager[client.ApiClient]]


@dataclass(frozen=True)
class InformerOptions:
    """Tuning of the list/watch loops (seconds unless noted)."""

    page_size: int = 500
    # Server-side watch timeout; each watch uses a random value in [watch_timeout, 2 * watch_timeout).
    watch_timeout: float = 300.0
    # Client-side limits: connecting, a list page or a get, silence on a watch beyond its timeout.
    connect_timeout: float = 10.0
    request_timeout: float = 60.0
    watch_read_margin: float = 30.0
    backoff_base: float = 0.5
    backoff_cap: float = 30.0
    # Liveness probe (GET kube-system) while connected: a frozen API server can keep watches open
    # and silent; failed probes mark the cluster disconnected, and this many in a row reconnect.
    probe_interval: float = 30.0
    probe_timeout: float = 10.0
    probe_failures_to_reconnect: int = 3


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


async def open_response(
    method: Callable[..., Any], client_timeout: aiohttp.ClientTimeout, **params: Any
) -> aiohttp.ClientResponse:
    """Call a kubernetes_asyncio list method (list or watch) and return the unread response (raises on non-2xx).

    Parameters that are None are left out.
    """
    params = {k: v for k, v in params.items() if v is not None}
    resp: aiohttp.ClientResponse = await method(**params, _preload_content=False, _request_timeout=client_timeout)
    if not 200 <= resp.status <= 299:
        try:
            body = await resp.read()
        finally:
            resp.release()
        exc = ApiException(status=resp.status, reason=resp.reason)
        exc.body = body.decode("utf-8", "replace")
        raise exc
    return resp


async def response_lines(resp: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    """Newline-delimited chunks of a streaming response body."""
    pending = bytearray()
    async for chunk in resp.content.iter_any():
        pending += chunk
        start = 0
        while (end := pending.find(b"\n", start)) >= 0:
            if end > start:
                yield bytes(pending[start:end])
            start = end + 1
        del pending[:start]
    if pending.strip():
        yield bytes(pending)


async def paginated_list(
    open_page: Callable[[str | None], Awaitable[aiohttp.ClientResponse]],
    collect: Callable[[dict[str, Any]], None],
    restart: Callable[[], None],
    what: str,
) -> str:
    """Read every page of a list (``open_page(continue_token)``), handing each item to ``collect``.

    When a continue token expires (410) between pages, ``restart()`` is called and the list starts
    over (three attempts in all). Returns the list's resourceVersion.
    """
    for attempt in range(3):
        token: str | None = None
        try:
            while True:
                resp = await open_page(token)
                try:
                    page = json.loads(await resp.read())
                finally:
                    resp.release()
                for obj in page.get("items") or []:
                    collect(obj)
                meta = page.get("metadata") or {}
                token = meta.get("continue") or None
                if token is None:
                    return str(meta.get("resourceVersion") or "")
        except ApiException as exc:
            if exc.status == 410 and token is not None and attempt < 2:
                log.info("%s expired between pages; listing again", what)
                restart()
                continue
            raise
    raise AssertionError("unreachable: the last attempt returns or raises")


def watch_request(
    options: InformerOptions, rng: random.Random, resource_version: str | None
) -> tuple[aiohttp.ClientTimeout, dict[str, Any]]:
    """Client timeout and parameters of one watch from ``resource_version``: bookmarks, and a server-side
    timeout drawn from [watch_timeout, 2 * watch_timeout) so many watches do not all end at once."""
    server_timeout = int(options.watch_timeout * (1 + rng.random())) or 1
    timeout = aiohttp.ClientTimeout(
        sock_connect=options.connect_timeout, sock_read=server_timeout + options.watch_read_margin
    )
    params = {
        "watch": True,
        "resource_version": resource_version,
        "allow_watch_bookmarks": True,
        "timeout_seconds": server_timeout,
    }
    return timeout, params


async def apply_events(resp: aiohttp.ClientResponse, handle: Callable[[dict[str, Any]], None]) -> int:
    """Hand each event of a watch response to ``handle`` until the stream ends; returns the event count."""
    events = 0
    try:
        async for line in response_lines(resp):
            handle(json.loads(line))
            events += 1
    finally:
        resp.close()
    return events


class Reflector:
    """The list/watch loop of one resource in one cluster (see the module docstring).

    Subclasses set ``cluster``, ``plural``, ``options``, ``resource_version`` (None: list first) and
    ``first_list_reason``, and implement :meth:`list`, :meth:`watch` and :meth:`failed`.
    """

    cluster: str
    plural: str
    options: InformerOptions
    resource_version: str | None
    first_list_reason: str

    async def list(self, reason: str) -> None:
        """List everything and reconcile; sets ``resource_version``."""
        raise NotImplementedError

    async def watch(self) -> int:
        """One watch from ``resource_version`` until it ends; returns the number of events."""
        raise NotImplementedError

    def failed(self, message: str) -> None:
        """A list or watch failed for another reason than an expired resourceVersion."""

    async def run(self) -> None:
        """List and watch until cancelled."""
        backoff = Backoff(self.options.backoff_base, self.options.backoff_cap)
        reason = self.first_list_reason
        expired_in_a_row = 0
        while True:
            try:
                if self.resource_version is None:
                    await self.list(reason)
                started = asyncio.get_running_loop().time()
                if await self.watch() == 0 and asyncio.get_running_loop().time() - started < 1.0:
                    # Ended at once without a single event: do not spin, but it is no error either.
                    await asyncio.sleep(backoff.next_delay())
                    continue
                backoff.reset()
                expired_in_a_row = 0
                metrics.BACKOFF.labels(self.cluster, self.plural).set(0)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                label, message = describe_error(
                    exc, f"{'list' if self.resource_version is None else 'watch'} {self.plural}"
                )
                metrics.ERRORS.labels(self.cluster, self.plural, label).inc()
                if label == "expired":
                    # Too old to resume: relist at once (with backoff only if it keeps happening).
                    log.info("Cluster %s: %s; relisting", self.cluster, message)
                    self.resource_version = None
                    reason = "expired"
                    expired_in_a_row += 1
                    if expired_in_a_row < 2:
                        continue
                else:
                    self.failed(message)
                delay = backoff.next_delay()
                metrics.BACKOFF.labels(self.cluster, self.plural).set(delay)
                level = logging.DEBUG if label == "expired" else logging.WARNING
                log.log(level, "Cluster %s: %s; retrying in %.1fs", self.cluster, message, delay)
                if label == "other":
                    log.debug("Cluster %s: unexpected error details", self.cluster, exc_info=exc)
                await asyncio.sleep(delay)


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
        self._objects_gauge = metrics.OBJECTS.labels(cluster, self.plural)
        self._event_counters = {
            etype: metrics.EVENTS.labels(cluster, self.plural, etype)
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
        metrics.RELISTS.labels(self.cluster, self.plural, reason).inc()
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
        metrics.WATCHES.labels(self.cluster, self.plural).inc()
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
        (counter or metrics.EVENTS.labels(self.cluster, self.plural, str(etype))).inc()
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
                metrics.ERRORS.labels(self.cluster, "", label).inc()
                reason = "reconnect"
                self.state.connect_failed(message)
                delay = backoff.next_delay()
                log.error("Cannot connect to cluster %s: %s; retrying in %.1fs", self.cluster, message, delay)
                if label == "other":
                    log.debug("Cluster %s: unexpected error details", self.cluster, exc_info=exc)
                await asyncio.sleep(delay)


async def liveness_probe(
    api: client.ApiClient,
    options: InformerOptions,
    cluster: str,
    on_failure: Callable[[str], None],
    on_recovery: Callable[[], None],
) -> None:
    """Read kube-system every ``probe_interval`` until cancelled (a frozen API server can keep watches
    open and silent): each failure is logged and reported with ``on_failure(message)``, the first
    success after failures with ``on_recovery()``; ``probe_failures_to_reconnect`` failures in a row
    raise :class:`ProbeFailed`, so the caller reconnects."""
    failures = 0
    while True:
        await asyncio.sleep(options.probe_interval)
        try:
            await kube_system_uid(api, options, options.probe_timeout)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            failures += 1
            message = f"liveness probe failed: {describe_error(exc, 'get namespace kube-system')[1]}"
            log.warning("Cluster %s: %s (%d in a row)", cluster, message, failures)
            on_failure(message)
            if failures >= options.probe_failures_to_reconnect:
                raise ProbeFailed(f"{failures} liveness probes in a row; last {message}") from exc
        else:
            if failures:
                log.info("Cluster %s: liveness probe succeeded again", cluster)
                on_recovery()
            failures = 0


async def kube_system_uid(api: client.ApiClient, options: InformerOptions, total: float) -> str:
    """The UID of the kube-system namespace (within ``total`` seconds); :class:`ConnectError` says why not."""
    timeout = aiohttp.ClientTimeout(total=total, sock_connect=min(total, options.connect_timeout))
    try:
        ns = await client.CoreV1Api(api).read_namespace("kube-system", _request_timeout=timeout)
    except ApiException as exc:
        _, message = describe_error(exc, "get namespace kube-system")
        raise ConnectError(message) from exc
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        _, message = describe_error(exc, f"get namespace kube-system from {api.configuration.host}")
        raise ConnectError(message) from exc
    return str(ns.metadata.uid or "")
