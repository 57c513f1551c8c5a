"""The metrics HTTP endpoint under hostile clients: idle connections are dropped, junk gets an error, it serves on."""

from __future__ import annotations

import socket
import time
import urllib.request

import pytest

from kube_ip_tracker import metrics_http as metrics


def get(port: int, path: str) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
        return r.status


def test_idle_connections_are_dropped_and_junk_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(metrics._Handler, "timeout", 0.5)  # the real server, with a short idle limit
    srv = metrics.start_metrics_server("127.0.0.1:0")
    try:
        idle = [socket.create_connection(("127.0.0.1", srv.port), timeout=5) for _ in range(20)]
        idle[0].sendall(b"GET /metr")  # a request that never ends
        assert get(srv.port, "/metrics") == 200  # served beside them
        for sock in idle:  # each is closed by the server once silent for the limit
            sock.settimeout(5)
            started = time.monotonic()
            assert sock.recv(1024) == b""
            assert time.monotonic() - started < 5
            sock.close()
        with socket.create_connection(("127.0.0.1", srv.port), timeout=5) as sock:
            sock.sendall(b"\x16\x03\x01 not http at all\r\n\r\n")
            assert b"400" in sock.recv(4096)  # Bad request, then closed
        assert get(srv.port, "/healthz") == 200
    finally:
        srv.stop()
