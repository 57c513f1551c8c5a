"""Upstream trackers as a source (hub-and-spoke): ``--upstream-tracker ADDRESS``, repeatable.

Each upstream is watched by a :class:`~kube_ip_tracker.client.client.TrackerClient` (resume,
failover over the address's IPs, backoff) whose :class:`~kube_ip_tracker.client.index_sink.IndexWriterSink`
writes through an :class:`~.upstream_merge.UpstreamWriter` into the index. The Watch carries this
tracker's id, so the upstream never sends back clusters that passed through here; clusters this
tracker watches directly are skipped (local first), and are listed in the Watch's ``exclude_clusters``
so the upstream does not send them at all. When that set changes (a cluster configured or removed
here), the upstream is asked again with the new list: a cluster no longer watched here then comes
from the upstream.

While an upstream is unreachable its clusters keep their last data, reported ``stale`` (ListClusters,
Watch, ``kube_ip_tracker_upstream_cluster_stale``). When it returns in the same epoch the client
resumes from its revision; a restarted upstream (new epoch) sends a snapshot that is reconciled per
cluster and kind, so only real differences reach this tracker's watchers and local clusters are
untouched; clusters that upstream has not listed again yet are held at their last data (see
:class:`~.upstream_merge.UpstreamWriter`). An upstream counts as ready (for ``--ready-timeout``) once
its first state is applied and every cluster taken from it is synced there.

Usage (the CLI does this)::

    upstreams = Upstreams(index, tracker_id, ["hub.example:50051"])
    supervisor = ClusterSupervisor(upstreams.local_writer)   # local informers stamp and claim
    upstreams.start(local=supervisor.specs)   # clusters configured here are excluded upstream
    missing = await upstreams.wait_ready(60)
    ...
    await upstreams.stop()
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import os
import re
import socket
from collections.abc import Callable, Iterable, Sequence

from kube_ip_tracker.client.client import ClientOptions, TlsOptions, TrackerClient
from kube_ip_tracker.client.index_sink import IndexWriterSink
from kube_ip_tracker.client.resolver import AddressError, parse_address
from kube_ip_tracker.client.tls_flags import add_client_tls_arguments, client_tls_from_args
from kube_ip_tracker.client.token import TokenOptions
from kube_ip_tracker.client.token_flags import add_client_token_arguments, client_token_from_args
from kube_ip_tracker.model import IndexWriter
from kube_ip_tracker.sources import upstream_metrics as metrics
from kube_ip_tracker.sources.upstream_merge import ClusterOwners, LocalWriter, UpstreamWriter

log = logging.getLogger(__name__)

_TRACKER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,252}$")


def default_tracker_id() -> str:
    """``$POD_NAME`` (set from the downward API in the manifest), else the host name."""
    return os.environ.get("POD_NAME", "").strip() or socket.gethostname()


def tracker_id_arg(text: str) -> str:
    """Check a ``--tracker-id``: 1-253 characters of letters, digits and ``. _ : / -``."""
    if not _TRACKER_ID.match(text):
        raise argparse.ArgumentTypeError(
            f"invalid tracker id {text!r}: use 1-253 letters, digits, '.', '_', ':', '/' or '-', "
            "starting with a letter or digit"
        )
    return text


def upstream_address_arg(text: str) -> str:
    """Check an ``--upstream-tracker`` address (``HOST:PORT`` or ``[IPv6]:PORT``)."""
    try:
        parse_address(text)
    except AddressError as e:
        raise argparse.ArgumentTypeError(f"--upstream-tracker: {e}") from None
    return text


def add_upstream_arguments(parser: argparse.ArgumentParser) -> None:
    """Tracker identity and upstream trackers (hub-and-spoke)."""
    group = parser.add_argument_group("upstream trackers")
    group.add_argument(
        "--tracker-id",
        type=tracker_id_arg,
        default=None,
        metavar="ID",
        help="this tracker's id on cluster paths (loop prevention); unique per tracker "
        "(default: $POD_NAME, else the host name)",
    )
    group.add_argument(
        "--upstream-tracker",
        action="append",
        type=upstream_address_arg,
        default=[],
        metavar="ADDRESS",
        help="watch another tracker (HOST:PORT) and serve its clusters too; clusters watched directly "
        "are taken from their API servers (repeatable)",
    )
    add_client_tls_arguments(parser, prefix="upstream")  # --upstream-ca-file, --upstream-cert-file, ...
    add_client_token_arguments(group, prefix="upstream")  # --upstream-token-file, --upstream-token-cluster


class _UpstreamSink(IndexWriterSink):
    """Tells the writer while a snapshot is committed (absent clusters are held, not dropped)."""

    def __init__(self, writer: UpstreamWriter) -> None:
        super().__init__(writer)
        self.upstream_writer = writer

    def _commit(self, records, statuses):  # type: ignore[no-untyped-def]
        self.upstream_writer.committing = True
        try:
            super()._commit(records, statuses)
        finally:
            self.upstream_writer.committing = False


class UpstreamSource:
    """One upstream tracker watched into the index."""

    RESYNC_DELAY = 0.5

    def __init__(
        self,
        address: str,
        index: IndexWriter,
        owners: ClusterOwners,
        tracker_id: str,
        options: ClientOptions,
        *,
        removal_grace: float = 60.0,
        local_clusters: Callable[[], Iterable[str]] | None = None,
    ) -> None:
        self.address = address
        self.tracker_id = tracker_id
        self.options = options
        self.local_clusters = local_clusters or owners.local_clusters
        self.writer = UpstreamWriter(index, owners, tracker_id, address, self.resync, removal_grace=removal_grace)
        self.sink = _UpstreamSink(self.writer)
        self.client = self._new_client()
        self._ready = asyncio.Event()
        self._resync: asyncio.Task[None] | None = None
        self._running = False
        metrics.UPSTREAM_LIVE.labels(address).set(0)

    def _exclusion(self) -> frozenset[str]:
        return frozenset(self.local_clusters())

    def _new_client(self) -> TrackerClient:
        exclude = self._exclusion()
        options = dataclasses.replace(self.options, exclude_clusters=tuple(sorted(exclude)))
        metrics.UPSTREAM_EXCLUDED.labels(self.address).set(len(exclude))
        client = TrackerClient(self.address, self.sink, options)
        client.on_live(lambda live: self._on_live(client, live))
        return client

    @property
    def ready(self) -> bool:
        """A first state of the upstream has been applied and every cluster taken from it was synced there."""
        if not self._ready.is_set() and self.client.live:
            w = self.writer
            if all(w.statuses[c].synced for c in w.statuses if c not in w.held):
                self._ready.set()
        return self._ready.is_set()

    @property
    def live(self) -> bool:
        return self.client.live

    def start(self) -> None:
        self._running = True
        if self._exclusion() != frozenset(self.client.options.exclude_clusters):
            self.client = self._new_client()  # local clusters configured since __init__
        self.client.start()

    def local_changed(self) -> None:
        """The clusters watched directly changed: reconnect with them as exclude_clusters.

        A cluster that is no longer local must then come from the upstream; one that became local no
        longer needs to (its data is the local informers' already: local first).
        """
        if self._running and self._exclusion() != frozenset(self.client.options.exclude_clusters):
            self.resync()

    async def stop(self) -> None:
        self._running = False
        if self._resync is not None:
            self._resync.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._resync
        await self.client.stop()

    async def wait_ready(self, poll: float = 0.2) -> None:
        while not self.ready:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ready.wait(), poll)

    def resync(self) -> None:
        """Ask the upstream for a full snapshot (a cluster it has became ours to take, or the clusters
        watched directly changed); the new stream excludes the clusters watched directly at that time."""
        if not self._running or (self._resync is not None and not self._resync.done()):
            return
        metrics.UPSTREAM_RESYNCS.labels(self.address).inc()
        self._resync = asyncio.get_running_loop().create_task(self._restart(), name=f"upstream-resync {self.address}")

    async def _restart(self) -> None:
        await asyncio.sleep(self.RESYNC_DELAY)  # requests made meanwhile (clusters syncing one by one) share it
        log.info("Upstream %s: reconnecting for a full snapshot", self.address)
        old, self.client = self.client, self._new_client()
        log.info(
            "Upstream %s: excluding %d clusters watched directly",
            self.address,
            len(self.client.options.exclude_clusters),
        )
        await old.stop()  # its end is not a loss of the upstream: the clusters stay as they are
        if self._running:
            self.client.start()
            # The local clusters may have changed while this restart was under way.
            asyncio.get_running_loop().call_soon(self.local_changed)

    def _on_live(self, client: TrackerClient, live: bool) -> None:
        if client is not self.client:
            return
        metrics.UPSTREAM_LIVE.labels(self.address).set(1 if live else 0)
        if live:
            log.info(
                "Upstream %s live (epoch %s, revision %d); serving its clusters as current",
                self.address,
                self.client.epoch,
                self.client.revision,
            )
            self.writer.live = True
            self.writer.set_down(False)
            self.writer.owners.adopt(self.writer)
        else:
            stale = self.writer.statuses.keys()
            log.warning("Upstream %s lost; serving its %d clusters as stale until it returns", self.address, len(stale))
            self.writer.live = False
            self.writer.set_down(True, "disconnected")
            self.writer.owners.fail_over(self.writer)


class Upstreams:
    """All upstream trackers of this tracker plus the writer the local informers use."""

    def __init__(
        self,
        index: IndexWriter,
        tracker_id: str,
        addresses: Sequence[str] = (),
        *,
        tls: TlsOptions | None = None,
        token: TokenOptions | None = None,
        options: ClientOptions | None = None,
        removal_grace: float = 60.0,
    ) -> None:
        if len(set(addresses)) != len(addresses):
            dupes = sorted({a for a in addresses if list(addresses).count(a) > 1})
            raise ValueError(f"--upstream-tracker given more than once for: {', '.join(dupes)}")
        self.tracker_id = tracker_id
        self.owners = ClusterOwners()
        self.local_writer = LocalWriter(index, self.owners, tracker_id)
        base = options or ClientOptions(backoff_base=0.5, backoff_cap=10.0)
        client_options = dataclasses.replace(
            base,
            tracker_id=tracker_id,
            watcher_name=base.watcher_name or f"tracker/{tracker_id}",
            tls=tls or base.tls,
            token=token or base.token,
        )
        self._configured: Callable[[], Iterable[str]] = tuple
        self.sources = [
            UpstreamSource(
                a,
                index,
                self.owners,
                tracker_id,
                client_options,
                removal_grace=removal_grace,
                local_clusters=self.local_clusters,
            )
            for a in addresses
        ]
        self.owners.local_listeners.append(self._local_changed)

    def local_clusters(self) -> set[str]:
        """Clusters watched directly: configured (``start(local=...)``) or written by the local informers."""
        return set(self._configured()) | self.owners.local_clusters()

    def _local_changed(self) -> None:
        for source in self.sources:
            source.local_changed()

    def start(self, local: Callable[[], Iterable[str]] | None = None) -> None:
        """Start watching; ``local`` gives the clusters configured to be watched directly (the
        supervisor's), excluded from the upstream streams before their informers first write."""
        if local is not None:
            self._configured = local
        for source in self.sources:
            log.info("Watching upstream tracker %s as tracker %s", source.address, self.tracker_id)
            source.start()

    async def stop(self) -> None:
        await asyncio.gather(*(s.stop() for s in self.sources), return_exceptions=True)

    async def wait_ready(self, within: float) -> list[str]:
        """Wait up to ``within`` seconds for every upstream's first state; returns those still missing."""
        waits = [asyncio.create_task(s.wait_ready()) for s in self.sources if not s.ready]
        if waits:
            _, pending = await asyncio.wait(waits, timeout=within)
            for task in pending:
                task.cancel()
            await asyncio.gather(*waits, return_exceptions=True)
        missing = [s.address for s in self.sources if not s.ready]
        if missing:
            log.warning(
                "Ready timeout (%.0fs) reached; serving although these upstream trackers sent no state yet: %s",
                within,
                ", ".join(missing),
            )
        elif self.sources:
            log.info("All %d upstream trackers synced", len(self.sources))
        return missing


def build_upstreams(index: IndexWriter, args: argparse.Namespace) -> Upstreams:
    """:class:`Upstreams` from the parsed flags; ``ValueError``/``OSError`` name a bad setting."""
    tls = client_tls_from_args(args, prefix="upstream")
    tracker_id = args.tracker_id or default_tracker_id()
    if not _TRACKER_ID.match(tracker_id):
        raise ValueError(
            f"the default tracker id {tracker_id!r} ($POD_NAME or host name) is not usable; set --tracker-id"
        )
    token = client_token_from_args(args, prefix="upstream", default_cluster=getattr(args, "cluster_id", None))
    return Upstreams(
        index, tracker_id, args.upstream_tracker, tls=tls, token=token, removal_grace=args.cluster_removal_grace
    )
