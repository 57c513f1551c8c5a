"""Informers against real API servers: changes reach the index, relists leave nothing stale, errors are reported."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from kubernetes_asyncio import client
from prometheus_client import REGISTRY

from kube_ip_tracker.kube import reflector
from kube_ip_tracker.kube.kubeconfig import api_client, static_specs
from kube_ip_tracker.kube.reflector import InformerOptions
from kube_ip_tracker.model import ClusterSpec, ClusterStatusRecord, Kind
from kube_ip_tracker.sources import kube
from kube_ip_tracker.sources.status import ClusterState
from kube_ip_tracker.sources.supervisor import ClusterSupervisor
from kube_ip_tracker.testing import objects
from kube_ip_tracker.testing.clusters import LocalCluster
from kube_ip_tracker.testing.polling import eventually
from kube_ip_tracker.testing.proxy import TcpProxy

from .recording import RecordingWriter

pytestmark = [pytest.mark.cluster, pytest.mark.every_apiserver]

# page_size=2: every list in these tests takes several pages (limit/continue).
FAST = InformerOptions(
    page_size=2,
    backoff_base=0.1,
    backoff_cap=1.0,
    watch_timeout=30,
    connect_timeout=2,
    request_timeout=10,
    watch_read_margin=5,
)


@pytest.fixture
async def writer() -> RecordingWriter:
    return RecordingWriter()


@pytest.fixture
async def supervisor(writer: RecordingWriter) -> AsyncIterator[ClusterSupervisor]:
    sup = ClusterSupervisor(writer, options=FAST)
    yield sup
    await sup.stop()


def kubeconfig_file(path: Path, cluster: LocalCluster, *, server: str | None = None, token: str | None = None) -> Path:
    data = cluster.kubeconfig_dict(token=token)
    if server:
        data["clusters"][0]["cluster"]["server"] = server  # type: ignore[index]
    path.write_text(yaml.safe_dump(data))
    return path


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def change_pod_ip(api: client.ApiClient, namespace: str, name: str, ip: str) -> None:
    """Replace the pod's IPs (a strategic merge patch would add to the list)."""
    patch = [
        {"op": "replace", "path": "/status/podIP", "value": ip},
        {"op": "replace", "path": "/status/podIPs", "value": [{"ip": ip}]},
    ]
    await client.CoreV1Api(api).patch_namespaced_pod_status(name, namespace, patch)


async def kube_system_uid(cluster: LocalCluster) -> str:
    async with cluster.api_client() as api:
        return (await client.CoreV1Api(api).read_namespace("kube-system")).metadata.uid


