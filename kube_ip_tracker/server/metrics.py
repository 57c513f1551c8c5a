"""Prometheus metrics of the tracker (index and gRPC server) and the metrics HTTP endpoint.

Labels carry cluster names, object kinds and RPC details only: never pod, namespace or node data.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Counter, Gauge, generate_latest

log = logging.getLogger(__name__)

# -- index ---------------------------------------------------------------------------------------

INDEX_OBJECTS = Gauge(
    "kube_ip_tracker_index_objects",
    "Objects held in the index, per cluster and kind.",
    ["cluster", "kind"],
)
INDEX_EVENTS_APPLIED = Counter(
    "kube_ip_tracker_index_events_applied_total",
    "Writes handed to the index by sources (including those that changed nothing), per kind and operation.",
    ["kind", "op"],
)
INDEX_CHANGES = Counter(
    "kube_ip_tracker_index_changes_total",
    "Changes committed to the index (each one bumps the revision), per kind.",
    ["kind"],
)
INDEX_BATCHES = Counter("kube_ip_tracker_index_batches_total", "Batches of changes committed to the index.")
INDEX_REVISION = Gauge("kube_ip_tracker_index_revision", "Last committed revision of the index.")
INDEX_LOG_CHANGES = Gauge("kube_ip_tracker_index_change_log_changes", "Changes held in the resume change log.")
IP_CONFLICTS = Counter(
    "kube_ip_tracker_index_ip_conflicts_total",
    "Times a pod claimed an IP that another pod already claimed (newest creation wins).",
)
IP_CONFLICTS_CURRENT = Gauge(
    "kube_ip_tracker_index_contested_ips", "IPs currently claimed by more than one pod in the index."
)

# -- server ----------------------------------------------------------------------------------------

WATCHERS = Gauge("kube_ip_tracker_server_watchers", "Watch streams currently open.")
WATCHERS_REJECTED = Counter(
    "kube_ip_tracker_server_watchers_rejected_total", "Watch calls refused, per reason.", ["reason"]
)
MESSAGES_SENT = Counter(
    "kube_ip_tracker_server_messages_sent_total", "WatchResponse messages written to watchers, per kind.", ["kind"]
)
BYTES_SENT = Counter(
    "kube_ip_tracker_server_bytes_sent_total", "Serialized WatchResponse bytes written to watchers, per kind.", ["kind"]
)
SLOW_WATCHER_DISCONNECTS = Counter(
    "kube_ip_tracker_server_slow_watcher_disconnects_total",
    "Watchers cut off because their send queue was full.",
)
SNAPSHOTS_SENT = Counter(
    "kube_ip_tracker_server_snapshots_sent_total",
    "Watch stream starts, per type: full (new watcher), reset (resume impossible), resume (change log).",
    ["type"],
)
SNAPSHOT_ENCODINGS = Counter(
    "kube_ip_tracker_server_snapshot_encodings_total",
    "Snapshots encoded (watchers that connect together share one encoding).",
)
DELTA_ENCODINGS = Counter(
    "kube_ip_tracker_server_delta_encodings_total",
    "DELTA messages encoded (shared by every watcher with the same filter).",
)
RPCS = Counter(
    "kube_ip_tracker_server_rpcs_total", "Unary RPCs served, per method and status code.", ["method", "code"]
)
SERVING = Gauge("kube_ip_tracker_server_serving", "1 when the health service reports SERVING.")
PROGRESS_LOOP_ERRORS = Counter(
    "kube_ip_tracker_server_progress_loop_errors_total",
    "Failures of the periodic PROGRESS loop (retried with backoff).",
)


class _Handler(BaseHTTPRequestHandler):
    registry: CollectorRegistry = REGISTRY
    ready: Callable[[], bool] | None = None
    # Seconds a connection may stay silent (before or between requests): idle or slow clients each
    # hold a thread, so they are dropped instead of accumulating.
    timeout = 10.0

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            body = generate_latest(self.registry)
            self._reply(200, CONTENT_TYPE_LATEST, body)
        elif path == "/readyz" and self.ready is not None and not self.ready():
            self._reply(503, "text/plain; charset=utf-8", b"not ready\n")
        elif path in ("/healthz", "/livez", "/readyz"):
            self._reply(200, "text/plain; charset=utf-8", b"ok\n")
        else:
            self._reply(404, "text/plain; charset=utf-8", b"not found; try /metrics or /healthz\n")

    def _reply(self, code: int, content_type: str, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("metrics http: " + format, *args)


class MetricsServer:
    """The metrics HTTP endpoint (``/metrics``, ``/healthz``) on a background thread."""

    def __init__(self, httpd: ThreadingHTTPServer, thread: threading.Thread) -> None:
        self._httpd = httpd
        self._thread = thread

    @property
    def port(self) -> int:
        """The port actually bound (useful with port 0)."""
        return int(self._httpd.server_address[1])

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


def parse_address(address: str) -> tuple[str, int]:
    """Split ``"host:port"`` (``"[::]:9090"`` for IPv6); raise ``ValueError`` naming the bad address."""
    host, sep, port_text = address.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"bad listen address {address!r}: want HOST:PORT, e.g. 0.0.0.0:9090")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port_text)


def start_metrics_server(
    address: str, registry: CollectorRegistry = REGISTRY, ready: Callable[[], bool] | None = None
) -> MetricsServer:
    """Serve ``/metrics`` and ``/healthz`` on ``address`` (e.g. ``"0.0.0.0:9090"``) from a daemon thread.

    ``/readyz`` answers 503 while ``ready()`` (called from the server thread) is False.
    """
    host, port = parse_address(address)
    handler = type(
        "MetricsHandler", (_Handler,), {"registry": registry, "ready": staticmethod(ready) if ready else None}
    )

    class _Server(ThreadingHTTPServer):
        daemon_threads = True
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

    httpd = _Server((host, port), handler)
    thread = threading.Thread(target=httpd.serve_forever, name="metrics-http", daemon=True)
    thread.start()
    log.info("Serving metrics on http://%s:%d/metrics", host, httpd.server_address[1])
    return MetricsServer(httpd, thread)
