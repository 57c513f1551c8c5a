"""The local cluster fixture starts real, independent API servers."""

from __future__ import annotations

import re

import pytest
import yaml
from kubernetes_asyncio import client, watch

from kube_ip_tracker.testing import objects

pytestmark = pytest.mark.cluster


async def test_two_clusters_hold_their_own_pods(cluster_factory) -> None:
    clusters = cluster_factory(2)
    for i, cluster in enumerate(clusters):
        async with cluster.api_client() as api:
            await objects.create_namespace(api, "demo", {"team": f"t{i}"})
            await objects.create_node(api, "node-1", {"zone": "a"}, internal_ip=f"192.0.2.{i + 1}")
            await objects.create_pod(
                api,
                "demo",
                f"web-{i}",
                labels={"app": "web"},
                ips=[f"10.{i}.0.5", f"fd00::{i}:5"],
                ports=[("http", 80, "TCP")],
            )
    for i, cluster in enumerate(clusters):
        async with cluster.api_client() as api:
            pods = (await client.CoreV1Api(api).list_namespaced_pod("demo")).items
            assert [p.metadata.name for p in pods] == [f"web-{i}"]
            assert pods[0].status.pod_ip == f"10.{i}.0.5"
            assert [x.ip for x in pods[0].status.pod_ips] == [f"10.{i}.0.5", f"fd00::{i}:5"]
            assert pods[0].spec.containers[0].ports[0].name == "http"
            ns = await client.CoreV1Api(api).read_namespace("demo")
            assert ns.metadata.labels["team"] == f"t{i}"
    merged = yaml.safe_load(clusters.merged_kubeconfig.read_text())
    assert [c["name"] for c in merged["contexts"]] == ["cluster-1", "cluster-2"]


async def test_restart_apiserver_and_etcd_in_place(cluster_factory) -> None:
    (cluster,) = cluster_factory(1)
    async with cluster.api_client() as api:
        await objects.create_namespace(api, "kept")
    cluster.restart_etcd()
    cluster.restart_apiserver()
    async with cluster.api_client() as api:
        ns = await client.CoreV1Api(api).read_namespace("kept")
        assert ns.metadata.name == "kept"


async def test_expired_watch_returns_410_without_watch_cache(cluster_factory) -> None:
    (cluster,) = cluster_factory(1, watch_cache=False)
    async with cluster.api_client() as api:
        core = client.CoreV1Api(api)
        first = await core.list_namespace()
        for i in range(3):
            await objects.create_namespace(api, f"ns-{i}")
        cluster.compact_etcd()
        stream = watch.Watch().stream(
            core.list_namespace, resource_version=first.metadata.resource_version, timeout_seconds=5
        )
        with pytest.raises(client.ApiException) as err:
            async for _event in stream:
                pass
        assert err.value.status == 410


def test_cluster_whose_port_is_taken_starts_again_on_new_ports(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import socket

    from kube_ip_tracker.testing.clusters import (
        LocalCluster,
        _wait_ready_or_relaunch,
        find_etcd,
        find_kube_apiserver,
    )

    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        cluster = LocalCluster("squeezed", tmp_path / "squeezed", port=taken)
        apiserver, etcd = find_kube_apiserver(), find_etcd()
        try:
            cluster.launch(apiserver, etcd)
            _wait_ready_or_relaunch(cluster, apiserver, etcd)
            assert cluster.port != taken
            assert f":{cluster.port}" in cluster.kubeconfig.read_text()
        finally:
            cluster.stop()


def test_free_ports_are_below_the_ephemeral_range_and_distinct() -> None:
    from kube_ip_tracker.testing.clusters import _ephemeral_low, free_port

    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == 50
    assert all(p < _ephemeral_low() for p in ports)


@pytest.mark.every_apiserver
async def test_each_build_reports_its_version_and_labels_namespaces_as_that_version_does(cluster_factory) -> None:  # type: ignore[no-untyped-def]
    (cluster,) = cluster_factory(1)
    major, minor = cluster.apiserver_version
    async with cluster.api_client() as api:
        await objects.create_namespace(api, "named")
        labels = (await client.CoreV1Api(api).read_namespace("named")).metadata.labels or {}
        reported = (await client.VersionApi(api).get_code()).git_version
    # The module build is stamped with its release; Debian's GOPATH build says v0.0.0-master.
    assert reported.startswith(f"v{major}.{minor}.") or reported.startswith("v0.0.0")
    # 1.21+ sets the label the agent otherwise implies.
    assert (labels.get("kubernetes.io/metadata.name") == "named") is ((major, minor) >= (1, 21))


def test_default_build_is_a_current_release() -> None:
    from kube_ip_tracker.testing.clusters import apiserver_version, find_kube_apiserver

    assert apiserver_version(find_kube_apiserver("module")) >= (1, 34)


def test_apiserver_version_comes_from_the_binary_or_its_file_name(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from kube_ip_tracker.testing.clusters import ClusterStartError, apiserver_version, version_specific_apiserver_args

    def binary(name: str, says: str) -> str:
        path = tmp_path / name
        path.write_text(f"#!/bin/sh\necho 'Kubernetes {says}'\n")
        path.chmod(0o755)
        return str(path)

    assert apiserver_version(binary("kube-apiserver-v1.37.2", "v1.37.2")) == (1, 37)
    assert apiserver_version(binary("kube-apiserver-1.20.5+really1.20.2-1.1", "v0.0.0-master+faecb19")) == (1, 20)
    with pytest.raises(ClusterStartError, match="cannot tell its Kubernetes version"):
        apiserver_version(binary("kube-apiserver", "v0.0.0-master"))
    assert "--insecure-port=0" in version_specific_apiserver_args((1, 20))
    assert "--insecure-port=0" not in version_specific_apiserver_args((1, 37))


def test_unknown_build_name_is_refused(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from kube_ip_tracker.testing.clusters import ClusterStartError, find_kube_apiserver

    monkeypatch.delenv("KUBE_APISERVER", raising=False)
    monkeypatch.setenv("KIT_KUBE_APISERVER", "1.20")
    with pytest.raises(ClusterStartError, match=re.escape("KIT_KUBE_APISERVER='1.20': expected one of module, debian")):
        find_kube_apiserver()
