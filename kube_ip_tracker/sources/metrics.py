"""Prometheus metrics of the Kubernetes sources (one label set per cluster and kind)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

from kube_ip_tracker.kube.metrics import BACKOFF, ERRORS, EVENTS, OBJECTS, RELISTS, WATCHES

CONNECTED = Gauge(
    "kube_ip_tracker_source_connected",
    "1 while every informer of the cluster holds a working connection.",
    ["cluster"],
)
SYNCED = Gauge(
    "kube_ip_tracker_source_synced",
    "1 once the cluster's Pods, Namespaces and Nodes have been listed completely.",
    ["cluster"],
)
CLUSTERS = Gauge(
    "kube_ip_tracker_source_clusters",
    "Clusters the supervisor runs informers for.",
)
KUBECONFIG_RELOADS = Counter(
    "kube_ip_tracker_source_kubeconfig_dir_reloads_total",
    "Changes seen in the --kubeconfig-dir directory (result: applied, invalid).",
    ["result"],
)

_PER_KIND = (EVENTS, RELISTS, ERRORS, WATCHES, OBJECTS, BACKOFF)
_PER_CLUSTER = (CONNECTED, SYNCED)


def forget_cluster(cluster: str) -> None:
    """Drop every series of a cluster that is no longer supervised."""
    for metric in _PER_KIND:
        for labels in list(metric._metrics):  # type: ignore[attr-defined]
            if labels and labels[0] == cluster:
                metric.remove(*labels)
    for metric in _PER_CLUSTER:
        try:
            metric.remove(cluster)
        except KeyError:
            pass
