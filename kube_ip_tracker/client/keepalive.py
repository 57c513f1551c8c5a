"""How the tracker client notices a tracker that stopped answering: HTTP/2 keepalive and a read deadline.

Two independent checks, whichever fires first ends the stream:

* **keepalive**: gRPC pings the tracker every ``keepalive_time`` and closes the connection when a ping
  is not acknowledged within ``keepalive_timeout``. In gRPC core the wait for the acknowledgement is
  bounded by ``grpc.http2.ping_timeout_ms`` (default one minute), not by ``grpc.keepalive_timeout_ms``
  alone, so both are set here; without it a frozen tracker was noticed only after
  ``keepalive_time`` + 60 s.
* **read deadline**: the tracker sends PROGRESS to every watcher every 10 s
  (``DEFAULT_PROGRESS_INTERVAL`` of the server); a stream that delivers no message for
  ``stream_timeout`` is dead even if pings are still answered (gRPC answers them on its own threads,
  so a tracker whose event loop hangs still acks them).

The tracker accepts client pings down to every :data:`TRACKER_MIN_PING_INTERVAL` seconds (its
``grpc.http2.min_recv_ping_interval_without_data_ms``); pinging more often gets the connection closed
with GOAWAY ``too_many_pings``, so the client refuses a shorter ``keepalive_time``.
"""

from __future__ import annotations

# Must equal the tracker's grpc.http2.min_recv_ping_interval_without_data_ms (server/grpc_server.py).
TRACKER_MIN_PING_INTERVAL = 10.0


def check_liveness_options(keepalive_time: float, keepalive_timeout: float, stream_timeout: float | None) -> None:
    """Raise ``ValueError`` naming a keepalive or read-deadline setting that cannot work."""
    if keepalive_time < TRACKER_MIN_PING_INTERVAL:
        raise ValueError(
            f"keepalive_time must be at least {TRACKER_MIN_PING_INTERVAL:.0f}s (the tracker closes connections "
            f"that ping more often with GOAWAY too_many_pings), got {keepalive_time}s"
        )
    if keepalive_timeout <= 0:
        raise ValueError(f"keepalive_timeout must be > 0 seconds, got {keepalive_timeout}")
    if stream_timeout is not None and stream_timeout <= 0:
        raise ValueError(f"stream_timeout must be > 0 seconds (or None to disable it), got {stream_timeout}")


def keepalive_channel_options(keepalive_time: float, keepalive_timeout: float) -> list[tuple[str, int]]:
    """Channel arguments that ping the tracker every ``keepalive_time`` and give up after ``keepalive_timeout``."""
    timeout_ms = max(1, int(keepalive_timeout * 1000))
    return [
        ("grpc.keepalive_time_ms", int(keepalive_time * 1000)),
        ("grpc.keepalive_timeout_ms", timeout_ms),
        # The bound gRPC core actually applies to an unacknowledged ping (see the module docstring).
        ("grpc.http2.ping_timeout_ms", timeout_ms),
        ("grpc.keepalive_permit_without_calls", 1),
        # The client sends no data after its request: allow pings without data in between.
        ("grpc.http2.max_pings_without_data", 0),
    ]


def liveness_bound(keepalive_time: float, keepalive_timeout: float, stream_timeout: float | None) -> float:
    """Seconds after a tracker freezes within which the client has given up on its stream."""
    keepalive = keepalive_time + keepalive_timeout
    return keepalive if stream_timeout is None else min(keepalive, stream_timeout)
