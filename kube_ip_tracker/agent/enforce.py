"""The agent's verdict for a queued packet: which directions this agent enforces, and the decision.

NetworkPolicy enforcement for a pod happens in that pod's cluster: egress at the source's cluster,
ingress at the destination's. So an agent of cluster C applies the egress decision only when the
source is a pod of C, and the ingress decision only when the destination is a pod of C. A connection
between two clusters is therefore checked by both agents (each for its own side); a connection where
neither end is a pod of C passes this agent untouched.

Each decision is counted (by result and direction; per enforced direction by tier; optionally per
policy) and offered to the verdict log (:mod:`kube_ip_tracker.agent.verdict_log`), all in
:meth:`LocalEnforcement.verdict`, the one decision point.

An address of this node's pod range (``is_local``) that no pod has yet is most likely a pod that just
started, whose data has not arrived: a connection to or from it waits for that data (each
:meth:`LocalEnforcement.data_changed` re-checks) instead of being judged as an unknown endpoint, which
would leave that pod unenforced. The dataplane bounds the wait by its ``verdict_timeout``; then the
fail-open/closed default applies, without a mark, so the connection's next packet asks again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from prometheus_client import Counter

from kube_ip_tracker.agent.dataplane import PacketInfo, Protocol
from kube_ip_tracker.agent.dataplane.loop_metrics import LoopCounter
from kube_ip_tracker.agent.dataplane.packet import IPAddress
from kube_ip_tracker.agent.outcomes import NO_TIER, TIERS, deciding, direction_outcomes
from kube_ip_tracker.agent.policy import PolicyEngine, Reason, Verdict
from kube_ip_tracker.agent.policy.evaluator import Endpoint
from kube_ip_tracker.agent.verdict_log import VerdictLog

# Counted on the event loop only, once or twice per decision: lock-free counters (see loop_metrics).
DECISIONS = LoopCounter(
    "kube_ip_agent_decisions_total",
    "Connections decided by the agent (result: allow, deny; direction: the one that denied, or none).",
    ["result", "direction"],
)
_ALLOWED = DECISIONS.labels("allow", "none")
_DENIED = {d: DECISIONS.labels("deny", d) for d in ("egress", "ingress", "both")}
TIER_DECISIONS = LoopCounter(
    "kube_ip_agent_policy_decisions_total",
    "Directions this agent enforced, by direction, result and the tier that decided (none: no policy applied).",
    ["direction", "result", "tier"],
)
_TIER_CHILDREN = {
    (direction, result, tier): TIER_DECISIONS.labels(direction, result, tier or NO_TIER)
    for direction in ("egress", "ingress")
    for result in ("allow", "deny")
    for tier in (None, *TIERS)
}
POLICY_DECISIONS = Counter(
    "kube_ip_agent_policy_verdicts_total",
    "With --metrics-per-policy: directions decided per policy (allow: the policy whose rule matched; deny: "
    'each policy isolating the pod). Policies beyond --metrics-per-policy-limit count as policy="(other)".',
    ["direction", "result", "tier", "policy"],
)
OTHER_POLICIES = "(other)"
WAITS = Counter(
    "kube_ip_agent_unknown_local_pod_waits_total",
    "Connections of an address in this node's pod range that no known pod has, held until its pod's data "
    "arrives (result: known, or gave-up when the dataplane's verdict timeout or shutdown ended the wait).",
    ["result"],
)
log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class LocalVerdict:
    """The verdict as enforced by this agent (``allowed``), with the evaluator's full verdict."""

    allowed: bool
    verdict: Verdict
    egress_enforced: bool
    ingress_enforced: bool


def endpoint_name(endpoint: Endpoint) -> str:
    """``cluster/namespace/pod``, or the address of an endpoint that is no known pod."""
    if endpoint.pod is not None:
        pod = endpoint.pod
        return f"{pod.cluster}/{pod.namespace}/{pod.name}"
    return str(endpoint.ip)


