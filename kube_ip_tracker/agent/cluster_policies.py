"""Cluster-scoped policy informer: the agent's own cluster's ClusterNetworkPolicies (v1alpha2) and
AdminNetworkPolicies / BaselineAdminNetworkPolicy (v1alpha1), compiled into the PolicyEngine's
Admin and Baseline tiers.

One reflector (:class:`kube_ip_tracker.kube.reflector.Reflector`) per kind, each with a
:class:`ClusterPolicyStore`, but only while the kind's CRD is installed: before listing, the
informer asks API discovery whether the group/version serves the kind. A missing CRD is logged
once, checked again every ``crd_check_interval`` and picked up when it is installed; never fatal.
While a kind is watched, discovery is asked again at the same interval: a CRD that was removed
takes its policies out of the engine (logged), and the kind waits to be installed again.

Objects are parsed with ``strict=False`` (fields of newer CRD versions are pruned; a peer or port
entry left with no known field fails closed, see :mod:`~kube_ip_tracker.agent.policy.cluster_parse`).
An object the parser rejects is logged by name with the field at fault, counted
(``kube_ip_agent_cluster_policy_parse_errors_total``, ``kube_ip_agent_cluster_policies_invalid``)
and not enforced; the others go on. What a policy holds that the agent cannot enforce (a
``domainNames`` peer) is logged per policy and counted (``kube_ip_agent_cluster_policies_degraded``).

``synced`` turns true once every kind was either listed or found not installed. The liveness
probe runs beside the reflectors, as for NetworkPolicies; a failing API server leaves the last
known policies enforced.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException
from prometheus_client import Counter, Gauge

from kube_ip_tracker.agent.informer_connection import InformerConnection, ReportsConnection
from kube_ip_tracker.agent.networkpolicies import PolicyReplacement
from kube_ip_tracker.agent.policy import ClusterPolicy, PolicyEngine, PolicyError
from kube_ip_tracker.agent.policy.cluster_compiled import ANP_KIND, BANP_KIND, CNP_KIND, Tier
from kube_ip_tracker.agent.policy.cluster_parse import (
    parse_admin_network_policy,
    parse_baseline_admin_network_policy,
    parse_cluster_network_policy,
)
from kube_ip_tracker.agent.policy.staged import enforcement, new_staged_problem
from kube_ip_tracker.kube.kubeconfig import api_client
from kube_ip_tracker.kube.reflector import (
    ApiClientFactory,
    InformerOptions,
    Reflector,
    Resource,
    keep_connected,
    liveness_probe,
    open_request,
)
from kube_ip_tracker.model import ClusterSpec

log = logging.getLogger(__name__)

GROUP = "policy.networking.k8s.io"
CRD_CHECK_INTERVAL = 30.0


@dataclass(frozen=True)
class PolicyKind:
    """One cluster-scoped policy kind: its collection and its parser."""

    kind: str
    version: str
    plural: str
    parse: Callable[..., ClusterPolicy]

    @property
    def resource(self) -> Resource:
        return Resource.of(GROUP, self.version, self.plural)

    @property
    def discovery(self) -> Resource:
        """The group/version's discovery document (which kinds it serves)."""
        return Resource(self.plural, f"/apis/{GROUP}/{self.version}")


KINDS = (
    PolicyKind(CNP_KIND, "v1alpha2", "clusternetworkpolicies", parse_cluster_network_policy),
    PolicyKind(ANP_KIND, "v1alpha1", "adminnetworkpolicies", parse_admin_network_policy),
    PolicyKind(BANP_KIND, "v1alpha1", "baselineadminnetworkpolicies", parse_baseline_admin_network_policy),
)

