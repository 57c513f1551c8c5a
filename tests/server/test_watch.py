"""Watch over a real grpc.aio channel: snapshot, deltas, resume, reset, filters."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from prometheus_client import REGISTRY

from kube_ip_tracker.api.v1 import tracker_pb2 as pb
from kube_ip_tracker.index import Index
from kube_ip_tracker.model import ClusterStatusRecord, Kind, NamespaceRecord, NodeRecord

from .conftest import Connect, StartServer
from .helpers import WR, Stream, filled, keys, pod


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_snapshot_then_deltas(start_server: StartServer, connect: Connect) -> None:
    index = filled(synced=("a",))
    server = await start_server(index)
    stream = Stream(connect(server).Watch(pb.WatchRequest(watcher_name="t")))
    initial = await stream.initial()
    kinds = [m.kind for m in initial]
    assert kinds == [WR.SNAPSHOT, WR.CLUSTER_SYNCED, WR.END_OF_SNAPSHOT]
    snap, synced, end = initial
    assert not snap.reset and snap.epoch == index.epoch and snap.revision == index.revision == end.revision
    assert synced.cluster == "a"
    assert keys(snap.changes) == {
        *{("cluster", c, "False") for c in "ab"},
        *{("namespace", c, "default", "False") for c in "ab"},
        *{("node", c, "node-1", "False") for c in "ab"},
        *{("pod", c, "default", n, "False") for c in "ab" for n in ("web", "db")},
    }
    web = next(c.pod for c in snap.changes if c.pod.name == "web" and c.pod.cluster == "a")
    assert list(web.ips) == ["10.0.0.1"] and web.labels == {"app": "web"} and web.ports[0].protocol == pb.TCP

    rev = end.revision
    index.upsert(pod("api", "10.0.0.3"))
    index.delete(Kind.POD, "a", "default", "db")
    index.upsert(NodeRecord("a", "node-2", {}))
    delta = await stream.delta()
    assert (delta.first_revision, delta.revision) == (rev + 1, rev + 3)
    assert keys(delta.changes) == {
        ("pod", "a", "default", "api", "False"),
        ("pod", "a", "default", "db", "True"),
        ("node", "a", "node-2", "False"),
    }
    deleted = next(c for c in delta.changes if c.deleted)
    assert deleted.pod == pb.Pod(cluster="a", namespace="default", name="db")

    # A namespace label change is one change, however many pods the namespace has.
    index.upsert(NamespaceRecord("a", "default", {"team": "renamed"}))
    delta = await stream.delta()
    assert len(delta.changes) == 1 and delta.changes[0].namespace.labels == {"team": "renamed"}
    assert delta.first_revision == delta.revision == rev + 4

    index.remove_cluster("b")
    delta = await stream.delta()
    assert keys(delta.changes) == {("cluster", "b", "True")}
    stream.call.cancel()


async def test_resume_gets_only_missed_changes(start_server: StartServer, connect: Connect) -> None:
    index = filled()
    server = await start_server(index)
    stub = connect(server)
    rev = index.revision
    index.upsert(pod("late", "10.0.0.9"))
    index.delete(Kind.POD, "b", "default", "web")
    resumes = metric("kube_ip_tracker_server_snapshots_sent_total", type="resume")
    stream = Stream(stub.Watch(pb.WatchRequest(epoch=index.epoch, revision=rev)))
    end = await stream.next()
    assert end.kind == WR.END_OF_SNAPSHOT and end.revision == rev and end.epoch == index.epoch
    delta = await stream.next()
    assert delta.kind == WR.DELTA and (delta.first_revision, delta.revision) == (rev + 1, rev + 2)
    assert keys(delta.changes) == {("pod", "a", "default", "late", "False"), ("pod", "b", "default", "web", "True")}
    assert metric("kube_ip_tracker_server_snapshots_sent_total", type="resume") == resumes + 1
    # Live changes follow without a gap.
    index.upsert(pod("live", "10.0.0.10"))
    delta = await stream.delta()
    assert delta.first_revision == rev + 3
    # Resuming at the current revision sends nothing but END_OF_SNAPSHOT.
    up_to_date = Stream(stub.Watch(pb.WatchRequest(epoch=index.epoch, revision=index.revision)))
    assert (await up_to_date.next()).kind == WR.END_OF_SNAPSHOT
    stream.call.cancel()
    up_to_date.call.cancel()


async def test_unknown_epoch_gets_reset_snapshot(start_server: StartServer, connect: Connect) -> None:
    index = filled()
    server = await start_server(index)
    stream = Stream(connect(server).Watch(pb.WatchRequest(epoch="someone-else", revision=3)))
    initial = await stream.initial()
    assert initial[0].kind == WR.SNAPSHOT and initial[0].reset and initial[0].epoch == index.epoch
    assert all(not m.reset for m in initial[1:])
    stream.call.cancel()


async def test_revision_older_than_the_log_gets_reset_snapshot(start_server: StartServer, connect: Connect) -> None:
    index = Index(log_size=5)
    index.set_cluster_status(ClusterStatusRecord("a", synced=True))
    for i in range(10):
        index.upsert(pod(f"p{i}", f"10.0.0.{i + 1}"))
        index.flush()
    assert index.log_first_revision > 3
    server = await start_server(index)
    stream = Stream(connect(server).Watch(pb.WatchRequest(epoch=index.epoch, revision=2)))
    initial = await stream.initial()
    assert initial[0].reset and len(initial[0].changes) == 11
    stream.call.cancel()


async def test_revision_ahead_of_the_tracker_is_invalid(start_server: StartServer, connect: Connect) -> None:
    index = filled()
    server = await start_server(index)
    call = connect(server).Watch(pb.WatchRequest(epoch=index.epoch, revision=index.revision + 5))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call.read()
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"resume revision {index.revision + 5} is ahead" in (err.value.details() or "")


async def test_cluster_filter(start_server: StartServer, connect: Connect, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO")
    index = filled()
    server = await start_server(index)
    stream = Stream(connect(server).Watch(pb.WatchRequest(clusters=["b", "later"])))
    initial = await stream.initial()
    assert {k[1] for k in keys(initial[0].changes)} == {"b"}
    assert [m.cluster for m in initial if m.kind == WR.CLUSTER_SYNCED] == ["b"]
    assert "clusters not (yet) known: later" in caplog.text
    index.upsert(pod("x", "10.0.0.50"))  # cluster a: not sent
    index.upsert(pod("y", "10.1.0.50", cluster="b"))
    delta = await stream.delta()
    assert keys(delta.changes) == {("pod", "b", "default", "y", "False")}
    assert delta.first_revision == delta.revision == index.revision  # a gap: a's change is skipped
    index.upsert(pod("z", "10.9.0.1", cluster="later"))  # a cluster that appears later is sent
    delta = await stream.delta()
    assert keys(delta.changes) == {("cluster", "later", "False"), ("pod", "later", "default", "z", "False")}
    stream.call.cancel()


async def test_tracker_id_excludes_clusters_on_the_path(start_server: StartServer, connect: Connect) -> None:
    index = filled()
    index.set_cluster_status(ClusterStatusRecord("b", connected=True, synced=True, via=("hub", "spoke-1")))
    server = await start_server(index)
    stream = Stream(connect(server).Watch(pb.WatchRequest(tracker_id="spoke-1")))
    initial = await stream.initial()
    assert {k[1] for k in keys(initial[0].changes)} == {"a"}
    index.upsert(pod("y", "10.1.0.50", cluster="b"))
    index.upsert(pod("x", "10.0.0.50"))
    delta = await stream.delta()
    assert keys(delta.changes) == {("pod", "a", "default", "x", "False")}
    # The path changes: b is no longer via spoke-1 -> its whole content arrives.
    index.set_cluster_status(ClusterStatusRecord("b", connected=True, synced=True, via=("hub",)))
    delta = await stream.delta()
    assert ("pod", "b", "default", "y", "False") in keys(delta.changes)
    assert ("namespace", "b", "default", "False") in keys(delta.changes)
    # ... and a goes through spoke-1 now -> it is deleted for this watcher.
    index.set_cluster_status(ClusterStatusRecord("a", connected=True, synced=True, via=("spoke-1",)))
    delta = await stream.delta()
    assert keys(delta.changes) == {("cluster", "a", "True")}
    # Unfiltered watchers see every change.
    everything = Stream(connect(server).Watch(pb.WatchRequest()))
    assert {k[1] for k in keys((await everything.initial())[0].changes)} == {"a", "b"}
    stream.call.cancel()
    everything.call.cancel()


async def test_watchers_that_connect_together_share_one_snapshot_encoding(
    start_server: StartServer, connect: Connect
) -> None:
    index = filled()
    server = await start_server(index)
    before = metric("kube_ip_tracker_server_snapshot_encodings_total")
    streams = [Stream(connect(server).Watch(pb.WatchRequest(watcher_name=f"w{i}"))) for i in range(4)]
    results = await asyncio.gather(*(s.initial() for s in streams))
    assert metric("kube_ip_tracker_server_snapshot_encodings_total") == before + 1
    assert all(r[0].SerializeToString() == results[0][0].SerializeToString() for r in results)
    deltas_before = metric("kube_ip_tracker_server_delta_encodings_total")
    index.upsert(pod("new", "10.0.0.77"))
    got = await asyncio.gather(*(s.delta() for s in streams))
    assert metric("kube_ip_tracker_server_delta_encodings_total") == deltas_before + 1
    assert all(d == got[0] for d in got)
    for s in streams:
        s.call.cancel()


async def test_progress_messages_carry_the_revision(start_server: StartServer, connect: Connect) -> None:
    index = filled()
    server = await start_server(index, progress_interval=0.05)
    stream = Stream(connect(server).Watch(pb.WatchRequest()))
    await stream.initial()
    index.upsert(pod("new", "10.0.0.77"))
    msgs = await stream.until(lambda m: m.kind == WR.PROGRESS and m.revision == index.revision)
    assert any(m.kind == WR.DELTA for m in msgs)
    stream.call.cancel()


async def test_large_batch_is_split_into_several_delta_messages(start_server: StartServer, connect: Connect) -> None:
    index = filled()
    server = await start_server(index)
    stream = Stream(connect(server).Watch(pb.WatchRequest()))
    end = (await stream.initial())[-1]
    index.replace("a", Kind.POD, [pod(f"p{i}", f"10.5.{i // 250}.{i % 250}") for i in range(2500)])
    index.flush()
    seen = []
    expected = end.revision + 1
    while not seen or seen[-1].revision < index.revision:
        d = await stream.delta()
        assert d.first_revision == expected
        expected = d.revision + 1
        seen.append(d)
    assert len(seen) >= 3 and sum(len(d.changes) for d in seen) == 2502  # 2500 new, web and db gone
    stream.call.cancel()


async def test_later_watcher_shares_older_snapshot_and_catches_up_from_the_log(
    start_server: StartServer, connect: Connect
) -> None:
    index = filled()
    server = await start_server(index, snapshot_cache_ttl=30)
    stub = connect(server)
    before = metric("kube_ip_tracker_server_snapshot_encodings_total")
    first = Stream(stub.Watch(pb.WatchRequest()))
    snap_rev = (await first.initial())[-1].revision
    index.upsert(pod("new", "10.0.0.77"))
    index.delete(Kind.POD, "a", "default", "db")
    second = Stream(stub.Watch(pb.WatchRequest()))
    initial = await second.initial()
    assert initial[-1].revision == snap_rev  # the shared snapshot's revision
    catch_up = await second.next()
    assert catch_up.kind == WR.DELTA and (catch_up.first_revision, catch_up.revision) == (snap_rev + 1, snap_rev + 2)
    assert keys(catch_up.changes) == {("pod", "a", "default", "new", "False"), ("pod", "a", "default", "db", "True")}
    assert metric("kube_ip_tracker_server_snapshot_encodings_total") == before + 1
    # Both continue with the same live deltas.
    assert (await first.delta()).revision == snap_rev + 2
    index.upsert(pod("live", "10.0.0.78"))
    assert (await first.delta()).revision == (await second.delta()).revision == snap_rev + 3
    first.call.cancel()
    second.call.cancel()


async def test_without_cache_a_later_watcher_gets_a_fresh_snapshot(start_server: StartServer, connect: Connect) -> None:
    index = filled()
    server = await start_server(index, snapshot_cache_ttl=0)
    stub = connect(server)
    first = Stream(stub.Watch(pb.WatchRequest()))
    await first.initial()
    index.upsert(pod("new", "10.0.0.77"))
    before = metric("kube_ip_tracker_server_snapshot_encodings_total")
    second = Stream(stub.Watch(pb.WatchRequest()))
    initial = await second.initial()
    assert initial[-1].revision == index.revision
    assert ("pod", "a", "default", "new", "False") in keys(initial[0].changes)
    assert metric("kube_ip_tracker_server_snapshot_encodings_total") == before + 1
    first.call.cancel()
    second.call.cancel()
