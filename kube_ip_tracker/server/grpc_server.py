"""TrackerServer: the tracker's grpc.aio server (Tracker service, health, reflection, PROGRESS loop).

Usage (the CLI does this)::

    server = TrackerServer(index, "0.0.0.0:7443", max_watchers=5000)
    await server.start()
    server.set_serving(True)         # once the sources have synced
    ...
    await server.stop(grace=10)      # sends what is queued, ends streams cleanly
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
from google.protobuf.message import DecodeError, Message
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from kube_ip_tracker import wire
from kube_ip_tracker.api.v1 import tracker_pb2 as pb
from kube_ip_tracker.index import Index
from kube_ip_tracker.server import metrics
from kube_ip_tracker.server.changelog import DEFAULT_MAX_BYTES as DEFAULT_CHANGE_LOG_BYTES
from kube_ip_tracker.server.fanout import Fanout
from kube_ip_tracker.server.watch import WatchService

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["Tracker"].full_name

DEFAULT_MAX_WATCHERS = 10_000
DEFAULT_PROGRESS_INTERVAL = 10.0
# Watchers read one shared change log, so these bound how far one watcher may lag behind its head
# (a 100k-pod cluster appearing at once is ~25 MB of DELTAs), not memory per watcher.
DEFAULT_WATCHER_BUFFER_BYTES = 64 << 20
DEFAULT_WATCHER_BUFFER_MESSAGES = 10_000
DEFAULT_SNAPSHOT_CACHE_TTL = 5.0


def keepalive_options() -> list[tuple[str, int]]:
    """Server keepalive: ping idle clients, and accept client pings down to every 10 s (agents ping every 20 s).

    The 10 s floor is ``TRACKER_MIN_PING_INTERVAL`` of the client (client/keepalive.py), which refuses
    shorter keepalive times. ``ping_timeout_ms`` is what gRPC core waits for a ping ack (default 60 s):
    it is set to the keepalive timeout so a frozen client is dropped after 30 + 10 s, not 30 + 60 s.
    """
    return [
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.http2.ping_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
        ("grpc.http2.max_ping_strikes", 5),
    ]


def admission_options(max_watchers: int) -> list[tuple[str, int]]:
    """Let a restart storm queue in gRPC until the Watch handler admits or refuses each call.

    gRPC core keeps at most 1,000 calls waiting for the application by default and cancels the others
    (the client sees CANCELLED, with no log here); the queue is sized so --max-watchers decides instead.
    """
    pending = 2 * max_watchers + 1000
    return [("grpc.server.max_pending_requests", pending), ("grpc.server.max_pending_requests_hard_limit", 2 * pending)]


def server_credentials(cert_chain: bytes, private_key: bytes, client_ca: bytes | None = None) -> grpc.ServerCredentials:
    """TLS credentials; with ``client_ca`` every client must present a certificate signed by it (mTLS)."""
    return grpc.ssl_server_credentials(
        [(private_key, cert_chain)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


def server_credentials_from_files(
    cert_file: str | Path, key_file: str | Path, client_ca_file: str | Path | None = None
) -> grpc.ServerCredentials:
    """:func:`server_credentials` from PEM files; ``OSError`` names the file that cannot be read."""

    def read(path: str | Path, what: str) -> bytes:
        try:
            return Path(path).read_bytes()
        except OSError as e:
            raise OSError(f"cannot read TLS {what} {path}: {e.strerror}") from e

    return server_credentials(
        read(cert_file, "certificate file"),
        read(key_file, "key file"),
        read(client_ca_file, "client CA file") if client_ca_file is not None else None,
    )


class TrackerServer:
    """Serves one :class:`~kube_ip_tracker.index.Index` over gRPC."""

    def __init__(
        self,
        index: Index,
        listen_address: str,
        *,
        max_watchers: int = DEFAULT_MAX_WATCHERS,
        progress_interval: float = DEFAULT_PROGRESS_INTERVAL,
        watcher_buffer: int = DEFAULT_WATCHER_BUFFER_BYTES,
        watcher_buffer_messages: int = DEFAULT_WATCHER_BUFFER_MESSAGES,
        snapshot_cache_ttl: float = DEFAULT_SNAPSHOT_CACHE_TTL,
        change_log_bytes: int = DEFAULT_CHANGE_LOG_BYTES,
        tls: grpc.ServerCredentials | None = None,
        extra_options: Sequence[tuple[str, int | str]] = (),
        interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
    ) -> None:
        if max_watchers < 0:
            raise ValueError(f"max_watchers must be >= 0, got {max_watchers}")
        if progress_interval <= 0:
            raise ValueError(f"progress_interval must be > 0 seconds, got {progress_interval}")
        if watcher_buffer < 1 or watcher_buffer_messages < 1:
            raise ValueError(
                f"watcher buffer limits must be positive, got {watcher_buffer} bytes, {watcher_buffer_messages} messages"
            )
        self.index = index
        self.listen_address = listen_address
        self.progress_interval = progress_interval
        self._serving_reported = False
        self._tls = tls
        self._interceptors = tuple(interceptors)  # e.g. server/auth.py's token authentication
        self._options = [*keepalive_options(), *admission_options(max_watchers), *extra_options]
        if change_log_bytes < 1:
            raise ValueError(f"change_log_bytes must be positive, got {change_log_bytes}")
        self._limits = (max_watchers, watcher_buffer_messages, watcher_buffer, snapshot_cache_ttl)
        self._change_log_bytes = change_log_bytes
        self._server: grpc.aio.Server | None = None
        self._fanout: Fanout | None = None
        self._watch: WatchService | None = None
        self._health = health.aio.HealthServicer()
        self._progress_task: asyncio.Task[None] | None = None
        self._health_tasks: set[asyncio.Task[None]] = set()
        self.bound_port = 0

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Bind and start serving; raise ``RuntimeError`` naming the address if it cannot bind."""
        if self._server is not None:
            raise RuntimeError("TrackerServer already started")
        max_watchers, buf_messages, buf_bytes, ttl = self._limits
        self._fanout = Fanout(self.index, self._change_log_bytes)
        self._watch = WatchService(
            self.index,
            self._fanout,
            max_watchers=max_watchers,
            buffer_messages=buf_messages,
            buffer_bytes=buf_bytes,
            snapshot_cache_ttl=ttl,
        )
        self._health = health.aio.HealthServicer()  # a stopped servicer ignores updates: new one per start
        server = grpc.aio.server(options=self._options, interceptors=self._interceptors)
        server.add_generic_rpc_handlers((self._tracker_handler(),))
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME), server
        )
        try:
            if self._tls is not None:
                port = server.add_secure_port(self.listen_address, self._tls)
            else:
                port = server.add_insecure_port(self.listen_address)
        except RuntimeError as e:
            self._fanout.close()
            raise RuntimeError(f"cannot listen on {self.listen_address}: {e}") from e
        await server.start()
        self._server = server
        self.bound_port = port
        await self._set_health(False)
        self._progress_task = asyncio.get_running_loop().create_task(self._progress_loop(), name="watch-progress")
        log.info(
            "Tracker gRPC server listening on %s (port %d, epoch %s, %s)",
            self.listen_address,
            port,
            self.index.epoch,
            "TLS" if self._tls else "plaintext",
        )

    async def stop(self, grace: float | None = 10.0) -> None:
        """Stop: NOT_SERVING, refuse new watchers, flush queued data, end streams, close within ``grace``."""
        if self._server is None:
            return
        server, self._server = self._server, None
        assert self._watch is not None and self._fanout is not None
        self._watch.closing = True
        await self._set_health(False)
        await self._health.enter_graceful_shutdown()
        if self._progress_task is not None:
            self._progress_task.cancel()
        self.index.flush()
        self._fanout.close()  # each stream sends the change log up to its head, then ends with OK
        self._watch.snapshots.clear()
        await server.stop(grace)
        log.info("Tracker gRPC server on port %d stopped", self.bound_port)

    def set_serving(self, serving: bool) -> None:
        """Report SERVING / NOT_SERVING on the health service (overall and for the Tracker service)."""
        self._serving_reported = serving
        task = asyncio.get_running_loop().create_task(self._set_health(serving))
        self._health_tasks.add(task)
        task.add_done_callback(self._health_tasks.discard)

    async def _set_health(self, serving: bool) -> None:
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        await self._health.set("", status)
        await self._health.set(SERVICE_NAME, status)
        metrics.SERVING.set(1 if serving else 0)

    @property
    def serving(self) -> bool:
        """What the health service was last told (False until the first ``set_serving(True)``)."""
        return self._serving_reported

    @property
    def watchers(self) -> int:
        """Watch streams currently open."""
        return self._watch.active if self._watch else 0

    # -- handlers -----------------------------------------------------------------------------

    def _tracker_handler(self) -> grpc.GenericRpcHandler:
        # Requests arrive as bytes and are parsed by _parsed(): a malformed one gets INVALID_ARGUMENT
        # (grpc's own deserializer failure would be reported as UNKNOWN).
        assert self._watch is not None
        return grpc.method_handlers_generic_handler(
            SERVICE_NAME,
            {
                "Watch": grpc.unary_stream_rpc_method_handler(
                    _parsed("Watch", pb.WatchRequest, self._watch.watch),
                    response_serializer=None,  # the handler writes pre-encoded bytes
                ),
                "GetPodByIP": grpc.unary_unary_rpc_method_handler(
                    _parsed("GetPodByIP", pb.GetPodByIPRequest, self._get_pod_by_ip),
                    response_serializer=pb.GetPodByIPResponse.SerializeToString,
                ),
                "ListClusters": grpc.unary_unary_rpc_method_handler(
                    _parsed("ListClusters", pb.ListClustersRequest, self._list_clusters),
                    response_serializer=pb.ListClustersResponse.SerializeToString,
                ),
            },
        )

    async def _get_pod_by_ip(
        self, request: pb.GetPodByIPRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetPodByIPResponse:
        try:
            ip = str(ipaddress.ip_address(request.ip.strip()))
        except ValueError:
            metrics.RPCS.labels("GetPodByIP", "INVALID_ARGUMENT").inc()
            shown = request.ip if len(request.ip) <= 64 else f"{request.ip[:64]}... ({len(request.ip)} characters)"
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"not an IP address: {shown!r}")
        found = self.index.get_pod_by_ip(ip)
        if found is None:
            metrics.RPCS.labels("GetPodByIP", "NOT_FOUND").inc()
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no pod owns IP {ip}")
        pod, ns, node = found
        metrics.RPCS.labels("GetPodByIP", "OK").inc()
        return pb.GetPodByIPResponse(
            pod=wire.pod_to_proto(pod),
            namespace=wire.namespace_to_proto(ns) if ns is not None else None,
            node=wire.node_to_proto(node) if node is not None else None,
        )

    async def _list_clusters(
        self, request: pb.ListClustersRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListClustersResponse:
        metrics.RPCS.labels("ListClusters", "OK").inc()
        infos = sorted(self.index.clusters(), key=lambda i: i.status.cluster)
        return pb.ListClustersResponse(
            epoch=self.index.epoch,
            revision=self.index.revision,
            clusters=[
                pb.ClusterInfo(
                    status=wire.cluster_status_to_proto(i.status),
                    pods=i.pods,
                    namespaces=i.namespaces,
                    nodes=i.nodes,
                    last_change_time=int(i.last_change_time),
                )
                for i in infos
            ],
            watchers=self.watchers,
        )

    # -- progress -------------------------------------------------------------------------------

    async def _progress_loop(self) -> None:
        """Every ``progress_interval``, queue a PROGRESS at the committed revision for every watcher."""
        failures = 0
        while True:
            delay = self.progress_interval
            if failures:
                delay = min(60.0, self.progress_interval * 2**failures) * random.uniform(0.5, 1.0)
            await asyncio.sleep(delay)
            try:
                assert self._fanout is not None
                self.index.flush()  # queue committed batches before the PROGRESS that covers them
                self._fanout.broadcast_progress(self.index.epoch, self.index.committed_revision)
                assert self._watch is not None
                self._watch.snapshots.expire()
                failures = 0
            except Exception:
                failures += 1
                metrics.PROGRESS_LOOP_ERRORS.inc()
                log.exception("PROGRESS loop failed (%d in a row); retrying with backoff", failures)


def _parsed(
    method: str, message: type[Message], handler: Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]
) -> Callable[[bytes, grpc.aio.ServicerContext], Awaitable[Any]]:
    """Wrap ``handler`` to take the raw request bytes; a malformed request is refused with INVALID_ARGUMENT."""
    name = message.DESCRIPTOR.full_name

    async def handle(raw: bytes, context: grpc.aio.ServicerContext) -> Any:
        try:
            request = message.FromString(raw)
        except DecodeError as e:
            metrics.RPCS.labels(method, "INVALID_ARGUMENT").inc()
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"malformed {name} ({len(raw)} bytes): {e}")
        return await handler(request, context)

    return handle
