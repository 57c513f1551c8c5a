"""Fuzzing the gRPC API of a real TrackerServer with hostile and malformed requests (hypothesis).

The server runs on its own event loop thread; requests go over real gRPC with the synchronous client.
Every request must get a proper status code (never UNKNOWN or INTERNAL), the server must keep
serving, and every stream a client abandoned must be closed (no leaked watchers).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import threading
import time
from collections.abc import Coroutine, Iterator
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from kube_ip_tracker.api.v1 import tracker_pb2 as pb
from kube_ip_tracker.api.v1 import tracker_pb2_grpc
from kube_ip_tracker.index import Index
from kube_ip_tracker.model import ClusterStatusRecord, NamespaceRecord
from kube_ip_tracker.server import TrackerServer
from kube_ip_tracker.server.encode import WatchFilter
from kube_ip_tracker.server.grpc_server import SERVICE_NAME

from .helpers import pod

WR = pb.WatchResponse
U64 = 2**64 - 1
PODS = 2_400  # several SNAPSHOT messages (500 objects each)
LOG_SIZE = 50
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
OK_CODES = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND}


class ServerThread:
    """A TrackerServer over a filled index, on an event loop in a background thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="fuzz-server", daemon=True)
        self.thread.start()
        self.index: Index = self.run(self._fill())
        self.server = TrackerServer(self.index, "127.0.0.1:0", max_watchers=20, snapshot_cache_ttl=0.5)
        self.run(self.server.start())
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.server.bound_port}")
        self.stub = tracker_pb2_grpc.TrackerStub(self.channel)

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float = 30.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    @staticmethod
    async def _fill() -> Index:
        index = Index(log_size=LOG_SIZE)
        for c in ("a", "b"):
            index.set_cluster_status(ClusterStatusRecord(c, connected=True, synced=True))
            index.upsert(NamespaceRecord(c, "default", {}))
            for i in range(PODS // 2):
                index.upsert(pod(f"p{i}", f"10.{ord(c)}.{i // 250}.{i % 250 + 1}", cluster=c))
        index.flush()
        for i in range(3 * LOG_SIZE):  # the change log no longer reaches the start
            index.upsert(pod("churn", f"10.200.0.{i % 250 + 1}", cluster="a", ts=i))
            index.flush()
        return index

    async def _churn(self, n: int) -> int:
        for i in range(n):
            self.index.upsert(pod("churn", f"10.201.0.{i % 250 + 1}", cluster="b", ts=i))
            self.index.flush()
        return self.index.revision

    def churn(self, n: int = 3) -> int:
        return self.run(self._churn(n))

    def revisions(self) -> tuple[str, int, int]:
        async def read() -> tuple[str, int, int]:
            return self.index.epoch, self.index.revision, self.index.log_first_revision

        return self.run(read())

    def watchers(self) -> int:
        return self.server.watchers

    def wait_no_watchers(self, within: float = 10.0) -> None:
        deadline = time.monotonic() + within
        while self.server.watchers or self._fanout_size():
            assert time.monotonic() < deadline, f"{self.server.watchers} watch streams still open after {within}s"
            time.sleep(0.02)

    def _fanout_size(self) -> int:
        fanout = self.server._fanout
        return len(fanout) if fanout is not None else 0

    def close(self) -> None:
        self.channel.close()
        self.run(self.server.stop(0))
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture(scope="module")
def srv() -> Iterator[ServerThread]:
    gauge_before = REGISTRY.get_sample_value("kube_ip_tracker_server_watchers") or 0.0
    server = ServerThread()
    yield server
    server.wait_no_watchers()
    assert (REGISTRY.get_sample_value("kube_ip_tracker_server_watchers") or 0.0) == gauge_before
    server.close()


def serving(srv: ServerThread) -> None:
    resp = srv.stub.ListClusters(pb.ListClustersRequest(), timeout=10)
    assert {c.status.cluster for c in resp.clusters} == {"a", "b"}


def read_some(call: Any, n: int) -> tuple[list[pb.WatchResponse], grpc.StatusCode]:
    """Read up to ``n`` messages (at most to END_OF_SNAPSHOT), cancel; the messages and the status (OK if open)."""
    got: list[pb.WatchResponse] = []
    try:
        for msg in call:
            got.append(msg)
            if len(got) >= n or msg.kind == WR.END_OF_SNAPSHOT:
                break
    except grpc.RpcError as e:
        return got, e.code()
    call.cancel()
    return got, grpc.StatusCode.OK


def call_raw(srv: ServerThread, method: str, data: bytes) -> grpc.StatusCode:
    """Send ``data`` as the request bytes of ``method`` (a Watch is read to its first messages)."""
    path = f"/{SERVICE_NAME}/{method}"
    if method == "Watch":
        call = srv.channel.unary_stream(path, response_deserializer=pb.WatchResponse.FromString)(data, timeout=20)
        return read_some(call, 3)[1]
    try:
        srv.channel.unary_unary(path)(data, timeout=10)
    except grpc.RpcError as e:
        return e.code()
    return grpc.StatusCode.OK


names = st.one_of(st.sampled_from(["", "a", "b", "nope", "a" * 300]), st.text(max_size=40))


@FUZZ
@given(
    epoch=st.one_of(st.just(""), st.just("CURRENT"), st.text(max_size=40)),
    revision=st.one_of(st.sampled_from([0, 1, LOG_SIZE, 2**31, 2**63, U64]), st.integers(0, U64), st.just(-1)),
    clusters=st.lists(names, max_size=6),
    tracker_id=st.one_of(st.just(""), names),
    watcher_name=st.text(max_size=300),
    read=st.integers(0, 12),
)
def test_watch_requests_get_a_proper_answer(  # type: ignore[no-untyped-def]
    srv: ServerThread, epoch, revision, clusters, tracker_id, watcher_name, read
) -> None:
    index_epoch, rev_before, log_first = srv.revisions()
    current_epoch = WatchFilter(frozenset(c for c in clusters if c)).stream_epoch(index_epoch)  # the stream's
    if epoch == "CURRENT":
        epoch = current_epoch
    if revision == -1:  # a resume point just behind, at or ahead of the tracker's revision
        revision = rev_before
    request = pb.WatchRequest(
        epoch=epoch, revision=revision, clusters=clusters, tracker_id=tracker_id, watcher_name=watcher_name
    )
    got, code = read_some(srv.stub.Watch(request, timeout=20), max(read, 1))
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        assert epoch == current_epoch and revision > rev_before
    else:
        assert code == grpc.StatusCode.OK, code
        assert not (epoch == current_epoch and revision > srv.revisions()[1])
        first = got[0]
        resumable = epoch == current_epoch and revision + 1 >= log_first  # no status changes in the log
        if resumable:
            assert first.kind == WR.END_OF_SNAPSHOT and first.revision == revision
        elif epoch != current_epoch:
            assert first.kind == WR.SNAPSHOT and first.reset == bool(epoch)
        wanted = {c for c in clusters if c}
        for msg in got:
            assert msg.epoch == current_epoch
            for change in msg.changes:
                obj = getattr(change, change.WhichOneof("object"))
                assert not wanted or obj.cluster in wanted
    srv.wait_no_watchers()


@FUZZ
@given(data=st.binary(max_size=200), method=st.sampled_from(["Watch", "GetPodByIP", "ListClusters"]))
def test_garbage_request_bytes(srv: ServerThread, data: bytes, method: str) -> None:
    code = call_raw(srv, method, data)
    assert code in OK_CODES, (method, data, code)
    srv.wait_no_watchers()


@pytest.mark.parametrize(
    "data",
    [
        b"\x10" + b"\xff" * 9 + b"\x01",  # revision: the 10-byte varint of int64 -1 (= 2**64 - 1)
        b"\x10" + b"\xff" * 10 + b"\x01",  # an 11-byte varint: overflow
        b"\x10\x80",  # truncated varint
        b"\x12\x05ab",  # clusters: length beyond the message
        b"\x0a\x02\xc3\x28",  # epoch: invalid UTF-8
        b"\x12\x01a" * 10_000,  # 10,000 cluster filters
        b"\x15\x00\x00\x00\x00",  # revision with the wrong wire type
        b"\x7a\x00",  # an unknown field
    ],
)
def test_hostile_wire_encodings(srv: ServerThread, data: bytes) -> None:
    for method in ("Watch", "GetPodByIP", "ListClusters"):
        code = call_raw(srv, method, data)
        assert code in OK_CODES, (method, data, code)
    srv.wait_no_watchers()
    serving(srv)


@FUZZ
@given(
    ip=st.one_of(
        st.text(max_size=60),
        st.ip_addresses().map(str),
        st.tuples(st.text(min_size=1, max_size=20), st.integers(500, 2000)).map(lambda t: t[0] * t[1]),
    )
)
def test_get_pod_by_ip_any_string(srv: ServerThread, ip: str) -> None:
    try:
        resp = srv.stub.GetPodByIP(pb.GetPodByIPRequest(ip=ip), timeout=10)
    except grpc.RpcError as e:
        assert e.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND), e
        assert len(e.details() or "") < 1000  # a hostile request is not echoed back in full
    else:
        assert ipaddress.ip_address(ip.strip()) in {ipaddress.ip_address(a) for a in resp.pod.ips}


