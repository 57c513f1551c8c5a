"""Shared fixtures: real local clusters (etcd + kube-apiserver) and root detection."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from kube_ip_tracker.testing.clusters import ClusterSet, start_clusters

IS_ROOT = os.geteuid() == 0


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip tests marked `root` when not running as root."""
    if IS_ROOT:
        return
    skip = pytest.mark.skip(reason="needs root (network namespaces, netfilter)")
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip)


ClusterFactory = Callable[..., ClusterSet]


@pytest.fixture
def cluster_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterFactory]:
    """Start real local clusters: ``cluster_factory(2, watch_cache=False)``; all are stopped at the end.

    Keyword arguments go to :func:`kube_ip_tracker.testing.clusters.start_clusters`
    (names, watch_cache, authorization_mode, extra_tokens).
    """
    started: list[ClusterSet] = []

    def start(count: int = 2, **kwargs: object) -> ClusterSet:
        base: Path = tmp_path_factory.mktemp("clusters")
        clusters = start_clusters(count, base, **kwargs)  # type: ignore[arg-type]
        started.append(clusters)
        return clusters

    yield start
    for clusters in started:
        clusters.stop()
