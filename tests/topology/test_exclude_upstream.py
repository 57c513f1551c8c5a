"""The upstream source asks the hub to leave out the clusters watched directly (exclude_clusters).

In-process trackers over real gRPC (indexes written directly): the spoke's stream from the hub never
carries its local clusters, and when the local set changes the spoke asks again with the new list.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from kube_ip_tracker.index import Index
from kube_ip_tracker.model import ClusterStatusRecord, Kind
from kube_ip_tracker.server.encode import WatchFilter

from .test_upstream_grpc import Hub, Spoke, fill, pod, until


def hub_filters(hub: Hub) -> list[WatchFilter]:
    """The filters of the watchers on the hub (what the spokes asked for)."""
    assert hub.server is not None and hub.server._fanout is not None
    return [w.filter for w in hub.server._fanout.watchers]


@pytest.fixture
async def hub() -> AsyncIterator[Hub]:
    index = Index()
    fill(index, "a", ("hub",), pod("a", "a-0", "10.1.0.1"))
    fill(index, "b", ("hub",), pod("b", "b-0", "10.2.0.1"))
    fill(index, "c", ("hub",), pod("c", "c-0", "10.3.0.1"))
    started = Hub(index)
    await started.start()
    yield started
    await started.stop()


@pytest.fixture
async def spoke(hub: Hub) -> AsyncIterator[Spoke]:
    s = Spoke(hub.port)
    yield s
    await s.stop()


async def test_configured_local_clusters_are_never_streamed_by_the_hub(hub: Hub, spoke: Spoke) -> None:
    # "a" is configured here but its informers have written nothing yet: excluded from the first connect.
    await spoke.server.start()
    spoke.upstreams.start(local=lambda: ["a"])
    await until(lambda: spoke.source.live, "spoke's upstream live")
    assert hub_filters(hub) == [WatchFilter(tracker_id="spoke", exclude=frozenset({"a"}))]
    writer = spoke.source.writer
    assert set(writer.statuses) == {"b", "c"} and not writer.skipped  # "a" never arrived, so nothing was skipped
    assert spoke.index.cluster_status("a") is None

    hub.index.upsert(pod("a", "a-1", "10.1.0.2"))  # changes of "a" at the hub are not sent either
    hub.index.upsert(pod("b", "b-1", "10.2.0.2"))
    await until(lambda: spoke.index.get_pod_by_ip("10.2.0.2") is not None, "b's change at the spoke")
    assert not writer.skipped and spoke.index.get_pod_by_ip("10.1.0.2") is None
    assert spoke.source.client.snapshots_applied == 1  # no resync: the local set did not change


async def test_a_cluster_no_longer_local_comes_from_the_hub_and_a_new_local_one_is_excluded(
    hub: Hub, spoke: Spoke
) -> None:
    local = spoke.upstreams.local_writer
    local.set_cluster_status(ClusterStatusRecord("a", connected=True, synced=True))
    local.upsert(pod("a", "local-0", "10.1.9.1"))
    await spoke.start()
    await until(lambda: spoke.mirror.pod_by_ip("10.2.0.1") is not None, "hub's cluster b at the spoke's agent")
    assert spoke.mirror.pod_by_ip("10.1.9.1") is not None and spoke.mirror.pod_by_ip("10.1.0.1") is None
    assert hub_filters(hub) == [WatchFilter(tracker_id="spoke", exclude=frozenset({"a"}))]
    assert not spoke.source.writer.skipped

    # "a" is no longer watched here: the spoke asks again without the exclusion and serves the hub's "a".
    local.remove_cluster("a")
    await until(lambda: spoke.mirror.pod_by_ip("10.1.0.1") is not None, "hub's copy of a at the spoke's agent")
    assert spoke.mirror.pod_by_ip("10.1.9.1") is None
    assert hub_filters(hub) == [WatchFilter(tracker_id="spoke")]
    status = spoke.agent_status("a")
    assert status is not None and status.via == ("hub", "spoke") and status.synced
    hub.index.upsert(pod("a", "a-1", "10.1.0.2"))  # and its changes follow
    await until(lambda: spoke.mirror.pod_by_ip("10.1.0.2") is not None, "a's change from the hub")

    # "c" becomes local: local first at once, then the hub is asked to leave it out.
    local.set_cluster_status(ClusterStatusRecord("c", connected=True, synced=True))
    local.replace("c", Kind.POD, [pod("c", "local-c", "10.3.9.1")])
    await until(lambda: spoke.mirror.pod_by_ip("10.3.9.1") is not None, "local c at the spoke's agent")
    await until(
        lambda: hub_filters(hub) == [WatchFilter(tracker_id="spoke", exclude=frozenset({"c"}))], "hub asked without c"
    )
    await until(lambda: spoke.source.live, "spoke's upstream live again")
    hub.index.upsert(pod("c", "c-1", "10.3.0.2"))
    hub.index.upsert(pod("b", "b-1", "10.2.0.2"))
    await until(lambda: spoke.mirror.pod_by_ip("10.2.0.2") is not None, "b's change after the reconnect")
    assert "c" not in spoke.source.writer.skipped  # c's change was not sent
    assert spoke.mirror.pod_by_ip("10.3.0.2") is None and spoke.mirror.pod_by_ip("10.3.0.1") is None
    assert spoke.mirror.pod_by_ip("10.1.0.2") is not None  # a is still served from the hub
