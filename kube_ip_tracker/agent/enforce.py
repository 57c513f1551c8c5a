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
With ``local_pods`` (the agent's watch of its node's pods, :mod:`kube_ip_tracker.agent.local_pods`),
such an address is looked up there too: a pod found (under that module's rules: the tracker's data
never overruled) decides the connection at once, or ends its wait.

Staged policies: where the verdict this agent enforces would differ with the staged policies applied
(:attr:`Verdict.staged`, restricted to the directions enforced here), the decision is counted as a
would-deny or would-allow (per staged policy with the per-policy metrics) and offered to the verdict
log, naming the staged policy and rule. Audit mode (``audit_mode``): every connection is accepted,
while decisions are counted and logged as usual (a denial counts in ``kube_ip_agent_audit_accepted_total``).
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
from kube_ip_tracker.agent.outcomes import (
    NO_TIER,
    TIERS,
    DirectionOutcome,
    deciding,
    direction_outcomes,
    staged_difference,
)
from kube_ip_tracker.agent.policy import PolicyEngine, Reason, Verdict
from kube_ip_tracker.agent.policy.evaluator import Endpoint
from kube_ip_tracker.agent.policy.objects import PodEntry
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
STAGED_DECISIONS = LoopCounter(
    "kube_ip_agent_staged_decisions_total",
    "Connections whose verdict here would differ with the staged policies applied (result: would-deny, "
    "would-allow; direction: the one(s) that would change).",
    ["result", "direction"],
)
STAGED_POLICY_DECISIONS = Counter(
    "kube_ip_agent_staged_policy_verdicts_total",
    "With --metrics-per-policy: would-deny / would-allow decisions per staged policy that made the difference "
    '(bounded by --metrics-per-policy-limit like kube_ip_agent_policy_verdicts_total; the others as policy="(other)").',
    ["direction", "result", "tier", "policy"],
)
AUDIT_ACCEPTED = LoopCounter(
    "kube_ip_agent_audit_accepted_total",
    "With --policy-audit-mode: connections the policies deny that were accepted (direction: the one that denied).",
    ["direction"],
)
WAITS = Counter(
    "kube_ip_agent_unknown_local_pod_waits_total",
    "Connections of an address in this node's pod range that no known pod has, held until its pod's data "
    "arrives (result: known, the tracker's data came; local, the local pod watch's data came; or gave-up when "
    "the dataplane's verdict timeout or shutdown ended the wait).",
    ["result"],
)
LOCAL_DECISIONS = Counter(
    "kube_ip_agent_local_pod_watch_decisions_total",
    "Connections (first packets and re-checks) of an address of this node's pod range that the tracker's data "
    "does not have, decided with the pod's data from the local pod watch (when: at-once, or after-wait).",
    ["when"],
)
LocalPods = Callable[[int], PodEntry | None]
log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class LocalVerdict:
    """The verdict as enforced by this agent (``allowed``), with the evaluator's full verdict.

    ``policy_allowed`` is what the policies decided here; it differs from ``allowed`` only in audit mode,
    which accepts every connection.
    """

    allowed: bool
    verdict: Verdict
    egress_enforced: bool
    ingress_enforced: bool
    policy_allowed: bool = True


@dataclass(frozen=True, slots=True)
class StagedChange:
    """How the staged policies would change this agent's verdict: the directions that change, and whether
    the connection would then be allowed."""

    would_allow: bool
    egress: bool
    ingress: bool

    @property
    def result(self) -> str:
        return "would-allow" if self.would_allow else "would-deny"

    @property
    def direction(self) -> str:
        return "both" if self.egress and self.ingress else "egress" if self.egress else "ingress"


