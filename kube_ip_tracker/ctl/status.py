"""``kube-ip-tracker status``: the clusters a running tracker knows, as a table, and whether it is healthy.

Healthy means the tracker reports SERVING and every cluster it knows is connected, synced and not
stale. Exit codes: 0 healthy, 1 unhealthy (what is wrong is named on stderr), 2 bad input,
3 tracker unreachable or failing.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from typing import TextIO

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from kube_ip_tracker.api.v1 import tracker_pb2 as pb
from kube_ip_tracker.api.v1 import tracker_pb2_grpc
from kube_ip_tracker.ctl.connect import Target, add_connection_arguments, target_from_args
from kube_ip_tracker.ctl.table import age, render_table

EXIT_HEALTHY = 0
EXIT_UNHEALTHY = 1

HEADERS = ("CLUSTER", "CONNECTED", "SYNCED", "STALE", "PODS", "NAMESPACES", "NODES", "LAST CHANGE", "VIA", "LAST ERROR")


@dataclass(frozen=True)
class TrackerStatus:
    """What one ``status`` call learnt."""

    address: str
    serving: bool
    clusters: pb.ListClustersResponse

    def problems(self) -> list[str]:
        """What makes the tracker unhealthy, one phrase each (empty: healthy)."""
        found = [] if self.serving else ["the tracker is not SERVING"]
        for info in self.clusters.clusters:
            status = info.status
            wrong = [
                what
                for what, bad in (
                    ("not connected", not status.connected),
                    ("not synced", not status.synced),
                    ("stale", status.stale),
                )
                if bad
            ]
            if wrong:
                found.append(f"{status.cluster} {', '.join(wrong)}")
        return found


def fetch_status(target: Target) -> TrackerStatus:
    """Health and ListClusters of the tracker; ``CommandError`` when it cannot be asked."""
    with target.channel() as channel:
        try:
            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=target.timeout)
            clusters = tracker_pb2_grpc.TrackerStub(channel).ListClusters(
                pb.ListClustersRequest(), timeout=target.timeout, metadata=target.metadata()
            )
        except grpc.RpcError as exc:
            raise target.rpc_error(exc, "ListClusters") from None
    return TrackerStatus(target.address, health.status == health_pb2.HealthCheckResponse.SERVING, clusters)


def _yes(value: bool) -> str:
    return "yes" if value else "no"


def _one_line(text: str) -> str:
    return " ".join(text.split())


def cluster_rows(clusters: pb.ListClustersResponse, now: float) -> list[tuple[str, ...]]:
    """One table row per cluster, in the order of :data:`HEADERS`."""
    rows = []
    for info in clusters.clusters:
        s = info.status
        changed = f"{age(now - info.last_change_time)} ago" if info.last_change_time else "never"
        rows.append(
            (
                s.cluster,
                _yes(s.connected),
                _yes(s.synced),
                _yes(s.stale),
                str(info.pods),
                str(info.namespaces),
                str(info.nodes),
                changed,
                ">".join(s.via) or "-",
                _one_line(s.last_error) or "-",
            )
        )
    return rows


def render_text(status: TrackerStatus, now: float) -> str:
    """The header line and the cluster table."""
    c = status.clusters
    watchers = f"{c.watchers} watcher" + ("" if c.watchers == 1 else "s")
    head = (
        f"tracker {status.address}: {'SERVING' if status.serving else 'NOT_SERVING'}, epoch {c.epoch}, "
        f"revision {c.revision}, {watchers}, {len(c.clusters)} clusters"
    )
    if not c.clusters:
        return head + "\n(no clusters)"
    return head + "\n" + render_table(HEADERS, cluster_rows(c, now))


def render_json(status: TrackerStatus) -> str:
    """The same as one JSON object (for scripts)."""
    c = status.clusters
    return json.dumps(
        {
            "address": status.address,
            "serving": status.serving,
            "healthy": not status.problems(),
            "problems": status.problems(),
            "epoch": c.epoch,
            "revision": c.revision,
            "watchers": c.watchers,
            "clusters": [
                {
                    "cluster": i.status.cluster,
                    "connected": i.status.connected,
                    "synced": i.status.synced,
                    "stale": i.status.stale,
                    "pods": i.pods,
                    "namespaces": i.namespaces,
                    "nodes": i.nodes,
                    "last_change_time": i.last_change_time or None,
                    "via": list(i.status.via),
                    "last_error": i.status.last_error,
                }
                for i in c.clusters
            ],
        },
        indent=2,
    )


def add_status_command(commands: argparse._SubParsersAction) -> None:
    """Register ``status``."""
    parser = commands.add_parser(
        "status",
        help="print a running tracker's clusters and watchers; exit 0 only when it is healthy",
        description="Print a running tracker's clusters as a table (or JSON) and its watcher count. Exit 0 when "
        "it is SERVING and every cluster is connected, synced and not stale; 1 when not (named on stderr); "
        "2 on bad input; 3 when the tracker cannot be reached.",
    )
    add_connection_arguments(parser)
    parser.add_argument("-o", "--output", choices=("table", "json"), default="table", help="output format")
    parser.set_defaults(handler=cmd_status)


def cmd_status(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """The ``status`` command (``CommandError`` for bad input or an unreachable tracker)."""
    status = fetch_status(target_from_args(args))
    print(render_json(status) if args.output == "json" else render_text(status, time.time()), file=out)
    problems = status.problems()
    if problems:
        print(f"unhealthy: {'; '.join(problems)}", file=err)
        return EXIT_UNHEALTHY
    return EXIT_HEALTHY
