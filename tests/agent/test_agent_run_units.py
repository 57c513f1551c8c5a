"""Pieces of ``kube-ip-agent run`` without root or clusters: the agent store (tracker data in the
evaluator's world), the own-cluster enforcement rule, several tracker addresses, and flag checking."""

from __future__ import annotations

import asyncio
import inspect
import ipaddress
import logging
from pathlib import Path

import pytest

from kube_ip_tracker.agent.cli import main
from kube_ip_tracker.agent.dataplane import PacketInfo, Protocol
from kube_ip_tracker.agent.enforce import LocalEnforcement
from kube_ip_tracker.agent.policy import PolicyEngine, parse_network_policy
from kube_ip_tracker.agent.store import AgentStore
from kube_ip_tracker.client.resolver import AddressRotation, TrackerAddress
from kube_ip_tracker.client.sink import ClusterStatusChange, Delete, Upsert
from kube_ip_tracker.model import ClusterStatusRecord, Kind, NamespaceRecord, PodRecord

C1, C2 = "cluster-1", "cluster-2"


def pod(cluster: str, name: str, ip: str, node: str = "node-1", app: str = "") -> PodRecord:
    return PodRecord(cluster, "demo", name, {"app": app or name}, (), node, (ip,))


def deny_all(cluster: str, types: list[str]) -> object:
    obj = {"metadata": {"namespace": "demo", "name": "deny"}, "spec": {"podSelector": {}, "policyTypes": types}}
    return parse_network_policy(obj, cluster)


def tcp(src: str, dst: str, port: int = 80) -> PacketInfo:
    return PacketInfo(ipaddress.ip_address(src), ipaddress.ip_address(dst), Protocol.TCP, 40000, port, 6)


# --- AgentStore ----------------------------------------------------------------------------------


def test_store_applies_snapshots_and_deltas_and_keeps_local_pod_addresses() -> None:
    engine = PolicyEngine()
    changes: list[int] = []
    local_sets: list[frozenset[str]] = []
    mirror = AgentStore(
        engine, local_cluster=C1, node="node-1", on_change=lambda: changes.append(1), on_local_pods=local_sets.append
    )

    snapshot = mirror.begin_snapshot("e1", reset=False)
    snapshot.add(
        [
            Upsert(NamespaceRecord(C1, "demo", {"team": "a"})),
            Upsert(NamespaceRecord(C2, "demo", {"team": "b"})),
            Upsert(pod(C1, "web", "10.1.0.1")),
            Upsert(pod(C1, "elsewhere", "10.1.0.2", node="node-2")),
            Upsert(pod(C2, "web", "10.2.0.1")),
        ]
    )
    snapshot.commit(5)
    assert engine.world.pod_by_ip("10.2.0.1") is not None and engine.world.pod_by_ip("10.1.0.2") is not None
    assert engine.world.namespace_labels(C2, "demo")["team"] == "b"
    assert local_sets == [frozenset({"10.1.0.1"})]  # only cluster-1 pods on node-1
    assert changes == [1]

    mirror.apply_delta([Upsert(pod(C1, "web", "10.1.0.9")), Delete(Kind.POD, C2, "demo", "web")], 6)
    assert engine.world.pod_by_ip("10.1.0.1") is None and engine.world.pod_by_ip("10.1.0.9") is not None
    assert engine.world.pod_by_ip("10.2.0.1") is None
    assert local_sets[-1] == frozenset({"10.1.0.9"})
    # A change that does not touch local pods does not republish them.
    mirror.apply_delta([Upsert(NamespaceRecord(C2, "demo", {"team": "c"}))], 7)
    assert len(local_sets) == 2 and len(changes) == 3
    # A change no verdict depends on (a pod moved to another node, a namespace relisted as it was)
    # is applied but asks for no revalidation.
    mirror.apply_delta([Upsert(pod(C2, "other", "10.2.0.5"))], 8)
    assert len(changes) == 4
    mirror.apply_delta([Upsert(pod(C2, "other", "10.2.0.5", node="node-9"))], 9)
    assert engine.world.pod(C2, "demo", "other").record.node == "node-9"
    mirror.apply_delta([Upsert(NamespaceRecord(C2, "demo", {"team": "c"}))], 10)  # unchanged: no event at all
    assert len(changes) == 4
    mirror.apply_delta([Upsert(pod(C2, "other", "10.2.0.5", node="node-9", app="web"))], 11)
    assert len(changes) == 5

    # A snapshot without cluster-1's web pod deletes it (the mirror diffs snapshots).
    snapshot = mirror.begin_snapshot("e2", reset=True)
    snapshot.add([Upsert(NamespaceRecord(C1, "demo", {"team": "a"}))])
    snapshot.commit(1)
    assert engine.world.pod_by_ip("10.1.0.9") is None and local_sets[-1] == frozenset()


