"""WatchRequest.exclude_clusters: filtered snapshots, deltas, resumes (same and changed filters), sharing, validation."""

from __future__ import annotations

import asyncio
import random

import grpc
import grpc.aio
import pytest

from kube_ip_tracker.api.v1 import tracker_pb2 as pb
from kube_ip_tracker.index import Index
from kube_ip_tracker.model import ClusterStatusRecord
from kube_ip_tracker.server.encode import MAX_EXCLUDE_CLUSTERS, WatchFilter

from .conftest import Connect, StartServer
from .helpers import WR, Stream, filled, keys, pod
from .test_consistency import Applier, expected, random_op
from .test_watch import metric


def clusters_in(messages: list[pb.WatchResponse]) -> set[str]:
    return {k[1] for m in messages for k in keys(m.changes)}


async def test_snapshot_and_deltas_leave_out_excluded_clusters(start_server: StartServer, connect: Connect) -> None:
    index = filled(("a", "b", "c"), synced=("a", "b", "c"))
    server = await start_server(index)
    stream = Stream(connect(server).Watch(pb.WatchRequest(exclude_clusters=["b", "not-there"])))
    initial = await stream.initial()
    assert clusters_in(initial) == {"a", "c"}
    assert [m.cluster for m in initial if m.kind == WR.CLUSTER_SYNCED] == ["a", "c"]
    flt = WatchFilter(exclude=frozenset({"b", "not-there"}))
    assert {m.epoch for m in initial} == {flt.stream_epoch(index.epoch)} != {index.epoch}

    index.upsert(pod("x", "10.1.0.50", cluster="b"))  # excluded: not sent
    index.upsert(pod("y", "10.0.0.50", cluster="a"))
    delta = await stream.delta()
    assert keys(delta.changes) == {("pod", "a", "default", "y", "False")}
    assert delta.epoch == flt.stream_epoch(index.epoch)
    index.upsert(pod("z", "10.9.0.1", cluster="not-there"))  # an excluded cluster that appears later: not sent
    index.remove_cluster("b")
    index.upsert(pod("w", "10.2.0.50", cluster="c"))
    delta = await stream.delta()
    assert keys(delta.changes) == {("pod", "c", "default", "w", "False")}
    stream.call.cancel()


async def test_exclude_applies_after_the_include_filter(start_server: StartServer, connect: Connect) -> None:
    index = filled(("a", "b", "c"))
    server = await start_server(index)
    request = pb.WatchRequest(clusters=["a", "b"], exclude_clusters=["b"])
    stream = Stream(connect(server).Watch(request))
    assert clusters_in(await stream.initial()) == {"a"}
    index.upsert(pod("x", "10.1.0.50", cluster="b"))
    index.upsert(pod("y", "10.2.0.50", cluster="c"))
    index.upsert(pod("z", "10.0.0.50", cluster="a"))
    delta = await stream.delta()
    assert keys(delta.changes) == {("pod", "a", "default", "z", "False")}
    stream.call.cancel()


async def test_progress_carries_the_stream_epoch(start_server: StartServer, connect: Connect) -> None:
    index = filled()
    server = await start_server(index, progress_interval=0.05)
    stub = connect(server)
    excluded = Stream(stub.Watch(pb.WatchRequest(exclude_clusters=["a"])))
    plain = Stream(stub.Watch(pb.WatchRequest()))
    for stream, epoch in (
        (excluded, WatchFilter(exclude=frozenset({"a"})).stream_epoch(index.epoch)),
        (plain, index.epoch),
    ):
        await stream.initial()
        progress = (await stream.until(lambda m: m.kind == WR.PROGRESS))[-1]
        assert progress.epoch == epoch and progress.revision == index.revision
        stream.call.cancel()


async def test_watchers_with_the_same_filters_share_delta_encodings(
    start_server: StartServer, connect: Connect
) -> None:
    index = filled(("a", "b", "c"))
    server = await start_server(index)
    stub = connect(server)
    requests = [
        pb.WatchRequest(exclude_clusters=["b"]),
        pb.WatchRequest(exclude_clusters=["b"], watcher_name="second"),
        pb.WatchRequest(clusters=["a", "c"], exclude_clusters=["c"]),
        pb.WatchRequest(clusters=["a", "c"], exclude_clusters=["c"], watcher_name="second"),
    ]
    streams = [Stream(stub.Watch(r)) for r in requests]
    for s in streams:
        await s.initial()
    before = metric("kube_ip_tracker_server_delta_encodings_total")
    index.upsert(pod("y", "10.0.0.50", cluster="a"))
    deltas = [await s.delta() for s in streams]
    assert all(keys(d.changes) == {("pod", "a", "default", "y", "False")} for d in deltas)
    assert metric("kube_ip_tracker_server_delta_encodings_total") - before == 2  # one per distinct filter
    assert deltas[0].epoch == deltas[1].epoch != deltas[2].epoch == deltas[3].epoch
    for s in streams:
        s.call.cancel()


