"""Client behaviour the real tracker cannot be made to show on demand: gaps, failover, slow snapshots.

A scripted servicer (the generated ``TrackerServicer`` on a real grpc.aio server over loopback) plays
fixed message sequences, one script per Watch call, and records the requests the client sent.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Sequence

import grpc
import grpc.aio
import pytest
from prometheus_client import REGISTRY

from kube_ip_tracker.agent.store import AgentStore
from kube_ip_tracker.api.v1 import tracker_pb2 as pb
from kube_ip_tracker.api.v1 import tracker_pb2_grpc
from kube_ip_tracker.client.client import ClientOptions, TrackerClient
from kube_ip_tracker.testing.messages import BASE, EPOCH, delta, end, pod, snapshot
from kube_ip_tracker.testing.polling import eventually

FAST = ClientOptions(backoff_base=0.05, backoff_cap=0.2, first_message_timeout=2.0)

# A script step is a message to send, or an asyncio.Event to wait for before going on.
Step = pb.WatchResponse | asyncio.Event


class ScriptedTracker(tracker_pb2_grpc.TrackerServicer):
    """Plays one script per Watch call, then keeps the stream open (or ends it if the script says so)."""

    def __init__(self, scripts: Sequence[Sequence[Step]], end_streams: bool = False) -> None:
        self.scripts = [list(s) for s in scripts]
        self.requests: list[pb.WatchRequest] = []
        self.end_streams = end_streams
        self.called = asyncio.Event()

    async def Watch(
        self, request: pb.WatchRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.WatchResponse]:
        self.requests.append(request)
        self.called.set()
        script = self.scripts.pop(0) if self.scripts else []
        for step in script:
            if isinstance(step, asyncio.Event):
                await step.wait()
            else:
                yield step
        if not self.end_streams:
            await asyncio.Event().wait()


async def serve(servicer: ScriptedTracker, host: str = "127.0.0.1", port: int = 0) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server()
    tracker_pb2_grpc.add_TrackerServicer_to_server(servicer, server)
    bound = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    return server, bound


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_ready_only_after_end_of_snapshot() -> None:
    release = asyncio.Event()
    servicer = ScriptedTracker([[snapshot(BASE, 5), release, end(5)]])
    server, port = await serve(servicer)
    target = f"127.0.0.1:{port}"
    mirror = AgentStore()
    client = TrackerClient(target, mirror, FAST)
    client.start()
    try:
        await eventually(lambda: client.connected, "client.connected")
        await asyncio.sleep(0.1)
        assert not client.ready and not mirror.ready and mirror.pod_by_ip("10.0.0.1") is None
        assert metric("kube_ip_tracker_client_ready", target=target) == 0
        release.set()
        async with asyncio.timeout(5):
            await client.wait_ready()
        assert mirror.pod_by_ip("10.0.0.1") is not None
        assert (client.epoch, client.revision) == (EPOCH, 5)
        assert metric("kube_ip_tracker_client_ready", target=target) == 1
        assert metric("kube_ip_tracker_client_connected", target=target) == 1
        assert metric("kube_ip_tracker_client_revision", target=target) == 5
        assert servicer.requests[0].epoch == "" and servicer.requests[0].revision == 0
    finally:
        await client.stop()
        await server.stop(None)


async def test_gap_makes_the_client_resync_from_scratch(caplog: pytest.LogCaptureFixture) -> None:
    servicer = ScriptedTracker(
        [
            [snapshot(BASE, 5), end(5), delta(6, [pod("api", ["10.0.0.3"])]), delta(9, [pod("late", ["10.0.0.9"])])],
            [snapshot([pod("fresh", ["10.0.0.7"])], 9), end(9)],
        ]
    )
    server, port = await serve(servicer)
    target = f"127.0.0.1:{port}"
    before = metric("kube_ip_tracker_client_resyncs_total", target=target, reason="gap")
    mirror = AgentStore()
    client = TrackerClient(target, mirror, FAST)
    client.start()
    try:
        await eventually(lambda: mirror.snapshots == 2, "mirror.snapshots == 2")
        assert [r.epoch for r in servicer.requests] == ["", ""]
        assert mirror.pod_by_ip("10.0.0.9") is None  # the delta after the gap was never applied
        assert mirror.pod_by_ip("10.0.0.3") is None  # replaced by the new snapshot
        assert mirror.pod_by_ip("10.0.0.7") is not None
        assert client.revision == 9
        assert metric("kube_ip_tracker_client_resyncs_total", target=target, reason="gap") == before + 1
        assert "DELTA starts at revision 9, expected 7" in caplog.text
    finally:
        await client.stop()
        await server.stop(None)


async def test_resumes_with_epoch_and_revision_after_the_stream_ends(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO")
    servicer = ScriptedTracker(
        [
            [snapshot(BASE, 5), end(5), delta(6, [pod("api", ["10.0.0.3"])])],
            [end(6), delta(7, [pod("x", ["10.0.0.4"])])],
        ],
        end_streams=True,
    )
    server, port = await serve(servicer)
    target = f"127.0.0.1:{port}"
    before = metric("kube_ip_tracker_client_reconnects_total", target=target)
    mirror = AgentStore()
    client = TrackerClient(target, mirror, FAST)
    client.start()
    try:
        await eventually(lambda: mirror.pod_by_ip("10.0.0.4") is not None, "mirror.pod_by_ip('10.0.0.4') is not None")
        assert (servicer.requests[1].epoch, servicer.requests[1].revision) == (EPOCH, 6)
        assert mirror.snapshots == 1 and mirror.pod_by_ip("10.0.0.3") is not None
        assert f"Connected to tracker 127.0.0.1:{port} (epoch {EPOCH}), resuming from revision 6" in caplog.text
        assert metric("kube_ip_tracker_client_reconnects_total", target=target) >= before + 1
    finally:
        await client.stop()
        await server.stop(None)


def _port_free_on(host: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


async def test_fails_over_between_the_addresses_a_name_resolves_to() -> None:
    # Two loopback IPs with the same port stand for two tracker pods behind a headless Service.
    first = ScriptedTracker([[snapshot(BASE, 5), end(5)]])
    server_a, port = await serve(first, "127.0.0.1")
    if not _port_free_on("127.0.0.2", port):
        await server_a.stop(None)
        pytest.skip("port taken on 127.0.0.2")
    resolved: list[str] = []

    async def resolve(host: str, p: int) -> list[str]:
        assert (host, p) == ("kube-ip-tracker.kube-system.svc.cluster.local", port)
        resolved.append(host)
        return ["127.0.0.2", "127.0.0.1"]  # nothing listens on .2 yet

    mirror = AgentStore()
    client = TrackerClient(f"kube-ip-tracker.kube-system.svc.cluster.local:{port}", mirror, FAST, resolve=resolve)
    client.start()
    server_b = None
    try:
        async with asyncio.timeout(10):
            await client.wait_ready()
        assert client.endpoint == f"127.0.0.1:{port}"
        second = ScriptedTracker([[end(5), delta(6, [pod("api", ["10.0.0.3"])])]])
        server_b, _ = await serve(second, "127.0.0.2", port)
        await server_a.stop(None)  # tracker pod A goes away: the client moves to B and resumes
        await eventually(
            lambda: mirror.pod_by_ip("10.0.0.3") is not None, "mirror.pod_by_ip('10.0.0.3') is not None", within=10
        )
        assert client.endpoint == f"127.0.0.2:{port}"
        assert (second.requests[0].epoch, second.requests[0].revision) == (EPOCH, 5)
        assert len(resolved) >= 1
    finally:
        await client.stop()
        await server_a.stop(None)
        if server_b is not None:
            await server_b.stop(None)


async def test_never_gives_up_while_no_tracker_is_reachable() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    target = f"127.0.0.1:{port}"
    before = metric("kube_ip_tracker_client_errors_total", target=target, code="UNAVAILABLE")
    mirror = AgentStore()
    client = TrackerClient(target, mirror, FAST)
    task = client.start()
    try:
        await eventually(
            lambda: metric("kube_ip_tracker_client_errors_total", target=target, code="UNAVAILABLE") >= before + 3,
            "metric('kube_ip_tracker_client_errors_total', target=target, code='UNAVAILABLE') >= before + 3",
        )
        assert not task.done() and not client.ready
        assert metric("kube_ip_tracker_client_backoff_seconds", target=target) > 0
        servicer = ScriptedTracker([[snapshot(BASE, 5), end(5)]])
        server, _ = await serve(servicer, port=port)
        try:
            async with asyncio.timeout(10):
                await client.wait_ready()
        finally:
            await server.stop(None)
    finally:
        await client.stop()
    assert task.done()


async def test_silent_tracker_is_abandoned_after_the_first_message_timeout() -> None:
    hold = asyncio.Event()
    servicer = ScriptedTracker([[hold], [snapshot(BASE, 5), end(5)]])
    server, port = await serve(servicer)
    target = f"127.0.0.1:{port}"
    client = TrackerClient(
        target, AgentStore(), ClientOptions(backoff_base=0.05, backoff_cap=0.1, first_message_timeout=0.3)
    )
    client.start()
    try:
        async with asyncio.timeout(10):
            await client.wait_ready()
        assert len(servicer.requests) == 2
        assert metric("kube_ip_tracker_client_errors_total", target=target, code="timeout") >= 1
    finally:
        hold.set()
        await client.stop()
        await server.stop(None)


def test_tls_options_need_cert_and_key_together(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from kube_ip_tracker.client.client import TlsOptions

    with pytest.raises(ValueError, match="cert_file and key_file"):
        TlsOptions(cert_file=tmp_path / "c.pem")
    with pytest.raises(ValueError, match="cannot read TLS CA file"):
        TlsOptions(ca_file=tmp_path / "missing.pem").credentials()


async def test_mutual_tls_checks_the_configured_name_while_dialing_the_resolved_ip(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from kube_ip_tracker.client.client import TlsOptions
    from kube_ip_tracker.testing.certs import TestCA

    ca = TestCA(tmp_path)
    server_cert, server_key = ca.issue("tracker", hosts=["kube-ip-tracker.kube-system.svc"])
    client_cert, client_key = ca.issue("agent", client=True)
    servicer = ScriptedTracker([[snapshot(BASE, 5), end(5)], [snapshot(BASE, 5), end(5)]])
    server = grpc.aio.server()
    tracker_pb2_grpc.add_TrackerServicer_to_server(servicer, server)
    credentials = grpc.ssl_server_credentials(
        [(server_key.read_bytes(), server_cert.read_bytes())],
        root_certificates=ca.cert_path.read_bytes(),
        require_client_auth=True,
    )
    port = server.add_secure_port("127.0.0.1:0", credentials)
    await server.start()

    async def resolve(host: str, p: int) -> list[str]:
        return ["127.0.0.1"]

    try:
        target = f"kube-ip-tracker.kube-system.svc:{port}"
        tls = TlsOptions(ca_file=ca.cert_path, cert_file=client_cert, key_file=client_key)
        client = TrackerClient(
            target, AgentStore(), ClientOptions(tls=tls, backoff_base=0.05, backoff_cap=0.1), resolve=resolve
        )
        client.start()
        try:
            async with asyncio.timeout(10):
                await client.wait_ready()
            assert client.endpoint == f"127.0.0.1:{port}"
        finally:
            await client.stop()

        # Without a client certificate the server refuses the handshake; the client keeps retrying.
        no_cert = TrackerClient(
            target,
            AgentStore(),
            ClientOptions(tls=TlsOptions(ca_file=ca.cert_path), backoff_base=0.05),
            resolve=resolve,
        )
        before = metric("kube_ip_tracker_client_errors_total", target=target, code="UNAVAILABLE")
        no_cert.start()
        try:
            await eventually(
                lambda: metric("kube_ip_tracker_client_errors_total", target=target, code="UNAVAILABLE") > before,
                "metric('kube_ip_tracker_client_errors_total', target=target, code='UNAVAILABLE') > before",
            )
            assert not no_cert.ready
        finally:
            await no_cert.stop()
    finally:
        await server.stop(None)


async def test_a_failing_sink_gets_a_full_resync_not_a_resume() -> None:
    class FlakyMirror(AgentStore):
        failures = 1

        def apply_delta(self, changes, revision):  # type: ignore[no-untyped-def]
            if self.failures:
                self.failures -= 1
                raise RuntimeError("sink bug")
            super().apply_delta(changes, revision)

    servicer = ScriptedTracker(
        [
            [snapshot(BASE, 5), end(5), delta(6, [pod("api", ["10.0.0.3"])])],
            [snapshot([*BASE, pod("api", ["10.0.0.3"])], 6), end(6), delta(7, [pod("x", ["10.0.0.4"])])],
        ]
    )
    server, port = await serve(servicer)
    target = f"127.0.0.1:{port}"
    mirror = FlakyMirror()
    client = TrackerClient(target, mirror, FAST)
    client.start()
    try:
        await eventually(lambda: mirror.pod_by_ip("10.0.0.4") is not None, "mirror.pod_by_ip('10.0.0.4') is not None")
        assert [r.epoch for r in servicer.requests] == ["", ""]
        assert mirror.pod_by_ip("10.0.0.3") is not None and mirror.snapshots == 2
        assert metric("kube_ip_tracker_client_resyncs_total", target=target, reason="internal") == 1
    finally:
        await client.stop()
        await server.stop(None)
