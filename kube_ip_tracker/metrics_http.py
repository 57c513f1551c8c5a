"""The metrics HTTP endpoint of both programs: ``/metrics``, ``/healthz``, ``/livez``, ``/readyz``."""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

from kube_ip_tracker.listen import parse_listen_address

log = logging.getLogger(__name__)


class _Handler(BaseHTTPRequestHandler):
    registry: CollectorRegistry = REGISTRY
    ready: Callable[[], bool] | None = None
    ready_note: str = ""  # said by /readyz after "ok" (the agent's audit mode)
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
        elif path == "/readyz" and self.ready_note:
            self._reply(200, "text/plain; charset=utf-8", f"ok: {self.ready_note}\n".encode())
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


def start_metrics_server(
    address: str,
    registry: CollectorRegistry = REGISTRY,
    ready: Callable[[], bool] | None = None,
    ready_note: str = "",
) -> MetricsServer:
    """Serve ``/metrics`` and ``/healthz`` on ``address`` (e.g. ``"0.0.0.0:9090"``) from a daemon thread.

    ``/readyz`` answers 503 while ``ready()`` (called from the server thread) is False, then ``ok``
    (``ok: <ready_note>`` with a note).
    """
    host, port = parse_listen_address(address)
    handler = type(
        "MetricsHandler",
        (_Handler,),
        {"registry": registry, "ready": staticmethod(ready) if ready else None, "ready_note": ready_note},
    )

    class _Server(ThreadingHTTPServer):
        daemon_threads = True
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

    httpd = _Server((host, port), handler)
    thread = threading.Thread(target=httpd.serve_forever, name="metrics-http", daemon=True)
    thread.start()
    log.info("Serving metrics on http://%s:%d/metrics", host, httpd.server_address[1])
    return MetricsServer(httpd, thread)
