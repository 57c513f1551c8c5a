"""The tracker client against real in-process TrackerServers over loopback."""

from __future__ import annotations

import asyncio
import random
import socket
from collections.abc import AsyncIterator
from dataclasses import replace

import pytest
from prometheus_client import REGISTRY

from kube_ip_tracker.agent.store import AgentStore
from kube_ip_tracker.client.client import ClientOptions, TrackerClient
from kube_ip_tracker.client.index_sink import IndexWriterSink
from kube_ip_tracker.index import Index
from kube_ip_tracker.model import (
    ClusterStatusRecord,
    ContainerPort,
    Kind,
    NamespaceRecord,
    NodeRecord,
    PodRecord,
)
from kube_ip_tracker.server import TrackerServer
from kube_ip_tracker.testing.polling import eventually

FAST = ClientOptions(backoff_base=0.05, backoff_cap=0.3)


def pod(name: str, ip: str, *, cluster: str = "a", ts: int = 1000, labels: dict[str, str] | None = None) -> PodRecord:
    return PodRecord(
        cluster=cluster,
        namespace="default",
        name=name,
        labels=labels or {"app": name},
        ports=(ContainerPort("http", 80, "TCP"),),
        node="node-1",
        ips=(ip,),
        creation_timestamp=ts,
        uid=f"uid-{cluster}-{name}",
    )


def filled_index(clusters: tuple[str, ...] = ("a", "b")) -> Index:
    index = Index()
    for c in clusters:
        index.set_cluster_status(ClusterStatusRecord(c, connected=True, synced=True, kube_system_uid=f"ks-{c}"))
        index.upsert(NamespaceRecord(c, "default", {"team": c}))
        index.upsert(NodeRecord(c, "node-1", {"zone": "z"}, ("192.0.2.1",)))
    index.upsert(pod("web", "10.0.0.1"))
    index.upsert(pod("db", "10.0.0.2"))
    index.upsert(pod("web", "10.1.0.1", cluster="b"))
    return index


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


class Servers:
    """Starts TrackerServers and stops whatever is left at the end."""

    def __init__(self) -> None:
        self.running: list[TrackerServer] = []

    async def start(self, index: Index, address: str = "127.0.0.1:0") -> TrackerServer:
        server = TrackerServer(index, address)
        await server.start()
        self.running.append(server)
        return server

    async def stop(self, server: TrackerServer) -> None:
        await server.stop(0)
        self.running.remove(server)


@pytest.fixture
async def servers() -> AsyncIterator[Servers]:
    s = Servers()
    yield s
    for server in list(s.running):
        await s.stop(server)


@pytest.fixture
async def clients() -> AsyncIterator[list[TrackerClient]]:
    started: list[TrackerClient] = []
    yield started
    for c in started:
        await c.stop()


def start_client(clients: list[TrackerClient], target: str, sink: object, **kwargs: object) -> TrackerClient:
    c = TrackerClient(target, sink, **kwargs)  # type: ignore[arg-type]
    c.start()
    clients.append(c)
    return c


def pod_keys(mirror: AgentStore) -> set[tuple[str, str, str]]:
    return {p.key for p in mirror.pods()}


async def test_snapshot_then_deltas(servers: Servers, clients: list[TrackerClient]) -> None:
    index = filled_index()
    server = await servers.start(index)
    mirror = AgentStore()
    client = start_client(clients, f"127.0.0.1:{server.bound_port}", mirror, options=FAST)
    async with asyncio.timeout(5):
        await client.wait_ready()
    assert pod_keys(mirror) == {("a", "default", "web"), ("a", "default", "db"), ("b", "default", "web")}
    assert mirror.cluster_synced("a") and mirror.cluster_synced("b")
    found = mirror.pod_by_ip("10.1.0.1")
    assert found is not None and found[0].cluster == "b" and found[1] is not None and found[2] is not None
    index.upsert(pod("api", "10.0.0.3"))
    index.delete(Kind.POD, "a", "default", "db")
    index.upsert(NamespaceRecord("a", "default", {"team": "renamed"}))
    await eventually(
        lambda: mirror.pod_by_ip("10.0.0.2") is None and mirror.pod_by_ip("10.0.0.3") is not None,
        "mirror.pod_by_ip('10.0.0.2') is None and mirror.pod_by_ip('10.0.0.3') is not None",
    )
    await eventually(
        lambda: dict(mirror.namespace("a", "default").labels) == {"team": "renamed"},
        "dict(mirror.namespace('a', 'default').labels) == {'team': 'renamed'}",
    )  # type: ignore[union-attr]
    index.remove_cluster("b")
    await eventually(lambda: "b" not in mirror.cluster_statuses(), "'b' not in mirror.cluster_statuses()")
    assert pod_keys(mirror) == {("a", "default", "web"), ("a", "default", "api")}
    assert list(mirror.namespaces("b")) == [] and list(mirror.nodes("b")) == []
    assert mirror.snapshots == 1 and client.revision == mirror.revision > 0


