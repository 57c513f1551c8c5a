"""Policy parts as short text for explain traces: selectors, peers, ports."""

from __future__ import annotations

from collections.abc import Mapping

from kube_ip_tracker.agent.policy.cluster_compiled import ClusterPeer, PeerKind, PortMatch
from kube_ip_tracker.agent.policy.compiled import Peer, PortSpec
from kube_ip_tracker.agent.policy.selectors import LabelSelector, Operator


def selector(sel: LabelSelector | None) -> str:
    """``app=web,tier in (a,b)`` as kubectl prints selectors; ``{}`` (everything) when empty."""
    if sel is None or sel.is_empty:
        return "{}"
    parts = [f"{key}={value}" for key, value in sel.match_labels]
    for req in sel.requirements:
        values = ",".join(sorted(req.values))
        parts.append(
            {
                Operator.IN: f"{req.key} in ({values})",
                Operator.NOT_IN: f"{req.key} notin ({values})",
                Operator.EXISTS: req.key,
                Operator.DOES_NOT_EXIST: f"!{req.key}",
            }[req.operator]
        )
    return ",".join(parts)


def labels(values: Mapping[str, str]) -> str:
    """``a=1,b=2`` (sorted), ``<none>`` when empty."""
    return ",".join(f"{k}={v}" for k, v in sorted(values.items())) or "<none>"


def peer(p: Peer) -> str:
    """A NetworkPolicy ``from``/``to`` entry."""
    if p.ip_block is not None:
        excepts = f" except {','.join(str(n) for n in p.ip_block.excepts)}" if p.ip_block.excepts else ""
        return f"ipBlock {p.ip_block.cidr}{excepts}"
    parts = []
    if p.namespace_selector is not None:
        parts.append(f"namespaceSelector {selector(p.namespace_selector)}")
    if p.pod_selector is not None:
        parts.append(f"podSelector {selector(p.pod_selector)}")
    if p.namespace_selector is None:
        parts.append("(in the policy's namespace)")
    return " ".join(parts)


def port(spec: PortSpec) -> str:
    """A NetworkPolicy ``ports`` entry: ``TCP/80``, ``TCP/8000-8080``, ``TCP/http``, ``UDP/*``."""
    if spec.name is not None:
        return f"{spec.protocol}/{spec.name}"
    if spec.port is None:
        return f"{spec.protocol}/*"
    return f"{spec.protocol}/{spec.port}" + (f"-{spec.end_port}" if spec.end_port is not None else "")


def cluster_peer(p: ClusterPeer) -> str:
    """An Admin/Baseline ``from``/``to`` entry."""
    if p.kind is PeerKind.NETWORKS:
        return "networks " + ",".join(str(n) for n in p.networks)
    if p.kind is PeerKind.NODES:
        return f"nodes {selector(p.node_selector)}"
    if p.kind is PeerKind.PODS:
        return f"pods namespaces {selector(p.namespace_selector)} pods {selector(p.pod_selector)}"
    return f"namespaces {selector(p.namespace_selector)}"


def port_match(m: PortMatch) -> str:
    """An Admin/Baseline port match."""
    if m.name is not None:
        return f"named port {m.name}"
    if m.start is None:
        return f"{m.protocol}/*"
    return f"{m.protocol}/{m.start}" + (f"-{m.end}" if m.end != m.start else "")
