"""``python -m kube_ip_tracker.demo`` (``make demo``): the multi-cluster NetworkPolicy demo, start to finish.

Exit codes: 0 every step gave the expected result, 1 a step did not, 2 the demo could not run
(not root, a tool missing, start-up failed), 130 interrupted (everything is cleaned up first).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import ipaddress
import logging
import os
import shutil
import signal
import sys
from collections.abc import Sequence

from .scenario import DEFAULT_SUBNET, STAGED_STEPS, STEPS, Step
from .stack import DemoError, DemoSettings, DemoStack
from .steps import StepResult, run_all

log = logging.getLogger("kube_ip_tracker.demo")

EXIT_OK = 0
EXIT_STEP_FAILED = 1
EXIT_CANNOT_RUN = 2
EXIT_INTERRUPTED = 130
TOOLS = ("ip", "iptables", "iptables-save", "iptables-restore", "nft", "conntrack", "etcd")

INTRO = """\
kube-ip-tracker demo: NetworkPolicies across two clusters, enforced on real packets.

Two local clusters (etcd + kube-apiserver) run on this machine. Their pods are network namespaces
on one flat network. In each cluster a kube-ip-tracker watches both API servers (full mesh), and a
kube-ip-agent decides the first packet of every connection of its cluster's pods from the tracker's
data and its cluster's NetworkPolicies.
"""


def missing_requirements() -> list[str]:
    """What this host lacks to run the demo (empty when nothing)."""
    problems = []
    if os.geteuid() != 0:
        problems.append("it must run as root (network namespaces, iptables, NFQUEUE): run `sudo make demo`")
    for tool in TOOLS:
        if shutil.which(tool) is None:
            problems.append(f"command {tool!r} not found: run `make setup` (installs the Debian packages)")
    if importlib.util.find_spec("netfilterqueue") is None:
        problems.append("Python package netfilterqueue missing: run `make setup` (dataplane extra)")
    return problems


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m kube_ip_tracker.demo", description=INTRO)
    parser.add_argument(
        "--subnet",
        default=DEFAULT_SUBNET,
        help=f"private IPv4 /16 for the pods; cluster-N uses its N-th /24 (default {DEFAULT_SUBNET})",
    )
    parser.add_argument(
        "--staged",
        action="store_true",
        help="add steps g-i: a staged deny (kube-ip-tracker.io/staged) changes nothing but is logged and counted "
        "as would-deny, then removing the annotation enforces it",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log what the demo does in detail")
    args = parser.parse_args(argv)
    try:
        net = ipaddress.ip_network(args.subnet)
    except ValueError as exc:
        parser.error(f"--subnet: {exc}")
    if net.version != 4 or net.prefixlen > 16 or not net.is_private:
        parser.error(f"--subnet {args.subnet} must be a private IPv4 network of /16 or larger")
    return args


def _say(line: str) -> None:
    print(line, flush=True)


async def run_demo(settings: DemoSettings, steps: tuple[Step, ...] = STEPS) -> int:
    """Start the stack, run the steps, tear down; the exit code."""
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    stack = DemoStack(settings, say=_say)
    results: list[StepResult] = []
    failed = True
    try:
        await stack.start()
        results = await run_all(stack, steps=steps)
        failed = not all(r.passed for r in results)
    except DemoError as exc:
        _say(f"\nThe demo could not run: {exc}")
        return EXIT_CANNOT_RUN
    except Exception as exc:  # a cluster that does not start, a failing command ...: say it without a traceback
        log.debug("demo failed", exc_info=True)
        _say(f"\nThe demo failed: {type(exc).__name__}: {exc}\n(run with --verbose for the traceback)")
        return EXIT_CANNOT_RUN
    except asyncio.CancelledError:
        _say("\nInterrupted.")
        failed = False
        return EXIT_INTERRUPTED
    finally:
        _say("\nCleaning up (agents remove their rules; trackers, clusters, namespaces, veths, temp files) ...")
        await _close_despite_interrupts(stack, keep_logs=failed)
        _say("  done.")
        if failed and stack.workdir is not None and stack.workdir.exists():
            _say(f"  The processes' logs are kept in {stack.workdir} (remove it when done).")
    passed = sum(r.passed for r in results)
    _say(f"\n{passed} of {len(results)} steps gave the expected result.")
    return EXIT_OK if passed == len(results) else EXIT_STEP_FAILED


async def _close_despite_interrupts(stack: DemoStack, keep_logs: bool) -> None:
    closing = asyncio.ensure_future(stack.close(keep_logs=keep_logs))
    while not closing.done():
        try:
            await asyncio.shield(closing)
        except asyncio.CancelledError:
            _say("  still cleaning up, please wait ...")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    problems = missing_requirements()
    if problems:
        print("The demo cannot run on this machine:", file=sys.stderr)
        for problem in problems:
            print(f"  - {problem}", file=sys.stderr)
        return EXIT_CANNOT_RUN
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname).1s%(asctime)s %(name)s] %(message)s",
    )
    print(INTRO, flush=True)
    try:
        steps = STEPS + STAGED_STEPS if args.staged else STEPS
        return asyncio.run(run_demo(DemoSettings(subnet=args.subnet), steps))
    except KeyboardInterrupt:  # a second Ctrl-C; cleanup already ran as far as it could
        return EXIT_INTERRUPTED
