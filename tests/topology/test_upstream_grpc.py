"""Upstream source over real gRPC between in-process trackers (indexes written directly, no API servers).

Covers what needs exact control of the hub: resume without a snapshot after the hub's server comes
back with the same index (same epoch), and a reset for that upstream only after a new epoch.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from kube_ip_tracker.agent.events import PodDeleted
from kube_ip_tracker.agent.store import AgentStore
from kube_ip_tracker.client.client import ClientOptions, TrackerClient
from kube_ip_tracker.index import Index
from kube_ip_tracker.model import ClusterStatusRecord, NamespaceRecord, PodRecord
from kube_ip_tracker.server import TrackerServer
from kube_ip_tracker.sources.upstream import Upstreams
from kube_ip_tracker.testing.clusters import free_port

FAST = ClientOptions(backoff_base=0.05, backoff_cap=0.3)


def pod(cluster: str, name: str, ip: str) -> PodRecord:
    return PodRecord(cluster, "ns", name, {"app": name}, (), "", (ip,))


def fill(index: Index, cluster: str, via: tuple[str, ...], *pods: PodRecord) -> None:
    index.set_cluster_status(ClusterStatusRecord(cluster, connected=True, synced=True, via=via))
    index.upsert(NamespaceRecord(cluster, "ns", {}))
    for p in pods:
        index.upsert(p)


async def until(check: Callable[[], bool], what: str, within: float = 15.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not check():
        if loop.time() > deadline:
            raise AssertionError(f"not reached within {within}s: {what}")
        await asyncio.sleep(0.02)


class Spoke:
    """A spoke tracker in this process: index, upstream source on the hub, server, one agent mirror."""

    def __init__(self, *hub_ports: int) -> None:
        self.index = Index()
        self.upstreams = Upstreams(self.index, "spoke", [f"127.0.0.1:{p}" for p in hub_ports], options=FAST)
        self.server = TrackerServer(self.index, "127.0.0.1:0")
        self.mirror = AgentStore()
        self.agent: TrackerClient | None = None

    async def start(self) -> None:
        await self.server.start()
        self.upstreams.start()
        self.agent = TrackerClient(f"127.0.0.1:{self.server.bound_port}", self.mirror, FAST)
        self.agent.start()

    async def stop(self) -> None:
        if self.agent is not None:
            await self.agent.stop()
        await self.upstreams.stop()
        await self.server.stop(0)

    @property
    def source(self):  # type: ignore[no-untyped-def]
        return self.upstreams.sources[0]

    def agent_status(self, cluster: str) -> ClusterStatusRecord | None:
        return self.mirror.cluster_statuses().get(cluster)


class Hub:
    """The hub's server on a fixed port; it can stop and come back with the same or a new index."""

    def __init__(self, index: Index) -> None:
        self.index = index
        self.port = free_port()
        self.server: TrackerServer | None = None

    async def start(self, index: Index | None = None) -> None:
        self.index = index or self.index
        self.server = TrackerServer(self.index, f"127.0.0.1:{self.port}")
        await self.server.start()

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop(0)
            self.server = None


@pytest.fixture
async def topology() -> AsyncIterator[tuple[Hub, Spoke]]:
    index = Index()
    fill(index, "a", ("hub",), pod("a", "a-0", "10.1.0.1"))
    fill(index, "b", ("hub",), pod("b", "b-0", "10.2.0.1"))
    hub = Hub(index)
    await hub.start()
    spoke = Spoke(hub.port)
    # The spoke watches cluster "a" directly.
    spoke.upstreams.local_writer.set_cluster_status(ClusterStatusRecord("a", connected=True, synced=True))
    spoke.upstreams.local_writer.upsert(pod("a", "local-0", "10.1.9.1"))
    await spoke.start()
    try:
        yield hub, spoke
    finally:
        await spoke.stop()
        await hub.stop()


