"""Cluster ownership and path stamping between local informers and upstream trackers (real Index)."""

from __future__ import annotations

import asyncio

from kube_ip_tracker.index import Index
from kube_ip_tracker.model import ClusterStatusRecord, Kind, NamespaceRecord, PodRecord
from kube_ip_tracker.sources.upstream_merge import LOCAL, ClusterOwners, LocalWriter, UpstreamWriter


def pod(cluster: str, name: str, ip: str) -> PodRecord:
    return PodRecord(cluster, "ns", name, {"app": name}, (), "node-1", (ip,))


def setup() -> tuple[Index, ClusterOwners, LocalWriter, UpstreamWriter, UpstreamWriter, list[str]]:
    index = Index()
    owners = ClusterOwners()
    resyncs: list[str] = []
    local = LocalWriter(index, owners, "spoke")
    hub = UpstreamWriter(index, owners, "spoke", "hub:1", lambda: resyncs.append("hub"))
    hub2 = UpstreamWriter(index, owners, "spoke", "hub2:1", lambda: resyncs.append("hub2"))
    return index, owners, local, hub, hub2, resyncs


def test_local_status_gets_this_tracker_as_path() -> None:
    index, owners, local, *_ = setup()
    local.set_cluster_status(ClusterStatusRecord("a", connected=True, synced=True))
    assert index.cluster_status("a") == ClusterStatusRecord("a", connected=True, synced=True, via=("spoke",))
    assert owners.owner("a") == LOCAL


def test_upstream_cluster_path_is_extended_and_status_travels() -> None:
    index, _, _, hub, _, _ = setup()
    hub.set_cluster_status(ClusterStatusRecord("b", connected=True, synced=False, via=("hub",)))
    hub.upsert(pod("b", "p", "10.0.0.1"))
    status = index.cluster_status("b")
    assert status is not None and status.via == ("hub", "spoke") and not status.synced
    assert index.pod("b", "ns", "p") is not None


def test_clusters_watched_directly_are_skipped_and_taken_over() -> None:
    index, owners, local, hub, _, _ = setup()
    # The hub's copy arrives first; the local informers then claim the cluster.
    hub.set_cluster_status(ClusterStatusRecord("a", connected=True, synced=True, via=("hub",)))
    hub.upsert(pod("a", "old", "10.0.0.1"))
    local.set_cluster_status(ClusterStatusRecord("a", connected=True))
    assert owners.owner("a") == LOCAL and "a" in hub.skipped
    hub.upsert(pod("a", "from-hub", "10.0.0.2"))
    hub.set_cluster_status(ClusterStatusRecord("a", connected=False, stale=True, via=("hub",)))
    assert index.pod("a", "ns", "from-hub") is None
    assert index.cluster_status("a") == ClusterStatusRecord("a", connected=True, via=("spoke",))
    # The first local list replaces what the hub had written.
    local.replace("a", Kind.POD, [pod("a", "mine", "10.0.0.3")])
    assert [p.name for p in index.pods("a")] == ["mine"]
    hub.delete(Kind.POD, "a", "ns", "mine")
    assert index.pod("a", "ns", "mine") is not None


def test_a_path_holding_this_tracker_is_a_loop_and_dropped() -> None:
    index, _, _, hub, _, _ = setup()
    hub.set_cluster_status(ClusterStatusRecord("c", connected=True, synced=True, via=("x", "spoke", "hub")))
    assert index.cluster_status("c") is None
    # Owned before, then the path turns into a loop: the cluster goes.
    hub.set_cluster_status(ClusterStatusRecord("d", connected=True, synced=True, via=("hub",)))
    hub.upsert(pod("d", "p", "10.0.0.9"))
    hub.set_cluster_status(ClusterStatusRecord("d", connected=True, synced=True, via=("hub", "spoke")))
    assert index.cluster_status("d") is None and index.get_pod_by_ip("10.0.0.9") is None