async def test_resume_after_reconnect_gets_only_missed_changes(
    servers: Servers, clients: list[TrackerClient], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO")
    index = filled_index()
    server = await servers.start(index)
    port = server.bound_port
    target = f"127.0.0.1:{port}"
    mirror = AgentStore()
    client = start_client(clients, target, mirror, options=FAST)
    async with asyncio.timeout(5):
        await client.wait_ready()
    revision = client.revision
    snapshots_sent = metric("kube_ip_tracker_client_messages_total", target=target, kind="SNAPSHOT")
    await servers.stop(server)
    await eventually(lambda: not client.connected, "not client.connected")
    # Changes while disconnected.
    index.delete(Kind.POD, "a", "default", "web")
    index.upsert(pod("late", "10.0.0.9"))
    assert mirror.pod_by_ip("10.0.0.1") is not None
    await servers.start(index, f"127.0.0.1:{port}")  # same index: same epoch, change log kept
    await eventually(
        lambda: mirror.pod_by_ip("10.0.0.9") is not None, "mirror.pod_by_ip('10.0.0.9') is not None", within=10
    )
    assert mirror.pod_by_ip("10.0.0.1") is None
    assert mirror.snapshots == 1 and client.revision > revision
    assert metric("kube_ip_tracker_client_messages_total", target=target, kind="SNAPSHOT") == snapshots_sent
    assert f"resuming from revision {revision}" in caplog.text


async def test_new_tracker_epoch_gives_reset_snapshot_without_stale_entries(
    servers: Servers, clients: list[TrackerClient]
) -> None:
    server = await servers.start(filled_index())
    port = server.bound_port
    target = f"127.0.0.1:{port}"
    resyncs = metric("kube_ip_tracker_client_resyncs_total", target=target, reason="reset")
    mirror = AgentStore()
    client = start_client(clients, target, mirror, options=FAST)
    async with asyncio.timeout(5):
        await client.wait_ready()
    old_epoch = client.epoch
    await servers.stop(server)
    # The tracker restarted: a new index (new epoch) that only knows cluster a, without "db".
    fresh = Index()
    fresh.set_cluster_status(ClusterStatusRecord("a", connected=True, synced=True))
    fresh.upsert(NamespaceRecord("a", "default", {"team": "a"}))
    fresh.upsert(pod("web", "10.0.0.1"))
    fresh.upsert(pod("new", "10.0.0.5"))
    await servers.start(fresh, f"127.0.0.1:{port}")
    await eventually(lambda: mirror.snapshots == 2, "mirror.snapshots == 2", within=10)
    assert client.epoch != old_epoch and mirror.epoch == client.epoch
    assert pod_keys(mirror) == {("a", "default", "web"), ("a", "default", "new")}
    assert set(mirror.cluster_statuses()) == {"a"} and not mirror.cluster_synced("b")
    assert list(mirror.nodes()) == []
    assert metric("kube_ip_tracker_client_resyncs_total", target=target, reason="reset") == resyncs + 1


async def test_ready_only_once_a_tracker_answers(servers: Servers, clients: list[TrackerClient]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mirror = AgentStore()
    client = start_client(clients, f"127.0.0.1:{port}", mirror, options=FAST)
    await asyncio.sleep(0.3)
    assert not client.ready and not mirror.ready
    await servers.start(filled_index(), f"127.0.0.1:{port}")
    async with asyncio.timeout(10):
        await client.wait_ready()
    assert mirror.ready and len(pod_keys(mirror)) == 3


async def test_failover_between_tracker_addresses_resumes(servers: Servers, clients: list[TrackerClient]) -> None:
    index = filled_index()
    first = await servers.start(index, "127.0.0.1:0")
    port = first.bound_port
    try:
        second = await servers.start(index, f"127.0.0.2:{port}")
    except Exception as e:  # pragma: no cover - depends on the host's loopback setup
        pytest.skip(f"cannot listen on 127.0.0.2:{port}: {e}")

    async def resolve(host: str, p: int) -> list[str]:
        return ["127.0.0.1", "127.0.0.2"]

    mirror = AgentStore()
    client = start_client(clients, f"tracker.kube-system.svc:{port}", mirror, options=FAST, resolve=resolve)
    async with asyncio.timeout(5):
        await client.wait_ready()
    assert client.endpoint == f"127.0.0.1:{port}"
    await servers.stop(first)
    index.upsert(pod("after", "10.0.0.42"))
    await eventually(
        lambda: mirror.pod_by_ip("10.0.0.42") is not None, "mirror.pod_by_ip('10.0.0.42') is not None", within=10
    )
    assert client.endpoint == f"127.0.0.2:{port}"
    assert mirror.snapshots == 1  # same index behind both: resumed, no snapshot
    await servers.stop(second)


async def test_localhost_name_resolves_and_fails_over_to_the_listening_family(
    servers: Servers, clients: list[TrackerClient]
) -> None:
    server = await servers.start(filled_index(), "127.0.0.1:0")
    mirror = AgentStore()
    client = start_client(clients, f"localhost:{server.bound_port}", mirror, options=FAST)
    async with asyncio.timeout(10):
        await client.wait_ready()
    assert client.endpoint == f"127.0.0.1:{server.bound_port}"


async def test_index_sink_keeps_a_downstream_index_in_step(servers: Servers, clients: list[TrackerClient]) -> None:
    upstream = filled_index()
    up = await servers.start(upstream)
    downstream = Index()
    downstream.set_cluster_status(ClusterStatusRecord("gone", connected=True, synced=True))
    downstream.upsert(pod("stale", "10.9.9.9", cluster="gone"))
    sink = IndexWriterSink(downstream)
    sink.clusters.add("gone")  # as if fed by this sink before
    feeder = start_client(clients, f"127.0.0.1:{up.bound_port}", sink, options=FAST)
    async with asyncio.timeout(5):
        await feeder.wait_ready()
    # Observe the downstream index through its own server and an agent mirror.
    down = await servers.start(downstream)
    mirror = AgentStore()
    agent = start_client(clients, f"127.0.0.1:{down.bound_port}", mirror, options=FAST)
    async with asyncio.timeout(5):
        await agent.wait_ready()
    assert pod_keys(mirror) == {("a", "default", "web"), ("a", "default", "db"), ("b", "default", "web")}
    assert set(mirror.cluster_statuses()) == {"a", "b"}
    upstream.delete(Kind.POD, "b", "default", "web")
    upstream.upsert(pod("api", "10.0.0.3"))
    await eventually(
        lambda: pod_keys(mirror) == {("a", "default", "web"), ("a", "default", "db"), ("a", "default", "api")},
        "pod_keys(mirror) == {('a', 'default', 'web'), ('a', 'default', 'db'), ('a', 'default', 'api')}",
    )


async def test_resume_point_refused_by_the_tracker_is_dropped(servers: Servers, clients: list[TrackerClient]) -> None:
    # A tracker that kept its epoch but lost revisions refuses a resume point ahead of it.
    server = await servers.start(filled_index())
    port = server.bound_port
    mirror = AgentStore()
    client = start_client(clients, f"127.0.0.1:{port}", mirror, options=FAST)
    async with asyncio.timeout(5):
        await client.wait_ready()
    await servers.stop(server)
    behind = Index(epoch=client.epoch)
    behind.upsert(pod("only", "10.0.0.77"))
    await servers.start(behind, f"127.0.0.1:{port}")
    await eventually(lambda: mirror.snapshots == 2, "mirror.snapshots == 2", within=10)
    assert pod_keys(mirror) == {("a", "default", "only")}
    assert metric("kube_ip_tracker_client_resyncs_total", target=f"127.0.0.1:{port}", reason="refused") == 1


async def test_mirror_agrees_with_the_index_after_random_changes_and_reconnects(
    servers: Servers, clients: list[TrackerClient]
) -> None:
    rng = random.Random(4)
    index = filled_index()
    server = await servers.start(index)
    port = server.bound_port
    mirror = AgentStore()
    client = start_client(clients, f"127.0.0.1:{port}", mirror, options=FAST)
    async with asyncio.timeout(5):
        await client.wait_ready()
    ips = [f"10.0.0.{i}" for i in range(1, 9)]  # few IPs, so pods often conflict
    conflicts_seen = 0
    for round_ in range(6):
        for _ in range(40):
            cluster = rng.choice("ab")
            roll = rng.random()
            name = f"p{rng.randrange(12)}"
            if roll < 0.55:
                index.upsert(pod(name, rng.choice(ips), cluster=cluster, ts=rng.randrange(5)))
            elif roll < 0.85:
                index.delete(Kind.POD, cluster, "default", name)
            elif roll < 0.95:
                index.upsert(NamespaceRecord(cluster, "default", {"v": str(rng.randrange(3))}))
            else:
                index.upsert(NodeRecord(cluster, "node-1", {"v": str(rng.randrange(3))}))
            if rng.random() < 0.2:
                await asyncio.sleep(0)  # let some batches commit in between
        if round_ == 3:  # one reconnect (resume) in the middle
            await servers.stop(server)
            index.upsert(pod("while-down", "10.0.0.99"))
            server = await servers.start(index, f"127.0.0.1:{port}")
        target = index.revision
        conflicts_seen = max(conflicts_seen, index.ip_conflicts)
        await eventually(lambda t=target: client.revision == t, "client.revision == t", within=10)
        # The agent store keeps no uid (no verdict depends on it): compare everything else.
        assert {p.key: p for p in mirror.pods()} == {p.key: replace(p, uid="") for p in index.pods()}
        for ip in [*ips, "10.0.0.99"]:
            found, want = mirror.pod_by_ip(ip), index.get_pod_by_ip(ip)
            assert (found is None) == (want is None), ip
            if found is not None and want is not None:
                assert found == (replace(want[0], uid=""), want[1], want[2]), ip
    assert mirror.snapshots == 1
    assert conflicts_seen > 0  # the comparison covered contested IPs


async def test_cluster_filter_gets_only_those_clusters_across_gaps_and_resume(
    servers: Servers, clients: list[TrackerClient]
) -> None:
    index = filled_index()
    server = await servers.start(index)
    port = server.bound_port
    mirror = AgentStore()
    options = ClientOptions(clusters=("b",), watcher_name="node-7", backoff_base=0.05, backoff_cap=0.3)
    client = start_client(clients, f"127.0.0.1:{port}", mirror, options=options)
    async with asyncio.timeout(5):
        await client.wait_ready()
    assert pod_keys(mirror) == {("b", "default", "web")} and set(mirror.cluster_statuses()) == {"b"}
    # Changes in cluster a advance the tracker's revision: the filtered watcher sees gaps, not errors.
    index.upsert(pod("a-only", "10.0.0.50"))
    index.upsert(pod("b-new", "10.1.0.50", cluster="b"))
    index.upsert(pod("a-again", "10.0.0.51"))
    await eventually(lambda: mirror.pod_by_ip("10.1.0.50") is not None, "mirror.pod_by_ip('10.1.0.50') is not None")
    await servers.stop(server)
    index.upsert(pod("a-down", "10.0.0.52"))
    index.delete(Kind.POD, "b", "default", "web")
    await servers.start(index, f"127.0.0.1:{port}")
    await eventually(lambda: mirror.pod_by_ip("10.1.0.1") is None, "mirror.pod_by_ip('10.1.0.1') is None", within=10)
    assert pod_keys(mirror) == {("b", "default", "b-new")}
    assert mirror.snapshots == 1  # resumed, despite the gaps
