"""Decision semantics, rule by rule, including the multi-cluster rules and incremental updates."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from kube_ip_tracker.agent.policy import LabelSelector, PolicyEngine, Reason, parse_network_policy
from kube_ip_tracker.model import ContainerPort, NamespaceRecord, PodRecord

HTTP = (ContainerPort("http", 80, "TCP"), ContainerPort("dns", 53, "UDP"), ContainerPort("sctp", 90, "SCTP"))


def pod(
    name: str,
    ip: str,
    namespace: str = "x",
    cluster: str = "c1",
    ports: tuple[ContainerPort, ...] = HTTP,
    created: int = 0,
    **labels: str,
) -> PodRecord:
    return PodRecord(
        cluster=cluster,
        namespace=namespace,
        name=name,
        labels=labels or {"pod": name},
        ports=ports,
        node="n1",
        ips=(ip,) if ip else (),
        creation_timestamp=created,
    )


def add_policy(engine: PolicyEngine, spec: dict[str, Any], name: str = "p", ns: str = "x", cluster: str = "c1") -> None:
    obj = {"metadata": {"name": name, "namespace": ns}, "spec": spec}
    engine.set_policy(parse_network_policy(obj, cluster))


@pytest.fixture
def engine() -> PolicyEngine:
    """Cluster c1: namespaces x (team=a) and y (team=b) with pods a, b (x) and a, c (y); cluster c2 mirrors x."""
    eng = PolicyEngine()
    for cluster in ("c1", "c2"):
        eng.set_namespace(NamespaceRecord(cluster, "x", {"team": "a", "cluster": cluster}))
    eng.set_namespace(NamespaceRecord("c1", "y", {"team": "b", "cluster": "c1"}))
    eng.set_pod(pod("a", "10.0.0.1"))
    eng.set_pod(pod("b", "10.0.0.2"))
    eng.set_pod(pod("a", "10.0.1.1", namespace="y"))
    eng.set_pod(pod("c", "10.0.1.3", namespace="y"))
    eng.set_pod(pod("a", "10.1.0.1", cluster="c2"))
    eng.set_pod(pod("b", "10.1.0.2", cluster="c2"))
    return eng


def ok(engine: PolicyEngine, src: str, dst: str, port: int = 80, protocol: str = "TCP") -> bool:
    """Probe between pods named ``[cluster/]namespace/pod`` (cluster c1 by default)."""

    def key(text: str) -> tuple[str, str, str]:
        parts = text.split("/")
        return (parts[0], parts[1], parts[2]) if len(parts) == 3 else ("c1", parts[0], parts[1])

    return engine.decide_pods(key(src), key(dst), protocol, port).allowed


# ---- isolation ---------------------------------------------------------------------------------


def test_no_policies_allow_everything(engine: PolicyEngine) -> None:
    verdict = engine.decide("10.0.0.1", "10.0.1.3", "TCP", 80)
    assert verdict.allowed and str(verdict) == "allow"
    assert verdict.egress is Reason.NOT_ISOLATED and verdict.ingress is Reason.NOT_ISOLATED
    assert engine.decide("192.0.2.1", "10.0.0.1", "UDP", 53).allowed


def test_ingress_isolation_applies_only_to_selected_pods(engine: PolicyEngine) -> None:
    add_policy(engine, {"podSelector": {"matchLabels": {"pod": "b"}}})
    assert not ok(engine, "x/a", "x/b")
    assert ok(engine, "x/b", "x/a")  # b's egress is not isolated by an Ingress policy
    assert ok(engine, "y/c", "x/a")
    verdict = engine.decide_pods(("c1", "x", "a"), ("c1", "x", "b"), "TCP", 80)
    assert verdict.ingress is Reason.DENIED and verdict.egress is Reason.NOT_ISOLATED


def test_egress_isolation(engine: PolicyEngine) -> None:
    add_policy(engine, {"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Egress"]})
    assert not ok(engine, "x/a", "x/b")
    assert not engine.decide("10.0.0.1", "192.0.2.1", "TCP", 443).allowed
    assert ok(engine, "x/b", "x/a")  # a's ingress is not isolated by an Egress-only policy


def test_both_directions_must_allow(engine: PolicyEngine) -> None:
    add_policy(engine, {"podSelector": {"matchLabels": {"pod": "a"}}, "egress": [{}]}, name="egress-a")
    add_policy(engine, {"podSelector": {"matchLabels": {"pod": "b"}}}, name="deny-b")
    verdict = engine.decide_pods(("c1", "x", "a"), ("c1", "x", "b"), "TCP", 80)
    assert not verdict.allowed
    assert verdict.egress is Reason.ALLOWED and verdict.egress_policy == ("c1", "x", "egress-a")
    assert verdict.ingress is Reason.DENIED
    add_policy(engine, {"podSelector": {"matchLabels": {"pod": "b"}}, "ingress": [{}]}, name="allow-b")
    assert ok(engine, "x/a", "x/b")


def test_explicit_ingress_type_ignores_egress_rules(engine: PolicyEngine) -> None:
    add_policy(engine, {"podSelector": {}, "egress": [{"ports": [{"port": 1}]}], "policyTypes": ["Ingress"]})
    # egress rules are ignored: a's egress is not isolated, but x pods are ingress-isolated.
    assert ok(engine, "x/a", "y/c")
    assert not ok(engine, "y/c", "x/a")


def test_policies_are_additive(engine: PolicyEngine) -> None:
    add_policy(engine, {"podSelector": {}, "ingress": [{"ports": [{"port": 80}]}]}, name="p80")
    add_policy(engine, {"podSelector": {}, "ingress": [{"ports": [{"port": 81}]}]}, name="p81")
    assert ok(engine, "y/c", "x/a", 80) and ok(engine, "y/c", "x/a", 81)
    assert not ok(engine, "y/c", "x/a", 82)


# ---- peers -------------------------------------------------------------------------------------


def test_empty_from_allows_all_sources_including_external(engine: PolicyEngine) -> None:
    add_policy(engine, {"podSelector": {}, "ingress": [{"ports": [{"port": 80}]}]})
    assert engine.decide("192.0.2.9", "10.0.0.1", "TCP", 80).allowed
    assert not engine.decide("192.0.2.9", "10.0.0.1", "TCP", 81).allowed


def test_peers_are_ored(engine: PolicyEngine) -> None:
    add_policy(
        engine,
        {
            "podSelector": {"matchLabels": {"pod": "a"}},
            "ingress": [
                {
                    "from": [
                        {"podSelector": {"matchLabels": {"pod": "b"}}},
                        {"namespaceSelector": {"matchLabels": {"team": "b"}}},
                    ]
                }
            ],
        },
    )
    assert ok(engine, "x/b", "x/a")
    assert ok(engine, "y/c", "x/a")
    assert ok(engine, "y/a", "x/a")
    assert not ok(engine, "x/a", "x/a")


def test_pod_and_namespace_selector_in_one_peer_are_anded(engine: PolicyEngine) -> None:
    add_policy(
        engine,
        {
            "podSelector": {"matchLabels": {"pod": "b"}},
            "ingress": [
                {
                    "from": [
                        {
                            "podSelector": {"matchLabels": {"pod": "a"}},
                            "namespaceSelector": {"matchLabels": {"team": "b"}},
                        }
                    ]
                }
            ],
        },
    )
    assert ok(engine, "y/a", "x/b")
    assert not ok(engine, "y/c", "x/b")  # right namespace, wrong pod
    assert not ok(engine, "x/a", "x/b")  # right pod, wrong namespace


def test_pod_selector_only_peer_is_limited_to_policy_namespace(engine: PolicyEngine) -> None:
    add_policy(engine, {"podSelector": {"matchLabels": {"pod": "b"}}, "ingress": [{"from": [{"podSelector": {}}]}]})
    assert ok(engine, "x/a", "x/b")
    assert not ok(engine, "y/a", "x/b")
    assert not engine.decide("192.0.2.1", "10.0.0.2", "TCP", 80).allowed


def test_namespace_selector_only_peer_matches_all_pods_of_matching_namespaces(engine: PolicyEngine) -> None:
    add_policy(
        engine,
        {"podSelector": {"matchLabels": {"pod": "b"}}, "ingress": [{"from": [{"namespaceSelector": {}}]}]},
    )
    assert ok(engine, "y/c", "x/b") and ok(engine, "x/a", "x/b") and ok(engine, "c2/x/a", "c1/x/b")
    assert not engine.decide("192.0.2.1", "10.0.0.2", "TCP", 80).allowed  # external: not a pod


def test_match_expressions_in_peers(engine: PolicyEngine) -> None:
    add_policy(
        engine,
        {
            "podSelector": {"matchLabels": {"pod": "a"}},
            "ingress": [
                {
                    "from": [
                        {
                            "namespaceSelector": {
                                "matchExpressions": [
                                    {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["x"]}
                                ]
                            }
                        }
                    ]
                }
            ],
        },
    )
    assert ok(engine, "y/c", "x/a")
    assert not ok(engine, "x/b", "x/a")


def test_unknown_namespace_has_its_name_label(engine: PolicyEngine) -> None:
    engine.set_pod(pod("q", "10.0.9.9", namespace="ghost"))
    add_policy(
        engine,
        {
            "podSelector": {"matchLabels": {"pod": "a"}},
            "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ghost"}}}]}],
        },
    )
    assert ok(engine, "ghost/q", "x/a")
    assert not ok(engine, "y/c", "x/a")


def test_namespace_name_label_is_always_set(engine: PolicyEngine) -> None:
    engine.set_namespace(NamespaceRecord("c1", "y", {"team": "b", "kubernetes.io/metadata.name": "wrong"}))
    assert engine.world.namespace_labels("c1", "y")["kubernetes.io/metadata.name"] == "y"


# ---- ipBlock -----------------------------------------------------------------------------------


def test_ip_block_with_except_matches_pods_and_external_addresses(engine: PolicyEngine) -> None:
    add_policy(
        engine,
        {
            "podSelector": {"matchLabels": {"pod": "a"}},
            "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.1/16", "except": ["10.0.0.2/32"]}}]}],
        },
    )
    assert ok(engine, "x/a", "y/c")  # 10.0.1.3 in 10.0.0.0/16
    assert not ok(engine, "x/a", "x/b")  # excepted
    assert not ok(engine, "x/a", "c2/x/b")  # 10.1.0.2 outside
    assert engine.decide("10.0.0.1", "10.0.200.1", "TCP", 80).allowed
    assert not engine.decide("10.0.0.1", "192.0.2.1", "TCP", 80).allowed


def test_ip_block_ipv6(engine: PolicyEngine) -> None:
    engine.set_pod(pod("v6", "fd00::10", app="v6"))
    add_policy(
        engine,
        {"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "fd00::/64", "except": ["fd00::10/128"]}}]}]},
    )
    assert engine.decide("fd00::1", "10.0.0.1", "TCP", 80).allowed
    assert not engine.decide("fd00::10", "10.0.0.1", "TCP", 80).allowed
    assert not engine.decide("fd01::1", "10.0.0.1", "TCP", 80).allowed
    assert not engine.decide("10.0.0.2", "10.0.0.1", "TCP", 80).allowed


def test_unknown_ip_is_not_subject_to_policies(engine: PolicyEngine) -> None:
    add_policy(engine, {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}, ns="x")
    verdict = engine.decide("192.0.2.1", "198.51.100.1", "TCP", 80)
    assert verdict.allowed and verdict.egress is Reason.NOT_A_POD and verdict.ingress is Reason.NOT_A_POD


# ---- ports -------------------------------------------------------------------------------------


def test_protocol_defaults_to_tcp(engine: PolicyEngine) -> None:
    add_policy(engine, {"podSelector": {}, "ingress": [{"ports": [{"port": 53}]}]})
    assert ok(engine, "y/c", "x/a", 53, "TCP")
    assert not ok(engine, "y/c", "x/a", 53, "UDP")


def test_protocol_only_port_entry_covers_all_ports(engine: PolicyEngine) -> None:
    add_policy(engine, {"podSelector": {}, "ingress": [{"ports": [{"protocol": "UDP"}]}]})
    assert ok(engine, "y/c", "x/a", 1, "UDP") and ok(engine, "y/c", "x/a", 65535, "UDP")
    assert not ok(engine, "y/c", "x/a", 53, "TCP")


def test_end_port_range_is_inclusive(engine: PolicyEngine) -> None:
    add_policy(engine, {"podSelector": {}, "ingress": [{"ports": [{"port": 8000, "endPort": 8010}]}]})
    assert ok(engine, "y/c", "x/a", 8000) and ok(engine, "y/c", "x/a", 8010) and ok(engine, "y/c", "x/a", 8005)
    assert not ok(engine, "y/c", "x/a", 7999) and not ok(engine, "y/c", "x/a", 8011)


def test_sctp_and_udp(engine: PolicyEngine) -> None:
    add_policy(engine, {"podSelector": {}, "ingress": [{"ports": [{"protocol": "SCTP", "port": 90}]}]})
    assert ok(engine, "y/c", "x/a", 90, "SCTP")
    assert not ok(engine, "y/c", "x/a", 90, "TCP") and not ok(engine, "y/c", "x/a", 90, "UDP")


def test_protocol_numbers_and_case_are_normalized(engine: PolicyEngine) -> None:
    add_policy(engine, {"podSelector": {}, "ingress": [{"ports": [{"protocol": "UDP", "port": 53}]}]})
    assert engine.decide("10.0.1.3", "10.0.0.1", 17, 53).allowed
    assert engine.decide("10.0.1.3", "10.0.0.1", "udp", 53).allowed
    assert not engine.decide("10.0.1.3", "10.0.0.1", 6, 53).allowed


def test_named_ingress_port_resolves_on_destination(engine: PolicyEngine) -> None:
    engine.set_pod(pod("b", "10.0.0.2", ports=(ContainerPort("http", 8080, "TCP"),)))
    add_policy(engine, {"podSelector": {}, "ingress": [{"ports": [{"port": "http"}]}]})
    assert ok(engine, "y/c", "x/a", 80)
    assert not ok(engine, "y/c", "x/a", 8080)
    assert ok(engine, "y/c", "x/b", 8080)
    assert not ok(engine, "y/c", "x/b", 80)


def test_named_port_needs_matching_protocol(engine: PolicyEngine) -> None:
    add_policy(engine, {"podSelector": {}, "ingress": [{"ports": [{"port": "dns"}]}]})  # TCP by default
    assert not ok(engine, "y/c", "x/a", 53, "UDP")
    assert not ok(engine, "y/c", "x/a", 53, "TCP")
    add_policy(engine, {"podSelector": {}, "ingress": [{"ports": [{"port": "dns", "protocol": "UDP"}]}]}, name="q")
    assert ok(engine, "y/c", "x/a", 53, "UDP")


def test_named_egress_port_resolves_on_destination_pod(engine: PolicyEngine) -> None:
    engine.set_pod(pod("c", "10.0.1.3", namespace="y", ports=(ContainerPort("http", 8080, "TCP"),)))
    add_policy(engine, {"podSelector": {"matchLabels": {"pod": "a"}}, "egress": [{"ports": [{"port": "http"}]}]})
    assert ok(engine, "x/a", "y/c", 8080)
    assert not ok(engine, "x/a", "y/c", 80)  # the source's own http port is 80: irrelevant
    assert ok(engine, "x/a", "x/b", 80)
    assert not engine.decide("10.0.0.1", "192.0.2.1", "TCP", 80).allowed  # no pod, no named port


# ---- multi-cluster -----------------------------------------------------------------------------


def test_policy_selects_targets_only_in_its_own_cluster(engine: PolicyEngine) -> None:
    add_policy(engine, {"podSelector": {}}, cluster="c2")
    assert not ok(engine, "c1/x/a", "c2/x/a")
    assert ok(engine, "c2/x/a", "c1/x/a")  # c1/x has no policy; c2's policy is ingress-only


def test_egress_at_source_cluster_ingress_at_destination_cluster(engine: PolicyEngine) -> None:
    add_policy(engine, {"podSelector": {}, "policyTypes": ["Egress"]}, cluster="c1")
    assert not ok(engine, "c1/x/a", "c2/x/a")
    assert ok(engine, "c2/x/a", "c1/x/a")  # c1's egress policy does not isolate c2 pods


def test_pod_selector_only_peer_matches_same_namespace_name_in_any_cluster(engine: PolicyEngine) -> None:
    add_policy(engine, {"podSelector": {}, "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}]})
    assert ok(engine, "c2/x/b", "c1/x/a")
    assert ok(engine, "c1/x/b", "c1/x/a")
    assert not ok(engine, "c2/x/a", "c1/x/a")
    assert not ok(engine, "c1/y/c", "c1/x/a")


def test_namespace_selector_matches_namespaces_of_every_cluster(engine: PolicyEngine) -> None:
    add_policy(
        engine,
        {"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"cluster": "c2"}}}]}]},
    )
    assert ok(engine, "c2/x/a", "c1/x/a")
    assert not ok(engine, "c1/x/b", "c1/x/a")


# ---- incremental updates and indexes -----------------------------------------------------------


def test_policy_delete_stops_enforcement(engine: PolicyEngine) -> None:
    add_policy(engine, {"podSelector": {}})
    assert not ok(engine, "y/c", "x/a")
    engine.delete_policy("c1", "x", "p")
    assert ok(engine, "y/c", "x/a")
    engine.delete_policy("c1", "x", "p")  # unknown keys are ignored
    assert engine.world.policy_count == 0


def test_policy_replace_takes_effect(engine: PolicyEngine) -> None:
    add_policy(engine, {"podSelector": {"matchLabels": {"pod": "a"}}})
    assert not ok(engine, "y/c", "x/a") and ok(engine, "y/c", "x/b")
    add_policy(engine, {"podSelector": {"matchLabels": {"pod": "b"}}})
    assert ok(engine, "y/c", "x/a") and not ok(engine, "y/c", "x/b")
    assert engine.world.policy_count == 1


def test_pod_label_change_updates_selection(engine: PolicyEngine) -> None:
    add_policy(engine, {"podSelector": {"matchLabels": {"role": "db"}}})
    assert ok(engine, "y/c", "x/a")
    engine.set_pod(pod("a", "10.0.0.1", role="db"))
    assert not ok(engine, "y/c", "x/a")


def test_namespace_label_change_updates_peers(engine: PolicyEngine) -> None:
    add_policy(
        engine, {"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns2": "updated"}}}]}]}
    )
    assert not ok(engine, "y/c", "x/a")
    engine.set_namespace(NamespaceRecord("c1", "y", {"ns2": "updated"}))
    assert ok(engine, "y/c", "x/a")
    engine.delete_namespace("c1", "y")
    assert not ok(engine, "y/c", "x/a")


def test_pod_delete_makes_its_ip_unknown(engine: PolicyEngine) -> None:
    add_policy(engine, {"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {}}]}]})
    assert engine.decide("10.0.1.3", "10.0.0.1", "TCP", 80).allowed
    engine.delete_pod("c1", "y", "c")
    assert engine.world.pod_by_ip("10.0.1.3") is None
    assert not engine.decide("10.0.1.3", "10.0.0.1", "TCP", 80).allowed
    with pytest.raises(KeyError):
        engine.decide_pods(("c1", "y", "c"), ("c1", "x", "a"), "TCP", 80)


def test_pod_ip_change_reindexes(engine: PolicyEngine) -> None:
    engine.set_pod(pod("c", "10.0.1.99", namespace="y"))
    assert engine.endpoint_for_ip("10.0.1.3").pod is None
    found = engine.endpoint_for_ip("10.0.1.99").pod
    assert found is not None and found.record.key == ("c1", "y", "c")


def test_duplicate_ip_newest_pod_wins(engine: PolicyEngine) -> None:
    engine.set_pod(pod("old", "10.9.9.9", created=1))
    engine.set_pod(pod("new", "10.9.9.9", namespace="y", created=2))
    found = engine.endpoint_for_ip("10.9.9.9").pod
    assert found is not None and found.record.name == "new"


def test_remove_cluster(engine: PolicyEngine) -> None:
    add_policy(engine, {"podSelector": {}}, cluster="c2")
    engine.remove_cluster("c2")
    assert engine.world.policy_count == 0
    assert engine.endpoint_for_ip("10.1.0.1").pod is None
    assert engine.world.pod_count == 4


def test_selection_is_cached_and_invalidated_per_namespace(engine: PolicyEngine) -> None:
    add_policy(engine, {"podSelector": {}})
    entry = engine.world.pod("c1", "x", "a")
    assert entry is not None
    first = engine.world.selection(entry)
    assert engine.world.selection(entry) is first
    add_policy(engine, {"podSelector": {}}, ns="y", name="other")  # another namespace: cache stays
    assert engine.world.selection(entry) is first
    add_policy(engine, {"podSelector": {}}, name="second")
    assert [p.name for p in engine.world.selection(entry).ingress] == ["p", "second"]


def test_pod_without_ip_can_be_probed_by_name(engine: PolicyEngine) -> None:
    engine.set_pod(pod("pending", "", namespace="y"))
    add_policy(engine, {"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "0.0.0.0/0"}}]}]})
    assert not ok(engine, "y/pending", "x/a")
    assert ok(engine, "y/c", "x/a")


def test_invalid_ip_in_decide_raises_value_error(engine: PolicyEngine) -> None:
    with pytest.raises(ValueError):
        engine.decide("not-an-ip", "10.0.0.1", "TCP", 80)


def test_ip_lookup_accepts_non_canonical_text_and_address_objects(engine: PolicyEngine) -> None:
    engine.set_pod(pod("v6", "fd00::10", app="v6"))
    for form in ("fd00::10", "fd00:0:0::0010", "FD00::10"):
        found = engine.endpoint_for_ip(form)
        assert found.pod is not None and found.pod.record.name == "v6"
        assert str(found.ip) == "fd00::10"
    address = ipaddress.ip_address("10.0.0.1")
    found = engine.endpoint_for_ip(address)
    assert found.pod is not None and found.pod.record.name == "a" and found.ip == address


def test_delete_last_policy_then_add_again(engine: PolicyEngine) -> None:
    add_policy(engine, {"podSelector": {}})
    assert not ok(engine, "y/c", "x/a")
    engine.delete_policy("c1", "x", "p")
    assert ok(engine, "y/c", "x/a")
    assert engine.world.policies("c1", "x") == ()
    add_policy(engine, {"podSelector": {}}, name="again")
    assert not ok(engine, "y/c", "x/a")


def test_portless_protocols_match_only_rules_without_ports(engine: PolicyEngine) -> None:
    add_policy(engine, {"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"ports": [{"protocol": "TCP"}]}]})
    add_policy(engine, {"podSelector": {"matchLabels": {"pod": "b"}}, "ingress": [{}]}, name="all")
    assert not engine.decide("10.0.1.3", "10.0.0.1", 1, None).allowed  # ICMP to a: only TCP allowed
    assert engine.decide("10.0.1.3", "10.0.0.2", 1, None).allowed  # ICMP to b: rule without ports


def test_pod_update_with_same_labels_keeps_cached_selection(engine: PolicyEngine) -> None:
    add_policy(engine, {"podSelector": {"matchLabels": {"pod": "a"}}})
    assert not ok(engine, "y/c", "x/a")
    engine.set_pod(pod("a", "10.0.0.77"))  # new IP, same labels
    entry = engine.world.pod("c1", "x", "a")
    assert entry is not None and [p.name for p in engine.world.selection(entry).ingress] == ["p"]
    assert not engine.decide("10.0.1.3", "10.0.0.77", "TCP", 80).allowed
    add_policy(engine, {"podSelector": {"matchLabels": {"pod": "zz"}}})  # replaces p: a no longer selected
    assert engine.decide("10.0.1.3", "10.0.0.77", "TCP", 80).allowed


def test_decisions_touch_only_policies_of_the_endpoints_namespaces(
    engine: PolicyEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    for index in range(300):
        add_policy(engine, {"podSelector": {"matchLabels": {"pod": "a"}}}, name=f"other-{index}", ns="y")
        add_policy(engine, {"podSelector": {}}, name=f"remote-{index}", cluster="c2")
    add_policy(engine, {"podSelector": {"matchLabels": {"pod": "b"}}, "ingress": [{"from": [{"podSelector": {}}]}]})
    for index in range(300):
        engine.set_pod(pod(f"filler-{index}", f"10.5.{index // 250}.{index % 250}", namespace="y"))
    calls = 0
    original = LabelSelector.matches

    def counting(self: LabelSelector, labels: Any) -> bool:
        nonlocal calls
        calls += 1
        return original(self, labels)

    monkeypatch.setattr(LabelSelector, "matches", counting)
    assert ok(engine, "x/a", "x/b")  # cold: selections of x/a and x/b are computed from x's one policy
    assert calls <= 4
    calls = 0
    assert ok(engine, "x/a", "x/b")  # warm: only the peer selector of the one rule
    assert calls <= 2
