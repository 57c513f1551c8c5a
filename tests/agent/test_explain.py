"""``explain``: the trace the evaluator reports to, the agent's Unix socket (real socket, the real console
script), its bad input, and ``evaluate --explain`` offline."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from kube_ip_tracker.agent.cli import build_parser, main
from kube_ip_tracker.agent.explain.render import render
from kube_ip_tracker.agent.explain.request import ExplainRequest, answer
from kube_ip_tracker.agent.explain.server import ExplainServer
from kube_ip_tracker.agent.explain.trace import Explanation, explain
from kube_ip_tracker.agent.policy import PolicyEngine, parse_network_policy
from kube_ip_tracker.agent.policy.cluster_parse import parse_cluster_network_policy
from kube_ip_tracker.agent.policy.staged import STAGED_ANNOTATION
from kube_ip_tracker.model import NamespaceRecord, PodRecord

AGENT_BIN = Path(sys.executable).with_name("kube-ip-agent")
C1, C2 = "c1", "c2"


@pytest.fixture
def engine() -> PolicyEngine:
    engine = PolicyEngine()
    for cluster, prefix in ((C1, "10.1"), (C2, "10.2")):
        engine.set_namespace(NamespaceRecord(cluster, "demo", {"cluster": cluster}))
        engine.set_pod(PodRecord(cluster, "demo", "web", {"app": "web"}, (), "n", (f"{prefix}.0.1",)))
        engine.set_pod(PodRecord(cluster, "demo", "client", {"app": "client"}, (), "n", (f"{prefix}.0.2",)))

    def np(name: str, spec: dict[str, object]) -> None:
        engine.set_policy(parse_network_policy({"metadata": {"namespace": "demo", "name": name}, "spec": spec}, C2))

    np("deny", {"podSelector": {}, "policyTypes": ["Ingress"]})
    np(
        "web-from-c2",
        {
            "podSelector": {"matchLabels": {"app": "web"}},
            "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"cluster": "c2"}}}], "ports": [{"port": 80}]}],
        },
    )
    np("db", {"podSelector": {"matchLabels": {"app": "db"}}})
    guard = {
        "metadata": {"name": "guard"},
        "spec": {
            "tier": "Admin",
            "priority": 5,
            "subject": {"namespaces": {}},
            "ingress": [
                {
                    "name": "no-ssh",
                    "action": "Deny",
                    "from": [{"namespaces": {}}],
                    "protocols": [{"tcp": {"destinationPort": {"number": 22}}}],
                }
            ],
        },
    }
    engine.set_cluster_policy(parse_cluster_network_policy(guard, C2))
    return engine


def test_the_trace_shows_every_policy_tier_by_tier_with_why(engine: PolicyEngine) -> None:
    verdict, e = explain(engine, engine.endpoint_for_ip("10.1.0.2"), engine.endpoint_for_ip("10.2.0.1"), "TCP", 80, C2)
    assert not verdict.allowed and e.verdict == "deny"  # the evaluator's verdict, as enforced at c2
    assert (e.src.name, e.src.labels, e.src.namespace_labels) == (
        "c1/demo/client",
        {"app": "client"},
        {"cluster": "c1", "kubernetes.io/metadata.name": "demo"},  # the implied name label included
    )
    assert not e.egress.enforced and e.egress.outcome == "not enforced here"
    ingress = e.ingress
    assert ingress.enforced and not ingress.allowed
    assert ingress.outcome == "deny: NetworkPolicy demo/deny, demo/web-from-c2 (isolated, no rule matched)"
    admin, network_policies, baseline = ingress.tiers
    (guard,) = admin.policies
    assert guard.selects and [(r.name, r.checked, r.matched, r.peers, r.ports) for r in guard.rules] == [
        ("no-ssh", True, False, [("namespaces {}", True)], [("TCP/22", False)])
    ]
    by_name = {p.name: p for p in network_policies.policies}
    assert not by_name["demo/db"].selects and "podSelector app=db does not match" in by_name["demo/db"].why
    assert by_name["demo/deny"].selects and by_name["demo/deny"].rules == []
    (rule,) = by_name["demo/web-from-c2"].rules
    assert (rule.checked, rule.matched) == (True, False)
    assert rule.peers == [("namespaceSelector cluster=c2", False)] and rule.ports == [("TCP/80", True)]
    assert not baseline.reached
    text = render(e)
    assert text.startswith("deny: c1/demo/client -> c2/demo/web TCP/80 (as this agent of c2 enforces it)")
    assert "    peer namespaceSelector cluster=c2: no match" in text
    assert Explanation.from_dict(json.loads(json.dumps(e.to_dict()))) == e  # what the socket carries

    _, e = explain(engine, engine.endpoint_for_ip("10.2.0.2"), engine.endpoint_for_ip("10.2.0.1"), "TCP", 22, C2)
    assert e.ingress.outcome == "deny: Admin ClusterNetworkPolicy/guard rule 0 (Deny rule no-ssh)"
    assert not e.ingress.tiers[1].reached  # decided in the Admin tier
    _, e = explain(engine, engine.endpoint_for_ip("10.2.0.2"), engine.endpoint_for_ip("10.2.0.1"), "TCP", 80, C2)
    assert (
        e.verdict == "allow" and e.ingress.outcome == "allow: NetworkPolicy demo/web-from-c2 rule 0 (allowed by rule)"
    )


def agent_cli(*argv: str) -> tuple[int, str, str]:
    done = subprocess.run([str(AGENT_BIN), *argv], capture_output=True, text=True, timeout=60)
    return done.returncode, done.stdout, done.stderr


async def test_the_agent_socket_answers_root_only(engine: PolicyEngine, tmp_path: Path) -> None:
    path = tmp_path / "run" / "kipa-c2.sock"
    server = ExplainServer(path, lambda request: answer(engine, request, C2))
    await server.start()
    try:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        sock = ("--socket", str(path))
        code, out, err = await asyncio.to_thread(
            agent_cli, "explain", *sock, "--from", "c1/demo/client", "--to", "10.2.0.1", "--port", "80/TCP"
        )
        assert code == 1, err  # denied
        assert out.startswith("deny: c1/demo/client -> c2/demo/web TCP/80")
        code, out, _ = await asyncio.to_thread(
            agent_cli, "explain", *sock, "--from", "c2/demo/client", "--to", "c2/demo/web", "--port", "80", "-o", "json"
        )
        assert code == 0 and json.loads(out)["verdict"] == "allow"

        for argv, expected in (
            (
                ["--from", "c2/demo/nobody", "--to", "c2/demo/web", "--port", "80"],
                (2, "--from c2/demo/nobody: no such pod (this agent knows 2 pods of cluster 'c2')"),
            ),
            (
                ["--from", "web", "--to", "c2/demo/web", "--port", "80"],
                (2, "--from 'web': expected cluster/namespace/pod or an IP address"),
            ),
            (
                ["--from", "10.2.0.2", "--to", "c2/demo/web", "--port", "http"],
                (2, "--port 'http': expected PORT[/PROTOCOL], e.g. 80/TCP"),
            ),
            (
                ["--from", "10.2.0.2", "--to", "c2/demo/web", "--port", "80/ICMP"],
                (2, "--port protocol 'ICMP': expected one of TCP, UDP, SCTP"),
            ),
        ):
            out_buf, err_buf = io.StringIO(), io.StringIO()
            code = await asyncio.to_thread(main, ["explain", *sock, *argv], out_buf, err_buf)
            assert (code, err_buf.getvalue()) == (expected[0], f"kube-ip-agent explain: {expected[1]}\n")
    finally:
        await server.stop()
    assert not path.exists()
    code, _, err = await asyncio.to_thread(
        agent_cli, "explain", "--socket", str(path), "--from", "10.2.0.2", "--to", "10.2.0.1", "--port", "80"
    )
    assert code == 3 and err == f"kube-ip-agent explain: cannot reach the agent at {path}: No such file or directory\n"


async def test_a_malformed_request_is_answered_with_an_error(engine: PolicyEngine, tmp_path: Path) -> None:
    path = tmp_path / "a.sock"
    server = ExplainServer(path, lambda request: answer(engine, request, C2))
    await server.start()
    try:
        reader, writer = await asyncio.open_unix_connection(str(path))
        writer.write(b'{"from": 1}\n')
        reply = json.loads(await reader.readline())
        writer.close()
        assert reply == {"error": "--from '1': expected cluster/namespace/pod or an IP address"}
        assert ExplainRequest.from_dict({"from": "10.0.0.1", "to": "10.0.0.2", "port": 80}).protocol == "TCP"
    finally:
        await server.stop()


def test_evaluate_explain_prints_each_probe_trace(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    world = {
        "clusters": {
            "a": {
                "namespaces": [{"name": "x", "labels": {"ns": "x"}}],
                "pods": [
                    {"namespace": "x", "name": "p", "labels": {"app": "p"}, "ips": ["10.0.0.1"]},
                    {"namespace": "x", "name": "q", "labels": {"app": "q"}, "ips": ["10.0.0.2"]},
                ],
                "networkPolicies": [
                    {
                        "apiVersion": "networking.k8s.io/v1",
                        "kind": "NetworkPolicy",
                        "metadata": {"namespace": "x", "name": "q-from-p"},
                        "spec": {
                            "podSelector": {"matchLabels": {"app": "q"}},
                            "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "p"}}}]}],
                        },
                    }
                ],
            }
        },
        "probes": [
            {
                "from": {"cluster": "a", "namespace": "x", "pod": "p"},
                "to": {"cluster": "a", "namespace": "x", "pod": "q"},
                "port": 80,
                "protocol": "TCP",
            },
            {
                "from": {"cluster": "a", "namespace": "x", "pod": "q"},
                "to": {"cluster": "a", "namespace": "x", "pod": "q"},
                "port": 80,
                "protocol": "TCP",
            },
        ],
    }
    path = tmp_path / "w.json"
    path.write_text(json.dumps(world))
    assert main(["evaluate", "--explain", str(path)]) == 0
    out = capsys.readouterr().out
    assert json.loads(out.splitlines()[0])["verdicts"] == ["allow", "deny"]
    assert f"{path}: probes[0]\nallow: a/x/p -> a/x/q TCP/80\n" in out
    assert "ingress of a/x/q: allow: NetworkPolicy x/q-from-p rule 0 (allowed by rule)" in out
    assert "ingress of a/x/q: deny: NetworkPolicy x/q-from-p (isolated, no rule matched)" in out
    assert "peer podSelector app=p (in the policy's namespace): no match" in out


def test_explain_and_evaluate_start_without_the_daemon_code() -> None:
    """``kube-ip-agent explain``/``evaluate`` register only themselves: the daemon's imports are skipped."""
    probe = "import sys; from kube_ip_tracker.agent.cli import build_parser; build_parser(only=('explain',)); "
    probe += "print('kube_ip_tracker.agent.run' in sys.modules, 'kubernetes_asyncio' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.split() == ["False", "False"]
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert set(commands.choices) == {"evaluate", "run", "explain"}  # the full parser, for --help and run