def staged_change(local: LocalVerdict) -> StagedChange | None:
    """The change the staged policies would make to ``local`` here, or None (no staged policy, or the same verdict)."""
    staged = local.verdict.staged
    if staged is None:
        return None
    verdict = local.verdict
    egress = local.egress_enforced and (verdict.egress is Reason.DENIED) != (staged.egress is Reason.DENIED)
    ingress = local.ingress_enforced and (verdict.ingress is Reason.DENIED) != (staged.ingress is Reason.DENIED)
    if not (egress or ingress):
        return None
    would_allow = not (
        (local.egress_enforced and staged.egress is Reason.DENIED)
        or (local.ingress_enforced and staged.ingress is Reason.DENIED)
    )
    if would_allow == local.policy_allowed:
        return None  # one direction changes, the other still decides the same
    return StagedChange(would_allow, egress, ingress)


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
    after every change of pod data). ``local_pods(address key)`` gives the provisional pod of such an
    address from the local pod watch, or None.
    """

    def __init__(
        self,
        engine: PolicyEngine,
        cluster: str,
        verdict_log: VerdictLog | None = None,
        per_policy_limit: int = 0,
        is_local: Callable[[IPAddress], bool] | None = None,
        audit_mode: bool = False,
        local_pods: LocalPods | None = None,
    ) -> None:
        self.engine = engine
        self.cluster = cluster
        self.verdict_log = verdict_log
        self.per_policy_limit = per_policy_limit
        self.audit_mode = audit_mode
        self._policy_series: set[str] = set()
        self._staged_series: set[str] = set()
        self.is_local = is_local
        self.local_pods = local_pods
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
            ends = self._with_local_pods(src, dst)
            if ends is None:
                return self._decide_once_known(packet)
            LOCAL_DECISIONS.labels("at-once").inc()
            return self.verdict(packet, *ends)
        return self.verdict(packet, src, dst)

    def _with_local_pods(self, src: Endpoint, dst: Endpoint) -> tuple[Endpoint, Endpoint] | None:
        """Both ends, each unknown local one as its pod from the local pod watch; None while one has none."""
        if self.local_pods is None:
            return None
        ends = []
        for end in (src, dst):
            if self._unknown_local(end):
                key = end.key
                pod = self.local_pods(key) if key is not None else None
                if pod is None:
                    return None
                log.debug("%s is %s/%s/%s by the local pod watch", end.ip, pod.cluster, pod.namespace, pod.name)
                end = end.of_pod(pod)
            ends.append(end)
        return ends[0], ends[1]

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
                ends = self._with_local_pods(src, dst)
                if ends is not None:
                    WAITS.labels("local").inc()
                    LOCAL_DECISIONS.labels("after-wait").inc()
                    return self.verdict(packet, *ends)
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
        if allowed or not self.audit_mode:
            local = LocalVerdict(allowed, verdict, egress, ingress, allowed)
        else:
            AUDIT_ACCEPTED.labels(
                "both" if egress_denied and ingress_denied else "egress" if egress_denied else "ingress"
            ).inc()
            local = LocalVerdict(True, verdict, egress, ingress, False)
        if self.per_policy_limit:
            self._count_per_policy(local, src, dst)
        if self.verdict_log is not None and self.verdict_log.wants(allowed):
            key = (packet.src_ip, packet.dst_ip, packet.protocol, packet.protocol_number, packet.dst_port)
            self.verdict_log.record(allowed, key, lambda: self.describe(packet, local, src, dst))
        if verdict.staged is not None:
            self._staged(packet, local, src, dst)
        return local

    def _staged(self, packet: PacketInfo, local: LocalVerdict, src: Endpoint, dst: Endpoint) -> None:
        """Count and log a decision the staged policies would change here."""
        change = staged_change(local)
        if change is None:
            return
        STAGED_DECISIONS.labels(change.result, change.direction).inc()
        if self.per_policy_limit:
            for outcome in self.staged_differences(packet, src, dst, change):
                for name in outcome.policies:
                    name = self._series(self._staged_series, name)
                    STAGED_POLICY_DECISIONS.labels(outcome.direction, change.result, outcome.tier, name).inc()
        if self.verdict_log is not None:
            key = (packet.src_ip, packet.dst_ip, packet.protocol, packet.protocol_number, packet.dst_port)
            self.verdict_log.record_staged(
                change.would_allow, key, lambda: self.describe_staged(packet, local, src, dst, change)
            )

    def staged_differences(
        self, packet: PacketInfo, src: Endpoint, dst: Endpoint, change: StagedChange
    ) -> list[DirectionOutcome]:
        """Per changing direction, the staged policy and rule that made the difference."""
        protocol = packet.protocol.value if packet.protocol is not Protocol.OTHER else packet.protocol_number
        return [
            staged_difference(
                self.engine.staged_cause(src, dst, protocol, packet.dst_port, direction), direction, change.would_allow
            )
            for direction, changed in (("egress", change.egress), ("ingress", change.ingress))
            if changed
        ]

    def describe(self, packet: PacketInfo, local: LocalVerdict, src: Endpoint, dst: Endpoint) -> dict[str, Any]:
        """The verdict log fields of one decision (in audit mode ``verdict`` is the policies' and a denied
        connection carries ``audit="accepted"``)."""
        egress, ingress = direction_outcomes(
            self.engine, local.verdict, src, dst, local.egress_enforced, local.ingress_enforced
        )
        direction, decided = deciding(egress, ingress)
        fields = self._fields(packet, src, dst, "allow" if local.policy_allowed else "deny", direction, decided)
        fields["egress"], fields["ingress"] = str(egress), str(ingress)
        if not local.policy_allowed and local.allowed:
            fields["audit"] = "accepted"
        return fields

    def describe_staged(
        self, packet: PacketInfo, local: LocalVerdict, src: Endpoint, dst: Endpoint, change: StagedChange
    ) -> dict[str, Any]:
        """The verdict log fields of a would-deny / would-allow: the staged policy and rule that made the
        difference, the verdict enforced, and each direction with the staged policies applied."""
        assert local.verdict.staged is not None
        differences = self.staged_differences(packet, src, dst, change)
        egress, ingress = direction_outcomes(
            self.engine, local.verdict.staged, src, dst, local.egress_enforced, local.ingress_enforced, staged=True
        )
        fields = self._fields(packet, src, dst, change.result, change.direction, differences[0])
        if len(differences) == 2:  # both directions change: name the staged policies of both
            fields["policy"] = ",".join(dict.fromkeys(p for d in differences for p in d.policies))
        fields["enforced"] = "allow" if local.allowed else "deny"
        fields["egress"], fields["ingress"] = str(egress), str(ingress)
        return fields

    @staticmethod
    def _fields(
        packet: PacketInfo, src: Endpoint, dst: Endpoint, verdict: str, direction: str, decided: DirectionOutcome
    ) -> dict[str, Any]:
        protocol = packet.protocol.value if packet.protocol is not Protocol.OTHER else str(packet.protocol_number)
        return {
            "verdict": verdict,
            "direction": direction,
            "tier": decided.tier,
            "policy": ",".join(decided.policies),
            "rule": decided.rule if decided.rule is not None else "",
            "reason": decided.reason,
            "src": endpoint_name(src),
            "dst": endpoint_name(dst),
            "protocol": protocol,
            "port": packet.dst_port if packet.dst_port is not None else "",
        }

    def _series(self, series: set[str], name: str) -> str:
        """``name`` as a per-policy label, or ``(other)`` once ``per_policy_limit`` policies have a series."""
        if name not in series:
            if len(series) >= self.per_policy_limit:
                return OTHER_POLICIES
            series.add(name)
        return name

    def _count_per_policy(self, local: LocalVerdict, src: Endpoint, dst: Endpoint) -> None:
        for outcome in direction_outcomes(
            self.engine, local.verdict, src, dst, local.egress_enforced, local.ingress_enforced
        ):
            if not outcome.enforced:
                continue
            result = "allow" if outcome.allowed else "deny"
            for name in outcome.policies:
                name = self._series(self._policy_series, name)
                POLICY_DECISIONS.labels(outcome.direction, result, outcome.tier, name).inc()
