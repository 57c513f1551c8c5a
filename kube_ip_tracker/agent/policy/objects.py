"""The tracker's objects as the agent holds them: compact pod entries sharing identities.

Every node runs an agent holding every pod of every cluster, so a pod costs only what a decision
needs of it:

* an :class:`Identity` is what pods of one deployment share: cluster, namespace, label map and
  container ports (plus the named-port table and the cached policy selection derived from them),
  pooled by content as Cilium's security identities are, so replicas point at one;
* a :class:`PodEntry` is then a name, its IP as a number (a tuple only for a pod with several), a
  reference to its identity, its node name (interned) and its creation time (the IP-ownership
  rule of :mod:`kube_ip_tracker.ipclaims`). A pod's uid is not kept: no verdict depends on it.

:class:`Objects` is one consistent set of pods, namespaces, nodes and cluster statuses with the IP
claims; the agent store builds a new one for a snapshot and swaps it in whole. Nothing here does
I/O or keeps metrics.
"""

from __future__ import annotations

import ipaddress
import socket
import sys
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from kube_ip_tracker.interning import Interner, SharedPool
from kube_ip_tracker.ipclaims import IPClaims
from kube_ip_tracker.model import ClusterStatusRecord, ContainerPort, NamespaceRecord, NodeRecord, PodRecord

from .compiled import V6_FLAG, IPAddress

if TYPE_CHECKING:
    from .world import Selection

NAME_LABEL = "kubernetes.io/metadata.name"
PodKey = tuple[str, str, str]
ObjectKey = tuple[str, str]
IdentityKey = tuple[str, str, int, int]  # cluster, namespace, id() of the shared labels and ports
NamedPorts = dict[tuple[str, str], frozenset[int]]

_intern = sys.intern
_inet_pton = socket.inet_pton
_AF_INET = socket.AF_INET


_AF_INET6 = socket.AF_INET6
_from_bytes = int.from_bytes


def ip_key(text: str) -> int:
    """The numeric key of an address given as text (any valid form); ValueError if it is none.

    Keys are ints (an IPv4 address is a 32 B int, its text 64 B): the IP claims, node addresses
    and lookups all use them, and a parsed address from the dataplane needs no text at all.
    """
    try:
        return _from_bytes(_inet_pton(_AF_INET, text), "big")
    except (OSError, ValueError, TypeError):
        pass
    try:
        return _from_bytes(_inet_pton(_AF_INET6, text), "big") | V6_FLAG
    except (OSError, ValueError, TypeError):
        pass
    return address_key(ipaddress.ip_address(text))  # ValueError naming the text; or a scoped IPv6 address


def address_key(ip: IPAddress) -> int:
    """The numeric key of a parsed address."""
    return int(ip) | V6_FLAG if ip.version == 6 else int(ip)


def key_text(key: int) -> str:
    """The canonical text of a key (Python's form, as ``str(ipaddress.ip_address(...))``)."""
    if key & V6_FLAG:
        return str(ipaddress.IPv6Address(key ^ V6_FLAG))
    return str(ipaddress.IPv4Address(key))


class Identity:
    """What pods with the same cluster, namespace, labels and ports share (one per such set)."""

    __slots__ = (
        "cluster",
        "labels",
        "named_ports",
        "namespace",
        "ports",
        "selection",
        "selection_gen",
        "staged_selection",
        "staged_selection_gen",
        "staged_tiers",
        "tiers",
    )

    def __init__(
        self,
        cluster: str,
        namespace: str,
        labels: Mapping[str, str],
        ports: tuple[ContainerPort, ...],
        named_ports: NamedPorts,
    ) -> None:
        self.cluster = cluster
        self.namespace = namespace
        self.labels = labels
        self.ports = ports
        self.named_ports = named_ports  # (name, protocol) -> port numbers, shared by equal port lists
        # Policies of (cluster, namespace) selecting these labels, valid at the world's policy generation.
        self.selection: Selection | None = None
        self.selection_gen = -1
        # (tier generation, namespace labels, TierRules): the Admin/Baseline rules cached by tiers.py.
        self.tiers: tuple[int, Mapping[str, str], Any] | None = None
        # The same two with the staged policies applied (only computed while staged policies exist).
        self.staged_selection: Selection | None = None
        self.staged_selection_gen = -1
        self.staged_tiers: tuple[int, Mapping[str, str], Any] | None = None

    def __repr__(self) -> str:
        return f"Identity({self.cluster}/{self.namespace} {dict(self.labels)} ports={len(self.ports)})"


