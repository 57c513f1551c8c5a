"""The agent store: the tracker client's apply sink is the evaluator's world, each pod held once."""

from __future__ import annotations

import ipaddress

from kube_ip_tracker.agent.policy import PolicyEngine, parse_network_policy
from kube_ip_tracker.agent.store import AgentStore
from kube_ip_tracker.client.sink import Delete, Upsert
from kube_ip_tracker.model import ContainerPort, Kind, NamespaceRecord, PodRecord

HTTP = (ContainerPort("http", 80, "TCP"),)


def pod(name: str, *ips: str, app: str = "web", ts: int = 0, ports: tuple[ContainerPort, ...] = HTTP) -> PodRecord:
    return PodRecord("c1", "demo", name, {"app": app}, ports, "node-1", ips, ts, f"uid-{name}")


def deny_ingress_except_from_web() -> object:
    spec = {"podSelector": {}, "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "web"}}}]}]}
    return parse_network_policy({"metadata": {"namespace": "demo", "name": "p"}, "spec": spec}, "c1")


def test_evaluator_never_sees_a_half_applied_snapshot() -> None:
    engine = PolicyEngine()
    engine.set_policy(deny_ingress_except_from_web())
    store = AgentStore(engine)
    store.apply_delta([Upsert(NamespaceRecord("c1", "demo", {})), Upsert(pod("web", "10.0.0.1"))], 1)
    store.apply_delta([Upsert(pod("db", "10.0.0.2", app="db"))], 2)
    assert engine.decide("10.0.0.1", "10.0.0.2", "TCP", 80).allowed
    snapshot = store.begin_snapshot("e2", reset=True)
    snapshot.add([Upsert(NamespaceRecord("c1", "demo", {})), Upsert(pod("db", "10.0.0.2", app="db"))])
    snapshot.add([Upsert(pod("other", "10.0.0.1", app="other"))])
    # Staged, not visible: 10.0.0.1 is still the web pod, and allowed.
    assert engine.decide("10.0.0.1", "10.0.0.2", "TCP", 80).allowed
    snapshot.commit(1)
    assert not engine.decide("10.0.0.1", "10.0.0.2", "TCP", 80).allowed
    assert engine.world.policy_count == 1  # the snapshot replaced tracker data only


def test_replicas_share_one_identity_and_a_snapshot_reuses_it_with_its_selection() -> None:
    engine = PolicyEngine()
    engine.set_policy(deny_ingress_except_from_web())
    store = AgentStore(engine)
    store.apply_delta([Upsert(pod(f"web-{i}", f"10.0.0.{i}")) for i in range(1, 4)], 1)
    store.apply_delta([Upsert(pod("db", "10.0.1.1", app="db")), Upsert(pod("web-x", "10.0.1.2", ports=()))], 2)
    entries = [engine.world.pod_by_ip(f"10.0.0.{i}") for i in range(1, 4)]
    identity = entries[0].identity  # type: ignore[union-attr]
    assert all(e is not None and e.identity is identity for e in entries)
    assert engine.world.pod_by_ip("10.0.1.1").identity is not identity  # type: ignore[union-attr]
    assert engine.world.pod_by_ip("10.0.1.2").identity is not identity  # other ports  # type: ignore[union-attr]
    assert identity.labels is engine.world.pod_by_ip("10.0.1.2").identity.labels  # type: ignore[union-attr]
    selection = engine.world.selection(entries[0])  # type: ignore[arg-type]
    assert [p.name for p in selection.ingress] == ["p"]
    snapshot = store.begin_snapshot("e2", reset=True)
    snapshot.add([Upsert(pod("web-9", "10.0.0.9"))])
    snapshot.commit(1)
    again = engine.world.pod_by_ip("10.0.0.9")
    assert again is not None and again.identity is identity
    assert engine.world.selection(again) is selection  # cached on the identity, still valid


def test_a_pod_is_an_address_and_a_reference_and_reads_back_as_a_record() -> None:
    store = AgentStore()
    store.apply_delta([Upsert(pod("web", "10.0.0.1")), Upsert(pod("dual", "10.0.0.2", "FD00:0::2"))], 1)
    entry = store.objects.pod("c1", "demo", "web")
    # An address is held as a number (what a parsed packet address gives without any text).
    assert entry is not None and entry.addresses == int(ipaddress.ip_address("10.0.0.1"))
    assert entry.ip_texts == ("10.0.0.1",) and entry.primary_ip == "10.0.0.1"
    dual = store.objects.pod("c1", "demo", "dual")
    assert dual is not None and dual.ip_texts == ("10.0.0.2", "fd00::2")  # canonical text
    assert store.engine.world.pod_by_ip("fd00::2") is dual
    assert store.engine.world.pod_by_ip(ipaddress.ip_address("fd00::2")) is dual
    # An IPv4 address and the IPv6 address of the same number are different keys.
    assert store.engine.world.pod_by_ip("::10.0.0.1") is None
    found = store.pod_by_ip("10.0.0.1")
    assert found is not None
    assert found[0] == PodRecord("c1", "demo", "web", {"app": "web"}, HTTP, "node-1", ("10.0.0.1",))  # no uid


def test_ip_owner_follows_the_shared_rule_in_the_evaluator() -> None:
    engine = PolicyEngine()
    store = AgentStore(engine)
    store.apply_delta([Upsert(pod("old", "10.0.0.1", ts=100)), Upsert(pod("new", "10.0.0.1", ts=200))], 1)
    assert engine.endpoint_for_ip("10.0.0.1").pod.name == "new"  # type: ignore[union-attr]
    store.apply_delta([Delete(Kind.POD, "c1", "demo", "new")], 2)
    assert engine.endpoint_for_ip("10.0.0.1").pod.name == "old"  # type: ignore[union-attr]


def test_events_are_built_only_while_someone_listens() -> None:
    store = AgentStore()
    store.apply_delta([Upsert(pod("web", "10.0.0.1"))], 1)
    batches: list[list[object]] = []
    unsubscribe = store.subscribe(lambda batch: batches.append(list(batch)))
    store.apply_delta([Upsert(pod("web", "10.0.0.1")), Upsert(pod("db", "10.0.0.2", app="db"))], 2)
    assert [type(e).__name__ for e in batches[-1]] == ["PodUpserted"]  # the unchanged web pod is no event
    unsubscribe()
    store.apply_delta([Delete(Kind.POD, "c1", "demo", "db")], 3)
    assert len(batches) == 1 and store.pod_by_ip("10.0.0.2") is None


def test_tracker_nodes_reach_the_evaluator_and_their_changes_ask_for_revalidation() -> None:
    from kube_ip_tracker.model import NodeRecord

    changes: list[int] = []
    store = AgentStore(on_change=lambda: changes.append(1))
    store.apply_delta([Upsert(NodeRecord("c1", "node-1", {"zone": "a"}, ("192.168.0.1",)))], 1)
    nodes = list(store.engine.world.nodes_at(ipaddress.ip_address("192.168.0.1")))
    assert [n.name for n in nodes] == ["node-1"] and changes == [1]
    store.apply_delta([Upsert(NodeRecord("c1", "node-1", {"zone": "a"}, ("192.168.0.1",)))], 2)
    assert changes == [1]  # unchanged
    store.apply_delta([Upsert(NodeRecord("c1", "node-2", {}, ("not-an-ip",)))], 3)
    assert store.node("c1", "node-2") is None  # rejected, logged
    store.apply_delta([Delete(Kind.NODE, "c1", "", "node-1")], 4)
    assert list(store.engine.world.nodes_at(ipaddress.ip_address("192.168.0.1"))) == [] and len(changes) == 2
