"""NetworkPolicy validation (as strict as the API server) and compilation."""

from __future__ import annotations

import copy
import ipaddress
from typing import Any

import pytest

from kube_ip_tracker.agent.policy import PolicyError, PortSpec, parse_network_policy


def policy(spec: dict[str, Any], name: str = "p", namespace: str = "x") -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def error_of(obj: Any) -> PolicyError:
    with pytest.raises(PolicyError) as info:
        parse_network_policy(obj, "c1")
    return info.value


# ---- policyTypes defaulting --------------------------------------------------------------------


def test_policy_types_default_to_ingress_only() -> None:
    compiled = parse_network_policy(policy({"podSelector": {}}), "c1")
    assert compiled.affects_ingress and not compiled.affects_egress
    assert compiled.key == ("c1", "x", "p")


def test_policy_types_default_adds_egress_when_egress_rules_present() -> None:
    compiled = parse_network_policy(policy({"podSelector": {}, "egress": [{}]}), "c1")
    assert compiled.affects_ingress and compiled.affects_egress


def test_empty_egress_list_does_not_add_egress() -> None:
    compiled = parse_network_policy(policy({"podSelector": {}, "egress": []}), "c1")
    assert not compiled.affects_egress


def test_explicit_policy_types_win() -> None:
    compiled = parse_network_policy(
        policy({"podSelector": {}, "ingress": [{}], "egress": [{}], "policyTypes": ["Egress"]}), "c1"
    )
    assert not compiled.affects_ingress and compiled.affects_egress
    empty = parse_network_policy(policy({"podSelector": {}, "egress": [{}], "policyTypes": []}), "c1")
    assert empty.affects_ingress and empty.affects_egress


# ---- ports --------------------------------------------------------------------------------------


def ports_of(entry: dict[str, Any]) -> PortSpec:
    return parse_network_policy(policy({"ingress": [{"ports": [entry]}]}), "c1").ingress[0].ports[0]


def test_port_protocol_defaults_to_tcp() -> None:
    assert ports_of({"port": 80}) == PortSpec("TCP", 80)
    assert ports_of({"protocol": "UDP"}) == PortSpec("UDP")
    assert ports_of({"protocol": "SCTP", "port": 80, "endPort": 90}) == PortSpec("SCTP", 80, 90)
    assert ports_of({"port": "http"}) == PortSpec("TCP", name="http")
    assert ports_of({}) == PortSpec("TCP")


@pytest.mark.parametrize(
    ("entry", "path", "fragment"),
    [
        ({"port": 0}, "port", "between 1 and 65535"),
        ({"port": 65536}, "port", "between 1 and 65535"),
        ({"port": 80, "endPort": 70}, "endPort", "greater than or equal"),
        ({"port": 80, "endPort": 70000}, "endPort", "between 1 and 65535"),
        ({"port": "http", "endPort": 90}, "endPort", "non-numeric"),
        ({"endPort": 90}, "endPort", "not specified"),
        ({"port": 80, "endPort": "90"}, "endPort", "integer"),
        ({"port": "80"}, "port", "at least one letter"),
        ({"port": "Http"}, "port", "lowercase"),
        ({"port": "a-very-long-port-name"}, "port", "15"),
        ({"port": True}, "port", "integer or a port name"),
        ({"port": 80.5}, "port", "integer or a port name"),
        ({"protocol": "ICMP"}, "protocol", "unsupported"),
        ({"protocol": "tcp"}, "protocol", "unsupported"),
        ({"port": 80, "name": "x"}, "name", "unknown field"),
    ],
)
def test_invalid_ports(entry: dict[str, Any], path: str, fragment: str) -> None:
    err = error_of(policy({"ingress": [{"ports": [entry]}]}))
    assert err.path == f"spec.ingress[0].ports[0].{path}"
    assert fragment in err.message


# ---- peers and ipBlock --------------------------------------------------------------------------


def peer_of(peer: dict[str, Any]) -> Any:
    return parse_network_policy(policy({"egress": [{"to": [peer]}]}), "c1").egress[0].peers[0]


