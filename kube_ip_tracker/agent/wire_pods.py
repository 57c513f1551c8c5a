"""Pods of the tracker's wire messages decoded straight into the agent store's entries.

The general path decodes a wire ``Pod`` into a :class:`~kube_ip_tracker.model.PodRecord` (every
label key and value a new, then interned, string) and the store then builds its compact
:class:`~kube_ip_tracker.agent.policy.objects.PodEntry` from the record. The pods of one workload
share cluster, namespace, labels and ports, which arrive as the same bytes each time
(:func:`kube_ip_tracker.wire.pod_shared_bytes`): :class:`PodDecoder` looks the
:class:`~kube_ip_tracker.agent.policy.objects.Identity` of those bytes up and reads only the
pod's own fields (name, node, addresses, creation time). The entry is the one the general path
builds for the same message (tests/agent/test_wire_pods.py checks it).
"""

from __future__ import annotations

import sys

from kube_ip_tracker import wire
from kube_ip_tracker.agent.policy.objects import Identities, Identity, PodEntry, ip_key
from kube_ip_tracker.api.v1 import tracker_pb2 as pb

_intern = sys.intern


class PodDecoder:
    """Builds store entries from wire ``Pod`` messages, remembering the identity of each shared part.

    The remembered identities are held (so not pruned from the pool) for the decoder's life: one
    decoder per snapshot. ``max_remembered`` bounds them for a long-lived one.
    """

    __slots__ = ("_by_bytes", "_identities", "_max")

    def __init__(self, identities: Identities, max_remembered: int = 100_000) -> None:
        self._identities = identities
        self._by_bytes: dict[bytes, Identity] = {}
        self._max = max_remembered

    def entry(self, msg: pb.Pod) -> PodEntry:
        """The entry of a wire pod (not yet stored); ``ValueError`` for an unparsable IP."""
        shared = wire.pod_shared_bytes(msg.SerializeToString())
        identity = self._by_bytes.get(shared) if shared is not None else None
        if identity is None:
            identity = self._identities.get(
                _intern(msg.cluster),
                _intern(msg.namespace),
                wire.intern_labels(msg.labels),
                wire.ports_from_proto(msg.ports) if msg.ports else (),
            )
            if shared is not None:
                if len(self._by_bytes) >= self._max:
                    self._by_bytes.clear()
                self._by_bytes[shared] = identity
        ips = msg.ips
        addresses: int | tuple[int, ...] = ip_key(ips[0]) if len(ips) == 1 else tuple(ip_key(ip) for ip in ips)
        return PodEntry(msg.name, identity, addresses, _intern(msg.node), msg.creation_timestamp)
