"""The Admin and Baseline tiers around NetworkPolicy, across clusters, rule by rule."""

from __future__ import annotations

from typing import Any

import pytest

from kube_ip_tracker.agent.policy import PolicyEngine, Reason, parse_network_policy
from kube_ip_tracker.agent.policy.cluster_compiled import Action, Tier
from kube_ip_tracker.agent.policy.cluster_parse import parse_admin_network_policy, parse_cluster_network_policy
from kube_ip_tracker.model import ContainerPort, NamespaceRecord, NodeRecord, PodRecord

PORTS = (ContainerPort("web", 80, "TCP"), ContainerPort("dns", 53, "UDP"))


def pod(cluster: str, namespace: str, name: str, ip: str, ports: tuple[ContainerPort, ...] = PORTS) -> PodRecord:
    return PodRecord(cluster, namespace, name, {"app": name}, ports, "n1", (ip,))


@pytest.fixture
def engine() -> PolicyEngine:
    """Clusters c1 and c2, each with namespaces pci (zone=pci) and web; pods a (pci) and b (web) in each;
    c2's pci pod serves ``web`` on 8080 instead of 80. One node per cluster."""
    eng = PolicyEngine()
    for index, cluster in enumerate(("c1", "c2"), start=1):
        for namespace, zone in (("pci", "pci"), ("web", "open")):
            eng.set_namespace(NamespaceRecord(cluster, namespace, {"zone": zone, "cluster": cluster}))
        ports = PORTS if cluster == "c1" else (ContainerPort("web", 8080, "TCP"),)
        eng.set_pod(pod(cluster, "pci", "a", f"10.{index}.0.1", ports))
        eng.set_pod(pod(cluster, "web", "b", f"10.{index}.0.2"))
        eng.set_node(
            NodeRecord(cluster, f"node-{index}", {"role": "worker", "cluster": cluster}, (f"172.18.0.{index}",))
        )
    return eng


def add_cnp(engine: PolicyEngine, spec: dict[str, Any], name: str, cluster: str = "c1", tier: str = "Admin") -> None:
    obj = {"metadata": {"name": name}, "spec": {"tier": tier, "priority": 10, **spec}}
    engine.set_cluster_policy(parse_cluster_network_policy(obj, cluster))


def add_np(engine: PolicyEngine, spec: dict[str, Any], name: str, namespace: str, cluster: str = "c1") -> None:
    obj = {"metadata": {"name": name, "namespace": namespace}, "spec": spec}
    engine.set_policy(parse_network_policy(obj, cluster))


PCI = {"namespaces": {"matchLabels": {"zone": "pci"}}}
FROM_C2 = {"namespaces": {"matchLabels": {"cluster": "c2"}}}


def decide(
    engine: PolicyEngine, src: tuple[str, str, str], dst: tuple[str, str, str], port: int = 80, proto: str = "TCP"
):
    return engine.decide_pods(src, dst, proto, port)


A1, B1, A2, B2 = ("c1", "pci", "a"), ("c1", "web", "b"), ("c2", "pci", "a"), ("c2", "web", "b")


def test_admin_deny_beats_a_networkpolicy_allow_and_names_the_rule(engine: PolicyEngine) -> None:
    add_np(engine, {"podSelector": {}, "ingress": [{}]}, "allow-all", "pci")
    add_cnp(engine, {"subject": PCI, "ingress": [{"name": "no-c2", "action": "Deny", "from": [FROM_C2]}]}, "guard")
    verdict = decide(engine, B2, A1)
    assert not verdict.allowed and verdict.ingress is Reason.DENIED
    rule = verdict.ingress_rule
    assert rule is not None and (rule.tier, rule.policy, rule.index, rule.name) == (Tier.ADMIN, "guard", 0, "no-c2")
    assert verdict.ingress_tier == "Admin"
    assert decide(engine, B1, A1).allowed  # from c1: no admin rule matches, the NetworkPolicy allows
    assert decide(engine, B1, A1).ingress_tier == "NetworkPolicy"


def test_lower_priority_number_first_and_first_matching_rule_decides(engine: PolicyEngine) -> None:
    add_cnp(engine, {"priority": 20, "subject": PCI, "ingress": [{"action": "Deny", "from": [FROM_C2]}]}, "late")
    add_cnp(
        engine,
        {
            "priority": 5,
            "subject": PCI,
            "ingress": [
                {"action": "Accept", "from": [FROM_C2], "protocols": [{"tcp": {"destinationPort": {"number": 80}}}]},
                {"action": "Deny", "from": [FROM_C2]},
            ],
        },
        "early",
    )
    assert decide(engine, B2, A1, 80).allowed
    assert decide(engine, B2, A1, 80).ingress_rule.policy == "early"  # type: ignore[union-attr]
    denied = decide(engine, B2, A1, 53, "UDP")
    assert not denied.allowed and denied.ingress_rule.index == 1  # type: ignore[union-attr]


