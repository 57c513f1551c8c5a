"""Authoritative ClusterSet labels (--cluster-labels) with real API servers and real tracker processes.

Cluster-1 has an unlabelled namespace (``plain``), one labelled as cluster-2 (``spoof``) and one
with only the first key, set to cluster-2 (``partial``). Cluster-2 has ``web`` with two servers:
``web1`` admits namespaces labelled cluster-1, ``web2`` those labelled cluster-2. The verdicts are
decided by the agent's evaluator on what the tracker serves, and by the agent's store (which applies
the agent's own ``--cluster-labels``) behind a tracker running ``off``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from kube_ip_tracker.agent.policy import PolicyEngine, parse_network_policy
from kube_ip_tracker.agent.store import AgentStore
from kube_ip_tracker.client.client import TrackerClient
from kube_ip_tracker.cluster_labels import CLUSTER_LABEL, CLUSTER_NAME_LABEL, LabelRule, Mode
from kube_ip_tracker.model import NamespaceRecord, PodRecord
from kube_ip_tracker.testing import objects
from kube_ip_tracker.testing.clusters import ClusterSet, start_clusters
from kube_ip_tracker.testing.trackers import AGENT_OPTIONS, TrackerProcess, eventually

pytestmark = pytest.mark.cluster

C1, C2 = "cluster-1", "cluster-2"
MISMATCHES = "kube_ip_tracker_cluster_label_mismatches_total"
AGENT_MISMATCHES = "kube_ip_agent_cluster_label_mismatches_total"
NAMESPACES = {
    C1: {"plain": {}, "spoof": {CLUSTER_LABEL: C2, CLUSTER_NAME_LABEL: C2}, "partial": {CLUSTER_LABEL: C2}},
    C2: {"web": {}},
}
PODS = [  # cluster, namespace, name, labels, ip
    (C1, "plain", "client", {"app": "client"}, "10.61.1.1"),
    (C1, "spoof", "client", {"app": "client"}, "10.61.1.2"),
    (C2, "web", "web1", {"app": "web1"}, "10.61.2.1"),
    (C2, "web", "web2", {"app": "web2"}, "10.61.2.2"),
]


def allow_from_cluster(app: str, cluster: str) -> dict[str, object]:
    """A policy of cluster-2/web: pods ``app`` admit only namespaces labelled ``cluster``."""
    return {
        "metadata": {"name": f"{app}-from-{cluster}", "namespace": "web"},
        "spec": {
            "podSelector": {"matchLabels": {"app": app}},
            "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {CLUSTER_LABEL: cluster}}}]}],
        },
    }


POLICIES = [allow_from_cluster("web1", C1), allow_from_cluster("web2", C2)]


async def populate(clusters: ClusterSet) -> None:
    for cluster in clusters:
        async with cluster.api_client() as api:
            for name, labels in NAMESPACES[cluster.name].items():
                await objects.create_namespace(api, name, labels)
            for c, namespace, name, labels, ip in PODS:
                if c == cluster.name:
                    await objects.create_pod(api, namespace, name, labels=labels, ips=[ip])


@pytest.fixture(scope="module")
def clusters(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterSet]:
    started = start_clusters(2, tmp_path_factory.mktemp("label-clusters"))
    try:
        asyncio.run(populate(started))
        yield started
    finally:
        started.stop()


Launch = Callable[..., TrackerProcess]


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Launch]:
    """``launch(name, *args)`` starts a tracker with metrics; all are stopped after the test."""
    started: list[TrackerProcess] = []

    def start(name: str, *args: str) -> TrackerProcess:
        proc = TrackerProcess(name, ["--ready-timeout", "20s", *args], tmp_path, metrics=True).start()
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.stop()


def engine_of(records: list[PodRecord | NamespaceRecord]) -> PolicyEngine:
    """The agent's evaluator over what a tracker serves, with the two cluster-2 policies."""
    engine = PolicyEngine()
    for record in records:
        if isinstance(record, NamespaceRecord):
            engine.set_namespace(record)
        else:
            engine.set_pod(record)
    for policy in POLICIES:
        engine.set_policy(parse_network_policy(policy, C2))
    return engine


def allowed(engine: PolicyEngine, namespace: str, server: str) -> bool:
    return engine.decide_pods((C1, namespace, "client"), (C2, "web", server), "TCP", 80).allowed


def without_name_label(labels: Mapping[str, str]) -> dict[str, str]:
    """Labels minus kubernetes.io/metadata.name (1.21+ servers set it; these tests are about ClusterSet labels)."""
    return {k: v for k, v in labels.items() if k != "kubernetes.io/metadata.name"}


