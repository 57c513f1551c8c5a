"""The reconcile loop against the fake GKE API: add, remove, change, errors, backoff, cancellation."""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from google.cloud import container_v1

from kube_ip_tracker.gke import metrics
from kube_ip_tracker.gke.auth import GoogleTokenProvider
from kube_ip_tracker.gke.discovery import GkeDiscovery
from kube_ip_tracker.gke.reconcile import Backoff, GkeReconciler
from kube_ip_tracker.model import ClusterSpec
from kube_ip_tracker.testing.certs import write_self_signed
from kube_ip_tracker.testing.fake_gke import FakeClusterManager, SequenceCredentials, make_cluster

from .helpers import LOCATION, PROJECT, cid, eventually, gke_name

# Closed loopback port: discovery cannot read kube-system there, so clusters get their default ids.
CLOSED = "https://127.0.0.1:9"


@dataclass
class RecordingSupervisor:
    """Implements the supervisor interface the reconciler uses, recording every call."""

    running: dict[str, ClusterSpec] = field(default_factory=dict)
    calls: list[tuple[str, str]] = field(default_factory=list)
    graces: dict[str, float] = field(default_factory=dict)

    async def ensure(self, spec: ClusterSpec) -> None:
        old = self.running.get(spec.cluster_id)
        if old != spec:
            self.calls.append(("start" if old is None else "restart", spec.cluster_id))
        self.running[spec.cluster_id] = spec

    async def remove(self, cluster_id: str, grace_seconds: float) -> None:
        self.calls.append(("remove", cluster_id))
        self.graces[cluster_id] = grace_seconds
        self.running.pop(cluster_id, None)

    def specs(self) -> dict[str, ClusterSpec]:
        return dict(self.running)


def reconciler(gke: FakeClusterManager, names: list[str], supervisor: RecordingSupervisor, **kw) -> GkeReconciler:
    creds = SequenceCredentials([f"token-{i}" for i in range(10)])
    discovery = GkeDiscovery(gke.client(creds), GoogleTokenProvider(creds))
    return GkeReconciler([gke_name(n) for n in names], discovery, supervisor, **kw)


async def test_clusters_added_and_removed_between_passes(
    gke: FakeClusterManager, ca_pem: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="kube_ip_tracker.gke")
    for n in ("a", "b", "c"):
        gke.put(PROJECT, LOCATION, make_cluster(n, CLOSED, ca_pem))
    sup = RecordingSupervisor()
    rec = reconciler(gke, ["a", "b"], sup, removal_grace=42)

    await rec.reconcile_once()
    assert sup.calls == [("start", cid("a")), ("start", cid("b"))]
    assert "Fetching details for 2 GKE clusters..." in caplog.messages
    assert "Successfully fetched details for 2 clusters." in caplog.messages
    assert f"New cluster configured: {cid('a')}. Starting watcher." in caplog.messages

    await rec.reconcile_once()  # nothing changed: no start, no stop
    assert len(sup.calls) == 2

    rec.set_names([gke_name("b"), gke_name("c")])
    caplog.clear()
    await rec.reconcile_once()
    assert sup.calls[2:] == [("remove", cid("a")), ("start", cid("c"))]
    assert sup.graces[cid("a")] == 42
    assert set(sup.running) == {cid("b"), cid("c")}
    assert f"Cluster no longer configured: {cid('a')}. Stopping watcher." in caplog.messages
    assert f"New cluster configured: {cid('c')}. Starting watcher." in caplog.messages


