"""``kube-ip-tracker get IP``: the pod, namespace and node a running tracker has behind an address.

Exit codes: 0 found, 1 no pod owns the address, 2 bad input (not an IP address, bad flags),
3 tracker unreachable or failing.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
from typing import TextIO

import grpc
from google.protobuf.json_format import MessageToDict

from kube_ip_tracker.api.v1 import tracker_pb2 as pb
from kube_ip_tracker.api.v1 import tracker_pb2_grpc
from kube_ip_tracker.ctl.connect import EXIT_USAGE, CommandError, add_connection_arguments, target_from_args

EXIT_FOUND = 0
EXIT_NOT_FOUND = 1


def _labels(labels: dict[str, str] | object) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items())) or "<none>"  # type: ignore[attr-defined]


def render_text(ip: str, found: pb.GetPodByIPResponse) -> str:
    """``Key: value`` lines, as ``kubectl describe`` prints them."""
    pod = found.pod
    ports = ", ".join(f"{p.name + ' ' if p.name else ''}{p.port}/{pb.Protocol.Name(p.protocol)}" for p in pod.ports)
    rows = [
        ("IP", ip),
        ("Cluster", pod.cluster),
        ("Namespace", pod.namespace),
        ("Pod", pod.name),
        ("Pod UID", pod.uid or "<unknown>"),
        ("Pod IPs", ", ".join(pod.ips)),
        ("Pod labels", _labels(pod.labels)),
        ("Ports", ports or "<none>"),
        ("Namespace labels", _labels(found.namespace.labels) if found.HasField("namespace") else "<unknown namespace>"),
        ("Node", pod.node or "<none>"),
    ]
    if found.HasField("node"):
        rows.append(("Node IPs", ", ".join(found.node.internal_ips) or "<none>"))
    width = max(len(key) for key, _ in rows) + 2
    return "\n".join(f"{key + ':':<{width}}{value}" for key, value in rows)


def add_get_command(commands: argparse._SubParsersAction) -> None:
    """Register ``get``."""
    parser = commands.add_parser(
        "get",
        help="print the pod, namespace and node behind an IP address",
        description="Ask a running tracker which pod owns IP (GetPodByIP). Exit 0 when one does, 1 when none "
        "does, 2 on bad input, 3 when the tracker cannot be reached.",
    )
    parser.add_argument("ip", metavar="IP", help="an IPv4 or IPv6 address")
    add_connection_arguments(parser)
    parser.add_argument("-o", "--output", choices=("text", "json"), default="text", help="output format")
    parser.set_defaults(handler=cmd_get)


def cmd_get(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """The ``get`` command (``CommandError`` for bad input or an unreachable tracker)."""
    try:
        ip = str(ipaddress.ip_address(args.ip.strip()))
    except ValueError:
        raise CommandError(f"not an IP address: {args.ip!r}", EXIT_USAGE) from None
    target = target_from_args(args)
    with target.channel() as channel:
        try:
            found = tracker_pb2_grpc.TrackerStub(channel).GetPodByIP(
                pb.GetPodByIPRequest(ip=ip), timeout=target.timeout, metadata=target.metadata()
            )
        except grpc.RpcError as exc:
            if isinstance(exc, grpc.Call) and exc.code() is grpc.StatusCode.NOT_FOUND:
                print(f"no pod owns {ip} (tracker {target.address})", file=err)
                return EXIT_NOT_FOUND
            raise target.rpc_error(exc, "GetPodByIP") from None
    if args.output == "json":
        print(json.dumps({"ip": ip, **MessageToDict(found, preserving_proto_field_name=True)}, indent=2), file=out)
    else:
        print(render_text(ip, found), file=out)
    return EXIT_FOUND
