"""Prometheus metrics of the dataplane, labelled by NFQUEUE number."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

PACKETS_QUEUED = Counter(
    "kube_ip_agent_dataplane_packets_queued_total",
    "Packets the kernel handed to the agent over NFQUEUE (first packets of connections).",
    ["queue"],
)
VERDICTS = Counter(
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
    "Errors around the queue: receive, verdict, decision callback, unparseable packets, rebinds.",
    ["queue", "kind"],
)
PENDING = Gauge(
    "kube_ip_agent_dataplane_pending_verdicts",
    "Queued packets waiting for an asynchronous decision.",
    ["queue"],
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
