"""Sharing of the strings, label maps and port tuples that repeat across many records.

The tracker's index and the agent's store both hold every pod of many clusters. A deployment's
replicas carry the same label map and port list, and every pod repeats its cluster, namespace and
node names, so both keep one object of each and let records point at it.

* :class:`SharedPool`: key -> one shared value. Values that nothing but the pool references any
  more are pruned by reference count whenever the pool doubled since the last prune, so the
  amortized cost stays O(1) per lookup and the pool stays within twice the values in use (a plain
  dict: a ``WeakValueDictionary`` lookup runs Python code on every pod).
* :class:`Interner`: label maps (as :class:`Labels`) and port tuples, with interned strings.
"""

from __future__ import annotations

import sys
from collections.abc import Hashable, Mapping
from typing import Generic, TypeVar

from kube_ip_tracker.model import ContainerPort

_intern = sys.intern

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Labels(dict[str, str]):
    """A label map shared between records; never mutated once built."""

    __slots__ = ()


class SharedPool(Generic[K, V]):
    """One shared value per key; values only the pool still references are pruned as it grows."""

    __slots__ = ("_items", "_min", "_prune_at")

    def __init__(self, prune_min: int = 1024) -> None:
        self._items: dict[K, V] = {}
        self._min = prune_min
        self._prune_at = prune_min

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: K) -> V | None:
        return self._items.get(key)

    def add(self, key: K, value: V) -> V:
        """Pool ``value`` under ``key`` (pruning unused values first if the pool doubled)."""
        self._items[key] = value
        if len(self._items) >= self._prune_at:
            self.prune()
        return value

    def prune(self) -> None:
        """Drop values only the pool references (refcount 2: the pool's value and getrefcount's argument)."""
        items = self._items
        getrefcount = sys.getrefcount
        for k in [k for k in items if getrefcount(items[k]) <= 2]:
            del items[k]
        self._prune_at = max(self._min, 2 * len(items))


class Interner:
    """Shares label maps (by content) and port tuples between records."""

    _PORTS_POOL_MAX = 50_000

    def __init__(self) -> None:
        self._labels: SharedPool[tuple[tuple[str, str], ...], Labels] = SharedPool()
        self._ports: dict[tuple[ContainerPort, ...], tuple[ContainerPort, ...]] = {}

    def labels(self, labels: Mapping[str, str]) -> Labels:
        """The shared map equal to ``labels`` (same items in the same order)."""
        items = tuple(labels.items())
        shared = self._labels.get(items)
        if shared is None:
            shared = self._labels.add(items, Labels((_intern(k), _intern(v)) for k, v in items))
        return shared

    @property
    def labels_pooled(self) -> int:
        """Label maps in the pool (some may be unused until the next prune)."""
        return len(self._labels)

    def ports(self, ports: tuple[ContainerPort, ...]) -> tuple[ContainerPort, ...]:
        """The shared tuple equal to ``ports``."""
        if not ports:
            return ()
        shared = self._ports.get(ports)
        if shared is None:
            if len(self._ports) >= self._PORTS_POOL_MAX:
                self._ports.clear()
            shared = tuple(ContainerPort(_intern(p.name), p.port, _intern(p.protocol)) for p in ports)
            self._ports[shared] = shared
        return shared
