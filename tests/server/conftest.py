"""Fixtures: an in-process TrackerServer on loopback and typed stubs to talk to it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import grpc.aio
import pytest

from kube_ip_tracker.api.v1 import tracker_pb2_grpc
from kube_ip_tracker.index import Index
from kube_ip_tracker.server import TrackerServer

StartServer = Callable[..., Awaitable[TrackerServer]]
Connect = Callable[[TrackerServer], tracker_pb2_grpc.TrackerStub]


@pytest.fixture
async def start_server() -> AsyncIterator[StartServer]:
    """``await start_server(index, **options)``; every server is stopped at the end."""
    started: list[TrackerServer] = []

    async def start(index: Index, **kwargs: object) -> TrackerServer:
        server = TrackerServer(index, "127.0.0.1:0", **kwargs)  # type: ignore[arg-type]
        await server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        await server.stop(0)


@pytest.fixture
async def connect() -> AsyncIterator[Connect]:
    """``connect(server)`` gives a typed stub on a fresh channel; channels are closed at the end."""
    channels: list[grpc.aio.Channel] = []

    def make(server: TrackerServer, **options: object) -> tracker_pb2_grpc.TrackerStub:
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.bound_port}", options=list(options.items()))
        channels.append(channel)
        return tracker_pb2_grpc.TrackerStub(channel)

    yield make
    for channel in channels:
        await channel.close()
