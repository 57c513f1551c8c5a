"""The agent's watch of its own node's pods on its own cluster's API server (``--local-pod-watch``).

With ``--pod-cidr``, a connection of an address of the node's pod range that no pod of the tracker's
data has waits for that pod's data (:mod:`kube_ip_tracker.agent.enforce`). That data travels API
server -> tracker -> agent; the node's own API server has it first. So the agent lists and watches
the Pods with ``fieldSelector=spec.nodeName=<--node-name>`` (the shared reflector: streaming or
paginated lists, relist on 410, backoff, the liveness probe) and keeps them here as *provisional*
pod entries, which serve one purpose only: deciding such a connection without waiting for the
tracker. :meth:`LocalPodStore.provisional` gives the entry of an address under these rules:

* the tracker's data is authoritative. An address that a pod of the tracker's data has is that
  pod's, whatever this watch says (an address claimed here never shadows another pod: IP reuse is
  the tracker's to settle); a pod the tracker knows (same cluster, namespace and name) is judged by
  the tracker's record only, so the tracker's record supersedes the local one as soon as it arrives;
* the namespace's labels are the tracker's: a pod whose namespace the tracker has not sent is not
  used (its connections keep waiting);
* pods are converted as the tracker converts them (:mod:`kube_ip_tracker.kube.convert`: no
  hostNetwork, terminal or address-less pod); among local pods claiming one address the
  :mod:`kube_ip_tracker.ipclaims` rule picks one; a pod deleted, terminal or without its address is
  dropped;
* nothing is used while the watch is not connected (its data could be stale); losing and regaining
  the connection counts as a change.

The entries never enter the world: the local pod sets, ``explain`` and the tracker mirror see only the
tracker's data. Every change of an entry is reported with ``on_change()``, which the agent wires to
the hook of tracker data changes (verdict cache flush, waiting connections re-check, revalidation).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from prometheus_client import Counter, Gauge

from kube_ip_tracker.agent.informer_connection import InformerConnection, ReportsConnection
from kube_ip_tracker.agent.policy import PolicyEngine
from kube_ip_tracker.agent.policy.objects import PodEntry
from kube_ip_tracker.ipclaims import IPClaims
from kube_ip_tracker.kube.convert import object_key, pod_record
from kube_ip_tracker.kube.kubeconfig import api_client
from kube_ip_tracker.kube.reflector import ApiClientFactory, InformerOptions, Reflector, Resource, follow
from kube_ip_tracker.model import ClusterSpec, Kind

log = logging.getLogger(__name__)

PLURAL = "pods"
UPDATES = Counter(
    "kube_ip_agent_local_pod_watch_updates_total",
    "Changes of this node's pods (with an address) seen by the local pod watch (op: upsert, delete); "
    "each empties the verdict cache as tracker data changes do.",
    ["op"],
)
CONNECTED = Gauge(
    "kube_ip_agent_local_pod_watch_connected",
    "1 while the local pod watch's API server answers; its data is used only then.",
    ["cluster"],
)

PodKey = tuple[str, str]  # namespace, name


class LocalPodStore:
    """The reflector store of this node's pods: provisional entries, and the address claims among them."""

    def __init__(self, cluster: str, node: str, engine: PolicyEngine, on_change: Callable[[], None]) -> None:
        self.cluster = cluster
        self.node = node
        self.engine = engine
        self.on_change = on_change
        self.entries: dict[PodKey, PodEntry] = {}
        self.claims: IPClaims[PodEntry] = IPClaims()

    def __len__(self) -> int:
        return len(self.entries)

    def replacement(self) -> LocalPodReplacement:
        return LocalPodReplacement(self)

    def upsert(self, obj: dict[str, Any]) -> None:
        if self.put(object_key(Kind.POD, obj), self.entry(obj)):
            self.on_change()

    def delete(self, obj: dict[str, Any]) -> None:
        if self.put(object_key(Kind.POD, obj), None):
            self.on_change()

    def entry(self, obj: dict[str, Any]) -> PodEntry | None:
        """The provisional entry of a pod object, or None when it must not be used (as the tracker indexes)."""
        record = pod_record(self.cluster, obj)
        if record is None or record.node != self.node:
            return None
        try:
            return self.engine.world.objects.entry(record)
        except ValueError as exc:
            log.warning(
                "Cluster %s: pod %s/%s on node %s has an invalid IP (%s); not used",
                self.cluster,
                record.namespace,
                record.name,
                self.node,
                exc,
            )
            return None

    def put(self, key: PodKey, entry: PodEntry | None) -> bool:
        """Hold ``entry`` for ``key`` (None: drop it); returns whether a decision could change."""
        previous = self.entries.get(key)
        if entry is None:
            if previous is None:
                return False
            del self.entries[key]
            self.claims.remove(previous)
            UPDATES.labels("delete").inc()
            log.debug("Cluster %s: local pod %s/%s gone from node %s", self.cluster, *key, self.node)
            return True
        if previous is not None:
            if entry.decides_like(previous):
                return False
            self.claims.remove(previous)
        self.entries[key] = entry
        self.claims.add(entry)
        UPDATES.labels("upsert").inc()
        log.debug(
            "Cluster %s: local pod %s/%s on node %s: %s %s",
            self.cluster,
            *key,
            self.node,
            ",".join(entry.ip_texts),
            dict(entry.labels),
        )
        return True

    def provisional(self, key: int) -> PodEntry | None:
        """The local pod of the address of ``key`` when the tracker's data has neither that address nor that
        pod and has the pod's namespace (see the module docstring); else None."""
        entry = self.claims.owner_record(key)
        if entry is None:
            return None
        objects = self.engine.world.objects
        identity = entry.identity
        if (
            objects.pod_by_key(key) is not None
            or objects.pod(identity.cluster, identity.namespace, entry.name) is not None
            or (identity.cluster, identity.namespace) not in objects.namespaces
        ):
            return None
        return entry