def test_pass_hands_over_to_networkpolicy_which_is_final_over_baseline(engine: PolicyEngine) -> None:
    add_cnp(
        engine,
        {"subject": PCI, "ingress": [{"action": "Pass", "from": [FROM_C2]}, {"action": "Deny", "from": [FROM_C2]}]},
        "pass",
    )
    add_cnp(engine, {"subject": PCI, "ingress": [{"action": "Deny", "from": [FROM_C2]}]}, "base", tier="Baseline")
    assert not decide(engine, B2, A1).allowed  # passed, no NetworkPolicy: the Baseline deny applies
    assert decide(engine, B2, A1).ingress_rule.tier is Tier.BASELINE  # type: ignore[union-attr]
    add_np(
        engine,
        {"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"cluster": "c2"}}}]}]},
        "np",
        "pci",
    )
    verdict = decide(engine, B2, A1)
    assert verdict.allowed and verdict.ingress_policy == ("c1", "pci", "np") and verdict.ingress_rule is None


def test_baseline_pass_goes_to_the_default_allow(engine: PolicyEngine) -> None:
    add_cnp(
        engine,
        {"subject": PCI, "ingress": [{"action": "Pass", "from": [FROM_C2]}, {"action": "Deny", "from": [FROM_C2]}]},
        "base",
        tier="Baseline",
    )
    verdict = decide(engine, B2, A1)
    assert verdict.allowed and verdict.ingress is Reason.NOT_ISOLATED


def test_egress_accept_does_not_decide_the_destination_ingress(engine: PolicyEngine) -> None:
    add_cnp(engine, {"subject": {"namespaces": {}}, "egress": [{"action": "Accept", "to": [PCI]}]}, "out", cluster="c2")
    add_np(engine, {"podSelector": {}}, "deny-in", "pci")  # c1/pci isolated for ingress
    verdict = decide(engine, B2, A1)
    assert verdict.egress is Reason.ALLOWED and verdict.ingress is Reason.DENIED and not verdict.allowed


def test_subjects_are_local_peers_global(engine: PolicyEngine) -> None:
    add_cnp(
        engine,
        {"subject": PCI, "egress": [{"action": "Deny", "to": [{"namespaces": {"matchLabels": {"zone": "open"}}}]}]},
        "g",
    )
    assert not decide(engine, A1, B2).allowed  # c1's pci pod may not reach web of any cluster
    assert not decide(engine, A1, B1).allowed
    assert decide(engine, A2, B1).allowed  # c2's pci pod is not a subject of c1's policy


def test_pods_peer_ands_namespace_and_pod_selectors(engine: PolicyEngine) -> None:
    peer = {
        "pods": {"namespaceSelector": {"matchLabels": {"zone": "open"}}, "podSelector": {"matchLabels": {"app": "b"}}}
    }
    add_cnp(engine, {"subject": PCI, "ingress": [{"action": "Deny", "from": [peer]}]}, "g")
    assert not decide(engine, B2, A1).allowed
    assert decide(engine, A2, A1).allowed  # app=a in a pci namespace


def test_networks_match_pod_addresses_and_external_ones(engine: PolicyEngine) -> None:
    add_cnp(
        engine,
        {"subject": PCI, "egress": [{"action": "Deny", "to": [{"networks": ["10.2.0.0/16", "192.0.2.0/24"]}]}]},
        "g",
    )
    assert not decide(engine, A1, B2).allowed
    assert decide(engine, A1, B1).allowed
    assert not engine.decide("10.1.0.1", "192.0.2.9", "TCP", 443).allowed
    assert engine.decide("10.1.0.1", "198.51.100.1", "TCP", 443).allowed


def test_nodes_peer_matches_node_internal_ips_of_every_cluster(engine: PolicyEngine) -> None:
    add_cnp(
        engine,
        {"subject": PCI, "egress": [{"action": "Deny", "to": [{"nodes": {"matchLabels": {"cluster": "c2"}}}]}]},
        "g",
    )
    assert not engine.decide("10.1.0.1", "172.18.0.2", "TCP", 10250).allowed
    assert engine.decide("10.1.0.1", "172.18.0.1", "TCP", 10250).allowed
    engine.set_node(NodeRecord("c2", "node-2", {"cluster": "c2"}, ("172.18.0.9",)))  # the node's address changed
    assert engine.decide("10.1.0.1", "172.18.0.2", "TCP", 10250).allowed
    assert not engine.decide("10.1.0.1", "172.18.0.9", "TCP", 10250).allowed
    engine.delete_node("c2", "node-2")
    assert engine.decide("10.1.0.1", "172.18.0.9", "TCP", 10250).allowed


def test_named_port_resolves_on_the_destination_pod_in_its_cluster(engine: PolicyEngine) -> None:
    add_cnp(
        engine,
        {
            "subject": {"namespaces": {}},
            "egress": [{"action": "Deny", "to": [PCI], "protocols": [{"destinationNamedPort": "web"}]}],
        },
        "g",
    )
    assert not decide(engine, B1, A2, 8080).allowed  # c2's pod names 8080 "web"
    assert decide(engine, B1, A2, 80).allowed
    assert not decide(engine, B1, A1, 80).allowed
    assert decide(engine, B1, A1, 80, "UDP").allowed  # name and protocol must both match


def test_port_ranges_and_protocols(engine: PolicyEngine) -> None:
    protocols = [
        {"udp": {"destinationPort": {"range": {"start": 50, "end": 60}}}},
        {"sctp": {"destinationPort": {"number": 9}}},
    ]
    add_cnp(
        engine,
        {"subject": PCI, "ingress": [{"action": "Deny", "from": [{"namespaces": {}}], "protocols": protocols}]},
        "g",
    )
    assert not decide(engine, B1, A1, 50, "UDP").allowed and not decide(engine, B1, A1, 60, "UDP").allowed
    assert decide(engine, B1, A1, 61, "UDP").allowed and decide(engine, B1, A1, 55, "TCP").allowed
    assert not decide(engine, B1, A1, 9, "SCTP").allowed
    assert not engine.decide("10.1.0.2", "10.1.0.1", 132, 9).allowed  # protocol numbers are normalized


def test_policy_without_rules_for_a_direction_does_not_isolate_it(engine: PolicyEngine) -> None:
    add_cnp(engine, {"subject": PCI, "ingress": [{"action": "Deny", "from": [FROM_C2]}]}, "g", tier="Baseline")
    assert decide(engine, A1, B2).allowed and decide(engine, A1, B2).egress is Reason.NOT_ISOLATED


def test_subject_cache_follows_namespace_relabels_and_policy_changes(engine: PolicyEngine) -> None:
    add_cnp(engine, {"subject": PCI, "ingress": [{"action": "Deny", "from": [FROM_C2]}]}, "g")
    assert not decide(engine, B2, A1).allowed
    engine.set_namespace(NamespaceRecord("c1", "pci", {"zone": "relabelled"}))
    assert decide(engine, B2, A1).allowed
    engine.set_namespace(NamespaceRecord("c1", "pci", {"zone": "pci"}))
    assert not decide(engine, B2, A1).allowed
    engine.delete_cluster_policy("c1", "ClusterNetworkPolicy", "g")
    assert decide(engine, B2, A1).allowed
    add_cnp(engine, {"subject": PCI, "ingress": [{"action": "Deny", "from": [FROM_C2]}]}, "g")
    engine.remove_cluster("c1")
    assert engine.tiers.count == 0


def test_anp_and_cnp_share_the_admin_priority_order(engine: PolicyEngine) -> None:
    add_cnp(engine, {"priority": 50, "subject": PCI, "ingress": [{"action": "Deny", "from": [FROM_C2]}]}, "cnp")
    obj = {
        "metadata": {"name": "anp"},
        "spec": {"priority": 40, "subject": PCI, "ingress": [{"action": "Allow", "from": [FROM_C2]}]},
    }
    engine.set_cluster_policy(parse_admin_network_policy(obj, "c1"))
    verdict = decide(engine, B2, A1)
    assert verdict.allowed and verdict.ingress_rule.kind == "AdminNetworkPolicy"  # type: ignore[union-attr]
    assert verdict.ingress_rule.action is Action.ACCEPT  # type: ignore[union-attr]


def test_verdict_log_outcome_names_the_tier_policy_and_rule(engine: PolicyEngine) -> None:
    from kube_ip_tracker.agent.outcomes import direction_outcomes

    add_np(engine, {"podSelector": {}}, "deny-in", "pci")
    add_cnp(engine, {"subject": PCI, "ingress": [{"name": "no-c2", "action": "Deny", "from": [FROM_C2]}]}, "guard")
    src, dst = engine.endpoint_for_pod(*B2), engine.endpoint_for_pod(*A1)
    verdict = engine.decide_endpoints(src, dst, "TCP", 80)
    _, ingress = direction_outcomes(engine, verdict, src, dst, False, True)
    assert (ingress.tier, ingress.policies, ingress.rule, ingress.allowed) == (
        "Admin",
        ("ClusterNetworkPolicy/guard",),
        0,
        False,
    )
    assert str(ingress) == "deny: Admin ClusterNetworkPolicy/guard rule 0 (Deny rule no-c2)"
