"""A watcher that falls behind gets the log's consecutive DELTAs merged into one message covering the whole range."""

from __future__ import annotations

from kube_ip_tracker import wire
from kube_ip_tracker.api.v1 import tracker_pb2 as pb
from kube_ip_tracker.model import PodRecord
from kube_ip_tracker.server.encode import (
    MAX_BYTES_PER_MESSAGE,
    MAX_CHANGES_PER_MESSAGE,
    DeltaMessage,
    chunk_deltas,
    fits_after,
    merge_deltas,
)

WR = pb.WatchResponse


def _delta(first: int, last: int) -> DeltaMessage:
    items = [
        (rev, wire.frame_change(wire.encode_change(PodRecord("c", "ns", f"p{rev}", {}, (), "n", (f"10.0.0.{rev}",)))))
        for rev in range(first, last + 1)
    ]
    (message,) = chunk_deltas("epoch", items, last)
    return message


def test_merged_deltas_parse_as_one_delta_from_the_first_to_the_last_revision() -> None:
    parts = [_delta(5, 7), _delta(8, 8), _delta(9, 12)]
    merged = WR.FromString(merge_deltas(parts))
    assert merged.kind == WR.DELTA and merged.epoch == "epoch"
    assert (merged.first_revision, merged.revision) == (5, 12)
    assert [c.pod.name for c in merged.changes] == [f"p{r}" for r in range(5, 13)]
    assert merge_deltas(parts[:1]) == parts[0].data
    # The message records its own range: nothing is read back from the bytes.
    assert (parts[2].first_revision, parts[2].revision) == (9, 12)


def test_merge_stops_at_the_message_limits() -> None:
    first = _delta(1, 1)
    assert fits_after(first, len(first.data), _delta(2, 3))
    # A DELTA that would make the merged range longer than one message may hold does not join.
    assert not fits_after(first, len(first.data), _delta(2, MAX_CHANGES_PER_MESSAGE + 1))
    assert not fits_after(first, MAX_BYTES_PER_MESSAGE, _delta(2, 2))


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
