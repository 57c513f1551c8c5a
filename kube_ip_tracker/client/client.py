"""The tracker client: keeps an :class:`~.sink.ApplySink` in step with a tracker, forever.

It resolves the tracker address to all its IPs, opens a Watch stream to one of them with the typed
stub over ``grpc.aio``, feeds the stream to a :class:`~.stream.WatchSession`, and on any failure moves
to the next IP and reconnects with exponential backoff and jitter. After a disconnect it resumes from
the last (epoch, revision) it applied, so only the missed changes are sent; when the tracker cannot
resume (restart, expired change log) it sends a reset snapshot that replaces the sink's state.

A tracker that stops answering without closing the connection (frozen or hung process, black-holed
network path) is given up on within ``min(keepalive_time + keepalive_timeout, stream_timeout)`` seconds
(30 s with the defaults): HTTP/2 keepalive pings, plus a read deadline fed by the PROGRESS messages the
tracker sends every 10 s (see :mod:`.keepalive`). The client then fails over to the next tracker IP at
once, or backs off once every IP failed, and keeps the sink's state meanwhile; it resumes from its
revision when a tracker of the same epoch answers again.

With a token file (``ClientOptions.token``, see :mod:`.token`), each Watch call carries the file's
current service-account token, re-read when the kubelet rotated it.

With TLS, each new connection re-reads the CA bundle and client certificate/key if their files
changed (see :mod:`.tls_reload`): rotated files are used from the next reconnect without a restart;
unusable ones are logged and counted, and the previous material stays in use.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import grpc.aio

from kube_ip_tracker.api.v1 import tracker_pb2 as pb
from kube_ip_tracker.api.v1 import tracker_pb2_grpc
from kube_ip_tracker.backoff import Backoff
from kube_ip_tracker.client import metrics
from kube_ip_tracker.client.keepalive import (
    check_liveness_options,
    keepalive_channel_options,
    liveness_bound,
)
from kube_ip_tracker.client.resolver import (
    AddressError,
    AddressRotation,
    ResolveFn,
    parse_address,
    resolve_all,
)
from kube_ip_tracker.client.sink import ApplySink
from kube_ip_tracker.client.stream import ResyncRequired, WatchSession
from kube_ip_tracker.client.tls_reload import ReloadingClientTls, load_client_tls
from kube_ip_tracker.client.token import TokenOptions

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 256 * 1024 * 1024


@dataclass(frozen=True)
class TlsOptions:
    """TLS for the tracker connection: CA bundle to verify the tracker, optional client cert/key (mTLS).

    ``server_name`` overrides the name checked against the tracker certificate; by default it is the
    host of the configured address (the connection itself goes to the resolved IP).
    """

    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    server_name: str | None = None

    def __post_init__(self) -> None:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("TLS client certificate and key must be given together (cert_file and key_file)")

    def credentials(self) -> grpc.ChannelCredentials:
        """Channel credentials from the files as they are now.

        Raises ``TlsConfigError`` (a ``ValueError``) naming a file that cannot be read or is not usable
        (no PEM certificate, a key that does not match the client certificate).
        """
        return load_client_tls(self.ca_file, self.cert_file, self.key_file).credentials()

    def reloading(self, target: str) -> ReloadingClientTls:
        """Credentials re-read from the files when they change (for each new connection to ``target``)."""
        return ReloadingClientTls(self.ca_file, self.cert_file, self.key_file, target)


@dataclass(frozen=True)
class ClientOptions:
    """Tunables of :class:`TrackerClient`; the defaults suit an agent.

    ``keepalive_time`` (at least 10 s, what the tracker accepts) and ``keepalive_timeout`` drive HTTP/2
    keepalive; ``stream_timeout`` is the read deadline of a stream that has delivered its first
    message (the tracker sends PROGRESS every 10 s: keep it well above that; ``None`` disables it).
    """

    clusters: Sequence[str] = ()
    # Clusters the tracker must not send (after ``clusters``). Part of the stream's identity: a resume
    # point taken with other filters gets a reset snapshot.
    exclude_clusters: Sequence[str] = ()
    tracker_id: str = ""
    watcher_name: str = ""
    tls: TlsOptions | None = None
    # A service-account token sent with every call (re-read from its file when it changes).
    token: TokenOptions | None = None
    backoff_base: float = 0.5
    backoff_cap: float = 30.0
    reresolve_interval: float = 30.0
    keepalive_time: float = 20.0
    keepalive_timeout: float = 10.0
    # A tracker that accepts the connection but sends nothing for this long is given up on.
    first_message_timeout: float = 10.0
    # An open stream that delivers nothing (not even PROGRESS) for this long is given up on.
    stream_timeout: float | None = 30.0
    max_message_bytes: int = MAX_MESSAGE_BYTES

    def __post_init__(self) -> None:
        check_liveness_options(self.keepalive_time, self.keepalive_timeout, self.stream_timeout)
        if self.first_message_timeout <= 0:
            raise ValueError(f"first_message_timeout must be > 0 seconds, got {self.first_message_timeout}")

    @property
    def liveness_bound(self) -> float:
        """Seconds within which a tracker that stopped answering mid-stream is given up on."""
        return liveness_bound(self.keepalive_time, self.keepalive_timeout, self.stream_timeout)


class TrackerSilent(Exception):
    """The tracker sent nothing for too long: a frozen or hung process, or a black-holed path.

    ``code`` labels the error metric: ``timeout`` before the first message, ``silent`` after it.
    """

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code


class TrackerClient:
    """Watches a tracker address and applies what it streams to ``sink``, until stopped.

    ``target`` is ``host:port`` or a list of them: the IPs of all of them are failed over in turn.
    """

    def __init__(
        self,
        target: str | Sequence[str],
        sink: ApplySink,
        options: ClientOptions | None = None,
        *,
        resolve: ResolveFn = resolve_all,
        rng: random.Random | None = None,
    ) -> None:
        targets = [target] if isinstance(target, str) else list(target)
        addresses = [parse_address(t) for t in targets]
        if not addresses:
            raise AddressError("no tracker address given")
        self.target = ",".join(targets)
        self.address = addresses[0]
        self.sink = sink
        self.options = options or ClientOptions()
        # Re-read for every new channel when the files changed (rotation without a restart).
        self._tls = self.options.tls.reloading(self.target) if self.options.tls else None
        self._token = self.options.token.reloading() if self.options.token else None
        self._rotation = AddressRotation(addresses, resolve, self.options.reresolve_interval)
        self._backoff = Backoff(self.options.backoff_base, self.options.backoff_cap, rng)
        self._ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.epoch = ""
        self.revision = 0
        self.endpoint: str | None = None
        self.connected = False
        self.snapshots_applied = 0
        self._resync_reason: str | None = None
        self.live = False
        self._live_listeners: list[Callable[[bool], None]] = []
        self._metric_labels = {"target": self.target}
        metrics.CONNECTED.labels(**self._metric_labels).set(0)
        metrics.READY.labels(**self._metric_labels).set(0)

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """The first complete snapshot has been applied (stays true across reconnects)."""
        return self._ready.is_set()

    async def wait_ready(self) -> None:
        """Wait for the first complete snapshot (wrap in ``asyncio.timeout`` to bound it)."""
        await self._ready.wait()

    def on_live(self, listener: Callable[[bool], None]) -> None:
        """Call ``listener(True)`` when a stream holds a current state (snapshot applied or resumed) and
        ``listener(False)`` when that stream ends; an upstream source marks its clusters stale meanwhile."""
        self._live_listeners.append(listener)

    def start(self) -> asyncio.Task[None]:
        """Run :meth:`run` in a task (idempotent)."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self.run(), name=f"tracker-client {self.target}")
        return self._task

    async def stop(self) -> None:
        """Cancel the watch loop and wait for it to end."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    # -- the loop ----------------------------------------------------------------------------

    @property
    def _filtered(self) -> bool:
        return bool(self.options.clusters or self.options.exclude_clusters or self.options.tracker_id)

    async def run(self) -> None:
        """Connect, watch, and reconnect with backoff forever (until cancelled)."""
        labels = self._metric_labels
        first = True
        while True:
            if not first:
                metrics.RECONNECTS.labels(**labels).inc()
            first = False
            endpoint: str | None = None
            healthy = False
            try:
                endpoint = await self._rotation.next_endpoint()
                healthy = await self._watch(endpoint)
            except asyncio.CancelledError:
                raise
            except ResyncRequired as e:
                metrics.CONNECT_ERRORS.labels(code=e.reason, **labels).inc()
                log.warning(
                    "Tracker %s (%s) stream out of step, reconnecting for a full resync: %s", endpoint, self.target, e
                )
                # Not "healthy": a tracker that keeps breaking the protocol is retried with growing backoff.
                self._forget_resume_point(e.reason)
            except grpc.aio.AioRpcError as e:
                metrics.CONNECT_ERRORS.labels(code=e.code().name, **labels).inc()
                log.warning(
                    "Watch on tracker %s (%s) failed: %s %s", endpoint, self.target, e.code().name, e.details() or ""
                )
                if e.code() is grpc.StatusCode.INVALID_ARGUMENT and self.epoch:
                    # The tracker refuses our resume point (e.g. a revision ahead of it): start over.
                    self._forget_resume_point("refused")
            except TrackerSilent as e:
                metrics.CONNECT_ERRORS.labels(code=e.code, **labels).inc()
                log.warning("Tracker %s (%s) %s; giving up on this stream", endpoint, self.target, e)
            except OSError as e:
                metrics.CONNECT_ERRORS.labels(code="resolve", **labels).inc()
                log.warning("Cannot resolve tracker address %s: %s", self.target, e)
            except Exception:
                metrics.CONNECT_ERRORS.labels(code="internal", **labels).inc()
                log.exception("Watch on tracker %s (%s) failed unexpectedly", endpoint, self.target)
                # The sink may hold part of a message: only a full snapshot is certain to repair it.
                self._forget_resume_point("internal")
            finally:
                self._set_connected(False)
                self._set_live(False)
            if healthy:
                # The tracker ended a working stream: come back soon, to the same address.
                self._backoff.reset()
                self._rotation.mark_healthy()
                delay = self._backoff.next_delay()
            else:
                if endpoint is not None:
                    self._rotation.mark_failed(endpoint)
                # Try the other tracker IPs at once; back off once every one of them failed.
                failed_round = endpoint is None or self._rotation.round_failed
                delay = self._backoff.next_delay() if failed_round else 0.0
            metrics.BACKOFF.labels(**labels).set(delay)
            if delay:
                log.info("Reconnecting to tracker %s in %.2fs", self.target, delay)
                await asyncio.sleep(delay)

    def _channel(self, endpoint: str) -> grpc.aio.Channel:
        opts = self.options
        channel_options: list[tuple[str, int | str]] = [
            *keepalive_channel_options(opts.keepalive_time, opts.keepalive_timeout),
            ("grpc.max_receive_message_length", opts.max_message_bytes),
            # One connection attempt per call: failover is ours, not the channel's.
            ("grpc.enable_retries", 0),
            ("grpc.initial_reconnect_backoff_ms", 1000),
        ]
        if self._tls is None:
            return grpc.aio.insecure_channel(endpoint, options=channel_options)
        # The connection goes to a resolved IP; the certificate is checked against the configured name.
        server_name = (opts.tls.server_name if opts.tls else None) or self.address.host
        channel_options.append(("grpc.ssl_target_name_override", server_name))
        return grpc.aio.secure_channel(endpoint, self._tls.credentials(), options=channel_options)

    def _request(self) -> pb.WatchRequest:
        return pb.WatchRequest(
            epoch=self.epoch,
            revision=self.revision if self.epoch else 0,
            clusters=list(self.options.clusters),
            exclude_clusters=sorted(self.options.exclude_clusters),
            tracker_id=self.options.tracker_id,
            watcher_name=self.options.watcher_name,
        )

    async def _watch(self, endpoint: str) -> bool:
        """One stream to ``endpoint``. Returns whether it got as far as a live state (for backoff)."""
        session = WatchSession(
            self.sink,
            resume_epoch=self.epoch,
            resume_revision=self.revision,
            checked_continuity=not self._filtered,
        )
        async with self._channel(endpoint) as channel:
            stub = tracker_pb2_grpc.TrackerStub(channel)
            call = stub.Watch(self._request(), metadata=self._token.metadata() if self._token else None)
            self.endpoint = endpoint
            loop = asyncio.get_running_loop()
            stream_timeout = self.options.stream_timeout
            try:
                async with asyncio.timeout(self.options.first_message_timeout) as deadline:
                    async for msg in call:
                        if not self.connected:
                            self._set_connected(True)
                            self._log_connected(endpoint, msg)
                        self._apply(endpoint, session, msg)
                        # Measured from when the next message is awaited: a slow apply is not the tracker's silence.
                        deadline.reschedule(None if stream_timeout is None else loop.time() + stream_timeout)
            except TimeoutError:
                if not deadline.expired():
                    raise
                if not self.connected:
                    raise TrackerSilent(
                        "timeout", f"sent nothing within {self.options.first_message_timeout:g}s of connecting"
                    ) from None
                raise TrackerSilent(
                    "silent", f"sent nothing (not even PROGRESS) for {stream_timeout:g}s: frozen, hung or unreachable"
                ) from None
            log.warning("Tracker %s (%s) ended the watch stream", endpoint, self.target)
            return session.live

    def _apply(self, endpoint: str, session: WatchSession, msg: pb.WatchResponse) -> None:
        labels = self._metric_labels
        applied = session.handle(msg)
        metrics.MESSAGES.labels(kind=applied.kind, **labels).inc()
        if applied.changes:
            metrics.CHANGES.labels(**labels).inc(applied.changes)
        if session.live:
            self.epoch, self.revision = session.epoch, session.revision
            metrics.REVISION.labels(**labels).set(self.revision)
        if applied.snapshot_committed or applied.resumed:
            # The tracker works: the next failure starts the backoff and the address rotation afresh.
            self._backoff.reset()
            self._rotation.mark_healthy()
        if applied.snapshot_committed:
            self._snapshot_done(endpoint, session)
        if applied.resumed:
            self._mark_ready()
        if applied.snapshot_committed or applied.resumed:
            self._set_live(True)

    def _log_connected(self, endpoint: str, msg: pb.WatchResponse) -> None:
        if self.epoch and msg.kind == pb.WatchResponse.END_OF_SNAPSHOT and msg.epoch == self.epoch:
            log.info(
                "Connected to tracker %s (epoch %s), resuming from revision %d", endpoint, msg.epoch, self.revision
            )
        elif self.epoch:
            log.info(
                "Connected to tracker %s (epoch %s), cannot resume epoch %s at revision %d: receiving a full snapshot",
                endpoint,
                msg.epoch,
                self.epoch,
                self.revision,
            )
        else:
            log.info("Connected to tracker %s (epoch %s), receiving a full snapshot", endpoint, msg.epoch)

    def _snapshot_done(self, endpoint: str, session: WatchSession) -> None:
        self.snapshots_applied += 1
        if self.snapshots_applied > 1:
            reason = self._resync_reason or ("reset" if session.reset_seen else "snapshot")
            metrics.RESYNCS.labels(reason=reason, **self._metric_labels).inc()
        self._resync_reason = None
        log.info(
            "Applied snapshot from tracker %s (epoch %s) at revision %d", endpoint, session.epoch, session.revision
        )
        self._mark_ready()

    def _mark_ready(self) -> None:
        if not self._ready.is_set():
            self._ready.set()
            metrics.READY.labels(**self._metric_labels).set(1)

    def _set_connected(self, value: bool) -> None:
        self.connected = value
        metrics.CONNECTED.labels(**self._metric_labels).set(1 if value else 0)
        if value:
            metrics.BACKOFF.labels(**self._metric_labels).set(0)

    def _set_live(self, value: bool) -> None:
        if self.live == value:
            return
        self.live = value
        for listener in list(self._live_listeners):
            try:
                listener(value)
            except Exception:
                log.exception("Live listener %r of tracker %s failed", listener, self.target)

    def _forget_resume_point(self, reason: str) -> None:
        """Ask for a full snapshot on the next connect; ``reason`` labels the resync it causes."""
        self.epoch, self.revision = "", 0
        self._resync_reason = reason