class Identities:
    """The identity pool, shared by every :class:`Objects` of one store (so a new snapshot reuses
    the identities, and their cached selections, of the state it replaces)."""

    __slots__ = ("_interner", "_named", "_pool")

    def __init__(self) -> None:
        self._pool: SharedPool[IdentityKey, Identity] = SharedPool()
        self._interner = Interner()
        self._named: dict[tuple[ContainerPort, ...], NamedPorts] = {}

    def __len__(self) -> int:
        return len(self._pool)

    def get(
        self, cluster: str, namespace: str, labels: Mapping[str, str], ports: tuple[ContainerPort, ...]
    ) -> Identity:
        """The identity of these fields. Labels and ports are interned first; the identity is then
        keyed by their ids (an identity references both, so the ids stay unique while it is pooled)."""
        interner = self._interner
        shared_labels = interner.labels(labels)
        shared_ports = interner.ports(ports)
        key = (cluster, namespace, id(shared_labels), id(shared_ports))
        identity = self._pool.get(key)
        if identity is None:
            named = self._named_ports(shared_ports)
            identity = Identity(_intern(cluster), _intern(namespace), shared_labels, shared_ports, named)
            self._pool.add(key, identity)
        return identity

    def _named_ports(self, ports: tuple[ContainerPort, ...]) -> NamedPorts:
        table = self._named.get(ports)
        if table is None:
            named: dict[tuple[str, str], set[int]] = {}
            for port in ports:
                if port.name:
                    named.setdefault((port.name, port.protocol), set()).add(port.port)
            if len(self._named) >= 50_000:
                self._named.clear()
            table = self._named[ports] = {k: frozenset(v) for k, v in named.items()}
        return table


class PodEntry:
    """One pod: name, address key(s), identity, node and creation time.

    Implements ``ipclaims.Claim`` (claims are held under the numeric keys of :func:`ip_key`).
    ``addresses`` is the one key of a single-stack pod (most pods), a tuple for a pod with several
    (dual stack) or none.
    """

    __slots__ = ("addresses", "creation_timestamp", "identity", "name", "node")

    def __init__(
        self, name: str, identity: Identity, addresses: int | tuple[int, ...], node: str, creation_timestamp: int
    ) -> None:
        self.name = name
        self.identity = identity
        self.addresses = addresses
        self.node = node
        self.creation_timestamp = creation_timestamp

    @property
    def ips(self) -> tuple[int, ...]:
        """The address keys (what the IP claims are held under)."""
        addresses = self.addresses
        return (addresses,) if addresses.__class__ is int else addresses  # type: ignore[return-value]

    @property
    def ip_texts(self) -> tuple[str, ...]:
        """The addresses in canonical text form (built on each call)."""
        return tuple(key_text(key) for key in self.ips)

    @property
    def cluster(self) -> str:
        return self.identity.cluster

    @property
    def namespace(self) -> str:
        return self.identity.namespace

    @property
    def labels(self) -> Mapping[str, str]:
        return self.identity.labels

    @property
    def ports(self) -> tuple[ContainerPort, ...]:
        return self.identity.ports

    @property
    def named_ports(self) -> dict[tuple[str, str], frozenset[int]]:
        return self.identity.named_ports

    @property
    def key(self) -> PodKey:
        identity = self.identity
        return (identity.cluster, identity.namespace, self.name)

    @property
    def primary_ip(self) -> str | None:
        """The pod's first IP (status.podIP) as canonical text, or None for a pod without an address."""
        ips = self.ips
        return key_text(ips[0]) if ips else None

    @property
    def record(self) -> PodRecord:
        """The pod as a :class:`PodRecord` (built on each call, for tooling; the uid is not kept)."""
        identity = self.identity
        return PodRecord(identity.cluster, identity.namespace, self.name, identity.labels, identity.ports, self.node,
                         self.ip_texts, self.creation_timestamp)  # fmt: skip

    def decides_like(self, other: PodEntry) -> bool:
        """Whether every field a verdict can depend on is the same (the node is not one)."""
        return (
            self.identity is other.identity
            and self.addresses == other.addresses
            and self.creation_timestamp == other.creation_timestamp
        )

    def __repr__(self) -> str:
        return f"PodEntry({self.cluster}/{self.namespace}/{self.name} {self.ip_texts})"


