"""The reflector shared by the tracker's informers and the agent's policy informers, like client-go's.

One resource of one cluster is kept in step by a loop:

1. a paginated list (``limit``/``continue``, a consistent read), reconciled with what the store holds;
2. a watch from the list's resourceVersion with bookmarks and a server-side timeout; when it ends
   the watch is reopened from the last resourceVersion seen (objects and bookmarks advance it);
3. on 410 Gone (an HTTP 410 or a watch ERROR event with code 410) the resourceVersion is too old:
   back to 1 (relist and reconcile);
4. any other error: exponential backoff with jitter, then watch again from the last resourceVersion
   (or list again if no list has succeeded yet).

Lists and watches are read as raw JSON (no client-model deserialization). :func:`liveness_probe`
notices an API server that stops answering while its watches still look open.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from kube_ip_tracker.backoff import Backoff
from kube_ip_tracker.kube import metrics
from kube_ip_tracker.kube.errors import ConnectError, ProbeFailed, describe_error
from kube_ip_tracker.model import ClusterSpec

log = logging.getLogger(__name__)

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
