"""The verdict log on real packets: a denied connection gives exactly one line naming the deciding policy,
its repeats and a flood are suppressed and counted."""

from __future__ import annotations

import asyncio
import json
import logging
import socket

import pytest
from prometheus_client import REGISTRY

from kube_ip_tracker.agent.enforce import LocalEnforcement
from kube_ip_tracker.agent.policy.evaluator import PolicyEngine
from kube_ip_tracker.agent.policy.parse import parse_network_policy
from kube_ip_tracker.agent.verdict_log import VerdictLog, VerdictLogMode, VerdictLogOptions
from kube_ip_tracker.logs import JsonFormatter
from kube_ip_tracker.model import NamespaceRecord, PodRecord
from kube_ip_tracker.testing.netns import Pod, PodNetwork
from kube_ip_tracker.testing.trackers import eventually

from .conftest import DataplaneFactory

pytestmark = pytest.mark.root

CLUSTER = "c1"
NAMESPACE = "shop"
WEB_PORT = 80


def pod_record(pod: Pod, app: str) -> PodRecord:
    return PodRecord(CLUSTER, NAMESPACE, pod.name, {"app": app}, (), "node-1", (str(pod.ip),))


WEB_INGRESS = {
    "apiVersion": "networking.k8s.io/v1",
    "kind": "NetworkPolicy",
    "metadata": {"namespace": NAMESPACE, "name": "web-from-front"},
    "spec": {
        "podSelector": {"matchLabels": {"app": "web"}},
        "policyTypes": ["Ingress"],
        "ingress": [
            {"from": [{"podSelector": {"matchLabels": {"app": "db"}}}]},
            {"from": [{"podSelector": {"matchLabels": {"app": "front"}}}], "ports": [{"port": WEB_PORT}]},
        ],
    },
}


def suppressed(reason: str) -> float:
    return REGISTRY.get_sample_value("kube_ip_agent_verdict_log_suppressed_total", {"reason": reason}) or 0.0


def verdict_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, object]]:
    """The verdict log lines as JSON objects (rendered by the agent's JSON formatter)."""
    formatter = JsonFormatter()
    return [json.loads(formatter.format(r)) for r in caplog.records if r.name == "kube_ip_tracker.agent.verdicts"]


def only_line(caplog: pytest.LogCaptureFixture) -> dict[str, object]:
    """The one verdict line written (fails showing all of them otherwise)."""
    lines = verdict_lines(caplog)
    assert len(lines) == 1, lines
    return lines[0]


async def test_denied_connection_logs_one_line_and_floods_are_counted(
    net: PodNetwork, make_dataplane: DataplaneFactory, caplog: pytest.LogCaptureFixture
) -> None:
    front, web, client = net.add_pod("front"), net.add_pod("web"), net.add_pod("client")
    web.serve_tcp(WEB_PORT)
    web.serve_udp(WEB_PORT)
    engine = PolicyEngine()
    engine.set_namespace(NamespaceRecord(CLUSTER, NAMESPACE, {}))
    for pod, app in ((front, "front"), (web, "web"), (client, "client")):
        engine.set_pod(pod_record(pod, app))
    engine.set_policy(parse_network_policy(WEB_INGRESS, CLUSTER))
    options = VerdictLogOptions(mode=VerdictLogMode.ALL, interval=3600.0, rate=1000.0)
    enforcement = LocalEnforcement(engine, CLUSTER, VerdictLog(options))
    dp = make_dataplane(enforcement.decide)
    await dp.start()
    caplog.set_level(logging.INFO, logger="kube_ip_tracker.agent.verdicts")

    # A denied TCP connection: its SYN and the retransmissions are queued, one line is written.
    duplicates_before = suppressed("duplicate")
    assert not await asyncio.to_thread(client.tcp_probe, web.ip, WEB_PORT, 2.5)  # >= 1 SYN retransmission
    line = only_line(caplog)
    assert {k: line[k] for k in ("msg", "verdict", "direction", "tier", "policy", "rule", "reason")} == {
        "msg": "Connection denied",
        "verdict": "deny",
        "direction": "ingress",
        "tier": "NetworkPolicy",
        "policy": "shop/web-from-front",
        "rule": "",
        "reason": "isolated, no rule matched",
    }
    assert (line["src"], line["dst"], line["protocol"], line["port"]) == ("c1/shop/client", "c1/shop/web", "TCP", 80)
    assert line["egress"] == "not isolated"
    assert line["ingress"] == "deny: NetworkPolicy shop/web-from-front (isolated, no rule matched)"
    assert suppressed("duplicate") > duplicates_before  # the retransmitted SYN

    # An allowed connection (mode all) names the policy that allowed it.
    caplog.clear()
    assert await asyncio.to_thread(front.tcp_probe, web.ip, WEB_PORT, 2.0)
    line = only_line(caplog)
    assert (line["verdict"], line["direction"], line["policy"], line["rule"], line["reason"]) == (
        "allow",
        "ingress",
        "shop/web-from-front",
        1,
        "allowed by rule",
    )

    # A flood of denied datagrams of one flow: still no new line, every one counted.
    caplog.clear()
    queued_before = REGISTRY.get_sample_value(
        "kube_ip_agent_dataplane_packets_queued_total", {"queue": str(dp.config.nfqueue_id)}
    )
    duplicates_before = suppressed("duplicate")
    flood = 200
    sock = client.udp_socket(web.ip, WEB_PORT)
    try:
        for _ in range(flood):
            sock.send(b"x")
    finally:
        sock.close()

    def flood_counted() -> bool:
        return suppressed("duplicate") - duplicates_before >= flood - 1

    await eventually(flood_counted, f"{flood - 1} duplicates counted", within=20)
    queued = REGISTRY.get_sample_value(
        "kube_ip_agent_dataplane_packets_queued_total", {"queue": str(dp.config.nfqueue_id)}
    )
    assert queued - queued_before >= flood
    line = only_line(caplog)
    assert (line["verdict"], line["protocol"], line["port"]) == ("deny", "UDP", 80)


async def test_rate_limit_over_distinct_tuples(
    net: PodNetwork, make_dataplane: DataplaneFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Distinct tuples are not duplicates; beyond the rate they are dropped and counted as ``rate``."""
    web, client = net.add_pod("web"), net.add_pod("client")
    engine = PolicyEngine()
    engine.set_namespace(NamespaceRecord(CLUSTER, NAMESPACE, {}))
    engine.set_pod(pod_record(web, "web"))
    engine.set_pod(pod_record(client, "client"))
    engine.set_policy(parse_network_policy(WEB_INGRESS, CLUSTER))
    options = VerdictLogOptions(mode=VerdictLogMode.DENY, interval=3600.0, rate=5.0)
    dp = make_dataplane(LocalEnforcement(engine, CLUSTER, VerdictLog(options)).decide)
    await dp.start()
    caplog.set_level(logging.INFO, logger="kube_ip_tracker.agent.verdicts")
    rate_before = suppressed("rate")
    ports = range(20000, 20100)
    sock = client.socket(socket.SOCK_DGRAM)
    try:
        for port in ports:
            sock.sendto(b"x", (str(web.ip), port))
    finally:
        sock.close()

    await eventually(lambda: suppressed("rate") - rate_before + len(verdict_lines(caplog)) >= len(ports), "all seen")
    lines = verdict_lines(caplog)
    assert 5 <= len(lines) < 20  # the burst, plus what the rate refilled meanwhile
    assert suppressed("rate") - rate_before == len(ports) - len(lines)
