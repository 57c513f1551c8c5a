"""The real tracker process with EKS and GKE discovery at once, everything on loopback.

EKS side: botocore's real clients in the tracker reach the local EKS API and STS through
``AWS_ENDPOINT_URL_EKS`` / ``AWS_ENDPOINT_URL_STS`` and find the IAM user's keys in the environment
(the default chain). The EKS clusters' API servers run with RBAC and an authentication webhook that
accepts a token only if STS accepts its presigned GetCallerIdentity URL (SigV4 recomputed with the
secret key, ``x-k8s-aws-id`` signed for that cluster, not older than the STS's presign lifetime) and
maps the IAM user to a Kubernetes user bound to a read-only ClusterRole. GKE side: the fake GKE API
and OAuth endpoint of tests/gke/test_gke_e2e.py.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from e2e.test_tracker_e2e import pod_name
from gke.test_gke_e2e import PROJECT, TOKENS, GkeWorld, full, metric, world

from kube_ip_tracker.cloud.discovery import CLUSTER_ID_LABEL
from kube_ip_tracker.testing import objects
from kube_ip_tracker.testing.fake_aws import MappedUser, TokenWebhook, eks_cluster
from kube_ip_tracker.testing.fake_gke import make_cluster

from .conftest import REGION, Aws
from .test_discovery import grant_read

pytestmark = pytest.mark.cluster

__all__ = ["world"]  # the GKE side's fixture

USER = "eks:kube-ip-tracker"
LIFETIME = 12.0  # seconds the API servers accept a token (EKS: 15 minutes)
REFRESH = "2s"  # --aws-token-refresh-interval


def eks_id(name: str) -> str:
    return f"eks_{REGION}_{name}"


def logged(log: str, *parts: str) -> bool:
    """Some line of the log holds all ``parts``."""
    return any(all(part in line for part in parts) for line in log.splitlines())


def region(name: str) -> str:
    return f"{REGION}/{name}"


async def test_tracker_runs_eks_and_gke_clusters_and_reports_each_eks_error(  # type: ignore[no-untyped-def]
    aws: Aws, cluster_factory, world, tmp_path: Path
) -> None:
    aws.sts.presign_lifetime = LIFETIME
    webhook = TokenWebhook(aws.sts, {aws.me.arn: MappedUser(USER)}).start()
    try:
        (gke_cluster,) = cluster_factory(1, names=["gke-g"], extra_tokens=TOKENS)
        eks_clusters = {
            name: cluster_factory(
                1,
                names=[f"eks-{name}"],
                authorization_mode="RBAC",
                extra_apiserver_args=webhook.apiserver_args(tmp_path, name),
            )[0]
            for name in ("a", "b")
        }
        for i, cluster in enumerate([gke_cluster, *eks_clusters.values()]):
            async with cluster.api_client() as api:
                await objects.create_namespace(api, "demo")
                await objects.create_pod(api, "demo", "web", ips=[f"10.{i}.0.1"])
        async with gke_cluster.api_client() as api:  # each provider's cluster names itself with the label
            await objects.label_namespace(api, "kube-system", {CLUSTER_ID_LABEL: "gke-prod"})
        async with eks_clusters["b"].api_client() as api:
            await objects.label_namespace(api, "kube-system", {CLUSTER_ID_LABEL: "eks-prod-b"})
        for cluster in eks_clusters.values():
            await grant_read(cluster, USER)

        a, b = eks_clusters["a"], eks_clusters["b"]
        aws.eks.put(REGION, eks_cluster("a", REGION, a.server, a.ca_file))
        aws.eks.put(REGION, eks_cluster("b", REGION, b.server, b.ca_file))
        aws.eks.put(REGION, eks_cluster("c", REGION, "", a.ca_file, status="CREATING"))
        # "wrong" points at a's API server, whose authenticator only takes tokens made for "a".
        aws.eks.put(REGION, eks_cluster("wrong", REGION, a.server, a.ca_file))
        w: GkeWorld = await world()
        w.gke.put(PROJECT, "europe-west1", make_cluster("g", gke_cluster.server, gke_cluster.ca_file))

        t = w.tracker(
            "--gcp-cluster-names",
            full("g"),
            "--aws-cluster-names",
            ",".join(region(n) for n in ("a", "b", "c", "wrong", "missing")),
            "--aws-token-refresh-interval",
            REFRESH,
            "--reconcile-interval",
            "1s",
            "--cluster-removal-grace",
            "1s",
            "--kube-probe-interval",
            "1s",
            "--ready-timeout",
            "20s",
        )
        try:
            await t.eventually(t.serving, "SERVING", 90)  # after --ready-timeout: "wrong" never syncs
            log = t.log()
            for line in (
                "Fetching details for 5 EKS clusters...",
                "Fetching details for 1 GKE clusters...",
                f"New cluster configured: {eks_id('a')}. Starting watcher.",
                "New cluster configured: eks-prod-b. Starting watcher.",
                "New cluster configured: gke-prod. Starting watcher.",
                f"Successfully connected to cluster {eks_id('a')} (UID: ",
                "Successfully connected to cluster eks-prod-b (UID: ",
                # not ACTIVE
                f"EKS cluster {region('c')} is CREATING, not ACTIVE; skipping it and retrying later",
                # ResourceNotFoundException
                f"EKS cluster {region('missing')} does not exist (yet); will retry: An error occurred "
                "(ResourceNotFoundException) when calling the DescribeCluster operation: No cluster found for name: missing.",
                # a token the API server rejects (made for another cluster)
                f"Could not read namespace kube-system of EKS cluster {region('wrong')} at {a.server} to find its id "
                "(HTTP 401 reading namespace kube-system: the API server rejected the EKS token",
                f"serving although these clusters are not synced: {eks_id('wrong')}",
            ):
                assert line in log, line
            assert logged(log, f"Cluster {eks_id('wrong')}: ", "get namespace kube-system: unauthorized (401)")
            assert await pod_name(t, "10.0.0.1") == "gke-prod/demo/web"
            assert await pod_name(t, "10.1.0.1") == f"{eks_id('a')}/demo/web"
            assert await pod_name(t, "10.2.0.1") == "eks-prod-b/demo/web"
            clusters = await t.clusters()
            assert set(clusters) == {"gke-prod", eks_id("a"), "eks-prod-b", eks_id("wrong")}
            assert "unauthorized (401)" in clusters[eks_id("wrong")].status.last_error
            assert any(c == "a" and "SignatureDoesNotMatch" in outcome for c, outcome in webhook.reviews)

            # Tokens are made anew every 2s and accepted for 12s: b's watch, opened with the first one,
            # stays open while new requests carry new tokens.
            made = await metric(t, 'kube_ip_tracker_eks_token_refreshes_total{result="ok"}') or 0

            async def refreshed() -> bool:
                return (await metric(t, 'kube_ip_tracker_eks_token_refreshes_total{result="ok"}') or 0) >= made + 6

            await t.eventually(refreshed, "EKS tokens refreshed", 60)
            async with b.api_client() as api:
                await objects.create_pod(api, "demo", "after-refresh", ips=["10.2.0.2"])
            await t.eventually(lambda: pod_name(t, "10.2.0.2"), "pod of b indexed after token refreshes")
            assert await metric(t, 'kube_ip_tracker_source_watches_total{cluster="eks-prod-b",kind="pods"}') == 1.0
            assert (
                await metric(
                    t, 'kube_ip_tracker_source_errors_total{cluster="eks-prod-b",kind="pods",reason="unauthorized"}'
                )
                is None
            )
            assert {outcome for c, outcome in webhook.reviews if c == "b"} == {USER}
            assert set(aws.sts.callers) == {aws.me.arn} and aws.sts.rejections  # only "wrong"'s were rejected

            # AccessDenied on b: logged with AWS's message and retried; b keeps being watched.
            aws.eks.deny(REGION, "b")
            denied = f"Fetching EKS cluster {region('b')} failed, will retry (keeping watcher of eks-prod-b): An error occurred (AccessDeniedException)"
            await t.eventually(lambda: denied in t.log(), "access denied logged")
            async with b.api_client() as api:
                await objects.create_pod(api, "demo", "during-denial", ips=["10.2.0.3"])
            await t.eventually(lambda: pod_name(t, "10.2.0.3"), "pod of b indexed while EKS denies DescribeCluster")
            aws.eks.allow(REGION, "b")

            # Expired tokens: the API servers reject every request with 401, named per cluster; the
            # tracker recovers once tokens are accepted again.
            before = len(t.log())
            aws.sts.presign_lifetime = -1
            await t.eventually(
                lambda: logged(t.log()[before:], f"Cluster {eks_id('a')}: ", "unauthorized (401)"),
                "expired token reported",
            )
            assert any(c == "a" and "ExpiredToken: Request has expired" in outcome for c, outcome in webhook.reviews)
            # The discovery pass names the EKS cluster and the cause too, and keeps the id it had.
            await t.eventually(
                lambda: logged(
                    t.log()[before:],
                    f"Could not read namespace kube-system of EKS cluster {region('a')}",
                    "HTTP 401 reading namespace kube-system: the API server rejected the EKS token: it expired",
                    f"using {eks_id('a')}",
                ),
                "expired token named by discovery",
            )
            aws.sts.presign_lifetime = LIFETIME
            await t.eventually(
                lambda: (
                    f"Cluster {eks_id('a')}: liveness probe succeeded again" in t.log()[before:]
                    or f"Successfully connected to cluster {eks_id('a')} (UID: " in t.log()[before:]
                ),
                "a accepted again",
            )

            # a is deleted from EKS: stopped, and its data purged after the grace period.
            aws.eks.delete(REGION, "a")
            await t.eventually(
                lambda: (
                    f"Cluster no longer exists in EKS: {eks_id('a')} ({region('a')} not found). Stopping watcher."
                    in t.log()
                ),
                "a stopped",
            )

            async def a_purged() -> bool:
                return await t.pod("10.1.0.1") is None and eks_id("a") not in await t.clusters()

            await t.eventually(a_purged, "a purged")
            assert await pod_name(t, "10.0.0.1") == "gke-prod/demo/web"  # the GKE cluster is untouched
            assert await metric(t, 'kube_ip_tracker_eks_clusters{state="configured"}') == 5.0
            assert await metric(t, 'kube_ip_tracker_eks_clusters{state="watched"}') == 2.0  # b and wrong
            assert await metric(t, 'kube_ip_tracker_gke_clusters{state="watched"}') == 1.0
            assert (await metric(t, 'kube_ip_tracker_eks_api_errors_total{code="AccessDeniedException"}') or 0) >= 1
        finally:
            code = await t.terminate()
        assert code == 0
        log = t.log()
        assert "EKS reconciler stopped" in log and "GKE reconciler stopped" in log and log.rstrip().endswith("Stopped")
        assert not re.search(r"Task exception was never retrieved|Unclosed", log), log[-3000:]
    finally:
        webhook.stop()
