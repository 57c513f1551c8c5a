"""A local GKE API (``google.container.v1.ClusterManager``) for tests and demos.

google-cloud-container ships no servicer class, so the server registers a generic gRPC handler for
``GetCluster`` (and ``ListClusters``) that (de)serializes with the package's own message types.
Clusters are plain :class:`google.cloud.container_v1.Cluster` messages; tests change them, or make
a cluster's fetch fail with a gRPC status, between reconcile passes.

The server listens on loopback with gRPC *local* credentials, or with TLS when given a certificate
(then any client trusting it can connect, e.g. a separate tracker process pointed at it with
``--gke-api-endpoint`` and ``GRPC_DEFAULT_SSL_ROOTS_FILE_PATH``). Both carry call credentials: a
client sends its Google credentials' bearer token exactly as it would to the real API, and the
server records each token it saw.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from google.auth import credentials as ga_credentials
from google.auth import exceptions as ga_exceptions
from google.cloud import container_v1
from google.cloud.container_v1.services.cluster_manager.transports.grpc_asyncio import (
    ClusterManagerGrpcAsyncIOTransport,
)

SERVICE = "google.container.v1.ClusterManager"


class SequenceCredentials(ga_credentials.Credentials):
    """Google credentials whose refresh() hands out the next token of a list, valid for ``lifetime`` seconds.

    Running out of tokens raises RefreshError, like a revoked service account would.
    """

    def __init__(self, tokens: Sequence[str], lifetime: float = 3600.0) -> None:
        super().__init__()
        self._tokens = list(tokens)
        self.lifetime = lifetime
        self.refreshes = 0
        self._lock = threading.Lock()

    def refresh(self, request: object) -> None:
        with self._lock:
            if self.refreshes >= len(self._tokens):
                raise ga_exceptions.RefreshError(f"no token left after {self.refreshes} refreshes")
            self.token = self._tokens[self.refreshes]
            self.refreshes += 1
            now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
            self.expiry = now + dt.timedelta(seconds=self.lifetime)


def make_cluster(
    name: str,
    server: str,
    ca_pem: bytes | str | Path,
    *,
    location: str = "europe-west1",
    status: container_v1.Cluster.Status = container_v1.Cluster.Status.RUNNING,
    dns_endpoint: str = "",
) -> container_v1.Cluster:
    """A Cluster message as GKE returns it: endpoint without scheme, CA as base64 of the PEM.

    ``server`` may be an URL (``https://127.0.0.1:PORT``); ``ca_pem`` PEM bytes/text or a PEM file path.
    """
    if isinstance(ca_pem, Path):
        ca_pem = ca_pem.read_bytes()
    if isinstance(ca_pem, str):
        ca_pem = ca_pem.encode()
    cluster = container_v1.Cluster(
        name=name,
        location=location,
        endpoint=server.removeprefix("https://"),
        status=status,
        master_auth=container_v1.MasterAuth(cluster_ca_certificate=base64.b64encode(ca_pem).decode()),
    )
    if dns_endpoint:
        cluster.control_plane_endpoints_config.dns_endpoint_config.endpoint = dns_endpoint
    return cluster


@dataclass
class FakeClusterManager:
    """In-process ClusterManager server. Use ``async with FakeClusterManager() as gke:``."""

    clusters: dict[str, container_v1.Cluster] = field(default_factory=dict)  # by resource name
    errors: dict[str, tuple[grpc.StatusCode, str]] = field(default_factory=dict)  # by resource name
    requests: list[str] = field(default_factory=list)
    tokens_seen: list[str] = field(default_factory=list)
    port: int = 0
    tls: tuple[bytes, bytes] | None = None  # (certificate chain PEM, private key PEM); None: local credentials
    _server: grpc.aio.Server | None = field(default=None, init=False, repr=False)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def put(self, project: str, location: str, cluster: container_v1.Cluster) -> str:
        """Add or replace a cluster; returns its resource name."""
        resource = f"projects/{project}/locations/{location}/clusters/{cluster.name}"
        cluster.location = location
        self.clusters[resource] = cluster
        return resource

    def delete(self, resource: str) -> None:
        self.clusters.pop(resource, None)

    def fail(self, resource: str, code: grpc.StatusCode, message: str = "") -> None:
        """Make GetCluster for this resource fail with ``code`` until :meth:`heal`."""
        self.errors[resource] = (code, message or f"fake GKE: {code.name}")

    def heal(self, resource: str | None = None) -> None:
        """Stop failing one resource (or all)."""
        if resource is None:
            self.errors.clear()
        else:
            self.errors.pop(resource, None)

    def _record_token(self, context: grpc.aio.ServicerContext) -> None:
        for key, value in context.invocation_metadata() or ():
            if key == "authorization":
                self.tokens_seen.append(str(value).removeprefix("Bearer "))

    async def _get_cluster(
        self, request: container_v1.GetClusterRequest, context: grpc.aio.ServicerContext
    ) -> container_v1.Cluster:
        self._record_token(context)
        name = request.name
        self.requests.append(name)
        if name in self.errors:
            code, message = self.errors[name]
            await context.abort(code, message)
        cluster = self.clusters.get(name)
        if cluster is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"Not found: {name}.")
        return cluster

    async def _list_clusters(
        self, request: container_v1.ListClustersRequest, context: grpc.aio.ServicerContext
    ) -> container_v1.ListClustersResponse:
        self._record_token(context)
        prefix = request.parent.rstrip("/") + "/clusters/"
        if request.parent.endswith("/locations/-"):
            prefix = request.parent[: -len("locations/-")]
        found = [c for r, c in sorted(self.clusters.items()) if r.startswith(prefix)]
        return container_v1.ListClustersResponse(clusters=found)

    async def start(self) -> str:
        """Start listening on 127.0.0.1; returns ``host:port``."""
        handlers = {
            "GetCluster": grpc.unary_unary_rpc_method_handler(
                self._get_cluster,
                request_deserializer=container_v1.GetClusterRequest.deserialize,
                response_serializer=container_v1.Cluster.serialize,
            ),
            "ListClusters": grpc.unary_unary_rpc_method_handler(
                self._list_clusters,
                request_deserializer=container_v1.ListClustersRequest.deserialize,
                response_serializer=container_v1.ListClustersResponse.serialize,
            ),
        }
        self._server = grpc.aio.server()
        self._server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, handlers)])
        if self.tls is not None:
            cert, key = self.tls
            server_credentials = grpc.ssl_server_credentials([(key, cert)])
        else:
            server_credentials = grpc.local_server_credentials()
        self.port = self._server.add_secure_port(f"127.0.0.1:{self.port}", server_credentials)
        await self._server.start()
        return self.address

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(grace=0)
            self._server = None

    def client(self, credentials: ga_credentials.Credentials) -> container_v1.ClusterManagerAsyncClient:
        """An async ClusterManager client for this server, authenticating with ``credentials``.

        The transport is the library's own gRPC asyncio transport (so call credentials, retries and
        (de)serialization are the real ones); the channel is loopback-local, or TLS trusting the
        server's own certificate.
        """
        channel_credentials = (
            grpc.ssl_channel_credentials(root_certificates=self.tls[0])
            if self.tls is not None
            else grpc.local_channel_credentials()
        )
        transport = ClusterManagerGrpcAsyncIOTransport(
            host=self.address, credentials=credentials, ssl_channel_credentials=channel_credentials
        )
        return container_v1.ClusterManagerAsyncClient(transport=transport)

    async def __aenter__(self) -> FakeClusterManager:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


async def serve_forever(clusters: Iterable[tuple[str, str, container_v1.Cluster]], port: int = 0) -> None:
    """Run a fake GKE API with the given (project, location, cluster) entries until cancelled."""
    async with FakeClusterManager(port=port) as gke:
        for project, location, cluster in clusters:
            gke.put(project, location, cluster)
        await asyncio.Event().wait()
