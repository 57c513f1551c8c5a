"""The dataplane deciding with the real NetworkPolicy evaluator: policies enforced on pod namespaces."""

from __future__ import annotations

import asyncio

import pytest

from kube_ip_tracker.agent.dataplane import PacketInfo, Protocol
from kube_ip_tracker.agent.policy.evaluator import PolicyEngine, Verdict
from kube_ip_tracker.agent.policy.parse import parse_network_policy
from kube_ip_tracker.model import NamespaceRecord, PodRecord
from kube_ip_tracker.testing.netns import Pod, PodNetwork

from .conftest import DataplaneFactory

pytestmark = pytest.mark.root

CLUSTER = "c1"
NAMESPACE = "shop"
DB_PORT = 5432


def pod_record(pod: Pod, app: str) -> PodRecord:
    return PodRecord(CLUSTER, NAMESPACE, pod.name, {"app": app}, (), "node-1", (str(pod.ip),))


def db_policy(allowed_app: str) -> dict[str, object]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"namespace": NAMESPACE, "name": "db-ingress"},
        "spec": {
            "podSelector": {"matchLabels": {"app": "db"}},
            "policyTypes": ["Ingress"],
            "ingress": [
                {
                    "from": [{"podSelector": {"matchLabels": {"app": allowed_app}}}],
                    "ports": [{"protocol": "TCP", "port": DB_PORT}],
                }
            ],
        },
    }


def engine_decide(engine: PolicyEngine):  # type: ignore[no-untyped-def]
    def decide(packet: PacketInfo) -> Verdict:
        protocol = packet.protocol.value if packet.protocol is not Protocol.OTHER else packet.protocol_number
        return engine.decide(packet.src_ip, packet.dst_ip, protocol, packet.dst_port)

    return decide


async def test_network_policy_is_enforced_and_policy_changes_cut_connections(
    net: PodNetwork, make_dataplane: DataplaneFactory
) -> None:
    web, db, other = net.add_pod("web"), net.add_pod("db"), net.add_pod("other")
    db.serve_tcp(DB_PORT)
    db.serve_tcp(DB_PORT + 1)
    engine = PolicyEngine()
    engine.set_namespace(NamespaceRecord(CLUSTER, NAMESPACE, {}))
    for pod, app in ((web, "web"), (db, "db"), (other, "other")):
        engine.set_pod(pod_record(pod, app))
    engine.set_policy(parse_network_policy(db_policy("web"), CLUSTER))
    dp = make_dataplane(engine_decide(engine))
    await dp.start()

    web_stream = await asyncio.to_thread(web.open_stream, db.ip, DB_PORT)
    assert await asyncio.to_thread(web_stream.exchange, 1.0)
    assert not await asyncio.to_thread(other.tcp_probe, db.ip, DB_PORT, 0.5)  # not selected by the rule
    assert not await asyncio.to_thread(web.tcp_probe, db.ip, DB_PORT + 1, 0.5)  # port not allowed

    engine.set_policy(parse_network_policy(db_policy("other"), CLUSTER))  # the policy now admits "other" only
    result = await dp.revalidate()
    assert result.cleared == 1
    assert not await asyncio.to_thread(web_stream.exchange, 0.5)
    assert await asyncio.to_thread(other.tcp_probe, db.ip, DB_PORT, 1.0)
    assert not await asyncio.to_thread(web.tcp_probe, db.ip, DB_PORT, 0.5)
