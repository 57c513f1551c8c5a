"""Feeds the tracker mirror's pods and namespaces (all clusters) into the agent's PolicyEngine.

:class:`MirrorFeed` is a :class:`~kube_ip_tracker.agent.mirror.Mirror` listener: the mirror is
the :class:`~kube_ip_tracker.client.sink.ApplySink` of the tracker client, turns snapshots into
the differences they make, and hands each applied batch over as typed events, which the feed
applies to the engine. Policies are not touched: they come from the local NetworkPolicy informer,
so a cluster removed by the tracker loses its pods and namespaces (one deletion event each) but
never the agent's own policies.

The feed also keeps the addresses of the local pods: pods of ``local_cluster`` (on ``node`` when
given), which the dataplane enforces when no static ``--pod-cidr`` is configured.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from prometheus_client import Counter, Gauge

from kube_ip_tracker.agent import events as ev
from kube_ip_tracker.agent.mirror import Mirror
from kube_ip_tracker.agent.policy import PolicyEngine
from kube_ip_tracker.model import PodRecord

log = logging.getLogger(__name__)

APPLIED = Counter(
    "kube_ip_agent_mirror_events_applied_total",
    "Mirror events applied to the policy evaluator (kind: pod, namespace; op: upsert, delete).",
    ["kind", "op"],
)
REJECTED = Counter(
    "kube_ip_agent_mirror_pods_rejected_total",
    "Pods from the tracker the evaluator could not take (an unparsable IP); logged with the pod name.",
)
LOCAL_PODS = Gauge("kube_ip_agent_local_pod_addresses", "Addresses of local pods the dataplane enforces.")


def _decision_fields(pod: PodRecord) -> tuple[object, ...]:
    """What of a pod can change a verdict (labels, addresses, named ports, age for address conflicts)."""
    return (pod.labels, pod.ips, pod.ports, pod.creation_timestamp)


class MirrorFeed:
    """Applies mirror events to ``engine``; ``on_change()`` after every batch that can change a verdict
    (a pod moving to another node, say, does not).

    ``on_local_pods(addresses)`` is called with the new set of local pod addresses whenever it changes.
    """

    def __init__(
        self,
        engine: PolicyEngine,
        local_cluster: str,
        *,
        node: str | None = None,
        on_change: Callable[[], None] | None = None,
        on_local_pods: Callable[[frozenset[str]], None] | None = None,
    ) -> None:
        self.engine = engine
        self.local_cluster = local_cluster
        self.node = node or None
        self.on_change = on_change
        self.on_local_pods = on_local_pods
        self._local: dict[tuple[str, str], tuple[str, ...]] = {}  # (namespace, name) -> IPs
        self.local_addresses: frozenset[str] = frozenset()
        self._local_dirty = False
        self._unsubscribe: Callable[[], None] | None = None

    def attach(self, mirror: Mirror) -> None:
        """Subscribe to ``mirror`` and load what it already holds."""
        self._unsubscribe = mirror.subscribe(self.handle)
        initial: list[ev.MirrorEvent] = [ev.NamespaceUpserted(ns, None) for ns in mirror.namespaces()]
        initial += [ev.PodUpserted(pod, None) for pod in mirror.pods()]
        if initial:
            self.handle(initial)

    def detach(self) -> None:
        """Stop following the mirror."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None

    def handle(self, batch: Sequence[ev.MirrorEvent]) -> None:
        """Apply one batch of mirror events (a mirror listener)."""
        changed = False
        engine = self.engine
        for event in batch:
            if isinstance(event, ev.PodUpserted):
                changed |= self._set_pod(event.pod, event.previous)
            elif isinstance(event, ev.PodDeleted):
                pod = event.pod
                engine.delete_pod(pod.cluster, pod.namespace, pod.name)
                self._forget_local(pod)
                APPLIED.labels("pod", "delete").inc()
                changed = True
            elif isinstance(event, ev.NamespaceUpserted):
                engine.set_namespace(event.namespace)
                APPLIED.labels("namespace", "upsert").inc()
                previous_ns = event.previous
                changed |= previous_ns is None or previous_ns.labels != event.namespace.labels
            elif isinstance(event, ev.NamespaceDeleted):
                ns = event.namespace
                engine.delete_namespace(ns.cluster, ns.name)
                APPLIED.labels("namespace", "delete").inc()
                changed = True
            # Nodes, cluster statuses and markers do not affect decisions.
        self._publish_local()
        if changed and self.on_change is not None:
            self.on_change()

    def _set_pod(self, pod: PodRecord, previous: PodRecord | None) -> bool:
        try:
            self.engine.set_pod(pod)
        except ValueError as exc:
            REJECTED.inc()
            log.error(
                "Pod %s/%s/%s from the tracker has an invalid IP (%s); it is not known to the evaluator",
                pod.cluster,
                pod.namespace,
                pod.name,
                exc,
            )
            if previous is not None:
                self.engine.delete_pod(pod.cluster, pod.namespace, pod.name)
            self._forget_local(pod)
            return previous is not None
        APPLIED.labels("pod", "upsert").inc()
        self._track_local(pod)
        return previous is None or _decision_fields(previous) != _decision_fields(pod)

    def _track_local(self, pod: PodRecord) -> None:
        if self._is_local(pod):
            key = (pod.namespace, pod.name)
            if self._local.get(key) != pod.ips:
                self._local[key] = pod.ips
                self._local_dirty = True
        else:
            self._forget_local(pod)

    def _is_local(self, pod: PodRecord) -> bool:
        return pod.cluster == self.local_cluster and (self.node is None or pod.node == self.node)

    def _forget_local(self, pod: PodRecord) -> None:
        if pod.cluster == self.local_cluster and self._local.pop((pod.namespace, pod.name), None) is not None:
            self._local_dirty = True

    def _publish_local(self) -> None:
        if not self._local_dirty:
            return
        self._local_dirty = False
        addresses = frozenset(ip for ips in self._local.values() for ip in ips)
        if addresses == self.local_addresses:
            return
        self.local_addresses = addresses
        LOCAL_PODS.set(len(addresses))
        if self.on_local_pods is not None:
            self.on_local_pods(addresses)
