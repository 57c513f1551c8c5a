"""Prometheus metrics of the tracker's gRPC server.

Labels carry cluster names, object kinds and RPC details only: never pod, namespace or node data.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge

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
CHANGE_LOG_ENTRIES = Gauge(
    "kube_ip_tracker_server_change_log_entries", "Committed batches in the server's framed change log."
)
CHANGE_LOG_BYTES = Gauge(
    "kube_ip_tracker_server_change_log_bytes",
    "Bytes of framed changes and memoised DELTA messages in the server's change log (--change-log-bytes).",
)