def staged_policy(name: str, spec: dict[str, object], cluster: str = C1) -> object:
    meta = {"namespace": "demo", "name": name, "annotations": {STAGED_ANNOTATION: "true"}}
    return parse_network_policy({"metadata": meta, "spec": spec}, cluster)


def test_the_staged_outcome_is_shown_beside_the_enforced_one(engine: PolicyEngine) -> None:
    web, client = engine.endpoint_for_ip("10.1.0.1"), engine.endpoint_for_ip("10.1.0.2")
    _, before = explain(engine, client, web, "TCP", 80, C1)
    assert before.staged_verdict == "" and "staged" not in render(before)  # no staged policy: nothing said
    engine.set_policy(staged_policy("default-deny", {"podSelector": {}, "policyTypes": ["Ingress"]}))
    verdict, e = explain(engine, client, web, "TCP", 80, C1)
    assert verdict.allowed and e.verdict == "allow" and e.staged_verdict == "deny"
    assert e.ingress.outcome == "not isolated" and not e.ingress.staged_allowed
    assert e.ingress.staged_outcome == "deny: NetworkPolicy demo/default-deny (isolated, no rule matched)"
    (network_policies,) = [t for t in e.ingress.staged_tiers if t.tier == "NetworkPolicy"]
    assert [(p.name, p.selects) for p in network_policies.policies] == [("demo/default-deny (staged)", True)]
    assert e.egress.staged_outcome == "not isolated" and e.egress.staged_tiers == []  # the same: no trace
    text = render(e)
    assert "allow: c1/demo/client -> c1/demo/web TCP/80 (as this agent of c1 enforces it)\n" in text
    assert "with staged policies: would deny (staged policies are not enforced)" in text
    assert "  with staged policies: deny: NetworkPolicy demo/default-deny (isolated, no rule matched)" in text
    assert "      demo/default-deny (staged): selects: podSelector {} selects the pod" in text
    assert "  with staged policies: not isolated (the same)" in text
    assert Explanation.from_dict(json.loads(json.dumps(e.to_dict()))) == e