async def test_two_clusters_pod_lifecycle_reaches_index(cluster_factory, writer, supervisor) -> None:  # type: ignore[no-untyped-def]
    clusters = cluster_factory(2)
    async with clusters[0].api_client() as api:  # exists before the informers start: comes from the list
        await objects.create_namespace(api, "demo", {"team": "t0"})
        await objects.create_pod(api, "demo", "early", labels={"app": "early"}, ips=["10.0.9.9"])
    for spec in static_specs([clusters.merged_kubeconfig]):
        await supervisor.ensure(spec)
    assert await supervisor.wait_synced(["cluster-1", "cluster-2"], 20) == set()
    for cluster in clusters:
        status = writer.status[cluster.name]
        assert (status.connected, status.synced, status.last_error) == (True, True, "")
        assert status.kube_system_uid == await kube_system_uid(cluster)
    assert writer.pod("cluster-1", "demo", "early").ips == ("10.0.9.9",)

    for i, cluster in enumerate(clusters):
        c = cluster.name
        async with cluster.api_client() as api:
            if i == 1:
                await objects.create_namespace(api, "demo", {"team": "t1"})
            await objects.create_node(api, "node-1", {"zone": "a"}, internal_ip=f"192.0.2.{i + 1}")
            await objects.create_pod(
                api, "demo", "web", labels={"app": "web"}, ips=[f"10.{i}.0.1"], ports=[("http", 8080, "TCP")]
            )
            await eventually(lambda c=c: writer.pod(c, "demo", "web") is not None, f"{c}: web added")
            pod = writer.pod(c, "demo", "web")
            assert pod.node == "node-1" and pod.ports[0].port == 8080 and pod.ports[0].protocol == "TCP"
            await eventually(
                lambda c=c, i=i: getattr(writer.node(c, "node-1"), "internal_ips", ()) == (f"192.0.2.{i + 1}",),
                f"{c}: node",
            )

            await objects.label_pod(api, "demo", "web", {"app": "web2"})
            await eventually(lambda c=c: writer.pod(c, "demo", "web").labels == {"app": "web2"}, f"{c}: relabelled")

            await change_pod_ip(api, "demo", "web", f"10.{i}.0.2")
            await eventually(lambda c=c, i=i: writer.pod(c, "demo", "web").ips == (f"10.{i}.0.2",), f"{c}: new IP")

            # Moving to another node means deleting and recreating (nodeName is immutable).
            await objects.delete_pod(api, "demo", "web")
            await objects.create_pod(api, "demo", "web", labels={"app": "web2"}, node="node-2", ips=[f"10.{i}.0.3"])
            await eventually(lambda c=c: getattr(writer.pod(c, "demo", "web"), "node", "") == "node-2", f"{c}: moved")

            await objects.delete_pod(api, "demo", "web")
            await eventually(lambda c=c: writer.pod(c, "demo", "web") is None, f"{c}: deleted")

    # Pods that must not be indexed; a later sentinel proves their events were processed.
    async with clusters[1].api_client() as api:
        await objects.create_pod(api, "demo", "hostnet", ips=["192.0.2.2"], host_network=True)
        await objects.create_pod(api, "demo", "done", ips=["10.1.1.1"], phase="Succeeded")
        await objects.create_pod(api, "demo", "pending", phase="Pending")
        await objects.create_pod(api, "demo", "finishing", ips=["10.1.1.2"])
        await eventually(lambda: writer.pod("cluster-2", "demo", "finishing") is not None, "finishing added")
        await objects.set_pod_status(api, "demo", "finishing", ips=["10.1.1.2"], phase="Failed")
        await objects.create_pod(api, "demo", "sentinel", ips=["10.1.1.3"])
        await eventually(lambda: writer.pod("cluster-2", "demo", "sentinel") is not None, "sentinel added")
    assert set(writer.pods("cluster-2")) == {("demo", "sentinel")}
    assert not any(
        c[0] == "upsert" and getattr(c[1], "name", "") in ("hostnet", "done", "pending") for c in writer.calls
    )

    # A namespace label change is exactly one namespace upsert.
    before = len(writer.calls)
    async with clusters[0].api_client() as api:
        await objects.label_namespace(api, "demo", {"team": "changed"})
        await eventually(
            lambda: (
                writer.namespace("cluster-1", "demo").labels
                == clusters[0].namespace_labels("demo", {"team": "changed"})
            ),
            "ns relabelled",
        )
        await objects.create_pod(api, "demo", "sentinel", ips=["10.0.1.3"])
        await eventually(lambda: writer.pod("cluster-1", "demo", "sentinel") is not None, "sentinel added")
    ns_calls = [c for c in writer.calls[before:] if c[0] == "upsert" and c[1].__class__.__name__ == "NamespaceRecord"]
    assert len(ns_calls) == 1
    assert writer.namespace("cluster-2", "demo").labels == clusters[1].namespace_labels("demo", {"team": "t1"})


