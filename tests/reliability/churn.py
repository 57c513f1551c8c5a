"""A churn run: real clusters changing, a real tracker process, agent mirrors, and faults injected.

:class:`Churn` changes Pods (create, delete, relabel), Namespaces (label, create and delete empty
ones) and Nodes (create, delete) in every cluster, with a few workers per cluster, until stopped.
Pod names and IPs are never reused, so a delete the tracker misses stays visible as an extra pod.
A request that fails (API server down or frozen) is counted and retried later with another change;
the truth is listed from the API servers at the end, so unknown outcomes do not matter.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from kubernetes_asyncio import client

from kube_ip_tracker.testing import objects
from kube_ip_tracker.testing.clusters import LocalCluster

log = logging.getLogger(__name__)

NAMESPACES = ("ns-0", "ns-1")


@dataclass
class ClusterChurn:
    cluster: LocalCluster
    index: int
    pods: list[tuple[str, str]] = field(default_factory=list)  # (namespace, name) believed to exist
    nodes: list[str] = field(default_factory=list)
    spare_namespaces: list[str] = field(default_factory=list)
    serial: int = 0

    def next_pod(self) -> tuple[str, str]:
        self.serial += 1
        n = self.serial
        return f"p-{n}", f"10.{100 + self.index}.{n // 250 % 256}.{n % 250 + 1}"


class Churn:
    """Random changes in every cluster until :meth:`stop`; ``changes`` counts those that succeeded."""

    def __init__(self, clusters: Sequence[LocalCluster], *, workers: int = 2, seed: int = 7) -> None:
        self.clusters = [ClusterChurn(c, i) for i, c in enumerate(clusters)]
        self.workers = workers
        self.rng = random.Random(seed)
        self.changes = 0
        self.pod_changes = 0
        self.deletes = 0
        self.failures = 0
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def prepare(self, pods_per_cluster: int = 30) -> None:
        """Namespaces, a node and some pods in every cluster."""
        for cc in self.clusters:
            async with cc.cluster.api_client() as api:
                for ns in NAMESPACES:
                    await objects.create_namespace(api, ns, {"team": ns})
                await objects.create_node(api, "node-0", {"zone": "a"}, internal_ip=f"192.0.{cc.index}.1")
                cc.nodes.append("node-0")
                for i in range(pods_per_cluster):
                    await self._create_pod(api, cc, NAMESPACES[i % 2])

    def start(self) -> None:
        for cc in self.clusters:
            for w in range(self.workers):
                self._tasks.append(asyncio.create_task(self._worker(cc), name=f"churn-{cc.cluster.name}-{w}"))

    async def stop(self) -> None:
        """Stop every worker (after its current request); :meth:`start` may run again."""
        self._stop.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        self._stop = asyncio.Event()

    async def _worker(self, cc: ClusterChurn) -> None:
        async with cc.cluster.api_client() as api:
            while not self._stop.is_set():
                try:
                    kind = await asyncio.wait_for(self._one(api, cc), 30)
                except Exception as exc:  # the API server is down, frozen or restarting
                    self.failures += 1
                    log.debug("churn on %s failed: %s", cc.cluster.name, exc)
                    await asyncio.sleep(0.2)
                    continue
                self.changes += 1
                self.pod_changes += kind == "pod"
                await asyncio.sleep(0)

    async def _one(self, api: client.ApiClient, cc: ClusterChurn) -> str:
        """One change; returns the kind of object changed."""
        roll = self.rng.random()
        if roll < 0.40 or len(cc.pods) < 10:
            await self._create_pod(api, cc, self.rng.choice(NAMESPACES))
            return "pod"
        if roll < 0.75:
            ns, name = cc.pods.pop(self.rng.randrange(len(cc.pods)))
            await objects.delete_pod(api, ns, name)
            self.deletes += 1
            return "pod"
        if roll < 0.87:
            ns, name = self.rng.choice(cc.pods)
            await objects.label_pod(api, ns, name, {"v": str(self.rng.randrange(5))})
            return "pod"
        if roll < 0.92:
            ns = self.rng.choice(NAMESPACES)
            await objects.label_namespace(api, ns, {"rev": str(self.rng.randrange(1000))})
        elif roll < 0.96:
            if cc.spare_namespaces and self.rng.random() < 0.5:
                # Without a namespace controller it only turns Terminating (an update), and stays.
                await objects.delete_namespace(api, cc.spare_namespaces.pop())
            else:
                cc.serial += 1
                name = f"spare-{cc.serial}"
                cc.spare_namespaces.append(name)
                await objects.create_namespace(api, name, {"spare": "yes"})
        elif len(cc.nodes) > 1 and self.rng.random() < 0.5:
            name = cc.nodes.pop()
            await client.CoreV1Api(api).delete_node(name)
            self.deletes += 1
        else:
            cc.serial += 1
            name = f"node-{cc.serial}"
            cc.nodes.append(name)
            await objects.create_node(api, name, {"zone": "b"}, internal_ip=f"192.1.{cc.index}.{cc.serial % 250 + 1}")
        return "node" if roll >= 0.96 else "namespace"

    async def _create_pod(self, api: client.ApiClient, cc: ClusterChurn, ns: str) -> None:
        name, ip = cc.next_pod()
        cc.pods.append((ns, name))
        await objects.create_pod(api, ns, name, labels={"app": name[-1]}, ips=[ip])


class Timeline:
    """When each fault ran, for the report."""

    def __init__(self) -> None:
        self.start = time.monotonic()
        self.events: list[str] = []

    def mark(self, what: str) -> None:
        self.events.append(f"{time.monotonic() - self.start:6.1f}s {what}")
        log.info("churn run: %s", what)

    def __str__(self) -> str:
        return "\n".join(self.events)
