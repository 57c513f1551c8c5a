"""Shared fixtures: real local clusters (etcd + kube-apiserver) and root detection."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from kube_ip_tracker.testing.clusters import ClusterSet, other_builds, selected_build, start_clusters

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


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Tests marked ``every_apiserver`` run against each kube-apiserver build; the unselected ones are slow.

    So the default run starts only the selected build ($KIT_KUBE_APISERVER, default ``module``: 1.3x
    from Go modules) and ``-m slow`` adds the others (``debian``: 1.20).
    """
    if metafunc.definition.get_closest_marker("every_apiserver") and "cluster_factory" in metafunc.fixturenames:
        builds = [selected_build(), *(pytest.param(b, marks=pytest.mark.slow) for b in other_builds())]
        metafunc.parametrize("apiserver_build", builds, indirect=True)


@pytest.fixture
def apiserver_build(request: pytest.FixtureRequest) -> str | None:
    """The kube-apiserver build :func:`cluster_factory` starts (None: $KUBE_APISERVER or $KIT_KUBE_APISERVER)."""
    return getattr(request, "param", None)


@pytest.fixture
def cluster_factory(tmp_path_factory: pytest.TempPathFactory, apiserver_build: str | None) -> Iterator[ClusterFactory]:
    """Start real local clusters: ``cluster_factory(2, watch_cache=False)``; all are stopped at the end.

    Keyword arguments go to :func:`kube_ip_tracker.testing.clusters.start_clusters`
    (names, watch_cache, authorization_mode, extra_tokens, build); ``build`` defaults to the
    ``apiserver_build`` fixture's.
    """
    started: list[ClusterSet] = []

    def start(count: int = 2, **kwargs: object) -> ClusterSet:
        base: Path = tmp_path_factory.mktemp("clusters")
        kwargs.setdefault("build", apiserver_build)
        clusters = start_clusters(count, base, **kwargs)  # type: ignore[arg-type]
        started.append(clusters)
        return clusters

    yield start
    for clusters in started:
        clusters.stop()
