"""Real ``kube-ip-tracker`` processes and agent stores for topology tests and benchmarks.

``TrackerProcess("hub", ["--kubeconfig", path], log_dir)`` runs ``python -m kube_ip_tracker.cli`` with
this interpreter (so a checkout tests its own code) on a free loopback port, with ``--tracker-id``
set to its name. :class:`Agent` is an :class:`~kube_ip_tracker.agent.store.AgentStore` kept in
step by a :class:`~kube_ip_tracker.client.client.TrackerClient`, as a node agent holds it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from pathlib import Path

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import REGISTRY

from kube_ip_tracker.agent.store import AgentStore
from kube_ip_tracker.api.v1 import tracker_pb2 as pb
from kube_ip_tracker.api.v1 import tracker_pb2_grpc
from kube_ip_tracker.client.client import ClientOptions, TrackerClient
from kube_ip_tracker.model import ClusterStatusRecord, NamespaceRecord, PodRecord
from kube_ip_tracker.testing import polling
from kube_ip_tracker.testing.clusters import free_port
from kube_ip_tracker.wire import namespace_from_proto, pod_from_proto

TRACKER_CMD = [sys.executable, "-m", "kube_ip_tracker.cli"]
AGENT_OPTIONS = ClientOptions(backoff_base=0.1, backoff_cap=1.0)


class TrackerProcess:
    """One tracker child process; keeps its port across restarts.

    With ``tls`` (a function giving channel credentials, asked for each new channel) and
    ``server_name``, the helpers below talk TLS to it. ``command`` runs the tracker (default this interpreter's ``kube_ip_tracker.cli``; a ``podman run``
    of the tracker image in tests/manifests/test_images_podman.py); the flags follow it.
    """

    def __init__(
        self,
        name: str,
        args: Sequence[str],
        log_dir: Path,
        *,
        metrics: bool = False,
        tls: Callable[[], grpc.ChannelCredentials] | None = None,
        server_name: str | None = None,
        command: Sequence[str] = TRACKER_CMD,
    ) -> None:
        self.name = name
        self.tls = tls
        self.server_name = server_name
        self.port = free_port()
        self.metrics_port = free_port() if metrics else 0
        self.argv = [
            *command,
            "--tracker-id",
            name,
            "--listen-address",
            f"127.0.0.1:{self.port}",
            "--metrics-address",
            f"127.0.0.1:{self.metrics_port}" if metrics else "",
            "--shutdown-grace",
            "1s",
            *args,
        ]
        self.log_path = log_dir / f"tracker-{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def channel(self) -> grpc.aio.Channel:
        """A new channel to the tracker: TLS when the process was made with ``tls``."""
        if self.tls is None:
            return grpc.aio.insecure_channel(self.address)
        options = [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []
        return grpc.aio.secure_channel(self.address, self.tls(), options=options)

    def start(self) -> TrackerProcess:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        return self

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no graceful shutdown, as when a node dies."""
        if self.alive:
            assert self.proc is not None
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.alive:
            assert self.proc is not None
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return f"--- {self.name} ---\n" + "\n".join(text.splitlines()[-lines:])

    async def list_clusters(self) -> pb.ListClustersResponse:
        async with self.channel() as channel:
            return await tracker_pb2_grpc.TrackerStub(channel).ListClusters(pb.ListClustersRequest(), timeout=5)

    async def clusters(self) -> dict[str, pb.ClusterInfo]:
        """ListClusters by cluster name; empty while the tracker does not answer."""
        try:
            resp = await self.list_clusters()
        except grpc.aio.AioRpcError:
            return {}
        return {c.status.cluster: c for c in resp.clusters}

    async def serving(self) -> bool:
        """The health service reports SERVING."""
        try:
            async with self.channel() as channel:
                resp = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
        except grpc.aio.AioRpcError:
            return False
        return resp.status == health_pb2.HealthCheckResponse.SERVING

    async def snapshot(self) -> list[PodRecord | NamespaceRecord]:
        """The pods and namespaces of a fresh Watch snapshot: what the tracker serves now."""
        records: list[PodRecord | NamespaceRecord] = []
        async with self.channel() as channel:
            stream = tracker_pb2_grpc.TrackerStub(channel).Watch(pb.WatchRequest(watcher_name="snapshot"), timeout=10)
            async for msg in stream:
                for change in msg.changes:
                    if change.HasField("pod"):
                        records.append(pod_from_proto(change.pod))
                    elif change.HasField("namespace"):
                        records.append(namespace_from_proto(change.namespace))
                if msg.kind == pb.WatchResponse.END_OF_SNAPSHOT:
                    break
            stream.cancel()
        return records

    async def namespace_labels(self) -> dict[tuple[str, str], dict[str, str]]:
        """Labels of every namespace served now, by (cluster, name)."""
        return {(r.cluster, r.name): dict(r.labels) for r in await self.snapshot() if isinstance(r, NamespaceRecord)}

    def metrics_text(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as resp:
            return resp.read().decode()


class Agent:
    """A node agent's view of one tracker: the agent store fed by a tracker client."""

    def __init__(self, tracker: TrackerProcess, options: ClientOptions = AGENT_OPTIONS) -> None:
        self.tracker = tracker
        self.store = AgentStore()
        self.client = TrackerClient(tracker.address, self.store, options)

    def start(self) -> Agent:
        self.client.start()
        return self

    async def stop(self) -> None:
        await self.client.stop()

    def pod_names(self, namespace: str) -> set[tuple[str, str]]:
        """(cluster, name) of the store's pods in ``namespace``."""
        return {(p.cluster, p.name) for p in self.store.pods() if p.namespace == namespace}

    def status(self, cluster: str) -> ClusterStatusRecord | None:
        return self.store.cluster_statuses().get(cluster)


def client_reconnects(target: str) -> float:
    """How often the tracker clients of this process reconnected to ``target`` (their metric)."""
    return REGISTRY.get_sample_value("kube_ip_tracker_client_reconnects_total", {"target": target}) or 0.0


def http_status(url: str) -> int:
    """The HTTP status of a GET (e.g. a /readyz), -1 when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return -1


@contextlib.asynccontextmanager
async def background(coro: Coroutine[object, object, None]) -> AsyncIterator[asyncio.Task[None]]:
    """Run ``coro`` as a task for the ``async with`` block, then cancel it and wait for it to end."""
    task = asyncio.create_task(coro)
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def eventually(
    check: Callable[[], object | Awaitable[object]],
    what: str,
    trackers: Sequence[TrackerProcess] = (),
    within: float = 45.0,
    interval: float = 0.05,
) -> None:
    """Wait until ``check()`` (sync or async) is truthy; fail naming ``what`` with the trackers' logs."""
    await polling.eventually(
        check, what, within=within, interval=interval, detail=lambda: "\n".join(t.log_tail() for t in trackers)
    )
