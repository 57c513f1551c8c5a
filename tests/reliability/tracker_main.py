"""``kube-ip-tracker`` with tuned source timeouts, for fault tests that cannot wait minutes.

The same program (``kube_ip_tracker.cli.main``); only the informer options of its cluster supervisor
come from the JSON object given as the first argument (fields of ``InformerOptions``), e.g. a watch
timeout of seconds instead of minutes: ``python tracker_main.py '{"watch_timeout": 2}' FLAGS...``.
"""

from __future__ import annotations

import functools
import json
import sys

from kube_ip_tracker import cli
from kube_ip_tracker.sources.kube import InformerOptions
from kube_ip_tracker.sources.supervisor import ClusterSupervisor


def main() -> int:
    options = InformerOptions(**json.loads(sys.argv[1]))
    cli.ClusterSupervisor = functools.partial(ClusterSupervisor, options=options)  # type: ignore[misc]
    return cli.main(sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
