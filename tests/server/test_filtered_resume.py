"""A filtered watcher resumes from the change log even when cluster paths changed: what its filter
admitted at its revision is told from the log, so it gets exactly what it would have received live."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY

from kube_ip_tracker.api.v1 import tracker_pb2 as pb
from kube_ip_tracker.index import Index
from kube_ip_tracker.model import ClusterStatusRecord, NamespaceRecord
from kube_ip_tracker.server.encode import WatchFilter

from .conftest import Connect, StartServer
from .helpers import WR, Stream, filled, pod
from .test_consistency import Applier, expected


def resumes() -> float:
    return REGISTRY.get_sample_value("kube_ip_tracker_server_snapshots_sent_total", {"type": "resume"}) or 0.0


def change_paths(index: Index) -> None:
    """b moves onto spoke-1's path (hidden from it), a new cluster c appears, a gets a pod, then a is
    on the path for a moment and off it again (hidden, then whole again)."""
    index.set_cluster_status(ClusterStatusRecord("b", connected=True, synced=True, via=("hub", "spoke-1")))
    index.upsert(pod("late", "10.1.0.9", cluster="b"))
    index.set_cluster_status(ClusterStatusRecord("c", connected=True, synced=True, via=("hub",)))
    index.upsert(NamespaceRecord("c", "default", {"team": "c"}))
    index.upsert(pod("web", "10.2.0.1", cluster="c"))
    index.flush()
    index.upsert(pod("new", "10.0.0.9"))
    index.set_cluster_status(ClusterStatusRecord("a", connected=True, synced=True, via=("spoke-1",)))
    index.flush()
    index.upsert(pod("while-hidden", "10.0.0.10"))
    index.set_cluster_status(ClusterStatusRecord("a", connected=True, synced=True, via=()))
    index.flush()


@pytest.mark.parametrize(
    "flt",
    [WatchFilter(tracker_id="spoke-1"), WatchFilter(frozenset({"a", "b"}), "spoke-1"), WatchFilter(frozenset({"c"}))],
    ids=["tracker-id", "clusters+tracker-id", "clusters"],
)
async def test_filtered_resume_after_path_changes_is_exact(
    flt: WatchFilter, start_server: StartServer, connect: Connect
) -> None:
    index = filled()
    server = await start_server(index)
    stub = connect(server)

    def request(epoch: str = "", revision: int = 0) -> pb.WatchRequest:
        return pb.WatchRequest(clusters=sorted(flt.clusters), tracker_id=flt.tracker_id, epoch=epoch, revision=revision)

    applier = Applier(checked=False)
    first = Stream(stub.Watch(request()))
    for msg in await first.initial():
        applier.apply(msg)
    first.call.cancel()
    change_paths(index)
    before = resumes()
    resumed = Stream(stub.Watch(request(applier.epoch, applier.revision)))
    start = await resumed.next()
    assert start.kind == WR.END_OF_SNAPSHOT and start.revision == applier.revision  # resumed, not reset
    assert resumes() == before + 1
    applier.apply(start)
    while applier.revision < index.revision:
        applier.apply(await resumed.next())
    assert applier.state == expected(index, flt)
    # Live changes keep coming on the same stream.
    index.upsert(pod("after", "10.0.0.11"))
    index.upsert(pod("after", "10.2.0.11", cluster="c"))
    index.flush()
    while applier.revision < index.revision:
        applier.apply(await resumed.next())
    assert applier.state == expected(index, flt)
    resumed.call.cancel()
