"""Discovery against the fake GKE API: statuses, API errors, endpoints, CA, cluster ids."""

from __future__ import annotations

import base64

import grpc
import pytest
from google.api_core import exceptions as core_exceptions
from google.cloud import container_v1
from kubernetes_asyncio import client

from kube_ip_tracker.gke.auth import GoogleTokenProvider
from kube_ip_tracker.gke.discovery import CLUSTER_ID_LABEL, EndpointKind, GkeDiscovery
from kube_ip_tracker.kube.kubeconfig import api_client
from kube_ip_tracker.model import ClusterSpec
from kube_ip_tracker.testing import objects
from kube_ip_tracker.testing.fake_gke import FakeClusterManager, SequenceCredentials, make_cluster

from .helpers import LOCATION, PROJECT, gke_name


async def test_statuses_errors_and_endpoints(ca_pem: bytes) -> None:
    creds = SequenceCredentials(["gke-token-1"])
    async with FakeClusterManager() as gke:
        # Endpoints on a closed port: the kube-system label cannot be read, the default id is used.
        gke.put(PROJECT, LOCATION, make_cluster("ok", "https://127.0.0.1:9", ca_pem))
        gke.put(PROJECT, LOCATION, make_cluster("dns", "https://127.0.0.1:9", ca_pem, dns_endpoint="gke-x.example"))
        gke.put(
            PROJECT,
            LOCATION,
            make_cluster("busy", "https://127.0.0.1:9", ca_pem, status=container_v1.Cluster.Status.PROVISIONING),
        )
        denied = gke.put(PROJECT, LOCATION, make_cluster("denied", "https://127.0.0.1:9", ca_pem))
        gke.fail(denied, grpc.StatusCode.PERMISSION_DENIED, "Required 'container.clusters.get' permission")
        bad_ca = make_cluster("badca", "https://127.0.0.1:9", ca_pem)
        bad_ca.master_auth.cluster_ca_certificate = base64.b64encode(b"not a certificate").decode()
        gke.put(PROJECT, LOCATION, bad_ca)

        provider = GoogleTokenProvider(creds)
        discovery = GkeDiscovery(gke.client(creds), provider)
        names = [gke_name(n) for n in ("ok", "dns", "busy", "denied", "badca", "missing")]
        result = await discovery.fetch(names)

        assert set(result.specs) == {gke_name("ok"), gke_name("dns")}
        ok = result.specs[gke_name("ok")]
        assert ok == ClusterSpec(
            cluster_id="gke_my-project_europe-west1_ok", server="https://127.0.0.1:9", ca_pem=ca_pem
        )
        assert ok.token_provider is provider
        # IP endpoint chosen by default even when a DNS endpoint exists
        assert result.specs[gke_name("dns")].server == "https://127.0.0.1:9"
        assert result.not_running == {gke_name("busy"): "PROVISIONING"}
        assert isinstance(result.errors[gke_name("denied")], core_exceptions.PermissionDenied)
        assert "container.clusters.get" in str(result.errors[gke_name("denied")])
        assert isinstance(result.errors[gke_name("missing")], core_exceptions.NotFound)
        assert "does not hold a PEM certificate" in str(result.errors[gke_name("badca")])
        assert not result.complete
        # the GKE API saw the very token the clusters get: one credentials object for both
        assert set(gke.tokens_seen) == {"gke-token-1"}
        assert creds.refreshes == 1

        dns = await GkeDiscovery(gke.client(creds), provider, endpoint=EndpointKind.DNS).fetch([gke_name("dns")])
        spec = dns.specs[gke_name("dns")]
        assert (spec.server, spec.ca_pem) == ("https://gke-x.example", None)


async def _namespaces(spec: ClusterSpec) -> list[str]:
    """List namespaces through the client the sources build from the spec: server, CA, token provider."""
    assert spec.ca_pem is not None and spec.token_provider is not None
    async with api_client(spec) as api:
        return [ns.metadata.name for ns in (await client.CoreV1Api(api).list_namespace()).items]


@pytest.mark.cluster
async def test_two_clusters_discovered_and_reachable(cluster_factory) -> None:
    clusters = cluster_factory(2, extra_tokens=["wi-token-1"])
    async with clusters[0].api_client() as api:
        await objects.create_namespace(api, "only-in-one")
    async with clusters[1].api_client() as api:
        await objects.label_namespace(api, "kube-system", {CLUSTER_ID_LABEL: "prod-eu"})

    creds = SequenceCredentials(["wi-token-1"])
    async with FakeClusterManager() as gke:
        for c in clusters:
            gke.put(PROJECT, LOCATION, make_cluster(c.name, c.server, c.ca_file))
        discovery = GkeDiscovery(gke.client(creds), GoogleTokenProvider(creds))
        result = await discovery.fetch([gke_name(c.name) for c in clusters])

    assert result.complete
    first, second = (result.specs[gke_name(c.name)] for c in clusters)
    assert first.cluster_id == "gke_my-project_europe-west1_cluster-1"
    assert second.cluster_id == "prod-eu"  # named by its kube-system label
    assert (first.server, second.server) == (clusters[0].server, clusters[1].server)
    assert first.ca_pem == clusters[0].ca_file.read_bytes()
    assert "only-in-one" in await _namespaces(first)
    assert "only-in-one" not in await _namespaces(second)


async def test_check_command_prints_each_cluster(ca_pem: bytes) -> None:
    import argparse
    import io

    from kube_ip_tracker.gke import check, flags

    creds = SequenceCredentials(["check-token"])
    async with FakeClusterManager() as gke:
        gke.put(PROJECT, LOCATION, make_cluster("ok", "https://127.0.0.1:9", ca_pem))
        gke.put(
            PROJECT,
            LOCATION,
            make_cluster("stopping", "https://127.0.0.1:9", ca_pem, status=container_v1.Cluster.Status.STOPPING),
        )
        parser = argparse.ArgumentParser()
        flags.add_arguments(parser)
        args = parser.parse_args(
            [f"--gcp-cluster-names={PROJECT}/{LOCATION}/ok,{PROJECT}/{LOCATION}/stopping,{PROJECT}/{LOCATION}/gone"]
        )
        out = io.StringIO()
        status = await check.run_check(args, credentials=creds, client=gke.client(creds), out=out)
    lines = out.getvalue().splitlines()
    assert status == 1
    assert lines[0].split() == [
        "OK",
        "my-project/europe-west1/ok",
        "id=gke_my-project_europe-west1_ok",
        "server=https://127.0.0.1:9",
        "verified-with=cluster",
        "CA",
    ]
    assert lines[1].split() == ["NOT", "RUNNING", "my-project/europe-west1/stopping", "status=STOPPING"]
    assert lines[2].startswith("ERROR        my-project/europe-west1/gone  NotFound: 404")


def test_check_command_without_clusters_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    from kube_ip_tracker.gke import check

    assert check.main([]) == 2
    assert "no GKE clusters configured" in capsys.readouterr().out
