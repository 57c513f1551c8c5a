"""Prometheus metrics of the dataplane, labelled by NFQUEUE number."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from .loop_metrics import LoopCounter, LoopHistogram

log = logging.getLogger("kube_ip_tracker.agent.dataplane")

# The per-packet ones are written by the event loop only, without a lock (see loop_metrics).
PACKETS_QUEUED = LoopCounter(
    "kube_ip_agent_dataplane_packets_queued_total",
    "Packets the kernel handed to the agent over NFQUEUE (first packets of connections).",
    ["queue"],
)
VERDICTS = LoopCounter(
    "kube_ip_agent_dataplane_verdicts_total",
    "Verdicts given, by result (accept/drop) and reason (decided, not-ready, timeout, error, parse-error, shutdown).",
    ["queue", "result", "reason"],
)
FAIL_OPEN_PASSES = Counter(
    "kube_ip_agent_dataplane_fail_open_passes_total",
    "Packets accepted without a decision because fail_open is on (agent not ready, decision error or timeout).",
    ["queue", "reason"],
)
QUEUE_ERRORS = Counter(
    "kube_ip_agent_dataplane_queue_errors_total",
    "Errors around the queue: receive, verdict (a verdict write failed), decision callback, unparseable packets, "
    "rebinds.",
    ["queue", "kind"],
)
PENDING = Gauge(
    "kube_ip_agent_dataplane_pending_verdicts",
    "Queued packets waiting for an asynchronous decision.",
    ["queue"],
)
DECISION_SECONDS = LoopHistogram(
    "kube_ip_agent_dataplane_decision_seconds",
    "From a queued packet's arrival in the agent to its verdict, for every queued packet (decided at once, after "
    "waiting for an unknown local pod's data, or given the default on a timeout, error, or shutdown): parse, "
    "policy decision, verdict log, verdict (handed to the batch written at the end of the wakeup).",
    ["queue"],
    buckets=(0.00002, 0.00005, 0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.05, 0.25),
)
CONNTRACK_CLEARED = Counter(
    "kube_ip_agent_dataplane_conntrack_cleared_total",
    "Accepted conntrack entries deleted by revalidation because their connection is no longer allowed.",
    ["queue"],
)
REVALIDATIONS = Counter(
    "kube_ip_agent_dataplane_revalidations_total",
    "Revalidation passes over accepted connections, by outcome (ok, not-ready, timeout, error).",
    ["queue", "outcome"],
)
REVALIDATION_SECONDS = Histogram(
    "kube_ip_agent_dataplane_revalidation_seconds",
    "Duration of revalidation passes.",
    ["queue"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
RULE_SYNCS = Counter(
    "kube_ip_agent_dataplane_rule_syncs_total",
    "Rule transactions (install, pods, remove), by result.",
    ["queue", "op", "result"],
)
BACKEND = Gauge(
    "kube_ip_agent_dataplane_backend",
    "1 for the backend holding the NFQUEUE rule (nft or iptables).",
    ["queue", "backend"],
)
REVALIDATION_RETRY_SECONDS = Gauge(
    "kube_ip_agent_dataplane_revalidation_retry_seconds",
    "Delay before the revalidation loop retries a failed or not-ready pass (0 when healthy).",
    ["queue"],
)
CACHE_FLUSHES = Counter(
    "kube_ip_agent_dataplane_verdict_cache_flushes_total",
    "Flushes of the kernel's verdict cache, by reason (change: a verdict may have changed; ready: provisional "
    "not-ready verdicts; stale-decision: a decision awaited across a change).",
    ["queue", "reason"],
)

NFQUEUE_PROC = "/proc/net/netfilter/nfnetlink_queue"


class KernelQueueCollector:
    """Kernel-side NFQUEUE counters from /proc (length, drops), per bound queue on this host."""

    def __init__(self, path: str = NFQUEUE_PROC) -> None:
        self.path = path

    def collect(self) -> Iterator[GaugeMetricFamily]:
        length = GaugeMetricFamily(
            "kube_ip_agent_dataplane_kernel_queue_length", "Packets waiting in the kernel queue.", labels=["queue"]
        )
        dropped = GaugeMetricFamily(
            "kube_ip_agent_dataplane_kernel_queue_dropped",
            "Packets the kernel dropped because the queue was full (fail-closed) or could not be sent, since bind.",
            labels=["queue"],
        )
        user_dropped = GaugeMetricFamily(
            "kube_ip_agent_dataplane_kernel_queue_user_dropped",
            "Packets lost because the agent's netlink socket buffer was full, since bind.",
            labels=["queue"],
        )
        for row in read_kernel_queues(self.path):
            queue = str(row["queue"])
            length.add_metric([queue], row["length"])
            dropped.add_metric([queue], row["dropped"])
            user_dropped.add_metric([queue], row["user_dropped"])
        yield length
        yield dropped
        yield user_dropped


def read_kernel_queues(path: str = NFQUEUE_PROC) -> list[dict[str, int]]:
    """Rows of /proc/net/netfilter/nfnetlink_queue: queue, portid, length, dropped, user_dropped."""
    try:
        with open(path) as handle:
            lines = handle.read().splitlines()
    except OSError:
        return []
    rows = []
    for line in lines:
        fields = line.split()
        if len(fields) < 7 or not all(f.isdigit() for f in fields[:7]):
            continue
        queue, portid, length, _mode, _range, dropped, user_dropped = (int(f) for f in fields[:7])
        rows.append(
            {"queue": queue, "portid": portid, "length": length, "dropped": dropped, "user_dropped": user_dropped}
        )
    return rows


REGISTRY.register(KernelQueueCollector())


class VerdictCacheCollector:
    """Entries, capacity and hits of each running dataplane's kernel verdict cache, read at scrape time."""

    def __init__(self) -> None:
        self._sources: dict[str, tuple[int, Callable[[], tuple[int, int]]]] = {}
        self._lock = threading.Lock()

    def register(self, queue: str, size: int, stats: Callable[[], tuple[int, int]]) -> None:
        with self._lock:
            self._sources[queue] = (size, stats)

    def unregister(self, queue: str) -> None:
        with self._lock:
            self._sources.pop(queue, None)

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        entries = GaugeMetricFamily(
            "kube_ip_agent_dataplane_verdict_cache_entries",
            "Allowed tuples in the kernel's verdict cache.",
            labels=["queue"],
        )
        capacity = GaugeMetricFamily(
            "kube_ip_agent_dataplane_verdict_cache_size",
            "The verdict cache's bound (--verdict-cache-size).",
            labels=["queue"],
        )
        hits = CounterMetricFamily(
            "kube_ip_agent_dataplane_verdict_cache_hits",
            "New connections the kernel accepted from the verdict cache without queueing (rule counter; "
            "restarts at 0 when the rules are re-installed).",
            labels=["queue"],
        )
        with self._lock:
            sources = list(self._sources.items())
        for queue, (size, stats) in sources:
            try:
                count, hit = stats()
            except Exception as exc:  # a scrape must not fail because one table vanished meanwhile
                log.warning("reading the verdict cache of queue %s failed: %s", queue, exc)
                continue
            entries.add_metric([queue], count)
            capacity.add_metric([queue], size)
            hits.add_metric([queue], hit)
        yield entries
        yield capacity
        yield hits


VERDICT_CACHES = VerdictCacheCollector()
REGISTRY.register(VERDICT_CACHES)
