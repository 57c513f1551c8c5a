"""``python -m kube_ip_tracker.gke.check``: one discovery pass, printed, to verify GKE access.

Run it with the tracker's identity (for example in a pod using its service account) and the same
GKE flags: it prints, for each configured cluster, the id and endpoint the tracker would use, or
why it cannot use it. Exit status 0 when every cluster was found RUNNING, 1 otherwise, 2 on bad flags.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TextIO

from google.auth import credentials as ga_credentials
from google.cloud import container_v1

from kube_ip_tracker.cloud import check as cloud_check
from kube_ip_tracker.gke import flags


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
    return await cloud_check.check_once(reconciler, out)


def main(argv: Sequence[str] | None = None) -> int:
    return cloud_check.main("GKE", flags.add_arguments, flags.validate, run_check, argv)


if __name__ == "__main__":
    sys.exit(main())