def test_store_keeps_local_policies_when_the_tracker_removes_the_cluster() -> None:
    engine = PolicyEngine()
    engine.set_policy(deny_all(C1, ["Ingress"]))
    mirror = AgentStore(engine, local_cluster=C1)
    status = ClusterStatusRecord(C1, connected=True, synced=True)
    mirror.apply_delta([ClusterStatusChange(status), Upsert(pod(C1, "web", "10.1.0.1"))], 1)
    mirror.apply_delta([ClusterStatusChange(status, deleted=True)], 2)
    assert engine.world.pod_by_ip("10.1.0.1") is None
    assert [p.name for p in engine.world.policies(C1, "demo")] == ["deny"]


def test_store_reports_a_pod_with_an_invalid_ip_and_carries_on(caplog: pytest.LogCaptureFixture) -> None:
    engine = PolicyEngine()
    mirror = AgentStore(engine, local_cluster=C1)
    with caplog.at_level(logging.ERROR):
        mirror.apply_delta([Upsert(pod(C1, "broken", "not-an-ip")), Upsert(pod(C1, "web", "10.1.0.1"))], 1)
    assert "Pod cluster-1/demo/broken from the tracker has an invalid IP" in caplog.text
    assert engine.world.pod_by_ip("10.1.0.1") is not None


def test_store_is_the_engines_world_and_keeps_one_copy_of_a_pod() -> None:
    engine = PolicyEngine()
    mirror = AgentStore(engine, local_cluster=C1)
    mirror.apply_delta([Upsert(pod(C1, "web", "10.1.0.1")), Upsert(pod(C1, "web-2", "10.1.0.2", app="web"))], 1)
    entry = engine.world.pod_by_ip("10.1.0.1")
    assert entry is not None and entry is mirror.objects.pod(C1, "demo", "web")
    # Replicas (same cluster, namespace, labels, ports) share one identity record.
    other = engine.world.pod_by_ip("10.1.0.2")
    assert other is not None and other.identity is entry.identity
    assert mirror.local_addresses == {"10.1.0.1", "10.1.0.2"}


# --- LocalEnforcement ----------------------------------------------------------------------------


def two_cluster_engine() -> PolicyEngine:
    engine = PolicyEngine()
    for cluster, ip in ((C1, "10.1.0.1"), (C2, "10.2.0.1")):
        engine.set_namespace(NamespaceRecord(cluster, "demo", {}))
        engine.set_pod(pod(cluster, "web", ip))
    return engine


