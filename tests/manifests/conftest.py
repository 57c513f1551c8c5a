"""Fixtures of tests/manifests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from kube_ip_tracker.testing.clusters import ClusterSet, LocalCluster, start_clusters

from .kube_api import AGENT_SA, TRACKER_SA


@pytest.fixture(scope="module")
def rbac_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """One cluster with RBAC authorization and token users for both service accounts."""
    clusters: ClusterSet = start_clusters(
        1,
        tmp_path_factory.mktemp("rbac"),
        names=["rbac"],
        authorization_mode="RBAC",
        token_users=[TRACKER_SA, AGENT_SA],
    )
    try:
        yield clusters[0]
    finally:
        clusters.stop()
