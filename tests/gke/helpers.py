"""Names shared by the GKE tests; ``eventually`` waits for a condition (from the sources tests)."""

from __future__ import annotations

from kube_ip_tracker.gke.names import GkeClusterName
from kube_ip_tracker.testing.polling import eventually

__all__ = ["LOCATION", "PROJECT", "cid", "eventually", "gke_name"]

PROJECT, LOCATION = "my-project", "europe-west1"


def gke_name(name: str) -> GkeClusterName:
    return GkeClusterName(PROJECT, LOCATION, name)


def cid(name: str) -> str:
    """The default cluster id of GKE cluster ``name``."""
    return gke_name(name).default_cluster_id
