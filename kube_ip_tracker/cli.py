"""``kube-ip-tracker``: watch the Pods, Namespaces and Nodes of many clusters and serve them over gRPC.

Clusters come from ``--kubeconfig`` files (each context is a cluster named after it),
``--kubeconfig-dir`` (one file per cluster, followed while running), GKE and EKS discovery
(``--gcp-cluster-names``, ``--aws-cluster-names``, re-read every ``--reconcile-interval``;
docs/gke.md, docs/eks.md), or the in-cluster
configuration when none is given (cluster id ``--cluster-id``). Health turns SERVING once every
configured cluster has been listed completely, or after ``--ready-timeout``.

Exit codes: 0 after SIGTERM/SIGINT, 1 on a configuration error at start (named in the message),
2 on bad flags.

``kube-ip-tracker status`` and ``kube-ip-tracker get IP`` (first argument) are operator commands
against a running tracker instead (:mod:`kube_ip_tracker.ctl`).

The parser is assembled from ``add_*_arguments`` functions listed in :data:`ARGUMENT_GROUPS`; a
feature with its own flags adds its function there and reads its values from the parsed namespace.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from kube_ip_tracker import cluster_labels
from kube_ip_tracker.cloud import flags as cloud_flags
from kube_ip_tracker.cloud.reconcile import Reconciler
from kube_ip_tracker.ctl import main as ctl_main
from kube_ip_tracker.durations import parse_duration
from kube_ip_tracker.eks import flags as eks_flags
from kube_ip_tracker.flag_values import positive_duration, positive_int
from kube_ip_tracker.gke import flags as gke_flags
from kube_ip_tracker.index import Index
from kube_ip_tracker.kube.kubeconfig import (
    KubeconfigError,
    check_in_cluster,
    in_cluster_spec,
    static_specs,
)
from kube_ip_tracker.kube.reflector import InformerOptions
from kube_ip_tracker.listen import listen_address, optional_listen_address
from kube_ip_tracker.logs import add_logging_arguments, configure_logging
from kube_ip_tracker.metrics_http import MetricsServer, start_metrics_server
from kube_ip_tracker.model import ClusterSpec, IndexWriter
from kube_ip_tracker.server import TrackerServer
from kube_ip_tracker.server.auth_flags import add_client_auth_arguments, client_auth_interceptors
from kube_ip_tracker.server.bootstrap_pki import PkiError
from kube_ip_tracker.server.tls_bootstrap import TlsBootstrap
from kube_ip_tracker.server.tls_bootstrap_flags import add_tls_bootstrap_arguments, bootstrap_from_args
from kube_ip_tracker.sources.cluster_labels import ClusterLabelWriter
from kube_ip_tracker.sources.kubeconfig_dir import KubeconfigDirWatcher
from kube_ip_tracker.sources.supervisor import ClusterSupervisor
from kube_ip_tracker.sources.upstream import Upstreams, add_upstream_arguments, build_upstreams

log = logging.getLogger("kube_ip_tracker.cli")

DEFAULT_LISTEN_ADDRESS = "0.0.0.0:50051"
DEFAULT_METRICS_ADDRESS = "0.0.0.0:9090"
DEFAULT_MAX_WATCHERS = 10_000
EXIT_CONFIG = 1
EXIT_USAGE = 2


# ----------------------------------------------------------------------------- flags


def add_server_arguments(parser: argparse.ArgumentParser) -> None:
    """gRPC serving, readiness and metrics."""
    from kube_ip_tracker.index import DEFAULT_LOG_SIZE
    from kube_ip_tracker.server.changelog import DEFAULT_MAX_BYTES as DEFAULT_CHANGE_LOG_BYTES
    from kube_ip_tracker.server.grpc_server import DEFAULT_WATCHER_BUFFER_BYTES, DEFAULT_WATCHER_BUFFER_MESSAGES

    group = parser.add_argument_group("serving")
    group.add_argument(
        "--listen-address",
        type=listen_address,
        default=DEFAULT_LISTEN_ADDRESS,
        metavar="HOST:PORT",
        help=f"gRPC listen address (default {DEFAULT_LISTEN_ADDRESS})",
    )
    group.add_argument(
        "--metrics-address",
        type=optional_listen_address,
        default=DEFAULT_METRICS_ADDRESS,
        metavar="HOST:PORT",
        help=f"Prometheus /metrics listen address, '' to disable (default {DEFAULT_METRICS_ADDRESS})",
    )
    group.add_argument(
        "--max-watchers",
        type=positive_int,
        default=DEFAULT_MAX_WATCHERS,
        metavar="N",
        help=f"maximum concurrent Watch streams; more are refused with RESOURCE_EXHAUSTED (default {DEFAULT_MAX_WATCHERS})",
    )
    group.add_argument(
        "--ready-timeout",
        type=parse_duration,
        default=120.0,
        metavar="DURATION",
        help="report SERVING after this long even if some clusters are not synced yet (default 2m)",
    )
    group.add_argument(
        "--shutdown-grace",
        type=parse_duration,
        default=5.0,
        metavar="DURATION",
        help="how long open RPCs may take to finish on SIGTERM (default 5s)",
    )
    group.add_argument(
        "--watcher-buffer-messages",
        type=positive_int,
        default=DEFAULT_WATCHER_BUFFER_MESSAGES,
        metavar="N",
        help="messages queued for one Watch stream before a watcher that does not keep up is disconnected "
        f"with RESOURCE_EXHAUSTED (default {DEFAULT_WATCHER_BUFFER_MESSAGES})",
    )
    group.add_argument(
        "--watcher-buffer-bytes",
        type=positive_int,
        default=DEFAULT_WATCHER_BUFFER_BYTES,
        metavar="BYTES",
        help=f"the same limit in bytes (default {DEFAULT_WATCHER_BUFFER_BYTES}); watchers share one change log, "
        "so this bounds lag, not memory per watcher",
    )
    group.add_argument(
        "--change-log-changes",
        type=positive_int,
        default=DEFAULT_LOG_SIZE,
        metavar="N",
        help="changes the change log keeps for resuming watchers: one that reconnects within them gets only what "
        f"it missed, an older one a reset snapshot (default {DEFAULT_LOG_SIZE})",
    )
    group.add_argument(
        "--change-log-bytes",
        type=positive_int,
        default=DEFAULT_CHANGE_LOG_BYTES,
        metavar="BYTES",
        help="the same bound in bytes of encoded changes, whichever is reached first "
        f"(default {DEFAULT_CHANGE_LOG_BYTES})",
    )
    group.add_argument(
        "--tls-cert-file",
        default=None,
        metavar="PATH",
        help="PEM certificate chain for TLS on the gRPC API (with --tls-key-file); re-read when it changes",
    )
    group.add_argument(
        "--tls-key-file",
        default=None,
        metavar="PATH",
        help="PEM private key of --tls-cert-file; re-read when it changes",
    )
    group.add_argument(
        "--tls-client-ca-file",
        default=None,
        metavar="PATH",
        help="PEM CA bundle; when set, every gRPC client must present a certificate signed by it (mTLS)",
    )
    add_client_auth_arguments(group)  # --client-auth, --allowed-service-accounts, --token-cache-size
    add_tls_bootstrap_arguments(group)  # --tls-bootstrap-secret, ...


def add_cluster_arguments(parser: argparse.ArgumentParser) -> None:
    """The static cluster set."""
    group = parser.add_argument_group("clusters")
    group.add_argument(
        "--kubeconfig",
        action="append",
        default=[],
        metavar="PATH",
        help="kubeconfig file; each of its contexts is a cluster whose id is the context name (repeatable)",
    )
    group.add_argument(
        "--kubeconfig-dir",
        default=None,
        metavar="DIR",
        help="directory of kubeconfig files, one cluster per file (its current context); followed while running",
    )
    group.add_argument(
        "--kubeconfig-dir-interval",
        type=parse_duration,
        default=2.0,
        metavar="DURATION",
        help="how often --kubeconfig-dir is re-read (default 2s)",
    )
    group.add_argument(
        "--cluster-id",
        default="local",
        help="cluster id of the in-cluster configuration, used without --kubeconfig/--kubeconfig-dir (default local)",
    )
    cloud_flags.add_removal_grace_argument(group)


def add_cluster_label_arguments(parser: argparse.ArgumentParser) -> None:
    """ClusterSet labels stamped on the namespaces of the clusters watched directly."""
    group = parser.add_argument_group("cluster labels")
    cluster_labels.add_arguments(group, "every namespace of a cluster watched directly")


# (flag, InformerOptions field, help); defaults come from InformerOptions.
_SOURCE_TIMEOUT_FLAGS = (
    ("--kube-watch-timeout", "watch_timeout", "server-side timeout of a watch; each uses a random value in [T, 2T)"),
    ("--kube-watch-read-margin", "watch_read_margin", "silence beyond a watch's timeout after which it is dropped"),
    ("--kube-connect-timeout", "connect_timeout", "connecting to an API server"),
    ("--kube-request-timeout", "request_timeout", "one list page or get"),
    ("--kube-backoff-base", "backoff_base", "first retry delay after a failed list or watch"),
    ("--kube-backoff-cap", "backoff_cap", "longest retry delay"),
    ("--kube-probe-interval", "probe_interval", "liveness probe (GET kube-system) period while connected"),
    ("--kube-probe-timeout", "probe_timeout", "time limit of one liveness probe"),
)


def add_source_timeout_arguments(parser: argparse.ArgumentParser) -> None:
    """Timeouts of the per-cluster list/watch loops (InformerOptions); see :func:`informer_options`."""
    group = parser.add_argument_group("cluster sources (API server list/watch)")
    defaults = InformerOptions()
    for flag, field, text in _SOURCE_TIMEOUT_FLAGS:
        default = getattr(defaults, field)
        group.add_argument(
            flag,
            type=positive_duration,
            default=default,
            metavar="DURATION",
            help=f"{text} (default {default:g}s)",
        )
    group.add_argument(
        "--kube-probe-failures",
        type=positive_int,
        default=defaults.probe_failures_to_reconnect,
        metavar="N",
        help="failed liveness probes in a row after which the cluster's watches reconnect "
        f"(default {defaults.probe_failures_to_reconnect})",
    )
    group.add_argument(
        "--kube-list-mode",
        choices=("stream", "paginate"),
        default="stream" if defaults.streaming_lists else "paginate",
        help="how full lists are read: stream = streaming lists (WatchList) where the API server serves "
        "them, paginated otherwise; paginate = always paginated LIST (default %(default)s)",
    )


def informer_options(args: argparse.Namespace) -> InformerOptions:
    """InformerOptions from the parsed flags; ``ValueError`` names an inconsistent pair."""
    options = InformerOptions(
        **{field: getattr(args, flag[2:].replace("-", "_")) for flag, field, _ in _SOURCE_TIMEOUT_FLAGS},
        probe_failures_to_reconnect=args.kube_probe_failures,
        streaming_lists=args.kube_list_mode == "stream",
    )
    if options.backoff_cap < options.backoff_base:
        raise ValueError(
            f"--kube-backoff-cap ({options.backoff_cap:g}s) must not be below --kube-backoff-base ({options.backoff_base:g}s)"
        )
    return options


# Each function adds one group of flags; features with their own flags append theirs.
ARGUMENT_GROUPS: list[Callable[[argparse.ArgumentParser], None]] = [
    add_server_arguments,
    add_cluster_arguments,
    add_cluster_label_arguments,
    add_source_timeout_arguments,
    gke_flags.add_arguments,  # after add_cluster_arguments: reuses its --cluster-removal-grace
    eks_flags.add_arguments,
    add_upstream_arguments,
    add_logging_arguments,
]


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser."""
    parser = argparse.ArgumentParser(
        prog="kube-ip-tracker",
        description="Multi-cluster pod metadata cache served over a gRPC watch API.",
        epilog="Operator commands against a running tracker: 'kube-ip-tracker status --address HOST:PORT' "
        "(clusters, watchers, health) and 'kube-ip-tracker get IP' (the pod behind an address); "
        "'kube-ip-tracker status --help' for their flags.",
    )
    for add in ARGUMENT_GROUPS:
        add(parser)
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse and check flags; exits with status 2 and a message on bad flags."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.cluster_id:
        parser.error("--cluster-id must not be empty")
    if args.kubeconfig_dir_interval <= 0:
        parser.error("--kubeconfig-dir-interval must be positive")
    gke_flags.validate(parser, args)  # a malformed --gcp-cluster-names entry exits 2, named
    eks_flags.validate(parser, args)  # the same for --aws-cluster-names
    try:
        informer_options(args)
    except ValueError as exc:
        parser.error(str(exc))
    return args