class Objects:
    """Pods, namespaces, nodes and cluster statuses of every cluster, with the IP claims.

    Pods are held per (cluster, namespace) by name; an IP maps to its owning pod by the tracker's
    rule (:class:`~kube_ip_tracker.ipclaims.IPClaims`).
    """

    __slots__ = ("claims", "clusters", "identities", "namespace_labels", "namespaces", "nodes", "nodes_by_ip", "pod_count", "pods",
                 "synced")  # fmt: skip

    def __init__(self, identities: Identities | None = None) -> None:
        self.identities = identities if identities is not None else Identities()
        self.pods: dict[ObjectKey, dict[str, PodEntry]] = {}
        self.pod_count = 0
        self.claims: IPClaims[PodEntry] = IPClaims()
        self.namespaces: dict[ObjectKey, NamespaceRecord] = {}
        # Namespace labels as selectors see them (with the immutable name label).
        self.namespace_labels: dict[ObjectKey, Mapping[str, str]] = {}
        self.nodes: dict[ObjectKey, NodeRecord] = {}
        self.nodes_by_ip: dict[int, dict[ObjectKey, NodeRecord]] = {}  # InternalIP key -> nodes
        self.clusters: dict[str, ClusterStatusRecord] = {}
        self.synced: set[str] = set()

    # ---- pods -------------------------------------------------------------------------------

    def entry(self, record: PodRecord) -> PodEntry:
        """The compact entry of ``record`` (ValueError for an unparsable IP), not yet stored."""
        ips = record.ips
        addresses: int | tuple[int, ...] = ip_key(ips[0]) if len(ips) == 1 else tuple(ip_key(ip) for ip in ips)
        identity = self.identities.get(record.cluster, record.namespace, record.labels, record.ports)
        return PodEntry(record.name, identity, addresses, _intern(record.node), record.creation_timestamp)

    def set_pod(self, record: PodRecord) -> tuple[PodEntry, PodEntry | None]:
        """Add or replace a pod; returns the new entry and the one it replaced. ValueError for an
        unparsable IP (nothing is changed then)."""
        return self.put(self.entry(record))

    def put(self, entry: PodEntry) -> tuple[PodEntry, PodEntry | None]:
        """Store ``entry``, replacing the pod of the same key."""
        identity = entry.identity
        by_name = self.pods.get((identity.cluster, identity.namespace))
        if by_name is None:
            by_name = self.pods[(identity.cluster, identity.namespace)] = {}
        previous = by_name.get(entry.name)
        if previous is not None:
            self.claims.remove(previous)
        else:
            self.pod_count += 1
        by_name[entry.name] = entry
        self.claims.add(entry)
        return entry, previous

    def delete_pod(self, cluster: str, namespace: str, name: str) -> PodEntry | None:
        """Remove a pod; returns it (None for an unknown key)."""
        by_name = self.pods.get((cluster, namespace))
        if by_name is None:
            return None
        entry = by_name.pop(name, None)
        if entry is None:
            return None
        if not by_name:
            del self.pods[(cluster, namespace)]
        self.pod_count -= 1
        self.claims.remove(entry)
        return entry

    def pod(self, cluster: str, namespace: str, name: str) -> PodEntry | None:
        by_name = self.pods.get((cluster, namespace))
        return by_name.get(name) if by_name is not None else None

    def pod_by_ip(self, ip: str) -> PodEntry | None:
        """The pod owning ``ip`` (text in any valid form; None for no address at all)."""
        try:
            key = ip_key(ip)
        except ValueError:
            return None
        return self.claims.owner_record(key)

    def pod_by_key(self, key: int) -> PodEntry | None:
        """The pod owning the address of this key (the decision path)."""
        return self.claims.owner_record(key)

    def iter_pods(self, cluster: str | None = None) -> Iterator[PodEntry]:
        """Every pod (of one cluster if given), from a copy of the tables (safe while they change)."""
        tables = [t for (c, _), t in self.pods.items() if cluster is None or c == cluster]
        for by_name in tables:
            yield from list(by_name.values())

    # ---- namespaces, nodes, clusters --------------------------------------------------------

    def set_namespace(self, record: NamespaceRecord) -> NamespaceRecord | None:
        """Add or replace a namespace (the one place namespace records enter); returns the previous one."""
        key = (record.cluster, record.name)
        previous = self.namespaces.get(key)
        self.namespaces[key] = record
        labels = dict(record.labels)
        labels[NAME_LABEL] = record.name  # as the API server sets it
        self.namespace_labels[key] = labels
        return previous

    def delete_namespace(self, cluster: str, name: str) -> NamespaceRecord | None:
        """Remove a namespace (its pods stay until deleted themselves); returns it."""
        self.namespace_labels.pop((cluster, name), None)
        return self.namespaces.pop((cluster, name), None)

    def labels_of_namespace(self, cluster: str, name: str) -> Mapping[str, str]:
        """Labels of a namespace for selectors; an unknown namespace has only its immutable name label."""
        labels = self.namespace_labels.get((cluster, name))
        return labels if labels is not None else {NAME_LABEL: name}

    def set_node(self, record: NodeRecord) -> NodeRecord | None:
        """Add or replace a node; returns the previous one. ValueError for an unparsable InternalIP
        (nothing is changed then)."""
        keys = [ip_key(ip) for ip in record.internal_ips]
        previous = self.delete_node(record.cluster, record.name)
        self.nodes[record.key] = record
        for key in keys:
            self.nodes_by_ip.setdefault(key, {})[record.key] = record
        return previous

    def delete_node(self, cluster: str, name: str) -> NodeRecord | None:
        """Remove a node; returns it."""
        record = self.nodes.pop((cluster, name), None)
        if record is None:
            return None
        for ip in record.internal_ips:
            key = ip_key(ip)
            owners = self.nodes_by_ip.get(key)
            if owners is not None:
                owners.pop(record.key, None)
                if not owners:
                    del self.nodes_by_ip[key]
        return record

    def nodes_at(self, key: int) -> Iterator[NodeRecord]:
        """The nodes (of any cluster) that have the address of ``key`` as an InternalIP."""
        owners = self.nodes_by_ip.get(key)
        return iter(list(owners.values())) if owners else iter(())

    def set_cluster_status(self, status: ClusterStatusRecord) -> ClusterStatusRecord | None:
        previous = self.clusters.get(status.cluster)
        self.clusters[status.cluster] = status
        if status.synced:
            self.synced.add(status.cluster)
        return previous

    def remove_cluster(self, cluster: str) -> None:
        """Drop a cluster's status and every pod, namespace and node of it."""
        for key in [k for k in self.pods if k[0] == cluster]:
            for entry in self.pods.pop(key).values():
                self.claims.remove(entry)
                self.pod_count -= 1
        for key in [k for k in self.namespaces if k[0] == cluster]:
            self.delete_namespace(*key)
        for key in [k for k in self.nodes if k[0] == cluster]:
            self.delete_node(*key)
        self.synced.discard(cluster)
        self.clusters.pop(cluster, None)