async def test_resume_with_the_same_filters_sends_only_missed_admitted_changes(
    start_server: StartServer, connect: Connect
) -> None:
    index = filled()
    server = await start_server(index)
    stub = connect(server)
    stream = Stream(stub.Watch(pb.WatchRequest(exclude_clusters=["b"])))
    end = (await stream.initial())[-1]
    stream.call.cancel()
    index.upsert(pod("x", "10.1.0.50", cluster="b"))
    index.upsert(pod("y", "10.0.0.50", cluster="a"))
    index.flush()
    resumed = Stream(stub.Watch(pb.WatchRequest(epoch=end.epoch, revision=end.revision, exclude_clusters=["b"])))
    first = await resumed.next()
    assert first.kind == WR.END_OF_SNAPSHOT and first.revision == end.revision and first.epoch == end.epoch
    delta = await resumed.delta()
    assert keys(delta.changes) == {("pod", "a", "default", "y", "False")} and delta.revision == index.revision
    resumed.call.cancel()


@pytest.mark.parametrize(
    ("before", "after"),
    [
        ((), ("b",)),  # an unfiltered resume point used with an exclusion
        (("b",), ()),  # the exclusion dropped: b must arrive
        (("b",), ("a",)),
        (("b",), ("b", "a")),
    ],
)
async def test_resume_with_other_filters_gets_a_reset_snapshot_of_the_new_filters(
    before: tuple[str, ...], after: tuple[str, ...], start_server: StartServer, connect: Connect
) -> None:
    index = filled()
    server = await start_server(index)
    stub = connect(server)
    stream = Stream(stub.Watch(pb.WatchRequest(exclude_clusters=before)))
    end = (await stream.initial())[-1]
    stream.call.cancel()
    index.upsert(pod("y", "10.0.0.50", cluster="a"))
    index.flush()
    resumed = Stream(stub.Watch(pb.WatchRequest(epoch=end.epoch, revision=end.revision, exclude_clusters=after)))
    initial = await resumed.initial()
    assert initial[0].kind == WR.SNAPSHOT and initial[0].reset
    assert clusters_in(initial) == {"a", "b"} - set(after)
    assert initial[-1].epoch == WatchFilter(exclude=frozenset(after)).stream_epoch(index.epoch) != end.epoch
    resumed.call.cancel()


@pytest.mark.parametrize(
    ("names", "message"),
    [
        (["a", ""], "exclude_clusters[1] '' is empty"),
        (["x" * 300], "has 300 characters, at most 253"),
        (["a b"], "exclude_clusters[0] 'a b' contains whitespace"),
        (["bad\x00id"], "contains whitespace or control characters"),
        (["c"] * (MAX_EXCLUDE_CLUSTERS + 1), f"{MAX_EXCLUDE_CLUSTERS + 1} entries, at most {MAX_EXCLUDE_CLUSTERS}"),
    ],
)
async def test_bad_exclude_clusters_are_invalid_argument(
    names: list[str], message: str, start_server: StartServer, connect: Connect
) -> None:
    server = await start_server(filled())
    call = connect(server).Watch(pb.WatchRequest(exclude_clusters=names))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call.read()
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in (err.value.details() or "")
    assert server.watchers == 0


@pytest.mark.parametrize("seed", [4, 9])
async def test_watchers_changing_their_exclusions_converge(
    seed: int, start_server: StartServer, connect: Connect
) -> None:
    """Random index changes while watchers reconnect with a new exclusion, resuming from their old point."""
    rng = random.Random(seed)
    index = Index(log_size=200)
    for _ in range(30):
        random_op(index, rng)
    server = await start_server(index, progress_interval=0.02)
    stub = connect(server)
    choices = [frozenset(), frozenset({"a"}), frozenset({"b", "c"}), frozenset({"c"})]
    applier = Applier(checked=False)
    flt = WatchFilter(exclude=rng.choice(choices))
    streams: list[Stream] = []
    task: asyncio.Task[None] | None = None

    async def follow(stream: Stream) -> None:
        while True:
            applier.apply(await stream.next(within=30))

    for step in range(12):
        if task is not None:
            task.cancel()
            streams[-1].call.cancel()
            await asyncio.gather(task, return_exceptions=True)
            flt = WatchFilter(exclude=rng.choice(choices))
        request = pb.WatchRequest(epoch=applier.epoch, revision=applier.revision, exclude_clusters=sorted(flt.exclude))
        streams.append(Stream(stub.Watch(request)))
        task = asyncio.create_task(follow(streams[-1]))
        for _ in range(rng.randrange(3, 10)):
            random_op(index, rng)
            await asyncio.sleep(rng.choice([0, 0.001]))
        final = index.revision
        async with asyncio.timeout(10):
            while applier.revision < final or not applier.live:
                assert not task.done(), task.exception()
                await asyncio.sleep(0.01)
        assert applier.state == expected(index, flt), (step, flt)
    assert task is not None
    task.cancel()
    streams[-1].call.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_exclusion_and_tracker_id_together(start_server: StartServer, connect: Connect) -> None:
    index = filled(("a", "b", "c"))
    index.set_cluster_status(ClusterStatusRecord("c", connected=True, synced=True, via=("spoke-1",)))
    server = await start_server(index)
    stream = Stream(connect(server).Watch(pb.WatchRequest(tracker_id="spoke-1", exclude_clusters=["a"])))
    assert clusters_in(await stream.initial()) == {"b"}
    index.set_cluster_status(ClusterStatusRecord("c", connected=True, synced=True, via=("hub",)))
    delta = await stream.delta()
    assert {k[1] for k in keys(delta.changes)} == {"c"}  # the path no longer holds spoke-1: c arrives whole
    stream.call.cancel()
