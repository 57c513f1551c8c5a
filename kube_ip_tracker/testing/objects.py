"""Create Namespaces, Nodes and Pods with IPs in a real API server (no scheduler or kubelet needed).

Pods are created with ``nodeName`` set, then their status is patched with ``podIP``/``podIPs`` and
phase Running, which is what a kubelet would report.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from kubernetes_asyncio import client


async def create_namespace(api: client.ApiClient, name: str, labels: Mapping[str, str] | None = None) -> Any:
    """Create a namespace with labels; returns the created V1Namespace."""
    body = client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels=dict(labels or {})))
    return await client.CoreV1Api(api).create_namespace(body)


async def label_namespace(api: client.ApiClient, name: str, labels: Mapping[str, str | None]) -> Any:
    """Merge-patch namespace labels (a value of None removes the label)."""
    return await client.CoreV1Api(api).patch_namespace(name, {"metadata": {"labels": dict(labels)}})


async def create_node(
    api: client.ApiClient, name: str, labels: Mapping[str, str] | None = None, internal_ip: str | None = None
) -> Any:
    """Create a Node object (with an InternalIP address in its status when given)."""
    core = client.CoreV1Api(api)
    node = await core.create_node(client.V1Node(metadata=client.V1ObjectMeta(name=name, labels=dict(labels or {}))))
    if internal_ip:
        status = {"status": {"addresses": [{"type": "InternalIP", "address": internal_ip}]}}
        node = await core.patch_node_status(name, status)
    return node


def _container_ports(ports: Sequence[tuple[str, int, str]]) -> list[client.V1ContainerPort]:
    return [client.V1ContainerPort(name=n or None, container_port=p, protocol=proto) for n, p, proto in ports]


async def create_pod(
    api: client.ApiClient,
    namespace: str,
    name: str,
    *,
    labels: Mapping[str, str] | None = None,
    node: str = "node-1",
    ips: Sequence[str] = (),
    ports: Sequence[tuple[str, int, str]] = (),
    host_network: bool = False,
    phase: str = "Running",
) -> Any:
    """Create a pod bound to ``node`` and report ``ips`` in its status, as a kubelet would."""
    core = client.CoreV1Api(api)
    container = client.V1Container(name="main", image="registry.invalid/app:1", ports=_container_ports(ports))
    pod = client.V1Pod(
        metadata=client.V1ObjectMeta(name=name, namespace=namespace, labels=dict(labels or {})),
        spec=client.V1PodSpec(containers=[container], node_name=node, host_network=host_network or None),
    )
    created = await core.create_namespaced_pod(namespace, pod)
    if ips or phase != "Pending":
        return await set_pod_status(api, namespace, name, ips=ips, phase=phase)
    return created


async def set_pod_status(
    api: client.ApiClient, namespace: str, name: str, *, ips: Sequence[str] = (), phase: str = "Running"
) -> Any:
    """Patch a pod's status: phase and IPs (an empty list clears them)."""
    status: dict[str, Any] = {"phase": phase, "podIPs": [{"ip": ip} for ip in ips]}
    status["podIP"] = ips[0] if ips else None
    return await client.CoreV1Api(api).patch_namespaced_pod_status(name, namespace, {"status": status})


async def label_pod(api: client.ApiClient, namespace: str, name: str, labels: Mapping[str, str | None]) -> Any:
    """Merge-patch pod labels (a value of None removes the label)."""
    return await client.CoreV1Api(api).patch_namespaced_pod(name, namespace, {"metadata": {"labels": dict(labels)}})


async def delete_pod(api: client.ApiClient, namespace: str, name: str) -> None:
    """Delete a pod immediately (grace period 0: there is no kubelet to finish it)."""
    await client.CoreV1Api(api).delete_namespaced_pod(name, namespace, grace_period_seconds=0)


async def delete_namespace(api: client.ApiClient, name: str) -> None:
    """Delete a namespace (without a controller-manager its content is not garbage-collected)."""
    await client.CoreV1Api(api).delete_namespace(name)


# ---- ClusterNetworkPolicy / AdminNetworkPolicy / BaselineAdminNetworkPolicy (cluster-scoped CRDs) ----

POLICY_GROUP = "policy.networking.k8s.io"
CLUSTER_POLICY_KINDS = {  # kind -> (version, plural)
    "ClusterNetworkPolicy": ("v1alpha2", "clusternetworkpolicies"),
    "AdminNetworkPolicy": ("v1alpha1", "adminnetworkpolicies"),
    "BaselineAdminNetworkPolicy": ("v1alpha1", "baselineadminnetworkpolicies"),
}


async def apply_cluster_policy(api: client.ApiClient, obj: Mapping[str, Any], dry_run: bool = False) -> Any:
    """Create the cluster-scoped policy ``obj`` (its ``kind`` picks the CRD), or replace it if it exists."""
    version, plural = CLUSTER_POLICY_KINDS[str(obj["kind"])]
    custom = client.CustomObjectsApi(api)
    body = dict(obj)
    extra = {"dry_run": "All"} if dry_run else {}
    try:
        return await custom.create_cluster_custom_object(POLICY_GROUP, version, plural, body, **extra)
    except client.ApiException as exc:
        if exc.status != 409:
            raise
    name = obj["metadata"]["name"]
    current = await custom.get_cluster_custom_object(POLICY_GROUP, version, plural, name)
    body = {**body, "metadata": {**body["metadata"], "resourceVersion": current["metadata"]["resourceVersion"]}}
    return await custom.replace_cluster_custom_object(POLICY_GROUP, version, plural, name, body, **extra)


async def delete_cluster_policy(api: client.ApiClient, kind: str, name: str) -> None:
    """Delete a cluster-scoped policy (gone already is fine)."""
    version, plural = CLUSTER_POLICY_KINDS[kind]
    try:
        await client.CustomObjectsApi(api).delete_cluster_custom_object(POLICY_GROUP, version, plural, name)
    except client.ApiException as exc:
        if exc.status != 404:
            raise
