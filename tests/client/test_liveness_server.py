"""The other direction: a frozen client process (SIGSTOP) is dropped by the tracker, freeing its watcher slot.

The tracker pings a client that sends nothing every 30 s and waits 10 s for the ack; before it also set
``grpc.http2.ping_timeout_ms`` gRPC waited 60 s, so a frozen agent held its Watch stream for 90 s.
"""

from __future__ import annotations

import asyncio
import signal
import sys

import pytest

from kube_ip_tracker.index import Index
from kube_ip_tracker.server import TrackerServer
from kube_ip_tracker.server.grpc_server import keepalive_options

# A client process holding one Watch stream (the default options of an agent).
CLIENT = """
import asyncio, sys
from kube_ip_tracker.client.client import TrackerClient
from kube_ip_tracker.agent.store import AgentStore

async def main():
    TrackerClient(sys.argv[1], AgentStore()).start()
    await asyncio.Event().wait()

asyncio.run(main())
"""


async def wait_watchers(server: TrackerServer, count: int, within: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while server.watchers != count:
        if loop.time() > deadline:
            raise AssertionError(f"tracker has {server.watchers} watchers, not {count}, after {within:.0f}s")
        await asyncio.sleep(0.1)


@pytest.mark.slow
async def test_tracker_drops_a_frozen_client_within_its_keepalive_bound() -> None:
    options = dict(keepalive_options())
    bound = (options["grpc.keepalive_time_ms"] + options["grpc.keepalive_timeout_ms"]) / 1000
    server = TrackerServer(Index(), "127.0.0.1:0")
    await server.start()
    server.set_serving(True)
    client = await asyncio.create_subprocess_exec(sys.executable, "-c", CLIENT, f"127.0.0.1:{server.bound_port}")
    try:
        await wait_watchers(server, 1, within=30)
        client.send_signal(signal.SIGSTOP)
        await wait_watchers(server, 0, within=bound + 10)
        client.send_signal(signal.SIGCONT)  # thawed, it reconnects and is served again
        await wait_watchers(server, 1, within=30)
    finally:
        client.send_signal(signal.SIGCONT)
        client.kill()
        await client.wait()
        await server.stop(0)
