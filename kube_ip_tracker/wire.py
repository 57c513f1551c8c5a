"""Conversion between :mod:`kube_ip_tracker.model` records and the v1 wire messages.

Shared by the tracker (encoding) and the agent client (decoding). Decoding interns the strings
that repeat across many objects (cluster, namespace, node names, label keys and values) so a
mirror of 100k pods does not hold 100k copies of ``"default"``.

Besides the message builders there is a small hand-written encoder for ``WatchResponse``:
a response is a few scalar fields plus ``repeated Change changes = 6``, so a batch's changes can
be serialized once each and concatenated into any number of responses (one per watcher filter,
one per chunk) without building protobuf objects again.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping

from kube_ip_tracker.api.v1 import tracker_pb2 as pb
from kube_ip_tracker.model import (
    ClusterStatusRecord,
    ContainerPort,
    Kind,
    NamespaceRecord,
    NodeRecord,
    PodRecord,
)

AnyRecord = PodRecord | NamespaceRecord | NodeRecord | ClusterStatusRecord

_PROTOCOL_TO_PB = {"TCP": pb.TCP, "UDP": pb.UDP, "SCTP": pb.SCTP}
_PROTOCOL_FROM_PB = {pb.TCP: "TCP", pb.UDP: "UDP", pb.SCTP: "SCTP", pb.PROTOCOL_UNSPECIFIED: "TCP"}

_intern = sys.intern


def intern_labels(labels: Mapping[str, str]) -> dict[str, str]:
    """A new dict of ``labels`` with interned keys and values.

    Iterates keys and indexes (a protobuf map's ``items()`` is the generic, much slower ``ItemsView``).
    """
    return {_intern(k): _intern(labels[k]) for k in labels}


# -- records -> protos -------------------------------------------------------------------------


def pod_to_proto(record: PodRecord) -> pb.Pod:
    """Build the wire ``Pod`` of a record."""
    return pb.Pod(
        cluster=record.cluster,
        namespace=record.namespace,
        name=record.name,
        labels=record.labels,
        ports=[pb.ContainerPort(name=p.name, port=p.port, protocol=_protocol_to_pb(p.protocol)) for p in record.ports],
        node=record.node,
        ips=record.ips,
        creation_timestamp=record.creation_timestamp,
        uid=record.uid,
    )


def namespace_to_proto(record: NamespaceRecord) -> pb.Namespace:
    """Build the wire ``Namespace`` of a record."""
    return pb.Namespace(cluster=record.cluster, name=record.name, labels=record.labels)


def node_to_proto(record: NodeRecord) -> pb.Node:
    """Build the wire ``Node`` of a record."""
    return pb.Node(cluster=record.cluster, name=record.name, labels=record.labels, internal_ips=record.internal_ips)


def cluster_status_to_proto(record: ClusterStatusRecord) -> pb.ClusterStatus:
    """Build the wire ``ClusterStatus`` of a record."""
    return pb.ClusterStatus(
        cluster=record.cluster,
        connected=record.connected,
        synced=record.synced,
        stale=record.stale,
        last_error=record.last_error,
        kube_system_uid=record.kube_system_uid,
        via=record.via,
    )


def change_to_proto(record: AnyRecord, deleted: bool = False) -> pb.Change:
    """Build a ``Change``; a deletion carries only the object's key."""
    if isinstance(record, PodRecord):
        if deleted:
            return pb.Change(
                pod=pb.Pod(cluster=record.cluster, namespace=record.namespace, name=record.name), deleted=True
            )
        return pb.Change(pod=pod_to_proto(record))
    if isinstance(record, NamespaceRecord):
        if deleted:
            return pb.Change(namespace=pb.Namespace(cluster=record.cluster, name=record.name), deleted=True)
        return pb.Change(namespace=namespace_to_proto(record))
    if isinstance(record, NodeRecord):
        if deleted:
            return pb.Change(node=pb.Node(cluster=record.cluster, name=record.name), deleted=True)
        return pb.Change(node=node_to_proto(record))
    if isinstance(record, ClusterStatusRecord):
        if deleted:
            return pb.Change(cluster=pb.ClusterStatus(cluster=record.cluster), deleted=True)
        return pb.Change(cluster=cluster_status_to_proto(record))
    raise TypeError(f"cannot encode {type(record).__name__} as a Change")


def encode_change(record: AnyRecord, deleted: bool = False) -> bytes:
    """Serialized ``Change`` of a record, for :func:`encode_response`.

    Pod upserts (nearly every change, and every snapshot object but a few) are serialized by
    :func:`encode_pod_change` without building protobuf objects; the rest by :func:`change_to_proto`.
    """
    if not deleted and type(record) is PodRecord:
        return encode_pod_change(record)
    return change_to_proto(record, deleted).SerializeToString()


# -- hand-written Pod encoding ------------------------------------------------------------------
# Building the upb message costs more than the bytes it produces: a Pod is strings, one int64, a
# string map and repeated ContainerPort, written here directly. The label map and port list are
# usually the same for many pods, so their encodings are cached (labels by content, ports by the
# identity of the immutable tuple, held by the cache so the id cannot be reused); both caches are
# bounded and simply cleared when full.

_CACHE_MAX = 20_000
_labels_cache: dict[tuple[tuple[str, str], ...], bytes] = {}
_label_entries: dict[tuple[str, str], bytes] = {}  # one map entry per (key, value), for label sets not cached
_shared_fields: dict[tuple[bytes, str], bytes] = {}  # cluster, namespace and node: few values, many pods
_ports_cache: dict[int, tuple[tuple[ContainerPort, ...], bytes]] = {}


def _string_field(tag: bytes, value: str) -> bytes:
    raw = value.encode()
    n = len(raw)
    return tag + (bytes((n,)) if n < 0x80 else _varint(n)) + raw


def _shared_field(tag: bytes, value: str) -> bytes:
    """:func:`_string_field` of a value many pods share, cached."""
    key = (tag, value)
    out = _shared_fields.get(key)
    if out is None:
        if len(_shared_fields) >= _CACHE_MAX:
            _shared_fields.clear()
        out = _shared_fields[key] = _string_field(tag, value)
    return out


def _label_entry(item: tuple[str, str]) -> bytes:
    out = _label_entries.get(item)
    if out is None:
        entry = _string_field(b"\x0a", item[0]) + _string_field(b"\x12", item[1])
        if len(_label_entries) >= _CACHE_MAX:
            _label_entries.clear()
        out = _label_entries[item] = b"\x22" + _varint(len(entry)) + entry
    return out


def _labels_field(labels: Mapping[str, str]) -> bytes:
    key = tuple(labels.items())
    out = _labels_cache.get(key)
    if out is None:  # a new label set: usually all but one of its entries were seen before
        out = b"".join(map(_label_entry, key))
        if len(_labels_cache) >= _CACHE_MAX:
            _labels_cache.clear()
        _labels_cache[key] = out
    return out


def _ports_field(ports: tuple[ContainerPort, ...]) -> bytes:
    cached = _ports_cache.get(id(ports))
    if cached is not None and cached[0] is ports:
        return cached[1]
    out = pb.Pod(
        ports=[pb.ContainerPort(name=p.name, port=p.port, protocol=_protocol_to_pb(p.protocol)) for p in ports]
    ).SerializeToString()
    if len(_ports_cache) >= _CACHE_MAX:
        _ports_cache.clear()
    _ports_cache[id(ports)] = (ports, out)
    return out


def encode_pod_change(r: PodRecord) -> bytes:
    """``Change{pod}`` of a pod upsert, serialized by hand; parses to the same message as :func:`change_to_proto`."""
    parts = [
        _shared_field(b"\x0a", r.cluster) if r.cluster else b"",
        _shared_field(b"\x12", r.namespace) if r.namespace else b"",
        _string_field(b"\x1a", r.name) if r.name else b"",
        _labels_field(r.labels) if r.labels else b"",
        _ports_field(r.ports) if r.ports else b"",
        _shared_field(b"\x32", r.node) if r.node else b"",
        *[_string_field(b"\x3a", ip) for ip in r.ips],
        b"\x40" + _varint(r.creation_timestamp & 0xFFFFFFFFFFFFFFFF) if r.creation_timestamp else b"",
        _string_field(b"\x4a", r.uid) if r.uid else b"",
    ]
    pod = b"".join(parts)
    return b"\x0a" + _varint(len(pod)) + pod


# -- protos -> records -------------------------------------------------------------------------


def pod_from_proto(msg: pb.Pod) -> PodRecord:
    """Build a record from a wire ``Pod`` (repeated strings interned)."""
    return PodRecord(
        cluster=_intern(msg.cluster),
        namespace=_intern(msg.namespace),
        name=msg.name,
        labels=intern_labels(msg.labels),
        ports=_ports_from_proto(msg.ports) if msg.ports else (),
        node=_intern(msg.node),
        ips=tuple(msg.ips),
        creation_timestamp=msg.creation_timestamp,
        uid=msg.uid,
    )


def pod_shared_bytes(data: bytes) -> bytes | None:
    """What a serialized ``Pod`` holds that the pods of one workload share: the bytes of its fields
    1 and 2 (cluster, namespace) followed by those of 4 and 5 (labels, ports), tags included.

    Equal bytes decode to equal cluster, namespace, labels and ports, so a decoder can look what it
    built from them up by these bytes instead of decoding them again (the labels are the costly
    part of a pod). ``data`` must be what protobuf's ``SerializeToString`` of a parsed ``Pod``
    gives: every implementation writes known fields in number order (unknown ones last), which
    this relies on. ``None`` when the layout is anything else (a length of two or more bytes in
    fields 1 to 5, a field out of order): decode the message instead.
    """
    n = len(data)
    j = 0
    namespace_end = 0
    while j < n:  # fields 1-3: cluster, namespace, name
        tag = data[j]
        if tag > 0x1A:
            break
        if tag & 7 != 2 or j + 1 >= n or data[j + 1] & 0x80:
            return None
        j += 2 + data[j + 1]
        if tag != 0x1A:
            namespace_end = j
    start = j
    while j < n:  # fields 4-5: labels (map entries), ports
        tag = data[j]
        if tag != 0x22 and tag != 0x2A:
            break
        if j + 1 >= n or data[j + 1] & 0x80:
            return None
        j += 2 + data[j + 1]
    if j > n or (j < n and data[j] < 0x2A):
        return None
    return data[:namespace_end] + data[start:j]


_decoded_ports: dict[tuple[tuple[str, int, int], ...], tuple[ContainerPort, ...]] = {}


def _ports_from_proto(ports: Iterable[pb.ContainerPort]) -> tuple[ContainerPort, ...]:
    """Port tuples shared between decoded pods (most pods repeat a few port lists); bounded cache."""
    key = tuple((p.name, p.port, p.protocol) for p in ports)
    shared = _decoded_ports.get(key)
    if shared is None:
        if len(_decoded_ports) >= _CACHE_MAX:
            _decoded_ports.clear()
        shared = _decoded_ports[key] = tuple(
            ContainerPort(_intern(name), port, _PROTOCOL_FROM_PB.get(protocol, "TCP")) for name, port, protocol in key
        )
    return shared


ports_from_proto = _ports_from_proto  # public name for decoders of their own (the agent store's)


def namespace_from_proto(msg: pb.Namespace) -> NamespaceRecord:
    """Build a record from a wire ``Namespace``."""
    return NamespaceRecord(cluster=_intern(msg.cluster), name=_intern(msg.name), labels=intern_labels(msg.labels))


def node_from_proto(msg: pb.Node) -> NodeRecord:
    """Build a record from a wire ``Node``."""
    return NodeRecord(
        cluster=_intern(msg.cluster),
        name=_intern(msg.name),
        labels=intern_labels(msg.labels),
        internal_ips=tuple(msg.internal_ips),
    )


def cluster_status_from_proto(msg: pb.ClusterStatus) -> ClusterStatusRecord:
    """Build a record from a wire ``ClusterStatus``."""
    return ClusterStatusRecord(
        cluster=_intern(msg.cluster),
        connected=msg.connected,
        synced=msg.synced,
        stale=msg.stale,
        last_error=msg.last_error,
        kube_system_uid=msg.kube_system_uid,
        via=tuple(msg.via),
    )


def record_kind(record: PodRecord | NamespaceRecord | NodeRecord) -> Kind:
    """The :class:`Kind` of an object record."""
    if isinstance(record, PodRecord):
        return Kind.POD
    if isinstance(record, NamespaceRecord):
        return Kind.NAMESPACE
    if isinstance(record, NodeRecord):
        return Kind.NODE
    raise TypeError(f"not an object record: {type(record).__name__}")


def _protocol_to_pb(protocol: str) -> int:
    try:
        return _PROTOCOL_TO_PB[protocol]
    except KeyError:
        raise ValueError(f"unknown container port protocol {protocol!r} (want TCP, UDP or SCTP)") from None


# -- WatchResponse encoding from pre-serialized changes -----------------------------------------


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        bits = value & 0x7F
        value >>= 7
        if value:
            out.append(bits | 0x80)
        else:
            out.append(bits)
            return bytes(out)


varint = _varint  # public name for the server's encoders

_CHANGES_TAG = b"\x32"  # field 6, wire type 2


def frame_change(change: bytes) -> bytes:
    """The bytes one serialized ``Change`` takes inside a ``WatchResponse`` (tag + length + body)."""
    return _CHANGES_TAG + _varint(len(change)) + change


def encode_response(
    kind: int,
    epoch: str,
    revision: int,
    *,
    first_revision: int = 0,
    reset: bool = False,
    cluster: str = "",
    framed_changes: Iterable[bytes] = (),
) -> bytes:
    """Serialize a ``WatchResponse`` whose changes are already framed by :func:`frame_change`.

    The result parses to the same message protobuf itself would produce from the same fields.
    """
    parts: list[bytes] = []
    if kind:
        parts.append(b"\x08" + _varint(kind))
    if epoch:
        raw = epoch.encode()
        parts.append(b"\x12" + _varint(len(raw)) + raw)
    if revision:
        parts.append(b"\x18" + _varint(revision))
    if first_revision:
        parts.append(b"\x20" + _varint(first_revision))
    if reset:
        parts.append(b"\x28\x01")
    parts.extend(framed_changes)
    if cluster:
        raw = cluster.encode()
        parts.append(b"\x3a" + _varint(len(raw)) + raw)
    return b"".join(parts)


def response_header(data: bytes, *, whole: bool = False) -> tuple[int, int, int]:
    """``(kind, revision, first_revision)`` of a serialized ``WatchResponse``.

    By default only the fields before the changes are read (enough for what :func:`encode_response`
    writes); ``whole`` reads to the end, skipping the changes, as a merged DELTA repeats fields after them.
    """
    kind = revision = first_revision = 0
    i, n = 0, len(data)
    while i < n:
        tag = data[i]
        if tag == _CHANGES_TAG[0] and not whole:
            break
        value, i = read_varint(data, i + 1)
        if tag & 7 == 2:
            i += value
        elif tag == 0x08:
            kind = value
        elif tag == 0x18:
            revision = value
        elif tag == 0x20:
            first_revision = value
    return kind, revision, first_revision


def read_varint(data: bytes, i: int) -> tuple[int, int]:
    """The varint at ``data[i:]`` and the index after it."""
    value = shift = 0
    while True:
        b = data[i]
        i += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if b < 0x80:
            return value, i