async def test_hub_loss_turns_remote_clusters_stale_and_resume_catches_up(topology: tuple[Hub, Spoke]) -> None:
    hub, spoke = topology
    await until(lambda: spoke.mirror.pod_by_ip("10.2.0.1") is not None, "remote pod at the spoke's agent")
    # Local first: the hub's copy of "a" is ignored.
    assert spoke.mirror.pod_by_ip("10.1.0.1") is None and spoke.mirror.pod_by_ip("10.1.9.1") is not None
    b = spoke.agent_status("b")
    assert b is not None and b.via == ("hub", "spoke") and b.synced and not b.stale
    assert spoke.upstreams.owners.owner("b") is spoke.source.writer

    await hub.stop()
    await until(lambda: (s := spoke.agent_status("b")) is not None and s.stale, "b stale at the agent")
    a = spoke.agent_status("a")
    assert a is not None and not a.stale and a.connected
    assert spoke.mirror.pod_by_ip("10.2.0.1") is not None  # last data kept
    # Local updates keep flowing meanwhile.
    spoke.upstreams.local_writer.upsert(pod("a", "local-1", "10.1.9.2"))
    await until(lambda: spoke.mirror.pod_by_ip("10.1.9.2") is not None, "local update while the hub is down")

    hub.index.upsert(pod("b", "b-1", "10.2.0.2"))  # a change the spoke missed
    await hub.start()  # same index: same epoch, and the change log reaches back
    await until(lambda: spoke.mirror.pod_by_ip("10.2.0.2") is not None, "missed change after the hub returns")
    await until(lambda: not spoke.agent_status("b").stale, "b current again")  # type: ignore[union-attr]
    assert spoke.source.client.snapshots_applied == 1  # resumed, no second snapshot
    assert spoke.agent is not None and spoke.agent.snapshots_applied == 1


async def test_new_hub_epoch_resets_that_upstream_only(topology: tuple[Hub, Spoke]) -> None:
    hub, spoke = topology
    await until(lambda: spoke.mirror.pod_by_ip("10.2.0.1") is not None, "remote pod at the spoke's agent")
    await hub.stop()
    await until(lambda: not spoke.source.live, "upstream lost")
    restarted = Index()  # a restarted hub: new epoch, and b-0 is gone meanwhile
    fill(restarted, "a", ("hub",), pod("a", "a-0", "10.1.0.1"))
    fill(restarted, "b", ("hub",), pod("b", "b-9", "10.2.0.9"))
    await hub.start(restarted)
    await until(lambda: spoke.mirror.pod_by_ip("10.2.0.9") is not None, "new hub state at the agent")
    await until(lambda: not spoke.agent_status("b").stale, "b current again")  # type: ignore[union-attr]
    assert spoke.mirror.pod_by_ip("10.2.0.1") is None
    assert spoke.mirror.pod_by_ip("10.1.9.1") is not None  # local data untouched
    assert spoke.source.client.snapshots_applied == 2
    assert spoke.agent is not None and spoke.agent.snapshots_applied == 1  # the spoke's own epoch holds


async def test_hub_removing_a_cluster_removes_it_at_the_spoke(topology: tuple[Hub, Spoke]) -> None:
    hub, spoke = topology
    await until(lambda: spoke.mirror.pod_by_ip("10.2.0.1") is not None, "remote pod at the spoke's agent")
    hub.index.remove_cluster("b")
    await until(lambda: spoke.agent_status("b") is None, "b removed at the agent")
    assert spoke.mirror.pod_by_ip("10.2.0.1") is None and spoke.agent_status("a") is not None