class LocalPodReplacement:
    """A full list of this node's pods; committing makes the store hold exactly them."""

    def __init__(self, store: LocalPodStore) -> None:
        self.store = store
        self.items: dict[PodKey, PodEntry | None] = {}

    def add(self, obj: dict[str, Any]) -> None:
        self.items[object_key(Kind.POD, obj)] = self.store.entry(obj)

    def commit(self, resource_version: str) -> str:
        store = self.store
        stale = store.entries.keys() - self.items.keys()
        changed = False
        for key in stale:
            changed |= store.put(key, None)
        for key, entry in self.items.items():
            changed |= store.put(key, entry)
        if changed:
            store.on_change()
        return f"{len(store.entries)} with an address, {len(stale)} gone"


class LocalPodInformer(ReportsConnection):
    """Lists and watches the pods of ``node`` in the agent's own cluster until cancelled (see the module
    docstring); :meth:`provisional` is the lookup :class:`~kube_ip_tracker.agent.enforce.LocalEnforcement`
    asks for an address the tracker's data does not have."""

    def __init__(
        self,
        spec: ClusterSpec,
        node: str,
        engine: PolicyEngine,
        *,
        on_change: Callable[[], None],
        options: InformerOptions | None = None,
        client_factory: ApiClientFactory = api_client,
    ) -> None:
        self.spec = spec
        self.cluster = spec.cluster_id
        self.node = node
        self.options = options or InformerOptions()
        self.client_factory = client_factory
        self.store = LocalPodStore(self.cluster, node, engine, on_change)
        self.connection = InformerConnection(
            self.cluster,
            "local pod watch",
            CONNECTED.labels(self.cluster),
            log,
            lambda: "new local pods wait for the tracker's data",
        )
        resource = Resource.core(PLURAL).selecting(f"spec.nodeName={node}")
        self.reflector = Reflector(
            self.cluster,
            resource,
            self.store,
            self.options,
            on_listed=self._listed,
            on_watching=self._answered,
            on_failure=self._failed,
        )
        self.listed = False
        self._forbidden_told = False

    def provisional(self, key: int) -> PodEntry | None:
        """The local pod of an address the tracker's data does not have, while the watch is connected."""
        if not self.connection.connected:
            return None
        return self.store.provisional(key)

    async def run(self) -> None:
        """Connect and list/watch (with the liveness probe) until cancelled, reconnecting with backoff."""
        log.info(
            "Cluster %s: watching the pods of node %s on the local API server (fieldSelector spec.nodeName=%s)",
            self.cluster,
            self.node,
            self.node,
        )
        try:
            await follow(
                self.spec,
                self.client_factory,
                self.options,
                [self.reflector],
                self._failed,
                self._answered,
                kind=PLURAL,
                what="watch this node's pods",
            )
        finally:
            self.connection.closed()

    def _failed(self, message: str) -> None:
        """A list, watch, connection or probe failed: the local data is not used until the watch is back."""
        if "(403)" in message and not self._forbidden_told:
            self._forbidden_told = True
            log.error(
                "Cluster %s: the agent may not list/watch pods (%s); new local pods wait for the tracker's data. "
                "Grant pods list and watch to the agent (docs/agent.md) or run it with --no-local-pod-watch",
                self.cluster,
                message,
            )
        was_connected = self.connection.connected
        self.connection.failed(message)
        if was_connected:
            self.store.on_change()  # what was decided with the local data is decided again without it

    def _answered(self) -> None:
        """A list or watch opened, or a probe passed: the local data is used again."""
        was_connected = self.connection.connected
        self.connection.answered()
        if not was_connected:
            self.store.on_change()  # waiting connections look again

    def _listed(self) -> None:
        self._answered()
        if not self.listed:
            self.listed = True
            log.info(
                "Cluster %s: pods of node %s listed (%d with an address)", self.cluster, self.node, len(self.store)
            )