def test_cidr_host_bits_are_masked() -> None:
    block = peer_of({"ipBlock": {"cidr": "10.0.1.1/4", "except": ["10.0.1.2/32"]}}).ip_block
    assert block.cidr == ipaddress.ip_network("0.0.0.0/4")
    assert block.contains(ipaddress.ip_address("10.0.1.1"))
    assert not block.contains(ipaddress.ip_address("10.0.1.2"))
    assert not block.contains(ipaddress.ip_address("16.0.0.1"))


def test_ipv6_block() -> None:
    block = peer_of({"ipBlock": {"cidr": "fd00::1/64", "except": ["fd00::ff/128"]}}).ip_block
    assert block.cidr == ipaddress.ip_network("fd00::/64")
    assert block.contains(ipaddress.ip_address("fd00::2"))
    assert not block.contains(ipaddress.ip_address("fd00::ff"))
    assert not block.contains(ipaddress.ip_address("fd01::2"))
    assert not block.contains(ipaddress.ip_address("10.0.0.1"))


@pytest.mark.parametrize(
    ("peer", "path", "fragment"),
    [
        ({"ipBlock": {"cidr": "10.0.0.0/33"}}, "ipBlock.cidr", 'invalid CIDR "10.0.0.0/33"'),
        ({"ipBlock": {"cidr": "10.0.0.0"}}, "ipBlock.cidr", "invalid CIDR"),
        ({"ipBlock": {"cidr": "10.0.0.0/255.0.0.0"}}, "ipBlock.cidr", "invalid CIDR"),
        ({"ipBlock": {"cidr": "300.0.0.0/8"}}, "ipBlock.cidr", "invalid CIDR"),
        ({"ipBlock": {"cidr": "fd00::/129"}}, "ipBlock.cidr", "invalid CIDR"),
        ({"ipBlock": {"cidr": ""}}, "ipBlock.cidr", "required"),
        ({"ipBlock": {}}, "ipBlock.cidr", "required"),
        ({"ipBlock": {"cidr": "10.0.0.0/8", "except": ["11.0.0.0/16"]}}, "ipBlock.except[0]", "strict subset"),
        ({"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.0.0.0/8"]}}, "ipBlock.except[0]", "strict subset"),
        ({"ipBlock": {"cidr": "10.0.0.0/8", "except": ["fd00::/64"]}}, "ipBlock.except[0]", "strict subset"),
        ({"ipBlock": {"cidr": "10.0.0.0/8", "except": ["x"]}}, "ipBlock.except[0]", "invalid CIDR"),
        ({"ipBlock": {"cidr": "10.0.0.0/8", "exclude": []}}, "ipBlock.exclude", "unknown field"),
        ({"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}}, "", "ipBlock and another peer"),
        ({"ipBlock": {"cidr": "10.0.0.0/8"}, "namespaceSelector": {}}, "", "ipBlock and another peer"),
        ({}, "", "must specify a peer"),
        ({"podSelector": None}, "", "must specify a peer"),
        ({"podSelectors": {}}, "podSelectors", "unknown field"),
        (
            {"podSelector": {"matchExpressions": [{"key": "a", "operator": "Bad"}]}},
            "podSelector.matchExpressions[0].operator",
            "Bad",
        ),
    ],
)
def test_invalid_peers(peer: dict[str, Any], path: str, fragment: str) -> None:
    err = error_of(policy({"egress": [{"to": [peer]}]}))
    assert err.path == "spec.egress[0].to[0]" + (f".{path}" if path else "")
    assert fragment in err.message


def test_peer_selectors_compile() -> None:
    peer = peer_of({"podSelector": {"matchLabels": {"a": "b"}}, "namespaceSelector": {}})
    assert peer.pod_selector is not None and peer.namespace_selector is not None
    assert peer.namespace_selector.is_empty
    only_ns = peer_of({"namespaceSelector": {"matchLabels": {"a": "b"}}})
    assert only_ns.pod_selector is None


# ---- unknown fields and object metadata ---------------------------------------------------------

BASE = policy({"podSelector": {}, "ingress": [{"from": [{"podSelector": {}}], "ports": [{"port": 80}]}]})


