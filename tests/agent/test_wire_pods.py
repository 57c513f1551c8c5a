"""Wire pods decoded straight into store entries agree with the general path (record, then entry)."""

from __future__ import annotations

import logging

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kube_ip_tracker import wire
from kube_ip_tracker.agent.policy.objects import Objects, PodEntry
from kube_ip_tracker.agent.store import AgentStore
from kube_ip_tracker.agent.wire_pods import PodDecoder
from kube_ip_tracker.api.v1 import tracker_pb2 as pb
from kube_ip_tracker.client.stream import WatchSession
from kube_ip_tracker.testing.messages import end, pod, snapshot

texts = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=150)
ports = st.lists(
    st.builds(
        pb.ContainerPort,
        name=st.sampled_from(["", "http", "metrics", "dns"]),
        port=st.integers(0, 65535),
        protocol=st.sampled_from([pb.PROTOCOL_UNSPECIFIED, pb.TCP, pb.UDP, pb.SCTP]),
    ),
    max_size=4,
)
addresses = st.lists(st.sampled_from(["10.0.0.1", "10.0.0.2", "fd00::1", "::ffff:10.0.0.1", "10.000.0.1"]), max_size=2)
pods = st.builds(
    pb.Pod,
    cluster=st.sampled_from(["", "c1", "cluster-two"]),
    namespace=st.sampled_from(["", "default", "n" * 200]),
    name=texts,
    labels=st.dictionaries(texts, texts, max_size=5),
    ports=ports,
    node=st.sampled_from(["", "node-1", "é" * 70]),
    ips=addresses,
    creation_timestamp=st.integers(-(2**63), 2**63 - 1),
    uid=texts,
)


def _fields(entry: PodEntry) -> tuple[object, ...]:
    return (entry.name, entry.identity, entry.addresses, entry.node, entry.creation_timestamp)


def _general(objects: Objects, msg: pb.Pod) -> PodEntry:
    return objects.entry(wire.pod_from_proto(msg))


@settings(max_examples=300, deadline=None)
@given(st.lists(pods, min_size=1, max_size=6))
def test_decoded_entries_equal_the_general_paths_and_share_its_identities(msgs: list[pb.Pod]) -> None:
    objects = Objects()
    decoder = PodDecoder(objects.identities)
    for msg in msgs + msgs:  # the second round finds every shared part remembered
        try:
            expected = _general(objects, msg)
        except ValueError:
            with pytest.raises(ValueError):
                decoder.entry(msg)
            continue
        got = decoder.entry(msg)
        assert _fields(got) == _fields(expected)
        assert got.identity is expected.identity  # one pool: the same record, not an equal copy


def test_shared_bytes_are_cluster_namespace_labels_and_ports_only() -> None:
    base = pod("a-1", ["10.0.0.1"], labels={"app": "a", "tier": "web"}).pod
    same = pb.Pod()
    same.CopyFrom(base)
    same.name, same.node, same.creation_timestamp, same.uid = "a-2", "node-9", 7, "other"
    same.ips[:] = ["10.0.0.2"]
    shared = wire.pod_shared_bytes(base.SerializeToString())
    assert shared is not None
    assert wire.pod_shared_bytes(same.SerializeToString()) == shared
    for field, value in (("cluster", "b"), ("namespace", "other")):
        changed = pb.Pod()
        changed.CopyFrom(base)
        setattr(changed, field, value)
        assert wire.pod_shared_bytes(changed.SerializeToString()) != shared
    relabelled = pb.Pod()
    relabelled.CopyFrom(base)
    relabelled.labels["tier"] = "db"
    assert wire.pod_shared_bytes(relabelled.SerializeToString()) != shared
    reported = pb.Pod()
    reported.CopyFrom(base)
    reported.ports[0].port = 81
    assert wire.pod_shared_bytes(reported.SerializeToString()) != shared
    relabelled.labels["long"] = "x" * 200  # a length of two bytes: decoded the general way
    assert wire.pod_shared_bytes(relabelled.SerializeToString()) is None


def test_out_of_order_wire_bytes_are_serialized_in_order_before_the_shared_part_is_read() -> None:
    # Labels sent after the node and IPs, and an unknown field 15: parsing and serializing again
    # puts the fields in number order (unknown last), which pod_shared_bytes relies on.
    def field(number: int, value: bytes) -> bytes:
        return bytes([number << 3 | 2, len(value)]) + value

    label = field(1, b"app") + field(2, b"web")
    data = field(1, b"c1") + field(6, b"node-1") + field(7, b"10.0.0.1") + field(4, label) + field(2, b"ns")
    data += field(15, b"future") + field(3, b"pod-1") + field(4, field(1, b"tier") + field(2, b"x"))
    msg = pb.Pod.FromString(data)
    objects = Objects()
    got = PodDecoder(objects.identities).entry(msg)
    assert dict(got.identity.labels) == {"app": "web", "tier": "x"}
    assert _fields(got) == _fields(_general(objects, msg))
    shared = wire.pod_shared_bytes(msg.SerializeToString())
    assert shared is not None and b"app" in shared and b"tier" in shared


def test_a_snapshot_pod_with_an_unparsable_ip_is_rejected_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    store = AgentStore()
    session = WatchSession(store)
    caplog.set_level(logging.ERROR)
    session.handle(snapshot([pod("good", ["10.0.0.1"]), pod("broken", ["10.0.0.999"])], 3))
    session.handle(end(3))
    assert store.pod("a", "default", "good") is not None
    assert store.pod("a", "default", "broken") is None
    assert "Pod a/default/broken from the tracker has an invalid IP" in caplog.text
