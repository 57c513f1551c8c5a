"""An :class:`~.trace.Explanation` as text for a terminal."""

from __future__ import annotations

from .describe import labels
from .trace import DirectionTrace, EndTrace, Explanation, RuleTrace, TierTrace


def _mark(ok: bool) -> str:
    return "match" if ok else "no match"


def _end(role: str, end: EndTrace) -> list[str]:
    if not end.pod:
        return [f"{role:<5} {end.name} (no pod of the ClusterSet: no policy applies to it)"]
    return [
        f"{role:<5} {end.name} ({end.ip})",
        f"      labels:           {labels(end.labels)}",
        f"      namespace labels: {labels(end.namespace_labels)}",
    ]


def _rule(rule: RuleTrace) -> list[str]:
    head = f"rule {rule.index}"
    if rule.name:
        head += f" ({rule.name})"
    if rule.action:
        head += f" {rule.action}"
    state = ("matched" if rule.matched else "no match") if rule.checked else "not checked"
    lines = [f"      {head}: {state}"]
    lines += [f"        peer {text}: {_mark(ok)}" for text, ok in rule.peers] or ["        peers: every peer"]
    lines += [f"        port {text}: {_mark(ok)}" for text, ok in rule.ports] or ["        ports: every port"]
    return lines


def _tier(tier: TierTrace) -> list[str]:
    if not tier.policies:
        return [f"  {tier.tier} tier: no policies" + ("" if tier.reached else " (not reached)")]
    lines = [f"  {tier.tier} tier:" + ("" if tier.reached else " not reached")]
    for policy in tier.policies:
        lines.append(f"    {policy.name}: {'selects' if policy.selects else 'does not select'}: {policy.why}")
        for rule in policy.rules:
            lines += _rule(rule)
    return lines


def _direction(d: DirectionTrace) -> list[str]:
    lines = [f"{d.direction} of {d.subject}: {d.outcome}"]
    if d.enforced:
        for tier in d.tiers:
            lines += _tier(tier)
        if d.staged_outcome:
            same = " (the same)" if not d.staged_tiers else ""
            lines.append(f"  with staged policies: {d.staged_outcome}{same}")
            for tier in d.staged_tiers:
                lines += ["  " + line for line in _tier(tier)]
    return lines


def _staged(e: Explanation) -> list[str]:
    """The staged verdict beside the enforced one (nothing without staged policies)."""
    if not e.staged_verdict:
        return []
    if e.staged_verdict == e.verdict:
        return [f"with staged policies: {e.staged_verdict} (no change)"]
    return [f"with staged policies: would {e.staged_verdict} (staged policies are not enforced)"]


def render(e: Explanation) -> str:
    """The verdict line (and the staged one), both ends, then each direction tier by tier."""
    port = f"/{e.port}" if e.port is not None else ""
    where = f" (as this agent of {e.enforced_at} enforces it)" if e.enforced_at else ""
    lines = [f"{e.verdict}: {e.src.name} -> {e.dst.name} {e.protocol}{port}{where}", *_staged(e), ""]
    lines += _end("from", e.src) + _end("to", e.dst) + [""]
    lines += [*_direction(e.egress), "", *_direction(e.ingress)]
    return "\n".join(lines)
