"""Building indexes and reading Watch streams in tests."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import grpc.aio

from kube_ip_tracker.api.v1 import tracker_pb2 as pb
from kube_ip_tracker.index import Index
from kube_ip_tracker.model import ClusterStatusRecord, ContainerPort, NamespaceRecord, NodeRecord, PodRecord

WR = pb.WatchResponse


def pod(name: str, ip: str, *, cluster: str = "a", ts: int = 100, labels: dict[str, str] | None = None) -> PodRecord:
    return PodRecord(
        cluster=cluster,
        namespace="default",
        name=name,
        labels=labels if labels is not None else {"app": name},
        ports=(ContainerPort("http", 80, "TCP"),),
        node="node-1",
        ips=(ip,),
        creation_timestamp=ts,
        uid=f"uid-{cluster}-{name}",
    )


def filled(clusters: tuple[str, ...] = ("a", "b"), synced: tuple[str, ...] = ("a", "b")) -> Index:
    """Per cluster: a status, namespace "default", node "node-1", pods web and db."""
    index = Index()
    for i, c in enumerate(clusters):
        index.set_cluster_status(ClusterStatusRecord(c, connected=True, synced=c in synced))
        index.upsert(NamespaceRecord(c, "default", {"team": c}))
        index.upsert(NodeRecord(c, "node-1", {"zone": "z"}, (f"192.0.2.{i + 1}",)))
        index.upsert(pod("web", f"10.{i}.0.1", cluster=c))
        index.upsert(pod("db", f"10.{i}.0.2", cluster=c))
    index.flush()
    return index


class Stream:
    """Reads a Watch call, keeping every message."""

    def __init__(self, call) -> None:  # type: ignore[no-untyped-def]
        self.call = call
        self.messages: list[pb.WatchResponse] = []

    async def next(self, within: float = 5.0) -> pb.WatchResponse:
        msg = await asyncio.wait_for(self.call.read(), within)
        assert msg is not grpc.aio.EOF, "stream ended"
        self.messages.append(msg)
        return msg

    async def until(self, pred: Callable[[pb.WatchResponse], bool], within: float = 5.0) -> list[pb.WatchResponse]:
        """Read until a message matches ``pred``; returns the messages read (the match last)."""
        got = []
        async with asyncio.timeout(within):
            while True:
                msg = await self.next(within)
                got.append(msg)
                if pred(msg):
                    return got

    async def initial(self) -> list[pb.WatchResponse]:
        return await self.until(lambda m: m.kind == WR.END_OF_SNAPSHOT)

    async def delta(self, within: float = 5.0) -> pb.WatchResponse:
        """The next DELTA (PROGRESS messages are skipped)."""
        msgs = await self.until(lambda m: m.kind == WR.DELTA, within)
        return msgs[-1]


def keys(changes) -> set[tuple[str, ...]]:  # type: ignore[no-untyped-def]
    """(kind, cluster, [namespace,] name, deleted) of each change."""
    out = set()
    for c in changes:
        which = c.WhichOneof("object")
        obj = getattr(c, which)
        if which == "pod":
            out.add((which, obj.cluster, obj.namespace, obj.name, str(c.deleted)))
        elif which == "cluster":
            out.add((which, obj.cluster, str(c.deleted)))
        else:
            out.add((which, obj.cluster, obj.name, str(c.deleted)))
    return out