async def test_expired_watch_relists_and_leaves_nothing_stale(cluster_factory, writer, supervisor, tmp_path) -> None:  # type: ignore[no-untyped-def]
    (cluster,) = cluster_factory(1, watch_cache=False)
    proxy = await TcpProxy(cluster.port).start()
    try:
        async with cluster.api_client() as api:
            await objects.create_namespace(api, "demo", {"v": "1"})
            for name in ("gone", "kept"):
                await objects.create_pod(api, "demo", name, labels={"v": "1"}, ips=[f"10.0.0.{len(name)}"])
        (spec,) = static_specs([kubeconfig_file(tmp_path / "kc", cluster, server=proxy.url)])
        await supervisor.ensure(spec)
        assert await supervisor.wait_synced([spec.cluster_id], 20) == set()
        assert set(writer.pods()) == {("demo", "gone"), ("demo", "kept")}
        expired_before = metric(
            "kube_ip_tracker_source_lists_total", cluster=spec.cluster_id, kind="pods", reason="expired"
        )

        proxy.cut()  # the watches are down while the cluster changes and etcd forgets the history
        await eventually(lambda: not writer.status[spec.cluster_id].connected, "disconnected reported")
        status = writer.status[spec.cluster_id]
        assert status.stale and status.last_error, status
        async with cluster.api_client() as api:
            await objects.delete_pod(api, "demo", "gone")
            await objects.create_pod(api, "demo", "new", ips=["10.0.0.99"])
            await objects.label_pod(api, "demo", "kept", {"v": "2"})
            await objects.label_namespace(api, "demo", {"v": "2"})
            await objects.create_namespace(api, "extra")
            await client.CoreV1Api(api).delete_namespace("extra")
        cluster.compact_etcd()
        mark = len(writer.calls)
        proxy.restore()

        await eventually(lambda: set(writer.pods()) == {("demo", "kept"), ("demo", "new")}, "pods relisted", 30)
        await eventually(
            lambda: writer.namespace(spec.cluster_id, "demo").labels == cluster.namespace_labels("demo", {"v": "2"}),
            "namespace relisted",
        )
        assert writer.pod(spec.cluster_id, "demo", "kept").labels == {"v": "2"}
        assert (
            metric("kube_ip_tracker_source_lists_total", cluster=spec.cluster_id, kind="pods", reason="expired")
            > expired_before
        )
        assert ("replace", spec.cluster_id, Kind.POD, 2) in writer.calls[mark:]
        await eventually(lambda: writer.status[spec.cluster_id].connected, "reconnected")
        assert writer.status[spec.cluster_id].last_error == ""
    finally:
        await proxy.stop()


async def test_one_cluster_down_other_served(cluster_factory, writer, supervisor) -> None:  # type: ignore[no-untyped-def]
    clusters = cluster_factory(2)
    for spec in static_specs([clusters.merged_kubeconfig]):
        await supervisor.ensure(spec)
    assert await supervisor.wait_synced(["cluster-1", "cluster-2"], 20) == set()
    async with clusters[0].api_client() as api:
        await objects.create_namespace(api, "demo")
        await objects.create_pod(api, "demo", "p", ips=["10.0.0.1"])
    await eventually(lambda: writer.pod("cluster-1", "demo", "p") is not None, "cluster-1 pod")

    clusters[0].stop_apiserver()
    await eventually(lambda: not writer.status["cluster-1"].connected, "cluster-1 reported down")
    down = writer.status["cluster-1"]
    assert down.stale and down.synced and down.last_error
    assert writer.pod("cluster-1", "demo", "p") is not None  # last known data is kept
    async with clusters[1].api_client() as api:
        await objects.create_namespace(api, "demo")
        await objects.create_pod(api, "demo", "q", ips=["10.1.0.1"])
    await eventually(lambda: writer.pod("cluster-2", "demo", "q") is not None, "cluster-2 still served")
    assert writer.status["cluster-2"].connected

    clusters[0].start_apiserver()
    async with clusters[0].api_client() as api:
        await objects.create_pod(api, "demo", "after", ips=["10.0.0.2"])
    await eventually(lambda: writer.pod("cluster-1", "demo", "after") is not None, "cluster-1 back", 30)
    await eventually(lambda: writer.status["cluster-1"].connected, "cluster-1 reconnected")


