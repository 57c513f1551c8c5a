"""The tracker's ``--tls-bootstrap-*`` flags: TLS from a CA the tracker makes and keeps itself.

Usage (the CLI does this)::

    add_tls_bootstrap_arguments(group)
    bootstrap = bootstrap_from_args(args)      # None without --tls-bootstrap-secret; ValueError naming a flag
    await bootstrap.first_sync()               # then serve bootstrap.config.files with ReloadingTls
    asyncio.create_task(bootstrap.run())       # renewals

The flag names are stable (manifests/install.yaml and its overlays use them).
"""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
import tempfile
from pathlib import Path

from kube_ip_tracker.durations import parse_duration
from kube_ip_tracker.flag_values import positive_duration
from kube_ip_tracker.kube.names import dns1123_subdomain_problem
from kube_ip_tracker.model import ClusterSpec
from kube_ip_tracker.server.tls_bootstrap import BootstrapConfig, TlsBootstrap, lifetimes, service_names

DEFAULT_CONFIGMAP = "kube-ip-tracker-ca"
DEFAULT_SERVICE = "kube-ip-tracker"
DEFAULT_CERT_VALIDITY = "720h"  # 30 days, renewed after 20
DEFAULT_CA_VALIDITY = "87600h"  # 10 years, rotated with an overlap from year 6.7 on


def _names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    for name in names:
        problem = dns1123_subdomain_problem(name)
        if problem:
            raise argparse.ArgumentTypeError(f"invalid DNS name {name!r}: {problem}")
    return names


def add_tls_bootstrap_arguments(group: argparse._ArgumentGroup | argparse.ArgumentParser) -> None:
    """Add the ``--tls-bootstrap-*`` flags."""
    group.add_argument(
        "--tls-bootstrap-secret",
        default=None,
        metavar="NAME",
        help="serve TLS with a CA and certificate the tracker creates and renews in this Secret of its own "
        "namespace (instead of --tls-cert-file); docs/security.md",
    )
    group.add_argument(
        "--tls-bootstrap-ca-configmap",
        default=DEFAULT_CONFIGMAP,
        metavar="NAME",
        help=f"ConfigMap where the bootstrap publishes the CA bundle (key ca.crt) for the agents (default {DEFAULT_CONFIGMAP})",
    )
    group.add_argument(
        "--tls-bootstrap-namespace",
        default=None,
        metavar="NAMESPACE",
        help="namespace of the Secret and ConfigMap (default $POD_NAMESPACE)",
    )
    group.add_argument(
        "--tls-bootstrap-service",
        default=DEFAULT_SERVICE,
        metavar="NAME",
        help="the tracker's Service: the certificate is for NAME, NAME.NAMESPACE, NAME.NAMESPACE.svc and "
        f"NAME.NAMESPACE.svc.cluster.local (default {DEFAULT_SERVICE})",
    )
    group.add_argument(
        "--tls-bootstrap-extra-names",
        type=_names,
        default=[],
        metavar="NAME,...",
        help="more DNS names for the certificate (another cluster domain, a load balancer's name)",
    )
    group.add_argument(
        "--tls-bootstrap-dir",
        default=None,
        metavar="DIR",
        help="where the serving certificate, its key and the CA bundle are written as tls.crt, tls.key, ca.crt "
        "(default: a new private temporary directory)",
    )
    group.add_argument(
        "--tls-bootstrap-kubeconfig",
        default=None,
        metavar="PATH",
        help="kubeconfig of the cluster holding the Secret (default: the in-cluster configuration)",
    )
    group.add_argument(
        "--tls-bootstrap-cert-validity",
        type=positive_duration,
        default=parse_duration(DEFAULT_CERT_VALIDITY),
        metavar="DURATION",
        help=f"lifetime of a serving certificate; renewed when a third is left (default {DEFAULT_CERT_VALIDITY})",
    )
    group.add_argument(
        "--tls-bootstrap-ca-validity",
        type=positive_duration,
        default=parse_duration(DEFAULT_CA_VALIDITY),
        metavar="DURATION",
        help="lifetime of a CA, at least twice the certificate's; a successor is published when a third is left "
        f"(default {DEFAULT_CA_VALIDITY})",
    )


def bootstrap_from_args(args: argparse.Namespace) -> TlsBootstrap | None:
    """The bootstrap the flags ask for, or None; ValueError naming the flag that is wrong."""
    if not args.tls_bootstrap_secret:
        return None
    if args.tls_cert_file or args.tls_key_file:
        raise ValueError(
            "--tls-bootstrap-secret contradicts --tls-cert-file/--tls-key-file: choose one source of certificates"
        )
    namespace = args.tls_bootstrap_namespace or os.environ.get("POD_NAMESPACE", "").strip()
    if not namespace:
        raise ValueError("--tls-bootstrap-secret needs --tls-bootstrap-namespace or $POD_NAMESPACE")
    for flag, value in (
        ("--tls-bootstrap-namespace", namespace),
        ("--tls-bootstrap-secret", args.tls_bootstrap_secret),
        ("--tls-bootstrap-ca-configmap", args.tls_bootstrap_ca_configmap),
        ("--tls-bootstrap-service", args.tls_bootstrap_service),
    ):
        problem = dns1123_subdomain_problem(value)
        if problem:
            raise ValueError(f"{flag}={value!r}: {problem}")
    try:
        validity = lifetimes(args.tls_bootstrap_cert_validity, args.tls_bootstrap_ca_validity)
    except ValueError as e:
        raise ValueError(f"--tls-bootstrap-ca-validity: {e}") from None
    if args.tls_bootstrap_dir:
        directory = Path(args.tls_bootstrap_dir)
    else:
        directory = Path(tempfile.mkdtemp(prefix="kube-ip-tracker-tls-"))
        atexit.register(shutil.rmtree, directory, True)
    spec = (
        ClusterSpec("tls-bootstrap", kubeconfig=os.path.abspath(args.tls_bootstrap_kubeconfig))
        if args.tls_bootstrap_kubeconfig
        else ClusterSpec("tls-bootstrap", in_cluster=True)
    )
    config = BootstrapConfig(
        namespace=namespace,
        secret=args.tls_bootstrap_secret,
        configmap=args.tls_bootstrap_ca_configmap,
        names=service_names(args.tls_bootstrap_service, namespace, args.tls_bootstrap_extra_names),
        lifetimes=validity,
        directory=directory,
    )
    return TlsBootstrap(spec, config)
