"""``python -m kube_ip_tracker.gke.check``: one discovery pass, printed, to verify GKE access.

Run it with the tracker's identity (for example in a pod using its service account) and the same
GKE flags: it prints, for each configured cluster, the id and endpoint the tracker would use, or
why it cannot use it. Exit status 0 when every cluster was found RUNNING, 1 otherwise, 2 on bad flags.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from typing import TextIO

from google.auth import credentials as ga_credentials
from google.cloud import container_v1

from kube_ip_tracker.cloud import check as cloud_check
from kube_ip_tracker.gke import flags
from kube_ip_tracker.gke.discovery import FetchResult


def format_result(result: FetchResult, out: TextIO) -> None:
    """One line per cluster: ``OK``/``NOT RUNNING``/``ERROR``, the GKE name, then id and endpoint or the reason."""
    cloud_check.format_result(result, out, "RUNNING")


async def run_check(
    args: argparse.Namespace,
    *,
    credentials: ga_credentials.Credentials | None = None,
    client: container_v1.ClusterManagerAsyncClient | None = None,
    out: TextIO | None = None,
) -> int:
    """Fetch every configured cluster once and print the outcome; returns the exit status."""
    out = out or sys.stdout
    if credentials is None and client is None:
        try:
            reconciler = await flags.create_reconciler(args, cloud_check.NoSupervisor())
        except flags.GkeConfigError as exc:
            print(f"ERROR        {exc}", file=out)
            return 1
    else:
        reconciler = flags.build_reconciler(args, cloud_check.NoSupervisor(), credentials=credentials, client=client)
    if reconciler is None:
        print("no GKE clusters configured (--gcp-cluster-names)", file=out)
        return 2
    try:
        result = await reconciler.discovery.fetch(reconciler.names())
    finally:
        await reconciler.close()
    format_result(result, out)
    return 0 if result.complete else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m kube_ip_tracker.gke.check",
        description="Check that the GKE clusters given to kube-ip-tracker can be discovered with this identity.",
    )
    flags.add_arguments(parser)
    args = parser.parse_args(argv)
    flags.validate(parser, args)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return asyncio.run(run_check(args))


if __name__ == "__main__":
    sys.exit(main())
