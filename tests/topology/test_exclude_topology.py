"""Hub-and-spoke with real API servers and tracker processes: the hub does not stream the spoke's own cluster.

The spoke watches cluster-1 directly (from a --kubeconfig-dir) and the hub watches both clusters. The
spoke's Watch on the hub excludes cluster-1, so cluster-1's changes never travel hub -> spoke; once
cluster-1's file is removed at the spoke, the spoke asks again without the exclusion and serves the
hub's cluster-1.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from kube_ip_tracker.testing import objects
from kube_ip_tracker.testing.clusters import ClusterSet, start_clusters
from kube_ip_tracker.testing.trackers import Agent, TrackerProcess, eventually

pytestmark = pytest.mark.cluster

NS = "exclude"


@pytest.fixture(scope="module")
def clusters(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterSet]:
    started = start_clusters(2, tmp_path_factory.mktemp("exclude-clusters"))
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture
async def processes() -> AsyncIterator[tuple[list[TrackerProcess], list[Agent]]]:
    trackers: list[TrackerProcess] = []
    agents: list[Agent] = []
    yield trackers, agents
    for a in agents:
        await a.stop()
    for t in trackers:
        t.stop()


def metric(tracker: TrackerProcess, name: str) -> float:
    """The value of an upstream or client metric of ``tracker`` (one label set), 0 when absent."""
    match = re.search(rf"^{name}\{{[^}}]*\}} (\S+)$", tracker.metrics_text(), re.MULTILINE)
    return float(match.group(1)) if match else 0.0


async def create_pods(clusters: ClusterSet, index: int, prefix: str, count: int, first_ip: int) -> set[tuple[str, str]]:
    async with clusters[index].api_client() as api:
        for n in range(count):
            ip = f"10.7{index}.{(first_ip + n) // 250}.{(first_ip + n) % 250 + 1}"
            await objects.create_pod(api, NS, f"{prefix}-{n}", labels={"app": prefix}, ips=[ip])
    return {(clusters[index].name, f"{prefix}-{n}") for n in range(count)}


async def test_spoke_stream_leaves_out_its_local_cluster_until_it_is_no_longer_local(
    clusters: ClusterSet, processes: tuple[list[TrackerProcess], list[Agent]], tmp_path: Path
) -> None:
    trackers, agents = processes
    for c in clusters:
        async with c.api_client() as api:
            await objects.create_namespace(api, NS, {})
    want = await create_pods(clusters, 0, "one", 2, 0) | await create_pods(clusters, 1, "two", 2, 0)
    local_dir = tmp_path / "local"
    local_dir.mkdir()
    shutil.copy(clusters[0].kubeconfig, local_dir / "cluster-1.yaml")

    hub = TrackerProcess("x-hub", ["--kubeconfig", str(clusters.merged_kubeconfig)], tmp_path, metrics=True)
    spoke = TrackerProcess(
        "x-spoke",
        [
            *("--kubeconfig-dir", str(local_dir), "--kubeconfig-dir-interval", "200ms"),
            *("--cluster-removal-grace", "1s", "--upstream-tracker", hub.address),
        ],
        tmp_path,
        metrics=True,
    )
    trackers += [hub.start(), spoke.start()]
    agent = Agent(spoke).start()
    agents.append(agent)
    await eventually(lambda: agent.pod_names(NS) == want, "spoke's agent sees every pod", trackers)
    one = agent.status("cluster-1")
    assert one is not None and one.via == ("x-spoke",)
    assert agent.status("cluster-2").via == ("x-hub", "x-spoke")  # type: ignore[union-attr]
    # The hub was asked without cluster-1 from the first connect, so the spoke had nothing to skip.
    assert "exclude=cluster-1 tracker_id=x-spoke" in hub.log_path.read_text(), hub.log_tail()
    assert metric(spoke, "kube_ip_tracker_upstream_excluded_clusters") == 1
    assert metric(spoke, "kube_ip_tracker_upstream_skipped_clusters") == 0

    # Many changes in cluster-1, then one in cluster-2: once that one is at the spoke (the hub's stream
    # is in revision order), the spoke's upstream stream carried only cluster-2's changes.
    changes_before = metric(spoke, "kube_ip_tracker_client_changes_applied_total")
    want |= await create_pods(clusters, 0, "burst", 20, 10)
    await eventually(
        lambda: agent.pod_names(NS) >= want,  # the local path
        "cluster-1's burst at the spoke",
        trackers,
    )

    async def hub_has_burst() -> bool:
        info = (await hub.clusters()).get("cluster-1")
        return info is not None and info.pods >= 22

    await eventually(hub_has_burst, "cluster-1's burst at the hub", trackers)
    want |= await create_pods(clusters, 1, "sentinel", 1, 10)
    await eventually(lambda: agent.pod_names(NS) == want, "cluster-2's sentinel at the spoke", trackers)
    received = metric(spoke, "kube_ip_tracker_client_changes_applied_total") - changes_before
    assert 1 <= received < 20, received  # the sentinel's change(s) only, none of the 20 burst pods
    assert metric(spoke, "kube_ip_tracker_upstream_skipped_clusters") == 0

    # cluster-1 is no longer watched at the spoke: after the removal grace it is served from the hub.
    (local_dir / "cluster-1.yaml").unlink()
    await eventually(
        lambda: (s := agent.status("cluster-1")) is not None and s.via == ("x-hub", "x-spoke") and s.synced,
        "cluster-1 served from the hub",
        trackers,
    )
    await eventually(lambda: agent.pod_names(NS) == want, "every pod again, cluster-1's from the hub", trackers)
    assert metric(spoke, "kube_ip_tracker_upstream_excluded_clusters") == 0
    want |= await create_pods(clusters, 0, "after", 1, 40)
    await eventually(lambda: agent.pod_names(NS) == want, "a new cluster-1 pod arrives through the hub", trackers)
