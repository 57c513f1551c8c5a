"""The local pod watch end to end, on real packets: a real API server, a real tracker process, a real
``kube-ip-agent run`` with ``--pod-cidr`` and ``--no-fail-open``, pods as network namespaces.

The tracker is paused (SIGSTOP) while a new pod starts: its first connections are still decided as
that pod's, within the verdict timeout, from the agent's watch of its node's pods. When the tracker's
data comes and says otherwise, it wins; and an address the tracker still gives to another pod (an IP
reused) is that pod's, whatever the local watch says.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import secrets
import signal
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from kubernetes_asyncio import client

from kube_ip_tracker.testing import objects
from kube_ip_tracker.testing.clusters import LocalCluster, free_port
from kube_ip_tracker.testing.netns import Pod, PodNetwork
from kube_ip_tracker.testing.proxy import TcpProxy

from .test_agent_run_root import (
    NAMESPACE,
    Process,
    eventually,
    processes,  # noqa: F401 (the fixture)
    start_agent,
    tracker_argv,
)
from .test_local_pod_watch import kubeconfig_via

pytestmark = [pytest.mark.root, pytest.mark.cluster]

PORT = 8080
VERDICT_TIMEOUT = 4.0
# Shorter than the verdict timeout: a connection accepted within it was decided, not given the default
# (which is a drop here, --no-fail-open).
PROBE = 2.0
APPLIED_PODS = 'kube_ip_agent_mirror_events_applied_total{kind="pod",op="upsert"}'


def series(port: int, sample: str) -> float:
    """The value of one sample of the agent's /metrics, e.g. ``name{label="value"}`` (0 when absent or not served)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
            text = resp.read().decode()
    except OSError:
        return 0.0
    for line in text.splitlines():
        if line.startswith(sample + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def db_ingress_from_web() -> dict[str, object]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "db", "namespace": NAMESPACE},
        "spec": {
            "podSelector": {"matchLabels": {"app": "db"}},
            "policyTypes": ["Ingress"],
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "web"}}}]}],
        },
    }


@dataclass
class Stack:
    cluster: LocalCluster
    tracker: Process
    agent: Process
    metrics: int
    proxy: TcpProxy
    web: Pod
    other: Pod

    def local_decisions(self) -> float:
        name = "kube_ip_agent_local_pod_watch_decisions_total"
        return series(self.metrics, f'{name}{{when="at-once"}}') + series(self.metrics, f'{name}{{when="after-wait"}}')

    def gave_up(self) -> float:
        return series(self.metrics, 'kube_ip_agent_unknown_local_pod_waits_total{result="gave-up"}')

    def denied(self, pod: str, policy: str) -> bool:
        """The verdict log has a denied connection to ``pod`` naming ``policy``."""
        dst, by = f'dst="{self.cluster.name}/{NAMESPACE}/{pod}"', f'policy="{NAMESPACE}/{policy}"'
        return any(
            'verdict="deny"' in line and dst in line and by in line for line in self.agent.tail(400).splitlines()
        )

    async def probe(self, src: Pod, dst: Pod) -> bool:
        return await asyncio.to_thread(src.tcp_probe, dst.ip, PORT, PROBE)

    @contextlib.contextmanager
    def tracker_paused(self) -> Iterator[None]:
        self.tracker.proc.send_signal(signal.SIGSTOP)
        try:
            yield
        finally:
            self.tracker.proc.send_signal(signal.SIGCONT)


@contextlib.asynccontextmanager
async def stack(
    cluster_factory,
    processes: list[Process],  # noqa: F811
    tmp_path: Path,
    net: PodNetwork,
    *known: tuple[Pod, str],
) -> AsyncIterator[Stack]:  # type: ignore[no-untyped-def]
    """Pods web (app=web), other (app=other) and ``known`` (pod, app) in the API server, the policy "db"
    (ingress to app=db only from app=web), a tracker, and an agent reaching the API server through a proxy."""
    (cluster,) = cluster_factory(1)
    web, other = net.add_pod("web"), net.add_pod("other")
    proxy = await TcpProxy(cluster.port).start()
    try:
        async with cluster.api_client() as api:
            await objects.create_namespace(api, NAMESPACE)
            for pod, app in ((web, "web"), (other, "other"), *known):
                await objects.create_pod(api, NAMESPACE, pod.name, labels={"app": app}, ips=[str(pod.ip)])
            await client.NetworkingV1Api(api).create_namespaced_network_policy(NAMESPACE, db_ingress_from_web())
        tracker_port, metrics = free_port(), free_port()
        tracker = Process(tracker_argv(cluster, tracker_port), tmp_path / "tracker.log")
        processes.append(tracker)
        pod_range = ipaddress.ip_network(f"{web.ip}/24", strict=False)
        flags = ["--kubeconfig", str(kubeconfig_via(tmp_path / "agent.kubeconfig", cluster, proxy.url))]
        flags += ["--pod-cidr", str(pod_range), "--no-fail-open", "--verdict-timeout", str(VERDICT_TIMEOUT)]
        name, queue = f"kipt-{secrets.token_hex(3)}", 20000 + secrets.randbelow(40000)
        agent = start_agent(tmp_path, cluster, tracker_port, name, metrics, queue, *flags)
        processes.append(agent)
        result = Stack(cluster, tracker, agent, metrics, proxy, web, other)
        connected = f'kube_ip_agent_local_pod_watch_connected{{cluster="{cluster.name}"}}'
        await eventually(lambda: series(metrics, "kube_ip_agent_ready") == 1.0, "agent ready", agent, 60)
        await eventually(lambda: series(metrics, connected) == 1.0, "local pod watch connected", agent)
        assert "local pod watch on" in agent.tail(200)
        yield result
    finally:
        await proxy.stop()


