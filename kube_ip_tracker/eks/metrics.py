"""Prometheus metrics of EKS discovery, token generation and the reconcile loop."""

from __future__ import annotations

from prometheus_client import Counter

from kube_ip_tracker.cloud.metrics import reconcile_metrics

RECONCILE = reconcile_metrics("eks", "EKS", "--aws-cluster-names", "ACTIVE")
API_ERRORS = Counter(
    "kube_ip_tracker_eks_api_errors_total",
    "Failed EKS DescribeCluster calls, by AWS error code.",
    ["code"],
)
TOKEN_REFRESHES = Counter(
    "kube_ip_tracker_eks_token_refreshes_total",
    "EKS bearer tokens generated (presigned STS GetCallerIdentity), by result.",
    ["result"],
)