async def test_api_error_keeps_watched_clusters_and_is_retried(
    gke: FakeClusterManager, ca_pem: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    a = gke.put(PROJECT, LOCATION, make_cluster("a", CLOSED, ca_pem))
    b = gke.put(PROJECT, LOCATION, make_cluster("b", CLOSED, ca_pem))
    sup = RecordingSupervisor()
    rec = reconciler(gke, ["a", "b"], sup)
    await rec.reconcile_once()
    before = metrics.API_ERRORS.labels(code="PERMISSION_DENIED")._value.get()

    for resource in (a, b):
        gke.fail(resource, grpc.StatusCode.PERMISSION_DENIED, "Required 'container.clusters.get' permission")
    result = await rec.reconcile_once()
    assert not result.complete
    assert set(sup.running) == {cid("a"), cid("b")}
    assert [c for c in sup.calls if c[0] == "remove"] == []
    assert metrics.API_ERRORS.labels(code="PERMISSION_DENIED")._value.get() == before + 2
    assert any(
        "Fetching GKE cluster my-project/europe-west1/a failed, will retry" in m and "container.clusters.get" in m
        for m in caplog.messages
    )

    gke.heal()
    assert (await rec.reconcile_once()).complete
    assert sup.calls == [("start", cid("a")), ("start", cid("b"))]


async def test_cluster_not_running_is_skipped_then_started(
    gke: FakeClusterManager, ca_pem: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    gke.put(PROJECT, LOCATION, make_cluster("new", CLOSED, ca_pem, status=container_v1.Cluster.Status.PROVISIONING))
    sup = RecordingSupervisor()
    rec = reconciler(gke, ["new"], sup)
    result = await rec.reconcile_once()
    assert result.not_running == {gke_name("new"): "PROVISIONING"}
    assert sup.calls == []
    assert any("is PROVISIONING, not RUNNING; skipping it and retrying later" in m for m in caplog.messages)

    gke.put(PROJECT, LOCATION, make_cluster("new", CLOSED, ca_pem))
    await rec.reconcile_once()
    assert sup.calls == [("start", cid("new"))]

    # an upgrade (RECONCILING) does not stop a cluster already watched
    gke.put(PROJECT, LOCATION, make_cluster("new", CLOSED, ca_pem, status=container_v1.Cluster.Status.RECONCILING))
    await rec.reconcile_once()
    assert sup.calls == [("start", cid("new"))]
    assert cid("new") in sup.running


async def test_changed_endpoint_or_ca_restarts_the_cluster(
    gke: FakeClusterManager, ca_pem: bytes, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="kube_ip_tracker.gke")
    gke.put(PROJECT, LOCATION, make_cluster("a", CLOSED, ca_pem))
    sup = RecordingSupervisor()
    rec = reconciler(gke, ["a"], sup)
    await rec.reconcile_once()

    gke.put(PROJECT, LOCATION, make_cluster("a", "https://127.0.0.1:10", ca_pem))
    await rec.reconcile_once()
    assert sup.running[cid("a")].server == "https://127.0.0.1:10"
    assert f"Cluster {cid('a')} changed (endpoint). Restarting watcher." in caplog.messages

    write_self_signed(tmp_path / "new.crt", tmp_path / "new.key", hosts=["127.0.0.1"])
    new_ca = (tmp_path / "new.crt").read_bytes()
    gke.put(PROJECT, LOCATION, make_cluster("a", "https://127.0.0.1:10", new_ca))
    await rec.reconcile_once()
    assert sup.running[cid("a")].ca_pem == new_ca
    assert f"Cluster {cid('a')} changed (CA). Restarting watcher." in caplog.messages
    assert sup.calls == [("start", cid("a")), ("restart", cid("a")), ("restart", cid("a"))]


async def test_static_clusters_are_never_touched(gke: FakeClusterManager, ca_pem: bytes) -> None:
    gke.put(PROJECT, LOCATION, make_cluster("a", CLOSED, ca_pem))
    gke.put(PROJECT, LOCATION, make_cluster("b", CLOSED, ca_pem))
    static = ClusterSpec(cluster_id="kind-local", kubeconfig="/etc/kubeconfig", context="kind-local")
    clash = ClusterSpec(cluster_id=cid("b"), kubeconfig="/etc/kubeconfig", context="b")
    sup = RecordingSupervisor(running={"kind-local": static, cid("b"): clash})
    rec = reconciler(gke, ["a", "b"], sup)
    await rec.reconcile_once()
    assert sup.calls == [("start", cid("a"))]  # b's id is taken by a static cluster
    assert sup.running[cid("b")] is clash
    rec.set_names([])
    await rec.reconcile_once()
    assert sup.calls[1:] == [("remove", cid("a"))]
    assert set(sup.running) == {"kind-local", cid("b")}


def test_backoff_grows_with_jitter_and_is_capped() -> None:
    backoff = Backoff(1.0, 30.0, random.Random(7))
    delays = [backoff.next_delay() for _ in range(8)]
    assert all(1.0 <= d <= 30.0 for d in delays)
    assert delays[0] == 1.0  # the first retry waits exactly the base
    assert max(delays[5:]) > 8  # grown
    assert len(set(delays[3:])) == 5  # jittered, not constant
    backoff.reset()
    assert backoff.next_delay() == 1.0


async def test_run_backs_off_on_errors_and_stops_on_cancel(gke: FakeClusterManager, ca_pem: bytes) -> None:
    gke.put(PROJECT, LOCATION, make_cluster("a", CLOSED, ca_pem))
    gke.fail(gke.put(PROJECT, LOCATION, make_cluster("b", CLOSED, ca_pem)), grpc.StatusCode.UNAVAILABLE)
    sup = RecordingSupervisor()
    rec = reconciler(gke, ["a", "b"], sup, interval=3600, backoff_base=0.01)
    task = asyncio.create_task(rec.run())
    await eventually(lambda: rec.passes >= 3, "three passes", 10)  # retried long before the one-hour interval
    assert cid("a") in sup.running
    assert metrics.BACKOFF_SECONDS._value.get() < 3600

    gke.heal()
    await eventually(lambda: cid("b") in sup.running, "b started after healing", 10)
    await eventually(
        lambda: metrics.BACKOFF_SECONDS._value.get() == 3600, "backoff back to the interval", 5
    )  # healthy again: the normal interval
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert task.cancelled()


async def test_failing_pass_does_not_end_the_loop(ca_pem: bytes) -> None:
    class Broken:
        calls = 0

        async def fetch(self, names):
            Broken.calls += 1
            raise RuntimeError("token source down")

    rec = GkeReconciler([gke_name("a")], Broken(), RecordingSupervisor(), interval=3600, backoff_base=0.01)
    task = asyncio.create_task(rec.run())
    await eventually(lambda: Broken.calls >= 3, "three failed passes", 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_flags_build_a_working_reconciler(gke: FakeClusterManager, ca_pem: bytes) -> None:
    import argparse

    from kube_ip_tracker.gke import flags

    gke.put(PROJECT, LOCATION, make_cluster("a", CLOSED, ca_pem))
    parser = argparse.ArgumentParser()
    flags.add_arguments(parser)
    args = parser.parse_args(
        [
            "--gcp-cluster-names=a,missing",
            f"--gcp-project={PROJECT}",
            f"--gcp-location={LOCATION}",
            "--reconcile-interval=2m",
            "--cluster-removal-grace=10s",
        ]
    )
    creds = SequenceCredentials(["flag-token"])
    sup = RecordingSupervisor()
    rec = flags.build_reconciler(args, sup, credentials=creds, client=gke.client(creds))
    assert rec is not None
    assert (rec.interval, rec.removal_grace) == (120.0, 10.0)
    result = await rec.reconcile_once()
    assert sup.calls == [("start", cid("a"))]
    assert list(result.errors) == [gke_name("missing")]  # NOT_FOUND: logged, retried, nothing else harmed
    assert sup.running[cid("a")].token_provider is not None
    assert await sup.running[cid("a")].token_provider() == "flag-token"


async def test_deleted_cluster_is_stopped_and_readiness_waits_for_api_answers(
    gke: FakeClusterManager, ca_pem: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="kube_ip_tracker.gke")
    a = gke.put(PROJECT, LOCATION, make_cluster("a", CLOSED, ca_pem))
    b = gke.put(PROJECT, LOCATION, make_cluster("b", CLOSED, ca_pem))
    gke.put(PROJECT, LOCATION, make_cluster("c", CLOSED, ca_pem, status=container_v1.Cluster.Status.PROVISIONING))
    gke.fail(b, grpc.StatusCode.UNAVAILABLE)
    sup = RecordingSupervisor()
    rec = reconciler(gke, ["a", "b", "c", "d"], sup)  # d does not exist
    assert await rec.wait_discovered(0.01) == [gke_name(n) for n in "abcd"]  # no pass yet

    await rec.reconcile_once()
    # Not RUNNING (c) and NOT_FOUND (d) are answers; only b's API error holds readiness.
    assert await rec.wait_discovered(0.01) == [gke_name("b")]
    assert any("GKE cluster my-project/europe-west1/d does not exist (yet); will retry" in m for m in caplog.messages)
    gke.heal()
    await rec.reconcile_once()
    assert await rec.wait_discovered(1) == []
    assert rec.cluster_ids() == {cid("a"), cid("b")}

    gke.delete(a)  # deleted in GKE: stopped (purged after the grace period), no longer counted
    await rec.reconcile_once()
    assert sup.calls[-1] == ("remove", cid("a"))
    assert rec.cluster_ids() == {cid("b")}
    assert (
        f"Cluster no longer exists in GKE: {cid('a')} (my-project/europe-west1/a not found). Stopping watcher."
        in caplog.messages
    )
    await rec.reconcile_once()
    assert sup.calls.count(("remove", cid("a"))) == 1

    gke.put(PROJECT, LOCATION, make_cluster("a", CLOSED, ca_pem))  # created again
    await rec.reconcile_once()
    assert sup.calls[-1] == ("start", cid("a"))


async def test_id_taken_over_by_another_source_is_left_to_it(gke: FakeClusterManager, ca_pem: bytes) -> None:
    gke.put(PROJECT, LOCATION, make_cluster("a", CLOSED, ca_pem))
    sup = RecordingSupervisor()
    rec = reconciler(gke, ["a"], sup)
    await rec.reconcile_once()
    assert rec.cluster_ids() == {cid("a")}

    # A --kubeconfig-dir file now defines the same id: the supervisor runs that spec; GKE backs off.
    other = ClusterSpec(cluster_id=cid("a"), kubeconfig="/etc/clusters/a.yaml", context=cid("a"))
    sup.running[cid("a")] = other
    await rec.reconcile_once()
    await rec.reconcile_once()
    assert sup.running[cid("a")] is other
    assert rec.cluster_ids() == set() and sup.calls == [("start", cid("a"))]

    # The file goes away: the GKE cluster is watched again.
    del sup.running[cid("a")]
    await rec.reconcile_once()
    assert sup.calls == [("start", cid("a")), ("start", cid("a"))] and rec.cluster_ids() == {cid("a")}
