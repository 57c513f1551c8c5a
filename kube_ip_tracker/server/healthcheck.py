"""A gRPC health probe for exec readiness checks: ``python -m kube_ip_tracker.server.healthcheck``.

Asks the tracker's ``grpc.health.v1.Health/Check`` (overall health unless ``--service``) and exits
0 when it answers SERVING. Kubernetes API servers before 1.24 have no ``grpc`` probe, so the
manifests run this as an ``exec`` probe inside the container.

Exit codes: 0 SERVING, 1 any other status or an RPC error (printed on stderr), 2 bad flags.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

EXIT_SERVING = 0
EXIT_NOT_SERVING = 1


def _timeout(text: str) -> float:
    value = text.strip().removesuffix("s")
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid timeout {text!r}: use seconds, e.g. 2 or 2s") from None
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"invalid timeout {text!r}: must be positive")
    return seconds


def build_parser() -> argparse.ArgumentParser:
    """Flags of the probe."""
    parser = argparse.ArgumentParser(
        prog="python -m kube_ip_tracker.server.healthcheck",
        description="Exit 0 when the gRPC health service at --address reports SERVING.",
    )
    parser.add_argument("--address", default="127.0.0.1:50051", metavar="HOST:PORT", help="gRPC address")
    parser.add_argument("--service", default="", help="service name to check ('' is the server as a whole)")
    parser.add_argument("--timeout", type=_timeout, default=3.0, metavar="SECONDS", help="RPC deadline (default 3s)")
    tls = parser.add_argument_group("TLS (plaintext unless --tls-ca-file is given)")
    tls.add_argument("--tls-ca-file", type=Path, default=None, metavar="PATH", help="CA bundle to verify the server")
    tls.add_argument("--tls-cert-file", type=Path, default=None, metavar="PATH", help="client certificate (mTLS)")
    tls.add_argument("--tls-key-file", type=Path, default=None, metavar="PATH", help="client key (mTLS)")
    tls.add_argument("--tls-server-name", default=None, help="name to verify in the server certificate")
    return parser


def _channel(args: argparse.Namespace) -> grpc.Channel:
    if args.tls_ca_file is None:
        return grpc.insecure_channel(args.address)
    key = args.tls_key_file.read_bytes() if args.tls_key_file else None
    cert = args.tls_cert_file.read_bytes() if args.tls_cert_file else None
    creds = grpc.ssl_channel_credentials(args.tls_ca_file.read_bytes(), key, cert)
    options = [("grpc.ssl_target_name_override", args.tls_server_name)] if args.tls_server_name else []
    return grpc.secure_channel(args.address, creds, options=options)


def check(args: argparse.Namespace) -> tuple[int, str]:
    """(exit code, one-line description) of one health check."""
    try:
        channel = _channel(args)
    except OSError as exc:
        return EXIT_NOT_SERVING, f"cannot read TLS file {exc.filename}: {exc.strerror}"
    with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            resp = stub.Check(health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout)
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else None
            details = exc.details() if hasattr(exc, "details") else str(exc)
            name = code.name if code is not None else "UNKNOWN"
            return EXIT_NOT_SERVING, f"health check of {args.address} failed: {name}: {details}"
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
    service = f" service {args.service!r}" if args.service else ""
    if resp.status == health_pb2.HealthCheckResponse.SERVING:
        return EXIT_SERVING, f"{args.address}{service}: {status}"
    return EXIT_NOT_SERVING, f"{args.address}{service}: {status}"


def main(argv: Sequence[str] | None = None) -> int:
    """Run one check; print the result (stdout when serving, stderr otherwise)."""
    args = build_parser().parse_args(argv)
    code, message = check(args)
    print(message, file=sys.stdout if code == EXIT_SERVING else sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