async def test_bad_credentials_and_forbidden_are_reported(cluster_factory, writer, supervisor, tmp_path) -> None:  # type: ignore[no-untyped-def]
    (cluster,) = cluster_factory(1, authorization_mode="RBAC")
    cluster.add_token("limited-token", "limited")
    cluster.restart_apiserver()

    (bad,) = static_specs([kubeconfig_file(tmp_path / "bad", cluster, token="wrong-token")])
    await supervisor.ensure(bad)
    await eventually(
        lambda: bad.cluster_id in writer.status and "401" in writer.status[bad.cluster_id].last_error, "401 reported"
    )
    assert not writer.status[bad.cluster_id].connected
    await supervisor.remove(bad.cluster_id)

    async with cluster.api_client() as api:
        rbac = client.RbacAuthorizationV1Api(api)
        rule = client.V1PolicyRule(api_groups=[""], resources=["namespaces", "nodes"], verbs=["get", "list", "watch"])
        await rbac.create_cluster_role(client.V1ClusterRole(metadata=client.V1ObjectMeta(name="limited"), rules=[rule]))
        await rbac.create_cluster_role_binding(
            client.V1ClusterRoleBinding(
                metadata=client.V1ObjectMeta(name="limited"),
                role_ref=client.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="ClusterRole", name="limited"),
                subjects=[client.RbacV1Subject(kind="User", name="limited", api_group="rbac.authorization.k8s.io")],
            )
        )
        (spec,) = static_specs([kubeconfig_file(tmp_path / "limited", cluster, token="limited-token")])
        await supervisor.ensure(spec)
        await eventually(
            lambda: "forbidden (403)" in writer.status.get(spec.cluster_id, ClusterStatusRecord("")).last_error,
            "403 reported",
        )
        error = writer.status[spec.cluster_id].last_error
        assert "pods" in error and not writer.status[spec.cluster_id].synced
        await eventually(  # the allowed kinds still work
            lambda: writer.namespace(spec.cluster_id, "kube-system") is not None, "namespaces listed"
        )

        # Granting access lets the retrying informer finish the first list.
        all_three = {"apiGroups": [""], "resources": ["namespaces", "nodes", "pods"], "verbs": ["get", "list", "watch"]}
        await rbac.patch_cluster_role("limited", {"rules": [all_three]})
        assert await supervisor.wait_synced([spec.cluster_id], 20) == set()
        assert writer.status[spec.cluster_id].connected


async def test_token_provider_spec_and_exec_plugin_kubeconfig(cluster_factory, writer, supervisor, tmp_path) -> None:  # type: ignore[no-untyped-def]
    (cluster,) = cluster_factory(1)
    calls = 0

    async def token() -> str:
        nonlocal calls
        calls += 1
        return cluster.token

    spec = ClusterSpec("direct", server=cluster.server, ca_pem=cluster.ca_file.read_bytes(), token_provider=token)
    await supervisor.ensure(spec)
    assert await supervisor.wait_synced(["direct"], 20) == set()
    assert calls >= 4  # kube-system read, three lists (and watches): every request asks for the token
    assert writer.status["direct"].kube_system_uid == await kube_system_uid(cluster)

    # A kubeconfig user with an exec credential plugin: run once, its token cached until it expires.
    runs = tmp_path / "runs"
    plugin = tmp_path / "plugin.sh"
    credential = {
        "apiVersion": "client.authentication.k8s.io/v1beta1",
        "kind": "ExecCredential",
        "status": {"token": cluster.token, "expirationTimestamp": "2099-01-01T00:00:00Z"},
    }
    plugin.write_text(f"#!/bin/sh\necho run >> {runs}\necho '{json.dumps(credential)}'\n")
    plugin.chmod(0o755)
    data = cluster.kubeconfig_dict()
    data["contexts"][0]["name"] = "exec"  # type: ignore[index]
    data["current-context"] = "exec"
    data["users"][0]["user"] = {  # type: ignore[index]
        "exec": {"apiVersion": "client.authentication.k8s.io/v1beta1", "command": str(plugin)}
    }
    (tmp_path / "exec.yaml").write_text(yaml.safe_dump(data))
    (exec_spec,) = static_specs([tmp_path / "exec.yaml"])
    await supervisor.ensure(exec_spec)
    assert await supervisor.wait_synced(["exec"], 20) == set()
    assert writer.status["exec"].connected
    assert runs.read_text().count("run") == 1


