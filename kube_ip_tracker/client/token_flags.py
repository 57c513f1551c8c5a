"""Command-line flags for a tracker client's service-account token, shared by the agent and the upstream source.

Usage::

    add_client_token_arguments(parser, prefix="upstream")     # --upstream-token-file, --upstream-token-cluster
    token = client_token_from_args(args, prefix="upstream", default_cluster=args.cluster_id)
    TrackerClient(target, sink, ClientOptions(token=token))
"""

from __future__ import annotations

import argparse
from pathlib import Path

from kube_ip_tracker.client.token import TOKEN_AUDIENCE, TokenOptions


def add_client_token_arguments(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup, prefix: str = "tracker", *, cluster_flag: bool = True
) -> None:
    """Add ``--{prefix}-token-file`` (and ``--{prefix}-token-cluster`` unless the program knows its cluster)."""
    parser.add_argument(
        f"--{prefix}-token-file",
        default=None,
        metavar="PATH",
        help=f"projected service-account token (audience {TOKEN_AUDIENCE}) sent to the {prefix} with every call; "
        "re-read when it changes (default: no token)",
    )
    if cluster_flag:
        parser.add_argument(
            f"--{prefix}-token-cluster",
            default=None,
            metavar="ID",
            help=f"id (as the {prefix} names it) of the cluster that issued --{prefix}-token-file "
            "(default --cluster-id)",
        )


def client_token_from_args(
    args: argparse.Namespace, prefix: str = "tracker", default_cluster: str | None = None
) -> TokenOptions | None:
    """TokenOptions from the flags, the file checked now; None without a token file.

    Raises ``ValueError`` naming the flag when the file cannot be read or no cluster id is known.
    """
    attr = prefix.replace("-", "_")
    path = getattr(args, f"{attr}_token_file", None)
    if not path:
        return None
    cluster = getattr(args, f"{attr}_token_cluster", None) or default_cluster or ""
    if not cluster.strip():
        raise ValueError(f"--{prefix}-token-file needs --{prefix}-token-cluster: the id of the cluster issuing it")
    options = TokenOptions(Path(path), cluster.strip())
    try:
        options.check()
    except ValueError as e:
        raise ValueError(f"--{prefix}-token-file: {e}") from e
    return options
