"""The local pod watch's merge rules (kube_ip_tracker/agent/local_pods.py) and how enforcement uses them:
the tracker's data supersedes a local pod, a deleted or address-less pod is dropped, an address claimed
locally never shadows the tracker's pod of that address, and an unknown namespace keeps the wait."""

from __future__ import annotations

import asyncio
import inspect
import ipaddress
import logging
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from kube_ip_tracker.agent.cli import build_parser
from kube_ip_tracker.agent.dataplane import PacketInfo, Protocol
from kube_ip_tracker.agent.enforce import LocalEnforcement
from kube_ip_tracker.agent.local_pods import LocalPodInformer, LocalPodStore
from kube_ip_tracker.agent.policy import PolicyEngine, parse_network_policy
from kube_ip_tracker.agent.policy.objects import ip_key
from kube_ip_tracker.agent.run import Agent, agent_config, local_pod_watch_state
from kube_ip_tracker.model import ClusterSpec, NamespaceRecord, PodRecord

from .test_agent_run_units import write_kubeconfig

CLUSTER, NODE = "c1", "node-1"
POD_RANGE = ipaddress.ip_network("10.1.0.0/24")


def api_pod(
    name: str,
    ip: str | None,
    app: str,
    *,
    node: str = NODE,
    created: str = "2026-12-02T10:00:00Z",
    phase: str = "Running",
    namespace: str = "shop",
) -> dict[str, Any]:
    """A pod as the API server sends it (JSON)."""
    status: dict[str, Any] = {"phase": phase}
    if ip is not None:
        status.update(podIP=ip, podIPs=[{"ip": ip}])
    return {
        "metadata": {"namespace": namespace, "name": name, "labels": {"app": app}, "creationTimestamp": created},
        "spec": {"nodeName": node, "containers": [{"name": "main"}]},
        "status": status,
    }


def tracker_pod(name: str, ip: str, app: str, created: int = 0) -> PodRecord:
    return PodRecord(CLUSTER, "shop", name, {"app": app}, (), NODE, (ip,), created)


def db_ingress_from_web() -> object:
    obj = {
        "metadata": {"namespace": "shop", "name": "db"},
        "spec": {
            "podSelector": {"matchLabels": {"app": "db"}},
            "policyTypes": ["Ingress"],
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "web"}}}]}],
        },
    }
    return parse_network_policy(obj, CLUSTER)


def tcp(src: str, dst: str, port: int = 80) -> PacketInfo:
    return PacketInfo(ipaddress.ip_address(src), ipaddress.ip_address(dst), Protocol.TCP, 40000, port, 6)


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


class World:
    """A policy engine holding the tracker's data, a local pod store and the enforcement asking both."""

    def __init__(self) -> None:
        self.engine = PolicyEngine()
        self.changes = 0
        self.store = LocalPodStore(CLUSTER, NODE, self.engine, self._changed)
        self.enforcement = LocalEnforcement(
            self.engine, CLUSTER, is_local=lambda ip: ip in POD_RANGE, local_pods=self.store.provisional
        )

    def _changed(self) -> None:
        self.changes += 1
        self.enforcement.data_changed()  # as the agent's hook does (with the cache flush and revalidation)

    def local(self, ip: str) -> str | None:
        """Name of the local pod the store gives for ``ip``, or None."""
        entry = self.store.provisional(ip_key(ip))
        return None if entry is None else entry.name


@pytest.fixture
def world() -> World:
    w = World()
    w.engine.set_namespace(NamespaceRecord(CLUSTER, "shop", {}))
    w.engine.set_pod(tracker_pod("web", "10.1.0.1", "web"))
    w.engine.set_pod(tracker_pod("other", "10.1.0.2", "other"))
    w.engine.set_policy(db_ingress_from_web())
    return w


def test_a_local_pod_is_used_only_where_the_tracker_knows_neither_its_address_nor_the_pod(world: World) -> None:
    world.store.upsert(api_pod("db", "10.1.0.9", "db"))
    assert world.changes == 1
    assert world.local("10.1.0.9") == "db"
    world.store.upsert(api_pod("db", "10.1.0.9", "db"))  # the same pod again (a status heartbeat): no change
    assert world.changes == 1

    # The tracker's record of the same pod arrives (with other labels): it supersedes the local one.
    world.engine.set_pod(tracker_pod("db", "10.1.0.9", "open"))
    assert world.local("10.1.0.9") is None
    assert world.enforcement.decide(tcp("10.1.0.2", "10.1.0.9")).allowed  # app=open: not isolated
    # ... also when the tracker's record names another address (the local one is not used for either).
    world.engine.set_pod(tracker_pod("db", "10.1.0.10", "db"))
    assert world.local("10.1.0.9") is None
    world.engine.delete_pod(CLUSTER, "shop", "db")
    assert world.local("10.1.0.9") == "db"


