"""Hand-built WatchResponse messages for tests of the tracker client and its sinks."""

from __future__ import annotations

from collections.abc import Sequence

from kube_ip_tracker.api.v1 import tracker_pb2 as pb

WR = pb.WatchResponse
EPOCH = "epoch-1"


def pod(
    name: str,
    ips: Sequence[str],
    *,
    cluster: str = "a",
    namespace: str = "default",
    ts: int = 1000,
    labels: dict[str, str] | None = None,
    node: str = "node-1",
) -> pb.Change:
    return pb.Change(
        pod=pb.Pod(
            cluster=cluster,
            namespace=namespace,
            name=name,
            labels=labels or {"app": name},
            ports=[pb.ContainerPort(name="http", port=80, protocol=pb.TCP)],
            node=node,
            ips=list(ips),
            creation_timestamp=ts,
            uid=f"uid-{cluster}-{namespace}-{name}",
        )
    )


def pod_deleted(name: str, *, cluster: str = "a", namespace: str = "default") -> pb.Change:
    return pb.Change(pod=pb.Pod(cluster=cluster, namespace=namespace, name=name), deleted=True)


def namespace(name: str, *, cluster: str = "a", labels: dict[str, str] | None = None) -> pb.Change:
    return pb.Change(namespace=pb.Namespace(cluster=cluster, name=name, labels=labels or {"team": name}))


def node(name: str, *, cluster: str = "a", ips: Sequence[str] = ("192.168.0.1",)) -> pb.Change:
    return pb.Change(node=pb.Node(cluster=cluster, name=name, labels={"zone": "z1"}, internal_ips=list(ips)))


def status(cluster: str, *, synced: bool = True, deleted: bool = False) -> pb.Change:
    return pb.Change(
        cluster=pb.ClusterStatus(cluster=cluster, connected=True, synced=synced, kube_system_uid=f"ks-{cluster}"),
        deleted=deleted,
    )


def snapshot(
    changes: Sequence[pb.Change], revision: int, *, reset: bool = False, epoch: str = EPOCH
) -> pb.WatchResponse:
    return WR(kind=WR.SNAPSHOT, epoch=epoch, revision=revision, reset=reset, changes=list(changes))


def synced(cluster: str, revision: int, epoch: str = EPOCH) -> pb.WatchResponse:
    return WR(kind=WR.CLUSTER_SYNCED, epoch=epoch, revision=revision, cluster=cluster)


def end(revision: int, epoch: str = EPOCH) -> pb.WatchResponse:
    return WR(kind=WR.END_OF_SNAPSHOT, epoch=epoch, revision=revision)


def delta(first: int, changes: Sequence[pb.Change], epoch: str = EPOCH) -> pb.WatchResponse:
    return WR(
        kind=WR.DELTA, epoch=epoch, first_revision=first, revision=first + len(changes) - 1, changes=list(changes)
    )


def progress(revision: int, epoch: str = EPOCH) -> pb.WatchResponse:
    return WR(kind=WR.PROGRESS, epoch=epoch, revision=revision)


BASE = [
    status("a"),
    namespace("default"),
    node("node-1"),
    pod("web", ["10.0.0.1", "fd00::1"]),
    pod("db", ["10.0.0.2"]),
]
