"""A watcher that falls behind gets its queued DELTAs merged into one message covering the whole range."""

from __future__ import annotations

from collections import deque

from kube_ip_tracker import wire
from kube_ip_tracker.api.v1 import tracker_pb2 as pb
from kube_ip_tracker.model import PodRecord
from kube_ip_tracker.server.encode import MAX_CHANGES_PER_MESSAGE, WatchFilter, chunk_deltas, merge_queued_deltas
from kube_ip_tracker.server.fanout import Watcher

WR = pb.WatchResponse


def _delta(first: int, last: int) -> bytes:
    items = [
        (rev, wire.frame_change(wire.encode_change(PodRecord("c", "ns", f"p{rev}", {}, (), "n", (f"10.0.0.{rev}",)))))
        for rev in range(first, last + 1)
    ]
    (message,) = chunk_deltas("epoch", items, last)
    return message


def test_merged_deltas_parse_as_one_delta_from_the_first_to_the_last_revision() -> None:
    queue = deque([(_delta(8, 8), "DELTA"), (_delta(9, 12), "DELTA")])
    data, taken = merge_queued_deltas(_delta(5, 7), queue)
    merged = WR.FromString(data)
    assert merged.kind == WR.DELTA and merged.epoch == "epoch"
    assert (merged.first_revision, merged.revision) == (5, 12)
    assert [c.pod.name for c in merged.changes] == [f"p{r}" for r in range(5, 13)]
    assert not queue and taken == len(_delta(8, 8)) + len(_delta(9, 12))
    # Reading past the changes gives the merged message's own fields (the header alone is the first part's).
    assert wire.response_header(data, whole=True) == (WR.DELTA, 12, 5)
    assert wire.response_header(data) == (WR.DELTA, 7, 5)


def test_merge_stops_at_other_kinds_and_at_the_message_limits() -> None:
    progress = wire.encode_response(WR.PROGRESS, "epoch", 3)
    queue = deque([(progress, "PROGRESS"), (_delta(4, 4), "DELTA")])
    data, taken = merge_queued_deltas(_delta(3, 3), queue)
    assert data == _delta(3, 3) and taken == 0 and len(queue) == 2
    # A DELTA that would make the merged range longer than one message may hold stays queued.
    big = _delta(2, MAX_CHANGES_PER_MESSAGE + 1)
    queue = deque([(big, "DELTA")])
    data, taken = merge_queued_deltas(_delta(1, 1), queue)
    assert data == _delta(1, 1) and taken == 0 and len(queue) == 1


async def test_watcher_merges_back_to_back_deltas_but_not_across_other_kinds() -> None:
    w = Watcher("w", "peer", WatchFilter(), max_messages=100, max_bytes=1 << 20)
    for message, kind in [
        (_delta(1, 1), "DELTA"),
        (_delta(2, 3), "DELTA"),
        (wire.encode_response(WR.PROGRESS, "epoch", 3), "PROGRESS"),
        (_delta(4, 4), "DELTA"),
    ]:
        assert w.offer(message, kind)
    first = await w.next()
    assert first is not None and first[1] == "DELTA"
    merged = WR.FromString(first[0])
    assert (merged.first_revision, merged.revision, len(merged.changes)) == (1, 3, 3)
    second, third = await w.next(), await w.next()
    assert second is not None and second[1] == "PROGRESS"
    assert third is not None and wire.response_header(third[0]) == (WR.DELTA, 4, 4)
    assert w.queued_bytes == 0


async def test_the_agent_client_applies_merged_deltas_from_a_real_server() -> None:
    """Batches committed faster than a watcher is written to arrive merged; the real client applies them all."""
    import asyncio

    from prometheus_client import REGISTRY

    from kube_ip_tracker.agent.store import AgentStore
    from kube_ip_tracker.client.client import ClientOptions, TrackerClient
    from kube_ip_tracker.index import Index
    from kube_ip_tracker.model import ClusterStatusRecord
    from kube_ip_tracker.server import TrackerServer

    def delta_messages() -> float:
        return REGISTRY.get_sample_value("kube_ip_tracker_server_messages_sent_total", {"kind": "DELTA"}) or 0.0

    index = Index()
    index.set_cluster_status(ClusterStatusRecord("c", connected=True, synced=True))
    server = TrackerServer(index, "127.0.0.1:0")
    await server.start()
    mirror = AgentStore()
    changed = asyncio.Event()
    mirror.subscribe(lambda _events: changed.set())
    client = TrackerClient(f"127.0.0.1:{server.bound_port}", mirror, ClientOptions(backoff_base=0.05))
    client.start()
    try:
        async with asyncio.timeout(10):
            await client.wait_ready()
        before = delta_messages()
        for i in range(200):  # 200 batches in one event-loop turn: the pump cannot write between them
            index.upsert(PodRecord("c", "ns", f"p{i}", {"i": str(i)}, (), "n", (f"10.0.{i >> 8}.{i & 255}",)))
            index.flush()
        async with asyncio.timeout(10):
            while mirror.counts().get("pods", 0) < 200:
                changed.clear()
                await changed.wait()
        assert sorted(p.name for p in mirror.pods()) == sorted(f"p{i}" for i in range(200))
        assert mirror.pod_by_ip("10.0.0.199") is not None
        assert delta_messages() - before < 200  # merged: fewer messages than batches
        assert client.snapshots_applied == 1  # and applied as DELTAs, no resync
    finally:
        await client.stop()
        await server.stop(0)
