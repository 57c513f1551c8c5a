"""Prometheus metrics of GKE discovery, token refresh and the reconcile loop."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

RECONCILES = Counter(
    "kube_ip_tracker_gke_reconciles_total",
    "GKE reconcile passes, by result (ok, partial: some clusters failed or were not RUNNING, error).",
    ["result"],
)
API_ERRORS = Counter(
    "kube_ip_tracker_gke_api_errors_total",
    "Failed GKE API GetCluster calls, by gRPC status code.",
    ["code"],
)
CLUSTERS = Gauge(
    "kube_ip_tracker_gke_clusters",
    "GKE clusters by state: configured (in --gcp-cluster-names), watched (handed to the supervisor).",
    ["state"],
)
BACKOFF_SECONDS = Gauge(
    "kube_ip_tracker_gke_reconcile_backoff_seconds",
    "Delay before the next GKE reconcile pass (the interval, or a shorter backoff after errors).",
)
LAST_SUCCESS = Gauge(
    "kube_ip_tracker_gke_last_successful_reconcile_timestamp_seconds",
    "Unix time of the last reconcile pass in which every configured cluster was fetched.",
)
TOKEN_REFRESHES = Counter(
    "kube_ip_tracker_gke_token_refreshes_total",
    "Refreshes of the Google access token used for the GKE API and cluster API servers, by result.",
    ["result"],
)
TOKEN_EXPIRY = Gauge(
    "kube_ip_tracker_gke_token_expiry_timestamp_seconds",
    "Unix time at which the current Google access token expires.",
)
