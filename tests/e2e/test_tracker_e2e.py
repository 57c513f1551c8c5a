"""The real ``kube-ip-tracker`` process against real API servers, read over gRPC with the generated stub."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kube_ip_tracker.api.v1 import tracker_pb2 as pb
from kube_ip_tracker.api.v1 import tracker_pb2_grpc
from kube_ip_tracker.cluster_labels import CLUSTER_LABEL, CLUSTER_NAME_LABEL
from kube_ip_tracker.testing import objects, polling
from kube_ip_tracker.testing.clusters import free_port

pytestmark = pytest.mark.cluster

TRACKER_BIN = Path(sys.executable).with_name("kube-ip-tracker")


class Tracker:
    """A kube-ip-tracker child process with its gRPC channel."""

    def __init__(self, args: list[str], log_path: Path) -> None:
        self.port = free_port()
        self.metrics_port = free_port()
        self.argv = [
            str(TRACKER_BIN),
            "--listen-address",
            f"127.0.0.1:{self.port}",
            "--metrics-address",
            f"127.0.0.1:{self.metrics_port}",
            "--shutdown-grace",
            "1s",
            *args,
        ]
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.channel: grpc.aio.Channel | None = None

    def start(self) -> Tracker:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{self.port}")
        return self

    @property
    def stub(self) -> tracker_pb2_grpc.TrackerStub:
        assert self.channel is not None
        return tracker_pb2_grpc.TrackerStub(self.channel)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def health(self) -> int:
        assert self.channel is not None
        try:
            resp = await health_pb2_grpc.HealthStub(self.channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
        except grpc.aio.AioRpcError:
            return -1
        return resp.status

    async def serving(self) -> bool:
        return await self.health() == health_pb2.HealthCheckResponse.SERVING

    async def clusters(self) -> dict[str, pb.ClusterInfo]:
        resp = await self.stub.ListClusters(pb.ListClustersRequest(), timeout=5)
        return {c.status.cluster: c for c in resp.clusters}

    async def pod(self, ip: str) -> pb.GetPodByIPResponse | None:
        try:
            return await self.stub.GetPodByIP(pb.GetPodByIPRequest(ip=ip), timeout=5)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise

    async def eventually(self, check: Callable[[], object], what: str, within: float = 30.0) -> None:
        def alive_and_checked() -> object:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"tracker exited with {self.proc.returncode} before {what}:\n{self.log()[-4000:]}")
            return check()

        await polling.eventually(
            alive_and_checked, what, within=within, interval=0.1, detail=lambda: f"tracker log:\n{self.log()[-4000:]}"
        )

    async def terminate(self) -> int:
        if self.channel is not None:
            await self.channel.close()
            self.channel = None
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return await asyncio.to_thread(self.proc.wait, 20)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            return -9


@pytest.fixture
async def tracker(tmp_path: Path) -> Iterator[Callable[..., Tracker]]:
    started: list[Tracker] = []

    def start(*args: str) -> Tracker:
        t = Tracker(list(args), tmp_path / f"tracker-{len(started)}.log").start()
        started.append(t)
        return t

    yield start
    for t in started:
        await t.terminate()


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.read().decode()


def readyz_status(url: str) -> int:
    """HTTP status of the metrics endpoint's /readyz; 0 while nothing listens yet."""
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


async def pod_name(t: Tracker, ip: str) -> str:
    found = await t.pod(ip)
    return f"{found.pod.cluster}/{found.pod.namespace}/{found.pod.name}" if found else ""


