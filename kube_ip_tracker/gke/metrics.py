"""Prometheus metrics of GKE discovery, token refresh and the reconcile loop."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

from kube_ip_tracker.cloud.metrics import reconcile_metrics

RECONCILE = reconcile_metrics("gke", "GKE", "--gcp-cluster-names", "RUNNING")
RECONCILES = RECONCILE.reconciles
CLUSTERS = RECONCILE.clusters
BACKOFF_SECONDS = RECONCILE.backoff_seconds
LAST_SUCCESS = RECONCILE.last_success
API_ERRORS = Counter(
    "kube_ip_tracker_gke_api_errors_total",
    "Failed GKE API GetCluster calls, by gRPC status code.",
    ["code"],
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
