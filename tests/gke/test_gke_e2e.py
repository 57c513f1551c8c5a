"""The real tracker process with GKE discovery: fake GKE API over TLS, real API servers, real google-auth.

The tracker gets application default credentials from ``GOOGLE_APPLICATION_CREDENTIALS``: a
service-account key file whose ``token_uri`` is a local OAuth endpoint. google-auth signs JWT
assertions with the key; the endpoint verifies them and hands out access tokens the API servers
accept through their token file. The GKE API (``--gke-api-endpoint``) serves TLS with a test
certificate the tracker trusts through ``GRPC_DEFAULT_SSL_ROOTS_FILE_PATH``.
"""

from __future__ import annotations

import asyncio
import re
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import pytest
from e2e.test_tracker_e2e import Tracker, fetch, pod_name
from google.auth import jwt
from google.cloud import container_v1

from kube_ip_tracker.gke.discovery import CLUSTER_ID_LABEL
from kube_ip_tracker.testing import objects
from kube_ip_tracker.testing.certs import write_self_signed
from kube_ip_tracker.testing.fake_gke import FakeClusterManager, make_cluster
from kube_ip_tracker.testing.fake_oauth import (
    CLOUD_PLATFORM_SCOPE,
    FakeTokenEndpoint,
    ServiceAccountKey,
    write_service_account_file,
)

pytestmark = pytest.mark.cluster

PROJECT, LOCATION = "my-project", "europe-west1"
TOKENS = [f"wi-e2e-{i:03d}" for i in range(300)]
# The tracker refreshes a token with less than 5 minutes left: a 305 s token is refreshed after 5 s.
SHORT_LIFETIME = 305


def gke_id(name: str) -> str:
    return f"gke_{PROJECT}_{LOCATION}_{name}"


def full(name: str) -> str:
    return f"{PROJECT}/{LOCATION}/{name}"


class GkeWorld:
    """The fake Google side of one test: OAuth token endpoint, credentials file, TLS GKE API."""

    def __init__(self, tmp_path: Path, oauth: FakeTokenEndpoint, gke: FakeClusterManager, ca_file: Path) -> None:
        self.tmp_path, self.oauth, self.gke, self.ca_file = tmp_path, oauth, gke, ca_file

    def tracker(self, *args: str) -> Tracker:
        """Start the tracker process (``python -m kube_ip_tracker.cli``) pointed at the fake GKE API."""
        t = Tracker(["--gke-api-endpoint", self.gke.address, *args], self.tmp_path / "tracker.log")
        t.argv[0:1] = [sys.executable, "-m", "kube_ip_tracker.cli"]
        return t.start()


@pytest.fixture
async def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Callable[..., GkeWorld]]:
    """``world(lifetime=...)``: fake Google services; the tracker inherits the environment pointing at them."""
    stack: list[tuple[FakeTokenEndpoint, FakeClusterManager]] = []

    async def make(lifetime: int = 3600) -> GkeWorld:
        write_self_signed(tmp_path / "gke-api.crt", tmp_path / "gke-api.key", hosts=["127.0.0.1"])
        key = ServiceAccountKey.generate(f"kube-ip-tracker@{PROJECT}.iam.gserviceaccount.com")
        oauth = FakeTokenEndpoint(key, TOKENS, lifetime=lifetime).start()
        tls = ((tmp_path / "gke-api.crt").read_bytes(), (tmp_path / "gke-api.key").read_bytes())
        gke = FakeClusterManager(tls=tls)
        await gke.start()
        stack.append((oauth, gke))
        key_file = write_service_account_file(tmp_path / "sa.json", key, oauth.token_uri, PROJECT)
        monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key_file))
        monkeypatch.setenv("GRPC_DEFAULT_SSL_ROOTS_FILE_PATH", str(tmp_path / "gke-api.crt"))
        return GkeWorld(tmp_path, oauth, gke, tmp_path / "gke-api.crt")

    yield make  # type: ignore[misc]
    for oauth, gke in stack:
        await gke.stop()
        oauth.stop()