# ----------------------------------------------------------------------------- running


def load_static_clusters(args: argparse.Namespace) -> list[ClusterSpec]:
    """Specs from --kubeconfig, or the in-cluster spec when no kubeconfig, GKE or EKS flag is given."""
    if args.kubeconfig:
        return static_specs(args.kubeconfig)
    if args.kubeconfig_dir or args.gcp_cluster_names or args.aws_cluster_names:
        return []
    check_in_cluster()
    return [in_cluster_spec(args.cluster_id)]


def build_index(args: argparse.Namespace) -> Index:
    """The index (the only owner of state), its change log holding ``--change-log-changes``."""
    return Index(log_size=args.change_log_changes)


def build_server(
    index: Index,
    args: argparse.Namespace,
    specs: Callable[[], Mapping[str, ClusterSpec]] = dict,
    bootstrap: TlsBootstrap | None = None,
) -> TrackerServer:
    """The gRPC server over the index (TLS from files when --tls-cert-file is set; TlsConfigError if bad).

    ``specs`` gives the watched clusters, in which --client-auth=token reviews callers' tokens. With
    ``bootstrap`` (synced once) the server uses the files it writes and re-reads them when renewed.
    """
    from kube_ip_tracker.server.grpc_server import SERVICE_NAME
    from kube_ip_tracker.server.tls import TlsConfigError, reloading_credentials

    tls = None
    if bootstrap is not None:
        files = bootstrap.config.files
        tls = reloading_credentials(files.cert_file, files.key_file, args.tls_client_ca_file)[1]
    elif args.tls_cert_file or args.tls_key_file:
        if not (args.tls_cert_file and args.tls_key_file):
            raise TlsConfigError("--tls-cert-file and --tls-key-file must be given together")
        tls = reloading_credentials(args.tls_cert_file, args.tls_key_file, args.tls_client_ca_file)[1]
    elif args.tls_client_ca_file:
        raise TlsConfigError("--tls-client-ca-file needs --tls-cert-file and --tls-key-file (a TLS server)")
    interceptors = client_auth_interceptors(args, specs, SERVICE_NAME)
    return TrackerServer(
        index,
        args.listen_address,
        max_watchers=args.max_watchers,
        watcher_buffer=args.watcher_buffer_bytes,
        watcher_buffer_messages=args.watcher_buffer_messages,
        change_log_bytes=args.change_log_bytes,
        tls=tls,
        interceptors=interceptors,
    )


