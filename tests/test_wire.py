"""Record <-> proto conversion and the hand-written WatchResponse encoder."""

from __future__ import annotations

import pytest

from kube_ip_tracker import wire
from kube_ip_tracker.api.v1 import tracker_pb2 as pb
from kube_ip_tracker.model import ClusterStatusRecord, ContainerPort, NamespaceRecord, NodeRecord, PodRecord

POD = PodRecord(
    cluster="a",
    namespace="default",
    name="web-1",
    labels={"app": "web", "tier": "front"},
    ports=(ContainerPort("http", 80, "TCP"), ContainerPort("dns", 53, "UDP"), ContainerPort("s", 9, "SCTP")),
    node="node-1",
    ips=("10.0.0.1", "fd00::1"),
    creation_timestamp=1700000000,
    uid="uid-1",
)
NS = NamespaceRecord("a", "default", {"team": "x"})
NODE = NodeRecord("a", "node-1", {"zone": "z1"}, ("192.0.2.1",))
STATUS = ClusterStatusRecord("a", True, True, False, "boom", "ks-uid", ("t1", "t2"))


def test_records_round_trip() -> None:
    assert wire.pod_from_proto(wire.pod_to_proto(POD)) == POD
    assert wire.namespace_from_proto(wire.namespace_to_proto(NS)) == NS
    assert wire.node_from_proto(wire.node_to_proto(NODE)) == NODE
    assert wire.cluster_status_from_proto(wire.cluster_status_to_proto(STATUS)) == STATUS


def test_decoded_strings_are_interned() -> None:
    a = wire.pod_from_proto(pb.Pod.FromString(wire.pod_to_proto(POD).SerializeToString()))
    b = wire.pod_from_proto(pb.Pod.FromString(wire.pod_to_proto(POD).SerializeToString()))
    assert a.namespace is b.namespace and a.node is b.node
    assert next(iter(a.labels)) is next(iter(b.labels))


def test_deleted_change_carries_only_the_key() -> None:
    change = wire.change_to_proto(POD, deleted=True)
    assert change.deleted and change.pod == pb.Pod(cluster="a", namespace="default", name="web-1")
    assert wire.change_to_proto(NS, True).namespace == pb.Namespace(cluster="a", name="default")
    assert wire.change_to_proto(NODE, True).node == pb.Node(cluster="a", name="node-1")
    assert wire.change_to_proto(STATUS, True).cluster == pb.ClusterStatus(cluster="a")


def test_bad_protocol_is_named() -> None:
    bad = PodRecord("a", "n", "p", {}, (ContainerPort("x", 1, "ICMP"),), "", ("10.0.0.1",))
    with pytest.raises(ValueError, match="ICMP"):
        wire.pod_to_proto(bad)


@pytest.mark.parametrize("revision", [0, 1, 127, 128, 300, 2**40])
def test_encode_response_matches_protobuf(revision: int) -> None:
    changes = [wire.change_to_proto(POD), wire.change_to_proto(NS, True), wire.change_to_proto(STATUS)]
    framed = [wire.frame_change(c.SerializeToString()) for c in changes]
    raw = wire.encode_response(
        pb.WatchResponse.DELTA, "epoch-é", revision, first_revision=revision // 2, reset=True, framed_changes=framed
    )
    expected = pb.WatchResponse(
        kind=pb.WatchResponse.DELTA,
        epoch="epoch-é",
        revision=revision,
        first_revision=revision // 2,
        reset=True,
        changes=changes,
    )
    assert pb.WatchResponse.FromString(raw) == expected
    synced = wire.encode_response(pb.WatchResponse.CLUSTER_SYNCED, "e", 5, cluster="b" * 200)
    assert pb.WatchResponse.FromString(synced) == pb.WatchResponse(
        kind=pb.WatchResponse.CLUSTER_SYNCED, epoch="e", revision=5, cluster="b" * 200
    )
