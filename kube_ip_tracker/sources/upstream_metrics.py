"""Prometheus metrics of upstream trackers (hub-and-spoke): one label set per upstream or cluster."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

UPSTREAM_LIVE = Gauge(
    "kube_ip_tracker_upstream_live",
    "1 while the watch on the upstream tracker holds a current state (snapshot applied or resumed).",
    ["upstream"],
)
UPSTREAM_CLUSTERS = Gauge(
    "kube_ip_tracker_upstream_clusters",
    "Clusters this tracker serves from the upstream tracker.",
    ["upstream"],
)
UPSTREAM_SKIPPED = Gauge(
    "kube_ip_tracker_upstream_skipped_clusters",
    "Clusters the upstream tracker sends that are taken from elsewhere (watched directly, or another upstream).",
    ["upstream"],
)
UPSTREAM_EXCLUDED = Gauge(
    "kube_ip_tracker_upstream_excluded_clusters",
    "Clusters this tracker asks the upstream tracker not to send (watched directly here: exclude_clusters).",
    ["upstream"],
)
UPSTREAM_RESYNCS = Counter(
    "kube_ip_tracker_upstream_resyncs_total",
    "Full resyncs asked of an upstream tracker: a cluster it had was released by its owner, or the set of "
    "clusters watched directly (its exclude_clusters) changed.",
    ["upstream"],
)
UPSTREAM_LOOPS = Counter(
    "kube_ip_tracker_upstream_loop_drops_total",
    "Cluster statuses dropped because their path already held this tracker's id (a loop).",
    ["upstream"],
)
CLUSTER_STALE = Gauge(
    "kube_ip_tracker_upstream_cluster_stale",
    "1 while a cluster learned from an upstream tracker is served from last-known data.",
    ["cluster"],
)
