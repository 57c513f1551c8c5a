"""Validation of ClusterNetworkPolicy (v1alpha2) and AdminNetworkPolicy / BaselineAdminNetworkPolicy
(v1alpha1) JSON into :class:`ClusterPolicy`.

The checks follow the CRDs' schemas (kubernetes-sigs/network-policy-api ``apis/``): required
fields, enums, ``exactly one field`` unions, list limits, port ranges, CIDRs, label selectors.
Errors are :class:`PolicyError` whose path is relative to the object (``spec.egress[0].to[1]``).

What the agent cannot enforce never widens access. Two things are unenforceable:

* a ``domainNames`` peer (needs DNS snooping), and
* a peer or protocol entry with no field the agent knows (only without ``strict``: an object of a
  newer CRD version whose new field was pruned; with ``strict`` it is an error).

The API's own fail-closed rule decides what happens ("for Accept rules, treat the rule as matching
no traffic; for Deny and Pass rules, treat the rule as a Deny all rule"): in an **Accept** rule
the unenforceable peer or protocol entry matches nothing (the rule's other entries still apply; a
rule left with none is dropped); a **Deny** or **Pass** rule becomes a Deny of every peer on every
port. Either way the policy carries a warning naming the rule, reported by its callers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from kube_ip_tracker.kube.names import dns1123_subdomain_problem, port_name_problem

from .cluster_compiled import (
    ANP_KIND,
    BANP_KIND,
    CNP_KIND,
    Action,
    ClusterPeer,
    ClusterPolicy,
    ClusterRule,
    PeerKind,
    PortMatch,
    RuleRef,
    Subject,
    Tier,
)
from .errors import PolicyError, join
from .parse import METADATA_FIELDS as _METADATA_FIELDS
from .parse import parse_cidr, parse_protocol, prune_unknown
from .selectors import (
    REQUIREMENT_FIELDS,
    LabelSelector,
    expect_list,
    expect_object,
    expect_string,
    parse_selector,
    reject_unknown,
)
from .staged import staged_annotation

V1ALPHA2 = "policy.networking.k8s.io/v1alpha2"
V1ALPHA1 = "policy.networking.k8s.io/v1alpha1"
BANP_NAME = "default"

_SELECTOR: dict[str, Any] = {"matchLabels": None, "matchExpressions": [dict.fromkeys(REQUIREMENT_FIELDS)]}
_PODS: dict[str, Any] = {"namespaceSelector": _SELECTOR, "podSelector": _SELECTOR}
_SUBJECT: dict[str, Any] = {"namespaces": _SELECTOR, "pods": _PODS}
_INGRESS_PEER: dict[str, Any] = {"namespaces": _SELECTOR, "pods": _PODS}
_EGRESS_PEER: dict[str, Any] = {**_INGRESS_PEER, "nodes": _SELECTOR, "networks": None, "domainNames": None}
_V2_PORT: dict[str, Any] = {"destinationPort": {"number": None, "range": {"start": None, "end": None}}}
_V2_PROTOCOL: dict[str, Any] = {"tcp": _V2_PORT, "udp": _V2_PORT, "sctp": _V2_PORT, "destinationNamedPort": None}
_V1_PORT: dict[str, Any] = {
    "portNumber": {"protocol": None, "port": None},
    "portRange": {"protocol": None, "start": None, "end": None},
    "namedPort": None,
}


def _schema(ports_field: str, port_schema: dict[str, Any], spec_extra: dict[str, Any]) -> dict[str, Any]:
    rule = {"name": None, "action": None, ports_field: [port_schema]}
    spec = {
        **spec_extra,
        "subject": _SUBJECT,
        "ingress": [{**rule, "from": [_INGRESS_PEER]}],
        "egress": [{**rule, "to": [_EGRESS_PEER]}],
    }
    return {
        "apiVersion": None,
        "kind": None,
        "metadata": dict.fromkeys(_METADATA_FIELDS),
        "spec": spec,
        "status": None,
    }


@dataclass(frozen=True)
class _Flavour:
    """What differs between the three kinds."""

    api_version: str
    kind: str
    schema: dict[str, Any]
    actions: dict[str, Action]
    ports_field: str
    max_items: int  # rules per direction, peers per rule
    tier: Tier | None  # None: read spec.tier
    priority: bool  # spec.priority is required
    namespace_selector_required: bool  # in pods subjects and peers


_V2_ACTIONS = {"Accept": Action.ACCEPT, "Deny": Action.DENY, "Pass": Action.PASS}
CNP = _Flavour(
    V1ALPHA2,
    CNP_KIND,
    _schema("protocols", _V2_PROTOCOL, {"tier": None, "priority": None}),
    _V2_ACTIONS,
    "protocols",
    25,
    None,
    True,
    False,
)
ANP = _Flavour(
    V1ALPHA1,
    ANP_KIND,
    _schema("ports", _V1_PORT, {"priority": None}),
    {"Allow": Action.ACCEPT, "Deny": Action.DENY, "Pass": Action.PASS},
    "ports",
    100,
    Tier.ADMIN,
    True,
    True,
)
BANP = _Flavour(
    V1ALPHA1,
    BANP_KIND,
    _schema("ports", _V1_PORT, {}),
    {"Allow": Action.ACCEPT, "Deny": Action.DENY},
    "ports",
    100,
    Tier.BASELINE,
    False,
    True,
)
FLAVOURS = {CNP_KIND: CNP, ANP_KIND: ANP, BANP_KIND: BANP}

_DOMAIN_NAME = re.compile(
    r"^(\*\.)?([a-zA-Z0-9]([-a-zA-Z0-9_]*[a-zA-Z0-9])?\.)+[a-zA-Z0-9]([-a-zA-Z0-9_]*[a-zA-Z0-9])?\.?$"
)


def cluster_policy_name(obj: Any) -> str:
    """``metadata.name`` of an object for messages, as far as it can be read."""
    meta = obj.get("metadata") if isinstance(obj, dict) else None
    name = meta.get("name") if isinstance(meta, dict) else None
    return name if isinstance(name, str) and name else "?"


def parse_cluster_network_policy(obj: Any, cluster: str, *, strict: bool = True) -> ClusterPolicy:
    """Validate one ClusterNetworkPolicy (``policy.networking.k8s.io/v1alpha2``) of ``cluster``."""
    return _parse(CNP, obj, cluster, strict)


def parse_admin_network_policy(obj: Any, cluster: str, *, strict: bool = True) -> ClusterPolicy:
    """Validate one AdminNetworkPolicy (``policy.networking.k8s.io/v1alpha1``): an Admin tier policy."""
    return _parse(ANP, obj, cluster, strict)


def parse_baseline_admin_network_policy(obj: Any, cluster: str, *, strict: bool = True) -> ClusterPolicy:
    """Validate the BaselineAdminNetworkPolicy ``default`` (v1alpha1): the Baseline tier policy."""
    return _parse(BANP, obj, cluster, strict)


def parse_by_kind(obj: Any, cluster: str, *, strict: bool = True) -> ClusterPolicy:
    """Validate an object of any of the three kinds, chosen by its ``kind``."""
    kind = obj.get("kind") if isinstance(obj, dict) else None
    flavour = FLAVOURS.get(kind) if isinstance(kind, str) else None
    if flavour is None:
        raise PolicyError("kind", f"must be one of {', '.join(FLAVOURS)}, got {kind!r}")
    return _parse(flavour, obj, cluster, strict)


class _Context:
    """Per-object parse state: the flavour, strictness and the warnings collected so far."""

    def __init__(self, flavour: _Flavour, strict: bool, staged: bool = False) -> None:
        self.flavour = flavour
        self.strict = strict
        self.staged = staged
        self.warnings: list[str] = []


def _parse(flavour: _Flavour, obj: Any, cluster: str, strict: bool) -> ClusterPolicy:
    if not strict:
        obj = prune_unknown(obj, flavour.schema)
    top = expect_object(obj, "")
    reject_unknown(top, frozenset(flavour.schema), "")
    if "apiVersion" in top and top["apiVersion"] != flavour.api_version:
        raise PolicyError("apiVersion", f"must be {flavour.api_version!r}, got {top['apiVersion']!r}")
    if "kind" in top and top["kind"] != flavour.kind:
        raise PolicyError("kind", f"must be {flavour.kind!r}, got {top['kind']!r}")
    name = _parse_name(top.get("metadata"), flavour)
    staged, staged_problem = staged_annotation(top["metadata"])
    if top.get("spec") is None:
        raise PolicyError("spec", "required value")
    spec = expect_object(top["spec"], "spec")
    reject_unknown(spec, frozenset(flavour.schema["spec"]), "spec")
    tier = flavour.tier or _parse_tier(spec.get("tier"))
    priority = _parse_priority(spec.get("priority")) if flavour.priority else 0
    context = _Context(flavour, strict, staged)
    subject = _parse_subject(spec.get("subject"), context)
    ingress = _parse_rules(spec.get("ingress"), "spec.ingress", "from", tier, cluster, name, context)
    egress = _parse_rules(spec.get("egress"), "spec.egress", "to", tier, cluster, name, context)
    return ClusterPolicy(
        cluster=cluster,
        kind=flavour.kind,
        name=name,
        tier=tier,
        priority=priority,
        subject=subject,
        ingress=ingress,
        egress=egress,
        warnings=tuple(context.warnings),
        staged=staged,
        staged_problem=staged_problem,
    )


def _parse_name(value: Any, flavour: _Flavour) -> str:
    if value is None:
        raise PolicyError("metadata", "required value")
    meta = expect_object(value, "metadata")
    reject_unknown(meta, frozenset(_METADATA_FIELDS), "metadata")
    if not meta.get("name"):
        raise PolicyError("metadata.name", "required value")
    name = expect_string(meta["name"], "metadata.name")
    problem = dns1123_subdomain_problem(name)
    if problem is not None:
        raise PolicyError("metadata.name", f"invalid name {name!r}: {problem}")
    if flavour is BANP and name != BANP_NAME:
        raise PolicyError("metadata.name", f'only one BaselineAdminNetworkPolicy may exist, named "{BANP_NAME}"')
    return name


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int_in(value: Any, path: str, low: int, high: int) -> int:
    if value is None:
        raise PolicyError(path, "required value")
    if not _is_int(value):
        raise PolicyError(path, f"must be an integer, got {value!r}")
    if not low <= value <= high:
        raise PolicyError(path, f"must be between {low} and {high}, inclusive, got {value}")
    return int(value)


def _parse_tier(value: Any) -> Tier:
    if value is None:
        raise PolicyError("spec.tier", "required value")
    text = expect_string(value, "spec.tier")
    try:
        return Tier(text)
    except ValueError:
        raise PolicyError("spec.tier", f'unsupported value "{text}" (Admin, Baseline)') from None


def _parse_priority(value: Any) -> int:
    return _int_in(value, "spec.priority", 0, 1000)


def _one_field(obj: dict[str, Any], path: str, what: str) -> str | None:
    """The one field set in a union; None when none is (an error with strict)."""
    present = [key for key, item in obj.items() if item is not None]
    if len(present) > 1:
        raise PolicyError(path, f"exactly one of {what} may be set, got {', '.join(present)}")
    return present[0] if present else None


def _parse_pods(value: Any, path: str, context: _Context) -> tuple[LabelSelector, LabelSelector]:
    obj = expect_object(value, path)
    reject_unknown(obj, frozenset(_PODS), path)
    ns_path = join(path, "namespaceSelector")
    if obj.get("namespaceSelector") is None and context.flavour.namespace_selector_required:
        raise PolicyError(ns_path, "required value")
    if obj.get("podSelector") is None:
        raise PolicyError(join(path, "podSelector"), "required value")
    namespaces = parse_selector(obj.get("namespaceSelector"), ns_path)
    pods = parse_selector(obj["podSelector"], join(path, "podSelector"))
    return (namespaces, pods)


def _parse_subject(value: Any, context: _Context) -> Subject:
    path = "spec.subject"
    if value is None:
        raise PolicyError(path, "required value")
    obj = expect_object(value, path)
    reject_unknown(obj, frozenset(_SUBJECT), path)
    field = _one_field(obj, path, "namespaces, pods")
    if field is None:
        raise PolicyError(path, "exactly one of namespaces, pods must be set")
    if field == "namespaces":
        return Subject(parse_selector(obj["namespaces"], join(path, "namespaces")))
    namespaces, pods = _parse_pods(obj["pods"], join(path, "pods"), context)
    return Subject(namespaces, pods)


def _parse_rules(
    value: Any, path: str, peers_field: str, tier: Tier, cluster: str, policy: str, context: _Context
) -> tuple[ClusterRule, ...]:
    items = expect_list(value, path)
    limit = context.flavour.max_items
    if len(items) > limit:
        raise PolicyError(path, f"must have at most {limit} items, got {len(items)}")
    rules = []
    for index, item in enumerate(items):
        rule = _parse_rule(item, f"{path}[{index}]", index, peers_field, tier, cluster, policy, context)
        if rule is not None:
            rules.append(rule)
    return tuple(rules)


def _parse_rule(
    value: Any,
    path: str,
    index: int,
    peers_field: str,
    tier: Tier,
    cluster: str,
    policy: str,
    context: _Context,
) -> ClusterRule | None:
    flavour = context.flavour
    known = flavour.schema["spec"]["ingress" if peers_field == "from" else "egress"][0]
    obj = expect_object(value, path)
    reject_unknown(obj, frozenset(known), path)
    name = "" if obj.get("name") is None else expect_string(obj["name"], join(path, "name"))
    if len(name) > 100:
        raise PolicyError(join(path, "name"), f"may not be more than 100 characters, got {len(name)}")
    action_path = join(path, "action")
    if obj.get("action") is None:
        raise PolicyError(action_path, "required value")
    action_text = expect_string(obj["action"], action_path)
    action = flavour.actions.get(action_text)
    if action is None:
        raise PolicyError(action_path, f'unsupported value "{action_text}" ({", ".join(flavour.actions)})')
    peers_path = join(path, peers_field)
    raw_peers = expect_list(obj.get(peers_field), peers_path)
    if not raw_peers:
        raise PolicyError(peers_path, "required value: at least one peer")
    if len(raw_peers) > flavour.max_items:
        raise PolicyError(peers_path, f"must have at most {flavour.max_items} items, got {len(raw_peers)}")
    ports_path = join(path, flavour.ports_field)
    raw_ports = obj.get(flavour.ports_field)
    if raw_ports is not None and not expect_list(raw_ports, ports_path) and flavour is CNP:
        raise PolicyError(ports_path, "must have at least 1 item when set")
    raw_ports = expect_list(raw_ports, ports_path)
    if len(raw_ports) > flavour.max_items:
        raise PolicyError(ports_path, f"must have at most {flavour.max_items} items, got {len(raw_ports)}")
    unenforceable: list[str] = []
    peers = []
    for peer_index, item in enumerate(raw_peers):
        peer = _parse_peer(item, f"{peers_path}[{peer_index}]", known[peers_field][0], context, unenforceable)
        if peer is not None:
            peers.append(peer)
    ports = []
    for port_index, item in enumerate(raw_ports):
        port = _parse_port(item, f"{ports_path}[{port_index}]", context, unenforceable)
        if port is not None:
            ports.append(port)
    address_peers = any(p.kind in (PeerKind.NETWORKS, PeerKind.NODES) for p in peers) or any(
        "domainNames" in what for what in unenforceable
    )
    if flavour is CNP and address_peers and any(p.name for p in ports):
        raise PolicyError(
            path,
            "networks/nodes/domainNames peer cannot be set with namedPorts since there are no namedPorts "
            "for networks/nodes/domainNames",
        )
    ref = RuleRef(tier, flavour.kind, cluster, policy, index, name, action, context.staged)
    if not unenforceable:
        return ClusterRule(action, tuple(peers), tuple(ports), ref)
    label = f"{path} ({name})" if name else path
    what = "; ".join(unenforceable)
    if action is Action.ACCEPT:
        if not peers or (raw_ports and not ports):
            context.warnings.append(f"{label}: {what}: the Accept rule matches no traffic (dropped)")
            return None
        context.warnings.append(f"{label}: {what}: matches nothing; the rest of the Accept rule applies")
        return ClusterRule(action, tuple(peers), tuple(ports), ref)
    context.warnings.append(f"{label}: {what}: the {action.value} rule denies all traffic (fail closed)")
    deny_ref = RuleRef(tier, flavour.kind, cluster, policy, index, name, Action.DENY, context.staged)
    return ClusterRule(Action.DENY, (), (), deny_ref, all_peers=True)


def _union(
    value: Any, path: str, known: dict[str, Any], context: _Context, unenforceable: list[str], what: str
) -> tuple[dict[str, Any], str | None]:
    """A peer or port union: the object and its one field. No field known: an error with strict,
    else noted as unenforceable (field None)."""
    obj = expect_object(value, path)
    reject_unknown(obj, frozenset(known), path)
    field = _one_field(obj, path, ", ".join(known))
    if field is None:
        if context.strict:
            raise PolicyError(path, f"exactly one of {', '.join(known)} must be set")
        unenforceable.append(f"{path}: {what} of a kind the agent does not know")
    return obj, field


def _parse_peer(
    value: Any, path: str, known: dict[str, Any], context: _Context, unenforceable: list[str]
) -> ClusterPeer | None:
    obj, field = _union(value, path, known, context, unenforceable, "a peer")
    if field is None:
        return None
    item = obj[field]
    item_path = join(path, field)
    if field == "namespaces":
        return ClusterPeer(PeerKind.NAMESPACES, namespace_selector=parse_selector(item, item_path))
    if field == "pods":
        namespaces, pods = _parse_pods(item, item_path, context)
        return ClusterPeer(PeerKind.PODS, namespace_selector=namespaces, pod_selector=pods)
    if field == "nodes":
        return ClusterPeer(PeerKind.NODES, node_selector=parse_selector(item, item_path))
    if field == "networks":
        cidrs = _set_of(item, item_path, 25)
        return ClusterPeer.of_networks(tuple(parse_cidr(c, f"{item_path}[{i}]") for i, c in enumerate(cidrs)))
    names = _set_of(item, item_path, 25)
    for index, text in enumerate(names):
        if not isinstance(text, str) or not _DOMAIN_NAME.match(text):
            raise PolicyError(f"{item_path}[{index}]", f"invalid domain name {text!r}")
    unenforceable.append(f"{item_path}: domainNames peers are not enforced by this agent")
    return None


def _set_of(value: Any, path: str, limit: int) -> list[Any]:
    items = expect_list(value, path)
    if not items:
        raise PolicyError(path, "must have at least 1 item")
    if len(items) > limit:
        raise PolicyError(path, f"must have at most {limit} items, got {len(items)}")
    return items


def _parse_named(value: Any, path: str) -> PortMatch:
    name = expect_string(value, path)
    problem = port_name_problem(name)
    if problem is not None:
        raise PolicyError(path, f"invalid port name {name!r}: {problem}")
    return PortMatch(name=name)


def _parse_port(value: Any, path: str, context: _Context, unenforceable: list[str]) -> PortMatch | None:
    flavour = context.flavour
    known = _V2_PROTOCOL if flavour is CNP else _V1_PORT
    obj, field = _union(value, path, known, context, unenforceable, "a port match")
    if field is None:
        return None
    item_path = join(path, field)
    if field in ("destinationNamedPort", "namedPort"):
        return _parse_named(obj[field], item_path)
    if flavour is CNP:
        return _parse_v2_protocol(obj[field], item_path, field.upper())
    body = expect_object(obj[field], item_path)
    reject_unknown(body, frozenset(_V1_PORT[field]), item_path)
    protocol = parse_protocol(body.get("protocol"), join(item_path, "protocol"))
    if field == "portNumber":
        number = _int_in(body.get("port"), join(item_path, "port"), 1, 65535)
        return PortMatch(protocol, number, number)
    start, end = _port_range(body, item_path)
    if end < start:
        raise PolicyError(join(item_path, "end"), f"must not be less than start ({end} < {start})")
    return PortMatch(protocol, start, end)


def _port_range(bounds: dict[str, Any], path: str) -> tuple[int, int]:
    return (
        _int_in(bounds.get("start"), join(path, "start"), 1, 65535),
        _int_in(bounds.get("end"), join(path, "end"), 1, 65535),
    )


def _parse_v2_protocol(value: Any, path: str, protocol: str) -> PortMatch:
    body = expect_object(value, path)
    reject_unknown(body, frozenset(_V2_PORT), path)
    port_path = join(path, "destinationPort")
    if body.get("destinationPort") is None:
        raise PolicyError(port_path, "required value (an empty protocol match is not allowed)")
    port = expect_object(body["destinationPort"], port_path)
    reject_unknown(port, frozenset(_V2_PORT["destinationPort"]), port_path)
    field = _one_field(port, port_path, "number, range")
    if field is None:
        raise PolicyError(port_path, "exactly one of number, range must be set")
    if field == "number":
        number = _int_in(port["number"], join(port_path, "number"), 1, 65535)
        return PortMatch(protocol, number, number)
    range_path = join(port_path, "range")
    bounds = expect_object(port["range"], range_path)
    reject_unknown(bounds, frozenset(("start", "end")), range_path)
    start, end = _port_range(bounds, range_path)
    if not start < end:
        raise PolicyError(range_path, f"Start port must be less than End port ({start} >= {end})")
    return PortMatch(protocol, start, end)


__all__ = [
    "ANP",
    "BANP",
    "CNP",
    "FLAVOURS",
    "cluster_policy_name",
    "parse_admin_network_policy",
    "parse_baseline_admin_network_policy",
    "parse_by_kind",
    "parse_cluster_network_policy",
]