POLICIES = Gauge(
    "kube_ip_agent_cluster_policies",
    "Cluster-scoped policies of the local cluster compiled into the Admin/Baseline tiers, by kind.",
    ["cluster", "kind"],
)
INVALID = Gauge(
    "kube_ip_agent_cluster_policies_invalid",
    "Cluster-scoped policies of the local cluster that cannot be parsed and are not enforced, by kind.",
    ["cluster", "kind"],
)
DEGRADED = Gauge(
    "kube_ip_agent_cluster_policies_degraded",
    "Enforced cluster-scoped policies with a part the agent cannot enforce (made to fail closed), by kind.",
    ["cluster", "kind"],
)
STAGED = Gauge(
    "kube_ip_agent_cluster_policies_staged",
    "Cluster-scoped policies compiled as staged (kube-ip-tracker.io/staged: evaluated, not enforced).",
    ["cluster", "kind"],
)
PARSE_ERRORS = Counter(
    "kube_ip_agent_cluster_policy_parse_errors_total",
    "Cluster-scoped policy versions rejected by the parser (each logged with its name and the field at fault).",
    ["cluster", "kind"],
)
INSTALLED = Gauge(
    "kube_ip_agent_cluster_policy_crd_installed",
    "1 while the kind's CRD is served by the local API server (checked every --crd-check-interval).",
    ["cluster", "kind"],
)
SYNCED = Gauge(
    "kube_ip_agent_cluster_policies_synced",
    "1 once every cluster-scoped policy kind was listed or found not installed.",
    ["cluster"],
)
CONNECTED = Gauge(
    "kube_ip_agent_cluster_policies_connected",
    "1 while the cluster-scoped policy informer's API server answers; 0 while the last known policies are "
    "enforced without updates.",
    ["cluster"],
)


