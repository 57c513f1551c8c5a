"""Prometheus metrics of the reflector loops (one label set per cluster and resource).

The names keep the ``kube_ip_tracker_source_`` prefix the tracker has always exported; the agent's
policy informers use the same series with their own resource names.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge

EVENTS = Counter(
    "kube_ip_tracker_source_events_total",
    "Watch events received from API servers.",
    ["cluster", "kind", "type"],
)
RELISTS = Counter(
    "kube_ip_tracker_source_lists_total",
    "Full lists applied to the index (reason: initial, expired, error, restart).",
    ["cluster", "kind", "reason"],
)
ERRORS = Counter(
    "kube_ip_tracker_source_errors_total",
    "Errors talking to API servers (reason: unauthorized, forbidden, unreachable, timeout, expired, api, other).",
    ["cluster", "kind", "reason"],
)
LIST_FALLBACKS = Counter(
    "kube_ip_tracker_source_list_fallbacks_total",
    "Streaming lists (WatchList) an API server did not serve, so paginated lists were used for the connection.",
    ["cluster", "kind"],
)
WATCHES = Counter(
    "kube_ip_tracker_source_watches_total",
    "Watch requests opened (a streaming list counts once its initial events are in and it goes on as the watch).",
    ["cluster", "kind"],
)
BACKOFF = Gauge(
    "kube_ip_tracker_source_backoff_seconds",
    "The last backoff delay chosen after an error (0 after a success).",
    ["cluster", "kind"],
)
OBJECTS = Gauge(
    "kube_ip_tracker_source_objects",
    "Objects of a kind currently held from a cluster (in the index, or in the agent's policy engine).",
    ["cluster", "kind"],
)
