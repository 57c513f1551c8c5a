"""The operator commands' parser and entry point: ``kube-ip-tracker status|get ...``.

``kube-ip-tracker`` without one of :data:`COMMANDS` as its first argument runs the tracker itself
(:mod:`kube_ip_tracker.cli`), so ``kube-ip-tracker --flags...`` keeps working.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import TextIO

from kube_ip_tracker.ctl.connect import CommandError
from kube_ip_tracker.ctl.get import add_get_command
from kube_ip_tracker.ctl.status import add_status_command

COMMANDS: dict[str, Callable[[argparse._SubParsersAction], None]] = {
    "status": add_status_command,
    "get": add_get_command,
}


def build_parser() -> argparse.ArgumentParser:
    """One subparser per entry of :data:`COMMANDS`."""
    parser = argparse.ArgumentParser(prog="kube-ip-tracker", description="Ask a running tracker.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for register in COMMANDS.values():
        register(commands)
    return parser


def main(argv: Sequence[str], out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Run one command; a failure is one line on stderr naming what is wrong, with its exit code."""
    args = build_parser().parse_args(argv)
    err = err or sys.stderr
    try:
        return int(args.handler(args, out or sys.stdout, err))
    except CommandError as exc:
        print(f"kube-ip-tracker {args.command}: {exc}", file=err)
        return exc.code
