"""``--policy-audit-mode``: the agent decides, logs and counts as usual but accepts every connection.

It applies to the whole node (as Cilium's policy audit mode does): a rollout tool to see what the
policies would cut before they do. ``/readyz`` answers ``ok`` with :data:`NOT_ENFORCING`, the start-up
log says it at warning level, and ``kube_ip_agent_policy_audit_mode`` is 1.

Audit mode implies ``--fail-open``: connections the agent cannot decide (not ready yet, a full queue, a
decision that failed or timed out) are accepted too, never dropped.

The kernel's verdict cache is off in audit mode: it would take a denied connection, accepted only
because of audit mode, as an allowed tuple and accept its next connections without asking the agent,
so those would be neither counted nor logged. With it off every new connection reaches the agent.
Leaving audit mode is a restart, whose rule install starts with an empty cache and whose first
revalidation cuts the accepted connections the policies deny.
"""

from __future__ import annotations

import argparse
import dataclasses

from prometheus_client import Gauge

from kube_ip_tracker.agent.dataplane import DataplaneConfig

AUDIT_MODE = Gauge(
    "kube_ip_agent_policy_audit_mode",
    "1 while the agent runs with --policy-audit-mode: policies are decided, logged and counted, never enforced.",
)
NOT_ENFORCING = (
    "policy audit mode: this node does not enforce policies (every connection is accepted; "
    "what the policies deny is logged and counted)"
)


def add_audit_argument(group: argparse._ArgumentGroup) -> None:
    """``--policy-audit-mode``."""
    group.add_argument(
        "--policy-audit-mode",
        action="store_true",
        help="decide, log and count connections as usual but accept every one: this node enforces no policy "
        "(implies --fail-open; the verdict cache is off)",
    )


def audit_dataplane(config: DataplaneConfig) -> DataplaneConfig:
    """The dataplane configuration for audit mode: fail-open, no verdict cache (see the module docstring)."""
    return dataclasses.replace(config, verdict_cache_size=0, fail_open=True)