def test_an_address_claimed_locally_never_shadows_the_trackers_pod_of_that_address(world: World) -> None:
    """IP reuse: the tracker still has the old pod of the address; the local watch already has the new one."""
    world.engine.set_pod(tracker_pod("old", "10.1.0.9", "open", created=100))
    world.store.upsert(api_pod("new-db", "10.1.0.9", "db", created="2026-12-02T11:00:00Z"))  # newer
    assert world.local("10.1.0.9") is None
    assert world.enforcement.decide(tcp("10.1.0.2", "10.1.0.9")).allowed  # judged as the tracker's "old"
    world.engine.delete_pod(CLUSTER, "shop", "old")  # the tracker catches up with the deletion
    assert world.local("10.1.0.9") == "new-db"
    assert not world.enforcement.decide(tcp("10.1.0.2", "10.1.0.9")).allowed


def test_deleted_terminal_and_address_less_pods_are_dropped(world: World) -> None:
    store = world.store
    store.upsert(api_pod("db", "10.1.0.9", "db"))
    store.delete(api_pod("db", "10.1.0.9", "db"))
    assert world.local("10.1.0.9") is None and len(store) == 0
    store.upsert(api_pod("db", "10.1.0.9", "db"))
    store.upsert(api_pod("db", None, "db"))  # its address removed
    assert world.local("10.1.0.9") is None
    store.upsert(api_pod("db", "10.1.0.9", "db"))
    store.upsert(api_pod("db", "10.1.0.9", "db", phase="Succeeded"))  # terminal: the address may be reused
    assert world.local("10.1.0.9") is None
    store.upsert(api_pod("elsewhere", "10.1.0.9", "db", node="node-2"))  # not this node's
    assert world.local("10.1.0.9") is None and len(store) == 0
    assert world.changes == 6  # each add and each drop; the pod of another node changed nothing


def test_local_pods_sharing_an_address_follow_the_ip_claims_rule(world: World) -> None:
    world.store.upsert(api_pod("old", "10.1.0.9", "open", created="2026-12-02T10:00:00Z"))
    world.store.upsert(api_pod("new", "10.1.0.9", "db", created="2026-12-02T11:00:00Z"))
    assert world.local("10.1.0.9") == "new"
    world.store.delete(api_pod("new", "10.1.0.9", "db"))
    assert world.local("10.1.0.9") == "old"


def test_a_full_list_replaces_the_local_pods(world: World) -> None:
    world.store.upsert(api_pod("gone", "10.1.0.8", "db"))
    world.store.upsert(api_pod("kept", "10.1.0.9", "db"))
    changes = world.changes
    listed = world.store.replacement()
    listed.add(api_pod("kept", "10.1.0.9", "db"))
    listed.add(api_pod("added", "10.1.0.7", "db"))
    assert listed.commit("42") == "2 with an address, 1 gone"
    assert world.changes == changes + 1  # one change for the whole list
    assert (world.local("10.1.0.8"), world.local("10.1.0.9"), world.local("10.1.0.7")) == (None, "kept", "added")


async def test_a_waiting_connection_ends_with_local_data_once_the_namespace_is_known() -> None:
    world = World()
    world.engine.set_pod(tracker_pod("web", "10.1.0.1", "web"))
    world.engine.set_policy(db_ingress_from_web())
    ended_local = sample("kube_ip_agent_unknown_local_pod_waits_total", result="local")
    after_wait = sample("kube_ip_agent_local_pod_watch_decisions_total", when="after-wait")
    pending = world.enforcement.decide(tcp("10.1.0.2", "10.1.0.9"))
    assert inspect.isawaitable(pending)
    task = asyncio.ensure_future(pending)
    world.store.upsert(api_pod("db", "10.1.0.9", "db"))
    world.store.upsert(api_pod("other", "10.1.0.2", "other"))
    await asyncio.sleep(0.01)
    assert not task.done(), "the namespace's labels are the tracker's: without them the wait goes on"
    world.engine.set_namespace(NamespaceRecord(CLUSTER, "shop", {}))
    world.enforcement.data_changed()  # the tracker-data hook
    verdict = await asyncio.wait_for(task, 1.0)
    assert not verdict.allowed and verdict.ingress_enforced  # db's local labels: isolated, other not allowed
    assert sample("kube_ip_agent_unknown_local_pod_waits_total", result="local") == ended_local + 1
    assert sample("kube_ip_agent_local_pod_watch_decisions_total", when="after-wait") == after_wait + 1