async def test_supervisor_restart_remove_with_grace(cluster_factory, writer, supervisor) -> None:  # type: ignore[no-untyped-def]
    (cluster,) = cluster_factory(1)
    async with cluster.api_client() as api:
        await objects.create_namespace(api, "demo")
        await objects.create_pod(api, "demo", "p", ips=["10.0.0.1"])
    (spec,) = static_specs([cluster.kubeconfig])
    await supervisor.ensure(spec)
    await supervisor.ensure(spec)  # idempotent
    assert await supervisor.wait_synced([spec.cluster_id], 20) == set()
    assert supervisor.specs() == {spec.cluster_id: spec}

    await supervisor.ensure(spec, restart=True)
    assert writer.status[spec.cluster_id].synced  # data is kept across a restart
    assert writer.pod(spec.cluster_id, "demo", "p") is not None
    await eventually(lambda: writer.status[spec.cluster_id].connected, "restarted")

    await supervisor.remove(spec.cluster_id, grace_seconds=0.5)
    assert supervisor.specs() == {}
    assert writer.status[spec.cluster_id].stale and writer.pod(spec.cluster_id, "demo", "p") is not None
    await eventually(lambda: writer.pod(spec.cluster_id, "demo", "p") is None, "purged after grace", 5)
    assert ("remove_cluster", spec.cluster_id) in writer.calls

    # Configured again within the grace period: the purge is cancelled.
    await supervisor.ensure(spec)
    assert await supervisor.wait_synced([spec.cluster_id], 20) == set()
    await supervisor.remove(spec.cluster_id, grace_seconds=0.3)
    await supervisor.ensure(spec)
    await asyncio.sleep(0.6)
    assert writer.calls.count(("remove_cluster", spec.cluster_id)) == 1
    assert writer.pod(spec.cluster_id, "demo", "p") is not None


async def test_frozen_api_server_is_detected_by_the_probe(cluster_factory, writer) -> None:  # type: ignore[no-untyped-def]
    (cluster,) = cluster_factory(1)
    options = replace(FAST, probe_interval=0.3, probe_timeout=1.0, probe_failures_to_reconnect=3)
    sup = ClusterSupervisor(writer, options=options)
    try:
        (spec,) = static_specs([cluster.kubeconfig])
        await sup.ensure(spec)
        assert await sup.wait_synced([spec.cluster_id], 20) == set()
        cluster.freeze_apiserver()
        try:
            await eventually(lambda: not writer.status[spec.cluster_id].connected, "frozen server reported", 10)
            assert "liveness probe" in writer.status[spec.cluster_id].last_error
            assert writer.status[spec.cluster_id].stale
        finally:
            cluster.thaw_apiserver()
        async with cluster.api_client() as api:
            await objects.create_namespace(api, "demo")
            await objects.create_pod(api, "demo", "after-thaw", ips=["10.0.0.5"])
        await eventually(lambda: writer.pod(spec.cluster_id, "demo", "after-thaw") is not None, "pod after thaw", 30)
        await eventually(lambda: writer.status[spec.cluster_id].connected, "connected after thaw")
    finally:
        await sup.stop()


