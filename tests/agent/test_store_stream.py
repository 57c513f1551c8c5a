"""The agent store fed by hand-built WatchResponse messages through the stream state machine."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from kube_ip_tracker.agent import events as ev
from kube_ip_tracker.agent.store import AgentStore
from kube_ip_tracker.api.v1 import tracker_pb2 as pb
from kube_ip_tracker.client.stream import ResyncRequired, WatchSession
from kube_ip_tracker.testing.messages import (
    BASE,
    EPOCH,
    WR,
    delta,
    end,
    namespace,
    node,
    pod,
    pod_deleted,
    progress,
    snapshot,
    status,
    synced,
)


class Recorder:
    """A mirror listener that keeps every batch."""

    def __init__(self) -> None:
        self.batches: list[list[ev.MirrorEvent]] = []

    def __call__(self, batch: Sequence[ev.MirrorEvent]) -> None:
        self.batches.append(list(batch))

    def last(self) -> list[ev.MirrorEvent]:
        return self.batches[-1]

    def names(self, kind: type) -> set[str]:
        return {e.pod.name for e in self.last() if isinstance(e, kind)}  # type: ignore[attr-defined]


def loaded(changes: Sequence[pb.Change] = BASE, revision: int = 5) -> tuple[AgentStore, WatchSession]:
    mirror = AgentStore()
    session = WatchSession(mirror)
    session.handle(snapshot(changes, revision))
    session.handle(synced("a", revision))
    session.handle(end(revision))
    return mirror, session


def test_snapshot_is_invisible_until_end_of_snapshot_then_ready() -> None:
    mirror = AgentStore()
    recorder = Recorder()
    mirror.subscribe(recorder)
    session = WatchSession(mirror)
    session.handle(snapshot(BASE[:3], 5))
    session.handle(snapshot(BASE[3:], 5))
    session.handle(synced("a", 5))
    assert not mirror.ready
    assert mirror.pod_by_ip("10.0.0.1") is None
    assert list(mirror.pods()) == []
    assert recorder.batches == []
    session.handle(end(5))
    assert mirror.ready and session.live
    assert (mirror.epoch, mirror.revision, session.revision) == (EPOCH, 5, 5)
    found = mirror.pod_by_ip("10.0.0.1")
    assert found is not None
    p, ns, nd = found
    assert (p.cluster, p.namespace, p.name, p.node) == ("a", "default", "web", "node-1")
    assert p.ips == ("10.0.0.1", "fd00::1") and dict(p.labels) == {"app": "web"}
    assert ns is not None and dict(ns.labels) == {"team": "default"}
    assert nd is not None and nd.internal_ips == ("192.168.0.1",)
    assert mirror.pod_by_ip("fd00::1") == found
    assert mirror.cluster_synced("a") and not mirror.cluster_synced("b")
    assert mirror.cluster_statuses()["a"].kube_system_uid == "ks-a"
    assert mirror.counts() == {"pods": 2, "namespaces": 1, "nodes": 1, "clusters": 1}
    batch = recorder.last()
    assert {e.pod.name for e in batch if isinstance(e, ev.PodUpserted)} == {"web", "db"}
    assert isinstance(batch[-2], ev.SnapshotApplied) and not batch[-2].reset
    assert batch[-1] == ev.Ready(EPOCH, 5)


def test_pod_without_known_namespace_or_node() -> None:
    mirror, _ = loaded([pod("orphan", ["10.9.9.9"], namespace="ghost", node="nowhere")])
    found = mirror.pod_by_ip("10.9.9.9")
    assert found is not None and found[1] is None and found[2] is None


def test_reset_snapshot_replaces_state_and_reports_only_differences() -> None:
    mirror, session = loaded()
    recorder = Recorder()
    mirror.subscribe(recorder)
    # Tracker restarted: new epoch. A resuming watcher gets a reset snapshot.
    session = WatchSession(mirror, resume_epoch=EPOCH, resume_revision=5)
    new = [
        status("a"),
        namespace("default"),
        node("node-1"),
        pod("web", ["10.0.0.1", "fd00::1"]),  # unchanged
        pod("api", ["10.0.0.3"]),  # new
    ]
    session.handle(snapshot(new[:2], 3, reset=True, epoch="epoch-2"))
    assert mirror.pod("a", "default", "db") is not None  # old state still visible mid-snapshot
    session.handle(snapshot(new[2:], 3, epoch="epoch-2"))
    session.handle(end(3, epoch="epoch-2"))
    assert session.reset_seen
    assert mirror.pod("a", "default", "db") is None
    assert mirror.pod_by_ip("10.0.0.2") is None
    assert mirror.pod_by_ip("10.0.0.3") is not None
    assert (mirror.epoch, mirror.revision) == ("epoch-2", 3)
    assert recorder.names(ev.PodDeleted) == {"db"}
    assert recorder.names(ev.PodUpserted) == {"api"}
    assert not any(isinstance(e, (ev.NamespaceUpserted, ev.NodeUpserted, ev.Ready)) for e in recorder.last())
    assert ev.SnapshotApplied("epoch-2", 3, True) in recorder.last()
    # The mirror is no longer synced for a cluster the new snapshot did not mark synced.
    assert mirror.cluster_synced("a")  # status synced=True


def test_empty_reset_snapshot_clears_everything() -> None:
    mirror, _ = loaded()
    session = WatchSession(mirror, resume_epoch=EPOCH, resume_revision=5)
    session.handle(WR(kind=WR.SNAPSHOT, epoch="epoch-2", revision=0, reset=True))
    session.handle(end(0, epoch="epoch-2"))
    assert list(mirror.pods()) == [] and list(mirror.namespaces()) == [] and list(mirror.nodes()) == []
    assert mirror.cluster_statuses() == {} and not mirror.cluster_synced("a")


def test_fresh_watcher_of_an_empty_tracker_gets_end_of_snapshot_only() -> None:
    mirror = AgentStore()
    session = WatchSession(mirror)
    session.handle(end(0))
    assert mirror.ready and session.live and list(mirror.pods()) == []


def test_broken_snapshot_leaves_no_trace() -> None:
    mirror, _ = loaded()
    session = WatchSession(mirror, resume_epoch=EPOCH, resume_revision=5)
    session.handle(snapshot([pod("other", ["10.1.1.1"])], 9, reset=True, epoch="epoch-2"))
    del session  # the stream broke before END_OF_SNAPSHOT
    assert mirror.pod_by_ip("10.1.1.1") is None
    assert mirror.pod("a", "default", "db") is not None and mirror.epoch == EPOCH


def test_deltas_upsert_relabel_and_delete() -> None:
    mirror, session = loaded()
    recorder = Recorder()
    mirror.subscribe(recorder)
    session.handle(delta(6, [pod("api", ["10.0.0.3"]), pod("web", ["10.0.0.1", "fd00::1"], labels={"app": "v2"})]))
    assert mirror.revision == 7 and session.revision == 7
    web = mirror.pod("a", "default", "web")
    assert web is not None and dict(web.labels) == {"app": "v2"}
    upserts = [e for e in recorder.last() if isinstance(e, ev.PodUpserted)]
    assert [(e.pod.name, e.previous is None) for e in upserts] == [("api", True), ("web", False)]
    session.handle(delta(8, [pod_deleted("db"), namespace("default", labels={"team": "x"})]))
    assert mirror.pod_by_ip("10.0.0.2") is None
    assert [type(e) for e in recorder.last()] == [ev.PodDeleted, ev.NamespaceUpserted]
    found = mirror.pod_by_ip("10.0.0.1")
    assert found is not None and found[1] is not None and dict(found[1].labels) == {"team": "x"}
    # Deleting an unknown key is a no-op; node deletion is seen by lookups.
    session.handle(delta(10, [pod_deleted("never"), pb.Change(node=pb.Node(cluster="a", name="node-1"), deleted=True)]))
    found = mirror.pod_by_ip("10.0.0.1")
    assert found is not None and found[2] is None
    assert [type(e) for e in recorder.last()] == [ev.NodeDeleted]
    session.handle(progress(11))
    assert session.revision == 11


def test_gap_in_revisions_requires_resync_and_changes_nothing() -> None:
    mirror, session = loaded()
    with pytest.raises(ResyncRequired) as info:
        session.handle(delta(7, [pod("late", ["10.0.0.9"])]))
    assert info.value.reason == "gap"
    assert mirror.pod_by_ip("10.0.0.9") is None and mirror.revision == 5
    with pytest.raises(ResyncRequired, match="gap"):
        session.handle(progress(9))


def test_filtered_watcher_accepts_gaps_but_not_going_back() -> None:
    mirror = AgentStore()
    session = WatchSession(mirror, checked_continuity=False)
    session.handle(snapshot(BASE, 5))
    session.handle(end(5))
    session.handle(delta(9, [pod("api", ["10.0.0.3"])]))
    session.handle(progress(20))
    assert session.revision == 20 and mirror.pod_by_ip("10.0.0.3") is not None
    with pytest.raises(ResyncRequired, match="does not follow"):
        session.handle(delta(15, [pod("old", ["10.0.0.4"])]))


def test_resume_continues_with_deltas_only() -> None:
    mirror, _ = loaded()
    session = WatchSession(mirror, resume_epoch=EPOCH, resume_revision=5)
    applied = session.handle(end(5))
    assert applied.resumed and not applied.snapshot_committed and session.live
    session.handle(delta(6, [pod_deleted("web")]))
    assert mirror.pod_by_ip("10.0.0.1") is None and mirror.pod_by_ip("10.0.0.2") is not None


def test_resume_answered_by_other_epoch_without_snapshot_requires_resync() -> None:
    mirror, _ = loaded()
    session = WatchSession(mirror, resume_epoch=EPOCH, resume_revision=5)
    with pytest.raises(ResyncRequired) as info:
        session.handle(end(5, epoch="epoch-2"))
    assert info.value.reason == "epoch"


@pytest.mark.parametrize(
    "msg",
    [delta(1, [pod("x", ["10.0.0.1"])]), progress(1), WR(kind=WR.KIND_UNSPECIFIED, epoch=EPOCH)],
)
def test_messages_out_of_order_before_end_of_snapshot(msg: pb.WatchResponse) -> None:
    session = WatchSession(AgentStore())
    with pytest.raises(ResyncRequired) as info:
        session.handle(msg)
    assert info.value.reason == "protocol"


def test_snapshot_after_end_of_snapshot_and_epoch_switch_are_rejected() -> None:
    _, session = loaded()
    with pytest.raises(ResyncRequired, match="SNAPSHOT after END_OF_SNAPSHOT"):
        session.handle(snapshot([], 6))
    with pytest.raises(ResyncRequired, match="epoch"):
        session.handle(delta(6, [pod("x", ["10.0.0.7"])], epoch="epoch-9"))


def test_change_without_object_is_a_protocol_error() -> None:
    session = WatchSession(AgentStore())
    with pytest.raises(ResyncRequired, match="no object"):
        session.handle(snapshot([pb.Change(deleted=True)], 1))


def test_deleted_cluster_status_purges_the_cluster() -> None:
    changes = [*BASE, status("b"), namespace("default", cluster="b"), pod("web", ["10.0.1.1"], cluster="b")]
    mirror, session = loaded(changes)
    recorder = Recorder()
    mirror.subscribe(recorder)
    session.handle(delta(6, [status("a", deleted=True)]))
    assert [p.cluster for p in mirror.pods()] == ["b"]
    assert [n.cluster for n in mirror.namespaces()] == ["b"]
    assert list(mirror.nodes("a")) == []
    assert mirror.pod_by_ip("10.0.0.1") is None and mirror.pod_by_ip("10.0.1.1") is not None
    assert set(mirror.cluster_statuses()) == {"b"} and not mirror.cluster_synced("a")
    assert recorder.names(ev.PodDeleted) == {"web", "db"}
    assert ev.ClusterRemoved("a") in recorder.last()


def test_cluster_status_updates_and_synced_state() -> None:
    mirror, session = loaded()
    session.handle(delta(6, [status("b", synced=False)]))
    assert not mirror.cluster_synced("b") and "b" in mirror.cluster_statuses()
    session.handle(delta(7, [status("b", synced=True)]))
    assert mirror.cluster_synced("b")


def test_ip_conflict_newest_pod_wins_and_older_claim_returns() -> None:
    mirror, session = loaded([namespace("default"), pod("old", ["10.0.0.1"], ts=100)])
    session.handle(delta(6, [pod("new", ["10.0.0.1"], ts=200)]))
    found = mirror.pod_by_ip("10.0.0.1")
    assert found is not None and found[0].name == "new"
    # An older pod that shows up later does not take the IP.
    session.handle(delta(7, [pod("older", ["10.0.0.1"], ts=50, cluster="b")]))
    found = mirror.pod_by_ip("10.0.0.1")
    assert found is not None and found[0].name == "new"
    session.handle(delta(8, [pod_deleted("new")]))
    found = mirror.pod_by_ip("10.0.0.1")
    assert found is not None and found[0].name == "old"
    # A pod that changes IP releases the old one.
    session.handle(delta(9, [pod("old", ["10.0.0.8"], ts=100)]))
    found = mirror.pod_by_ip("10.0.0.1")
    assert found is not None and (found[0].cluster, found[0].name) == ("b", "older")


def test_ip_conflict_same_timestamp_is_decided_by_key_in_any_order() -> None:
    a = pod("alpha", ["10.0.0.1"], ts=100)
    b = pod("beta", ["10.0.0.1"], ts=100)
    first, _ = loaded([a, b])
    second, _ = loaded([b, a])
    one, two = first.pod_by_ip("10.0.0.1"), second.pod_by_ip("10.0.0.1")
    assert one is not None and two is not None and one[0].name == two[0].name


def test_listener_failure_is_contained_and_unsubscribe_works() -> None:
    mirror, session = loaded()
    recorder = Recorder()

    def broken(batch: Sequence[ev.MirrorEvent]) -> None:
        raise RuntimeError("listener bug")

    mirror.subscribe(broken)
    unsubscribe = mirror.subscribe(recorder)
    session.handle(delta(6, [pod("api", ["10.0.0.3"])]))
    assert len(recorder.batches) == 1
    unsubscribe()
    session.handle(delta(7, [pod_deleted("api")]))
    assert len(recorder.batches) == 1 and mirror.pod_by_ip("10.0.0.3") is None
