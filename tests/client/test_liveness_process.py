"""A frozen tracker (SIGSTOP: the TCP connection stays open, nothing answers) with real tracker processes.

The client must give up on it within its liveness bound (keepalive, or the PROGRESS read deadline),
fail over to another tracker if it has one, keep its mirror meanwhile and resume once the tracker is
thawed. Before the fix a frozen tracker was noticed only after keepalive_time + 60 s (gRPC's ping
timeout), so the deadlines below fail against it. One real cluster is shared by the module's tests.
"""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from kube_ip_tracker.agent.store import AgentStore
from kube_ip_tracker.client.client import ClientOptions, TrackerClient
from kube_ip_tracker.testing import objects
from kube_ip_tracker.testing.clusters import ClusterSet, LocalCluster, start_clusters
from kube_ip_tracker.testing.trackers import Agent, TrackerProcess, eventually

pytestmark = pytest.mark.cluster

# What a loaded shared machine may add to a bound before the condition is seen.
SLACK = 10.0


@pytest.fixture(scope="module")
def clusters(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterSet]:
    one = start_clusters(1, tmp_path_factory.mktemp("liveness-cluster"))
    yield one
    one.stop()


@pytest.fixture
def cluster(clusters: ClusterSet) -> LocalCluster:
    return clusters[0]


Launch = Callable[..., TrackerProcess]


@pytest.fixture
async def launch(tmp_path: Path) -> AsyncIterator[Launch]:
    """``launch(name, *args)`` starts a tracker process; every one is thawed and stopped at the end."""
    trackers: list[TrackerProcess] = []

    def start(name: str, *args: str) -> TrackerProcess:
        proc = TrackerProcess(name, ["--ready-timeout", "20s", *args], tmp_path)
        trackers.append(proc)
        return proc.start()

    yield start
    for t in trackers:
        thaw(t)
        t.stop()


def freeze(tracker: TrackerProcess) -> None:
    assert tracker.proc is not None and tracker.alive
    os.kill(tracker.proc.pid, signal.SIGSTOP)


def thaw(tracker: TrackerProcess) -> None:
    if tracker.alive:
        assert tracker.proc is not None
        os.kill(tracker.proc.pid, signal.SIGCONT)


async def add_pod(cluster: LocalCluster, namespace: str, name: str, ip: str) -> None:
    async with cluster.api_client() as api:
        await objects.create_pod(api, namespace, name, labels={"app": "x"}, ips=[ip])


async def populate(cluster: LocalCluster, namespace: str, count: int) -> set[str]:
    async with cluster.api_client() as api:
        await objects.create_namespace(api, namespace)
    for i in range(count):
        await add_pod(cluster, namespace, f"p-{i}", f"10.77.{len(namespace)}.{i + 1}")
    return {f"p-{i}" for i in range(count)}


def names(mirror: AgentStore, namespace: str) -> set[str]:
    return {p.name for p in mirror.pods() if p.namespace == namespace}


def watch(targets: list[str], options: ClientOptions) -> tuple[AgentStore, TrackerClient]:
    """A mirror kept by a started client, as an agent holds it."""
    mirror = AgentStore()
    client = TrackerClient(targets, mirror, options)
    client.start()
    return mirror, client


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_frozen_tracker_is_left_for_the_other_one_within_the_keepalive_bound(
    cluster: LocalCluster, launch: Launch
) -> None:
    """Two trackers: freezing the one in use moves the client to the other; thawed, it serves again."""
    ns = "failover"
    want = await populate(cluster, ns, 2)
    a = launch("live-a", "--kubeconfig", str(cluster.kubeconfig))
    b = launch("live-b", "--kubeconfig", str(cluster.kubeconfig))
    both = [a, b]
    by_address = {a.address: a, b.address: b}
    # Keepalive only (no read deadline): 10 s pings (the tracker's floor), 2 s for the ack.
    options = ClientOptions(
        backoff_base=0.1, backoff_cap=1.0, keepalive_time=10, keepalive_timeout=2, stream_timeout=None
    )
    bound = options.liveness_bound + SLACK
    mirror, client = watch([a.address, b.address], options)
    try:
        await eventually(lambda: client.ready and names(mirror, ns) == want, "mirror filled", both)
        assert client.endpoint is not None
        first = by_address[client.endpoint]
        other = b if first is a else a

        # Freeze the tracker in use: the client moves to the other one; thaw it: it catches up, nothing breaks.
        for n, (frozen, to) in enumerate(((first, other), (other, first))):
            freeze(frozen)
            await eventually(
                lambda to=to: client.live and client.endpoint == to.address,
                f"client moved from frozen {frozen.name} to {to.name} within {bound:.0f}s",
                both,
                within=bound,
            )
            await add_pod(cluster, ns, f"after-freeze-{n}", f"10.77.99.{n + 1}")
            want.add(f"after-freeze-{n}")
            await eventually(lambda: names(mirror, ns) == want, "change made after the freeze arrives", both)
            thaw(frozen)
            await eventually(frozen.serving, f"{frozen.name} serving after the thaw", both)
            await eventually(
                lambda frozen=frozen: _pods(frozen, "cluster-1", len(list(mirror.pods()))),
                f"{frozen.name} caught up after the thaw",
                both,
            )
            assert client.live and client.endpoint == to.address
    finally:
        await client.stop()