def test_unknown_method_and_oversized_request(srv: ServerThread) -> None:
    with pytest.raises(grpc.RpcError) as err:
        srv.channel.unary_unary(f"/{SERVICE_NAME}/Nope")(b"", timeout=10)
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    big = pb.WatchRequest(clusters=["x" * 1000] * 5000)  # 5 MB, above the default 4 MB receive limit
    _, code = read_some(srv.stub.Watch(big, timeout=20), 1)
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    srv.wait_no_watchers()
    serving(srv)


@FUZZ
@given(cancel_after=st.lists(st.integers(0, 8), min_size=1, max_size=12), churn=st.booleans())
def test_cancel_mid_snapshot_leaks_no_stream(srv: ServerThread, cancel_after: list[int], churn: bool) -> None:
    """Streams cancelled at any point of the snapshot (alone or together, while the index changes) all close."""
    calls = [srv.stub.Watch(pb.WatchRequest(watcher_name=f"cancel-{i}"), timeout=30) for i in range(len(cancel_after))]
    for call, n in zip(calls, cancel_after, strict=True):
        if n == 0:
            call.cancel()
            continue
        got, code = read_some(call, n)
        assert code == grpc.StatusCode.OK and got[0].kind == WR.SNAPSHOT
    if churn:
        srv.churn()
    srv.wait_no_watchers()
    serving(srv)


