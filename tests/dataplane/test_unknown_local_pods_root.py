"""A connection of an address in the node's pod range that no known pod has waits for that pod's data."""

from __future__ import annotations

import asyncio
import ipaddress

import pytest
from prometheus_client import REGISTRY

from kube_ip_tracker.agent.enforce import LocalEnforcement
from kube_ip_tracker.agent.policy.evaluator import PolicyEngine
from kube_ip_tracker.agent.policy.parse import parse_network_policy
from kube_ip_tracker.model import NamespaceRecord, PodRecord
from kube_ip_tracker.testing.netns import Pod, PodNetwork

from .conftest import DataplaneFactory

pytestmark = pytest.mark.root

CLUSTER = "c1"
PORT = 8080


def record(pod: Pod, app: str) -> PodRecord:
    return PodRecord(CLUSTER, "shop", pod.name, {"app": app}, (), "node-1", (str(pod.ip),))


def db_ingress_from(apps: list[str]) -> dict[str, object]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"namespace": "shop", "name": "db"},
        "spec": {
            "podSelector": {"matchLabels": {"app": "db"}},
            "policyTypes": ["Ingress"],
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": a}}} for a in apps]}] if apps else [],
        },
    }


def waits(result: str) -> float:
    return REGISTRY.get_sample_value("kube_ip_agent_unknown_local_pod_waits_total", {"result": result}) or 0.0


@pytest.mark.parametrize("allowed", [False, True])
async def test_a_new_pod_is_judged_once_its_data_arrives(
    net: PodNetwork, make_dataplane: DataplaneFactory, allowed: bool
) -> None:
    web, db = net.add_pod("web"), net.add_pod("db")
    db.serve_tcp(PORT)
    pod_range = ipaddress.ip_network(f"{web.ip}/24", strict=False)
    engine = PolicyEngine()
    engine.set_namespace(NamespaceRecord(CLUSTER, "shop", {}))
    engine.set_pod(record(web, "web"))
    engine.set_policy(parse_network_policy(db_ingress_from(["web"] if allowed else []), CLUSTER))
    dp = make_dataplane(lambda p: enforcement.decide(p), local_pods=(pod_range,), fail_open=True, verdict_timeout=3.0)
    enforcement = LocalEnforcement(engine, CLUSTER, is_local=dp.is_local)
    await dp.start()
    known = waits("known")
    # db's data is not there yet: judged now, db would be an unknown endpoint and its ingress unenforced
    # (allowed); the fail-open default after the timeout would let it through as well.
    probe = asyncio.create_task(asyncio.to_thread(web.tcp_probe, db.ip, PORT, 2.5))
    await asyncio.sleep(0.3)
    assert not probe.done()
    engine.set_pod(record(db, "db"))
    enforcement.data_changed()  # what the agent's tracker-data hook calls
    assert await probe is allowed
    assert waits("known") == known + 1


async def test_a_pod_that_never_arrives_gets_the_default_after_the_verdict_timeout(
    net: PodNetwork, make_dataplane: DataplaneFactory
) -> None:
    web, db = net.add_pod("web"), net.add_pod("db")
    db.serve_tcp(PORT)
    engine = PolicyEngine()
    engine.set_namespace(NamespaceRecord(CLUSTER, "shop", {}))
    engine.set_pod(record(web, "web"))
    pod_range = ipaddress.ip_network(f"{web.ip}/24", strict=False)
    dp = make_dataplane(lambda p: enforcement.decide(p), local_pods=(pod_range,), fail_open=False, verdict_timeout=0.3)
    enforcement = LocalEnforcement(engine, CLUSTER, is_local=dp.is_local)
    await dp.start()
    gave_up = waits("gave-up")
    assert not await asyncio.to_thread(web.tcp_probe, db.ip, PORT, 0.8)  # fail-closed: dropped, not allowed
    assert waits("gave-up") > gave_up