async def served_when(tracker: TrackerProcess, ready: Callable[[dict[tuple[str, str], dict[str, str]]], bool]):  # type: ignore[no-untyped-def]
    """The namespace labels the tracker serves, once ``ready(labels)`` holds."""
    seen: dict[tuple[str, str], dict[str, str]] = {}

    async def check() -> bool:
        nonlocal seen
        try:
            seen = {key: without_name_label(labels) for key, labels in (await tracker.namespace_labels()).items()}
        except Exception:  # not serving yet
            return False
        return all((c, n) in seen for c, names in NAMESPACES.items() for n in names) and ready(seen)

    await eventually(check, f"{tracker.name} serves the namespaces of both clusters", [tracker])
    return seen


def mismatch_counts(tracker: TrackerProcess) -> dict[str, float]:
    """``kube_ip_tracker_cluster_label_mismatches_total`` by cluster."""
    return {
        sample.labels["cluster"]: sample.value
        for family in text_string_to_metric_families(tracker.metrics_text())
        for sample in family.samples
        if sample.name == MISMATCHES
    }


def mismatch_lines(tracker: TrackerProcess, namespace: str) -> list[str]:
    text = tracker.log_path.read_text(errors="replace")
    return [line for line in text.splitlines() if f"namespace {namespace} is labelled" in line]


STAMPED = {CLUSTER_LABEL: C1, CLUSTER_NAME_LABEL: C1}


async def test_enforce_stamps_every_namespace_overwrites_spoofed_ids_and_reports_each_once(
    clusters: ClusterSet, launch: Launch
) -> None:
    tracker = launch("enforce", "--kubeconfig", str(clusters.merged_kubeconfig))  # enforce is the default
    labels = await served_when(tracker, lambda seen: seen[(C1, "spoof")] == STAMPED)
    for (cluster, _), served in labels.items():  # kube-system and default too
        assert served[CLUSTER_LABEL] == served[CLUSTER_NAME_LABEL] == cluster
    assert labels[(C1, "plain")] == labels[(C1, "partial")] == STAMPED

    engine = engine_of(await tracker.snapshot())
    assert allowed(engine, "plain", "web1")  # unlabelled in the API, selected as cluster-1
    assert not allowed(engine, "spoof", "web2")  # labelled cluster-2, not taken for cluster-2
    assert allowed(engine, "spoof", "web1")

    await eventually(lambda: mismatch_counts(tracker) == {C1: 2.0}, "two mismatches counted", [tracker])
    (line,) = mismatch_lines(tracker, "spoof")
    assert (
        line.startswith("W")
        and "Cluster cluster-1: namespace spoof is labelled cluster.clusterset.k8s.io='cluster-2', "
        "cluster.clusterset.k8s.io/cluster-name='cluster-2', not its cluster's id; serving 'cluster-1' instead "
        "(tracker --cluster-labels=enforce)"
        in line
    )
    assert len(mismatch_lines(tracker, "partial")) == 1

    async with clusters[0].api_client() as api:
        await objects.label_namespace(api, "spoof", {"touched": "1"})  # same spoofed value: not reported again
        await served_when(tracker, lambda seen: seen[(C1, "spoof")] == {**STAMPED, "touched": "1"})
        assert len(mismatch_lines(tracker, "spoof")) == 1 and mismatch_counts(tracker) == {C1: 2.0}
        await objects.label_namespace(api, "spoof", {CLUSTER_LABEL: "cluster-3"})  # another value: reported
        await eventually(lambda: len(mismatch_lines(tracker, "spoof")) == 2, "the new value is logged", [tracker])
        assert "cluster.clusterset.k8s.io='cluster-3'" in mismatch_lines(tracker, "spoof")[1]
        assert mismatch_counts(tracker) == {C1: 3.0}
        await objects.label_namespace(api, "spoof", {CLUSTER_LABEL: C2, "touched": None})  # as it was
    await eventually(lambda: len(mismatch_lines(tracker, "spoof")) == 3, "the restored value is logged", [tracker])


async def test_fill_sets_missing_keys_and_keeps_other_values(clusters: ClusterSet, launch: Launch) -> None:
    tracker = launch("fill", "--kubeconfig", str(clusters.merged_kubeconfig), "--cluster-labels", "fill")
    labels = await served_when(tracker, lambda seen: CLUSTER_LABEL in seen[(C1, "plain")])
    assert labels[(C1, "plain")] == STAMPED
    assert labels[(C1, "spoof")] == NAMESPACES[C1]["spoof"]
    assert labels[(C1, "partial")] == {CLUSTER_LABEL: C2, CLUSTER_NAME_LABEL: C1}
    assert labels[(C2, "web")] == {CLUSTER_LABEL: C2, CLUSTER_NAME_LABEL: C2}

    engine = engine_of(await tracker.snapshot())
    assert allowed(engine, "plain", "web1")
    assert allowed(engine, "spoof", "web2") and not allowed(engine, "spoof", "web1")  # the label set by hand wins

    await eventually(lambda: mismatch_counts(tracker) == {C1: 2.0}, "kept mismatches counted", [tracker])
    (line,) = mismatch_lines(tracker, "spoof")
    assert "kept (fill sets missing keys only) (tracker --cluster-labels=fill)" in line


