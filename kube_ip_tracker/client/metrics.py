"""Prometheus metrics of the tracker client, labelled by the configured tracker target."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

CONNECTED = Gauge(
    "kube_ip_tracker_client_connected",
    "1 while a Watch stream to the tracker is open and has delivered its first message.",
    ["target"],
)
READY = Gauge(
    "kube_ip_tracker_client_ready",
    "1 once the first complete snapshot (END_OF_SNAPSHOT) has been applied.",
    ["target"],
)
RECONNECTS = Counter(
    "kube_ip_tracker_client_reconnects_total",
    "Watch streams that ended or failed and were retried.",
    ["target"],
)
CONNECT_ERRORS = Counter(
    "kube_ip_tracker_client_errors_total",
    "Failed connection attempts and broken streams, by gRPC status code (or resolve/protocol).",
    ["target", "code"],
)
MESSAGES = Counter(
    "kube_ip_tracker_client_messages_total",
    "WatchResponse messages applied, by kind.",
    ["target", "kind"],
)
CHANGES = Counter(
    "kube_ip_tracker_client_changes_applied_total",
    "Changes (snapshot entries and deltas) applied to the sink.",
    ["target"],
)
REVISION = Gauge(
    "kube_ip_tracker_client_revision",
    "Tracker revision the client has applied up to.",
    ["target"],
)
RESYNCS = Counter(
    "kube_ip_tracker_client_resyncs_total",
    "Full snapshots applied after the first one (tracker restart, expired resume point, gap).",
    ["target", "reason"],
)
BACKOFF = Gauge(
    "kube_ip_tracker_client_backoff_seconds",
    "Delay before the next connection attempt (0 while connected).",
    ["target"],
)