def test_evaluate_explain_shows_staged_policies_offline(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    deny = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"namespace": "x", "name": "deny", "annotations": {STAGED_ANNOTATION: "true"}},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress"]},
    }
    world = {
        "clusters": {
            "a": {
                "namespaces": [{"name": "x"}],
                "pods": [
                    {"namespace": "x", "name": "p", "labels": {"app": "p"}, "ips": ["10.0.0.1"]},
                    {"namespace": "x", "name": "q", "labels": {"app": "q"}, "ips": ["10.0.0.2"]},
                ],
                "networkPolicies": [deny],
            }
        },
        "probes": [
            {
                "from": {"cluster": "a", "namespace": "x", "pod": "p"},
                "to": {"cluster": "a", "namespace": "x", "pod": "q"},
                "port": 80,
                "protocol": "TCP",
                "expect": "allow",
            }
        ],
    }
    path = tmp_path / "w.json"
    path.write_text(json.dumps(world))
    assert main(["evaluate", "--check", "--explain", str(path)]) == 0  # the staged deny is not enforced
    out = capsys.readouterr().out
    assert "allow: a/x/p -> a/x/q TCP/80\nwith staged policies: would deny" in out
    assert "  with staged policies: deny: NetworkPolicy x/deny (isolated, no rule matched)" in out