class LocalEnforcement:
    """``decide(packet)`` for the dataplane: the evaluator's verdict, restricted to ``cluster``'s side.

    ``verdict_log`` writes the log lines; ``per_policy_limit`` > 0 counts decisions per policy for at
    most that many policies (bounded series). With ``is_local`` (this node's pod range), a connection of
    an unknown address in it is decided once its pod is known (an awaitable; call :meth:`data_changed`
    after every change of pod data).
    """

    def __init__(
        self,
        engine: PolicyEngine,
        cluster: str,
        verdict_log: VerdictLog | None = None,
        per_policy_limit: int = 0,
        is_local: Callable[[IPAddress], bool] | None = None,
    ) -> None:
        self.engine = engine
        self.cluster = cluster
        self.verdict_log = verdict_log
        self.per_policy_limit = per_policy_limit
        self._policy_series: set[str] = set()
        self.is_local = is_local
        self._changed = asyncio.Event()

    def _own(self, endpoint: Endpoint) -> bool:
        return endpoint.pod is not None and endpoint.pod.identity.cluster == self.cluster

    def _unknown_local(self, endpoint: Endpoint) -> bool:
        return (
            endpoint.pod is None
            and endpoint.ip is not None
            and self.is_local is not None
            and self.is_local(endpoint.ip)
        )

    def data_changed(self) -> None:
        """Pod data changed: connections waiting for an unknown local pod check again."""
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def decide(self, packet: PacketInfo) -> LocalVerdict | Awaitable[LocalVerdict]:
        """Decide the connection of ``packet`` (its first packet, or a re-check of an accepted one);
        an awaitable while an end is an unknown address of this node's pod range."""
        engine = self.engine
        src = engine.endpoint_for_ip(packet.src_ip)
        dst = engine.endpoint_for_ip(packet.dst_ip)
        if self._unknown_local(src) or self._unknown_local(dst):
            return self._decide_once_known(packet)
        return self.verdict(packet, src, dst)

    async def _decide_once_known(self, packet: PacketInfo) -> LocalVerdict:
        engine = self.engine
        try:
            while True:
                changed = self._changed
                src = engine.endpoint_for_ip(packet.src_ip)
                dst = engine.endpoint_for_ip(packet.dst_ip)
                if not (self._unknown_local(src) or self._unknown_local(dst)):
                    WAITS.labels("known").inc()
                    return self.verdict(packet, src, dst)
                await changed.wait()
        except asyncio.CancelledError:
            WAITS.labels("gave-up").inc()
            log.info("no pod known for %s within the verdict timeout", packet)
            raise

    def verdict(self, packet: PacketInfo, src: Endpoint, dst: Endpoint) -> LocalVerdict:
        """The decision point: the evaluator's verdict for ``src`` -> ``dst``, enforced for this cluster's side,
        counted and offered to the verdict log."""
        engine = self.engine
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
        if egress:
            _TIER_CHILDREN["egress", "deny" if egress_denied else "allow", verdict.egress_tier].inc()
        if ingress:
            _TIER_CHILDREN["ingress", "deny" if ingress_denied else "allow", verdict.ingress_tier].inc()
        local = LocalVerdict(allowed, verdict, egress, ingress)
        if self.per_policy_limit:
            self._count_per_policy(local, src, dst)
        if self.verdict_log is not None and self.verdict_log.wants(allowed):
            key = (packet.src_ip, packet.dst_ip, packet.protocol, packet.protocol_number, packet.dst_port)
            self.verdict_log.record(allowed, key, lambda: self.describe(packet, local, src, dst))
        return local

    def describe(self, packet: PacketInfo, local: LocalVerdict, src: Endpoint, dst: Endpoint) -> dict[str, Any]:
        """The verdict log fields of one decision."""
        egress, ingress = direction_outcomes(
            self.engine, local.verdict, src, dst, local.egress_enforced, local.ingress_enforced
        )
        direction, decided = deciding(egress, ingress)
        protocol = packet.protocol.value if packet.protocol is not Protocol.OTHER else str(packet.protocol_number)
        return {
            "verdict": "allow" if local.allowed else "deny",
            "direction": direction,
            "tier": decided.tier,
            "policy": ",".join(decided.policies),
            "rule": decided.rule if decided.rule is not None else "",
            "reason": decided.reason,
            "src": endpoint_name(src),
            "dst": endpoint_name(dst),
            "protocol": protocol,
            "port": packet.dst_port if packet.dst_port is not None else "",
            "egress": str(egress),
            "ingress": str(ingress),
        }

    def _count_per_policy(self, local: LocalVerdict, src: Endpoint, dst: Endpoint) -> None:
        for outcome in direction_outcomes(
            self.engine, local.verdict, src, dst, local.egress_enforced, local.ingress_enforced
        ):
            if not outcome.enforced:
                continue
            result = "allow" if outcome.allowed else "deny"
            for name in outcome.policies:
                if name not in self._policy_series:
                    if len(self._policy_series) >= self.per_policy_limit:
                        name = OTHER_POLICIES
                    else:
                        self._policy_series.add(name)
                POLICY_DECISIONS.labels(outcome.direction, result, outcome.tier, name).inc()
