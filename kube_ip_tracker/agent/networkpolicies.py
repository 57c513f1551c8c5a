"""NetworkPolicy informer: the agent's own cluster's NetworkPolicies, compiled into a PolicyEngine.

One instance of the shared reflector (:class:`kube_ip_tracker.kube.reflector.Reflector`) whose
store is the engine's compiled policies (:class:`PolicyStore`): a list is reconciled with what the
engine holds (policies gone from the list are deleted), watches apply each event, a 410 Gone (or
"too large resource version") relists, other errors back off.

Each policy is parsed with ``strict=False`` (fields of other API versions are ignored). A policy the
parser rejects is not enforced: the error names the namespace/name and the problem, is counted in
``kube_ip_agent_networkpolicies_invalid``, and the agent carries on. A policy annotated
``kube-ip-tracker.io/staged: "true"`` is compiled as staged (evaluated, never enforced;
``kube_ip_agent_networkpolicies_staged``); another value of that annotation is logged for the policy
and the policy is enforced. ``synced`` turns true after the
first complete list and stays true across reconnects (the last known policies keep being enforced).

While connected, the liveness probe (:func:`kube_ip_tracker.kube.reflector.liveness_probe`, a GET
of kube-system every ``probe_interval``) runs beside the watch: a frozen API server keeps the
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
from collections.abc import Callable
from typing import Any

from prometheus_client import Counter, Gauge

from kube_ip_tracker.agent.informer_connection import InformerConnection, ReportsConnection
from kube_ip_tracker.agent.policy import CompiledPolicy, PolicyEngine, PolicyError, parse_network_policy
from kube_ip_tracker.agent.policy.staged import enforcement, new_staged_problem
from kube_ip_tracker.kube.kubeconfig import api_client
from kube_ip_tracker.kube.reflector import (
    ApiClientFactory,
    InformerOptions,
    Reflector,
    Resource,
    follow,
)
from kube_ip_tracker.model import ClusterSpec

log = logging.getLogger(__name__)

PLURAL = "networkpolicies"
RESOURCE = Resource.of("networking.k8s.io", "v1", PLURAL)

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
STAGED = Gauge(
    "kube_ip_agent_networkpolicies_staged",
    "NetworkPolicies of the local cluster compiled as staged (kube-ip-tracker.io/staged: evaluated, not enforced).",
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


class PolicyStore:
    """The reflector store of the NetworkPolicies of one cluster: their compiled forms in ``engine``.

    Invalid policies are reported (log, counter, gauge) and kept aside in ``invalid``, not enforced.
    ``on_change()`` is called after every batch that changed the engine's policies (a list or one
    watch event), from the event loop.
    """

    def __init__(self, cluster: str, engine: PolicyEngine, on_change: Callable[[], None] | None) -> None:
        self.cluster = cluster
        self.engine = engine
        self.on_change = on_change
        self.policies: dict[Key, CompiledPolicy] = {}  # what the engine holds, from this informer
        self.invalid: dict[Key, str] = {}  # policies the parser rejected: the problem

    def __len__(self) -> int:
        return len(self.policies) + len(self.invalid)

    def replacement(self) -> PolicyReplacement:
        return PolicyReplacement(self)

    def upsert(self, obj: dict[str, Any]) -> None:
        self._changed_by_event(self._apply(obj), _key(obj), "changed")

    def delete(self, obj: dict[str, Any]) -> None:
        self._changed_by_event(self._remove(_key(obj)), _key(obj), "deleted")

    def _changed_by_event(self, changed: bool, key: Key, what: str) -> None:
        if changed:
            enforced = enforcement(self.policies.get(key))
            log.info("Cluster %s: NetworkPolicy %s/%s %s (%s)", self.cluster, *key, what, enforced)
            self.changed()

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
        previous = self.policies.get(key)
        problem = new_staged_problem(previous, policy)
        if problem:
            log.error("Cluster %s: NetworkPolicy %s/%s: %s", self.cluster, key[0], key[1], problem)
        if previous == policy:
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
        STAGED.labels(self.cluster).set(sum(1 for p in self.policies.values() if p.staged))

    def changed(self) -> None:
        if self.on_change is None:
            return
        try:
            self.on_change()
        except Exception:
            log.exception("Cluster %s: NetworkPolicy change callback failed", self.cluster)


class PolicyReplacement:
    """A full list of policies; committing reconciles the engine with it (policies gone from the list
    are removed). ``store`` has ``policies`` and ``invalid`` by key, ``_apply(obj)`` and
    ``_remove(key)`` (each returning whether the enforced policies changed) and ``changed()``;
    ``key(obj)`` is the object's key (``(namespace, name)`` for NetworkPolicies)."""

    def __init__(self, store: Any, key: Callable[[dict[str, Any]], Any] = _key) -> None:
        self.store = store
        self.key = key
        self.items: dict[Any, dict[str, Any]] = {}

    def add(self, obj: dict[str, Any]) -> None:
        self.items[self.key(obj)] = obj

    def commit(self, resource_version: str) -> str:
        store = self.store
        stale = (store.policies.keys() | store.invalid.keys()) - self.items.keys()
        changed = False
        for key in stale:
            changed |= store._remove(key)
        for obj in self.items.values():
            changed |= store._apply(obj)
        if changed:
            store.changed()
        return f"{len(store.policies)} enforced, {len(store.invalid)} invalid, {len(stale)} stale removed"


class NetworkPolicyInformer(ReportsConnection):
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
        self.client_factory = client_factory
        self.store = PolicyStore(self.cluster, engine, on_change)
        self.connection = InformerConnection(
            self.cluster,
            "NetworkPolicy informer",
            CONNECTED.labels(self.cluster),
            log,
            lambda: f"enforcing the {len(self.policies)} last known policies",
        )
        self.reflector = Reflector(
            self.cluster,
            RESOURCE,
            self.store,
            self.options,
            on_listed=self._listed,
            on_watching=self.connection.answered,
            on_failure=self.connection.failed,
        )
        self.synced_event = asyncio.Event()
        self._synced_gauge = SYNCED.labels(self.cluster)
        self._synced_gauge.set(0)

    @property
    def policies(self) -> dict[Key, CompiledPolicy]:
        """The enforced policies by (namespace, name)."""
        return self.store.policies

    @property
    def invalid(self) -> dict[Key, str]:
        """The policies the parser rejected: the problem."""
        return self.store.invalid

    @property
    def resource_version(self) -> str | None:
        """Where the next watch resumes (None: a list comes first)."""
        return self.reflector.resource_version

    @property
    def synced(self) -> bool:
        """The policies have been listed completely at least once."""
        return self.synced_event.is_set()

    async def wait_synced(self) -> None:
        """Wait for the first complete list (wrap in ``asyncio.timeout`` to bound it)."""
        await self.synced_event.wait()

    async def run(self) -> None:
        """Connect and list/watch (with the liveness probe beside it) until cancelled; a client that
        cannot be built, or a connection the probe gave up on, is retried with backoff."""
        await follow(
            self.spec,
            self.client_factory,
            self.options,
            [self.reflector],
            self.connection.failed,
            self.connection.answered,
            kind=PLURAL,
            what="read NetworkPolicies",
        )

    def _listed(self) -> None:
        self.connection.answered()
        if not self.synced:
            self.synced_event.set()
            self._synced_gauge.set(1)
            log.info("Cluster %s: NetworkPolicies synced (%d enforced)", self.cluster, len(self.policies))
