"""Strict validation of NetworkPolicy (networking.k8s.io/v1) JSON into :class:`CompiledPolicy`.

The checks follow the API server: unknown fields are rejected, selectors, ports, protocols and
CIDRs are validated, and ``policyTypes`` is defaulted (Ingress always, Egress when egress rules
are present). A CIDR with host bits set is accepted and masked, as the API server does.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from kube_ip_tracker.kube.names import dns1123_label_problem, dns1123_subdomain_problem, port_name_problem

from .compiled import PROTOCOLS, CompiledPolicy, IPBlock, IPNetwork, Peer, PortSpec, Rule
from .errors import PolicyError, join
from .selectors import (
    REQUIREMENT_FIELDS,
    expect_list,
    expect_object,
    expect_string,
    parse_selector,
    reject_unknown,
)
from .staged import staged_annotation

API_VERSION = "networking.k8s.io/v1"
KIND = "NetworkPolicy"

METADATA_FIELDS = (
    "name",
    "generateName",
    "namespace",
    "selfLink",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "labels",
    "annotations",
    "ownerReferences",
    "finalizers",
    "managedFields",
)

# The known fields of a NetworkPolicy: a dict maps field -> schema of its value, a one-element list
# is an array of that schema, None is a leaf. The field sets below are derived from it.
_SELECTOR_SCHEMA: dict[str, Any] = {
    "matchLabels": None,
    "matchExpressions": [dict.fromkeys(REQUIREMENT_FIELDS)],
}
_PEER_SCHEMA: dict[str, Any] = {
    "podSelector": _SELECTOR_SCHEMA,
    "namespaceSelector": _SELECTOR_SCHEMA,
    "ipBlock": {"cidr": None, "except": None},
}
_PORT_SCHEMA: dict[str, Any] = {"protocol": None, "port": None, "endPort": None}
_INGRESS_SCHEMA: dict[str, Any] = {"ports": [_PORT_SCHEMA], "from": [_PEER_SCHEMA]}
_EGRESS_SCHEMA: dict[str, Any] = {"ports": [_PORT_SCHEMA], "to": [_PEER_SCHEMA]}
_SPEC_SCHEMA: dict[str, Any] = {
    "podSelector": _SELECTOR_SCHEMA,
    "ingress": [_INGRESS_SCHEMA],
    "egress": [_EGRESS_SCHEMA],
    "policyTypes": None,
}
POLICY_SCHEMA: dict[str, Any] = {
    "apiVersion": None,
    "kind": None,
    "metadata": dict.fromkeys(METADATA_FIELDS),
    "spec": _SPEC_SCHEMA,
}

_TOP_FIELDS = frozenset(POLICY_SCHEMA)
_METADATA_SET = frozenset(METADATA_FIELDS)
_SPEC_FIELDS = frozenset(_SPEC_SCHEMA)
_INGRESS_FIELDS = frozenset(_INGRESS_SCHEMA)
_EGRESS_FIELDS = frozenset(_EGRESS_SCHEMA)
_PEER_FIELDS = frozenset(_PEER_SCHEMA)
_IPBLOCK_FIELDS = frozenset(_PEER_SCHEMA["ipBlock"])
_PORT_FIELDS = frozenset(_PORT_SCHEMA)
_POLICY_TYPES = ("Ingress", "Egress")
_CIDR_SYNTAX = re.compile(r"^[0-9A-Fa-f:.]+/[0-9]{1,3}$")


def policy_identity(obj: Any) -> str:
    """``namespace/name`` of a policy object for error messages, as far as it can be read."""
    if not isinstance(obj, dict) or not isinstance(obj.get("metadata"), dict):
        return "?"
    meta = obj["metadata"]
    namespace = meta.get("namespace")
    name = meta.get("name")
    namespace = namespace if isinstance(namespace, str) and namespace else "?"
    name = name if isinstance(name, str) and name else "?"
    return f"{namespace}/{name}"


def prune_unknown(value: Any, schema: Any = POLICY_SCHEMA) -> Any:
    """A copy of ``value`` without the fields ``schema`` does not know (other shapes are kept)."""
    if isinstance(schema, dict) and isinstance(value, dict):
        return {key: prune_unknown(item, schema[key]) for key, item in value.items() if key in schema}
    if isinstance(schema, list) and isinstance(value, list):
        return [prune_unknown(item, schema[0]) for item in value]
    return value


def parse_network_policy(obj: Any, cluster: str, *, strict: bool = True) -> CompiledPolicy:
    """Validate one NetworkPolicy object (parsed JSON) of ``cluster`` and compile it.

    ``strict`` rejects unknown fields, as the API server's strict field validation does. A live
    informer, whose objects the API server has already validated, may pass ``strict=False`` to
    ignore fields of other API versions (such as the removed ``status``).
    Raises :class:`PolicyError` whose path is relative to the object (``spec.ingress[0]...``).
    """
    if not strict:
        obj = prune_unknown(obj)
    top = expect_object(obj, "")
    reject_unknown(top, _TOP_FIELDS, "")
    if "apiVersion" in top and top["apiVersion"] != API_VERSION:
        raise PolicyError("apiVersion", f"must be {API_VERSION!r}, got {top['apiVersion']!r}")
    if "kind" in top and top["kind"] != KIND:
        raise PolicyError("kind", f"must be {KIND!r}, got {top['kind']!r}")
    namespace, name = _parse_metadata(top.get("metadata"))
    staged, staged_problem = staged_annotation(top["metadata"])
    spec = expect_object(top.get("spec", {}), "spec") if top.get("spec") is not None else {}
    reject_unknown(spec, _SPEC_FIELDS, "spec")
    pod_selector = parse_selector(spec.get("podSelector"), "spec.podSelector")
    ingress = tuple(
        _parse_rule(item, f"spec.ingress[{i}]", "from", _INGRESS_FIELDS)
        for i, item in enumerate(expect_list(spec.get("ingress"), "spec.ingress"))
    )
    egress = tuple(
        _parse_rule(item, f"spec.egress[{i}]", "to", _EGRESS_FIELDS)
        for i, item in enumerate(expect_list(spec.get("egress"), "spec.egress"))
    )
    types = _parse_policy_types(spec.get("policyTypes"))
    if types:
        affects_ingress = "Ingress" in types
        affects_egress = "Egress" in types
    else:
        affects_ingress = True
        affects_egress = len(egress) > 0
    return CompiledPolicy(
        cluster=cluster,
        namespace=namespace,
        name=name,
        pod_selector=pod_selector,
        ingress=ingress,
        egress=egress,
        affects_ingress=affects_ingress,
        affects_egress=affects_egress,
        staged=staged,
        staged_problem=staged_problem,
    )


def _parse_metadata(value: Any) -> tuple[str, str]:
    if value is None:
        raise PolicyError("metadata", "required value")
    meta = expect_object(value, "metadata")
    reject_unknown(meta, _METADATA_SET, "metadata")
    if not meta.get("name"):
        raise PolicyError("metadata.name", "required value")
    name = expect_string(meta["name"], "metadata.name")
    problem = dns1123_subdomain_problem(name)
    if problem is not None:
        raise PolicyError("metadata.name", f"invalid name {name!r}: {problem}")
    if not meta.get("namespace"):
        raise PolicyError("metadata.namespace", "required value")
    namespace = expect_string(meta["namespace"], "metadata.namespace")
    problem = dns1123_label_problem(namespace)
    if problem is not None:
        raise PolicyError("metadata.namespace", f"invalid namespace {namespace!r}: {problem}")
    return namespace, name


def _parse_policy_types(value: Any) -> tuple[str, ...]:
    items = expect_list(value, "spec.policyTypes")
    if len(items) > 2:
        raise PolicyError("spec.policyTypes", "may not specify more than two policyTypes")
    types = []
    for index, item in enumerate(items):
        path = f"spec.policyTypes[{index}]"
        text = expect_string(item, path)
        if text not in _POLICY_TYPES:
            raise PolicyError(path, f'unsupported value "{text}" (Ingress, Egress)')
        types.append(text)
    return tuple(types)


def _parse_rule(value: Any, path: str, peers_field: str, known: frozenset[str]) -> Rule:
    obj = expect_object(value, path) if value is not None else {}
    reject_unknown(obj, known, path)
    ports_path = join(path, "ports")
    ports = tuple(
        _parse_port(item, f"{ports_path}[{i}]") for i, item in enumerate(expect_list(obj.get("ports"), ports_path))
    )
    peers_path = join(path, peers_field)
    peers = tuple(
        _parse_peer(item, f"{peers_path}[{i}]") for i, item in enumerate(expect_list(obj.get(peers_field), peers_path))
    )
    return Rule(ports=ports, peers=peers)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _port_number(value: int, path: str) -> int:
    if not 1 <= value <= 65535:
        raise PolicyError(path, f"invalid port {value}: must be between 1 and 65535, inclusive")
    return value


def parse_protocol(value: Any, path: str) -> str:
    """A ``protocol`` field: TCP (the default when absent), UDP or SCTP."""
    if value is None:
        return "TCP"
    text = expect_string(value, path)
    if text not in PROTOCOLS:
        raise PolicyError(path, f'unsupported value "{text}" (TCP, UDP, SCTP)')
    return text


def _parse_port(value: Any, path: str) -> PortSpec:
    obj = expect_object(value, path) if value is not None else {}
    reject_unknown(obj, _PORT_FIELDS, path)
    protocol = parse_protocol(obj.get("protocol"), join(path, "protocol"))
    port = obj.get("port")
    end_port = obj.get("endPort")
    port_path = join(path, "port")
    end_path = join(path, "endPort")
    if end_port is not None and not _is_int(end_port):
        raise PolicyError(end_path, "must be an integer")
    if port is None:
        if end_port is not None:
            raise PolicyError(end_path, "may not be specified when `port` is not specified")
        return PortSpec(protocol=protocol)
    if _is_int(port):
        number = _port_number(port, port_path)
        if end_port is None:
            return PortSpec(protocol=protocol, port=number)
        if end_port < number:
            raise PolicyError(end_path, f"must be greater than or equal to `port` ({end_port} < {number})")
        return PortSpec(protocol=protocol, port=number, end_port=_port_number(end_port, end_path))
    if isinstance(port, str):
        if end_port is not None:
            raise PolicyError(end_path, "may not be specified when `port` is non-numeric")
        problem = port_name_problem(port)
        if problem is not None:
            raise PolicyError(port_path, f"invalid port name {port!r}: {problem}")
        return PortSpec(protocol=protocol, name=port)
    raise PolicyError(port_path, "must be an integer or a port name")


def _parse_peer(value: Any, path: str) -> Peer:
    obj = expect_object(value, path) if value is not None else {}
    reject_unknown(obj, _PEER_FIELDS, path)
    pod_raw = obj.get("podSelector")
    ns_raw = obj.get("namespaceSelector")
    block_raw = obj.get("ipBlock")
    present = sum(raw is not None for raw in (pod_raw, ns_raw, block_raw))
    if present == 0:
        raise PolicyError(path, "must specify a peer (podSelector, namespaceSelector or ipBlock)")
    if block_raw is not None and present > 1:
        raise PolicyError(path, "may not specify both ipBlock and another peer")
    if block_raw is not None:
        return Peer(ip_block=_parse_ip_block(block_raw, join(path, "ipBlock")))
    pod_selector = parse_selector(pod_raw, join(path, "podSelector")) if pod_raw is not None else None
    ns_selector = parse_selector(ns_raw, join(path, "namespaceSelector")) if ns_raw is not None else None
    return Peer(pod_selector=pod_selector, namespace_selector=ns_selector)


def parse_cidr(value: Any, path: str) -> IPNetwork:
    """A CIDR string (IPv4 or IPv6) as a network with host bits masked off."""
    text = expect_string(value, path)
    if not text:
        raise PolicyError(path, "required value")
    network: IPNetwork | None = None
    if _CIDR_SYNTAX.match(text):
        try:
            network = ipaddress.ip_network(text, strict=False)
        except ValueError:
            network = None
    if network is None:
        raise PolicyError(path, f'invalid CIDR "{text}"')
    return network


def _parse_ip_block(value: Any, path: str) -> IPBlock:
    obj = expect_object(value, path)
    reject_unknown(obj, _IPBLOCK_FIELDS, path)
    cidr_path = join(path, "cidr")
    if obj.get("cidr") is None:
        raise PolicyError(cidr_path, "required value")
    cidr = parse_cidr(obj["cidr"], cidr_path)
    excepts = []
    except_path = join(path, "except")
    for index, item in enumerate(expect_list(obj.get("except"), except_path)):
        item_path = f"{except_path}[{index}]"
        excluded = parse_cidr(item, item_path)
        if (
            excluded.version != cidr.version
            or not excluded.subnet_of(cidr)  # type: ignore[arg-type]
            or excluded.prefixlen <= cidr.prefixlen
        ):
            raise PolicyError(item_path, f'"{item}" must be a strict subset of `cidr` "{cidr}"')
        excepts.append(excluded)
    return IPBlock(cidr=cidr, excepts=tuple(excepts))
