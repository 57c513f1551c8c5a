"""Command-line flags of GKE discovery and the wiring from flags to a running reconciler.

The CLI calls :func:`add_arguments` on its parser, then :func:`validate` after parsing (bad
cluster names stop the program with a message naming them), then :func:`create_reconciler`
with its cluster supervisor and runs the returned reconciler's ``run()`` as a task.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from google.api_core.client_options import ClientOptions
from google.auth import credentials as ga_credentials
from google.auth import exceptions as ga_exceptions
from google.cloud import container_v1

from kube_ip_tracker.cloud import flags as cloud_flags
from kube_ip_tracker.cloud.reconcile import ClusterSupervisorLike
from kube_ip_tracker.gke.auth import GoogleTokenProvider, default_credentials
from kube_ip_tracker.gke.discovery import EndpointKind, GkeDiscovery
from kube_ip_tracker.gke.names import GkeClusterName, parse_cluster_names
from kube_ip_tracker.gke.reconcile import GkeReconciler


class GkeConfigError(RuntimeError):
    """GKE clusters are configured but discovery cannot be set up (e.g. no application default credentials)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the GKE flags and the shared ``--reconcile-interval`` / ``--cluster-removal-grace``."""
    group = parser.add_argument_group("GKE discovery (Workload Identity / application default credentials)")
    group.add_argument(
        "--gcp-cluster-names",
        action="append",
        default=[],
        metavar="PROJECT/LOCATION/CLUSTER[,...]",
        help="GKE clusters to watch, comma-separated; may be repeated. With --gcp-project, "
        "'LOCATION/CLUSTER' works; with --gcp-project and --gcp-location, a bare 'CLUSTER' works.",
    )
    group.add_argument("--gcp-project", default=None, help="project for cluster entries that omit it")
    group.add_argument("--gcp-location", default=None, help="region or zone for cluster entries that omit it")
    group.add_argument(
        "--gcp-endpoint",
        choices=[k.value for k in EndpointKind],
        default=EndpointKind.IP.value,
        help="control plane endpoint to connect to: ip (the cluster endpoint, verified with the cluster CA), "
        "private (the private endpoint), dns (the DNS-based endpoint, publicly trusted certificate)",
    )
    group.add_argument(
        "--gke-api-endpoint",
        default=None,
        metavar="HOST[:PORT]",
        help="GKE API endpoint (default container.googleapis.com)",
    )
    cloud_flags.add_arguments(parser)


def cluster_names(args: argparse.Namespace) -> list[GkeClusterName]:
    """The configured GKE clusters; raises ClusterNameError naming a malformed entry."""
    return parse_cluster_names(args.gcp_cluster_names or [], args.gcp_project, args.gcp_location)


def validate(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Exit through ``parser.error`` when a GKE flag is malformed."""
    try:
        cluster_names(args)
    except ValueError as exc:
        parser.error(str(exc))
    cloud_flags.validate(parser, args)


def build_reconciler(
    args: argparse.Namespace,
    supervisor: ClusterSupervisorLike,
    *,
    credentials: ga_credentials.Credentials | None = None,
    client: container_v1.ClusterManagerAsyncClient | None = None,
) -> GkeReconciler | None:
    """A reconciler for the configured GKE clusters, or None when ``--gcp-cluster-names`` is empty.

    One credentials object (application default credentials unless given) serves the GKE API client
    and, through one token provider, every cluster's API server. Call it inside the running event loop.
    """
    names = cluster_names(args)
    if not names:
        return None
    if credentials is None:
        credentials, _ = default_credentials()
    if client is None:
        options: Any = ClientOptions(api_endpoint=args.gke_api_endpoint) if args.gke_api_endpoint else None
        client = container_v1.ClusterManagerAsyncClient(credentials=credentials, client_options=options)
    provider = GoogleTokenProvider(credentials)
    discovery = GkeDiscovery(client, provider, endpoint=EndpointKind(args.gcp_endpoint))
    return GkeReconciler(
        names,
        discovery,
        supervisor,
        interval=args.reconcile_interval,
        removal_grace=args.cluster_removal_grace,
    )


async def create_reconciler(args: argparse.Namespace, supervisor: ClusterSupervisorLike) -> GkeReconciler | None:
    """Like :func:`build_reconciler`, loading application default credentials off the event loop.

    Raises :class:`GkeConfigError` when GKE clusters are configured but no credentials can be found.
    """
    if not cluster_names(args):
        return None
    try:
        credentials, _ = await asyncio.to_thread(default_credentials)
    except ga_exceptions.GoogleAuthError as exc:
        raise GkeConfigError(
            f"--gcp-cluster-names is set but Google application default credentials are unusable: {exc}"
        ) from None
    return build_reconciler(args, supervisor, credentials=credentials)