def test_egress_is_enforced_at_the_source_cluster_and_ingress_at_the_destination_cluster() -> None:
    engine = two_cluster_engine()
    engine.set_policy(deny_all(C2, ["Ingress"]))  # cluster-2 pods accept nothing
    c1, c2 = LocalEnforcement(engine, C1), LocalEnforcement(engine, C2)
    to_c2 = tcp("10.1.0.1", "10.2.0.1")
    assert c1.decide(to_c2).allowed  # cluster-1's agent does not enforce cluster-2's ingress
    verdict = c2.decide(to_c2)
    assert not verdict.allowed and verdict.ingress_enforced and not verdict.egress_enforced
    assert c2.decide(tcp("10.2.0.1", "10.1.0.1")).allowed  # egress of cluster-2 is not isolated

    engine.delete_policy(C2, "demo", "deny")
    engine.set_policy(deny_all(C1, ["Egress"]))  # cluster-1 pods may send nothing
    assert not c1.decide(to_c2).allowed and c2.decide(to_c2).allowed
    assert c1.decide(tcp("10.2.0.1", "10.1.0.1")).allowed  # ingress to cluster-1 is not isolated
    # Neither end a pod of this cluster: nothing to enforce, whatever the policies say.
    assert c1.decide(tcp("192.0.2.1", "10.2.0.1")).allowed
    assert not LocalEnforcement(engine, C1).decide(tcp("10.1.0.1", "192.0.2.1")).allowed


async def test_an_unknown_address_of_the_pod_range_waits_for_its_pod() -> None:
    engine = two_cluster_engine()
    engine.set_policy(deny_all(C1, ["Ingress"]))
    pod_range = ipaddress.ip_network("10.1.0.0/24")
    enforcement = LocalEnforcement(engine, C1, is_local=lambda ip: ip in pod_range)
    assert not enforcement.decide(tcp("10.2.0.1", "10.1.0.1")).allowed  # a known pod: decided at once
    assert enforcement.decide(tcp("10.2.0.1", "10.3.0.9")).allowed  # unknown, outside the range: at once
    pending = enforcement.decide(tcp("10.2.0.1", "10.1.0.9"))
    assert inspect.isawaitable(pending)
    task = asyncio.ensure_future(pending)
    enforcement.data_changed()  # some other change: still unknown
    await asyncio.sleep(0.01)
    assert not task.done()
    engine.set_pod(pod(C1, "new", "10.1.0.9"))
    enforcement.data_changed()
    verdict = await asyncio.wait_for(task, 1.0)
    assert not verdict.allowed and verdict.ingress_enforced  # judged as the cluster's pod, not an unknown end


# --- several tracker addresses -------------------------------------------------------------------


async def test_rotation_over_several_addresses_fails_over_across_them() -> None:
    answers = {"a.example": ["10.0.0.1", "10.0.0.2"], "b.example": ["10.0.0.2", "10.0.0.3"]}

    async def dns(host: str, port: int) -> list[str]:
        if host not in answers:
            raise OSError(f"{host}: no such host")
        return answers[host]

    rotation = AddressRotation([TrackerAddress("a.example", 1), TrackerAddress("b.example", 2)], dns)
    seen = []
    for _ in range(4):
        endpoint = await rotation.next_endpoint()
        seen.append(endpoint)
        rotation.mark_failed(endpoint)
    assert seen == ["10.0.0.1:1", "10.0.0.2:1", "10.0.0.2:2", "10.0.0.3:2"]
    assert rotation.round_failed

    answers.pop("a.example")  # one address stops resolving: the other still serves
    assert await rotation.next_endpoint() == "10.0.0.2:2"
    answers.clear()
    rotation.mark_failed("10.0.0.2:2")
    rotation.mark_failed("10.0.0.3:2")
    with pytest.raises(OSError, match="no such host"):
        await rotation.next_endpoint()


# --- flags ---------------------------------------------------------------------------------------


