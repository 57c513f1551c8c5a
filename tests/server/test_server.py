"""TrackerServer: slow watchers, admission, unary RPCs, health, reflection, graceful stop, metrics endpoint."""

from __future__ import annotations

import asyncio
import time
import urllib.request

import grpc
import grpc.aio
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client import REGISTRY

from kube_ip_tracker.api.v1 import tracker_pb2 as pb
from kube_ip_tracker.index import Index
from kube_ip_tracker.listen import parse_listen_address
from kube_ip_tracker.metrics_http import start_metrics_server
from kube_ip_tracker.model import ClusterStatusRecord, NamespaceRecord
from kube_ip_tracker.server import TrackerServer

from .conftest import Connect, StartServer
from .helpers import WR, Stream, filled, pod


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_slow_watcher_is_cut_off_while_a_fast_one_keeps_up(start_server: StartServer, connect: Connect) -> None:
    index = filled()
    server = await start_server(index, watcher_buffer=512 * 1024, watcher_buffer_messages=200)
    disconnects = metric("kube_ip_tracker_server_slow_watcher_disconnects_total")
    # The slow client keeps a small HTTP/2 window (no BDP growth) and stops reading after the snapshot.
    slow = Stream(connect(server, **{"grpc.http2.bdp_probe": 0}).Watch(pb.WatchRequest(watcher_name="slow")))
    fast = Stream(connect(server).Watch(pb.WatchRequest(watcher_name="fast")))
    await slow.initial()
    await fast.initial()
    big = {f"k{j}": "v" * 1000 for j in range(8)}  # ~8 KB per pod
    latencies = []
    for i in range(400):
        index.upsert(pod(f"big{i}", f"10.8.{i // 200}.{i % 200 + 1}", labels=big))
        started = time.monotonic()
        delta = await fast.delta()
        latencies.append(time.monotonic() - started)
        assert delta.changes[0].pod.name == f"big{i}"
        if metric("kube_ip_tracker_server_slow_watcher_disconnects_total") > disconnects:
            break
    assert metric("kube_ip_tracker_server_slow_watcher_disconnects_total") == disconnects + 1
    assert max(latencies) < 1.0
    # The slow client sees what was sent before the cut, then RESOURCE_EXHAUSTED with the reason.
    with pytest.raises(grpc.aio.AioRpcError) as err:
        async with asyncio.timeout(10):
            while True:
                await slow.next()
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "too slow" in (err.value.details() or "") and "'slow'" in (err.value.details() or "")
    # The fast watcher is unaffected.
    index.upsert(pod("after", "10.9.0.1"))
    assert (await fast.delta()).changes[0].pod.name == "after"
    fast.call.cancel()


async def test_max_watchers(start_server: StartServer, connect: Connect) -> None:
    server = await start_server(filled(), max_watchers=2)
    stub = connect(server)
    first, second = Stream(stub.Watch(pb.WatchRequest())), Stream(stub.Watch(pb.WatchRequest()))
    await first.initial()
    await second.initial()
    rejected = stub.Watch(pb.WatchRequest(watcher_name="third"))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await rejected.read()
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "--max-watchers" in (err.value.details() or "") and "is 2" in (err.value.details() or "")
    first.call.cancel()
    for _ in range(100):
        if server.watchers < 2:
            break
        await asyncio.sleep(0.01)
    again = Stream(stub.Watch(pb.WatchRequest()))
    await again.initial()
    second.call.cancel()
    again.call.cancel()