def _name(obj: dict[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("name") or "")


class ClusterPolicyStore:
    """The reflector store of one kind in one cluster: the compiled policies in ``engine``."""

    def __init__(self, cluster: str, kind: PolicyKind, engine: PolicyEngine, on_change: Callable[[], None]) -> None:
        self.cluster = cluster
        self.kind = kind
        self.engine = engine
        self.on_change = on_change
        self.policies: dict[str, ClusterPolicy] = {}
        self.invalid: dict[str, str] = {}  # name -> the parser's error
        self._labels = (cluster, kind.kind)

    def __len__(self) -> int:
        return len(self.policies) + len(self.invalid)

    def replacement(self) -> PolicyReplacement:
        return PolicyReplacement(self, _name)

    def upsert(self, obj: dict[str, Any]) -> None:
        if self._apply(obj):
            self._log_event(_name(obj), "changed")
            self.changed()

    def delete(self, obj: dict[str, Any]) -> None:
        if self._remove(_name(obj)):
            self._log_event(_name(obj), "deleted")
            self.changed()

    def clear(self) -> None:
        """Forget every policy of this kind (its CRD was removed)."""
        changed = False
        for name in list(self.policies) + list(self.invalid):
            changed |= self._remove(name)
        if changed:
            self.changed()

    def changed(self) -> None:
        self.on_change()

    def _log_event(self, name: str, what: str) -> None:
        enforced = enforcement(self.policies.get(name))
        log.info("Cluster %s: %s %s %s (%s)", self.cluster, self.kind.kind, name, what, enforced)

    def _apply(self, obj: dict[str, Any]) -> bool:
        """Parse and hold one policy; returns whether the enforced policies changed."""
        name = _name(obj)
        try:
            policy = self.kind.parse(obj, self.cluster, strict=False)
        except PolicyError as exc:
            PARSE_ERRORS.labels(*self._labels).inc()
            if self.invalid.get(name) != str(exc):
                log.error(
                    "Cluster %s: %s %s is invalid and is not enforced: %s", self.cluster, self.kind.kind, name, exc
                )
            self.invalid[name] = str(exc)
            removed = self.policies.pop(name, None) is not None
            if removed:
                self.engine.delete_cluster_policy(self.cluster, self.kind.kind, name)
            self._update_gauges()
            return removed
        if self.invalid.pop(name, None) is not None:
            log.info("Cluster %s: %s %s is valid again and enforced", self.cluster, self.kind.kind, name)
        previous = self.policies.get(name)
        problem = new_staged_problem(previous, policy)
        if problem:
            log.error("Cluster %s: %s %s: %s", self.cluster, self.kind.kind, name, problem)
        if previous == policy:
            self._update_gauges()
            return False
        if policy.warnings and (previous is None or previous.warnings != policy.warnings):
            for warning in policy.warnings:
                log.warning("Cluster %s: %s %s: cannot enforce %s", self.cluster, self.kind.kind, name, warning)
        self.policies[name] = policy
        self.engine.set_cluster_policy(policy)
        self._update_gauges()
        return True

    def _remove(self, name: str) -> bool:
        self.invalid.pop(name, None)
        removed = self.policies.pop(name, None) is not None
        if removed:
            self.engine.delete_cluster_policy(self.cluster, self.kind.kind, name)
        self._update_gauges()
        return removed

    def _update_gauges(self) -> None:
        POLICIES.labels(*self._labels).set(len(self.policies))
        INVALID.labels(*self._labels).set(len(self.invalid))
        DEGRADED.labels(*self._labels).set(sum(1 for p in self.policies.values() if p.warnings))
        STAGED.labels(*self._labels).set(sum(1 for p in self.policies.values() if p.staged))


class ClusterPolicyInformer(ReportsConnection):
    """Discovers, lists and watches the cluster-scoped policy kinds of one cluster into ``engine``.

    ``on_change()`` is called after every batch that changed the engine's policies.
    """

    def __init__(
        self,
        spec: ClusterSpec,
        engine: PolicyEngine,
        *,
        options: InformerOptions | None = None,
        on_change: Callable[[], None] | None = None,
        client_factory: ApiClientFactory = api_client,
        crd_check_interval: float = CRD_CHECK_INTERVAL,
    ) -> None:
        self.spec = spec
        self.cluster = spec.cluster_id
        self.engine = engine
        self.options = options or InformerOptions()
        self.client_factory = client_factory
        self.crd_check_interval = crd_check_interval
        self._on_change = on_change
        self.stores = {kind.kind: ClusterPolicyStore(self.cluster, kind, engine, self._changed) for kind in KINDS}
        self.installed: dict[str, bool | None] = dict.fromkeys(self.stores)  # None: not checked yet
        self._listed: set[str] = set()
        self.synced_event = asyncio.Event()
        self.connection = InformerConnection(
            self.cluster,
            "cluster-scoped policy informer",
            CONNECTED.labels(self.cluster),
            log,
            lambda: f"enforcing the {len(self.policies)} last known policies",
        )
        SYNCED.labels(self.cluster).set(0)

    @property
    def synced(self) -> bool:
        """Every kind was listed, or found not installed, at least once."""
        return self.synced_event.is_set()

    async def wait_synced(self) -> None:
        await self.synced_event.wait()

    @property
    def policies(self) -> dict[tuple[str, str], ClusterPolicy]:
        """Enforced policies by (kind, name)."""
        return {(kind, name): p for kind, store in self.stores.items() for name, p in store.policies.items()}

    @property
    def invalid(self) -> dict[tuple[str, str], str]:
        """Rejected policies by (kind, name): the parser's error."""
        return {(kind, name): e for kind, store in self.stores.items() for name, e in store.invalid.items()}

    async def run(self) -> None:
        """Until cancelled: connect, then per kind wait for its CRD and list/watch it, with the
        liveness probe beside; a failed connection is retried with backoff."""

        async def session(api: client.ApiClient, connected: Callable[[], None]) -> None:
            connected()
            async with asyncio.TaskGroup() as group:
                for kind in KINDS:
                    group.create_task(self._follow_kind(api, kind), name=f"{kind.plural}-{self.cluster}")
                probe = liveness_probe(
                    api, self.options, self.cluster, self.connection.failed, self.connection.answered
                )
                group.create_task(probe, name=f"cluster-policies-probe-{self.cluster}")

        await keep_connected(
            self.spec,
            self.client_factory,
            self.options,
            session,
            self.connection.failed,
            kind="clusterpolicies",
            what="read cluster-scoped network policies",
        )

    async def served(self, api: client.ApiClient, kind: PolicyKind) -> bool:
        """Whether API discovery lists the kind (its CRD is installed and established)."""
        timeout = aiohttp.ClientTimeout(total=self.options.request_timeout, sock_connect=self.options.connect_timeout)
        try:
            resp = await open_request(api, kind.discovery, timeout, {})
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
        try:
            document = await resp.json(content_type=None)
        finally:
            resp.release()
        self.connection.answered()
        return any(item.get("name") == kind.plural for item in document.get("resources") or [])

    async def _follow_kind(self, api: client.ApiClient, kind: PolicyKind) -> None:
        """Wait for the kind's CRD, list/watch it while it stays installed, and start over when it goes."""
        store = self.stores[kind.kind]
        while True:
            if not await self.served(api, kind):
                self._set_installed(kind, False)
                store.clear()
                await asyncio.sleep(self.crd_check_interval)
                continue
            self._set_installed(kind, True)
            reflector = Reflector(
                self.cluster,
                kind.resource,
                store,
                self.options,
                api=api,
                on_listed=lambda kind=kind: self._kind_listed(kind),
                on_watching=self.connection.answered,
                on_failure=self.connection.failed,
            )
            task = asyncio.create_task(reflector.run(), name=f"reflector-{self.cluster}-{kind.plural}")
            try:
                while True:
                    done, _ = await asyncio.wait({task}, timeout=self.crd_check_interval)
                    if done:
                        task.result()  # a reflector only ends by raising
                    if not await self.served(api, kind):
                        break
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    def _set_installed(self, kind: PolicyKind, installed: bool) -> None:
        before = self.installed[kind.kind]
        self.installed[kind.kind] = installed
        INSTALLED.labels(self.cluster, kind.kind).set(int(installed))
        if installed and before is not True:
            log.info("Cluster %s: %s (%s/%s) is installed; watching it", self.cluster, kind.kind, GROUP, kind.version)
        elif not installed and before is None:
            log.info(
                "Cluster %s: %s (%s/%s) is not installed; checking again every %.0fs",
                self.cluster,
                kind.kind,
                GROUP,
                kind.version,
                self.crd_check_interval,
            )
        elif not installed and before:
            log.warning(
                "Cluster %s: the %s CRD was removed; its policies are no longer enforced", self.cluster, kind.kind
            )
        if not installed:
            self._kind_listed(kind)

    def _kind_listed(self, kind: PolicyKind) -> None:
        self.connection.answered()
        self._listed.add(kind.kind)
        if not self.synced and self._listed.issuperset(self.stores):
            self.synced_event.set()
            SYNCED.labels(self.cluster).set(1)
            log.info("Cluster %s: cluster-scoped policies synced (%d enforced)", self.cluster, len(self.policies))
        self._check_baseline_mix()

    def _check_baseline_mix(self) -> None:
        banp = self.stores[BANP_KIND].policies
        baseline_cnps = [p for p in self.stores[CNP_KIND].policies.values() if p.tier is Tier.BASELINE]
        if banp and baseline_cnps:
            log.warning(
                "Cluster %s: a BaselineAdminNetworkPolicy and %d Baseline tier ClusterNetworkPolicies are both "
                "enforced; neither API says how they combine: the BaselineAdminNetworkPolicy counts as priority 0",
                self.cluster,
                len(baseline_cnps),
            )

    def _changed(self) -> None:
        if self._on_change is None:
            return
        try:
            self._on_change()
        except Exception:
            log.exception("Cluster %s: cluster-scoped policy change callback failed", self.cluster)