async def test_a_new_pod_is_decided_from_the_local_watch_while_the_tracker_is_paused_and_the_tracker_wins_later(
    cluster_factory,
    processes: list[Process],  # noqa: F811
    tmp_path: Path,
) -> None:  # type: ignore[no-untyped-def]
    with PodNetwork(host_address=True) as net:
        async with stack(cluster_factory, processes, tmp_path, net) as s:
            db = net.add_pod("db")
            db.serve_tcp(PORT)
            connected = f'kube_ip_agent_local_pod_watch_connected{{cluster="{s.cluster.name}"}}'
            with s.tracker_paused():
                async with s.cluster.api_client() as api:
                    await objects.create_pod(api, NAMESPACE, "db", labels={"app": "db"}, ips=[str(db.ip)])
                # The tracker knows nothing of db: decided within the verdict timeout from the local watch.
                assert await s.probe(s.web, db), s.agent.tail()
                assert not await s.probe(s.other, db), s.agent.tail()
                await eventually(lambda: s.denied("db", "db"), "other -> db denied as db's (verdict log)", s.agent)
                assert s.gave_up() == 0, "no connection waited until the timeout"
                assert s.local_decisions() >= 2
                # Now the agent's API server connections freeze (its watch keeps db as app=db) while db is
                # relabelled: the tracker's record, when it comes, differs from the local one.
                s.proxy.hold()
                async with s.cluster.api_client() as api:
                    await objects.label_pod(api, NAMESPACE, "db", {"app": "open"})
                local_decisions = s.local_decisions()
                applied = series(s.metrics, APPLIED_PODS)
            # The tracker streams db with app=open (not isolated): its data wins over the local app=db.
            # (Checked within 8 s of the hold: the agent's liveness probe cannot have failed yet, so the
            # local watch still counts as connected and its stale data was there to be used.)
            await eventually(lambda: series(s.metrics, APPLIED_PODS) > applied, "db from the tracker", s.agent, 5)
            await eventually(lambda: s.other.tcp_probe(db.ip, PORT, 0.5), "the tracker's record wins", s.agent, 5)
            assert series(s.metrics, connected) == 1.0
            assert s.local_decisions() == local_decisions
            s.proxy.release()
            assert s.agent.terminate() == 0, s.agent.tail()


async def test_an_address_claimed_locally_never_shadows_the_trackers_pod_of_that_address(
    cluster_factory,
    processes: list[Process],  # noqa: F811
    tmp_path: Path,
) -> None:  # type: ignore[no-untyped-def]
    """IP reuse: the pod "old" (app=open) is deleted and "new" (app=db) takes its address while the tracker
    is paused. Until the tracker says so, the address is old's (not isolated); then new's (isolated)."""
    with PodNetwork(host_address=True) as net:
        reused = net.add_pod("old")
        reused.serve_tcp(PORT)
        async with stack(cluster_factory, processes, tmp_path, net, (reused, "open")) as s:
            assert await s.probe(s.other, reused), s.agent.tail()
            updates = 'kube_ip_agent_local_pod_watch_updates_total{op="upsert"}'
            upserts = series(s.metrics, updates)
            with s.tracker_paused():
                async with s.cluster.api_client() as api:
                    await objects.delete_pod(api, NAMESPACE, "old")
                    await objects.create_pod(api, NAMESPACE, "new", labels={"app": "db"}, ips=[str(reused.ip)])
                await eventually(lambda: series(s.metrics, updates) > upserts, "new pod watched locally", s.agent)
                # The local watch's changes emptied the verdict cache: the agent decides again, with the
                # tracker's "old" (not isolated), not the local "new" (isolated: only web may connect).
                assert await s.probe(s.web, reused) and await s.probe(s.other, reused), s.agent.tail()
            await eventually(
                lambda: not s.other.tcp_probe(reused.ip, PORT, 0.5), "new's policy once the tracker says so", s.agent
            )
            assert s.denied("new", "db"), s.agent.tail()
            assert await s.probe(s.web, reused), s.agent.tail()
            assert s.agent.terminate() == 0, s.agent.tail()
