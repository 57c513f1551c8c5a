"""Would-deny / would-allow lines and metrics of staged policies; audit mode accepts, logs and counts."""

from __future__ import annotations

import ipaddress
import logging
from typing import Any

import pytest
from prometheus_client import REGISTRY

from kube_ip_tracker.agent.cli import build_parser
from kube_ip_tracker.agent.dataplane import PacketInfo, Protocol
from kube_ip_tracker.agent.enforce import LocalEnforcement
from kube_ip_tracker.agent.policy import PolicyEngine, parse_network_policy
from kube_ip_tracker.agent.policy.cluster_parse import parse_cluster_network_policy
from kube_ip_tracker.agent.policy.staged import STAGED_ANNOTATION
from kube_ip_tracker.agent.run import agent_config
from kube_ip_tracker.agent.verdict_log import VerdictLog, VerdictLogMode, VerdictLogOptions
from kube_ip_tracker.metrics_http import start_metrics_server
from kube_ip_tracker.model import NamespaceRecord, PodRecord

C1, C2 = "cluster-1", "cluster-2"
CLIENT, WEB, C2_WEB = "10.1.0.2", "10.1.0.1", "10.2.0.1"
EVERY_LINE = VerdictLogOptions(mode=VerdictLogMode.DENY, interval=0.0, rate=1e9)


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def network_policy(cluster: str, name: str, spec: dict[str, Any], staged: bool = True) -> Any:
    meta: dict[str, Any] = {"namespace": "demo", "name": name}
    if staged:
        meta["annotations"] = {STAGED_ANNOTATION: "true"}
    return parse_network_policy({"metadata": meta, "spec": spec}, cluster)


DENY_WEB = {"podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Ingress"]}


def tcp(src: str, dst: str, port: int = 80) -> PacketInfo:
    return PacketInfo(ipaddress.ip_address(src), ipaddress.ip_address(dst), Protocol.TCP, 40000, port, 6)


@pytest.fixture
def engine() -> PolicyEngine:
    """web (10.x.0.1) and client (10.x.0.2) in namespace demo of both clusters, no policy."""
    engine = PolicyEngine()
    engine.set_namespace(NamespaceRecord(C1, "demo", {}))
    engine.set_namespace(NamespaceRecord(C2, "demo", {}))
    for cluster, name, ip in (
        (C1, "web", WEB),
        (C1, "client", CLIENT),
        (C2, "web", C2_WEB),
        (C2, "client", "10.2.0.2"),
    ):
        engine.set_pod(PodRecord(cluster, "demo", name, {"app": name}, (), "n", (ip,)))
    return engine


def lines(enforcement: LocalEnforcement, packet: PacketInfo, caplog: pytest.LogCaptureFixture) -> list[Any]:
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="kube_ip_tracker.agent.verdicts"):
        enforcement.decide(packet)
    return [(r.getMessage(), dict(r.fields)) for r in caplog.records if r.name == "kube_ip_tracker.agent.verdicts"]  # type: ignore[attr-defined]


def test_a_staged_default_deny_logs_would_deny_and_counts_without_denying(
    engine: PolicyEngine, caplog: pytest.LogCaptureFixture
) -> None:
    engine.set_policy(network_policy(C1, "default-deny", DENY_WEB))
    enforcement = LocalEnforcement(engine, C1, VerdictLog(EVERY_LINE), per_policy_limit=10)
    before = sample("kube_ip_agent_staged_decisions_total", result="would-deny", direction="ingress")
    per_policy = dict(direction="ingress", result="would-deny", tier="NetworkPolicy", policy="demo/default-deny")
    before_policy = sample("kube_ip_agent_staged_policy_verdicts_total", **per_policy)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="kube_ip_tracker.agent.verdicts"):
        local = enforcement.decide(tcp(CLIENT, WEB))
    assert local.allowed and local.policy_allowed  # type: ignore[union-attr]
    ((message, fields),) = [
        (r.getMessage(), dict(r.fields))  # type: ignore[attr-defined]
        for r in caplog.records
        if r.name == "kube_ip_tracker.agent.verdicts"
    ]
    assert message == "Connection would be denied"
    assert fields == {
        "verdict": "would-deny",
        "direction": "ingress",
        "tier": "NetworkPolicy",
        "policy": "demo/default-deny",
        "rule": "",
        "reason": "isolated, no rule matched",
        "src": "cluster-1/demo/client",
        "dst": "cluster-1/demo/web",
        "protocol": "TCP",
        "port": 80,
        "enforced": "allow",
        "egress": "not isolated",
        "ingress": "deny: NetworkPolicy demo/default-deny (isolated, no rule matched)",
    }
    assert sample("kube_ip_agent_staged_decisions_total", result="would-deny", direction="ingress") == before + 1
    assert sample("kube_ip_agent_staged_policy_verdicts_total", **per_policy) == before_policy + 1
    # The source's side (egress, not isolated) and the other cluster's agent see no change.
    assert lines(LocalEnforcement(engine, C2, VerdictLog(EVERY_LINE)), tcp(C2_WEB, WEB), caplog) == []


