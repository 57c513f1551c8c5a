"""Command-line flags for a tracker client's TLS, shared by the agent and the upstream-tracker source.

Usage::

    add_client_tls_arguments(parser)                  # --tracker-ca-file, --tracker-cert-file, ...
    args = parser.parse_args()
    tls = client_tls_from_args(args)                  # TlsOptions, or None for plaintext
    TrackerClient(target, sink, ClientOptions(tls=tls))

``prefix`` names the flags (``--{prefix}-ca-file``), so one program can have several clients
(e.g. ``prefix="upstream"`` for an upstream tracker).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from kube_ip_tracker.client.client import TlsOptions

_FIELDS = ("ca_file", "cert_file", "key_file", "server_name")


def add_client_tls_arguments(parser: argparse.ArgumentParser, prefix: str = "tracker") -> None:
    """Add ``--{prefix}-ca-file``, ``--{prefix}-cert-file``, ``--{prefix}-key-file``, ``--{prefix}-server-name``."""
    group = parser.add_argument_group(f"{prefix} TLS")
    group.add_argument(
        f"--{prefix}-ca-file",
        default=None,
        metavar="PATH",
        help=f"PEM CA bundle that verifies the {prefix}'s certificate; enables TLS (default: plaintext)",
    )
    group.add_argument(
        f"--{prefix}-cert-file",
        default=None,
        metavar="PATH",
        help=f"PEM client certificate presented to the {prefix} (mTLS; with --{prefix}-key-file)",
    )
    group.add_argument(
        f"--{prefix}-key-file", default=None, metavar="PATH", help=f"PEM private key of --{prefix}-cert-file"
    )
    group.add_argument(
        f"--{prefix}-server-name",
        default=None,
        metavar="NAME",
        help=f"name checked against the {prefix}'s certificate (default: the host of its address)",
    )


def client_tls_from_args(args: argparse.Namespace, prefix: str = "tracker") -> TlsOptions | None:
    """TlsOptions from the parsed flags; None when none is set (plaintext).

    Any flag enables TLS (without ``--{prefix}-ca-file`` the system's CA bundle verifies the server).
    Raises ``ValueError`` naming the flags when only one of cert/key is given, and ``TlsConfigError``
    (a ``ValueError``) naming a file that cannot be read or used.
    """
    attr = prefix.replace("-", "_")
    values = {f: getattr(args, f"{attr}_{f}", None) or None for f in _FIELDS}
    if not any(values.values()):
        return None
    if bool(values["cert_file"]) != bool(values["key_file"]):
        raise ValueError(f"--{prefix}-cert-file and --{prefix}-key-file must be given together")
    options = TlsOptions(
        ca_file=Path(values["ca_file"]) if values["ca_file"] else None,
        cert_file=Path(values["cert_file"]) if values["cert_file"] else None,
        key_file=Path(values["key_file"]) if values["key_file"] else None,
        server_name=values["server_name"],
    )
    options.credentials()  # read the files now: a bad path is reported at start, naming the flag's file
    return options
