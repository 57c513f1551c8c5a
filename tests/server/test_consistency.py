"""Randomized: watchers with different filters end up holding exactly what the index holds for them."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence

import pytest

from kube_ip_tracker import wire
from kube_ip_tracker.api.v1 import tracker_pb2 as pb
from kube_ip_tracker.client.sink import Delete, RecordChange, Upsert
from kube_ip_tracker.client.stream import WatchSession
from kube_ip_tracker.index import Index
from kube_ip_tracker.model import ClusterStatusRecord, Kind, NamespaceRecord, NodeRecord, PodRecord, Record
from kube_ip_tracker.server.encode import WatchFilter

from .conftest import Connect, StartServer
from .helpers import WR, Stream, pod

CLUSTERS = ("a", "b", "c")


Key = tuple[str, str, str, str]


def entry(record: Record | ClusterStatusRecord) -> tuple[Key, bytes]:
    """A watcher-side state entry: (kind, cluster, namespace, name) and the object's wire bytes."""
    if isinstance(record, ClusterStatusRecord):
        return ("cluster", record.cluster, "", ""), wire.cluster_status_to_proto(record).SerializeToString(
            deterministic=True
        )
    if isinstance(record, PodRecord):
        return ("pod", record.cluster, record.namespace, record.name), wire.pod_to_proto(record).SerializeToString(
            deterministic=True
        )
    if isinstance(record, NamespaceRecord):
        return ("namespace", record.cluster, "", record.name), wire.namespace_to_proto(record).SerializeToString(
            deterministic=True
        )
    return ("node", record.cluster, "", record.name), wire.node_to_proto(record).SerializeToString(deterministic=True)


def _apply(state: dict[Key, bytes], changes: Sequence[RecordChange]) -> None:
    for change in changes:
        if isinstance(change, Upsert):
            key, data = entry(change.record)
            state[key] = data
        elif isinstance(change, Delete):
            state.pop((change.kind.value, change.cluster, change.namespace, change.name), None)
        elif change.deleted:  # a deleted cluster takes everything of it
            for key in [k for k in state if k[1] == change.status.cluster]:
                del state[key]
        else:
            key, data = entry(change.status)
            state[key] = data


class _Staged:
    """A snapshot being received: invisible until END_OF_SNAPSHOT, then it replaces the whole state."""

    def __init__(self, applier: Applier) -> None:
        self.applier = applier
        self.state: dict[Key, bytes] = {}

    def add(self, changes: Sequence[RecordChange]) -> None:
        _apply(self.state, changes)

    def cluster_synced(self, cluster: str) -> None:
        pass

    def commit(self, revision: int) -> None:
        self.applier.state = self.state


class Applier:
    """A watcher's state, fed through the shared client's protocol state machine (:class:`WatchSession`:
    message order, epochs, revision continuity when ``checked``), so it follows the protocol as agents do.

    ``state`` maps each object's key to its wire bytes. A snapshot is staged and replaces the whole state
    at END_OF_SNAPSHOT; a stream that resumes and cannot must get a snapshot whose first message has
    ``reset``. ``epoch``/``revision`` are the resume point: the last state that was live. Once live, a
    SNAPSHOT or END_OF_SNAPSHOT can only be the start of a next stream fed to the same applier (a live
    stream never sends them again): it starts a new session resuming from that point.
    """

    def __init__(self, checked: bool) -> None:
        self.checked = checked
        self.state: dict[Key, bytes] = {}
        self.epoch = ""
        self.revision = 0
        self._session = self._new_session()

    @property
    def live(self) -> bool:
        return self._session.live

    def apply(self, msg: pb.WatchResponse) -> None:
        if self._session.live and msg.kind in (WR.SNAPSHOT, WR.END_OF_SNAPSHOT):
            self._session = self._new_session()
        self._session.handle(msg)
        if self._session.live:
            self.epoch, self.revision = self._session.epoch, self._session.revision

    def resumed(self) -> Applier:
        """A copy for a new stream resuming from this one's point (the old reader may still apply a message)."""
        copy = Applier(self.checked)
        copy.state, copy.epoch, copy.revision = dict(self.state), self.epoch, self.revision
        copy._session = copy._new_session()
        return copy

    def _new_session(self) -> WatchSession:
        return WatchSession(
            self,
            resume_epoch=self.epoch,
            resume_revision=self.revision,
            checked_continuity=self.checked,
        )

    # -- ApplySink ---------------------------------------------------------------------------------

    def begin_snapshot(self, epoch: str, reset: bool) -> _Staged:
        assert reset or not self.epoch, f"a resume from epoch {self.epoch} got a snapshot without reset"
        return _Staged(self)

    def apply_delta(self, changes: Sequence[RecordChange], revision: int) -> None:
        _apply(self.state, changes)


def expected(index: Index, flt: WatchFilter) -> dict[Key, bytes]:
    out = {}
    for content in index.snapshot(flt.admits).clusters:
        for record in (content.status, *content.namespaces, *content.nodes, *content.pods):
            key, data = entry(record)
            out[key] = data
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
            resumed = applier.resumed()  # from its last live state (none yet: a fresh snapshot)
            start(flt, resumed.epoch, resumed.revision, resumed)
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
