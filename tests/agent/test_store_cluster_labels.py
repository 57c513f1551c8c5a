"""The agent store stamps ClusterSet labels on every namespace it receives (--cluster-labels)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from kube_ip_tracker.agent.cli import build_parser
from kube_ip_tracker.agent.run import Agent, agent_config
from kube_ip_tracker.agent.store import LABEL_MISMATCHES, AgentStore
from kube_ip_tracker.client.sink import ClusterStatusChange, Delete, Upsert
from kube_ip_tracker.cluster_labels import CLUSTER_LABEL, CLUSTER_NAME_LABEL, DEFAULT_KEYS, LabelRule, Mode
from kube_ip_tracker.model import ClusterStatusRecord, Kind, NamespaceRecord

from .test_agent_run_units import write_kubeconfig

STAMPED = {CLUSTER_LABEL: "c1", CLUSTER_NAME_LABEL: "c1"}


def labels(store: AgentStore, name: str) -> dict[str, str] | None:
    record = store.namespace("c1", name)
    return None if record is None else dict(record.labels)


def count(cluster: str) -> float:
    return LABEL_MISMATCHES.labels(cluster)._value.get()  # type: ignore[attr-defined]


def test_snapshot_and_delta_namespaces_are_stamped_and_mismatches_reported_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = AgentStore(cluster_labels=LabelRule())  # the agent's default: enforce
    before = count("c1")
    snapshot = store.begin_snapshot("e", reset=False)
    snapshot.add(
        [Upsert(NamespaceRecord("c1", "plain", {})), Upsert(NamespaceRecord("c1", "spoof", {CLUSTER_LABEL: "c2"}))]
    )
    with caplog.at_level(logging.WARNING, "kube_ip_tracker.cluster_labels"):
        snapshot.commit(1)
        assert labels(store, "plain") == labels(store, "spoof") == STAMPED
        store.apply_delta([Upsert(NamespaceRecord("c1", "spoof", {CLUSTER_LABEL: "c2", "x": "1"}))], 2)
        assert labels(store, "spoof") == {**STAMPED, "x": "1"}
    assert count("c1") == before + 1
    (line,) = [r.getMessage() for r in caplog.records]
    assert (
        "namespace spoof is labelled cluster.clusterset.k8s.io='c2'" in line
        and "(agent --cluster-labels=enforce)" in line
    )
    store.apply_delta([Delete(Kind.NAMESPACE, "c1", "", "spoof")], 3)
    store.apply_delta([Upsert(NamespaceRecord("c1", "spoof", {CLUSTER_LABEL: "c2"}))], 4)  # a new namespace
    assert count("c1") == before + 2


def test_a_snapshot_forgets_reported_namespaces_it_lacks_and_a_removed_cluster_its_own() -> None:
    store = AgentStore(cluster_labels=LabelRule(Mode.FILL))
    store.apply_delta([Upsert(NamespaceRecord("c1", "a", {CLUSTER_LABEL: "c2"}))], 1)
    assert labels(store, "a") == {CLUSTER_LABEL: "c2", CLUSTER_NAME_LABEL: "c1"}  # fill keeps, fills the other
    store.apply_delta([Upsert(NamespaceRecord("c9", "b", {CLUSTER_LABEL: "c2"}))], 2)
    assert store.stamper.mismatched() == {("c1", "a"), ("c9", "b")}
    snapshot = store.begin_snapshot("e2", reset=True)
    snapshot.add([Upsert(NamespaceRecord("c9", "b", {CLUSTER_LABEL: "c2"}))])
    snapshot.commit(1)
    assert store.stamper.mismatched() == {("c9", "b")}
    store.apply_delta([ClusterStatusChange(ClusterStatusRecord("c9"), deleted=True)], 2)
    assert store.stamper.mismatched() == set()


def test_off_takes_the_trackers_labels_as_they_come() -> None:
    store = AgentStore(cluster_labels=LabelRule(Mode.OFF))
    store.apply_delta([Upsert(NamespaceRecord("c1", "spoof", {CLUSTER_LABEL: "c2"}))], 1)
    assert labels(store, "spoof") == {CLUSTER_LABEL: "c2"}


def _run_args(*extra: str) -> object:
    return build_parser().parse_args(["run", "--tracker-address", "127.0.0.1:1", "--cluster-id", "c1", *extra])


def test_run_flags_reach_the_agents_store(tmp_path: Path) -> None:
    args = _run_args("--kubeconfig", str(write_kubeconfig(tmp_path / "kc")))
    assert (args.cluster_labels, args.cluster_label_keys) == (Mode.ENFORCE, DEFAULT_KEYS)  # type: ignore[attr-defined]
    assert Agent(agent_config(args)).store.stamper.rule == LabelRule(Mode.ENFORCE, DEFAULT_KEYS)  # type: ignore[arg-type]
    args = _run_args("--cluster-labels", "off", "--cluster-label-keys", "example.com/cluster")
    assert (args.cluster_labels, args.cluster_label_keys) == (Mode.OFF, ("example.com/cluster",))  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("argv", "message"),
    [(["--cluster-labels", "on"], "invalid mode 'on'"), (["--cluster-label-keys=-bad"], "invalid label key '-bad'")],
)
def test_bad_run_flags_exit_2(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        _run_args(*argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
