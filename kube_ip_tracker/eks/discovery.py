"""Resolve EKS cluster names to API server connection details with ``DescribeCluster`` (botocore).

For each configured cluster the discovery reads the endpoint, CA and status from the EKS API of the
cluster's region, makes the cluster's token provider (:mod:`kube_ip_tracker.eks.token`), then asks
the cluster itself for its id (the ``cluster.clusterset.k8s.io`` label of ``kube-system``, else
``eks_<region>_<name>``). botocore is synchronous: its calls run in worker threads. Credentials come
from botocore's default chain, shared by the EKS and STS clients of every region.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any

import botocore.session
from botocore.client import BaseClient
from botocore.config import Config
from botocore.exceptions import ClientError

from kube_ip_tracker.cloud import discovery as cloud_discovery
from kube_ip_tracker.cloud.discovery import ClusterIdResolver
from kube_ip_tracker.eks import metrics
from kube_ip_tracker.eks.names import EksClusterName
from kube_ip_tracker.eks.token import DEFAULT_REFRESH_INTERVAL, EksTokenProvider, sts_client
from kube_ip_tracker.model import ClusterSpec

log = logging.getLogger(__name__)

ACTIVE = "ACTIVE"
NOT_FOUND = "ResourceNotFoundException"
UNAUTHORIZED_HINT = (
    "the API server rejected the EKS token: it expired, was made for another cluster, or the tracker's "
    "IAM principal has no access entry (or aws-auth mapping) in this cluster"
)
CLIENT_CONFIG = Config(connect_timeout=10, read_timeout=30, retries={"max_attempts": 3, "mode": "standard"})

FetchResult = cloud_discovery.FetchResult[EksClusterName]


class DiscoveryError(cloud_discovery.DiscoveryError):
    """The EKS API answered, but the cluster cannot be used as it is (not ACTIVE, no endpoint, bad CA)."""

    provider = "EKS"


def is_not_found(exc: Exception) -> bool:
    """The EKS API says the cluster does not exist."""
    return isinstance(exc, ClientError) and exc.response.get("Error", {}).get("Code") == NOT_FOUND


def _count_api_error(exc: Exception) -> None:
    if isinstance(exc, ClientError):
        metrics.API_ERRORS.labels(code=str(exc.response.get("Error", {}).get("Code", "Unknown"))).inc()


class AwsClients:
    """botocore clients per service and region from one session (one credentials chain), made on first use."""

    def __init__(self, session: botocore.session.Session | None = None) -> None:
        self.session = session or botocore.session.get_session()
        self._clients: dict[tuple[str, str], BaseClient] = {}
        self._lock = threading.Lock()

    def _get(self, service: str, region: str, make: Callable[[], BaseClient]) -> BaseClient:
        with self._lock:  # botocore sessions are not safe for concurrent client creation
            client = self._clients.get((service, region))
            if client is None:
                client = self._clients[(service, region)] = make()
            return client

    def eks(self, region: str) -> BaseClient:
        return self._get("eks", region, lambda: self.session.create_client("eks", region, config=CLIENT_CONFIG))

    def sts(self, region: str) -> BaseClient:
        return self._get("sts", region, lambda: sts_client(self.session, region))

    def close(self) -> None:
        with self._lock:
            for client in self._clients.values():
                client.close()
            self._clients.clear()


class EksDiscovery:
    """Fetches clusters with DescribeCluster and turns them into :class:`ClusterSpec` records."""

    def __init__(
        self,
        clients: AwsClients,
        *,
        token_refresh_interval: float = DEFAULT_REFRESH_INTERVAL,
        concurrency: int = 8,
        id_resolver: ClusterIdResolver[EksClusterName] | None = None,
    ) -> None:
        self.clients = clients
        self.token_refresh_interval = token_refresh_interval
        self.id_resolver = id_resolver or ClusterIdResolver("EKS", unauthorized_hint=UNAUTHORIZED_HINT)
        self._tokens: dict[EksClusterName, EksTokenProvider] = {}
        self._semaphore = asyncio.Semaphore(concurrency)

    async def token_provider(self, name: EksClusterName) -> EksTokenProvider:
        """The cluster's token provider (one per cluster, kept across passes; the STS client is made off the loop)."""
        provider = self._tokens.get(name)
        if provider is None:
            sts = await asyncio.to_thread(self.clients.sts, name.region)
            provider = self._tokens.setdefault(
                name, EksTokenProvider(sts, name.name, refresh_interval=self.token_refresh_interval)
            )
        return provider

    async def describe(self, name: EksClusterName) -> dict[str, Any]:
        """The ``cluster`` object of DescribeCluster; raises botocore's ClientError/BotoCoreError."""
        async with self._semaphore:
            client = await asyncio.to_thread(self.clients.eks, name.region)
            answer = await asyncio.to_thread(client.describe_cluster, name=name.name)
        return dict(answer.get("cluster") or {})

    async def fetch_one(self, name: EksClusterName) -> ClusterSpec:
        """Fetch one cluster; raise :class:`DiscoveryError`, a botocore error or a token error when unusable."""
        cluster = await self.describe(name)
        status = str(cluster.get("status") or "UNKNOWN")
        if status != ACTIVE:
            raise DiscoveryError(name, f"status is {status}, not ACTIVE", status=status)
        server = str(cluster.get("endpoint") or "").rstrip("/")
        if not server:
            raise DiscoveryError(name, "DescribeCluster returned no endpoint")
        if not server.startswith("https://"):
            server = f"https://{server}"
        try:
            ca_pem = cloud_discovery.decode_ca(
                str((cluster.get("certificateAuthority") or {}).get("data") or ""), "certificateAuthority.data"
            )
        except ValueError as exc:
            raise DiscoveryError(name, str(exc)) from exc
        provider = await self.token_provider(name)
        cluster_id = await self.id_resolver.resolve(name, server, ca_pem, await provider())
        return ClusterSpec(cluster_id=cluster_id, server=server, ca_pem=ca_pem, token_provider=provider)

    async def fetch(self, names: Iterable[EksClusterName]) -> FetchResult:
        """Fetch every cluster concurrently; per-cluster failures are collected, never raised."""
        return await cloud_discovery.fetch_all(names, self.fetch_one, _count_api_error)

    async def close(self) -> None:
        """Close the botocore clients."""
        await asyncio.to_thread(self.clients.close)