def test_would_deny_lines_are_deduplicated_per_tuple(engine: PolicyEngine, caplog: pytest.LogCaptureFixture) -> None:
    engine.set_policy(network_policy(C1, "default-deny", DENY_WEB))
    options = VerdictLogOptions(mode=VerdictLogMode.DENY, interval=60.0, rate=1e9)
    enforcement = LocalEnforcement(engine, C1, VerdictLog(options))
    before = sample("kube_ip_agent_staged_decisions_total", result="would-deny", direction="ingress")
    assert len(lines(enforcement, tcp(CLIENT, WEB), caplog)) == 1
    assert lines(enforcement, tcp(CLIENT, WEB), caplog) == []  # the same tuple: counted, not logged
    assert len(lines(enforcement, tcp(CLIENT, WEB, 81), caplog)) == 1  # another tuple
    assert sample("kube_ip_agent_staged_decisions_total", result="would-deny", direction="ingress") == before + 3


def test_a_staged_allow_logs_would_allow_beside_the_deny(
    engine: PolicyEngine, caplog: pytest.LogCaptureFixture
) -> None:
    engine.set_policy(network_policy(C1, "deny", DENY_WEB, staged=False))
    allow = {"podSelector": {"matchLabels": {"app": "web"}}, "ingress": [{"ports": [{"port": 80}]}]}
    engine.set_policy(network_policy(C1, "allow-80", allow))
    got = lines(LocalEnforcement(engine, C1, VerdictLog(EVERY_LINE)), tcp(CLIENT, WEB), caplog)
    assert [m for m, _ in got] == ["Connection denied", "Connection would be allowed"]
    enforced, staged = got[0][1], got[1][1]
    assert enforced["verdict"] == "deny" and enforced["policy"] == "demo/deny"
    assert (staged["verdict"], staged["policy"], staged["rule"], staged["reason"], staged["enforced"]) == (
        "would-allow",
        "demo/allow-80",
        0,
        "allowed by rule",
        "deny",
    )


def test_a_staged_admin_deny_names_its_rule(engine: PolicyEngine, caplog: pytest.LogCaptureFixture) -> None:
    cnp = {
        "metadata": {"name": "no-web", "annotations": {STAGED_ANNOTATION: "true"}},
        "spec": {
            "tier": "Admin",
            "priority": 1,
            "subject": {"namespaces": {}},
            "ingress": [{"name": "deny-80", "action": "Deny", "from": [{"namespaces": {}}]}],
        },
    }
    engine.set_cluster_policy(parse_cluster_network_policy(cnp, C1))
    ((_, fields),) = lines(LocalEnforcement(engine, C1, VerdictLog(EVERY_LINE)), tcp(CLIENT, WEB), caplog)
    assert (fields["tier"], fields["policy"], fields["rule"], fields["reason"]) == (
        "Admin",
        "ClusterNetworkPolicy/no-web",
        0,
        "Deny rule deny-80",
    )


def test_without_the_verdict_log_staged_decisions_are_still_counted(engine: PolicyEngine) -> None:
    engine.set_policy(network_policy(C1, "default-deny", DENY_WEB))
    before = sample("kube_ip_agent_staged_decisions_total", result="would-deny", direction="ingress")
    assert LocalEnforcement(engine, C1, None).decide(tcp(CLIENT, WEB)).allowed  # type: ignore[union-attr]
    assert sample("kube_ip_agent_staged_decisions_total", result="would-deny", direction="ingress") == before + 1


