"""Verdict log: de-duplication, rate limit and bounded memory; what a line says; log formats; flags;
decision metrics by tier and per policy."""

from __future__ import annotations

import ipaddress
import json
import logging
import sys

import pytest
from prometheus_client import REGISTRY

from kube_ip_tracker.agent.cli import build_parser
from kube_ip_tracker.agent.dataplane import PacketInfo, Protocol
from kube_ip_tracker.agent.enforce import LocalEnforcement
from kube_ip_tracker.agent.policy import PolicyEngine, parse_network_policy
from kube_ip_tracker.agent.policy.cluster_parse import parse_cluster_network_policy
from kube_ip_tracker.agent.verdict_log import Limiter, VerdictLog, VerdictLogMode, VerdictLogOptions
from kube_ip_tracker.cli import parse_args as tracker_args
from kube_ip_tracker.logs import JsonFormatter, KlogFormatter
from kube_ip_tracker.model import NamespaceRecord, PodRecord

C1, C2 = "cluster-1", "cluster-2"


class Clock:
    """Time the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


# --- limiter ---------------------------------------------------------------------------------------


def test_a_tuple_is_admitted_once_per_interval_and_its_repeats_are_reported() -> None:
    clock = Clock()
    limiter = Limiter(interval=10.0, rate=100.0, max_tuples=100, clock=clock)
    before = sample("kube_ip_agent_verdict_log_suppressed_total", reason="duplicate")
    assert limiter.admit("a") == 0
    assert [limiter.admit("a") for _ in range(5)] == [None] * 5
    assert limiter.admit("b") == 0  # another tuple is not a duplicate
    clock.now += 10.0
    assert limiter.admit("a") == 5  # the repeats since the last line
    assert limiter.admit("a") is None
    assert sample("kube_ip_agent_verdict_log_suppressed_total", reason="duplicate") - before == 6


def test_the_rate_limit_spans_tuples_and_refills() -> None:
    clock = Clock()
    limiter = Limiter(interval=60.0, rate=2.0, max_tuples=100, clock=clock)
    before = sample("kube_ip_agent_verdict_log_suppressed_total", reason="rate")
    assert [limiter.admit(i) for i in range(4)] == [0, 0, None, None]  # burst of 2
    clock.now += 0.5  # one token back
    assert [limiter.admit(i) for i in range(10, 12)] == [0, None]
    assert sample("kube_ip_agent_verdict_log_suppressed_total", reason="rate") - before == 3
    assert limiter.admit(2) is None  # rate-limited tuples were not remembered as logged
    clock.now += 1.0
    assert limiter.admit(2) == 0


def test_memory_is_bounded_oldest_tuples_forgotten_first() -> None:
    clock = Clock()
    limiter = Limiter(interval=60.0, rate=1e9, max_tuples=3, clock=clock)
    for key in "abcd":
        assert limiter.admit(key) == 0
    assert len(limiter) == 3
    assert limiter.admit("a") == 0  # forgotten: logged again
    assert limiter.admit("d") is None  # still remembered


# --- log formats -----------------------------------------------------------------------------------


def record(fields: dict[str, object] | None = None) -> logging.LogRecord:
    rec = logging.LogRecord(
        "kube_ip_tracker.agent.verdicts", logging.INFO, "/x/verdict_log.py", 42, "Connection denied", (), None
    )
    if fields is not None:
        rec.fields = fields
    return rec


def test_text_format_quotes_the_message_and_appends_fields_like_klog() -> None:
    line = KlogFormatter().format(record({"verdict": "deny", "policy": 'ns/a "b"', "port": 80, "rule": ""}))
    assert line.startswith("I") and ' verdict_log.py:42] agent.verdicts: "Connection denied" ' in line
    assert line.endswith('verdict="deny" policy="ns/a \\"b\\"" port=80 rule=""')
    assert KlogFormatter().format(record()).endswith("] agent.verdicts: Connection denied")  # unstructured as before


def test_json_format_is_one_object_per_line() -> None:
    line = JsonFormatter().format(record({"verdict": "deny", "port": 80, "msg": "not overwritten"}))
    assert "\n" not in line
    obj = json.loads(line)
    assert obj["msg"] == "Connection denied" and obj["verdict"] == "deny" and obj["port"] == 80
    assert obj["caller"] == "verdict_log.py:42" and obj["logger"] == "agent.verdicts" and obj["level"] == "info"
    try:
        raise ValueError("boom")
    except ValueError:
        rec = logging.LogRecord("x", logging.ERROR, "/x/y.py", 1, "failed", (), sys.exc_info())
    assert "ValueError: boom" in json.loads(JsonFormatter().format(rec))["err"]


def test_logging_format_flag_on_both_programs(capsys: pytest.CaptureFixture[str]) -> None:
    assert tracker_args(["--logging-format", "json"]).logging_format == "json"
    assert tracker_args([]).logging_format == "text"
    run = ["run", "--tracker-address", "t:1", "--cluster-id", "c"]
    args = build_parser().parse_args([*run, "--logging-format", "json", "--log-verdicts", "all"])
    assert args.logging_format == "json" and args.log_verdicts is VerdictLogMode.ALL
    assert build_parser().parse_args(run).log_verdicts is VerdictLogMode.DENY
    for bad, message in (
        (["--logging-format", "yaml"], "invalid logging format 'yaml': choose from text, json"),
        (["--log-verdicts", "some"], "invalid verdict log mode 'some': choose from off, deny, all"),
        (["--log-verdicts-rate", "0"], "invalid rate '0': must be positive"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            build_parser().parse_args([*run, *bad])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err


# --- what a line says ------------------------------------------------------------------------------


def pod(cluster: str, name: str, ip: str, app: str) -> PodRecord:
    return PodRecord(cluster, "demo", name, {"app": app}, (), "node-1", (ip,))


def policy(cluster: str, name: str, obj_spec: dict[str, object]) -> object:
    return parse_network_policy({"metadata": {"namespace": "demo", "name": name}, "spec": obj_spec}, cluster)


def tcp(src: str, dst: str, port: int = 80) -> PacketInfo:
    return PacketInfo(ipaddress.ip_address(src), ipaddress.ip_address(dst), Protocol.TCP, 40000, port, 6)


@pytest.fixture
def engine() -> PolicyEngine:
    engine = PolicyEngine()
    for cluster, prefix in ((C1, "10.1"), (C2, "10.2")):
        engine.set_namespace(NamespaceRecord(cluster, "demo", {}))
        engine.set_pod(pod(cluster, "web", f"{prefix}.0.1", "web"))
        engine.set_pod(pod(cluster, "client", f"{prefix}.0.2", "client"))
    isolate_web = {"podSelector": {"matchLabels": {"app": "web"}}, "policyTypes": ["Ingress"]}
    engine.set_policy(policy(C2, "isolate-web", isolate_web))
    allow = {
        "podSelector": {"matchLabels": {"app": "web"}},
        "ingress": [{"ports": [{"port": 443}]}, {"from": [{"namespaceSelector": {}}], "ports": [{"port": 80}]}],
    }
    engine.set_policy(policy(C1, "web-80", allow))
    return engine


def logged(enforcement: LocalEnforcement, packet: PacketInfo, caplog: pytest.LogCaptureFixture) -> dict[str, object]:
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="kube_ip_tracker.agent.verdicts"):
        enforcement.decide(packet)
    (rec,) = [r for r in caplog.records if r.name == "kube_ip_tracker.agent.verdicts"]
    return dict(rec.fields)  # type: ignore[attr-defined]


def test_lines_name_the_deciding_direction_policy_and_ends(
    engine: PolicyEngine, caplog: pytest.LogCaptureFixture
) -> None:
    options = VerdictLogOptions(mode=VerdictLogMode.ALL, interval=0.0, rate=1e9)
    c1, c2 = (LocalEnforcement(engine, c, VerdictLog(options)) for c in (C1, C2))

    line = logged(c2, tcp("10.1.0.2", "10.2.0.1"), caplog)  # cluster-1 client -> cluster-2 web
    assert line == {
        "verdict": "deny",
        "direction": "ingress",
        "tier": "NetworkPolicy",
        "policy": "demo/isolate-web",
        "rule": "",
        "reason": "isolated, no rule matched",
        "src": "cluster-1/demo/client",
        "dst": "cluster-2/demo/web",
        "protocol": "TCP",
        "port": 80,
        "egress": "not enforced here",
        "ingress": "deny: NetworkPolicy demo/isolate-web (isolated, no rule matched)",
    }
    line = logged(c1, tcp("10.1.0.2", "10.2.0.1"), caplog)  # the source's agent: egress not isolated
    assert (line["verdict"], line["direction"], line["tier"], line["reason"]) == (
        "allow",
        "none",
        "none",
        "not isolated",
    )
    assert line["ingress"] == "not enforced here"
    line = logged(c1, tcp("10.1.0.2", "10.1.0.1"), caplog)
    assert (line["verdict"], line["direction"], line["policy"], line["rule"], line["reason"]) == (
        "allow",
        "ingress",
        "demo/web-80",
        1,
        "allowed by rule",
    )
    assert line["ingress"] == "allow: NetworkPolicy demo/web-80 rule 1 (allowed by rule)"
    line = logged(c1, tcp("192.0.2.9", "10.1.0.1", 22), caplog)  # an address outside the ClusterSet
    assert (line["src"], line["verdict"], line["policy"], line["port"]) == ("192.0.2.9", "deny", "demo/web-80", 22)


def test_deny_mode_logs_only_denials_and_off_builds_nothing(
    engine: PolicyEngine, caplog: pytest.LogCaptureFixture
) -> None:
    deny_only = LocalEnforcement(engine, C2, VerdictLog(VerdictLogOptions(VerdictLogMode.DENY)))
    with caplog.at_level(logging.INFO, logger="kube_ip_tracker.agent.verdicts"):
        assert deny_only.decide(tcp("10.2.0.1", "10.1.0.1")).allowed
        assert not caplog.records
        assert not deny_only.decide(tcp("10.2.0.2", "10.2.0.1")).allowed
        assert len(caplog.records) == 1
    assert not VerdictLog(VerdictLogOptions(VerdictLogMode.OFF)).wants(False)


def test_decisions_are_counted_by_tier_and_optionally_per_policy(engine: PolicyEngine) -> None:
    def tier(direction: str, result: str, tier: str) -> float:
        return sample("kube_ip_agent_policy_decisions_total", direction=direction, result=result, tier=tier)

    def per_policy(policy: str, result: str) -> float:
        labels = {"direction": "ingress", "result": result, "tier": "NetworkPolicy", "policy": policy}
        return sample("kube_ip_agent_policy_verdicts_total", **labels)

    before = (
        tier("ingress", "deny", "NetworkPolicy"),
        tier("egress", "allow", "none"),
        per_policy("demo/isolate-web", "deny"),
        per_policy("(other)", "allow"),
    )
    enforcement = LocalEnforcement(engine, C2, per_policy_limit=1)
    enforcement.decide(tcp("10.2.0.2", "10.2.0.1"))  # denied by cluster-2's isolation, egress not isolated
    engine.set_policy(policy(C2, "web-80", {"podSelector": {}, "ingress": [{"ports": [{"port": 80}]}]}))
    enforcement.decide(tcp("10.2.0.2", "10.2.0.1"))  # allowed by a second policy: beyond the limit
    after = (
        tier("ingress", "deny", "NetworkPolicy"),
        tier("egress", "allow", "none"),
        per_policy("demo/isolate-web", "deny"),
        per_policy("(other)", "allow"),
    )
    assert [a - b for a, b in zip(after, before, strict=True)] == [1, 2, 1, 1]
    assert LocalEnforcement(engine, C2).per_policy_limit == 0  # opt-in


def test_an_admin_tier_rule_is_named_by_policy_name_and_rule_index(
    engine: PolicyEngine, caplog: pytest.LogCaptureFixture
) -> None:
    guard = {
        "metadata": {"name": "guard"},
        "spec": {
            "tier": "Admin",
            "priority": 10,
            "subject": {"namespaces": {}},
            "ingress": [
                {
                    "name": "dns",
                    "action": "Accept",
                    "from": [{"namespaces": {}}],
                    "protocols": [{"udp": {"destinationPort": {"number": 53}}}],
                },
                {
                    "name": "no-ssh",
                    "action": "Deny",
                    "from": [{"namespaces": {}}],
                    "protocols": [{"tcp": {"destinationPort": {"number": 22}}}],
                },
            ],
        },
    }
    engine.set_cluster_policy(parse_cluster_network_policy(guard, C1))
    enforcement = LocalEnforcement(engine, C1, VerdictLog(VerdictLogOptions(VerdictLogMode.ALL, 0.0, 1e9)))
    line = logged(enforcement, tcp("10.1.0.2", "10.1.0.1", 22), caplog)
    assert (line["verdict"], line["direction"], line["tier"], line["policy"], line["rule"], line["reason"]) == (
        "deny",
        "ingress",
        "Admin",
        "ClusterNetworkPolicy/guard",
        1,
        "Deny rule no-ssh",
    )
    before = sample("kube_ip_agent_policy_decisions_total", direction="ingress", result="deny", tier="Admin")
    enforcement.decide(tcp("10.1.0.2", "10.1.0.1", 22))
    assert (
        sample("kube_ip_agent_policy_decisions_total", direction="ingress", result="deny", tier="Admin") == before + 1
    )
