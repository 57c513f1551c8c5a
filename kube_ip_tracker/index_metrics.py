"""Prometheus metrics of the index. Labels carry cluster names and kinds only, never pod data."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

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
