"""``kube-ip-agent``: the node agent's command line.

Subcommands:

- ``evaluate FILE...``: decide the probes of conformance world files; ``--check`` compares the
  verdicts with each probe's ``expect``.
- ``run``: the node agent daemon (see :mod:`kube_ip_tracker.agent.run`).

Exit codes of ``evaluate``: 0 success, 1 verdict mismatches (``--check``), 2 invalid input or usage,
3 internal error. ``run``: 0 after SIGTERM/SIGINT, 1 configuration or start-up error, 2 usage.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TextIO

from kube_ip_tracker.agent.explain.command import add_explain_command, explain_probe
from kube_ip_tracker.agent.explain.render import render
from kube_ip_tracker.agent.policy.cluster_compiled import RuleRef
from kube_ip_tracker.agent.policy.errors import PolicyError
from kube_ip_tracker.agent.policy.evaluator import Reason
from kube_ip_tracker.agent.policy.worldfile import WorldFile, decide_probe, load_world
from kube_ip_tracker.logs import configure_logging

log = logging.getLogger("kube_ip_tracker.agent.cli")

EXIT_OK = 0
EXIT_MISMATCH = 1
EXIT_INVALID = 2
EXIT_INTERNAL = 3


def add_evaluate_command(commands: argparse._SubParsersAction) -> None:
    """Register ``evaluate``."""
    evaluate = commands.add_parser(
        "evaluate",
        help="decide the probes of NetworkPolicy conformance world files",
        description=(
            "Print one JSON line per file: {'file': PATH, 'verdicts': ['allow'|'deny', ...]}. "
            "With --check, compare with each probe's expect and print 'N passed, M failed' "
            "(counting probes) last."
        ),
    )
    evaluate.add_argument("files", nargs="+", metavar="FILE", help="world file (JSON)")
    evaluate.add_argument("--check", action="store_true", help="compare verdicts with each probe's expect")
    evaluate.add_argument(
        "--explain", action="store_true", help="after each file's verdicts, print every probe's decision trace"
    )
    evaluate.set_defaults(handler=cmd_evaluate)


# Each entry registers one subcommand; its handler is called as handler(args, out, err) -> exit code.
def add_run_command(commands: argparse._SubParsersAction) -> None:
    """Register ``run`` (imported here: the daemon's Kubernetes and gRPC clients take a second or more)."""
    from kube_ip_tracker.agent.run import add_run_command as add

    add(commands)


COMMANDS: dict[str, Callable[[argparse._SubParsersAction], None]] = {
    "evaluate": add_evaluate_command,
    "run": add_run_command,
    "explain": add_explain_command,
}
# Commands that do not need the daemon's code: given first, only they are registered (a fast start).
LIGHT_COMMANDS = ("evaluate", "explain")


def build_parser(only: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The argument parser with one subparser per entry of :data:`COMMANDS` (or of ``only``)."""
    parser = argparse.ArgumentParser(prog="kube-ip-agent", description="kube-ip-tracker node agent")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, register in COMMANDS.items():
        if only is None or name in only:
            register(commands)
    return parser


@dataclass
class _Tally:
    passed: int = 0
    failed: int = 0


def _describe_end(end: object) -> str:
    ip = getattr(end, "ip", "")
    if ip:
        return ip
    return f"{end.cluster}/{end.namespace}/{end.pod}"  # type: ignore[attr-defined]


def _evaluate_file(path: str, check: bool, tally: _Tally, out: TextIO, err: TextIO, explain: bool = False) -> int:
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except OSError as exc:
        print(f"{path}: cannot read: {exc.strerror or exc}", file=err)
        return EXIT_INVALID
    try:
        text = raw.decode("utf-8")
        world: WorldFile = load_world(text)
    except UnicodeDecodeError as exc:
        print(f"{path}: not UTF-8: {exc.reason} at byte {exc.start}", file=err)
        return EXIT_INVALID
    except PolicyError as exc:
        print(f"{path}: {exc}", file=err)
        return EXIT_INVALID
    if check:
        for index, probe in enumerate(world.probes):
            if probe.expect is None:
                print(f"{path}: probes[{index}].expect: required with --check", file=err)
                return EXIT_INVALID
    for warning in world.warnings():
        print(f"{path}: warning: {warning}", file=err)
    engine = world.engine()
    verdicts = [decide_probe(engine, probe) for probe in world.probes]
    print(json.dumps({"file": path, "verdicts": [str(v) for v in verdicts]}), file=out)
    if explain:
        for index, probe in enumerate(world.probes):
            _verdict, trace = explain_probe(engine, probe)
            print(f"\n{path}: probes[{index}]\n{render(trace)}", file=out)
    if not check:
        return EXIT_OK
    status = EXIT_OK
    for index, (probe, verdict) in enumerate(zip(world.probes, verdicts, strict=True)):
        if str(verdict) == probe.expect:
            tally.passed += 1
            continue
        tally.failed += 1
        status = EXIT_MISMATCH
        print(
            f"{path}: probes[{index}] {_describe_end(probe.src)} -> {_describe_end(probe.dst)} "
            f"{probe.protocol}/{probe.port}: expected {probe.expect}, got {verdict} "
            f"(egress {_explain(verdict.egress, verdict.egress_policy, verdict.egress_rule)}, "
            f"ingress {_explain(verdict.ingress, verdict.ingress_policy, verdict.ingress_rule)})",
            file=err,
        )
    return status


def _explain(reason: Reason, policy: tuple[str, str, str] | None, rule: RuleRef | None) -> str:
    if rule is not None:
        return f"{reason.value} by {rule}"
    if policy is None:
        return reason.value
    return f"{reason.value} by {'/'.join(policy)}"


def cmd_evaluate(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """The ``evaluate`` subcommand."""
    tally = _Tally()
    worst = EXIT_OK
    for path in args.files:
        try:
            status = _evaluate_file(path, args.check, tally, out, err, args.explain)
        except Exception as exc:  # never a traceback on the command line
            log.debug("internal error evaluating %s", path, exc_info=True)
            print(f"{path}: internal error: {type(exc).__name__}: {exc}", file=err)
            status = EXIT_INTERNAL
        worst = max(worst, status)
    if args.check:
        print(f"{tally.passed} passed, {tally.failed} failed", file=out)
    return worst


def main(argv: Sequence[str] | None = None, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Entry point of the ``kube-ip-agent`` console script; returns the exit code."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    first = next((a for a in arguments if not a.startswith("-")), None)
    parser = build_parser(only=(first,) if first in LIGHT_COMMANDS else None)
    args = parser.parse_args(arguments)
    configure_logging(
        logging.DEBUG if args.verbose else getattr(args, "log_level", logging.INFO),
        getattr(args, "logging_format", "text"),
    )
    return int(args.handler(args, out or sys.stdout, err or sys.stderr))


if __name__ == "__main__":
    sys.exit(main())
