"""The shared part of the ``check`` commands (``python -m kube_ip_tracker.gke.check``, ``... .eks.check``):
one discovery pass, printed one line per cluster."""

from __future__ import annotations

import argparse
import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TextIO

from kube_ip_tracker.cloud.discovery import FetchResult
from kube_ip_tracker.cloud.reconcile import Reconciler
from kube_ip_tracker.model import ClusterSpec


def format_result(result: FetchResult, out: TextIO, ready_status: str) -> None:  # type: ignore[type-arg]
    """One line per cluster: ``OK``/``NOT <ready_status>``/``ERROR``, the name, then id and endpoint or the reason."""
    for name, spec in sorted(result.specs.items()):
        ca = "cluster CA" if spec.ca_pem else "system trust store"
        print(f"{'OK':<13}{name}  id={spec.cluster_id}  server={spec.server}  verified-with={ca}", file=out)
    for name, status in sorted(result.not_running.items()):
        print(f"{'NOT ' + ready_status:<13}{name}  status={status}", file=out)
    for name, exc in sorted(result.errors.items()):
        print(f"{'ERROR':<13}{name}  {type(exc).__name__}: {exc}", file=out)


class NoSupervisor:
    """The supervisor a check hands its reconciler: a check never starts watchers."""

    async def ensure(self, spec: ClusterSpec) -> None:  # pragma: no cover - never called
        raise RuntimeError("a discovery check does not start watchers")

    async def remove(self, cluster_id: str, grace_seconds: float) -> None:  # pragma: no cover
        raise RuntimeError("a discovery check does not stop watchers")

    def specs(self) -> dict[str, ClusterSpec]:
        return {}


async def check_once(reconciler: Reconciler[Any], out: TextIO) -> int:
    """One discovery pass printed with :func:`format_result`; 0 when every cluster is ready, else 1."""
    try:
        result = await reconciler.discovery.fetch(reconciler.names())
    finally:
        await reconciler.close()
    format_result(result, out, reconciler.provider.ready_status)
    return 0 if result.complete else 1


def main(
    provider: str,
    add_arguments: Callable[[argparse.ArgumentParser], None],
    validate: Callable[[argparse.ArgumentParser, argparse.Namespace], None],
    run_check: Callable[[argparse.Namespace], Awaitable[int]],
    argv: Sequence[str] | None,
) -> int:
    """The command line of ``python -m kube_ip_tracker.<provider>.check``."""
    parser = argparse.ArgumentParser(
        prog=f"python -m kube_ip_tracker.{provider.lower()}.check",
        description=f"Check that the {provider} clusters given to kube-ip-tracker can be discovered with this identity.",
    )
    add_arguments(parser)
    args = parser.parse_args(argv)
    validate(parser, args)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return asyncio.run(run_check(args))
