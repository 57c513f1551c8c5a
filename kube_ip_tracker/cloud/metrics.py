"""Prometheus metrics of one provider's reconcile loop, named ``kube_ip_tracker_<provider>_...``."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import Counter, Gauge


@dataclass(frozen=True)
class ReconcileMetrics:
    """The reconcile loop's metrics of one provider."""

    reconciles: Counter
    clusters: Gauge
    backoff_seconds: Gauge
    last_success: Gauge


def reconcile_metrics(prefix: str, provider: str, names_flag: str, ready_status: str) -> ReconcileMetrics:
    """Register the metrics ``kube_ip_tracker_<prefix>_...`` (e.g. prefix ``gke``, provider ``GKE``)."""
    base = f"kube_ip_tracker_{prefix}"
    return ReconcileMetrics(
        reconciles=Counter(
            f"{base}_reconciles_total",
            f"{provider} reconcile passes, by result (ok, partial: some clusters failed or were not "
            f"{ready_status}, error).",
            ["result"],
        ),
        clusters=Gauge(
            f"{base}_clusters",
            f"{provider} clusters by state: configured (in {names_flag}), watched (handed to the supervisor).",
            ["state"],
        ),
        backoff_seconds=Gauge(
            f"{base}_reconcile_backoff_seconds",
            f"Delay before the next {provider} reconcile pass (the interval, or a shorter backoff after errors).",
        ),
        last_success=Gauge(
            f"{base}_last_successful_reconcile_timestamp_seconds",
            "Unix time of the last reconcile pass in which every configured cluster was fetched.",
        ),
    )
