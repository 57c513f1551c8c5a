"""The hand-written pod encoder (``wire.encode_pod_change``) parses to exactly what protobuf builds."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from kube_ip_tracker import wire
from kube_ip_tracker.api.v1 import tracker_pb2 as pb
from kube_ip_tracker.model import ContainerPort, PodRecord

text = st.text(max_size=200)
ports = st.builds(
    ContainerPort,
    st.text(max_size=20),
    st.integers(min_value=0, max_value=65535),
    st.sampled_from(["TCP", "UDP", "SCTP"]),
)
pods = st.builds(
    PodRecord,
    cluster=text,
    namespace=text,
    name=text,
    labels=st.dictionaries(text, text, max_size=6),
    ports=st.lists(ports, max_size=3).map(tuple),
    node=text,
    ips=st.lists(text, max_size=3).map(tuple),
    creation_timestamp=st.integers(min_value=-(2**63), max_value=2**63 - 1),
    uid=text,
)


@given(pods)
def test_pod_change_encoding_parses_to_the_protobuf_message(pod: PodRecord) -> None:
    expected = wire.change_to_proto(pod)
    assert pb.Change.FromString(wire.encode_pod_change(pod)) == expected
    assert pb.Change.FromString(wire.encode_change(pod)) == expected
    # Twice: the second time label and port encodings come from the caches.
    assert pb.Change.FromString(wire.encode_change(pod)) == expected


def test_cached_label_encoding_follows_the_content_not_the_object() -> None:
    labels = {"app": "a"}
    pod = PodRecord("c", "ns", "p", labels, (), "n", ("10.0.0.1",))
    first = pb.Change.FromString(wire.encode_change(pod))
    labels["app"] = "b"  # a plain dict changed in place must not reuse the old bytes
    assert pb.Change.FromString(wire.encode_change(pod)).pod.labels == {"app": "b"}
    assert first.pod.labels == {"app": "a"}


def test_deleted_pods_and_other_kinds_still_encode_through_protobuf() -> None:
    pod = PodRecord("c", "ns", "p", {"a": "b"}, (), "n", ("10.0.0.1",))
    deleted = pb.Change.FromString(wire.encode_change(pod, deleted=True))
    assert deleted.deleted and deleted.pod.name == "p" and not deleted.pod.labels


@given(pods)
def test_decoding_round_trips_and_shares_port_tuples(pod: PodRecord) -> None:
    msg = wire.pod_to_proto(pod)
    first, second = wire.pod_from_proto(msg), wire.pod_from_proto(pb.Pod.FromString(msg.SerializeToString()))
    assert first == second == pod
    assert first.ports is second.ports  # equal port lists are one shared tuple