def start_metrics(address: str, ready: Callable[[], bool] | None = None) -> MetricsServer | None:
    """Serve Prometheus metrics over HTTP (in a background thread); None when disabled.

    ``/readyz`` answers 503 while ``ready()`` is False (the tracker passes its health state).
    """
    if address in ("", "0", "off"):
        return None
    return start_metrics_server(address, ready=ready)


async def mark_ready(
    supervisor: ClusterSupervisor,
    server: TrackerServer,
    upstreams: Upstreams | None,
    cluster_ids: set[str],
    within: float,
    discovered: Sequence[Reconciler[Any]] = (),
) -> None:
    """Report SERVING once every configured cluster synced, or after ``within`` seconds.

    With GKE or EKS clusters, first wait (within the same ``within``) for a reconcile pass of each
    provider that found them all.
    """
    upstream_ready = asyncio.create_task(upstreams.wait_ready(within)) if upstreams is not None else None
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    undiscovered: set[str] = set()
    if discovered:
        unanswered = await asyncio.gather(*(r.wait_discovered(within) for r in discovered))
        undiscovered = {str(name) for names in unanswered for name in names}
        cluster_ids = cluster_ids.union(*(r.cluster_ids() for r in discovered))
    missing = await supervisor.wait_synced(cluster_ids, max(0.0, deadline - loop.time())) | undiscovered
    if missing:
        log.warning(
            "Ready timeout (%.0fs) reached; serving although these clusters are not synced: %s",
            within,
            ", ".join(sorted(missing)),
        )
    else:
        log.info("All %d configured clusters synced; serving", len(cluster_ids))
    if upstream_ready is not None:
        await upstream_ready  # logs the upstreams still missing
    # The initial lists created most objects the tracker will ever hold; moving them out of the cyclic
    # collector's generations keeps its full passes (~100 ms at 100k pods) from pausing the event loop.
    gc.freeze()
    server.set_serving(True)


