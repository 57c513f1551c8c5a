"""The agent's verdict for a queued packet: which directions this agent enforces, and the decision.

NetworkPolicy enforcement for a pod happens in that pod's cluster: egress at the source's cluster,
ingress at the destination's. So an agent of cluster C applies the egress decision only when the
source is a pod of C, and the ingress decision only when the destination is a pod of C. A connection
between two clusters is therefore checked by both agents (each for its own side); a connection where
neither end is a pod of C passes this agent untouched.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from prometheus_client import Counter

from kube_ip_tracker.agent.dataplane import PacketInfo, Protocol
from kube_ip_tracker.agent.policy import PolicyEngine, Reason, Verdict
from kube_ip_tracker.agent.policy.evaluator import Endpoint

log = logging.getLogger(__name__)

DECISIONS = Counter(
    "kube_ip_agent_decisions_total",
    "Connections decided by the agent (result: allow, deny; direction: the one that denied, or none).",
    ["result", "direction"],
)
_ALLOWED = DECISIONS.labels("allow", "none")
_DENIED = {d: DECISIONS.labels("deny", d) for d in ("egress", "ingress", "both")}


@dataclass(frozen=True, slots=True)
class LocalVerdict:
    """The verdict as enforced by this agent (``allowed``), with the evaluator's full verdict."""

    allowed: bool
    verdict: Verdict
    egress_enforced: bool
    ingress_enforced: bool


class LocalEnforcement:
    """``decide(packet)`` for the dataplane: the evaluator's verdict, restricted to ``cluster``'s side."""

    def __init__(self, engine: PolicyEngine, cluster: str) -> None:
        self.engine = engine
        self.cluster = cluster

    def _own(self, endpoint: Endpoint) -> bool:
        return endpoint.pod is not None and endpoint.pod.record.cluster == self.cluster

    def decide(self, packet: PacketInfo) -> LocalVerdict:
        """Decide the connection of ``packet`` (its first packet, or a re-check of an accepted one)."""
        engine = self.engine
        src = engine.endpoint_for_ip(packet.src_ip)
        dst = engine.endpoint_for_ip(packet.dst_ip)
        protocol: str | int = packet.protocol.value if packet.protocol is not Protocol.OTHER else packet.protocol_number
        verdict = engine.decide_endpoints(src, dst, protocol, packet.dst_port)
        egress = self._own(src)
        ingress = self._own(dst)
        egress_denied = egress and verdict.egress is Reason.DENIED
        ingress_denied = ingress and verdict.ingress is Reason.DENIED
        allowed = not (egress_denied or ingress_denied)
        if allowed:
            _ALLOWED.inc()
        else:
            _DENIED["both" if egress_denied and ingress_denied else "egress" if egress_denied else "ingress"].inc()
            if log.isEnabledFor(logging.DEBUG):
                log.debug(
                    "deny %s (egress %s, ingress %s)",
                    packet,
                    verdict.egress.value if egress else "not enforced here",
                    verdict.ingress.value if ingress else "not enforced here",
                )
        return LocalVerdict(allowed, verdict, egress, ingress)