async def metric(t: Tracker, line_prefix: str) -> float | None:
    body = await asyncio.to_thread(fetch, f"http://127.0.0.1:{t.metrics_port}/metrics")
    for line in body.splitlines():
        if line.startswith(line_prefix + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


async def test_tracker_discovers_indexes_adds_and_removes_gke_clusters(cluster_factory, world) -> None:  # type: ignore[no-untyped-def]
    clusters = cluster_factory(3, extra_tokens=TOKENS)
    for i, cluster in enumerate(clusters):
        async with cluster.api_client() as api:
            await objects.create_namespace(api, "demo")
            await objects.create_pod(api, "demo", "web", ips=[f"10.{i}.0.1"])
    async with clusters[1].api_client() as api:
        await objects.label_namespace(api, "kube-system", {CLUSTER_ID_LABEL: "prod-b"})  # names itself

    w: GkeWorld = await world(lifetime=SHORT_LIFETIME)
    gke = w.gke
    a = gke.put(PROJECT, LOCATION, make_cluster("a", clusters[0].server, clusters[0].ca_file))
    b = gke.put(PROJECT, LOCATION, make_cluster("b", clusters[1].server, clusters[1].ca_file))
    # "c" is being created; once RUNNING it reuses cluster-1's API server (after "a" is gone).
    provisioning = container_v1.Cluster.Status.PROVISIONING
    gke.put(PROJECT, LOCATION, make_cluster("c", clusters[0].server, clusters[0].ca_file, status=provisioning))

    t = w.tracker(
        "--kubeconfig",
        str(clusters[2].kubeconfig),  # a static cluster next to the GKE ones
        "--gcp-cluster-names",
        f"{full('a')},{full('b')}",
        "--gcp-project",
        PROJECT,
        "--gcp-cluster-names",
        f"{LOCATION}/c",
        "--reconcile-interval",
        "1s",
        "--cluster-removal-grace",
        "1s",
        "--ready-timeout",
        "60s",
    )
    try:
        # Ready once the first GKE pass found a and b and they synced, with the static cluster.
        await t.eventually(t.serving, "SERVING")
        log = t.log()
        assert "All 3 configured clusters synced; serving" in log
        for line in (
            "Fetching details for 3 GKE clusters...",
            "Successfully fetched details for 2 clusters.",
            f"New cluster configured: {gke_id('a')}. Starting watcher.",
            "New cluster configured: prod-b. Starting watcher.",
            f"Successfully connected to cluster {gke_id('a')} (UID: ",
            "Successfully connected to cluster prod-b (UID: ",
            f"GKE cluster {full('c')} is PROVISIONING, not RUNNING; skipping it and retrying later",
        ):
            assert line in log, line
        assert await pod_name(t, "10.0.0.1") == f"{gke_id('a')}/demo/web"
        assert await pod_name(t, "10.1.0.1") == "prod-b/demo/web"
        assert await pod_name(t, "10.2.0.1") == "cluster-3/demo/web"
        assert set(await t.clusters()) == {gke_id("a"), "prod-b", "cluster-3"}

        # Permission denied on b: logged and retried, b keeps being watched (new pods still arrive).
        gke.fail(b, grpc.StatusCode.PERMISSION_DENIED, "Required 'container.clusters.get' permission")
        denied = f"Fetching GKE cluster {full('b')} failed, will retry (keeping watcher of prod-b)"
        await t.eventually(lambda: denied in t.log(), "permission denied logged")
        async with clusters[1].api_client() as api:
            await objects.create_pod(api, "demo", "during-denial", ips=["10.1.0.2"])
        await t.eventually(lambda: pod_name(t, "10.1.0.2"), "pod of b indexed while GKE denies access")
        gke.heal(b)

        # a is deleted from GKE: its watcher stops and its data is purged after the grace period.
        gke.delete(a)
        await t.eventually(
            lambda: (
                f"Cluster no longer exists in GKE: {gke_id('a')} ({full('a')} not found). Stopping watcher." in t.log()
            ),
            "a stopped",
        )

        async def a_purged() -> bool:
            return await t.pod("10.0.0.1") is None and gke_id("a") not in await t.clusters()

        await t.eventually(a_purged, "a purged")

        # c becomes RUNNING: started on the next pass.
        gke.put(PROJECT, LOCATION, make_cluster("c", clusters[0].server, clusters[0].ca_file))
        await t.eventually(lambda: f"New cluster configured: {gke_id('c')}. Starting watcher." in t.log(), "c added")
        await t.eventually(lambda: pod_name(t, "10.0.0.1"), "pod of c indexed")  # the same API server, now under c's id
        assert await pod_name(t, "10.0.0.1") == f"{gke_id('c')}/demo/web"

        # Tokens are refreshed in the background while b's watch stays open (one pods watch, ever).
        issued = len(w.oauth.tokens_issued())
        await t.eventually(lambda: len(w.oauth.tokens_issued()) >= issued + 2, "two more token refreshes")
        async with clusters[1].api_client() as api:
            await objects.create_pod(api, "demo", "after-refresh", ips=["10.1.0.3"])
        await t.eventually(lambda: pod_name(t, "10.1.0.3"), "pod of b indexed after token refreshes")
        assert await metric(t, 'kube_ip_tracker_source_watches_total{cluster="prod-b",kind="pods"}') == 1.0
        assert (
            await metric(t, 'kube_ip_tracker_source_errors_total{cluster="prod-b",kind="pods",reason="unauthorized"}')
            is None
        )
        assert (await metric(t, 'kube_ip_tracker_gke_token_refreshes_total{result="ok"}') or 0) >= issued + 2
        assert await metric(t, 'kube_ip_tracker_gke_clusters{state="watched"}') == 2.0
        assert await metric(t, 'kube_ip_tracker_gke_clusters{state="configured"}') == 3.0
        assert (await metric(t, 'kube_ip_tracker_gke_api_errors_total{code="PERMISSION_DENIED"}') or 0) >= 1

        # The token endpoint checked each assertion; the GKE API got JWTs signed by the same key.
        assert w.oauth.rejections == []
        assert {g.issuer for g in w.oauth.grants} == {w.oauth.key.email}
        assert all(CLOUD_PLATFORM_SCOPE in g.scope.split() for g in w.oauth.grants)
        claims = jwt.decode(gke.tokens_seen[-1], certs=w.oauth.key.public_key_pem)
        assert claims["iss"] == w.oauth.key.email and CLOUD_PLATFORM_SCOPE in claims["scope"].split()
    finally:
        code = await t.terminate()
    assert code == 0
    log = t.log()
    assert "GKE reconciler stopped" in log and log.rstrip().endswith("Stopped")
    assert not re.search(r"Task exception was never retrieved|Unclosed", log), log[-3000:]


async def test_ready_timeout_names_gke_cluster_the_api_denies(cluster_factory, world) -> None:  # type: ignore[no-untyped-def]
    (cluster,) = cluster_factory(1, extra_tokens=TOKENS)
    w: GkeWorld = await world()
    w.gke.put(PROJECT, LOCATION, make_cluster("a", cluster.server, cluster.ca_file))
    # b's endpoint is a closed port: once the GKE API answers, its informers cannot connect.
    b = w.gke.put(PROJECT, LOCATION, make_cluster("b", "https://127.0.0.1:9", cluster.ca_file))
    w.gke.fail(b, grpc.StatusCode.PERMISSION_DENIED, "Required 'container.clusters.get' permission")
    t = w.tracker(
        "--gcp-cluster-names",
        f"{full('a')},{full('b')}",
        "--reconcile-interval",
        "1s",
        "--ready-timeout",
        "3s",
    )
    try:
        await t.eventually(t.serving, "SERVING after the ready timeout")
        assert f"serving although these clusters are not synced: {full('b')}" in t.log()
        assert gke_id("a") in await t.clusters()
        # No in-cluster fallback was tried for a tracker given only GKE clusters.
        assert "in-cluster" not in t.log()
        w.gke.heal(b)
        await t.eventually(lambda: f"New cluster configured: {gke_id('b')}. Starting watcher." in t.log(), "b added")
    finally:
        assert await t.terminate() == 0


async def test_check_command_with_application_default_credentials(world, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    w: GkeWorld = await world()
    w.gke.put(PROJECT, LOCATION, make_cluster("a", "https://127.0.0.1:9", w.ca_file))
    argv = [sys.executable, "-m", "kube_ip_tracker.gke.check", f"--gcp-cluster-names={full('a')},{full('gone')}"]
    argv.append(f"--gke-api-endpoint={w.gke.address}")
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    lines = out.decode().splitlines()
    assert proc.returncode == 1, err.decode()
    assert lines[0].split()[:4] == ["OK", full("a"), f"id={gke_id('a')}", "server=https://127.0.0.1:9"]
    assert lines[1].startswith(f"ERROR        {full('gone')}  NotFound: 404")
    assert "Could not read namespace kube-system" in err.decode()  # closed port: the default id, with a warning
    assert [g.token for g in w.oauth.grants] == [TOKENS[0]]

    # Without usable credentials: one clear line, exit status 1.
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "GOOGLE_APPLICATION_CREDENTIALS": str(tmp_path / "no.json")}
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 1, err.decode()
    assert "Google application default credentials are unusable" in out.decode() and "no.json" in out.decode()
