"""Resolve GKE cluster names to API server connection details with the GKE API (``GetCluster``).

For each configured cluster the discovery reads the endpoint and CA from the GKE API, then asks
the cluster itself for its id: when the ``kube-system`` namespace carries the label
``cluster.clusterset.k8s.io`` (the ClusterSet / About API convention for a cluster's id), its
value is the cluster id; otherwise the id is ``gke_<project>_<location>_<name>``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import enum
import logging
import re
import ssl
from collections.abc import Iterable
from dataclasses import dataclass, field

import aiohttp
from google.api_core import exceptions as core_exceptions
from google.cloud import container_v1

from kube_ip_tracker.gke import metrics
from kube_ip_tracker.gke.names import GkeClusterName
from kube_ip_tracker.model import ClusterSpec, TokenProvider

log = logging.getLogger(__name__)

CLUSTER_ID_LABEL = "cluster.clusterset.k8s.io"
_LABEL_VALUE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$")
_PEM_CERT = b"-----BEGIN CERTIFICATE-----"


class EndpointKind(enum.Enum):
    """Which control plane endpoint of a GKE cluster to connect to."""

    IP = "ip"  # cluster.endpoint (public IP, or the private one for private-only clusters)
    PRIVATE = "private"  # privateClusterConfig.privateEndpoint
    DNS = "dns"  # controlPlaneEndpointsConfig.dnsEndpointConfig.endpoint (publicly trusted certificate)


class DiscoveryError(Exception):
    """The GKE API answered, but the cluster cannot be used as it is (not RUNNING, no endpoint, bad CA)."""

    def __init__(self, name: GkeClusterName, message: str, *, status: str = "") -> None:
        super().__init__(f"GKE cluster {name}: {message}")
        self.name = name
        self.status = status


@dataclass
class FetchResult:
    """Outcome of one discovery pass: usable specs, clusters not RUNNING, and clusters whose fetch failed."""

    specs: dict[GkeClusterName, ClusterSpec] = field(default_factory=dict)
    not_running: dict[GkeClusterName, str] = field(default_factory=dict)
    errors: dict[GkeClusterName, Exception] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        """Every cluster was fetched and is RUNNING."""
        return not self.not_running and not self.errors


def decode_ca(name: GkeClusterName, encoded: str) -> bytes:
    """Decode ``masterAuth.clusterCaCertificate`` (base64 of a PEM bundle) into PEM bytes."""
    if not encoded:
        raise DiscoveryError(name, "masterAuth.clusterCaCertificate is empty")
    try:
        pem = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise DiscoveryError(name, f"masterAuth.clusterCaCertificate is not valid base64: {exc}") from exc
    if _PEM_CERT not in pem:
        raise DiscoveryError(name, "masterAuth.clusterCaCertificate does not hold a PEM certificate")
    return pem


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


class ClusterIdResolver:
    """Reads the ``cluster.clusterset.k8s.io`` label of a cluster's kube-system namespace.

    The last id read per cluster is kept: when the API server cannot be reached, the id it had
    before is used (or the default id, for a cluster never reached), so a flaky API server does not
    make the cluster change id.
    """

    def __init__(self, *, timeout: float = 10.0) -> None:
        self.timeout = timeout
        self._known: dict[GkeClusterName, str] = {}

    async def resolve(self, name: GkeClusterName, server: str, ca_pem: bytes | None, token: str) -> str:
        """The cluster id: the kube-system label when set and valid, else the default id."""
        try:
            label = await self._read_label(server, ca_pem, token)
        except (aiohttp.ClientError, TimeoutError, ssl.SSLError, ValueError) as exc:
            fallback = self._known.get(name, name.default_cluster_id)
            log.warning(
                "Could not read namespace kube-system of GKE cluster %s at %s to find its id (%s); using %s",
                name,
                server,
                exc,
                fallback,
            )
            return fallback
        if label is None:
            cluster_id = name.default_cluster_id
        elif not _LABEL_VALUE.match(label):
            log.warning(
                "GKE cluster %s: label %s=%r on namespace kube-system is not a valid cluster id; using %s",
                name,
                CLUSTER_ID_LABEL,
                label,
                name.default_cluster_id,
            )
            cluster_id = name.default_cluster_id
        else:
            cluster_id = label
        self._known[name] = cluster_id
        return cluster_id

    async def _read_label(self, server: str, ca_pem: bytes | None, token: str) -> str | None:
        ctx = ssl.create_default_context(cadata=ca_pem.decode()) if ca_pem else ssl.create_default_context()
        timeout = aiohttp.ClientTimeout(total=self.timeout)
        headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.get(f"{server}/api/v1/namespaces/kube-system", headers=headers, ssl=ctx) as resp,
        ):
            if resp.status != 200:
                raise ValueError(f"HTTP {resp.status} reading namespace kube-system")
            body = await resp.json()
        labels = (body.get("metadata") or {}).get("labels") or {}
        value = labels.get(CLUSTER_ID_LABEL)
        return str(value) if value is not None else None


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
        id_resolver: ClusterIdResolver | None = None,
    ) -> None:
        self.client = client
        self.token_provider = token_provider
        self.endpoint = endpoint
        self.request_timeout = request_timeout
        self.id_resolver = id_resolver or ClusterIdResolver()
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
        names = list(names)
        outcomes = await asyncio.gather(*(self.fetch_one(n) for n in names), return_exceptions=True)
        result = FetchResult()
        for name, outcome in zip(names, outcomes, strict=True):
            if isinstance(outcome, ClusterSpec):
                result.specs[name] = outcome
            elif isinstance(outcome, DiscoveryError) and outcome.status:
                result.not_running[name] = outcome.status
            elif isinstance(outcome, Exception):
                if isinstance(outcome, core_exceptions.GoogleAPICallError):
                    code = outcome.grpc_status_code.name if outcome.grpc_status_code else str(outcome.code)
                    metrics.API_ERRORS.labels(code=code).inc()
                result.errors[name] = outcome
            else:  # BaseException (cancellation): do not swallow it
                raise outcome
        return result
