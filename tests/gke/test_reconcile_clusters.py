"""The reconciler with the real supervisor and index over real API servers found through the fake GKE API.

Credentials are a test credentials object whose token changes on every refresh; the API servers
accept all of its tokens (token file).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import pytest

from kube_ip_tracker.gke.auth import GoogleTokenProvider
from kube_ip_tracker.gke.discovery import CLUSTER_ID_LABEL, GkeDiscovery
from kube_ip_tracker.gke.reconcile import GkeReconciler
from kube_ip_tracker.index import Index
from kube_ip_tracker.kube.reflector import InformerOptions
from kube_ip_tracker.sources.supervisor import ClusterSupervisor
from kube_ip_tracker.testing import objects
from kube_ip_tracker.testing.fake_gke import FakeClusterManager, SequenceCredentials, make_cluster

from .helpers import LOCATION, PROJECT, cid, eventually, gke_name

pytestmark = pytest.mark.cluster

TOKENS = [f"gke-rec-{i}" for i in range(100)]
OPTIONS = InformerOptions(backoff_base=0.1, backoff_cap=1.0, connect_timeout=2, request_timeout=10)


def owner(index: Index, ip: str) -> str:
    """``cluster/namespace/name`` of the pod owning ``ip`` in the index, or ''."""
    found = index.get_pod_by_ip(ip)
    return f"{found[0].cluster}/{found[0].namespace}/{found[0].name}" if found else ""


@pytest.fixture
async def index_and_supervisor() -> AsyncIterator[tuple[Index, ClusterSupervisor]]:
    index = Index()
    supervisor = ClusterSupervisor(index, options=OPTIONS)
    yield index, supervisor
    await supervisor.stop()


async def test_clusters_indexed_added_removed_and_renamed(  # type: ignore[no-untyped-def]
    cluster_factory, gke: FakeClusterManager, index_and_supervisor, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="kube_ip_tracker")
    index, supervisor = index_and_supervisor
    clusters = cluster_factory(3, extra_tokens=TOKENS)
    for i, cluster in enumerate(clusters):
        async with cluster.api_client() as api:
            await objects.create_namespace(api, "demo")
            await objects.create_pod(api, "demo", "web", ips=[f"10.{i}.0.1"])
        gke.put(PROJECT, LOCATION, make_cluster("abc"[i], cluster.server, cluster.ca_file))

    creds = SequenceCredentials(TOKENS)
    provider = GoogleTokenProvider(creds)
    discovery = GkeDiscovery(gke.client(creds), provider)
    rec = GkeReconciler([gke_name("a"), gke_name("b")], discovery, supervisor, removal_grace=0.5)
    try:
        # Two clusters discovered and indexed.
        await rec.reconcile_once()
        assert await supervisor.wait_synced(rec.cluster_ids(), 30) == set()
        assert owner(index, "10.0.0.1") == f"{cid('a')}/demo/web"
        assert owner(index, "10.1.0.1") == f"{cid('b')}/demo/web"
        assert "Successfully fetched details for 2 clusters." in caplog.messages

        # A third added and the first removed between passes.
        rec.set_names([gke_name("b"), gke_name("c")])
        await rec.reconcile_once()
        assert f"Cluster no longer configured: {cid('a')}. Stopping watcher." in caplog.messages
        assert f"New cluster configured: {cid('c')}. Starting watcher." in caplog.messages
        await eventually(lambda: owner(index, "10.2.0.1") == f"{cid('c')}/demo/web", "pod of c indexed", 30)
        await eventually(lambda: cid("a") not in index.cluster_names(), "a purged", 10)  # purged after the grace period
        assert owner(index, "10.0.0.1") == ""

        # A new token is used by the next requests while the informers keep running.
        creds.expiry = creds.expiry.replace(year=creds.expiry.year - 1)
        async with clusters[1].api_client() as api:
            await objects.create_pod(api, "demo", "after-refresh", ips=["10.1.0.2"])
        await rec.reconcile_once()  # reads b's kube-system label: refreshes the token
        assert creds.refreshes == 2 and creds.token == TOKENS[1]
        await eventually(
            lambda: owner(index, "10.1.0.2") == f"{cid('b')}/demo/after-refresh",
            "pod created after the refresh indexed",
            30,
        )

        # b names itself: its old id stops, the new one starts, the data moves to the new id.
        async with clusters[1].api_client() as api:
            await objects.label_namespace(api, "kube-system", {CLUSTER_ID_LABEL: "prod-b"})
        await rec.reconcile_once()
        assert rec.cluster_ids() == {"prod-b", cid("c")}
        assert f"GKE cluster {gke_name('b')} changed id from {cid('b')} to prod-b" in caplog.messages
        await eventually(lambda: owner(index, "10.1.0.1") == "prod-b/demo/web", "b indexed as prod-b", 30)
        await eventually(lambda: cid("b") not in index.cluster_names(), "old id of b purged", 10)
        assert set(supervisor.specs()) == {"prod-b", cid("c")}

        # A newcomer naming itself like a watched cluster: the watched one keeps the id.
        async with clusters[0].api_client() as api:
            await objects.label_namespace(api, "kube-system", {CLUSTER_ID_LABEL: "prod-b"})
        rec.set_names([gke_name("a"), gke_name("b"), gke_name("c")])
        await rec.reconcile_once()
        clash = f"GKE clusters {gke_name('b')} and {gke_name('a')} both have id prod-b; only the first is watched"
        assert clash in caplog.messages
        assert rec.cluster_ids() == {"prod-b", cid("c")}
        assert supervisor.specs()["prod-b"].server == clusters[1].server

        # An API server that cannot be reached keeps the id it had; an empty label means the default id.
        resolver = discovery.id_resolver
        token = await provider()
        assert await resolver.resolve(gke_name("b"), "https://127.0.0.1:9", None, token) == "prod-b"
        async with clusters[2].api_client() as api:
            await objects.label_namespace(api, "kube-system", {CLUSTER_ID_LABEL: ""})
        ca = clusters[2].ca_file.read_bytes()
        assert await resolver.resolve(gke_name("c"), clusters[2].server, ca, token) == cid("c")
        assert any("is not a valid cluster id; using" in m for m in caplog.messages)
    finally:
        await rec.close()