async def test_new_token_is_used_for_new_requests_while_watches_stay_open(cluster_factory, writer) -> None:  # type: ignore[no-untyped-def]
    (cluster,) = cluster_factory(1)
    current = cluster.token

    async def token() -> str:
        return current

    options = replace(FAST, probe_interval=0.3, probe_failures_to_reconnect=1000)
    sup = ClusterSupervisor(writer, options=options)
    try:
        spec = ClusterSpec("direct", server=cluster.server, ca_pem=cluster.ca_file.read_bytes(), token_provider=token)
        before = metric("kube_ip_tracker_source_watches_total", cluster="direct", kind="pods")
        await sup.ensure(spec)
        assert await sup.wait_synced(["direct"], 20) == set()
        watches = before + 1
        await eventually(
            lambda: metric("kube_ip_tracker_source_watches_total", cluster="direct", kind="pods") == watches,
            "pods watch open",
        )
        current = "revoked-token"  # every new request now carries a token the API server rejects...
        await eventually(lambda: "401" in writer.status["direct"].last_error, "probe with the new token refused")
        async with cluster.api_client() as api:  # ...while the watches opened before keep delivering
            await objects.create_namespace(api, "demo")
            await objects.create_pod(api, "demo", "p", ips=["10.0.0.1"])
        await eventually(lambda: writer.pod("direct", "demo", "p") is not None, "event on the open watch")
        assert metric("kube_ip_tracker_source_watches_total", cluster="direct", kind="pods") == watches
        current = cluster.token
        await eventually(lambda: writer.status["direct"].connected, "accepted again")
    finally:
        await sup.stop()


async def test_paginated_list_restarts_when_continue_token_expires(cluster_factory, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    (cluster,) = cluster_factory(1, watch_cache=False)
    async with cluster.api_client() as api:
        await objects.create_namespace(api, "demo")
        for i in range(5):
            await objects.create_pod(api, "demo", f"p{i}", ips=[f"10.0.0.{i + 1}"])
    requests: list[str | None] = []
    real_open = reflector.open_request

    async def open_and_compact(api, resource, client_timeout, params):  # type: ignore[no-untyped-def]
        requests.append(params.get("continue"))
        if len(requests) == 2:  # the first page's snapshot is compacted away: its continue token expires
            async with cluster.api_client() as admin:
                await objects.create_namespace(admin, "bump")
            cluster.compact_etcd()
        return await real_open(api, resource, client_timeout, params)

    monkeypatch.setattr(reflector, "open_request", open_and_compact)
    writer = RecordingWriter()
    (spec,) = static_specs([cluster.kubeconfig])
    async with api_client(spec) as api:
        state = ClusterState(spec.cluster_id, writer)
        informer = kube.informer(spec.cluster_id, Kind.POD, api, writer, state, replace(FAST, page_size=2))
        await informer.list("initial")
    assert requests[0] is None and requests[1] is not None
    assert requests.count(None) == 2, requests  # listed again from the start after the 410
    assert len(requests) == 2 + 3  # the failed continue, then three pages of 2+2+1
    assert set(writer.pods()) == {("demo", f"p{i}") for i in range(5)}
    assert informer.resource_version


async def test_etcd_and_apiserver_restarts_are_survived(cluster_factory, writer, supervisor) -> None:  # type: ignore[no-untyped-def]
    (cluster,) = cluster_factory(1)
    (spec,) = static_specs([cluster.kubeconfig])
    await supervisor.ensure(spec)
    assert await supervisor.wait_synced([spec.cluster_id], 20) == set()
    async with cluster.api_client() as api:
        await objects.create_namespace(api, "demo")
    for restart, name in ((cluster.restart_etcd, "after-etcd"), (cluster.restart_apiserver, "after-apiserver")):
        await asyncio.to_thread(restart)
        async with cluster.api_client() as api:
            await objects.create_pod(api, "demo", name, ips=["10.0.0.1" if name == "after-etcd" else "10.0.0.2"])
        await eventually(lambda name=name: writer.pod(spec.cluster_id, "demo", name) is not None, name, 30)
    await eventually(lambda: writer.status[spec.cluster_id].connected, "connected")
    assert set(writer.pods(spec.cluster_id)) == {("demo", "after-etcd"), ("demo", "after-apiserver")}
