"""Staged policies (annotation kube-ip-tracker.io/staged): parsed, reported when the value is wrong,
evaluated beside the enforced policies and never enforced."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from prometheus_client import REGISTRY

from kube_ip_tracker.agent.cluster_policies import KINDS, ClusterPolicyStore
from kube_ip_tracker.agent.networkpolicies import PolicyStore
from kube_ip_tracker.agent.policy import PolicyEngine, PolicyError, Reason, parse_network_policy
from kube_ip_tracker.agent.policy.cluster_parse import parse_cluster_network_policy
from kube_ip_tracker.agent.policy.staged import STAGED_ANNOTATION
from kube_ip_tracker.agent.policy.worldfile import load_world
from kube_ip_tracker.model import ContainerPort, NamespaceRecord, PodRecord

WEB = "10.0.0.2"
CLIENT = "10.0.0.1"


def annotated(value: str | None) -> dict[str, Any]:
    return {} if value is None else {"annotations": {STAGED_ANNOTATION: value}}


def network_policy(name: str, staged: str | None = "true", ingress: list[Any] | None = None) -> dict[str, Any]:
    """Ingress to app=web: denied, or allowed by ``ingress`` rules."""
    spec: dict[str, Any] = {"podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Ingress"]}
    if ingress is not None:
        spec["ingress"] = ingress
    return {"metadata": {"name": name, "namespace": "shop", **annotated(staged)}, "spec": spec}


def cluster_policy(name: str, action: str = "Deny", staged: str | None = "true", priority: int = 10) -> dict[str, Any]:
    """An Admin tier rule for ingress to app=web from every namespace."""
    return {
        "metadata": {"name": name, **annotated(staged)},
        "spec": {
            "tier": "Admin",
            "priority": priority,
            "subject": {"pods": {"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": "web"}}}},
            "ingress": [{"name": "from-all", "action": action, "from": [{"namespaces": {}}]}],
        },
    }


def engine_with_pods(cluster: str = "c1") -> PolicyEngine:
    engine = PolicyEngine()
    engine.set_namespace(NamespaceRecord(cluster, "shop", {}))
    ports = (ContainerPort("http", 80, "TCP"),)
    engine.set_pod(PodRecord(cluster, "shop", "client", {"app": "client"}, ports, "n", (CLIENT,)))
    engine.set_pod(PodRecord(cluster, "shop", "web", {"app": "web"}, ports, "n", (WEB,)))
    return engine


# ---- parse ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "staged"), [("true", True), ("false", False), (None, False)])
def test_the_annotation_stages_a_network_policy(value: str | None, staged: bool) -> None:
    policy = parse_network_policy(network_policy("p", value), "c1")
    assert (policy.staged, policy.staged_problem) == (staged, "")


@pytest.mark.parametrize("value", ["yes", "True", "", "1"])
def test_another_value_is_a_problem_and_the_policy_is_enforced(value: str) -> None:
    for policy in (
        parse_network_policy(network_policy("p", value), "c1"),
        parse_cluster_network_policy(cluster_policy("p", staged=value), "c1"),
    ):
        assert not policy.staged
        assert STAGED_ANNOTATION in policy.staged_problem
        assert repr(value) in policy.staged_problem and "enforced" in policy.staged_problem


def test_annotations_that_are_no_object_are_an_error() -> None:
    obj = network_policy("p")
    obj["metadata"]["annotations"] = ["kube-ip-tracker.io/staged"]
    with pytest.raises(PolicyError, match=r"metadata\.annotations"):
        parse_network_policy(obj, "c1")


def test_a_staged_cluster_policy_marks_its_rules() -> None:
    policy = parse_cluster_network_policy(cluster_policy("deny-web"), "c1")
    assert policy.staged
    assert all(rule.ref.staged for rule in policy.ingress)
    assert "(staged)" in str(policy.ingress[0].ref)
    assert not parse_cluster_network_policy(cluster_policy("deny-web", staged=None), "c1").ingress[0].ref.staged


# ---- evaluator ------------------------------------------------------------------------------------


def test_a_staged_default_deny_changes_no_verdict_and_names_itself() -> None:
    engine = engine_with_pods()
    assert engine.decide(CLIENT, WEB, "TCP", 80).staged is None  # no staged policy: nothing computed
    engine.set_policy(parse_network_policy(network_policy("default-deny"), "c1"))
    verdict = engine.decide(CLIENT, WEB, "TCP", 80)
    assert verdict.allowed and verdict.ingress is Reason.NOT_ISOLATED
    assert verdict.staged is not None and not verdict.staged.allowed
    assert verdict.staged.ingress is Reason.DENIED
    src, dst = engine.endpoint_for_ip(CLIENT), engine.endpoint_for_ip(WEB)
    cause = engine.staged_cause(src, dst, "TCP", 80, "ingress")
    assert cause.isolating == (("c1", "shop", "default-deny"),)
    assert engine.decide_staged(src, dst, "TCP", 80) == verdict.staged
    # A connection the staged policy does not concern carries nothing.
    assert engine.decide(WEB, CLIENT, "TCP", 80).staged is None


def test_removing_the_annotation_enforces_the_policy() -> None:
    engine = engine_with_pods()
    engine.set_policy(parse_network_policy(network_policy("default-deny"), "c1"))
    assert engine.decide(CLIENT, WEB, "TCP", 80).allowed
    engine.set_policy(parse_network_policy(network_policy("default-deny", None), "c1"))
    verdict = engine.decide(CLIENT, WEB, "TCP", 80)
    assert not verdict.allowed and verdict.staged is None
    assert engine.staged_policies == 0 and engine.world.policy_count == 1
    engine.set_policy(parse_network_policy(network_policy("default-deny"), "c1"))  # staged again
    assert engine.decide(CLIENT, WEB, "TCP", 80).allowed
    engine.delete_policy("c1", "shop", "default-deny")
    assert engine.world.policy_count == 0 and engine.staged_policies == 0


def test_a_staged_allow_is_a_would_allow_named_by_its_rule() -> None:
    engine = engine_with_pods()
    engine.set_policy(parse_network_policy(network_policy("deny", None), "c1"))
    allow = network_policy("allow-client", ingress=[{"from": [{"podSelector": {"matchLabels": {"app": "client"}}}]}])
    engine.set_policy(parse_network_policy(allow, "c1"))
    verdict = engine.decide(CLIENT, WEB, "TCP", 80)
    assert not verdict.allowed and verdict.staged is not None and verdict.staged.allowed
    cause = engine.staged_cause(engine.endpoint_for_ip(CLIENT), engine.endpoint_for_ip(WEB), "TCP", 80, "ingress")
    assert (cause.policy, cause.policy_rule) == (("c1", "shop", "allow-client"), 0)


def test_staged_admin_rules_name_the_rule_and_never_decide() -> None:
    engine = engine_with_pods()
    engine.set_cluster_policy(parse_cluster_network_policy(cluster_policy("deny-web"), "c1"))
    verdict = engine.decide(CLIENT, WEB, "TCP", 80)
    assert verdict.allowed and verdict.ingress_rule is None
    assert verdict.staged is not None and not verdict.staged.allowed
    src, dst = engine.endpoint_for_ip(CLIENT), engine.endpoint_for_ip(WEB)
    cause = engine.staged_cause(src, dst, "TCP", 80, "ingress")
    assert cause.rule is not None and cause.rule.policy == "deny-web" and cause.rule.name == "from-all"
    # An enforced Accept of lower priority decides first: the staged Deny changes nothing.
    engine.set_cluster_policy(parse_cluster_network_policy(cluster_policy("accept", "Accept", None, 5), "c1"))
    assert engine.decide(CLIENT, WEB, "TCP", 80).staged is None
    # A staged Pass before it skips the Accept: the NetworkPolicy tier (not isolated) decides, the same verdict.
    engine.set_cluster_policy(parse_cluster_network_policy(cluster_policy("pass", "Pass", "true", 1), "c1"))
    verdict = engine.decide(CLIENT, WEB, "TCP", 80)
    assert verdict.allowed and verdict.staged is not None and verdict.staged.allowed
    assert engine.staged_cause(src, dst, "TCP", 80, "ingress").rule.policy == "pass"  # type: ignore[union-attr]
    engine.remove_cluster("c1")
    assert engine.staged_policies == 0


# ---- informers ------------------------------------------------------------------------------------


def gauge(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_network_policy_store_reports_a_bad_annotation_and_counts_staged(caplog: pytest.LogCaptureFixture) -> None:
    engine = engine_with_pods("staged-np")
    store = PolicyStore("staged-np", engine, None)
    caplog.set_level(logging.INFO)
    store.upsert(network_policy("deny", "yes"))
    assert "NetworkPolicy shop/deny: annotation kube-ip-tracker.io/staged: invalid value 'yes'" in caplog.text
    assert not engine.decide(CLIENT, WEB, "TCP", 80).allowed  # enforced
    caplog.clear()
    store.upsert(network_policy("deny", "yes", ingress=[]))  # same problem: not reported again
    assert "invalid value" not in caplog.text
    store.upsert(network_policy("deny", "true"))
    assert "NetworkPolicy shop/deny changed (staged, not enforced)" in caplog.text
    assert engine.decide(CLIENT, WEB, "TCP", 80).allowed
    assert gauge("kube_ip_agent_networkpolicies_staged", cluster="staged-np") == 1
    bad = network_policy("bad", "true")
    bad["spec"]["podSelector"] = {"matchLabels": {"app": "-"}}
    store.upsert(bad)
    assert "NetworkPolicy shop/bad is invalid and is not enforced" in caplog.text
    assert store.invalid.keys() == {("shop", "bad")}


def test_cluster_policy_store_reports_a_bad_annotation(caplog: pytest.LogCaptureFixture) -> None:
    engine = engine_with_pods("staged-cnp")
    kind = next(k for k in KINDS if k.kind == "ClusterNetworkPolicy")
    store = ClusterPolicyStore("staged-cnp", kind, engine, lambda: None)
    caplog.set_level(logging.INFO)
    store.upsert(cluster_policy("deny-web", staged="maybe"))
    assert "ClusterNetworkPolicy deny-web: annotation kube-ip-tracker.io/staged: invalid value 'maybe'" in caplog.text
    assert not engine.decide(CLIENT, WEB, "TCP", 80).allowed
    store.upsert(cluster_policy("deny-web"))
    assert "ClusterNetworkPolicy deny-web changed (staged, not enforced)" in caplog.text
    assert engine.decide(CLIENT, WEB, "TCP", 80).allowed
    assert gauge("kube_ip_agent_cluster_policies_staged", cluster="staged-cnp", kind="ClusterNetworkPolicy") == 1


def test_the_staged_view_follows_every_policy_change() -> None:
    """The staged selection and tier rules cached per pod are recomputed after each change."""
    engine = engine_with_pods()
    engine.set_policy(parse_network_policy(network_policy("default-deny"), "c1"))
    assert engine.decide(CLIENT, WEB, "TCP", 80).staged is not None
    allow = network_policy("allow-client", None, [{"from": [{"podSelector": {"matchLabels": {"app": "client"}}}]}])
    engine.set_policy(parse_network_policy(allow, "c1"))  # enforced: isolates and allows the client
    verdict = engine.decide(CLIENT, WEB, "TCP", 80)
    assert verdict.allowed and verdict.staged is None
    engine.delete_policy("c1", "shop", "allow-client")
    assert engine.decide(CLIENT, WEB, "TCP", 80).staged is not None
    engine.delete_policy("c1", "shop", "default-deny")
    engine.set_cluster_policy(parse_cluster_network_policy(cluster_policy("web", "Deny"), "c1"))
    assert not engine.decide(CLIENT, WEB, "TCP", 80).staged.allowed  # type: ignore[union-attr]
    engine.set_cluster_policy(parse_cluster_network_policy(cluster_policy("web", "Accept"), "c1"))
    staged_verdict = engine.decide(CLIENT, WEB, "TCP", 80).staged
    assert staged_verdict is not None and staged_verdict.allowed and staged_verdict.ingress is Reason.ALLOWED


def test_world_files_warn_about_a_bad_annotation() -> None:
    world = load_world(
        json.dumps(
            {
                "clusters": {
                    "c1": {
                        "namespaces": [{"name": "shop"}],
                        "pods": [],
                        "networkPolicies": [network_policy("deny", "on")],
                        "clusterNetworkPolicies": [cluster_policy("web", staged="off")],
                    }
                },
                "probes": [],
            }
        )
    )
    warnings = world.warnings()
    assert any(w.startswith("NetworkPolicy c1/shop/deny: annotation kube-ip-tracker.io/staged") for w in warnings)
    assert any(w.startswith("ClusterNetworkPolicy c1/web: annotation kube-ip-tracker.io/staged") for w in warnings)
