"""Liveness settings of the tracker client: checked options, client and tracker keepalive in agreement, and
the read deadline on a scripted stream that goes quiet (PROGRESS keeps it open, silence ends it)."""

from __future__ import annotations

import asyncio

import pytest

from kube_ip_tracker.agent.store import AgentStore
from kube_ip_tracker.client.client import ClientOptions, TrackerClient
from kube_ip_tracker.client.keepalive import TRACKER_MIN_PING_INTERVAL, keepalive_channel_options
from kube_ip_tracker.server.grpc_server import keepalive_options
from kube_ip_tracker.testing.messages import BASE, EPOCH, delta, end, pod, progress, snapshot
from kube_ip_tracker.testing.polling import eventually

from .test_scripted import ScriptedTracker, metric, serve


def test_options_refuse_settings_that_cannot_work() -> None:
    with pytest.raises(ValueError, match=r"keepalive_time must be at least 10s.*too_many_pings"):
        ClientOptions(keepalive_time=2)
    with pytest.raises(ValueError, match="keepalive_timeout"):
        ClientOptions(keepalive_timeout=0)
    with pytest.raises(ValueError, match="stream_timeout"):
        ClientOptions(stream_timeout=-1)
    with pytest.raises(ValueError, match="first_message_timeout"):
        ClientOptions(first_message_timeout=0)
    assert ClientOptions().liveness_bound == 30
    assert ClientOptions(stream_timeout=None, keepalive_time=10, keepalive_timeout=2).liveness_bound == 12


def test_client_and_tracker_keepalive_agree() -> None:
    server = dict(keepalive_options())
    # The tracker accepts pings as often as the client may send them ...
    assert server["grpc.http2.min_recv_ping_interval_without_data_ms"] == TRACKER_MIN_PING_INTERVAL * 1000
    assert server["grpc.keepalive_permit_without_calls"] == 1
    # ... and both sides bound an unacknowledged ping by their keepalive timeout, not gRPC's 60 s ping timeout.
    assert server["grpc.http2.ping_timeout_ms"] == server["grpc.keepalive_timeout_ms"]
    client = dict(keepalive_channel_options(20, 10))
    assert client["grpc.http2.ping_timeout_ms"] == client["grpc.keepalive_timeout_ms"] == 10_000


async def test_progress_keeps_a_stream_open_and_silence_ends_it_with_the_mirror_kept() -> None:
    ticks = [asyncio.Event() for _ in range(8)]
    first = [snapshot(BASE, 5), end(5)]
    for tick in ticks:
        first += [tick, progress(5)]
    # The second stream resumes and brings one change; then it is quiet too.
    servicer = ScriptedTracker([first, [end(5), delta(6, [pod("new", ["10.0.0.9"])])]])
    server, port = await serve(servicer)
    target = f"127.0.0.1:{port}"
    mirror = AgentStore()
    options = ClientOptions(backoff_base=0.05, backoff_cap=0.1, stream_timeout=2.0)
    client = TrackerClient(target, mirror, options)
    client.start()
    try:
        async with asyncio.timeout(10):
            await client.wait_ready()
        for tick in ticks:  # 8 PROGRESS 0.25 s apart: 2 s in all, longer than the deadline
            await asyncio.sleep(0.25)
            tick.set()
        await eventually(
            lambda: metric("kube_ip_tracker_client_messages_total", target=target, kind="PROGRESS") == 8,
            "metric('kube_ip_tracker_client_messages_total', target=target, kind='PROGRESS') == 8",
        )
        assert client.connected and len(servicer.requests) == 1

        await eventually(
            lambda: len(servicer.requests) == 2, "len(servicer.requests) == 2", within=10
        )  # silence after the last PROGRESS
        assert metric("kube_ip_tracker_client_errors_total", target=target, code="silent") >= 1
        resumed = servicer.requests[1]
        assert (resumed.epoch, resumed.revision) == (EPOCH, 5)
        await eventually(
            lambda: mirror.pod_by_ip("10.0.0.9") is not None, "mirror.pod_by_ip('10.0.0.9') is not None", within=10
        )
        assert mirror.pod_by_ip("10.0.0.1") is not None  # kept across the reconnect, no new snapshot
        assert mirror.snapshots == 1
    finally:
        await client.stop()
        await server.stop(None)
