"""The ``kube-ip-tracker`` console script: an operator command (``status``, ``get``) when one is given first,
otherwise the tracker itself (:func:`kube_ip_tracker.cli.main`).

Dispatching here keeps the operator commands from importing the tracker's program (its Kubernetes and
GKE clients take a second or more to import).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Console-script entry point."""
    from kube_ip_tracker.ctl import main as ctl

    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in ctl.COMMANDS:
        return ctl.main(args)
    from kube_ip_tracker import cli

    return cli.main(args)


if __name__ == "__main__":
    sys.exit(main())
