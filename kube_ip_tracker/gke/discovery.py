"""Resolve GKE cluster names to API server connection details with the GKE API (``GetCluster``).

For each configured cluster the discovery reads the endpoint and CA from the GKE API, then asks
the cluster itself for its id (:class:`~kube_ip_tracker.cloud.discovery.ClusterIdResolver`): the
``cluster.clusterset.k8s.io`` label of its ``kube-system`` namespace, else
``gke_<project>_<location>_<name>``.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Iterable

from google.api_core import exceptions as core_exceptions
from google.cloud import container_v1

from kube_ip_tracker.cloud import discovery as cloud_discovery
from kube_ip_tracker.cloud.discovery import CLUSTER_ID_LABEL, ClusterIdResolver
from kube_ip_tracker.gke import metrics
from kube_ip_tracker.gke.names import GkeClusterName
from kube_ip_tracker.model import ClusterSpec, TokenProvider

log = logging.getLogger(__name__)

__all__ = ["CLUSTER_ID_LABEL", "ClusterIdResolver", "DiscoveryError", "EndpointKind", "FetchResult", "GkeDiscovery"]


class EndpointKind(enum.Enum):
    """Which control plane endpoint of a GKE cluster to connect to."""

    IP = "ip"  # cluster.endpoint (public IP, or the private one for private-only clusters)
    PRIVATE = "private"  # privateClusterConfig.privateEndpoint
    DNS = "dns"  # controlPlaneEndpointsConfig.dnsEndpointConfig.endpoint (publicly trusted certificate)


class DiscoveryError(cloud_discovery.DiscoveryError):
    """The GKE API answered, but the cluster cannot be used as it is (not RUNNING, no endpoint, bad CA)."""

    provider = "GKE"


FetchResult = cloud_discovery.FetchResult[GkeClusterName]


def decode_ca(name: GkeClusterName, encoded: str) -> bytes:
    """Decode ``masterAuth.clusterCaCertificate`` (base64 of a PEM bundle) into PEM bytes."""
    try:
        return cloud_discovery.decode_ca(encoded, "masterAuth.clusterCaCertificate")
    except ValueError as exc:
        raise DiscoveryError(name, str(exc)) from exc


def server_url(name: GkeClusterName, cluster: container_v1.Cluster, kind: EndpointKind) -> tuple[str, bool]:
    """The ``https://`` URL of the chosen endpoint, and whether the cluster CA verifies it."""
    if kind is EndpointKind.DNS:
        dns = cluster.control_plane_endpoints_config.dns_endpoint_config.endpoint
        if dns:
            return f"https://{dns}", False
        log.warning("GKE cluster %s has no DNS endpoint configured; using its IP endpoint", name)
    if kind is EndpointKind.PRIVATE:
        private = cluster.private_cluster_config.private_endpoint
        if private:
            return f"https://{private}", True
        log.warning("GKE cluster %s has no private endpoint; using its endpoint", name)
    if not cluster.endpoint:
        raise DiscoveryError(name, "the GKE API returned no endpoint")
    endpoint = cluster.endpoint
    if endpoint.startswith("https://"):
        return endpoint, True
    if endpoint.count(":") > 1 and not endpoint.startswith("["):
        endpoint = f"[{endpoint}]"  # a bare IPv6 address
    return f"https://{endpoint}", True


class GkeDiscovery:
    """Fetches cluster details from the GKE API and turns them into :class:`ClusterSpec` records."""

    def __init__(
        self,
        client: container_v1.ClusterManagerAsyncClient,
        token_provider: TokenProvider,
        *,
        endpoint: EndpointKind = EndpointKind.IP,
        request_timeout: float = 30.0,
        concurrency: int = 8,
        id_resolver: ClusterIdResolver[GkeClusterName] | None = None,
    ) -> None:
        self.client = client
        self.token_provider = token_provider
        self.endpoint = endpoint
        self.request_timeout = request_timeout
        self.id_resolver = id_resolver or ClusterIdResolver("GKE")
        self._semaphore = asyncio.Semaphore(concurrency)

    async def fetch_one(self, name: GkeClusterName) -> ClusterSpec:
        """Fetch one cluster; raise :class:`DiscoveryError` or a ``google.api_core`` error when unusable."""
        async with self._semaphore:
            cluster = await self.client.get_cluster(
                request=container_v1.GetClusterRequest(name=name.resource), retry=None, timeout=self.request_timeout
            )
        status = container_v1.Cluster.Status(cluster.status)
        if status != container_v1.Cluster.Status.RUNNING:
            raise DiscoveryError(name, f"status is {status.name}, not RUNNING", status=status.name)
        server, verify_with_ca = server_url(name, cluster, self.endpoint)
        ca_pem = decode_ca(name, cluster.master_auth.cluster_ca_certificate) if verify_with_ca else None
        token = await self.token_provider()
        cluster_id = await self.id_resolver.resolve(name, server, ca_pem, token)
        return ClusterSpec(cluster_id=cluster_id, server=server, ca_pem=ca_pem, token_provider=self.token_provider)

    async def close(self) -> None:
        """Close the GKE API client's channel."""
        await self.client.transport.close()

    async def fetch(self, names: Iterable[GkeClusterName]) -> FetchResult:
        """Fetch every cluster concurrently; per-cluster failures are collected, never raised."""
        return await cloud_discovery.fetch_all(names, self.fetch_one, _count_api_error)


def _count_api_error(exc: Exception) -> None:
    if isinstance(exc, core_exceptions.GoogleAPICallError):
        code = exc.grpc_status_code.name if exc.grpc_status_code else str(exc.code)
        metrics.API_ERRORS.labels(code=code).inc()
