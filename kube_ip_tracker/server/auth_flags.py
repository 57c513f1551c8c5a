"""The tracker's ``--client-auth`` flags: who may call the Tracker service.

Usage (the CLI does this)::

    add_client_auth_arguments(group)
    interceptors = client_auth_interceptors(args, lambda: supervisor.specs)   # ValueError if inconsistent
    TrackerServer(index, address, interceptors=interceptors, ...)

Modes: ``none`` (anyone who reaches the port), ``token`` (service-account tokens checked with
TokenReview, :mod:`.auth`), ``mtls`` (client certificates signed by ``--tls-client-ca-file``).
Without ``--client-auth`` the mode is ``mtls`` when ``--tls-client-ca-file`` is set, else ``none``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping

import grpc.aio

from kube_ip_tracker.flag_values import positive_int
from kube_ip_tracker.model import ClusterSpec
from kube_ip_tracker.server.auth import (
    DEFAULT_ALLOWED_SERVICE_ACCOUNTS,
    DEFAULT_CACHE_SIZE,
    TokenAuthenticator,
    TokenAuthInterceptor,
    parse_service_accounts,
)
from kube_ip_tracker.server.token_review import KubeTokenReviewer

MODES = ("none", "token", "mtls")


def add_client_auth_arguments(group: argparse._ArgumentGroup | argparse.ArgumentParser) -> None:
    """Add ``--client-auth``, ``--allowed-service-accounts`` and ``--token-cache-size``."""
    group.add_argument(
        "--client-auth",
        choices=MODES,
        default=None,
        help="who may call the Tracker API: none, token (service-account tokens checked with the TokenReview API "
        "of the caller's cluster) or mtls (certificates of --tls-client-ca-file); default mtls with "
        "--tls-client-ca-file, else none",
    )
    group.add_argument(
        "--allowed-service-accounts",
        type=parse_service_accounts,
        default=frozenset(DEFAULT_ALLOWED_SERVICE_ACCOUNTS),
        metavar="NAMESPACE/NAME,...",
        help="with --client-auth=token, the service accounts (of any watched cluster) that may call "
        f"(default {','.join(DEFAULT_ALLOWED_SERVICE_ACCOUNTS)})",
    )
    group.add_argument(
        "--token-cache-size",
        type=positive_int,
        default=DEFAULT_CACHE_SIZE,
        metavar="N",
        help=f"verified tokens remembered until they expire (at most 5m) (default {DEFAULT_CACHE_SIZE})",
    )


def client_auth_mode(args: argparse.Namespace) -> str:
    """The effective mode; ValueError naming the flags when they contradict each other."""
    mode = args.client_auth or ("mtls" if args.tls_client_ca_file else "none")
    if mode == "mtls" and not args.tls_client_ca_file:
        raise ValueError("--client-auth=mtls needs --tls-client-ca-file (and --tls-cert-file, --tls-key-file)")
    if mode != "mtls" and args.tls_client_ca_file:
        raise ValueError(f"--client-auth={mode} contradicts --tls-client-ca-file (which requires client certificates)")
    return mode


def client_auth_interceptors(
    args: argparse.Namespace, specs: Callable[[], Mapping[str, ClusterSpec]], service: str
) -> list[grpc.aio.ServerInterceptor]:
    """The server interceptors of the chosen mode (token authentication, or none)."""
    if client_auth_mode(args) != "token":
        return []
    authenticator = TokenAuthenticator(
        KubeTokenReviewer(specs), args.allowed_service_accounts, cache_size=args.token_cache_size
    )
    return [TokenAuthInterceptor(authenticator, service)]