def test_down_upstream_serves_last_data_stale_then_restores_its_statuses() -> None:
    index, _, local, hub, _, _ = setup()
    local.set_cluster_status(ClusterStatusRecord("a", connected=True, synced=True))
    hub.set_cluster_status(ClusterStatusRecord("b", connected=True, synced=True, via=("hub",)))
    hub.set_cluster_status(ClusterStatusRecord("e", connected=False, synced=False, via=("hub",)))
    hub.upsert(pod("b", "p", "10.0.0.1"))
    hub.set_down(True, "disconnected")
    b = index.cluster_status("b")
    assert b is not None and b.stale and not b.connected and b.synced and "hub:1" in b.last_error
    e = index.cluster_status("e")
    assert e is not None and not e.stale  # never synced: nothing to be stale
    assert index.get_pod_by_ip("10.0.0.1") is not None
    local_status = index.cluster_status("a")
    assert local_status is not None and local_status.connected and not local_status.stale
    revision = index.revision
    hub.set_down(False)
    assert index.cluster_status("b") == ClusterStatusRecord("b", connected=True, synced=True, via=("hub", "spoke"))
    assert index.revision == revision + 2  # b and e back to their upstream statuses


def test_second_upstream_is_resynced_when_the_owner_lets_a_cluster_go() -> None:
    index, owners, local, hub, hub2, resyncs = setup()
    hub.set_cluster_status(ClusterStatusRecord("b", connected=True, synced=True, via=("hub",)))
    hub2.set_cluster_status(ClusterStatusRecord("b", connected=True, synced=True, via=("hub2",)))
    hub2.upsert(pod("b", "other", "10.0.0.7"))
    assert owners.owner("b") is hub and "b" in hub2.skipped and index.pod("b", "ns", "other") is None
    hub.remove_cluster("b")
    assert index.cluster_status("b") is None and resyncs == ["hub2"]
    # A removed local cluster is asked of the upstreams that have it.
    local.upsert(NamespaceRecord("a", "ns", {}))
    hub.set_cluster_status(ClusterStatusRecord("a", connected=True, synced=True, via=("hub",)))
    local.remove_cluster("a")
    assert owners.owner("a") is None and resyncs == ["hub2", "hub"]


def test_cluster_not_synced_at_a_restarted_upstream_is_held_until_a_resync() -> None:
    index, _, _, hub, _, resyncs = setup()
    hub.set_cluster_status(ClusterStatusRecord("b", connected=True, synced=True, via=("hub",)))
    hub.upsert(pod("b", "old", "10.0.0.1"))
    # The restarted hub's snapshot: b is connected but not listed yet, and has no pods so far.
    hub.committing = True
    hub.set_cluster_status(ClusterStatusRecord("b", connected=True, synced=False, via=("hub",)))
    hub.replace("b", Kind.POD, [])
    hub.committing = False
    assert index.pod("b", "ns", "old") is not None
    status = index.cluster_status("b")
    assert status is not None and status.stale and status.synced and "not synced at the upstream" in status.last_error
    hub.upsert(pod("b", "partial", "10.0.0.2"))  # deltas of the upstream's list are ignored meanwhile
    assert index.pod("b", "ns", "partial") is None
    hub.set_cluster_status(ClusterStatusRecord("b", connected=True, synced=True, via=("hub",)))
    assert resyncs == ["hub"] and "b" in hub.held
    # The full resync: the held data is reconciled to the upstream's.
    hub.committing = True
    hub.set_cluster_status(ClusterStatusRecord("b", connected=True, synced=True, via=("hub",)))
    hub.replace("b", Kind.POD, [pod("b", "partial", "10.0.0.2"), pod("b", "new", "10.0.0.3")])
    hub.committing = False
    assert sorted(p.name for p in index.pods("b")) == ["new", "partial"]
    assert index.cluster_status("b") == ClusterStatusRecord("b", connected=True, synced=True, via=("hub", "spoke"))


