"""The kernel verdict cache on real packets: repeated tuples stay in the kernel, no cached verdict outlives
a change (policies through the engine and ``request_revalidation``, as the policy informer does; pods and
namespaces through the real :class:`AgentStore`, whose ``on_change`` is the agent's hook), the cache keeps
its bound, and no rule survives a shutdown or a restart."""

from __future__ import annotations

import asyncio
import socket
import subprocess

import pytest
from prometheus_client import REGISTRY

from kube_ip_tracker.agent.dataplane import Dataplane, PacketInfo
from kube_ip_tracker.agent.enforce import LocalEnforcement
from kube_ip_tracker.agent.policy.evaluator import PolicyEngine
from kube_ip_tracker.agent.policy.parse import parse_network_policy
from kube_ip_tracker.agent.store import AgentStore
from kube_ip_tracker.client.sink import Delete, Upsert
from kube_ip_tracker.model import Kind, NamespaceRecord, PodRecord
from kube_ip_tracker.testing.netns import Pod, PodNetwork
from kube_ip_tracker.testing.trackers import eventually

from .conftest import DataplaneFactory, rules_present

pytestmark = pytest.mark.root

CLUSTER = "c1"
SHOP = "shop"
DB_PORT = 5432
CACHE = {"verdict_cache_size": 1024, "fail_open": False}


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def policy(name: str, spec_from: list[dict[str, object]], port: int = DB_PORT) -> dict[str, object]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"namespace": SHOP, "name": name},
        "spec": {
            "podSelector": {"matchLabels": {"app": "db"}},
            "policyTypes": ["Ingress"],
            "ingress": [{"from": spec_from, "ports": [{"protocol": "TCP", "port": port}]}],
        },
    }