async def test_restarted_hub_still_listing_does_not_flap_the_spokes_data(topology: tuple[Hub, Spoke]) -> None:
    hub, spoke = topology
    await until(lambda: spoke.mirror.pod_by_ip("10.2.0.1") is not None, "remote pod at the spoke's agent")
    deleted: list[str] = []
    spoke.mirror.subscribe(lambda events: deleted.extend(e.pod.name for e in events if isinstance(e, PodDeleted)))
    await hub.stop()
    restarted = Index()  # the new hub process has not listed b yet
    restarted.set_cluster_status(ClusterStatusRecord("b", connected=True, synced=False, via=("hub",)))
    await hub.start(restarted)
    await until(lambda: spoke.source.live, "spoke back on the hub")
    await asyncio.sleep(0.3)
    assert spoke.mirror.pod_by_ip("10.2.0.1") is not None and deleted == []
    b = spoke.agent_status("b")
    assert b is not None and b.stale and b.synced
    # The hub lists b (one pod gone meanwhile, one new): the spoke resyncs and applies just that.
    fill(restarted, "b", ("hub",), pod("b", "b-5", "10.2.0.5"))
    await until(lambda: spoke.mirror.pod_by_ip("10.2.0.5") is not None, "b's new pod at the agent")
    await until(lambda: not spoke.agent_status("b").stale, "b current again")  # type: ignore[union-attr]
    assert deleted == ["b-0"]
    assert spoke.mirror.pod_by_ip("10.1.9.1") is not None
    assert spoke.agent is not None and spoke.agent.snapshots_applied == 1


async def test_two_hubs_a_cluster_fails_over_to_the_live_one() -> None:
    indexes = [Index(), Index()]
    for i, index in enumerate(indexes):
        fill(index, "b", (f"hub{i}",), pod("b", f"from-hub{i}", f"10.2.0.{i + 1}"))
    hubs = [Hub(index) for index in indexes]
    for hub in hubs:
        await hub.start()
    spoke = Spoke(hubs[0].port, hubs[1].port)
    await spoke.start()
    try:
        await until(lambda: spoke.agent_status("b") is not None, "b at the agent")
        first = spoke.upstreams.owners.owner("b")
        i = next(n for n, s in enumerate(spoke.upstreams.sources) if s.writer is first)
        other = 1 - i
        await until(lambda: spoke.upstreams.sources[other].live, "both upstreams live")
        assert spoke.mirror.pod_by_ip(f"10.2.0.{i + 1}") is not None
        await hubs[i].stop()
        await until(lambda: spoke.mirror.pod_by_ip(f"10.2.0.{other + 1}") is not None, "b from the other hub")
        await until(lambda: not spoke.agent_status("b").stale, "b current")  # type: ignore[union-attr]
        assert spoke.mirror.pod_by_ip(f"10.2.0.{i + 1}") is None
        assert spoke.agent_status("b").via == (f"hub{other}", "spoke")  # type: ignore[union-attr]
    finally:
        await spoke.stop()
        for hub in hubs:
            await hub.stop()


async def test_ring_of_three_trackers_converges_without_loops() -> None:
    """t1 watches t2, t2 watches t3, t3 watches t1; each has one local cluster."""
    ports = [free_port() for _ in range(3)]
    indexes = [Index() for _ in range(3)]
    upstreams = [Upstreams(indexes[i], f"t{i}", [f"127.0.0.1:{ports[(i + 1) % 3]}"], options=FAST) for i in range(3)]
    servers = [TrackerServer(indexes[i], f"127.0.0.1:{ports[i]}") for i in range(3)]
    for i in range(3):
        upstreams[i].local_writer.set_cluster_status(ClusterStatusRecord(f"c{i}", connected=True, synced=True))
        upstreams[i].local_writer.upsert(pod(f"c{i}", "p", f"10.{i}.0.1"))
        await servers[i].start()
    for u in upstreams:
        u.start()

    def path(i: int, cluster: int) -> tuple[str, ...]:
        # c{cluster} travels backwards round the ring from its tracker to t{i}.
        hops, j = [f"t{cluster}"], cluster
        while j != i:
            j = (j - 1) % 3
            hops.append(f"t{j}")
        return tuple(hops)

    try:
        for i, index in enumerate(indexes):
            await until(
                lambda i=i, index=index: all(
                    (s := index.cluster_status(f"c{c}")) is not None and s.via == path(i, c) for c in range(3)
                ),
                f"t{i} holds every cluster with its path",
            )
            assert all(index.get_pod_by_ip(f"10.{c}.0.1") is not None for c in range(3))
        before = [index.revision for index in indexes]
        await asyncio.sleep(1.0)
        assert [index.revision for index in indexes] == before  # idle: nothing circulates
    finally:
        for u in upstreams:
            await u.stop()
        for server in servers:
            await server.stop(0)
