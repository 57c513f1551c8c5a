"""What decided each direction of an enforced connection, in words an operator reads: for verdict log
lines and per-policy metrics.

Built from the evaluator's :class:`~kube_ip_tracker.agent.policy.Verdict` and the policies that select
the pod (the world's cached selection); nothing is evaluated again.
"""

from __future__ import annotations

from dataclasses import dataclass

from kube_ip_tracker.agent.policy import PolicyEngine, Reason, RuleRef, Verdict
from kube_ip_tracker.agent.policy.evaluator import Endpoint, StagedCause

NETWORK_POLICY = "NetworkPolicy"
NO_TIER = "none"

NOT_ENFORCED_HERE = "not enforced here"
NOT_A_POD = "not a pod"
NOT_ISOLATED = "not isolated"
ALLOWED_BY_RULE = "allowed by rule"
NO_RULE_MATCHED = "isolated, no rule matched"


@dataclass(frozen=True, slots=True)
class DirectionOutcome:
    """One direction as this agent enforced it (``enforced`` False: the other end's cluster does).

    ``policies`` names what decided: the allowing policy, or for a NetworkPolicy deny every policy
    that isolates the pod (none of their rules matched). ``rule`` is the matching rule's index in the
    policy's list for this direction, when known.
    """

    direction: str
    enforced: bool
    allowed: bool
    tier: str
    policies: tuple[str, ...]
    rule: int | None
    reason: str

    @property
    def decided_by_policy(self) -> bool:
        return self.tier != NO_TIER

    def __str__(self) -> str:
        if not self.decided_by_policy:
            return self.reason
        rule = f" rule {self.rule}" if self.rule is not None else ""
        verdict = "allow" if self.allowed else "deny"
        return f"{verdict}: {self.tier} {', '.join(self.policies)}{rule} ({self.reason})"


def policy_name(key: tuple[str, str, str]) -> str:
    """``namespace/name`` of a NetworkPolicy key ``(cluster, namespace, name)``."""
    return f"{key[1]}/{key[2]}"


def _tier_rule(direction: str, allowed: bool, rule: RuleRef) -> DirectionOutcome:
    named = f" {rule.name}" if rule.name else ""
    return DirectionOutcome(
        direction,
        True,
        allowed,
        rule.tier.value,
        (f"{rule.kind}/{rule.policy}",),
        rule.index,
        f"{rule.action.value} rule{named}",
    )


def _direction(
    engine: PolicyEngine,
    direction: str,
    reason: Reason,
    policy: tuple[str, str, str] | None,
    policy_rule: int | None,
    rule: RuleRef | None,
    subject: Endpoint,
    staged: bool = False,
) -> DirectionOutcome:
    if rule is not None:  # an Admin or Baseline tier rule decided
        return _tier_rule(direction, reason is Reason.ALLOWED, rule)
    if reason is Reason.NOT_A_POD:
        return DirectionOutcome(direction, True, True, NO_TIER, (), None, NOT_A_POD)
    if reason is Reason.NOT_ISOLATED:
        return DirectionOutcome(direction, True, True, NO_TIER, (), None, NOT_ISOLATED)
    if reason is Reason.ALLOWED:
        names = (policy_name(policy),) if policy is not None else ()
        return DirectionOutcome(direction, True, True, NETWORK_POLICY, names, policy_rule, ALLOWED_BY_RULE)
    assert subject.pod is not None  # only a pod can be isolated
    selection = engine.world.staged_selection(subject.pod) if staged else engine.world.selection(subject.pod)
    isolating = selection.egress if direction == "egress" else selection.ingress
    names = tuple(policy_name(p.key) for p in isolating)
    return DirectionOutcome(direction, True, False, NETWORK_POLICY, names, None, NO_RULE_MATCHED)


def direction_outcomes(
    engine: PolicyEngine,
    verdict: Verdict,
    src: Endpoint,
    dst: Endpoint,
    egress_enforced: bool,
    ingress_enforced: bool,
    staged: bool = False,
) -> tuple[DirectionOutcome, DirectionOutcome]:
    """(egress, ingress) outcomes of ``verdict``; a direction not enforced here allows, as far as this agent goes.
    ``staged``: ``verdict`` is the one with the staged policies applied (``Verdict.staged``)."""
    outcomes = []
    v = verdict
    for direction, enforced, reason, policy, policy_rule, rule, subject in (
        ("egress", egress_enforced, v.egress, v.egress_policy, v.egress_policy_rule, v.egress_rule, src),
        ("ingress", ingress_enforced, v.ingress, v.ingress_policy, v.ingress_policy_rule, v.ingress_rule, dst),
    ):
        if enforced:
            outcomes.append(_direction(engine, direction, reason, policy, policy_rule, rule, subject, staged))
        else:
            outcomes.append(DirectionOutcome(direction, False, True, NO_TIER, (), None, NOT_ENFORCED_HERE))
    return outcomes[0], outcomes[1]


TIERS = ("Admin", NETWORK_POLICY, "Baseline")


def deciding(egress: DirectionOutcome, ingress: DirectionOutcome) -> tuple[str, DirectionOutcome]:
    """(direction label, the outcome that decided).

    Denied: the denying direction(s). Allowed: the direction(s) whose policy allowed, or ``none`` when
    no policy applied (not isolated, not a pod, not enforced here). The label is ``egress``,
    ``ingress``, ``both`` or ``none``; the outcome is the first of those directions (egress first).
    """
    denied = [o for o in (egress, ingress) if not o.allowed]
    chosen = denied or [o for o in (egress, ingress) if o.enforced and o.decided_by_policy]
    if not chosen:
        enforced = [o for o in (egress, ingress) if o.enforced]
        return "none", enforced[0] if enforced else egress
    return ("both" if len(chosen) == 2 else chosen[0].direction), chosen[0]


def staged_difference(cause: StagedCause, direction: str, allowed: bool) -> DirectionOutcome:
    """The staged policy and rule that made ``direction`` decide ``allowed`` with the staged policies applied."""
    if cause.rule is not None:
        return _tier_rule(direction, allowed, cause.rule)
    if cause.policy is not None:
        return DirectionOutcome(
            direction, True, allowed, NETWORK_POLICY, (policy_name(cause.policy),), cause.policy_rule, ALLOWED_BY_RULE
        )
    names = tuple(policy_name(key) for key in cause.isolating)
    return DirectionOutcome(
        direction, True, allowed, NETWORK_POLICY if names else NO_TIER, names, None, NO_RULE_MATCHED
    )