def test_max_watchers_gives_resource_exhausted_and_frees_slots(srv: ServerThread) -> None:
    calls = [srv.stub.Watch(pb.WatchRequest(watcher_name=f"hold-{i}"), timeout=30) for i in range(20)]
    for call in calls:
        next(call)
    excess = srv.stub.Watch(pb.WatchRequest(watcher_name="excess"), timeout=10)
    with pytest.raises(grpc.RpcError) as err:
        next(excess)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "the limit (--max-watchers) is 20" in (err.value.details() or "")
    for call in calls:
        call.cancel()
    srv.wait_no_watchers()
    got, code = read_some(srv.stub.Watch(pb.WatchRequest(watcher_name="after"), timeout=10), 1)
    assert code == grpc.StatusCode.OK and got
    srv.wait_no_watchers()


@settings(max_examples=30, deadline=None)
@given(data=st.binary(min_size=1, max_size=4096), http2_preface=st.booleans())
def test_garbage_on_the_socket_does_not_hurt_the_server(srv: ServerThread, data: bytes, http2_preface: bool) -> None:
    """Raw bytes instead of HTTP/2 (or after a valid preface): the connection is dropped, the server serves on."""
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" if http2_preface else b""
    with socket.create_connection(("127.0.0.1", srv.server.bound_port), timeout=5) as sock:
        with contextlib.suppress(OSError):
            sock.sendall(preface + data)
            sock.shutdown(socket.SHUT_WR)
            sock.settimeout(5)
            while sock.recv(65536):  # the server answers (GOAWAY) or closes; either way it ends
                pass
    serving(srv)
    srv.wait_no_watchers()


def test_idle_and_half_open_connections_do_not_block_others(srv: ServerThread) -> None:
    idle = [socket.create_connection(("127.0.0.1", srv.server.bound_port), timeout=5) for _ in range(50)]
    try:
        for sock in idle[:25]:
            sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")  # a preface, then silence
        serving(srv)
        got, code = read_some(srv.stub.Watch(pb.WatchRequest(watcher_name="beside-idle"), timeout=10), 1)
        assert code == grpc.StatusCode.OK and got
    finally:
        for sock in idle:
            sock.close()
    srv.wait_no_watchers()