# ---- audit mode -----------------------------------------------------------------------------------


def test_audit_mode_accepts_what_the_policies_deny_and_logs_it(
    engine: PolicyEngine, caplog: pytest.LogCaptureFixture
) -> None:
    engine.set_policy(network_policy(C1, "deny", DENY_WEB, staged=False))
    options = VerdictLogOptions(mode=VerdictLogMode.DENY, interval=60.0, rate=1e9)
    enforcement = LocalEnforcement(engine, C1, VerdictLog(options), audit_mode=True)
    decided = sample("kube_ip_agent_decisions_total", result="deny", direction="ingress")
    audited = sample("kube_ip_agent_audit_accepted_total", direction="ingress")
    got = lines(enforcement, tcp(CLIENT, WEB), caplog)
    local = enforcement.decide(tcp(CLIENT, WEB))
    assert local.allowed and not local.policy_allowed  # type: ignore[union-attr]
    ((message, fields),) = got
    assert message == "Connection denied"
    assert (fields["verdict"], fields["policy"], fields["audit"]) == ("deny", "demo/deny", "accepted")
    assert lines(enforcement, tcp(CLIENT, WEB), caplog) == []  # once per tuple
    assert sample("kube_ip_agent_decisions_total", result="deny", direction="ingress") == decided + 3
    assert sample("kube_ip_agent_audit_accepted_total", direction="ingress") == audited + 3
    allowed = enforcement.decide(tcp(WEB, CLIENT))  # allowed anyway: no audit field
    assert allowed.allowed and allowed.policy_allowed  # type: ignore[union-attr]


def test_the_audit_flag_turns_the_verdict_cache_off_and_fails_open(tmp_path: Any) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\nclusters: [{name: c, cluster: {server: 'https://127.0.0.1:1'}}]\n"
        "contexts: [{name: c, context: {cluster: c, user: u}}]\nusers: [{name: u, user: {token: t}}]\n"
    )
    run = ["run", "--tracker-address", "t:1", "--cluster-id", "c", "--kubeconfig", str(kubeconfig)]
    plain = agent_config(build_parser().parse_args(run))
    audit = agent_config(build_parser().parse_args([*run, "--policy-audit-mode", "--no-fail-open"]))
    assert not plain.audit_mode and plain.dataplane.verdict_cache_size > 0
    assert audit.audit_mode and audit.dataplane.verdict_cache_size == 0
    assert audit.dataplane.fail_open  # connections the agent cannot decide are accepted too


def test_readyz_says_the_node_is_not_enforcing() -> None:
    import urllib.request

    server = start_metrics_server("127.0.0.1:0", ready=lambda: True, ready_note="policy audit mode: not enforcing")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/readyz", timeout=5) as response:
            assert response.status == 200 and response.read() == b"ok: policy audit mode: not enforcing\n"
    finally:
        server.stop()


def test_staged_lines_have_a_rate_budget_of_their_own(caplog: pytest.LogCaptureFixture) -> None:
    now = [1000.0]
    log = VerdictLog(VerdictLogOptions(mode=VerdictLogMode.DENY, interval=60.0, rate=1.0), clock=lambda: now[0])
    rate_limited = sample("kube_ip_agent_verdict_log_suppressed_total", reason="rate")
    with caplog.at_level(logging.INFO, logger="kube_ip_tracker.agent.verdicts"):
        assert log.record(False, "a", dict)  # the deny budget (1 a second) is spent
        assert not log.record(False, "b", dict)
        assert log.record_staged(False, "b", dict)  # the staged budget is its own
        assert not log.record_staged(False, "c", dict)  # and limited the same way
        assert not log.record_staged(False, "b", dict)  # a duplicate of b
        now[0] += 1.0
        assert log.record_staged(True, "c", dict)  # a second later; would-allow
    assert sample("kube_ip_agent_verdict_log_suppressed_total", reason="rate") - rate_limited == 2
    assert [r.getMessage() for r in caplog.records] == [
        "Connection denied",
        "Connection would be denied",
        "Connection would be allowed",
    ]
    assert not VerdictLog(VerdictLogOptions(mode=VerdictLogMode.OFF)).record_staged(False, "a", dict)