DiscoveryConfigError = (gke_flags.GkeConfigError, eks_flags.EksConfigError)


async def create_reconcilers(args: argparse.Namespace, supervisor: ClusterSupervisor) -> list[Reconciler[Any]]:
    """The reconcilers of the providers with configured clusters; DiscoveryConfigError when one cannot be set up."""
    reconcilers: list[Reconciler[Any]] = []
    try:
        for create in (gke_flags.create_reconciler, eks_flags.create_reconciler):
            reconciler = await create(args, supervisor)
            if reconciler is not None:
                reconcilers.append(reconciler)
    except BaseException:
        await close_reconcilers(reconcilers)
        raise
    return reconcilers


async def close_reconcilers(reconcilers: Sequence[Reconciler[Any]]) -> None:
    """Release the providers' API clients (after their ``run()`` ended)."""
    for reconciler in reconcilers:
        await reconciler.close()


async def bootstrap_tls(bootstrap: TlsBootstrap, stop: asyncio.Event) -> bool:
    """The bootstrap's first sync, retried until it works; False when stopped first (PkiError if unusable)."""
    sync = asyncio.create_task(bootstrap.first_sync(), name="tls-bootstrap-first-sync")
    stopped = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait((sync, stopped), return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
        if not sync.done():
            sync.cancel()
            await asyncio.gather(sync, return_exceptions=True)
    return not sync.cancelled() and sync.done() and sync.result() is not None


async def run(args: argparse.Namespace) -> int:
    """Start the index, the server and the sources; run until SIGTERM/SIGINT."""
    try:
        specs = load_static_clusters(args)
        bootstrap = bootstrap_from_args(args)
    except (KubeconfigError, ValueError) as exc:
        log.error("%s", exc)
        return EXIT_CONFIG

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if bootstrap is not None:
        synced: bool | None = None
        # Alive (/healthz) but not ready while the first certificate is awaited, so that the liveness
        # probe does not restart a tracker whose API server is slow to answer.
        try:
            waiting = start_metrics(args.metrics_address, ready=lambda: False)
        except OSError as exc:
            log.error("Cannot serve metrics: %s", exc)
            return EXIT_CONFIG
        try:
            synced = await bootstrap_tls(bootstrap, stop)
        except PkiError as exc:
            log.error("%s", exc)
        finally:
            if waiting is not None:
                waiting.stop()
        if not synced:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            return EXIT_CONFIG if synced is None else 0

    index = build_index(args)
    try:
        upstreams = build_upstreams(index, args)
    except (OSError, ValueError) as exc:
        log.error("%s", exc)
        return EXIT_CONFIG
    # Stamps this tracker's id and claims local clusters (local wins), and the namespaces' cluster labels.
    writer: IndexWriter = upstreams.local_writer
    if args.cluster_labels is not cluster_labels.Mode.OFF:
        writer = ClusterLabelWriter(writer, cluster_labels.rule_from_args(args))
    supervisor = ClusterSupervisor(writer, options=informer_options(args))
    static_ids = {s.cluster_id for s in specs}
    try:
        discovered = await create_reconcilers(args, supervisor)
    except DiscoveryConfigError as exc:
        log.error("%s", exc)
        return EXIT_CONFIG
    watcher: KubeconfigDirWatcher | None = None
    if args.kubeconfig_dir:
        watcher = KubeconfigDirWatcher(
            args.kubeconfig_dir, supervisor, interval=args.kubeconfig_dir_interval, reserved=static_ids
        )
    try:
        if watcher is not None:
            await watcher.start()
    except KubeconfigError as exc:
        await supervisor.stop()
        await close_reconcilers(discovered)
        log.error("%s", exc)
        return EXIT_CONFIG

    metrics_server: MetricsServer | None = None
    try:
        server = build_server(index, args, supervisor.specs, bootstrap)
        metrics_server = start_metrics(args.metrics_address, ready=lambda: server.serving)
        await server.start()
    except (OSError, RuntimeError, ValueError) as exc:
        await supervisor.stop()
        await close_reconcilers(discovered)
        if metrics_server is not None:
            metrics_server.stop()
        log.error("Cannot start serving: %s", exc)
        return EXIT_CONFIG
    tasks: list[asyncio.Task[Any]] = []
    try:
        for spec in specs:
            await supervisor.ensure(spec)
        upstreams.start(local=supervisor.specs)  # clusters watched here are excluded from the upstream streams
        configured = static_ids | (watcher.cluster_ids() if watcher else set())
        log.info("Watching %d clusters: %s", len(configured), ", ".join(sorted(configured)) or "(none yet)")
        if watcher is not None:
            tasks.append(asyncio.create_task(watcher.run(), name="kubeconfig-dir"))
        for reconciler in discovered:
            tasks.append(asyncio.create_task(reconciler.run(), name=f"{reconciler.provider.name}-reconciler"))
        if bootstrap is not None:
            tasks.append(asyncio.create_task(bootstrap.run(), name="tls-bootstrap"))
        tasks.append(
            asyncio.create_task(mark_ready(supervisor, server, upstreams, configured, args.ready_timeout, discovered))
        )
        await stop.wait()
        log.info("Shutting down")
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await close_reconcilers(discovered)
        with contextlib.suppress(Exception):
            server.set_serving(False)
        await server.stop(args.shutdown_grace)
        await upstreams.stop()
        await supervisor.stop()
        if metrics_server is not None:
            metrics_server.stop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    log.info("Stopped")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Console-script entry point: the tracker, or an operator command (``status``, ``get``) given first."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ctl_main.COMMANDS:
        return ctl_main.main(argv)
    args = parse_args(argv)
    configure_logging(args.log_level, args.logging_format)
    log.info("Starting kube-ip-tracker (pid %d)", os.getpid())
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
