"""Randomized: watchers with different filters end up holding exactly what the index holds for them."""

from __future__ import annotations

import asyncio
import random

import pytest

from kube_ip_tracker.api.v1 import tracker_pb2 as pb
from kube_ip_tracker.index import Index
from kube_ip_tracker.model import ClusterStatusRecord, Kind, NamespaceRecord, NodeRecord
from kube_ip_tracker.server.encode import WatchFilter

from .conftest import Connect, StartServer
from .helpers import WR, Stream, pod

CLUSTERS = ("a", "b", "c")


class Applier:
    """A minimal watcher-side state: applies a stream's messages and checks revision continuity."""

    def __init__(self, checked: bool) -> None:
        self.checked = checked
        self.state: dict[tuple[str, ...], bytes] = {}
        self.revision = 0
        self.epoch = ""
        self.live = False

    def apply(self, msg: pb.WatchResponse) -> None:
        if msg.kind == WR.SNAPSHOT:
            if self.live or not self.epoch:  # the first SNAPSHOT of a stream replaces the whole state
                self.state.clear()
            self.live = False
            self.epoch = msg.epoch
            self._changes(msg.changes)
        elif msg.kind == WR.END_OF_SNAPSHOT:
            assert msg.revision >= self.revision or not self.live
            self.revision = msg.revision
            self.live = True
        elif msg.kind == WR.DELTA:
            assert self.live
            if self.checked:
                assert msg.first_revision == self.revision + 1, (msg.first_revision, self.revision)
            assert msg.first_revision > self.revision and msg.revision >= msg.first_revision
            self._changes(msg.changes)
            self.revision = msg.revision
        elif msg.kind == WR.PROGRESS:
            assert msg.revision >= self.revision
            if self.checked:
                assert msg.revision == self.revision
            self.revision = msg.revision

    def _changes(self, changes) -> None:  # type: ignore[no-untyped-def]
        for c in changes:
            which = c.WhichOneof("object")
            obj = getattr(c, which)
            if which == "cluster" and c.deleted:
                self.state = {k: v for k, v in self.state.items() if k[1] != obj.cluster}
                continue
            key = (which, obj.cluster, getattr(obj, "namespace", ""), "" if which == "cluster" else obj.name)
            if c.deleted:
                self.state.pop(key, None)
            else:
                self.state[key] = obj.SerializeToString(deterministic=True)


def expected(index: Index, flt: WatchFilter) -> dict[tuple[str, ...], bytes]:
    from kube_ip_tracker import wire

    out = {}
    for content in index.snapshot(flt.admits).clusters:
        out[("cluster", content.status.cluster, "", "")] = wire.cluster_status_to_proto(
            content.status
        ).SerializeToString(deterministic=True)
        for ns in content.namespaces:
            out[("namespace", ns.cluster, "", ns.name)] = wire.namespace_to_proto(ns).SerializeToString(
                deterministic=True
            )
        for node in content.nodes:
            out[("node", node.cluster, "", node.name)] = wire.node_to_proto(node).SerializeToString(deterministic=True)
        for p in content.pods:
            out[("pod", p.cluster, p.namespace, p.name)] = wire.pod_to_proto(p).SerializeToString(deterministic=True)
    return out


def random_op(index: Index, rng: random.Random) -> None:
    c = rng.choice(CLUSTERS)
    r = rng.random()
    if r < 0.45:
        index.upsert(
            pod(
                f"p{rng.randrange(12)}",
                f"10.0.0.{rng.randrange(8)}",
                cluster=c,
                ts=rng.randrange(3),
                labels={"v": str(rng.randrange(3))},
            )
        )
    elif r < 0.6:
        index.delete(Kind.POD, c, "default", f"p{rng.randrange(12)}")
    elif r < 0.68:
        index.upsert(NamespaceRecord(c, "default", {"v": str(rng.randrange(3))}))
    elif r < 0.73:
        index.upsert(NodeRecord(c, f"n{rng.randrange(3)}", {}, (f"192.0.2.{rng.randrange(3)}",)))
    elif r < 0.76:
        index.delete(Kind.NODE, c, "", f"n{rng.randrange(3)}")
    elif r < 0.88:
        via = rng.choice([(), ("hub",), ("hub", "spoke")])
        index.set_cluster_status(ClusterStatusRecord(c, connected=True, synced=rng.random() < 0.7, via=via))
    elif r < 0.93:
        index.remove_cluster(c)
    else:
        keep = [pod(f"p{i}", f"10.0.1.{i}", cluster=c) for i in rng.sample(range(12), rng.randrange(5))]
        index.replace(c, Kind.POD, keep)


@pytest.mark.parametrize("seed", [1, 2, 3, 6, 12])
async def test_filtered_and_resumed_watchers_converge(seed: int, start_server: StartServer, connect: Connect) -> None:
    rng = random.Random(seed)
    index = Index(log_size=50)
    for _ in range(30):
        random_op(index, rng)
    server = await start_server(index, progress_interval=0.02, snapshot_cache_ttl=rng.choice([0, 10]))
    stub = connect(server)
    filters = [
        WatchFilter(),
        WatchFilter(frozenset({"a", "c"})),
        WatchFilter(tracker_id="spoke"),
        WatchFilter(frozenset({"b"}), "spoke"),
    ]
    watchers: list[tuple[WatchFilter, Applier, Stream, asyncio.Task[None]]] = []

    async def follow(stream: Stream, applier: Applier) -> None:
        while True:
            applier.apply(await stream.next(within=30))

    def start(flt: WatchFilter, epoch: str = "", revision: int = 0, applier: Applier | None = None) -> None:
        applier = applier or Applier(checked=flt.everything)
        req = pb.WatchRequest(clusters=sorted(flt.clusters), tracker_id=flt.tracker_id, epoch=epoch, revision=revision)
        stream = Stream(stub.Watch(req))
        watchers.append((flt, applier, stream, asyncio.create_task(follow(stream, applier))))

    for flt in filters:
        start(flt)
    for step in range(40):
        for _ in range(rng.randrange(1, 6)):
            random_op(index, rng)
        if step % 7 == 3:  # a new watcher joins mid-way (shared snapshot + catch-up, or a fresh one)
            start(rng.choice(filters))
        if step % 10 == 5:  # the unfiltered watcher reconnects and resumes (or gets a reset if the log moved on)
            flt, applier, stream, task = watchers.pop(0)
            task.cancel()
            stream.call.cancel()
            resumed = Applier(applier.checked)  # a copy: the cancelled reader may still apply one message
            resumed.state, resumed.revision, resumed.epoch, resumed.live = (
                dict(applier.state),
                applier.revision,
                applier.epoch,
                applier.live,
            )
            start(flt, applier.epoch, applier.revision, resumed)
        await asyncio.sleep(rng.choice([0, 0, 0.001, 0.01]))
    final = index.revision
    async with asyncio.timeout(10):
        while any(a.revision < final for _, a, _, _ in watchers):
            for flt, _, _, task in watchers:
                if task.done():
                    raise AssertionError(f"watcher {flt} failed: {task.exception()!r}")
            await asyncio.sleep(0.01)
    for flt, applier, stream, task in watchers:
        assert not task.done() or task.exception() is None, task.exception()
        assert applier.state == expected(index, flt), flt
        task.cancel()
        stream.call.cancel()