def run_main(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(["run", *argv])
    return code, capsys.readouterr().err


def write_kubeconfig(path: Path) -> Path:
    path.write_text(
        "apiVersion: v1\nclusters: [{name: c, cluster: {server: 'https://127.0.0.1:1'}}]\n"
        "users: [{name: u, user: {token: t}}]\ncontexts: [{name: c, context: {cluster: c, user: u}}]\n"
        "current-context: c\n"
    )
    return path


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--cluster-id", " "], "--cluster-id must not be empty"),
        (["--tracker-address", "tracker"], "missing ':port'"),
        (["--tracker-cert-file", "/x.crt"], "--tracker-cert-file and --tracker-key-file must be given together"),
        (["--tracker-ca-file", "/nonexistent/ca.crt"], "cannot read TLS CA file /nonexistent/ca.crt"),
        (["--kubeconfig", "/nonexistent/kubeconfig"], "kubeconfig /nonexistent/kubeconfig: file does not exist"),
        (["--nfqueue-id", "70000"], "--nfqueue-id must be in 0..65535"),
        (["--mark-slot", "8"], "--mark-slot must be in 0..7"),
        (["--pod-cidr", "10.0.0.0/40"], "pod address or CIDR '10.0.0.0/40' is invalid"),
        (["--name", "Bad_Name"], "dataplane name 'Bad_Name'"),
    ],
)
def test_bad_flags_exit_1_naming_the_problem(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, extra: list[str], message: str
) -> None:
    kubeconfig = write_kubeconfig(tmp_path / "kc")
    base = ["--tracker-address", "127.0.0.1:1", "--cluster-id", "c", "--kubeconfig", str(kubeconfig)]
    code, err = run_main(capsys, *base, *extra)
    assert code == 1
    assert message in err, err
    assert "Traceback" not in err


def test_without_kubeconfig_outside_a_cluster_exits_1(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    code, err = run_main(capsys, "--tracker-address", "127.0.0.1:1", "--cluster-id", "c")
    assert code == 1
    assert "no --kubeconfig given and the in-cluster configuration is unusable" in err, err


# --- readiness endpoint --------------------------------------------------------------------------


def test_readyz_follows_the_ready_callback() -> None:
    import urllib.error
    import urllib.request

    from kube_ip_tracker.metrics_http import start_metrics_server

    ready = [False]
    server = start_metrics_server("127.0.0.1:0", ready=lambda: ready[0])
    try:
        url = f"http://127.0.0.1:{server.port}"
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(url + "/readyz", timeout=5)
        assert caught.value.code == 503
        with urllib.request.urlopen(url + "/healthz", timeout=5) as resp:  # liveness does not depend on it
            assert resp.status == 200
        ready[0] = True
        with urllib.request.urlopen(url + "/readyz", timeout=5) as resp:
            assert resp.status == 200
    finally:
        server.stop()


# --- readiness of the agent ----------------------------------------------------------------------


async def test_agent_is_ready_with_snapshot_and_policies_and_warns_about_an_unknown_cluster_id(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from kube_ip_tracker.agent.cli import build_parser
    from kube_ip_tracker.agent.run import Agent, agent_config

    args = build_parser().parse_args(
        ["run", "--tracker-address", "127.0.0.1:1", "--cluster-id", "typo", "--kubeconfig", str(tmp_path / "kc")]
    )
    write_kubeconfig(tmp_path / "kc")
    agent = Agent(agent_config(args))
    assert agent.config.dataplane.name == "kipa-typo"
    snapshot = agent.store.begin_snapshot("e", reset=False)
    snapshot.add([ClusterStatusChange(ClusterStatusRecord(C1, connected=True, synced=True))])
    snapshot.commit(1)
    assert not agent.is_ready()  # the client has applied no snapshot of its own yet
    agent.client._mark_ready()
    assert not agent.is_ready()  # policies not listed yet
    agent.informer.synced_event.set()
    assert not agent.is_ready()  # cluster-scoped policy kinds not listed (or found missing) yet
    agent.cluster_policies.synced_event.set()
    assert agent.is_ready()
    with caplog.at_level(logging.WARNING):
        await agent._report_ready()
    assert "The tracker knows no cluster 'typo' (it has: cluster-1)" in caplog.text


def test_pod_set_elements_of_nft_json_are_read_back_as_networks() -> None:
    from kube_ip_tracker.agent.dataplane.installer import _set_elements

    elements = [
        "10.0.0.7",
        {"prefix": {"addr": "10.1.0.0", "len": 24}},
        {"range": ["10.2.0.0", "10.2.0.3"]},
        {"elem": {"val": "fd00::1", "comment": "x"}},
    ]
    assert [str(n) for n in _set_elements(elements)] == ["10.0.0.7/32", "10.1.0.0/24", "10.2.0.0/30", "fd00::1/128"]
