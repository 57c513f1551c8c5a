"""Full mesh, hub-and-spoke and mutual upstreams with real API servers and real tracker processes.

The three clusters are shared by the tests of this module; each test works in its own namespace.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from kube_ip_tracker.agent.events import PodDeleted
from kube_ip_tracker.testing import objects
from kube_ip_tracker.testing.clusters import ClusterSet, start_clusters
from kube_ip_tracker.testing.trackers import Agent, TrackerProcess, eventually

pytestmark = pytest.mark.cluster

NAMES = ["cluster-1", "cluster-2", "cluster-3"]


@pytest.fixture(scope="module")
def clusters(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterSet]:
    started = start_clusters(3, tmp_path_factory.mktemp("topology-clusters"))
    try:
        yield started
    finally:
        started.stop()


Launch = Callable[..., TrackerProcess]


@pytest.fixture
async def launch(tmp_path: Path) -> AsyncIterator[tuple[Launch, Callable[[TrackerProcess], Agent]]]:
    """``tracker = launch(name, *args)`` starts a tracker; ``agent(tracker)`` an agent on it; all end after."""
    trackers: list[TrackerProcess] = []
    agents: list[Agent] = []

    def tracker(name: str, *args: str, metrics: bool = False, start: bool = True) -> TrackerProcess:
        proc = TrackerProcess(name, ["--ready-timeout", "20s", *args], tmp_path, metrics=metrics)
        trackers.append(proc)
        return proc.start() if start else proc

    def agent(tracker: TrackerProcess) -> Agent:
        a = Agent(tracker).start()
        agents.append(a)
        return a

    yield tracker, agent
    for a in agents:
        await a.stop()
    for t in trackers:
        t.stop()


async def populate(clusters: ClusterSet, namespace: str, per_cluster: int = 2) -> set[tuple[str, str]]:
    """A namespace with pods in every cluster; returns their (cluster, name)."""
    want = set()
    for i, cluster in enumerate(clusters):
        async with cluster.api_client() as api:
            await objects.create_namespace(api, namespace, {"cluster": cluster.name})
            for j in range(per_cluster):
                name = f"p-{j}"
                await objects.create_pod(api, namespace, name, labels={"app": "x"}, ips=[ip(namespace, i, j)])
                want.add((cluster.name, name))
    return want


def ip(namespace: str, cluster: int, n: int) -> str:
    """A pod IP unique per test namespace, cluster and pod."""
    return f"10.{sum(namespace.encode()) % 200}.{cluster * 16 + n // 250}.{n % 250 + 1}"


async def add_pod(clusters: ClusterSet, index: int, namespace: str, name: str, n: int) -> None:
    async with clusters[index].api_client() as api:
        await objects.create_pod(api, namespace, name, labels={"app": "late"}, ips=[ip(namespace, index, n)])


async def test_full_mesh_every_agent_sees_every_cluster(clusters: ClusterSet, launch) -> None:  # type: ignore[no-untyped-def]
    tracker, agent = launch
    ns = "mesh"
    want = await populate(clusters, ns)
    trackers = [tracker(f"mesh-{i + 1}", "--kubeconfig", str(clusters.merged_kubeconfig)) for i in range(3)]
    agents = [agent(t) for t in trackers]
    for a in agents:
        await eventually(lambda a=a: a.pod_names(ns) == want, f"{a.tracker.name}'s agent sees all pods", trackers)
    for t, a in zip(trackers, agents, strict=True):
        for name in NAMES:
            status = a.status(name)
            assert status is not None and status.synced and status.via == (t.name,)

    for i in range(3):  # a change in any cluster reaches every agent
        await add_pod(clusters, i, ns, f"late-{i}", 50 + i)
        want.add((NAMES[i], f"late-{i}"))
    for a in agents:
        await eventually(lambda a=a: a.pod_names(ns) == want, f"{a.tracker.name}'s agent sees the changes", trackers)


async def test_hub_and_spoke_survives_hub_loss_and_catches_up(clusters: ClusterSet, launch) -> None:  # type: ignore[no-untyped-def]
    tracker, agent = launch
    ns = "spokes"
    want = await populate(clusters, ns)
    hub = tracker("hub", "--kubeconfig", str(clusters.merged_kubeconfig))
    spokes = [
        tracker(f"spoke-{i + 1}", "--kubeconfig", str(c.kubeconfig), "--upstream-tracker", hub.address, metrics=True)
        for i, c in enumerate(clusters)
    ]
    everyone = [hub, *spokes]
    agents = [agent(s) for s in spokes]
    for a in agents:
        await eventually(lambda a=a: a.pod_names(ns) == want, f"{a.tracker.name}'s agent sees all pods", everyone)
    for i, (spoke, a) in enumerate(zip(spokes, agents, strict=True)):
        for j, name in enumerate(NAMES):
            status = a.status(name)
            assert status is not None and status.synced and not status.stale
            assert status.via == ((spoke.name,) if i == j else ("hub", spoke.name)), (spoke.name, name, status)
    # Ready: local cluster listed and the hub's first state applied.
    await eventually(
        lambda: "upstream trackers synced" in spokes[0].log_path.read_text(),
        "spoke-1 logs its upstream synced",
        everyone,
    )

    deleted: list[tuple[str, str]] = []
    for ag in agents:
        ag.store.subscribe(
            lambda events: deleted.extend((e.pod.cluster, e.pod.name) for e in events if isinstance(e, PodDeleted))
        )
    hub.kill()
    spoke, a = spokes[0], agents[0]
    await eventually(
        lambda: all(a.status(n).stale for n in NAMES[1:]),  # type: ignore[union-attr]
        "remote clusters stale at spoke-1's agent",
        everyone,
    )
    local = a.status("cluster-1")
    assert local is not None and local.connected and not local.stale
    infos = await spoke.clusters()
    assert [n for n in NAMES if infos[n].status.stale] == NAMES[1:]
    assert infos["cluster-2"].pods >= 2  # last data still served
    assert re.search(r'kube_ip_tracker_upstream_cluster_stale\{cluster="cluster-2"\} 1\.0', spoke.metrics_text())
    assert re.search(r'kube_ip_tracker_upstream_live\{upstream="127\.0\.0\.1:\d+"\} 0\.0', spoke.metrics_text())
    # Local updates still flow at every spoke; remote ones wait for the hub.
    for i in range(3):
        await add_pod(clusters, i, ns, f"while-down-{i}", 80 + i)
    for i, (s, ag) in enumerate(zip(spokes, agents, strict=True)):
        await eventually(
            lambda ag=ag, i=i: (NAMES[i], f"while-down-{i}") in ag.pod_names(ns), f"local pod at {s.name}", everyone
        )
    assert (NAMES[1], "while-down-1") not in a.pod_names(ns)

    hub.start()  # a new process: new epoch, so each spoke gets a reset of the hub's clusters only
    want |= {(NAMES[i], f"while-down-{i}") for i in range(3)}
    for ag in agents:
        await eventually(lambda ag=ag: ag.pod_names(ns) == want, f"{ag.tracker.name} caught up", everyone)
        await eventually(
            lambda ag=ag: not any(ag.status(n).stale for n in NAMES),  # type: ignore[union-attr]
            f"{ag.tracker.name}: nothing stale",
            everyone,
        )
        assert ag.client.snapshots_applied == 1  # the spoke's own epoch held: its agents never resynced
    assert deleted == []  # the restarted hub's partial state never reached the agents
    assert "cannot resume" in spoke.log_path.read_text()  # the new hub epoch was noticed


async def test_two_trackers_upstream_of_each_other_converge_without_loops(clusters: ClusterSet, launch) -> None:  # type: ignore[no-untyped-def]
    tracker, agent = launch
    ns = "mutual"
    want = {k for k in await populate(clusters, ns) if k[0] != "cluster-3"}
    t1 = tracker("t1", "--kubeconfig", str(clusters[0].kubeconfig), start=False)
    t2 = tracker("t2", "--kubeconfig", str(clusters[1].kubeconfig), "--upstream-tracker", t1.address)
    t1.argv += ["--upstream-tracker", t2.address]
    t1.start()
    both = [t1, t2]
    agents = [agent(t1), agent(t2)]
    for a in agents:
        await eventually(lambda a=a: a.pod_names(ns) == want, f"{a.tracker.name}'s agent sees both clusters", both)
    s1, s2 = agents[0].status("cluster-2"), agents[1].status("cluster-1")
    assert s1 is not None and s1.via == ("t2", "t1") and s1.synced
    assert s2 is not None and s2.via == ("t1", "t2") and s2.synced
    assert agents[0].status("cluster-3") is None

    await add_pod(clusters, 1, ns, "late", 90)
    want.add(("cluster-2", "late"))
    await eventually(lambda: agents[0].pod_names(ns) == want, "a change in cluster-2 reaches t1's agent", both)

    # Idle: no loop keeps the revisions moving.
    async def revisions() -> tuple[int, int]:
        return (await t1.list_clusters()).revision, (await t2.list_clusters()).revision

    before = await revisions()
    await asyncio.sleep(3)
    assert await revisions() == before
    for t in both:
        assert "loop" not in t.log_path.read_text().lower(), t.log_tail()


async def test_spoke_is_ready_once_its_cluster_and_its_hub_are_synced(clusters: ClusterSet, launch) -> None:  # type: ignore[no-untyped-def]
    tracker, _ = launch
    hub = tracker("ready-hub", "--kubeconfig", str(clusters.merged_kubeconfig), start=False)
    spoke = tracker(
        "ready-spoke",
        "--kubeconfig",
        str(clusters[0].kubeconfig),
        "--upstream-tracker",
        hub.address,
        "--ready-timeout",
        "5m",
    )
    await eventually(
        lambda: _synced(spoke, "cluster-1"), "spoke's own cluster synced while the hub is not there", [spoke]
    )
    assert not await spoke.serving()  # the hub's first state is still missing
    hub.start()
    await eventually(spoke.serving, "spoke serving once the hub's state arrived", [spoke, hub])
    infos = await spoke.clusters()
    assert all(infos[n].status.synced for n in NAMES)


async def _synced(tracker: TrackerProcess, cluster: str) -> bool:
    info = (await tracker.clusters()).get(cluster)
    return info is not None and info.status.synced


@pytest.mark.slow
async def test_frozen_hub_is_noticed_and_resumed_without_a_snapshot(clusters: ClusterSet, launch) -> None:  # type: ignore[no-untyped-def]
    """SIGSTOP (a hung or partitioned hub): keepalive notices it; after SIGCONT the spoke resumes its epoch."""
    tracker, agent = launch
    ns = "frozen"
    want = await populate(clusters, ns, per_cluster=1)
    hub = tracker("frozen-hub", "--kubeconfig", str(clusters.merged_kubeconfig))
    spoke = tracker("frozen-spoke", "--kubeconfig", str(clusters[0].kubeconfig), "--upstream-tracker", hub.address)
    both = [hub, spoke]
    a = agent(spoke)
    await eventually(lambda: a.pod_names(ns) == want, "spoke's agent sees all pods", both)
    assert hub.proc is not None
    os.kill(hub.proc.pid, signal.SIGSTOP)
    try:
        await eventually(
            lambda: all(a.status(n).stale for n in NAMES[1:]),  # type: ignore[union-attr]
            "remote clusters stale once keepalive gives up on the frozen hub",
            both,
            within=90,
        )
        await add_pod(clusters, 1, ns, "while-frozen", 70)
        await add_pod(clusters, 0, ns, "local-while-frozen", 71)
        await eventually(lambda: ("cluster-1", "local-while-frozen") in a.pod_names(ns), "local pod flows", both)
    finally:
        os.kill(hub.proc.pid, signal.SIGCONT)
    want |= {("cluster-2", "while-frozen"), ("cluster-1", "local-while-frozen")}
    await eventually(lambda: a.pod_names(ns) == want, "spoke caught up after the hub thawed", both, within=90)
    await eventually(
        lambda: not any(a.status(n).stale for n in NAMES),  # type: ignore[union-attr]
        "nothing stale",
        both,
    )
    assert "resuming from revision" in spoke.log_path.read_text(), spoke.log_tail()
    assert "cannot resume" not in spoke.log_path.read_text(), spoke.log_tail()


async def test_spoke_reaches_an_mtls_hub(clusters: ClusterSet, launch, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from kube_ip_tracker.testing.certs import TestCA

    tracker, agent = launch
    ca = TestCA(tmp_path)
    hub_cert, hub_key = ca.issue("hub", hosts=["127.0.0.1"])
    spoke_cert, spoke_key = ca.issue("spoke", client=True)
    tls = ["--tls-cert-file", str(hub_cert), "--tls-key-file", str(hub_key), "--tls-client-ca-file", str(ca.cert_path)]
    hub = tracker("tls-hub", "--kubeconfig", str(clusters.merged_kubeconfig), *tls)
    spoke = tracker(
        "tls-spoke",
        "--kubeconfig",
        str(clusters[0].kubeconfig),
        "--upstream-tracker",
        hub.address,
        "--upstream-ca-file",
        str(ca.cert_path),
        "--upstream-cert-file",
        str(spoke_cert),
        "--upstream-key-file",
        str(spoke_key),
    )
    a = agent(spoke)
    await eventually(
        lambda: all((s := a.status(n)) is not None and s.synced for n in NAMES), "hub's clusters via mTLS", [hub, spoke]
    )
    assert a.status("cluster-3").via == ("tls-hub", "tls-spoke")  # type: ignore[union-attr]