async def test_get_pod_by_ip(start_server: StartServer, connect: Connect) -> None:
    index = filled()
    index.upsert(pod("v6", "fd00::7"))
    server = await start_server(index)
    stub = connect(server)
    found = await stub.GetPodByIP(pb.GetPodByIPRequest(ip="10.1.0.1"))
    assert (found.pod.cluster, found.pod.name) == ("b", "web")
    assert found.namespace.labels == {"team": "b"} and list(found.node.internal_ips) == ["192.0.2.2"]
    assert (await stub.GetPodByIP(pb.GetPodByIPRequest(ip="fd00:0::7"))).pod.name == "v6"  # normalized
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.GetPodByIP(pb.GetPodByIPRequest(ip="10.99.0.1"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND and "10.99.0.1" in (err.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.GetPodByIP(pb.GetPodByIPRequest(ip="10.0.0.300"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "10.0.0.300" in (err.value.details() or "")


async def test_list_clusters(start_server: StartServer, connect: Connect) -> None:
    index = filled(synced=("a",))
    index.set_cluster_status(ClusterStatusRecord("b", connected=False, stale=True, last_error="dial: refused"))
    server = await start_server(index)
    resp = await connect(server).ListClusters(pb.ListClustersRequest())
    assert resp.epoch == index.epoch and resp.revision == index.revision
    a, b = resp.clusters
    assert a.status.cluster == "a" and a.status.synced and (a.pods, a.namespaces, a.nodes) == (2, 1, 1)
    assert b.status.stale and b.status.last_error == "dial: refused" and abs(b.last_change_time - time.time()) < 60


async def test_health_and_reflection(start_server: StartServer) -> None:
    server = await start_server(Index())
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.bound_port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        check = await health.Check(health_pb2.HealthCheckRequest(service="kubeiptracker.v1.Tracker"))
        assert check.status == health_pb2.HealthCheckResponse.NOT_SERVING
        server.set_serving(True)
        await asyncio.sleep(0.05)
        for service in ("", "kubeiptracker.v1.Tracker"):
            check = await health.Check(health_pb2.HealthCheckRequest(service=service))
            assert check.status == health_pb2.HealthCheckResponse.SERVING
        server.set_serving(False)
        await asyncio.sleep(0.05)
        check = await health.Check(health_pb2.HealthCheckRequest(service=""))
        assert check.status == health_pb2.HealthCheckResponse.NOT_SERVING

        refl = reflection_pb2_grpc.ServerReflectionStub(channel)
        call = refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        async for resp in call:
            names = {s.name for s in resp.list_services_response.service}
            break
        assert "kubeiptracker.v1.Tracker" in names and "grpc.health.v1.Health" in names


async def test_graceful_stop_sends_remaining_changes_and_ends_streams_ok(connect: Connect) -> None:
    index = filled()
    server = TrackerServer(index, "127.0.0.1:0")
    await server.start()
    stream = Stream(connect(server).Watch(pb.WatchRequest()))
    await stream.initial()
    index.upsert(pod("last", "10.0.0.99"))  # not yet committed when stop() begins
    await server.stop(grace=5)
    delta = await stream.next()
    assert delta.kind == WR.DELTA and delta.changes[0].pod.name == "last"
    assert await stream.call.read() is grpc.aio.EOF
    assert await stream.call.code() == grpc.StatusCode.OK


async def test_bad_options_and_address_are_named() -> None:
    with pytest.raises(ValueError, match="progress_interval"):
        TrackerServer(Index(), "127.0.0.1:0", progress_interval=0)
    server = TrackerServer(Index(), "256.1.1.1:1")
    with pytest.raises(RuntimeError, match=r"256\.1\.1\.1:1"):
        await server.start()


def test_metrics_http_endpoint() -> None:
    with pytest.raises(ValueError, match="HOST:PORT"):
        parse_listen_address("9090")
    assert parse_listen_address("[::]:9090") == ("::", 9090) and parse_listen_address(":9090") == ("0.0.0.0", 9090)
    index = Index()
    index.upsert(NamespaceRecord("metrics-http", "default", {}))
    index.flush()
    srv = start_metrics_server("127.0.0.1:0")
    try:
        base = f"http://127.0.0.1:{srv.port}"
        with urllib.request.urlopen(base + "/healthz", timeout=5) as r:
            assert r.read() == b"ok\n"
        with urllib.request.urlopen(base + "/metrics", timeout=5) as r:
            text = r.read().decode()
        assert 'kube_ip_tracker_index_objects{cluster="metrics-http",kind="namespace"} 1.0' in text
    finally:
        srv.stop()


async def test_mutual_tls(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from kube_ip_tracker.server.grpc_server import server_credentials_from_files
    from kube_ip_tracker.testing.certs import TestCA

    ca = TestCA(tmp_path)
    cert, key = ca.issue("tracker", hosts=["127.0.0.1"])
    client_cert, client_key = ca.issue("agent", client=True)
    with pytest.raises(OSError, match="client CA file"):
        server_credentials_from_files(cert, key, tmp_path / "missing.pem")
    server = TrackerServer(filled(), "127.0.0.1:0", tls=server_credentials_from_files(cert, key, ca.cert_path))
    await server.start()
    try:
        target = f"127.0.0.1:{server.bound_port}"
        good = grpc.ssl_channel_credentials(
            ca.cert_path.read_bytes(), client_key.read_bytes(), client_cert.read_bytes()
        )
        async with grpc.aio.secure_channel(target, good) as channel:
            resp = await pb_stub(channel).ListClusters(pb.ListClustersRequest())
            assert len(resp.clusters) == 2
        no_client_cert = grpc.ssl_channel_credentials(ca.cert_path.read_bytes())
        async with grpc.aio.secure_channel(target, no_client_cert) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await pb_stub(channel).ListClusters(pb.ListClustersRequest(), timeout=5)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await server.stop(0)


def pb_stub(channel: grpc.aio.Channel):  # type: ignore[no-untyped-def]
    from kube_ip_tracker.api.v1 import tracker_pb2_grpc

    return tracker_pb2_grpc.TrackerStub(channel)


async def test_restart_on_the_same_index_keeps_epoch_and_health_works(connect: Connect) -> None:
    index = filled()
    server = TrackerServer(index, "127.0.0.1:0")
    await server.start()
    await server.stop(0)
    await server.start()
    try:
        server.set_serving(True)
        await asyncio.sleep(0.05)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.bound_port}") as channel:
            check = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
            assert check.status == health_pb2.HealthCheckResponse.SERVING
        stream = Stream(connect(server).Watch(pb.WatchRequest(epoch=index.epoch, revision=index.revision)))
        assert (await stream.next()).kind == WR.END_OF_SNAPSHOT
        stream.call.cancel()
    finally:
        await server.stop(0)
