"""``python -m kube_ip_tracker.eks.check``: one discovery pass, printed, to verify EKS access.

Run it with the tracker's identity (in a pod of its service account) and the same EKS flags: it
prints, for each configured cluster, the id and endpoint the tracker would use, or why it cannot.
Exit status 0 when every cluster was found ACTIVE, 1 otherwise, 2 on bad flags or no clusters.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TextIO

import botocore.session

from kube_ip_tracker.cloud import check as cloud_check
from kube_ip_tracker.eks import flags


async def run_check(
    args: argparse.Namespace, *, session: botocore.session.Session | None = None, out: TextIO | None = None
) -> int:
    """Fetch every configured cluster once and print the outcome; returns the exit status."""
    out = out or sys.stdout
    try:
        if session is None:
            reconciler = await flags.create_reconciler(args, cloud_check.NoSupervisor())
        else:
            reconciler = flags.build_reconciler(args, cloud_check.NoSupervisor(), session=session)
    except flags.EksConfigError as exc:
        print(f"{'ERROR':<13}{exc}", file=out)
        return 1
    if reconciler is None:
        print("no EKS clusters configured (--aws-cluster-names)", file=out)
        return 2
    return await cloud_check.check_once(reconciler, out)


def main(argv: Sequence[str] | None = None) -> int:
    return cloud_check.main("EKS", flags.add_arguments, flags.validate, run_check, argv)


if __name__ == "__main__":
    sys.exit(main())