@pytest.mark.parametrize(
    ("where", "path"),
    [
        ((), "bogus"),
        (("metadata",), "metadata.bogus"),
        (("spec",), "spec.bogus"),
        (("spec", "ingress", 0), "spec.ingress[0].bogus"),
        (("spec", "ingress", 0, "from", 0), "spec.ingress[0].from[0].bogus"),
        (("spec", "ingress", 0, "ports", 0), "spec.ingress[0].ports[0].bogus"),
        (("spec", "podSelector"), "spec.podSelector.bogus"),
    ],
)
def test_unknown_fields_rejected(where: tuple[Any, ...], path: str) -> None:
    obj = copy.deepcopy(BASE)
    target: Any = obj
    for step in where:
        target = target[step]
    target["bogus"] = 1
    err = error_of(obj)
    assert err.path == path
    assert 'unknown field "bogus"' in err.message


def test_ingress_rule_with_to_is_unknown() -> None:
    assert error_of(policy({"ingress": [{"to": []}]})).path == "spec.ingress[0].to"
    assert error_of(policy({"egress": [{"from": []}]})).path == "spec.egress[0].from"


@pytest.mark.parametrize(
    ("obj", "path", "fragment"),
    [
        ({"spec": {}}, "metadata", "required"),
        ({"metadata": {"namespace": "x"}}, "metadata.name", "required"),
        ({"metadata": {"name": "p"}}, "metadata.namespace", "required"),
        ({"metadata": {"name": "Bad_Name", "namespace": "x"}}, "metadata.name", "RFC 1123"),
        ({"metadata": {"name": "p", "namespace": "x.y"}}, "metadata.namespace", "RFC 1123"),
        ({"apiVersion": "v1", "metadata": {"name": "p", "namespace": "x"}}, "apiVersion", "networking"),
        ({"kind": "Pod", "metadata": {"name": "p", "namespace": "x"}}, "kind", "NetworkPolicy"),
        ({"metadata": {"name": "p", "namespace": "x"}, "spec": []}, "spec", "object"),
        (
            {"metadata": {"name": "p", "namespace": "x"}, "spec": {"policyTypes": ["Both"]}},
            "spec.policyTypes[0]",
            "unsupported",
        ),
        (
            {"metadata": {"name": "p", "namespace": "x"}, "spec": {"policyTypes": ["Ingress"] * 3}},
            "spec.policyTypes",
            "more than two",
        ),
        ({"metadata": {"name": "p", "namespace": "x"}, "spec": {"ingress": {}}}, "spec.ingress", "array"),
        ([], "", "object"),
    ],
)
def test_invalid_objects(obj: Any, path: str, fragment: str) -> None:
    err = error_of(obj)
    assert err.path == path
    assert fragment in err.message


def test_known_metadata_fields_accepted() -> None:
    obj = policy({})
    obj["metadata"].update({"uid": "u", "resourceVersion": "1", "labels": {"a": "b"}, "generation": 2})
    compiled = parse_network_policy(obj, "c1")
    assert compiled.pod_selector.is_empty
    assert compiled.ingress == () and compiled.egress == ()


def test_non_strict_mode_ignores_unknown_fields_but_still_validates() -> None:
    obj = policy(
        {"podSelector": {"matchLabels": {"a": "b"}, "x": 1}, "ingress": [{"from": [{"podSelector": {}, "y": 2}]}]}
    )
    obj["status"] = {}
    obj["metadata"]["futureField"] = True
    with pytest.raises(PolicyError):
        parse_network_policy(obj, "c1")
    compiled = parse_network_policy(obj, "c1", strict=False)
    assert compiled.pod_selector.matches({"a": "b"})
    assert compiled.ingress[0].peers[0].pod_selector is not None
    obj["spec"]["ingress"][0]["ports"] = [{"port": 0}]
    with pytest.raises(PolicyError) as info:
        parse_network_policy(obj, "c1", strict=False)
    assert info.value.path == "spec.ingress[0].ports[0].port"


def test_prune_schema_knows_the_same_selector_fields_as_the_parser() -> None:
    from kube_ip_tracker.agent.policy.parse import POLICY_SCHEMA
    from kube_ip_tracker.agent.policy.selectors import SELECTOR_FIELDS

    assert frozenset(POLICY_SCHEMA["spec"]["podSelector"]) == SELECTOR_FIELDS