def from_app(app: str) -> list[dict[str, object]]:
    return [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": app}}}]


class World:
    """Pods web, other (namespace ``front``) and db (``shop``), applied to the engine's world by a real AgentStore."""

    def __init__(self, net: PodNetwork) -> None:
        self.web, self.other, self.db = net.add_pod("web"), net.add_pod("other"), net.add_pod("db")
        self.db.serve_tcp(DB_PORT)
        self.engine = PolicyEngine()
        self.decisions: list[PacketInfo] = []
        self.store = AgentStore(self.engine, local_cluster=CLUSTER)
        self.revision = 0
        self.namespaces = {
            "front": NamespaceRecord(CLUSTER, "front", {"team": "front"}),
            SHOP: NamespaceRecord(CLUSTER, SHOP, {"team": "shop"}),
        }
        self.records: dict[str, PodRecord] = {}
        self.apply([Upsert(ns) for ns in self.namespaces.values()])
        for pod, namespace, app in ((self.web, "front", "web"), (self.other, "front", "other"), (self.db, SHOP, "db")):
            self.upsert(PodRecord(CLUSTER, namespace, pod.name, {"app": app}, (), "node-1", (str(pod.ip),)))
        self.enforcement = LocalEnforcement(self.engine, CLUSTER)

    def decide(self, packet: PacketInfo) -> object:
        self.decisions.append(packet)
        return self.enforcement.decide(packet)

    def attach(self, dataplane: Dataplane) -> None:
        self.store.on_change = dataplane.invalidate_verdicts  # what the agent's hook does first

    def apply(self, changes: list[Upsert | Delete]) -> None:
        """One tracker delta, as the tracker client hands it to the store."""
        self.revision += 1
        self.store.apply_delta(changes, self.revision)

    def upsert(self, record: PodRecord) -> None:
        self.apply([Upsert(record)])
        self.records[record.name] = record

    def relabel_namespace(self, name: str, labels: dict[str, str]) -> None:
        new = NamespaceRecord(CLUSTER, name, labels)
        self.apply([Upsert(new)])
        self.namespaces[name] = new

    def set_policy(self, dp: Dataplane, body: dict[str, object]) -> None:
        self.engine.set_policy(parse_network_policy(body, CLUSTER))
        dp.request_revalidation()  # the policy informer's on_change

    async def connects(self, client: Pod, wait: float = 0.5) -> bool:
        return await asyncio.to_thread(client.tcp_probe, self.db.ip, DB_PORT, wait)


@pytest.fixture
def world(net: PodNetwork) -> World:
    return World(net)


async def started(world: World, make_dataplane: DataplaneFactory, **overrides: object) -> Dataplane:
    dp = make_dataplane(world.decide, **{**CACHE, **overrides})
    world.attach(dp)
    await dp.start()
    return dp


async def cached_allow(world: World, client: Pod) -> None:
    """Two connections of ``client``: the first decided by the agent, the second by the kernel's cache."""
    assert await world.connects(client, 1.0)
    decided = len(world.decisions)
    assert await world.connects(client, 1.0)
    assert len(world.decisions) == decided, "the repeated tuple was queued again"


async def test_repeated_tuples_are_decided_in_the_kernel_and_counted(
    world: World, make_dataplane: DataplaneFactory, queue_id: int
) -> None:
    dp = await started(world, make_dataplane)
    await cached_allow(world, world.web)
    udp_port = 5353
    world.db.serve_udp(udp_port)
    assert await asyncio.to_thread(world.web.udp_probe, world.db.ip, udp_port)
    decided = len(world.decisions)
    assert await asyncio.to_thread(world.web.udp_probe, world.db.ip, udp_port)
    assert len(world.decisions) == decided
    queue = str(queue_id)
    assert metric("kube_ip_agent_dataplane_verdict_cache_entries", queue=queue) == 2
    assert metric("kube_ip_agent_dataplane_verdict_cache_hits_total", queue=queue) == 2
    assert metric("kube_ip_agent_dataplane_verdict_cache_size", queue=queue) == 1024
    flushes = metric("kube_ip_agent_dataplane_verdict_cache_flushes_total", queue=queue, reason="change")
    dp.invalidate_verdicts()
    assert metric("kube_ip_agent_dataplane_verdict_cache_entries", queue=queue) == 0
    assert metric("kube_ip_agent_dataplane_verdict_cache_flushes_total", queue=queue, reason="change") == flushes + 1
    dp.invalidate_verdicts()  # nothing accepted since: no flush
    assert metric("kube_ip_agent_dataplane_verdict_cache_flushes_total", queue=queue, reason="change") == flushes + 1


async def test_a_tightened_policy_applies_to_the_next_connection(
    world: World, make_dataplane: DataplaneFactory
) -> None:
    dp = await started(world, make_dataplane)
    world.set_policy(dp, policy("db", from_app("web")))
    await cached_allow(world, world.web)
    world.set_policy(dp, policy("db", from_app("other")))
    assert not await world.connects(world.web)
    assert await world.connects(world.other, 1.0)


async def test_a_deleted_policy_applies_to_the_next_connection(world: World, make_dataplane: DataplaneFactory) -> None:
    dp = await started(world, make_dataplane)
    world.set_policy(dp, policy("db-web", from_app("web")))
    world.set_policy(dp, policy("db-other", from_app("other")))
    await cached_allow(world, world.web)
    world.engine.delete_policy(CLUSTER, SHOP, "db-web")
    dp.request_revalidation()
    assert not await world.connects(world.web)
    assert await world.connects(world.other, 1.0)


async def test_a_loosened_policy_applies_to_the_next_connection(world: World, make_dataplane: DataplaneFactory) -> None:
    dp = await started(world, make_dataplane)
    world.set_policy(dp, policy("db", from_app("web")))
    await cached_allow(world, world.web)
    assert not await world.connects(world.other)
    world.set_policy(dp, policy("db", [*from_app("web"), *from_app("other")]))
    assert await world.connects(world.other, 1.0)
    assert await world.connects(world.web, 1.0)


async def test_a_relabelled_pod_applies_to_the_next_connection(world: World, make_dataplane: DataplaneFactory) -> None:
    dp = await started(world, make_dataplane)
    world.set_policy(dp, policy("db", from_app("web")))
    await cached_allow(world, world.web)
    web = world.records["web"]
    world.upsert(PodRecord(CLUSTER, "front", "web", {"app": "web-v2"}, (), "node-1", web.ips))
    assert not await world.connects(world.web)


async def test_a_relabelled_namespace_applies_to_the_next_connection(
    world: World, make_dataplane: DataplaneFactory
) -> None:
    dp = await started(world, make_dataplane)
    world.set_policy(dp, policy("db", [{"namespaceSelector": {"matchLabels": {"team": "front"}}}]))
    await cached_allow(world, world.web)
    world.relabel_namespace("front", {"team": "elsewhere"})
    assert not await world.connects(world.web)


async def test_an_ip_reused_by_another_pod_applies_to_the_next_connection(
    world: World, make_dataplane: DataplaneFactory
) -> None:
    dp = await started(world, make_dataplane)
    world.set_policy(dp, policy("db", from_app("web")))
    await cached_allow(world, world.web)
    web = world.records.pop("web")
    world.apply([Delete(Kind.POD, CLUSTER, web.namespace, web.name)])
    world.upsert(PodRecord(CLUSTER, "front", "intruder", {"app": "intruder"}, (), "node-1", web.ips))
    assert not await world.connects(world.web)  # the same namespace and address, now another pod's


async def test_not_ready_verdicts_leave_the_cache_once_ready(world: World, make_dataplane: DataplaneFactory) -> None:
    ready = False
    dp = await started(world, make_dataplane, fail_open=True, is_ready=lambda: ready)
    world.set_policy(dp, policy("db", from_app("other")))
    assert await world.connects(world.web, 1.0)  # provisional (fail-open): cached like any accept
    ready = True
    dp.request_revalidation()  # as the agent does once ready
    assert not await world.connects(world.web)


def nft_set_elements(name: str, set_name: str) -> int:
    out = subprocess.run(["nft", "list", "set", "inet", name, set_name], capture_output=True, text=True, check=True)
    return out.stdout.count(" expires ")


async def test_the_cache_keeps_its_bound_under_a_flood_of_distinct_tuples(
    net: PodNetwork, make_dataplane: DataplaneFactory, dp_name: str, queue_id: int
) -> None:
    a, b = net.add_pod("a"), net.add_pod("b")
    calls: list[PacketInfo] = []

    def allow(packet: PacketInfo) -> bool:
        calls.append(packet)
        return True

    dp = make_dataplane(allow, verdict_cache_size=64)
    await dp.start()
    sock = a.socket(socket.SOCK_DGRAM)
    try:
        for port in range(20000, 20300):  # nothing listens: each datagram is a new tuple, accepted and cached
            sock.sendto(b"x", (str(b.ip), port))
    finally:
        sock.close()
    await eventually(lambda: len(calls) == 300, "every datagram decided", within=10.0)
    assert nft_set_elements(dp_name, "verdicts4") <= 64
    assert metric("kube_ip_agent_dataplane_verdict_cache_entries", queue=str(queue_id)) <= 64
    b.serve_tcp(8080)
    assert await asyncio.to_thread(a.tcp_probe, b.ip, 8080, 1.0)  # past the bound: decided by the agent
    assert dp.running


async def test_no_rule_survives_shutdown_and_a_restart_starts_with_an_empty_cache(
    world: World, make_dataplane: DataplaneFactory, dp_name: str
) -> None:
    first = await started(world, make_dataplane)
    await cached_allow(world, world.web)
    assert nft_set_elements(dp_name, "verdicts4") == 1
    await first.stop(remove_rules=False)  # as a crash leaves them
    assert nft_set_elements(dp_name, "verdicts4") == 1
    assert await world.connects(world.web, 1.0)  # while no agent runs, the kernel keeps the cached verdict
    second = make_dataplane(world.decide, **CACHE)
    world.attach(second)
    second.forget_left_over_verdicts()  # the agent's first step on start
    assert nft_set_elements(dp_name, "verdicts4") == 0
    assert not await world.connects(world.web)  # fail-closed, nobody reads the queue yet: dropped
    await second.start()
    await cached_allow(world, world.web)
    await second.stop()
    assert not rules_present(dp_name)
