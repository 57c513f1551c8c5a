"""``kube-ip-agent explain``: ask a running agent to decide a connection and print its trace.

Exit codes: 0 the connection is allowed, 1 denied, 2 bad input (a malformed end or port, an unknown
pod), 3 the agent cannot be reached or failed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TextIO

from kube_ip_tracker.agent.policy import PolicyEngine, Verdict
from kube_ip_tracker.agent.policy.worldfile import Probe, probe_endpoint

from .client import ExplainClientError, ask, default_socket
from .render import render
from .request import ExplainRequest, RequestError, check_end, parse_port
from .trace import Explanation, explain

EXIT_ALLOWED = 0
EXIT_DENIED = 1
EXIT_INVALID = 2
EXIT_UNREACHABLE = 3


def add_explain_command(commands: argparse._SubParsersAction) -> None:
    """Register ``explain``."""
    parser = commands.add_parser(
        "explain",
        help="ask the running agent how it decides a connection, with the trace of every policy considered",
        description="Ask a running agent (over its root-only Unix socket) to decide a connection as it would "
        "for a packet, and print the decision with its trace: both ends with their labels and namespace labels, "
        "and every policy of each tier, with why it did or did not select and match. Exit 0 allowed, 1 denied, "
        "2 bad input, 3 agent unreachable.",
    )
    parser.add_argument("--from", dest="src", required=True, metavar="CLUSTER/NAMESPACE/POD|IP", help="source")
    parser.add_argument("--to", dest="dst", required=True, metavar="CLUSTER/NAMESPACE/POD|IP", help="destination")
    parser.add_argument("--port", required=True, metavar="PORT[/PROTOCOL]", help="destination port, e.g. 80/TCP")
    parser.add_argument(
        "--socket",
        type=Path,
        default=None,
        metavar="PATH",
        help="the agent's --explain-socket (default: the only socket in /run/kube-ip-agent)",
    )
    parser.add_argument("--timeout", type=float, default=5.0, metavar="SECONDS", help="how long to wait (default 5)")
    parser.add_argument("-o", "--output", choices=("text", "json"), default="text", help="output format")
    parser.set_defaults(handler=cmd_explain)


def cmd_explain(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """The ``explain`` command."""
    try:
        check_end(args.src, "--from")
        check_end(args.dst, "--to")
        port, protocol = parse_port(args.port)
    except RequestError as exc:
        print(f"kube-ip-agent explain: {exc}", file=err)
        return EXIT_INVALID
    request = ExplainRequest(args.src, args.dst, port, protocol)
    try:
        path = args.socket or default_socket()
        answer = ask(path, request, args.timeout)
    except ExplainClientError as exc:
        message = str(exc)
        code = EXIT_INVALID if message.startswith(("--from", "--to", "--port")) else EXIT_UNREACHABLE
        print(f"kube-ip-agent explain: {message}", file=err)
        return code
    explanation = Explanation.from_dict(answer)
    print(json.dumps(answer, indent=2) if args.output == "json" else render(explanation), file=out)
    return EXIT_ALLOWED if explanation.verdict == "allow" else EXIT_DENIED


def explain_probe(engine: PolicyEngine, probe: Probe) -> tuple[Verdict, Explanation]:
    """A world file's probe decided with its trace (``evaluate --explain``)."""
    return explain(
        engine, probe_endpoint(engine, probe.src), probe_endpoint(engine, probe.dst), probe.protocol, probe.port
    )