async def test_tracker_serves_two_clusters_over_grpc(cluster_factory, tracker) -> None:  # type: ignore[no-untyped-def]
    clusters = cluster_factory(2)
    for i, cluster in enumerate(clusters):
        async with cluster.api_client() as api:
            await objects.create_namespace(api, "demo", {"team": f"t{i}"})
            await objects.create_node(api, "node-1", {"zone": f"z{i}"}, internal_ip=f"192.0.2.{i + 1}")
            await objects.create_pod(
                api, "demo", "web", labels={"app": "web"}, ips=[f"10.{i}.0.1"], ports=[("http", 80, "TCP")]
            )
            await objects.create_pod(api, "demo", "hostnet", ips=[f"192.0.2.{i + 1}"], host_network=True)
    t = tracker("--kubeconfig", str(clusters.merged_kubeconfig), "--log-level", "debug")
    await t.eventually(t.serving, "SERVING")

    info = await t.clusters()
    assert set(info) == {"cluster-1", "cluster-2"}
    for c in info.values():
        assert c.status.connected and c.status.synced and c.status.kube_system_uid and c.pods == 1
    found = await t.pod("10.1.0.1")
    assert found is not None
    assert (found.pod.cluster, found.pod.namespace, found.pod.name) == ("cluster-2", "demo", "web")
    assert dict(found.pod.labels) == {"app": "web"} and found.pod.node == "node-1"
    assert [(p.name, p.port, p.protocol) for p in found.pod.ports] == [("http", 80, pb.TCP)]
    assert list(found.node.internal_ips) == ["192.0.2.2"]
    # The namespace is served with its cluster's id (--cluster-labels=enforce, the default).
    stamped = {"team": "t1", CLUSTER_LABEL: "cluster-2", CLUSTER_NAME_LABEL: "cluster-2"}
    assert dict(found.namespace.labels) == clusters[1].namespace_labels("demo", stamped)
    assert await t.pod("192.0.2.1") is None  # hostNetwork pods are not indexed

    # Changes made now reach GetPodByIP and an open Watch.
    stream = t.stub.Watch(pb.WatchRequest(watcher_name="e2e"))
    seen_end = False
    async for msg in stream:
        if msg.kind == pb.WatchResponse.END_OF_SNAPSHOT:
            seen_end = True
            break
    assert seen_end
    async with clusters[0].api_client() as api:
        await objects.create_pod(api, "demo", "late", labels={"app": "late"}, ips=["10.0.0.7"])
        await objects.delete_pod(api, "demo", "web")
    pods_seen: list[tuple[str, bool]] = []
    async for msg in stream:
        for change in msg.changes:
            if change.WhichOneof("object") == "pod":
                pods_seen.append((change.pod.name, change.deleted))
        if ("late", False) in pods_seen and ("web", True) in pods_seen:
            break
    stream.cancel()
    assert await pod_name(t, "10.0.0.7") == "cluster-1/demo/late"
    assert await t.pod("10.0.0.1") is None

    body = await asyncio.to_thread(fetch, f"http://127.0.0.1:{t.metrics_port}/metrics")
    assert 'kube_ip_tracker_source_synced{cluster="cluster-1"} 1.0' in body
    assert 'kube_ip_tracker_source_events_total{cluster="cluster-1",kind="pods",type="ADDED"}' in body

    assert await t.terminate() == 0
    log = t.log()
    assert "Successfully connected to cluster cluster-1 (UID: " in log and "Starting informers..." in log
    assert "Stopped" in log


async def test_ready_timeout_names_unsynced_cluster(cluster_factory, tracker, tmp_path) -> None:  # type: ignore[no-untyped-def]
    (cluster,) = cluster_factory(1)
    dead = cluster.kubeconfig_dict()
    dead["contexts"][0]["name"] = "dead"  # type: ignore[index]
    dead["current-context"] = "dead"
    dead["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{free_port()}"  # type: ignore[index]
    (tmp_path / "dead.yaml").write_text(yaml.safe_dump(dead))
    t = tracker(
        "--kubeconfig", str(cluster.kubeconfig), "--kubeconfig", str(tmp_path / "dead.yaml"), "--ready-timeout", "6s"
    )
    readyz = f"http://127.0.0.1:{t.metrics_port}/readyz"
    await t.eventually(lambda: readyz_status(readyz) == 503, "/readyz answering 503 before the timeout")
    await t.eventually(t.serving, "SERVING after the timeout")
    assert "not synced: dead" in t.log()
    assert readyz_status(readyz) == 200
    info = await t.clusters()
    assert info["cluster-1"].status.synced
    assert not info["dead"].status.connected and "cannot connect" in info["dead"].status.last_error


async def test_kubeconfig_dir_add_change_remove(cluster_factory, tracker, tmp_path) -> None:  # type: ignore[no-untyped-def]
    clusters = cluster_factory(2)
    for i, cluster in enumerate(clusters):
        async with cluster.api_client() as api:
            await objects.create_namespace(api, "demo")
            await objects.create_pod(api, "demo", "web", ips=[f"10.{i}.0.1"])
    directory = tmp_path / "kubeconfigs"
    directory.mkdir()
    shutil.copy(clusters[0].kubeconfig, directory / "one.yaml")
    t = tracker("--kubeconfig-dir", str(directory), "--kubeconfig-dir-interval", "0.2")
    await t.eventually(t.serving, "SERVING")
    assert await pod_name(t, "10.0.0.1") == "cluster-1/demo/web"

    shutil.copy(clusters[1].kubeconfig, directory / "two.yaml")
    await t.eventually(lambda: pod_name(t, "10.1.0.1"), "cluster-2 added")

    # A changed file restarts the cluster's informers with the new content (here: another user name).
    changed = clusters[1].kubeconfig_dict(user="other")
    (directory / "two.yaml").write_text(yaml.safe_dump(changed))
    await t.eventually(lambda: "changed: restarting cluster cluster-2" in t.log(), "restart logged")
    async with clusters[1].api_client() as api:
        await objects.create_pod(api, "demo", "after", ips=["10.1.0.2"])
    await t.eventually(lambda: pod_name(t, "10.1.0.2"), "cluster-2 still watched after the change")

    (directory / "one.yaml").unlink()

    async def cluster_one_pod_gone() -> bool:
        return await t.pod("10.0.0.1") is None

    await t.eventually(cluster_one_pod_gone, "cluster-1 data removed")

    async def cluster_one_gone() -> bool:
        return "cluster-1" not in await t.clusters()

    await t.eventually(cluster_one_gone, "cluster-1 no longer listed")
