"""ClusterNetworkPolicy (v1alpha2) and AdminNetworkPolicy/BaselineAdminNetworkPolicy (v1alpha1) validation."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from kube_ip_tracker.agent.policy import PolicyError
from kube_ip_tracker.agent.policy.cluster_compiled import Action, PeerKind, PortMatch, Tier
from kube_ip_tracker.agent.policy.cluster_parse import (
    parse_admin_network_policy,
    parse_baseline_admin_network_policy,
    parse_cluster_network_policy,
)


def cnp(spec: dict[str, Any], name: str = "p") -> dict[str, Any]:
    base = {"tier": "Admin", "priority": 10, "subject": {"namespaces": {}}}
    return {
        "apiVersion": "policy.networking.k8s.io/v1alpha2",
        "kind": "ClusterNetworkPolicy",
        "metadata": {"name": name},
        "spec": {**base, **spec},
    }


def anp(spec: dict[str, Any], name: str = "p", kind: str = "AdminNetworkPolicy") -> dict[str, Any]:
    base: dict[str, Any] = {"subject": {"namespaces": {}}}
    if kind == "AdminNetworkPolicy":
        base["priority"] = 10
    return {
        "apiVersion": "policy.networking.k8s.io/v1alpha1",
        "kind": kind,
        "metadata": {"name": name},
        "spec": {**base, **spec},
    }


DENY_ALL_EGRESS = {"action": "Deny", "to": [{"namespaces": {}}]}


def error_of(obj: Any, parse: Any = parse_cluster_network_policy, strict: bool = True) -> PolicyError:
    with pytest.raises(PolicyError) as info:
        parse(obj, "c1", strict=strict)
    return info.value


def test_cnp_compiles_tier_priority_subject_and_rules() -> None:
    policy = parse_cluster_network_policy(
        cnp(
            {
                "tier": "Baseline",
                "priority": 7,
                "subject": {"pods": {"podSelector": {"matchLabels": {"app": "a"}}}},
                "ingress": [
                    {
                        "name": "from-b",
                        "action": "Accept",
                        "from": [{"pods": {"namespaceSelector": {"matchLabels": {"t": "b"}}, "podSelector": {}}}],
                        "protocols": [
                            {"tcp": {"destinationPort": {"number": 80}}},
                            {"udp": {"destinationPort": {"range": {"start": 50, "end": 60}}}},
                            {"destinationNamedPort": "web"},
                        ],
                    }
                ],
                "egress": [{"action": "Pass", "to": [{"networks": ["10.0.1.1/8"]}, {"nodes": {}}]}],
            }
        ),
        "c1",
    )
    assert (policy.tier, policy.priority, policy.key) == (Tier.BASELINE, 7, ("c1", "ClusterNetworkPolicy", "p"))
    assert policy.subject.pod_selector is not None and policy.subject.namespace_selector.is_empty
    (rule,) = policy.ingress
    assert rule.action is Action.ACCEPT and rule.ref.name == "from-b" and rule.ref.index == 0
    assert rule.peers[0].kind is PeerKind.PODS
    assert rule.ports == (PortMatch("TCP", 80, 80), PortMatch("UDP", 50, 60), PortMatch(name="web"))
    (egress,) = policy.egress
    assert egress.action is Action.PASS
    assert str(egress.peers[0].networks[0]) == "10.0.0.0/8"  # host bits masked, as for ipBlock
    assert egress.peers[1].kind is PeerKind.NODES
    assert policy.warnings == ()


def test_anp_and_banp_map_onto_the_tiers() -> None:
    admin = parse_admin_network_policy(
        anp(
            {
                "priority": 3,
                "egress": [
                    {
                        "action": "Allow",
                        "to": [{"pods": {"namespaceSelector": {}, "podSelector": {}}}],
                        "ports": [
                            {"portNumber": {"protocol": "UDP", "port": 53}},
                            {"portRange": {"start": 8000, "end": 8080}},
                            {"namedPort": "web"},
                        ],
                    }
                ],
            }
        ),
        "c1",
    )
    assert (admin.tier, admin.priority) == (Tier.ADMIN, 3)
    assert admin.egress[0].action is Action.ACCEPT
    assert admin.egress[0].ports == (PortMatch("UDP", 53, 53), PortMatch("TCP", 8000, 8080), PortMatch(name="web"))
    baseline = parse_baseline_admin_network_policy(
        anp({"ingress": [{"action": "Deny", "from": [{"namespaces": {}}]}]}, "default", "BaselineAdminNetworkPolicy"),
        "c1",
    )
    assert baseline.tier is Tier.BASELINE and baseline.ingress[0].action is Action.DENY


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda o: o["spec"].pop("tier"), "spec.tier: required value"),
        (lambda o: o["spec"].update(tier="Developer"), 'spec.tier: unsupported value "Developer"'),
        (lambda o: o["spec"].update(priority=1001), "spec.priority: must be between 0 and 1000"),
        (lambda o: o["spec"].update(priority="1"), "spec.priority: must be an integer"),
        (lambda o: o["spec"].pop("subject"), "spec.subject: required value"),
        (lambda o: o["spec"].update(subject={}), "spec.subject: exactly one of namespaces, pods must be set"),
        (
            lambda o: o["spec"].update(subject={"namespaces": {}, "pods": {"podSelector": {}}}),
            "spec.subject: exactly one of namespaces, pods may be set",
        ),
        (lambda o: o["spec"].update(subject={"pods": {}}), "spec.subject.pods.podSelector: required value"),
        (lambda o: o["spec"].update(egress=[{"to": [{"namespaces": {}}]}]), "spec.egress[0].action: required value"),
        (
            lambda o: o["spec"].update(egress=[{"action": "Allow", "to": [{"namespaces": {}}]}]),
            'spec.egress[0].action: unsupported value "Allow" (Accept, Deny, Pass)',
        ),
        (lambda o: o["spec"].update(egress=[{"action": "Deny", "to": []}]), "spec.egress[0].to: required value"),
        (
            lambda o: o["spec"].update(ingress=[{"action": "Deny", "from": [{"networks": ["10.0.0.0/8"]}]}]),
            'spec.ingress[0].from[0].networks: unknown field "networks"',
        ),
        (
            lambda o: o["spec"].update(egress=[{"action": "Deny", "to": [{"networks": ["10.0.0.0/33"]}]}]),
            'spec.egress[0].to[0].networks[0]: invalid CIDR "10.0.0.0/33"',
        ),
        (
            lambda o: o["spec"].update(egress=[{"action": "Deny", "to": [{"networks": []}]}]),
            "spec.egress[0].to[0].networks: must have at least 1 item",
        ),
        (
            lambda o: o["spec"].update(egress=[{**DENY_ALL_EGRESS, "protocols": [{"tcp": {}}]}]),
            "spec.egress[0].protocols[0].tcp.destinationPort: required value",
        ),
        (
            lambda o: o["spec"].update(egress=[{**DENY_ALL_EGRESS, "protocols": [{"tcp": {"destinationPort": {}}}]}]),
            "spec.egress[0].protocols[0].tcp.destinationPort: exactly one of number, range must be set",
        ),
        (
            lambda o: o["spec"].update(
                egress=[{**DENY_ALL_EGRESS, "protocols": [{"udp": {"destinationPort": {"number": 0}}}]}]
            ),
            "spec.egress[0].protocols[0].udp.destinationPort.number: must be between 1 and 65535",
        ),
        (
            lambda o: o["spec"].update(
                egress=[
                    {**DENY_ALL_EGRESS, "protocols": [{"tcp": {"destinationPort": {"range": {"start": 9, "end": 9}}}}]}
                ]
            ),
            "spec.egress[0].protocols[0].tcp.destinationPort.range: Start port must be less than End port",
        ),
        (
            lambda o: o["spec"].update(
                egress=[{**DENY_ALL_EGRESS, "protocols": [{"tcp": {"destinationPort": {"number": 1}}, "udp": {}}]}]
            ),
            "spec.egress[0].protocols[0]: exactly one of",
        ),
        (
            lambda o: o["spec"].update(egress=[{**DENY_ALL_EGRESS, "protocols": [{"destinationNamedPort": "A_B"}]}]),
            "spec.egress[0].protocols[0].destinationNamedPort: invalid port name 'A_B'",
        ),
        (
            lambda o: o["spec"].update(
                egress=[{"action": "Deny", "to": [{"nodes": {}}], "protocols": [{"destinationNamedPort": "web"}]}]
            ),
            "spec.egress[0]: networks/nodes/domainNames peer cannot be set with namedPorts",
        ),
        (
            lambda o: o["spec"].update(egress=[{**DENY_ALL_EGRESS, "name": "n" * 101}]),
            "spec.egress[0].name: may not be more than 100 characters",
        ),
        (lambda o: o["spec"].update(egress=[DENY_ALL_EGRESS] * 26), "spec.egress: must have at most 25 items"),
        (lambda o: o["spec"].update(egress=[{"action": "Deny", "to": [{}]}]), "spec.egress[0].to[0]: exactly one of"),
        (lambda o: o["metadata"].update(name="Not_A_Name"), "metadata.name: invalid name"),
        (lambda o: o.update(apiVersion="policy.networking.k8s.io/v1alpha1"), "apiVersion: must be"),
        (lambda o: o["spec"].update(podSelector={}), 'spec.podSelector: unknown field "podSelector"'),
    ],
)
def test_invalid_cnp_names_the_field(mutate: Any, message: str) -> None:
    obj = cnp({})
    mutate(obj)
    assert str(error_of(obj)).startswith(message)


@pytest.mark.parametrize(
    ("obj", "parse", "message"),
    [
        (anp({"priority": None}), parse_admin_network_policy, "spec.priority: required value"),
        (
            anp({"subject": {"pods": {"podSelector": {}}}}),
            parse_admin_network_policy,
            "spec.subject.pods.namespaceSelector: required value",
        ),
        (
            anp({"egress": [{"action": "Accept", "to": [{"namespaces": {}}]}]}),
            parse_admin_network_policy,
            'spec.egress[0].action: unsupported value "Accept" (Allow, Deny, Pass)',
        ),
        (
            anp({"egress": [{"action": "Deny", "to": [{"namespaces": {}}], "ports": [{"portNumber": {}}]}]}),
            parse_admin_network_policy,
            "spec.egress[0].ports[0].portNumber.port: required value",
        ),
        (
            anp({"egress": [{"action": "Deny", "to": [{"namespaces": {}}], "protocols": []}]}),
            parse_admin_network_policy,
            'spec.egress[0].protocols: unknown field "protocols"',
        ),
        (
            anp(
                {"ingress": [{"action": "Pass", "from": [{"namespaces": {}}]}]}, "default", "BaselineAdminNetworkPolicy"
            ),
            parse_baseline_admin_network_policy,
            'spec.ingress[0].action: unsupported value "Pass" (Allow, Deny)',
        ),
        (
            anp({}, "other", "BaselineAdminNetworkPolicy"),
            parse_baseline_admin_network_policy,
            'metadata.name: only one BaselineAdminNetworkPolicy may exist, named "default"',
        ),
        (
            anp({"priority": 1}, "default", "BaselineAdminNetworkPolicy"),
            parse_baseline_admin_network_policy,
            'spec.priority: unknown field "priority"',
        ),
    ],
)
def test_invalid_v1alpha1_names_the_field(obj: Any, parse: Any, message: str) -> None:
    assert str(error_of(obj, parse)).startswith(message)


# ---- what the agent cannot enforce never widens access ------------------------------------------


DOMAINS = {"domainNames": ["*.example.com"]}


def test_domain_names_in_accept_rule_match_nothing_and_are_reported() -> None:
    policy = parse_cluster_network_policy(
        cnp({"egress": [{"name": "dns-allow", "action": "Accept", "to": [DOMAINS, {"namespaces": {}}]}]}), "c1"
    )
    (rule,) = policy.egress
    assert rule.action is Action.ACCEPT and [p.kind for p in rule.peers] == [PeerKind.NAMESPACES]
    assert len(policy.warnings) == 1
    assert "spec.egress[0] (dns-allow)" in policy.warnings[0] and "matches nothing" in policy.warnings[0]


def test_accept_rule_with_only_domain_names_is_dropped() -> None:
    policy = parse_cluster_network_policy(
        cnp({"egress": [{"action": "Accept", "to": [DOMAINS]}, DENY_ALL_EGRESS]}), "c1"
    )
    assert [rule.action for rule in policy.egress] == [Action.DENY]
    assert policy.egress[0].ref.index == 1  # rule indexes stay those written
    assert "matches no traffic (dropped)" in policy.warnings[0]


@pytest.mark.parametrize("action", ["Deny", "Pass"])
def test_deny_or_pass_rule_with_domain_names_denies_everything(action: str) -> None:
    rule_in = {"action": action, "to": [DOMAINS], "protocols": [{"tcp": {"destinationPort": {"number": 443}}}]}
    policy = parse_cluster_network_policy(cnp({"egress": [rule_in]}), "c1")
    (rule,) = policy.egress
    assert rule.action is Action.DENY and rule.all_peers and rule.ports == ()
    assert "denies all traffic (fail closed)" in policy.warnings[0]


def test_invalid_domain_name_is_an_error() -> None:
    obj = cnp({"egress": [{"action": "Accept", "to": [{"domainNames": ["not a domain"]}]}]})
    assert str(error_of(obj)).startswith("spec.egress[0].to[0].domainNames[0]: invalid domain name")


def test_unknown_peer_of_a_newer_crd_fails_closed_without_strict() -> None:
    """Without strict, an unknown field is pruned; the peer left empty follows the API's fail-closed rule."""
    accept = cnp({"egress": [{"action": "Accept", "to": [{"services": {"name": "x"}}]}]})
    assert parse_cluster_network_policy(accept, "c1", strict=False).egress == ()
    assert str(error_of(accept)).startswith('spec.egress[0].to[0].services: unknown field "services"')
    deny = copy.deepcopy(accept)
    deny["spec"]["egress"][0]["action"] = "Pass"
    (rule,) = parse_cluster_network_policy(deny, "c1", strict=False).egress
    assert rule.action is Action.DENY and rule.all_peers
    protocol = cnp({"egress": [{**DENY_ALL_EGRESS, "protocols": [{"icmp": {}}]}]})
    (rule,) = parse_cluster_network_policy(protocol, "c1", strict=False).egress
    assert rule.action is Action.DENY and rule.all_peers and rule.ports == ()


def test_status_and_unknown_fields_are_ignored_without_strict() -> None:
    obj = cnp({"egress": [DENY_ALL_EGRESS], "newField": 1})
    obj["status"] = {"conditions": []}
    policy = parse_cluster_network_policy(obj, "c1", strict=False)
    assert policy.egress[0].action is Action.DENY and policy.warnings == ()