async def _pods(tracker: TrackerProcess, cluster: str, count: int) -> bool:
    info = (await tracker.clusters()).get(cluster)
    return info is not None and info.pods == count


async def test_frozen_only_tracker_keeps_the_mirror_and_is_resumed_after_the_thaw(
    cluster: LocalCluster, launch: Launch
) -> None:
    """One tracker only: the client retries it with backoff, keeps its mirror, and resumes its epoch after the thaw."""
    tracker = launch("solo", "--kubeconfig", str(cluster.kubeconfig))
    ns = "resume"
    want = await populate(cluster, ns, 2)
    # The PROGRESS read deadline only (the tracker sends PROGRESS every 10 s): no ping may end the stream first,
    # neither keepalive nor gRPC's own BDP pings, whose acks are awaited for keepalive_timeout too.
    options = ClientOptions(
        backoff_base=0.2,
        backoff_cap=2.0,
        keepalive_time=300,
        keepalive_timeout=300,
        stream_timeout=12,
        first_message_timeout=2,
    )
    bound = options.liveness_bound + SLACK
    target = tracker.address
    mirror, client = watch([target], options)
    try:
        await eventually(lambda: client.ready and names(mirror, ns) == want, "mirror filled", [tracker])
        epoch, revision = client.epoch, client.revision

        freeze(tracker)
        await eventually(
            lambda: not client.connected and not client.live,
            f"frozen tracker given up on within {bound:.0f}s",
            [tracker],
            within=bound,
        )
        assert metric("kube_ip_tracker_client_errors_total", target=target, code="silent") == 1
        await add_pod(cluster, ns, "while-frozen", "10.77.98.1")
        want.add("while-frozen")
        # It keeps trying (each attempt given up after first_message_timeout), with the mirror kept.
        await eventually(
            lambda: metric("kube_ip_tracker_client_errors_total", target=target, code="timeout") >= 2,
            "reconnect attempts to the frozen tracker",
            [tracker],
        )
        assert names(mirror, ns) == want - {"while-frozen"}
        assert (client.epoch, client.revision) == (epoch, revision)

        thaw(tracker)
        await eventually(lambda: names(mirror, ns) == want, "change made while frozen arrives", [tracker])
        assert client.live and client.epoch == epoch
        assert mirror.snapshots == 1 and client.snapshots_applied == 1  # resumed, no second snapshot
    finally:
        await client.stop()


@pytest.mark.slow
async def test_spoke_tracker_notices_a_frozen_hub_within_its_default_bound(
    cluster: LocalCluster, launch: Launch, tmp_path: Path
) -> None:
    """The upstream source uses TrackerClient with the default options: 30 s, then its clusters are stale."""
    ns = "spoke"
    want = await populate(cluster, ns, 1)
    hub = launch("hub", "--kubeconfig", str(cluster.kubeconfig))
    (tmp_path / "none").mkdir()
    spoke = launch("spoke", "--kubeconfig-dir", str(tmp_path / "none"), "--upstream-tracker", hub.address)
    both = [hub, spoke]
    agent = Agent(spoke).start()
    bound = ClientOptions().liveness_bound + SLACK
    try:
        await eventually(lambda: {n for _, n in agent.pod_names(ns)} == want, "spoke's agent filled", both)
        freeze(hub)
        await eventually(
            lambda: (s := agent.status("cluster-1")) is not None and s.stale,
            f"hub's cluster stale on the spoke within {bound:.0f}s",
            both,
            within=bound,
        )
        thaw(hub)
        await add_pod(cluster, ns, "after-thaw", "10.77.97.1")
        want.add("after-thaw")
        await eventually(lambda: {n for _, n in agent.pod_names(ns)} == want, "spoke caught up", both, within=60)
        await eventually(lambda: not agent.status("cluster-1").stale, "not stale after the thaw", both)  # type: ignore[union-attr]
        assert "cannot resume" not in spoke.log_path.read_text(), spoke.log_tail()
    finally:
        await agent.stop()
