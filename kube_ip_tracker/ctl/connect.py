"""One short-lived gRPC connection to a tracker for an operator command, and its errors as one line."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import grpc

from kube_ip_tracker.client.client import TlsOptions
from kube_ip_tracker.client.resolver import parse_address
from kube_ip_tracker.client.tls_flags import add_client_tls_arguments, client_tls_from_args
from kube_ip_tracker.client.token import TokenOptions
from kube_ip_tracker.client.token_flags import add_client_token_arguments, client_token_from_args
from kube_ip_tracker.flag_values import positive_duration

DEFAULT_ADDRESS = "127.0.0.1:50051"
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3


class CommandError(Exception):
    """A failure an operator command reports as one line, with its exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def add_connection_arguments(parser: argparse.ArgumentParser) -> None:
    """``--address``, ``--timeout`` and the tracker TLS flags (as the agent spells them)."""
    parser.add_argument(
        "--address",
        default=DEFAULT_ADDRESS,
        metavar="HOST:PORT",
        help=f"the tracker's gRPC address (default {DEFAULT_ADDRESS})",
    )
    parser.add_argument(
        "--timeout", type=positive_duration, default=5.0, metavar="DURATION", help="deadline of each call (default 5s)"
    )
    add_client_tls_arguments(parser, prefix="tracker")
    add_client_token_arguments(parser, "tracker")  # --tracker-token-file, --tracker-token-cluster


@dataclass(frozen=True)
class Target:
    """Where and how to reach the tracker."""

    address: str
    host: str
    timeout: float
    tls: TlsOptions | None
    token: TokenOptions | None = None

    def metadata(self) -> tuple[tuple[str, str], ...] | None:
        """Call metadata carrying the service-account token (for a tracker with --client-auth=token), if any."""
        return self.token.reloading().metadata() if self.token is not None else None

    def channel(self) -> grpc.Channel:
        """A channel to the tracker (TLS when any TLS flag is set; the name checked is the host unless overridden)."""
        if self.tls is None:
            return grpc.insecure_channel(self.address)
        options = [("grpc.ssl_target_name_override", self.tls.server_name or self.host)]
        return grpc.secure_channel(self.address, self.tls.credentials(), options=options)

    def rpc_error(self, exc: grpc.RpcError, call: str) -> CommandError:
        """``exc`` as the one line an operator sees."""
        code = exc.code() if isinstance(exc, grpc.Call) else None
        details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
        if code is grpc.StatusCode.UNAVAILABLE:
            return CommandError(f"cannot reach the tracker at {self.address}: {details}", EXIT_UNREACHABLE)
        if code is grpc.StatusCode.DEADLINE_EXCEEDED:
            return CommandError(
                f"the tracker at {self.address} did not answer {call} within {self.timeout:g}s", EXIT_UNREACHABLE
            )
        name = code.name if code is not None else "UNKNOWN"
        return CommandError(f"{call} on the tracker at {self.address} failed: {name}: {details}", EXIT_UNREACHABLE)


def target_from_args(args: argparse.Namespace) -> Target:
    """The checked target; ``CommandError`` (exit 2) names a malformed address or an unusable TLS flag or file."""
    try:
        parsed = parse_address(args.address)
        tls = client_tls_from_args(args, prefix="tracker")
        token = client_token_from_args(args, prefix="tracker")
    except ValueError as exc:
        raise CommandError(str(exc), EXIT_USAGE) from None
    return Target(str(parsed), parsed.host, args.timeout, tls, token)
