"""A tiny HTTP server inside a pod's network namespace, and an HTTP GET from another pod.

Both block: call them from a thread when an asyncio loop must keep running.
"""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from kube_ip_tracker.testing.netns import Pod


class _Handler(BaseHTTPRequestHandler):
    server: _PodHttpServer

    def do_GET(self) -> None:
        body = (self.server.greeting + "\n").encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


class _PodHttpServer(ThreadingHTTPServer):
    daemon_threads = True
    greeting = ""


class HttpServer:
    """Serves ``greeting`` to every GET on ``pod.ip:port`` until :meth:`close`."""

    def __init__(self, pod: Pod, port: int, greeting: str) -> None:
        server = _PodHttpServer((str(pod.ip), port), _Handler, bind_and_activate=False)
        server.socket.close()
        server.socket = pod.socket(socket.SOCK_STREAM)  # created inside the pod's namespace
        server.greeting = greeting
        try:
            server.server_bind()
            server.server_activate()
        except OSError:
            server.server_close()
            raise
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, args=(0.1,), name=f"http-{pod.name}", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=2)


@dataclass(frozen=True)
class HttpResult:
    """What a GET got: ``ok`` with the status line and body, or the error (``timed out``, ``refused``...)."""

    ok: bool
    detail: str


def http_get(client: Pod, ip: object, port: int, timeout: float = 1.0) -> HttpResult:
    """GET / from ``client``'s namespace; a connection that does not open within ``timeout`` is ``timed out``."""
    sock = client.socket(socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect((str(ip), port))
        sock.sendall(f"GET / HTTP/1.1\r\nHost: {ip}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
    except TimeoutError:
        return HttpResult(False, "timed out")
    except ConnectionRefusedError:
        return HttpResult(False, "connection refused")
    except OSError as exc:
        return HttpResult(False, exc.strerror or str(exc))
    finally:
        sock.close()
    head, _, body = data.decode(errors="replace").partition("\r\n\r\n")
    status = head.split("\r\n", 1)[0]
    if not status.startswith("HTTP/1.") or " 200 " not in status + " ":
        return HttpResult(False, f"unexpected answer {status!r}")
    return HttpResult(True, f"{status.split(' ', 1)[1]}: {body.strip()}")
