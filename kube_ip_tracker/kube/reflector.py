"""The reflector: one resource of one cluster kept in step with a store, like client-go's.

A :class:`Reflector` is composed, not subclassed: it is given a :class:`Resource` (what to list
and watch) and a :class:`Store` (where the objects go), and owns everything between them:

1. a full list collected into a :class:`Replacement` and committed, so the store holds exactly
   what the API server has. Where the server serves them, a streaming list (WatchList): a watch
   with ``sendInitialEvents=true`` and ``resourceVersionMatch=NotOlderThan`` from no
   resourceVersion (a consistent read), whose initial ADDED events are the list, ended by a
   BOOKMARK annotated ``k8s.io/initial-events-end: "true"`` carrying its resourceVersion; the same
   watch then goes on as in 2. Otherwise (and with ``streaming_lists`` off) a paginated list
   (``limit``/``continue``). A server that rejects the streaming request (400/422: older than
   1.27, or WatchList off), or whose watch sends an error (e.g. 500 from a watch cache whose
   etcd lacks RequestWatchProgress, etcd < 3.4.31), ends, or changes objects before that bookmark,
   gets paginated lists for the rest of the connection, like client-go's fallback;
2. a watch from the list's resourceVersion with bookmarks and a server-side timeout; when it ends
   the watch is reopened from the last resourceVersion seen (objects and bookmarks advance it);
3. on 410 Gone (an HTTP 410 or a watch ERROR event with code 410, or "too large resource
   version") the resourceVersion is too old: back to 1 (relist and reconcile);
4. any other error: exponential backoff with jitter, then watch again from the last
   resourceVersion (or list again if no list has succeeded yet);
5. the per-event-type counters, list reasons, errors and backoff in :mod:`.metrics`.

The small interface a new kind needs (e.g. a CRD such as ClusterNetworkPolicy)::

    resource = Resource.of("policy.networking.k8s.io", "v1alpha1", "clusternetworkpolicies")

    class MyStore:                        # Store
        def replacement(self) -> Replacement: ...   # start collecting a full list
        def upsert(self, obj: dict) -> None: ...    # a watched ADDED / MODIFIED object
        def delete(self, obj: dict) -> None: ...    # a watched DELETED object
        def __len__(self) -> int: ...               # objects held (the objects gauge)

    class MyReplacement:                  # Replacement
        def add(self, obj: dict) -> None: ...       # one listed object (convert it now: pages are not kept)
        def commit(self, resource_version: str) -> str: ...  # hold exactly what was added; a log summary

    reflector = Reflector(cluster_id, resource, MyStore(), options, on_listed=..., on_failure=...)
    await run_with_probe(api, options, cluster_id, [reflector], on_probe_failure, on_probe_recovery)

wrapped in :func:`keep_connected` for the connect/backoff loop. Objects are raw JSON dicts (no
client-model deserialization); a store converts and keeps only what it needs. Status callbacks:
``on_listed()`` after each committed list, ``on_watching()`` when a watch opens,
``on_failure(message)`` for errors other than an expired resourceVersion.
:func:`liveness_probe` notices an API server that stops answering while its watches still look open.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

import aiohttp
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from kube_ip_tracker.backoff import Backoff
from kube_ip_tracker.kube import metrics
from kube_ip_tracker.kube.errors import ConnectError, ProbeFailed, ResourceExpired, WatchError, describe_error
from kube_ip_tracker.model import ClusterSpec

log = logging.getLogger(__name__)

ApiClientFactory = Callable[[ClusterSpec], contextlib.AbstractAsyncContextManager[client.ApiClient]]

EVENT_TYPES = ("ADDED", "MODIFIED", "DELETED", "BOOKMARK", "ERROR")
# The annotation of the bookmark that ends a streaming list's initial events.
INITIAL_EVENTS_END = "k8s.io/initial-events-end"


@dataclass(frozen=True)
class InformerOptions:
    """Tuning of the list/watch loops (seconds unless noted)."""

    page_size: int = 500
    # Streaming lists (WatchList) where the API server serves them, else paginated lists.
    streaming_lists: bool = True
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


@dataclass(frozen=True)
class Resource:
    """What a reflector lists and watches: a cluster-wide collection, named by its API path.

    ``plural`` names it in metrics (label ``kind``) and logs; ``path`` is the collection's URL path;
    ``field_selector`` (e.g. ``spec.nodeName=node-1``) narrows every list and watch of it to the
    objects it selects (the API server filters; what stops matching is seen as deleted).
    """

    plural: str
    path: str
    field_selector: str = ""

    @classmethod
    def core(cls, plural: str) -> Resource:
        """A core/v1 collection (pods, namespaces, nodes)."""
        return cls(plural, f"/api/v1/{plural}")

    @classmethod
    def of(cls, group: str, version: str, plural: str) -> Resource:
        """A collection of an API group, built in or a CRD (e.g. networking.k8s.io/v1 networkpolicies)."""
        return cls(plural, f"/apis/{group}/{version}/{plural}")

    def selecting(self, field_selector: str) -> Resource:
        """The same collection narrowed by ``field_selector``."""
        return replace(self, field_selector=field_selector)


class Replacement(Protocol):
    """One full list being collected for a store."""

    def add(self, obj: dict[str, Any]) -> None:
        """One listed object (pages are not kept: keep what is needed now)."""

    def commit(self, resource_version: str) -> str:
        """Make the store hold exactly the added objects; returns a short summary for the log."""


class Store(Protocol):
    """Where a reflector puts what it lists and watches (see the module docstring)."""

    def replacement(self) -> Replacement:
        """Start collecting a full list; a list started over gets a fresh replacement."""

    def upsert(self, obj: dict[str, Any]) -> None:
        """A watched object was added or modified."""

    def delete(self, obj: dict[str, Any]) -> None:
        """A watched object was deleted (``obj`` is its last state)."""

    def __len__(self) -> int:
        """Objects held."""


async def open_request(
    api: client.ApiClient, resource: Resource, client_timeout: aiohttp.ClientTimeout, params: dict[str, Any]
) -> aiohttp.ClientResponse:
    """GET ``resource`` (a list page or a watch) and return the unread response (raises on non-2xx).

    Parameters that are None are left out; booleans are sent as ``true``/``false``. The resource's
    field selector is added to every request.
    """
    if resource.field_selector:
        params = {**params, "fieldSelector": resource.field_selector}
    query = [(k, ("true" if v else "false") if isinstance(v, bool) else v) for k, v in params.items() if v is not None]
    resp: aiohttp.ClientResponse = await api.call_api(
        resource.path,
        "GET",
        query_params=query,
        header_params={"Accept": "application/json"},
        auth_settings=["BearerToken"],
        _preload_content=False,
        _request_timeout=client_timeout,
    )
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
        "resourceVersion": resource_version,
        "allowWatchBookmarks": True,
        "timeoutSeconds": server_timeout,
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


def _no_op(*_: object) -> None:
    pass


class StreamingUnsupported(Exception):
    """The API server does not serve streaming lists (the message says how that showed)."""


@dataclass
class _InitialEvents:
    """A streaming list in progress: its initial events go into ``replacement``."""

    replacement: Replacement
    reason: str
    listed: int = 0


class Reflector:
    """The list/watch loop of one resource in one cluster into one store (see the module docstring).

    ``api`` may be given here or to :meth:`run` (a new client per connection keeps the
    resourceVersion: the watch resumes). ``first_list_reason`` labels the first list in
    ``kube_ip_tracker_source_lists_total`` (initial, reconnect).
    """

    def __init__(
        self,
        cluster: str,
        resource: Resource,
        store: Store,
        options: InformerOptions,
        *,
        api: client.ApiClient | None = None,
        first_list_reason: str = "initial",
        on_listed: Callable[[], None] = _no_op,
        on_watching: Callable[[], None] = _no_op,
        on_failure: Callable[[str], None] = _no_op,
    ) -> None:
        self.cluster = cluster
        self.resource = resource
        self.plural = resource.plural
        self.store = store
        self.options = options
        self.api = api
        self.first_list_reason = first_list_reason
        self.on_listed = on_listed
        self.on_watching = on_watching
        self.on_failure = on_failure
        self.resource_version: str | None = None  # None: list first
        self.streaming = options.streaming_lists  # per connection: off once the server refused
        self._initial: _InitialEvents | None = None  # a streaming list in progress
        self._rng = random.Random()
        self._objects_gauge = metrics.OBJECTS.labels(cluster, self.plural)
        self._events = {etype: metrics.EVENTS.labels(cluster, self.plural, etype) for etype in EVENT_TYPES}

    def _api(self) -> client.ApiClient:
        if self.api is None:
            raise RuntimeError(f"reflector of {self.plural} in cluster {self.cluster} has no API client")
        return self.api

    async def run(self, api: client.ApiClient | None = None) -> None:
        """List and watch until cancelled."""
        if api is not None:
            self.api = api
        self.streaming = self.options.streaming_lists
        backoff = Backoff(self.options.backoff_base, self.options.backoff_cap)
        reason = self.first_list_reason
        expired_in_a_row = 0
        while True:
            try:
                started = asyncio.get_running_loop().time()
                if await self.sync_and_watch(reason) == 0 and asyncio.get_running_loop().time() - started < 1.0:
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
                    self.on_failure(message)
                delay = backoff.next_delay()
                metrics.BACKOFF.labels(self.cluster, self.plural).set(delay)
                level = logging.DEBUG if label == "expired" else logging.WARNING
                log.log(level, "Cluster %s: %s; retrying in %.1fs", self.cluster, message, delay)
                if label == "other":
                    log.debug("Cluster %s: unexpected error details", self.cluster, exc_info=exc)
                await asyncio.sleep(delay)

    async def sync_and_watch(self, reason: str) -> int:
        """List first if needed (streaming or paginated), then watch until the server ends it;
        returns the number of events of the watch."""
        if self.resource_version is not None:
            return await self.watch()
        if self.streaming:
            try:
                return await self.stream(reason)
            except StreamingUnsupported as exc:
                self.streaming = False
                metrics.LIST_FALLBACKS.labels(self.cluster, self.plural).inc()
                log.info(
                    "Cluster %s: streaming list of %s not served (%s); using paginated lists",
                    self.cluster,
                    self.plural,
                    exc,
                )
        await self.list(reason)
        return await self.watch()

    async def stream(self, reason: str) -> int:
        """A streaming list committed at its initial-events-end bookmark, then the same watch until
        it ends; returns the event count. :class:`StreamingUnsupported` when the server does not
        serve it (the request rejected as invalid, or no such bookmark before the watch ended)."""
        timeout, params = watch_request(self.options, self._rng, None)
        params.update(sendInitialEvents=True, resourceVersionMatch="NotOlderThan")
        try:
            resp = await open_request(self._api(), self.resource, timeout, params)
        except ApiException as exc:
            if exc.status in (400, 422):
                raise StreamingUnsupported(describe_error(exc, f"watch {self.plural}")[1]) from exc
            raise
        self.on_watching()  # (counted in the watches metric once its initial events are in)
        self._initial = _InitialEvents(self.store.replacement(), reason)
        try:
            events = await apply_events(resp, self.handle_event)
            if self._initial is not None:
                raise StreamingUnsupported(
                    f"the watch ended after {events} events without the {INITIAL_EVENTS_END} bookmark"
                )
        finally:
            self._initial = None
        return events

    async def list(self, reason: str) -> None:
        """Paginated list committed to the store; sets ``resource_version``."""
        timeout = aiohttp.ClientTimeout(total=self.options.request_timeout, sock_connect=self.options.connect_timeout)
        api = self._api()
        replacement = self.store.replacement()
        listed = 0

        def restart() -> None:
            nonlocal replacement, listed
            replacement = self.store.replacement()
            listed = 0

        def collect(obj: dict[str, Any]) -> None:
            nonlocal listed
            listed += 1
            replacement.add(obj)

        def open_page(token: str | None) -> Awaitable[aiohttp.ClientResponse]:
            return open_request(api, self.resource, timeout, {"limit": self.options.page_size, "continue": token})

        resource_version = await paginated_list(
            open_page, collect, restart, f"Cluster {self.cluster}: list of {self.plural}"
        )
        self._commit(replacement, listed, resource_version, reason, "paginated")

    def _commit(self, replacement: Replacement, listed: int, resource_version: str, reason: str, how: str) -> None:
        summary = replacement.commit(resource_version)
        self.resource_version = resource_version
        metrics.RELISTS.labels(self.cluster, self.plural, reason).inc()
        self._objects_gauge.set(len(self.store))
        log.log(
            logging.DEBUG if reason == "initial" else logging.INFO,
            "Cluster %s: listed %d %s (%s) at resourceVersion %s (%s, %s)",
            self.cluster,
            listed,
            self.plural,
            summary,
            resource_version,
            reason,
            how,
        )
        self.on_listed()

    async def watch(self) -> int:
        """One watch from ``resource_version`` until the server ends it; returns the event count."""
        timeout, params = watch_request(self.options, self._rng, self.resource_version)
        resp = await open_request(self._api(), self.resource, timeout, params)
        metrics.WATCHES.labels(self.cluster, self.plural).inc()
        self.on_watching()
        return await apply_events(resp, self.handle_event)

    def handle_event(self, event: dict[str, Any]) -> None:
        """Apply one watch event to the store and advance the resourceVersion."""
        etype = str(event.get("type"))
        obj = event.get("object") or {}
        counter = self._events.get(etype) or metrics.EVENTS.labels(self.cluster, self.plural, etype)
        counter.inc()
        if etype == "ERROR":
            code, message = obj.get("code"), obj.get("message") or obj.get("reason") or ""
            if code == 410:
                raise ResourceExpired(message)
            if self._initial is not None:  # e.g. 500: etcd too old for the watch cache to stream
                raise StreamingUnsupported(f"watch error {code} before the {INITIAL_EVENTS_END} bookmark: {message}")
            raise WatchError(code, message)
        if self._initial is not None:
            self._initial_event(self._initial, etype, obj)
            return
        if etype in ("ADDED", "MODIFIED"):
            self.store.upsert(obj)
            self._objects_gauge.set(len(self.store))
        elif etype == "DELETED":
            self.store.delete(obj)
            self._objects_gauge.set(len(self.store))
        elif etype != "BOOKMARK":
            log.warning("Cluster %s: ignoring watch event of unknown type %r for %s", self.cluster, etype, self.plural)
        rv = (obj.get("metadata") or {}).get("resourceVersion")
        if rv:
            self.resource_version = str(rv)

    def _initial_event(self, initial: _InitialEvents, etype: str, obj: dict[str, Any]) -> None:
        """An event of a streaming list before its end: collected, not applied; the resourceVersion
        stays unset until the end bookmark (a stream broken off before it lists again)."""
        meta = obj.get("metadata") or {}
        if etype == "ADDED":
            initial.replacement.add(obj)
            initial.listed += 1
        elif etype == "BOOKMARK":
            if (meta.get("annotations") or {}).get(INITIAL_EVENTS_END) == "true":
                self._initial = None
                rv = str(meta.get("resourceVersion") or "")
                self._commit(initial.replacement, initial.listed, rv, initial.reason, "streamed")
                metrics.WATCHES.labels(self.cluster, self.plural).inc()  # the list goes on as a watch
        else:
            raise StreamingUnsupported(f"a {etype} event came before the {INITIAL_EVENTS_END} bookmark")


async def run_with_probe(
    api: client.ApiClient,
    options: InformerOptions,
    cluster: str,
    reflectors: Iterable[Reflector],
    on_probe_failure: Callable[[str], None],
    on_probe_recovery: Callable[[], None],
) -> None:
    """Run ``reflectors`` on ``api`` with the liveness probe beside them, until one fails or all are
    cancelled (the probe giving up raises :class:`ProbeFailed`: the caller reconnects)."""
    async with asyncio.TaskGroup() as group:
        for reflector in reflectors:
            group.create_task(reflector.run(api), name=f"reflector-{cluster}-{reflector.plural}")
        probe = liveness_probe(api, options, cluster, on_probe_failure, on_probe_recovery)
        group.create_task(probe, name=f"probe-{cluster}")


Session = Callable[[client.ApiClient, Callable[[], None]], Awaitable[None]]


async def keep_connected(
    spec: ClusterSpec,
    client_factory: ApiClientFactory,
    options: InformerOptions,
    session: Session,
    on_error: Callable[[str], None],
    *,
    kind: str,
    what: str,
) -> None:
    """Run ``session(api, connected)`` with a new API client of ``spec`` until cancelled, reconnecting
    with backoff when it raises (``on_error(message)`` first, counted in the errors metric under
    ``kind``, logged as "cannot ``what``"). The session calls ``connected()`` once the API server
    answered, which resets the backoff."""
    cluster = spec.cluster_id
    backoff = Backoff(options.backoff_base, options.backoff_cap)
    while True:
        try:
            async with client_factory(spec) as api:
                await session(api, backoff.reset)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            label, message = describe_error(exc, "connect")
            metrics.ERRORS.labels(cluster, kind, label).inc()
            on_error(message)
            delay = backoff.next_delay()
            log.error("Cluster %s: cannot %s: %s; retrying in %.1fs", cluster, what, message, delay)
            if label == "other":
                log.debug("Cluster %s: unexpected error details", cluster, exc_info=exc)
            await asyncio.sleep(delay)


async def follow(
    spec: ClusterSpec,
    client_factory: ApiClientFactory,
    options: InformerOptions,
    reflectors: Sequence[Reflector],
    on_failure: Callable[[str], None],
    on_recovery: Callable[[], None],
    *,
    kind: str,
    what: str,
) -> None:
    """An informer's whole loop: ``reflectors`` with the liveness probe beside them (:func:`run_with_probe`)
    on a new API client of ``spec``, reconnecting with backoff (:func:`keep_connected`), until cancelled.
    ``on_failure(message)`` for a failed connection or probe, ``on_recovery()`` when a probe passes again."""

    async def session(api: client.ApiClient, connected: Callable[[], None]) -> None:
        connected()
        await run_with_probe(api, options, spec.cluster_id, reflectors, on_failure, on_recovery)

    await keep_connected(spec, client_factory, options, session, on_failure, kind=kind, what=what)


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
