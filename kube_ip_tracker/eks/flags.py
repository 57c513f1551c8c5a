"""Command-line flags of EKS discovery and the wiring from flags to a running reconciler.

Like :mod:`kube_ip_tracker.gke.flags`: :func:`add_arguments`, then :func:`validate` after parsing
(a malformed name stops the program naming it), then :func:`create_reconciler`.
"""

from __future__ import annotations

import argparse
import asyncio

import botocore.session
from botocore.exceptions import BotoCoreError

from kube_ip_tracker.cloud import flags as cloud_flags
from kube_ip_tracker.cloud.reconcile import ClusterSupervisorLike, Reconciler
from kube_ip_tracker.durations import parse_duration
from kube_ip_tracker.eks.discovery import AwsClients, EksDiscovery
from kube_ip_tracker.eks.names import EksClusterName, parse_cluster_names
from kube_ip_tracker.eks.reconcile import EKS
from kube_ip_tracker.eks.token import DEFAULT_REFRESH_INTERVAL, TOKEN_LIFETIME


class EksConfigError(RuntimeError):
    """EKS clusters are configured but discovery cannot be set up (no AWS credentials)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the EKS flags and the shared ``--reconcile-interval`` / ``--cluster-removal-grace``."""
    group = parser.add_argument_group("EKS discovery (IRSA, EKS Pod Identity or other AWS credentials)")
    group.add_argument(
        "--aws-cluster-names",
        action="append",
        default=[],
        metavar="REGION/NAME[,...]",
        help="EKS clusters to watch, comma-separated 'REGION/NAME' entries (e.g. us-east-1/prod); may be repeated",
    )
    group.add_argument(
        "--aws-token-refresh-interval",
        type=parse_duration,
        default=DEFAULT_REFRESH_INTERVAL,
        metavar="DURATION",
        help="age at which a cluster's EKS token is replaced; API servers accept one for 15m (default 10m)",
    )
    cloud_flags.add_arguments(parser)


def cluster_names(args: argparse.Namespace) -> list[EksClusterName]:
    """The configured EKS clusters; raises ClusterNameError naming a malformed entry."""
    return parse_cluster_names(args.aws_cluster_names or [])


def validate(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Exit through ``parser.error`` when an EKS flag is malformed."""
    try:
        cluster_names(args)
    except ValueError as exc:
        parser.error(str(exc))
    if not 0 < args.aws_token_refresh_interval < TOKEN_LIFETIME:
        parser.error(
            f"--aws-token-refresh-interval must be positive and below the 15m an EKS token lasts, "
            f"got {args.aws_token_refresh_interval:g}s"
        )
    cloud_flags.validate(parser, args)


def build_reconciler(
    args: argparse.Namespace, supervisor: ClusterSupervisorLike, *, session: botocore.session.Session | None = None
) -> Reconciler[EksClusterName] | None:
    """A reconciler for the configured EKS clusters, or None when ``--aws-cluster-names`` is empty."""
    names = cluster_names(args)
    if not names:
        return None
    discovery = EksDiscovery(AwsClients(session), token_refresh_interval=args.aws_token_refresh_interval)
    return Reconciler(
        EKS, names, discovery, supervisor, interval=args.reconcile_interval, removal_grace=args.cluster_removal_grace
    )


def _session_with_credentials() -> botocore.session.Session:
    session = botocore.session.get_session()
    try:
        credentials = session.get_credentials()
    except BotoCoreError as exc:
        raise EksConfigError(f"--aws-cluster-names is set but the AWS credentials are unusable: {exc}") from None
    if credentials is None:
        raise EksConfigError(
            "--aws-cluster-names is set but no AWS credentials were found (botocore's default chain: "
            "environment, web identity token (IRSA), EKS Pod Identity, shared files, instance metadata)"
        )
    return session


async def create_reconciler(
    args: argparse.Namespace, supervisor: ClusterSupervisorLike
) -> Reconciler[EksClusterName] | None:
    """Like :func:`build_reconciler`, finding the credentials off the event loop.

    Raises :class:`EksConfigError` when EKS clusters are configured but no credentials can be found.
    """
    if not cluster_names(args):
        return None
    session = await asyncio.to_thread(_session_with_credentials)
    return build_reconciler(args, supervisor, session=session)