async def test_cluster_missing_from_a_snapshot_is_removed_after_the_grace_only() -> None:
    index, owners, _, hub, _, _ = setup()
    hub.removal_grace = 0.2
    for c in ("b", "c"):
        hub.set_cluster_status(ClusterStatusRecord(c, connected=True, synced=True, via=("hub",)))
        hub.upsert(pod(c, "p", f"10.0.{ord(c)}.1"))
    hub.committing = True
    hub.remove_cluster("b")
    hub.remove_cluster("c")
    hub.committing = False
    for c in ("b", "c"):
        status = index.cluster_status(c)
        assert status is not None and status.stale and "missing from the upstream" in status.last_error
    # c comes back (not synced yet): no purge for it; b never does.
    hub.set_cluster_status(ClusterStatusRecord("c", connected=True, synced=False, via=("hub",)))
    await asyncio.sleep(0.4)
    assert index.cluster_status("b") is None and owners.owner("b") is None
    assert index.pod("c", "ns", "p") is not None and "c" in hub.held
    # A deletion in a delta (the upstream dropped the cluster itself) removes at once.
    hub.remove_cluster("c")
    assert index.cluster_status("c") is None


def test_clusters_fail_over_to_a_live_upstream_and_back() -> None:
    index, owners, _, hub, hub2, resyncs = setup()
    hub.live = hub2.live = True
    hub.set_cluster_status(ClusterStatusRecord("b", connected=True, synced=True, via=("hub",)))
    hub.upsert(pod("b", "p", "10.0.0.1"))
    hub2.set_cluster_status(ClusterStatusRecord("b", connected=True, synced=True, via=("hub2",)))
    assert owners.owner("b") is hub
    # hub goes down: b moves to hub2, whose full resync replaces hub's data.
    hub.live = False
    hub.set_down(True, "disconnected")
    owners.fail_over(hub)
    assert owners.owner("b") is hub2 and resyncs == ["hub2"] and "b" in hub.skipped
    hub2.committing = True
    hub2.set_cluster_status(ClusterStatusRecord("b", connected=True, synced=True, via=("hub2",)))
    hub2.replace("b", Kind.POD, [pod("b", "q", "10.0.0.2")])
    hub2.committing = False
    assert [p.name for p in index.pods("b")] == ["q"]
    assert index.cluster_status("b") == ClusterStatusRecord("b", connected=True, synced=True, via=("hub2", "spoke"))
    # hub is back: b stays with hub2 while hub2 is live ...
    hub.live = True
    owners.adopt(hub)
    assert owners.owner("b") is hub2
    # ... and returns to hub when hub2 goes down.
    hub2.live = False
    owners.fail_over(hub2)
    assert owners.owner("b") is hub and resyncs == ["hub2", "hub"]
    # An upstream coming back adopts clusters whose owner is down.
    hub.live = False
    owners.adopt(hub2)  # hub2 is not live either: nothing moves
    assert owners.owner("b") is hub
    hub2.live = True
    owners.adopt(hub2)
    assert owners.owner("b") is hub2


def test_cluster_watched_directly_under_another_id_is_recognised_by_its_uid() -> None:
    index, owners, local, hub, _, resyncs = setup()
    # The hub calls the spoke's cluster "eu1"; the spoke calls it "local". Hub first, then local.
    hub.set_cluster_status(ClusterStatusRecord("eu1", connected=True, synced=True, kube_system_uid="U", via=("hub",)))
    hub.upsert(pod("eu1", "p", "10.0.0.1"))
    local.set_cluster_status(ClusterStatusRecord("local", connected=True, synced=True, kube_system_uid="U"))
    assert index.cluster_status("eu1") is None and index.get_pod_by_ip("10.0.0.1") is None
    # Further copies from the hub are skipped, records included.
    hub.set_cluster_status(ClusterStatusRecord("eu1", connected=True, synced=True, kube_system_uid="U", via=("hub",)))
    hub.upsert(pod("eu1", "p2", "10.0.0.2"))
    assert index.cluster_status("eu1") is None and index.get_pod_by_ip("10.0.0.2") is None
    other = ClusterStatusRecord("eu2", connected=True, synced=True, kube_system_uid="V", via=("hub",))
    hub.set_cluster_status(other)
    assert index.cluster_status("eu2") is not None
    # The local cluster goes away: the hub's copy may serve again (after a resync).
    local.remove_cluster("local")
    assert hub.aliases == {} and resyncs[-1] == "hub"
    hub.set_cluster_status(ClusterStatusRecord("eu1", connected=True, synced=True, kube_system_uid="U", via=("hub",)))
    assert owners.owner("eu1") is hub