def test_a_known_local_pod_decides_at_once_and_the_trackers_later_record_wins(world: World) -> None:
    at_once = sample("kube_ip_agent_local_pod_watch_decisions_total", when="at-once")
    world.store.upsert(api_pod("db", "10.1.0.9", "db"))
    web_to_db = world.enforcement.decide(tcp("10.1.0.1", "10.1.0.9"))
    other_to_db = world.enforcement.decide(tcp("10.1.0.2", "10.1.0.9"))
    assert web_to_db.allowed and not other_to_db.allowed
    assert sample("kube_ip_agent_local_pod_watch_decisions_total", when="at-once") == at_once + 2
    world.engine.set_pod(tracker_pod("db", "10.1.0.9", "open"))  # the tracker says otherwise: it wins
    assert world.enforcement.decide(tcp("10.1.0.2", "10.1.0.9")).allowed
    assert sample("kube_ip_agent_local_pod_watch_decisions_total", when="at-once") == at_once + 2


@pytest.mark.parametrize(
    ("extra", "state"),
    [
        (["--pod-cidr", "10.1.0.0/24", "--node-name", "n1"], "on"),
        (["--pod-cidr", "10.1.0.0/24", "--node-name", "n1", "--no-local-pod-watch"], "off (--no-local-pod-watch)"),
        (["--node-name", "n1"], "off (no --pod-cidr: only the tracker's pods are enforced, none waits)"),
        (["--pod-cidr", "10.1.0.0/24"], "off (no --node-name)"),
    ],
)
def test_the_watch_runs_with_pod_cidr_and_node_name_unless_turned_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, extra: list[str], state: str
) -> None:
    monkeypatch.delenv("NODE_NAME", raising=False)
    argv = ["run", "--tracker-address", "127.0.0.1:1", "--cluster-id", CLUSTER]
    argv += ["--kubeconfig", str(write_kubeconfig(tmp_path / "kc")), *extra]
    config = agent_config(build_parser().parse_args(argv))
    assert local_pod_watch_state(config) == state
    assert config.watches_local_pods is (state == "on")
    agent = Agent(config)
    assert (agent.local_pods is not None) is (state == "on")
    assert (agent.enforcement.local_pods is not None) is (state == "on")


def test_losing_and_regaining_the_watch_is_a_change_and_a_403_is_explained_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    engine = PolicyEngine()
    engine.set_namespace(NamespaceRecord(CLUSTER, "shop", {}))
    changes: list[int] = []
    spec = ClusterSpec(cluster_id=CLUSTER, kubeconfig=str(write_kubeconfig(tmp_path / "kc")))
    informer = LocalPodInformer(spec, NODE, engine, on_change=lambda: changes.append(1))
    informer.store.upsert(api_pod("db", "10.1.0.9", "db"))
    assert informer.provisional(ip_key("10.1.0.9")) is None, "not connected yet: nothing is used"
    informer._answered()  # a list or watch opened
    assert informer.provisional(ip_key("10.1.0.9")) is not None
    assert len(changes) == 2  # the pod, then the connection (waiting connections look again)
    forbidden = "list pods: forbidden (403): pods is forbidden: User cannot list resource pods"
    with caplog.at_level(logging.INFO, logger="kube_ip_tracker.agent.local_pods"):
        informer._failed(forbidden)
        informer._failed(forbidden)
    assert informer.provisional(ip_key("10.1.0.9")) is None
    assert len(changes) == 3  # lost once: one change
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert sum("may not list/watch pods" in m and "--no-local-pod-watch" in m for m in errors) == 1
    assert sum("local pod watch disconnected" in m for m in errors) == 1
