"""The client against the real tracker process watching two real clusters, across a SIGKILL restart."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from kube_ip_tracker.agent.store import AgentStore
from kube_ip_tracker.client.client import ClientOptions, TrackerClient
from kube_ip_tracker.testing import objects
from kube_ip_tracker.testing.clusters import ClusterSet, free_port

pytestmark = pytest.mark.cluster

# The `kube-ip-tracker` program, run by this interpreter (so a fresh checkout tests its own code).
TRACKER_CMD = [sys.executable, "-m", "kube_ip_tracker.cli"]


class TrackerProcess:
    """``kube-ip-tracker --kubeconfig ... --listen-address ...`` as a child process."""

    def __init__(self, kubeconfig: Path, port: int, log_path: Path) -> None:
        self.argv = [
            *TRACKER_CMD,
            "--kubeconfig",
            str(kubeconfig),
            "--listen-address",
            f"127.0.0.1:{port}",
            "--metrics-address",
            "",
        ]
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def kill(self) -> None:
        """SIGKILL: no graceful shutdown, as when a node dies."""
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def log_tail(self) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-40:])


@pytest.fixture
def tracker_process(tmp_path: Path) -> Iterator[Callable[[Path, int], TrackerProcess]]:
    started: list[TrackerProcess] = []

    def make(kubeconfig: Path, port: int) -> TrackerProcess:
        proc = TrackerProcess(kubeconfig, port, tmp_path / "tracker.log")
        started.append(proc)
        return proc

    yield make
    for proc in started:
        proc.stop()


async def converge(predicate: Callable[[], bool], what: str, tracker: TrackerProcess, within: float = 30.0) -> None:
    for _ in range(int(within / 0.05)):
        if predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"mirror did not converge ({what}) within {within}s; tracker log:\n{tracker.log_tail()}")


async def api_pods(clusters: ClusterSet) -> set[tuple[str, str, str]]:
    from kubernetes_asyncio import client

    found: set[tuple[str, str, str]] = set()
    for cluster in clusters:
        async with cluster.api_client() as api:
            for p in (await client.CoreV1Api(api).list_pod_for_all_namespaces()).items:
                found.add((cluster.name, p.metadata.namespace, p.metadata.name))
    return found


async def test_mirror_converges_after_tracker_is_killed_and_restarted(cluster_factory, tracker_process) -> None:  # type: ignore[no-untyped-def]
    clusters: ClusterSet = cluster_factory(2)
    for i, cluster in enumerate(clusters):
        async with cluster.api_client() as api:
            await objects.create_namespace(api, "demo", {"team": f"t{i}"})
            await objects.create_node(api, "node-1", {"zone": f"z{i}"}, internal_ip=f"192.0.2.{i + 1}")
            for j in range(3):
                await objects.create_pod(api, "demo", f"web-{j}", labels={"app": "web"}, ips=[f"10.{i}.0.{j + 1}"])
    port = free_port()
    tracker = tracker_process(clusters.merged_kubeconfig, port)
    tracker.start()
    mirror = AgentStore()
    client = TrackerClient(f"127.0.0.1:{port}", mirror, ClientOptions(backoff_base=0.1, backoff_cap=1.0))
    client.start()
    try:
        names = [c.name for c in clusters]
        await converge(lambda: client.ready and all(mirror.cluster_synced(c) for c in names), "ready", tracker)
        await converge(lambda: len(list(mirror.pods())) == 6, "6 pods", tracker)
        found = mirror.pod_by_ip("10.1.0.2")
        assert found is not None
        pod, ns, node = found
        assert (pod.cluster, pod.namespace, pod.name) == ("cluster-2", "demo", "web-1")
        assert ns is not None and dict(ns.labels)["team"] == "t1"
        assert node is not None and node.internal_ips == ("192.0.2.2",)
        first_epoch = client.epoch

        tracker.kill()
        await converge(lambda: not client.connected, "disconnected", tracker)
        # While the tracker is down: a pod goes away in one cluster, one appears in the other.
        async with clusters[0].api_client() as api:
            await objects.delete_pod(api, "demo", "web-0")
        async with clusters[1].api_client() as api:
            await objects.create_pod(api, "demo", "new-0", labels={"app": "new"}, ips=["10.1.0.99"])
            await objects.label_namespace(api, "demo", {"team": "changed"})
        assert mirror.pod_by_ip("10.0.0.1") is not None  # last known state is kept meanwhile

        tracker.start()
        await converge(lambda: client.epoch not in ("", first_epoch), "new epoch", tracker)
        want = {k for k in await api_pods(clusters) if k[1] == "demo"}
        await converge(lambda: {p.key for p in mirror.pods()} == want, "pods equal the API servers'", tracker)
        assert mirror.pod_by_ip("10.0.0.1") is None
        found = mirror.pod_by_ip("10.1.0.99")
        assert found is not None and found[1] is not None and dict(found[1].labels)["team"] == "changed"
        assert all(mirror.cluster_synced(c) for c in names)
        assert mirror.snapshots == 2
    finally:
        await client.stop()
