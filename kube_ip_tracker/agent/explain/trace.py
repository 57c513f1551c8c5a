"""The explain trace: the evaluator reports what a decision considers to a :class:`Trace`, which then
describes both ends and every policy of each tier, with why it did or did not select and match.

The decision itself is the evaluator's (``decide_endpoints(..., tracer=trace)``); the trace only adds
words, asking the evaluator's own predicates (``ports_match``, ``peer_matches``, ...) about the parts
of a rule that did not match.

While staged policies exist, the decision with them applied (``decide_staged``) is traced too and
shown beside the enforced one: ``staged_verdict`` and, per direction, ``staged_outcome`` and, where
that direction would decide otherwise, its tiers with the staged policies applied (marked ``(staged)``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from kube_ip_tracker.agent.outcomes import direction_outcomes
from kube_ip_tracker.agent.policy import PolicyEngine, Verdict
from kube_ip_tracker.agent.policy.cluster_compiled import ClusterPolicy, ClusterRule, Tier
from kube_ip_tracker.agent.policy.compiled import CompiledPolicy, Rule
from kube_ip_tracker.agent.policy.evaluator import Endpoint, normalize_protocol
from kube_ip_tracker.agent.policy.world import PodEntry

from . import describe

DIRECTIONS = ("egress", "ingress")


@dataclass
class EndTrace:
    """One end: its name (``cluster/namespace/pod`` or the address), address and labels."""

    name: str
    ip: str
    pod: bool
    labels: dict[str, str] = field(default_factory=dict)
    namespace_labels: dict[str, str] = field(default_factory=dict)


@dataclass
class RuleTrace:
    """One rule as checked: what it admits and whether (and why not) it matched."""

    index: int
    checked: bool
    matched: bool = False
    action: str = ""  # Accept/Deny/Pass for Admin and Baseline rules
    name: str = ""
    ports: list[tuple[str, bool]] = field(default_factory=list)  # (port, admits this one); empty: every port
    peers: list[tuple[str, bool]] = field(default_factory=list)  # (peer, matches the other end); empty: every peer


@dataclass
class PolicyTrace:
    """One policy of a tier: whether it selects the pod, why, and its rules."""

    name: str
    selects: bool
    why: str
    rules: list[RuleTrace] = field(default_factory=list)


@dataclass
class TierTrace:
    tier: str
    reached: bool
    policies: list[PolicyTrace] = field(default_factory=list)


@dataclass
class DirectionTrace:
    """One direction: the pod it applies to, whether this agent enforces it, the outcome, tier by tier."""

    direction: str
    subject: str
    enforced: bool
    allowed: bool
    outcome: str
    tiers: list[TierTrace] = field(default_factory=list)
    staged_outcome: str = ""  # with the staged policies applied ("" without staged policies)
    staged_allowed: bool = True
    staged_tiers: list[TierTrace] = field(default_factory=list)  # when the staged verdict differs here


@dataclass
class Explanation:
    """A decision and its trace."""

    verdict: str
    src: EndTrace
    dst: EndTrace
    protocol: str
    port: int | None
    egress: DirectionTrace
    ingress: DirectionTrace
    enforced_at: str = ""  # the agent's cluster, or "" offline (both directions count)
    staged_verdict: str = ""  # allow/deny with the staged policies applied; "" when there are none

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, obj: dict[str, Any]) -> Explanation:
        """The inverse of :meth:`to_dict` (an agent's answer)."""

        def rule(r: dict[str, Any]) -> RuleTrace:
            return RuleTrace(**{**r, "ports": [tuple(p) for p in r["ports"]], "peers": [tuple(p) for p in r["peers"]]})

        def tiers(values: list[dict[str, Any]]) -> list[TierTrace]:
            return [
                TierTrace(
                    t["tier"],
                    t["reached"],
                    [
                        PolicyTrace(p["name"], p["selects"], p["why"], [rule(r) for r in p["rules"]])
                        for p in t["policies"]
                    ],
                )
                for t in values
            ]

        def direction(d: dict[str, Any]) -> DirectionTrace:
            return DirectionTrace(**{**d, "tiers": tiers(d["tiers"]), "staged_tiers": tiers(d.get("staged_tiers", []))})

        return cls(
            **{
                **obj,
                "src": EndTrace(**obj["src"]),
                "dst": EndTrace(**obj["dst"]),
                "egress": direction(obj["egress"]),
                "ingress": direction(obj["ingress"]),
            }
        )


class Trace:
    """A :class:`~kube_ip_tracker.agent.policy.evaluator.Tracer` that remembers what was considered."""

    def __init__(self) -> None:
        self.tier_rules: dict[str, list[tuple[ClusterRule, bool]]] = {d: [] for d in DIRECTIONS}
        self.selection: dict[str, tuple[CompiledPolicy, ...] | None] = dict.fromkeys(DIRECTIONS)
        self.rules: dict[str, dict[tuple[str, str, str], dict[int, bool]]] = {d: {} for d in DIRECTIONS}

    def tier_rule(self, direction: str, rule: ClusterRule, matched: bool) -> None:
        self.tier_rules[direction].append((rule, matched))

    def selected(self, direction: str, subject: PodEntry, policies: tuple[CompiledPolicy, ...]) -> None:
        self.selection[direction] = policies

    def rule(self, direction: str, policy: CompiledPolicy, index: int, matched: bool) -> None:
        self.rules[direction].setdefault(policy.key, {})[index] = matched


def _end(engine: PolicyEngine, endpoint: Endpoint) -> EndTrace:
    entry = endpoint.pod
    if entry is None:
        return EndTrace(str(endpoint.ip), str(endpoint.ip), False)
    ns_labels = dict(engine.world.namespace_labels(entry.cluster, entry.namespace))
    name = f"{entry.cluster}/{entry.namespace}/{entry.name}"
    return EndTrace(name, str(endpoint.ip), True, dict(entry.identity.labels), ns_labels)


def explain(
    engine: PolicyEngine,
    src: Endpoint,
    dst: Endpoint,
    protocol: str | int,
    port: int | None,
    enforced_at: str = "",
) -> tuple[Verdict, Explanation]:
    """Decide with a trace. ``enforced_at``: the agent's cluster (only its pods' directions count), or ""."""
    trace = Trace()
    verdict = engine.decide_endpoints(src, dst, protocol, port, tracer=trace)
    proto = normalize_protocol(protocol)

    def own(endpoint: Endpoint) -> bool:
        if not enforced_at:
            return True
        return endpoint.pod is not None and endpoint.pod.cluster == enforced_at

    outcomes = direction_outcomes(engine, verdict, src, dst, own(src), own(dst))
    builder = _Builder(engine, trace, verdict, src, dst, proto, port)
    directions = [
        DirectionTrace(
            o.direction,
            _end(engine, src if o.direction == "egress" else dst).name,
            o.enforced,
            o.allowed,
            str(o),
            builder.tiers(o.direction),
        )
        for o in outcomes
    ]
    allowed = all(d.allowed for d in directions)
    staged_verdict = ""
    if engine.staged_policies:
        staged_trace = Trace()
        staged = engine.decide_staged(src, dst, protocol, port, tracer=staged_trace)
        staged_builder = _Builder(engine, staged_trace, staged, src, dst, proto, port, staged=True)
        staged_outcomes = direction_outcomes(engine, staged, src, dst, own(src), own(dst), staged=True)
        for d, o in zip(directions, staged_outcomes, strict=True):
            d.staged_outcome, d.staged_allowed = str(o), o.allowed
            if o.enforced and (o.allowed != d.allowed or d.staged_outcome != d.outcome):
                d.staged_tiers = staged_builder.tiers(d.direction)
        staged_verdict = "allow" if all(d.staged_allowed for d in directions) else "deny"
    explanation = Explanation(
        "allow" if allowed else "deny",
        _end(engine, src),
        _end(engine, dst),
        proto,
        port,
        directions[0],
        directions[1],
        enforced_at,
        staged_verdict,
    )
    return verdict, explanation


class _Builder:
    """Turns what :class:`Trace` recorded into tier traces."""

    def __init__(
        self,
        engine: PolicyEngine,
        trace: Trace,
        verdict: Verdict,
        src: Endpoint,
        dst: Endpoint,
        protocol: str,
        port: int | None,
        staged: bool = False,
    ) -> None:
        self.engine, self.trace, self.verdict = engine, trace, verdict
        self.src, self.dst, self.protocol, self.port = src, dst, protocol, port
        self.staged = staged  # the decision with the staged policies applied

    def _name(self, name: str, policy: CompiledPolicy | ClusterPolicy) -> str:
        return f"{name} (staged)" if policy.staged else name

    def tiers(self, direction: str) -> list[TierTrace]:
        subject = self.src if direction == "egress" else self.dst
        if subject.pod is None:
            return []
        decided_rule = self.verdict.egress_rule if direction == "egress" else self.verdict.ingress_rule
        selection = self.trace.selection[direction]
        admin_decided = decided_rule is not None and decided_rule.tier is Tier.ADMIN
        baseline_reached = not admin_decided and selection is not None and not selection
        return [
            self._tier(direction, Tier.ADMIN, subject.pod, True),
            self._network_policies(direction, subject.pod, selection),
            self._tier(direction, Tier.BASELINE, subject.pod, baseline_reached),
        ]

    def _tier(self, direction: str, tier: Tier, entry: PodEntry, reached: bool) -> TierTrace:
        peer = self.dst if direction == "egress" else self.src
        checked = {id(rule): matched for rule, matched in self.trace.tier_rules[direction]}
        cluster, namespace = entry.cluster, entry.namespace
        store = self.engine.tiers
        rules_for = store.staged_rules_for if self.staged else store.rules_for
        applying = rules_for(entry.identity, self.engine.world.namespace_labels(cluster, namespace))
        prefix = "admin" if tier is Tier.ADMIN else "baseline"
        applying_ids = {id(rule) for rule in getattr(applying, f"{prefix}_{direction}")}
        policies = []
        for policy in store.policies(cluster, staged=self.staged):
            if policy.tier is not tier:
                continue
            name = self._name(policy.name, policy)
            rules = policy.egress if direction == "egress" else policy.ingress
            if not rules:
                policies.append(PolicyTrace(name, False, f"has no {direction} rules"))
                continue
            if not any(id(rule) in applying_ids for rule in rules):
                policies.append(PolicyTrace(name, False, "its subject does not select the pod"))
                continue
            traced = [self._tier_rule(rule, peer, id(rule) in checked, checked.get(id(rule), False)) for rule in rules]
            why = f"{policy.kind}, priority {policy.priority}: its subject selects the pod"
            if not any(id(rule) in checked for rule in rules):
                why += "; not reached"
            policies.append(PolicyTrace(name, True, why, traced))
        return TierTrace(tier.value, reached, policies)

    def _tier_rule(self, rule: ClusterRule, peer: Endpoint, was_checked: bool, matched: bool) -> RuleTrace:
        engine = self.engine
        ports = [
            (describe.port_match(m), engine.tier_port_matches(m, self.protocol, self.port, self.dst))
            for m in rule.ports
        ]
        peers = (
            []
            if rule.all_peers
            else [(describe.cluster_peer(p), engine.tier_peer_matches(p, peer)) for p in rule.peers]
        )
        return RuleTrace(rule.ref.index, was_checked, matched, rule.action.value, rule.ref.name, ports, peers)

    def _network_policies(
        self, direction: str, entry: PodEntry, selection: tuple[CompiledPolicy, ...] | None
    ) -> TierTrace:
        world = self.engine.world
        peer = self.dst if direction == "egress" else self.src
        checked = self.trace.rules[direction]
        other = "ingress" if direction == "egress" else "egress"
        full = world.staged_selection(entry) if self.staged else world.selection(entry)
        selecting = full.egress if direction == "egress" else full.ingress
        other_selecting = full.ingress if direction == "egress" else full.egress
        held = world.policies(entry.cluster, entry.namespace)
        if self.staged:
            held = tuple(sorted((*held, *world.staged_policies(entry.cluster, entry.namespace)), key=lambda p: p.name))
        policies = []
        for policy in held:
            name = self._name(f"{policy.namespace}/{policy.name}", policy)
            if policy not in selecting:
                why = (
                    f"selects the pod for {other} only (policyTypes)"
                    if policy in other_selecting
                    else f"podSelector {describe.selector(policy.pod_selector)} does not match the pod's labels"
                )
                policies.append(PolicyTrace(name, False, why))
                continue
            rules = policy.egress if direction == "egress" else policy.ingress
            seen = checked.get(policy.key, {})
            traced = [
                self._np_rule(index, rule, policy, peer, index in seen, seen.get(index, False))
                for index, rule in enumerate(rules)
            ]
            why = f"podSelector {describe.selector(policy.pod_selector)} selects the pod"
            if not rules:
                why += f"; no {direction} rules: isolates only"
            policies.append(PolicyTrace(name, True, why, traced))
        return TierTrace("NetworkPolicy", selection is not None, policies)

    def _np_rule(
        self, index: int, rule: Rule, policy: CompiledPolicy, peer: Endpoint, was_checked: bool, matched: bool
    ) -> RuleTrace:
        ports = [
            (describe.port(spec), self.engine.ports_match(Rule(ports=(spec,)), self.protocol, self.port, self.dst))
            for spec in rule.ports
        ]
        peers = [(describe.peer(p), self.engine.peer_matches(p, policy, peer)) for p in rule.peers]
        return RuleTrace(index, was_checked, matched, ports=ports, peers=peers)
