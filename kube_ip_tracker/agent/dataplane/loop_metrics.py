"""Counters and a histogram for the per-packet path, written by one thread (the event loop) without a lock.

prometheus_client's ``inc``/``observe`` take a lock and check the metric each time (~1 us per call on
this machine); a queued packet updated seven of them. These keep plain numbers per label set, written
only from the event-loop thread, and are read by the registry at scrape time (a scrape from another
thread sees each number either before or after an update, never torn). They are exposed under the same
names, types and labels as prometheus_client's own.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Generic, TypeVar

from prometheus_client import REGISTRY
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString

Child = TypeVar("Child")


class _LoopFamily(Generic[Child]):
    """A labelled metric registered with the default registry; children made by ``new_child``."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str], new_child: Callable[[], Child]):
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._new_child = new_child
        self._children: dict[tuple[str, ...], Child] = {}
        self._lock = threading.Lock()  # only for creating children, never on an update
        REGISTRY.register(self)

    def labels(self, *values: object) -> Child:
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name}: expected labels {self.labelnames}, got {values}")
        key = tuple(str(v) for v in values)
        child = self._children.get(key)
        if child is None:
            with self._lock:
                child = self._children.setdefault(key, self._new_child())
        return child

    def _items(self) -> list[tuple[tuple[str, ...], Child]]:
        return list(self._children.items())


class LoopCounterChild:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount


class LoopCounter(_LoopFamily[LoopCounterChild]):
    """A labelled counter for one writing thread; ``labels(...).inc()`` as prometheus_client."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str]) -> None:
        super().__init__(name, documentation, labelnames, LoopCounterChild)

    def describe(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for key, child in self._items():
            family.add_metric(list(key), child.value)
        yield family


class LoopHistogramChild:
    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, amount: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, amount)] += 1
        self.sum += amount


class LoopHistogram(_LoopFamily[LoopHistogramChild]):
    """A labelled histogram for one writing thread; ``labels(...).observe(x)`` as prometheus_client."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str], buckets: Sequence[float]) -> None:
        self.bounds = tuple(sorted(buckets))
        super().__init__(name, documentation, labelnames, lambda: LoopHistogramChild(self.bounds))

    def describe(self) -> Iterator[HistogramMetricFamily]:
        yield HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for key, child in self._items():
            counts = list(child.counts)
            buckets, total = [], 0
            for bound, count in zip((*self.bounds, float("inf")), counts, strict=True):
                total += count
                buckets.append((floatToGoString(bound), total))
            family.add_metric(list(key), buckets, child.sum)
        yield family