async def test_off_passes_labels_through(clusters: ClusterSet, launch: Launch) -> None:
    tracker = launch("off", "--kubeconfig", str(clusters.merged_kubeconfig), "--cluster-labels", "off")
    labels = await served_when(tracker, lambda seen: True)
    for cluster, names in NAMESPACES.items():
        for name, want in names.items():
            assert labels[(cluster, name)] == want
    assert labels[(C1, "kube-system")] == {}

    engine = engine_of(await tracker.snapshot())
    assert not allowed(engine, "plain", "web1")  # a forgotten label: out of every cross-cluster rule
    assert allowed(engine, "spoof", "web2")  # the spoofed label is believed
    assert mismatch_counts(tracker) == {} and not mismatch_lines(tracker, "spoof")


async def test_a_spoke_serves_its_hubs_labels_and_stamps_the_clusters_it_watches(
    clusters: ClusterSet, launch: Launch
) -> None:
    hub = launch("hub", "--kubeconfig", str(clusters.merged_kubeconfig), "--cluster-labels", "fill")
    spoke = launch("spoke", "--kubeconfig", str(clusters[1].kubeconfig), "--upstream-tracker", hub.address)
    from_hub = await served_when(hub, lambda seen: CLUSTER_LABEL in seen[(C1, "plain")])
    # The spoke (enforce) keeps what its hub (fill) stamped on cluster-1 and stamps cluster-2 itself.
    from_spoke = await served_when(spoke, lambda seen: CLUSTER_LABEL in seen[(C1, "plain")])
    assert from_spoke == from_hub  # every tracker on the path serves the same labels
    assert from_spoke[(C1, "spoof")] == NAMESPACES[C1]["spoof"]  # the hub's fill kept it; the spoke does not touch it
    assert from_spoke[(C2, "web")] == {CLUSTER_LABEL: C2, CLUSTER_NAME_LABEL: C2}
    assert not mismatch_lines(spoke, "spoof") and mismatch_counts(spoke) == {}
    assert len(mismatch_lines(hub, "spoof")) == 1

    async with clusters[1].api_client() as api:  # a namespace created now in the spoke's own cluster
        await objects.create_namespace(api, "late", {CLUSTER_LABEL: C1})
    stamped = {CLUSTER_LABEL: C2, CLUSTER_NAME_LABEL: C2}
    await served_when(spoke, lambda seen: seen.get((C2, "late")) == stamped)  # the spoke stamps its own cluster
    assert mismatch_counts(spoke) == {C2: 1.0} and len(mismatch_lines(spoke, "late")) == 1
    async with clusters[1].api_client() as api:  # leave cluster-2 without mismatches
        await objects.label_namespace(api, "late", {CLUSTER_LABEL: None})


@pytest.mark.parametrize("agent_mode", [Mode.ENFORCE, Mode.OFF])
async def test_the_agent_stamps_what_a_tracker_running_off_serves(
    clusters: ClusterSet, launch: Launch, agent_mode: Mode, caplog: pytest.LogCaptureFixture
) -> None:
    tracker = launch(
        f"off-{agent_mode.value}", "--kubeconfig", str(clusters.merged_kubeconfig), "--cluster-labels", "off"
    )
    engine = engine_of([])  # the policies only; the store fills in pods and namespaces
    store = AgentStore(engine, local_cluster=C2, cluster_labels=LabelRule(agent_mode))  # as kube-ip-agent run holds it
    client = TrackerClient(tracker.address, store, AGENT_OPTIONS)
    before = REGISTRY.get_sample_value(AGENT_MISMATCHES, {"cluster": C1}) or 0.0
    caplog.set_level(logging.WARNING, "kube_ip_tracker.cluster_labels")
    client.start()
    try:
        want = {(c, n) for c, names in NAMESPACES.items() for n in names} | {(c, name) for c, _, name, *_ in PODS}

        def complete() -> bool:
            have = {(n.cluster, n.name) for n in store.namespaces()} | {(p.cluster, p.name) for p in store.pods()}
            return want <= have

        await eventually(complete, "the agent store holds both clusters", [tracker])
    finally:
        await client.stop()
    spoofed = store.namespace(C1, "spoof")
    assert spoofed is not None
    lines = [r.getMessage() for r in caplog.records if "namespace spoof is labelled" in r.getMessage()]
    counted = (REGISTRY.get_sample_value(AGENT_MISMATCHES, {"cluster": C1}) or 0.0) - before
    if agent_mode is Mode.ENFORCE:
        assert without_name_label(spoofed.labels) == STAMPED
        assert allowed(engine, "plain", "web1") and not allowed(engine, "spoof", "web2")
        assert len(lines) == 1 and "(agent --cluster-labels=enforce)" in lines[0] and counted == 2.0
    else:  # the agent trusts the tracker: a tracker running off leaves the spoof in place
        assert without_name_label(spoofed.labels) == NAMESPACES[C1]["spoof"]
        assert not allowed(engine, "plain", "web1") and allowed(engine, "spoof", "web2")
        assert not lines and counted == 0.0
