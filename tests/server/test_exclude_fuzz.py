"""Fuzzed exclude_clusters (with include filters and resume points): a proper answer, never an excluded cluster."""

from __future__ import annotations

import grpc
from hypothesis import given
from hypothesis import strategies as st

from kube_ip_tracker.api.v1 import tracker_pb2 as pb
from kube_ip_tracker.server.encode import MAX_CLUSTER_ID_LENGTH, WatchFilter

from .helpers import WR
from .test_fuzz import FUZZ, ServerThread, names, read_some, srv  # noqa: F401  (srv: the module's server fixture)


def valid(name: str) -> bool:
    return 0 < len(name) <= MAX_CLUSTER_ID_LENGTH and not any(c.isspace() or not c.isprintable() for c in name)


@FUZZ
@given(
    exclude=st.lists(names, max_size=5),
    clusters=st.lists(st.sampled_from(["", "a", "b", "c"]), max_size=3),
    resume=st.sampled_from(["none", "same filters", "unfiltered", "garbage"]),
    read=st.integers(1, 8),
)
def test_exclude_requests_get_a_proper_answer(  # type: ignore[no-untyped-def]
    srv: ServerThread,  # noqa: F811
    exclude,
    clusters,
    resume,
    read,
) -> None:
    index_epoch, revision, log_first = srv.revisions()
    stream_epoch = WatchFilter(frozenset(c for c in clusters if c), exclude=frozenset(exclude)).stream_epoch(
        index_epoch
    )
    epoch = {"none": "", "same filters": stream_epoch, "unfiltered": index_epoch, "garbage": "x" + index_epoch}[resume]
    request = pb.WatchRequest(
        epoch=epoch, revision=revision if epoch else 0, clusters=clusters, exclude_clusters=exclude
    )
    got, code = read_some(srv.stub.Watch(request, timeout=20), read)
    if not all(valid(n) for n in exclude):
        assert code == grpc.StatusCode.INVALID_ARGUMENT and not got
        srv.wait_no_watchers()
        return
    assert code == grpc.StatusCode.OK, code
    first = got[0]
    if epoch == stream_epoch and revision + 1 >= log_first:
        assert first.kind == WR.END_OF_SNAPSHOT and first.revision == revision
    else:
        assert first.kind == WR.SNAPSHOT and first.reset == bool(epoch)
    wanted = {c for c in clusters if c}
    for msg in got:
        assert msg.epoch == stream_epoch
        for change in msg.changes:
            cluster = getattr(change, change.WhichOneof("object")).cluster
            assert cluster not in exclude and (not wanted or cluster in wanted)
    srv.wait_no_watchers()
