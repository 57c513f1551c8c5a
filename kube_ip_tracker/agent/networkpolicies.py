"""NetworkPolicy informer: the agent's own cluster's NetworkPolicies, compiled into a PolicyEngine.

The tracker's reflector loop (:class:`kube_ip_tracker.kube.reflector.Reflector`), reading raw JSON:

1. a paginated list, reconciled with what the engine holds (policies gone from the list are deleted);
2. a watch from the list's resourceVersion with bookmarks and a server-side timeout, reopened from
   the last resourceVersion seen when it ends;
3. on 410 Gone (or "too large resource version") back to 1: relist and reconcile;
4. any other error: exponential backoff with jitter, then watch again (or list, if none succeeded).

Each policy is parsed with ``strict=False`` (fields of other API versions are ignored). A policy the
parser rejects is not enforced: the error names the namespace/name and the problem, is counted in
``kube_ip_agent_networkpolicies_invalid``, and the agent carries on. ``synced`` turns true after the
first complete list and stays true across reconnects (the last known policies keep being enforced).

While connected, the tracker's liveness probe (:func:`kube_ip_tracker.kube.reflector.liveness_probe`,
a GET of kube-system every ``probe_interval``) runs beside the watch: a frozen API server keeps the
watch open and silent, so without it nothing would notice. A failed probe marks the informer
disconnected (``connected`` false, ``kube_ip_agent_networkpolicies_connected`` 0, ``last_error``, a
log line) without touching the policies or ``synced``: the agent keeps enforcing what it last saw.
``probe_failures_to_reconnect`` failures in a row drop the connection and reconnect with backoff;
the watch resumes from the last resourceVersion, and the first list or watch that opens marks the
informer connected again.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from typing import Any

import aiohttp
from kubernetes_asyncio import client
from prometheus_client import Counter, Gauge

from kube_ip_tracker.agent.policy import CompiledPolicy, PolicyEngine, PolicyError, parse_network_policy
from kube_ip_tracker.backoff import Backoff
from kube_ip_tracker.kube import metrics as reflector_metrics
from kube_ip_tracker.kube.errors import ResourceExpired, WatchError, describe_error
from kube_ip_tracker.kube.kubeconfig import api_client
from kube_ip_tracker.kube.reflector import (
    ApiClientFactory,
    InformerOptions,
    Reflector,
    apply_events,
    liveness_probe,
    open_response,
    paginated_list,
    watch_request,
)
from kube_ip_tracker.model import ClusterSpec

log = logging.getLogger(__name__)

PLURAL = "networkpolicies"

INVALID = Gauge(
    "kube_ip_agent_networkpolicies_invalid",
    "NetworkPolicies of the local cluster that cannot be parsed and are not enforced.",
    ["cluster"],
)
PARSE_ERRORS = Counter(
    "kube_ip_agent_networkpolicy_parse_errors_total",
    "NetworkPolicy versions rejected by the parser (each logged with namespace/name and the problem).",
    ["cluster"],
)
POLICIES = Gauge(
    "kube_ip_agent_networkpolicies",
    "NetworkPolicies of the local cluster compiled into the evaluator.",
    ["cluster"],
)
SYNCED = Gauge(
    "kube_ip_agent_networkpolicies_synced",
    "1 once the local cluster's NetworkPolicies have been listed completely.",
    ["cluster"],
)
CONNECTED = Gauge(
    "kube_ip_agent_networkpolicies_connected",
    "1 while the NetworkPolicy informer's API server answers (list/watch open, liveness probe passing); "
    "0 while the last known policies are enforced without updates.",
    ["cluster"],
)

Key = tuple[str, str]


def _key(obj: dict[str, Any]) -> Key:
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace") or ""), str(meta.get("name") or "")


class NetworkPolicyInformer(Reflector):
    """Lists and watches the NetworkPolicies of one cluster into ``engine`` until cancelled.

    ``on_change()`` is called after every batch that changed the engine's policies (a list or one
    watch event), from the event loop.
    """

    def __init__(
        self,
        spec: ClusterSpec,
        engine: PolicyEngine,
        *,
        options: InformerOptions | None = None,
        on_change: Callable[[], None] | None = None,
        client_factory: ApiClientFactory = api_client,
    ) -> None:
        self.spec = spec
        self.cluster = spec.cluster_id
        self.engine = engine
        self.options = options or InformerOptions()
        self.on_change = on_change
        self.client_factory = client_factory
        self.plural = PLURAL
        self.first_list_reason = "initial"
        self.api: client.ApiClient | None = None
        self.resource_version: str | None = None
        self.policies: dict[Key, CompiledPolicy] = {}  # what the engine holds, from this informer
        self.invalid: dict[Key, str] = {}  # policies the parser rejected: the problem
        self.synced_event = asyncio.Event()
        self.connected = False
        self.last_error = ""
        self._rng = random.Random()
        self._synced_gauge = SYNCED.labels(self.cluster)
        self._synced_gauge.set(0)
        self._connected_gauge = CONNECTED.labels(self.cluster)
        self._connected_gauge.set(0)
        self._events = {
            etype: reflector_metrics.EVENTS.labels(self.cluster, PLURAL, etype)
            for etype in ("ADDED", "MODIFIED", "DELETED", "BOOKMARK", "ERROR")
        }

    @property
    def synced(self) -> bool:
        """The policies have been listed completely at least once."""
        return self.synced_event.is_set()

    async def wait_synced(self) -> None:
        """Wait for the first complete list (wrap in ``asyncio.timeout`` to bound it)."""
        await self.synced_event.wait()

    # --- the loop ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Connect and list/watch (with the liveness probe beside it) until cancelled; a client that
        cannot be built, or a connection the probe gave up on, is retried with backoff."""
        backoff = Backoff(self.options.backoff_base, self.options.backoff_cap)
        while True:
            try:
                async with self.client_factory(self.spec) as api:
                    self.api = api
                    backoff.reset()
                    async with asyncio.TaskGroup() as group:
                        group.create_task(Reflector.run(self), name=f"networkpolicies-{self.cluster}")
                        probe = liveness_probe(api, self.options, self.cluster, self._disconnected, self._reconnected)
                        group.create_task(probe, name=f"networkpolicies-probe-{self.cluster}")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                label, message = describe_error(exc, "connect")
                reflector_metrics.ERRORS.labels(self.cluster, PLURAL, label).inc()
                self._disconnected(message)
                delay = backoff.next_delay()
                log.error(
                    "Cluster %s: cannot read NetworkPolicies: %s; retrying in %.1fs", self.cluster, message, delay
                )
                await asyncio.sleep(delay)

    def _disconnected(self, message: str) -> None:
        """The API server failed to answer (probe, list, watch or connect): report it, keep the policies."""
        self.last_error = message
        if self.connected:
            log.error(
                "Cluster %s: NetworkPolicy informer disconnected (%s); enforcing the %d last known policies",
                self.cluster,
                message,
                len(self.policies),
            )
        self.connected = False
        self._connected_gauge.set(0)

    def _reconnected(self) -> None:
        """A list or watch opened, or a probe passed again."""
        if not self.connected and self.last_error:
            log.info("Cluster %s: NetworkPolicy informer connected again", self.cluster)
        self.connected = True
        self._connected_gauge.set(1)

    def failed(self, message: str) -> None:
        self._disconnected(message)

    def _timeout(self) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(total=self.options.request_timeout, sock_connect=self.options.connect_timeout)

    async def list(self, reason: str) -> None:
        """Paginated list, then make the engine hold exactly the listed (valid) policies."""
        method = client.NetworkingV1Api(self.api).list_network_policy_for_all_namespaces
        timeout = self._timeout()
        items: dict[Key, dict[str, Any]] = {}

        def collect(obj: dict[str, Any]) -> None:
            items[_key(obj)] = obj

        resource_version = await paginated_list(
            lambda token: open_response(method, timeout, limit=self.options.page_size, _continue=token),
            collect,
            items.clear,
            f"Cluster {self.cluster}: list of {PLURAL}",
        )
        stale = (self.policies.keys() | self.invalid.keys()) - items.keys()
        changed = False
        for key in stale:
            changed |= self._remove(key)
        for obj in items.values():
            changed |= self._apply(obj)
        self.resource_version = resource_version
        reflector_metrics.RELISTS.labels(self.cluster, PLURAL, reason).inc()
        log.log(
            logging.INFO if reason != "initial" or not self.synced else logging.DEBUG,
            "Cluster %s: listed %d %s (%d enforced, %d invalid, %d stale removed) at resourceVersion %s (%s)",
            self.cluster,
            len(items),
            PLURAL,
            len(self.policies),
            len(self.invalid),
            len(stale),
            resource_version,
            reason,
        )
        self._reconnected()
        if not self.synced:
            self.synced_event.set()
            self._synced_gauge.set(1)
            log.info("Cluster %s: NetworkPolicies synced (%d enforced)", self.cluster, len(self.policies))
        if changed:
            self._changed()

    async def watch(self) -> int:
        """One watch request from the current resourceVersion, applied until it ends; returns the event count."""
        timeout, params = watch_request(self.options, self._rng, self.resource_version)
        method = client.NetworkingV1Api(self.api).list_network_policy_for_all_namespaces
        resp = await open_response(method, timeout, **params)
        reflector_metrics.WATCHES.labels(self.cluster, PLURAL).inc()
        self._reconnected()
        return await apply_events(resp, self.handle_event)

    def handle_event(self, event: dict[str, Any]) -> None:
        """Apply one watch event to the engine and advance the resourceVersion."""
        etype = str(event.get("type"))
        obj = event.get("object") or {}
        counter = self._events.get(etype) or reflector_metrics.EVENTS.labels(self.cluster, PLURAL, etype)
        counter.inc()
        if etype == "ERROR":
            code, message = obj.get("code"), obj.get("message") or obj.get("reason") or ""
            if code == 410:
                raise ResourceExpired(message)
            raise WatchError(code, message)
        changed = False
        if etype in ("ADDED", "MODIFIED"):
            changed = self._apply(obj)
        elif etype == "DELETED":
            changed = self._remove(_key(obj))
        elif etype != "BOOKMARK":
            log.warning("Cluster %s: ignoring watch event of unknown type %r for %s", self.cluster, etype, PLURAL)
        rv = (obj.get("metadata") or {}).get("resourceVersion")
        if rv:
            self.resource_version = str(rv)
        if changed:
            key = _key(obj)
            enforced = "enforced" if key in self.policies else "no longer enforced"
            log.info("Cluster %s: NetworkPolicy %s/%s %s (%s)", self.cluster, *key, etype.lower(), enforced)
            self._changed()

    # --- engine updates ----------------------------------------------------------------------

    def _apply(self, obj: dict[str, Any]) -> bool:
        """Parse and store one policy; returns whether the enforced policies changed."""
        key = _key(obj)
        try:
            policy = parse_network_policy(obj, self.cluster, strict=False)
        except PolicyError as exc:
            PARSE_ERRORS.labels(self.cluster).inc()
            if self.invalid.get(key) != str(exc):
                log.error(
                    "Cluster %s: NetworkPolicy %s/%s is invalid and is not enforced: %s",
                    self.cluster,
                    key[0],
                    key[1],
                    exc,
                )
            self.invalid[key] = str(exc)
            removed = self.policies.pop(key, None) is not None
            if removed:
                self.engine.delete_policy(self.cluster, *key)
            self._update_gauges()
            return removed
        if self.invalid.pop(key, None) is not None:
            log.info("Cluster %s: NetworkPolicy %s/%s is valid again and enforced", self.cluster, *key)
        if self.policies.get(key) == policy:
            self._update_gauges()
            return False
        self.policies[key] = policy
        self.engine.set_policy(policy)
        self._update_gauges()
        log.debug("Cluster %s: NetworkPolicy %s/%s compiled", self.cluster, *key)
        return True

    def _remove(self, key: Key) -> bool:
        """Forget one policy; returns whether the enforced policies changed."""
        self.invalid.pop(key, None)
        removed = self.policies.pop(key, None) is not None
        if removed:
            self.engine.delete_policy(self.cluster, *key)
            log.debug("Cluster %s: NetworkPolicy %s/%s removed", self.cluster, *key)
        self._update_gauges()
        return removed

    def _update_gauges(self) -> None:
        INVALID.labels(self.cluster).set(len(self.invalid))
        POLICIES.labels(self.cluster).set(len(self.policies))
        reflector_metrics.OBJECTS.labels(self.cluster, PLURAL).set(len(self.policies) + len(self.invalid))

    def _changed(self) -> None:
        if self.on_change is None:
            return
        try:
            self.on_change()
        except Exception:
            log.exception("Cluster %s: NetworkPolicy change callback failed", self.cluster)
