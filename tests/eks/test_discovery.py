"""EKS discovery and its reconcile loop against the local EKS API (botocore's real client): statuses,
errors, the check command; and against a real API server authenticating EKS tokens through a webhook."""

from __future__ import annotations

import argparse
import io
import logging
from pathlib import Path

import pytest
from botocore.exceptions import ClientError
from gke.test_reconcile import RecordingSupervisor
from kubernetes_asyncio import client

from kube_ip_tracker.cloud.discovery import CLUSTER_ID_LABEL
from kube_ip_tracker.cloud.reconcile import Reconciler
from kube_ip_tracker.eks import check, flags, metrics
from kube_ip_tracker.eks.discovery import AwsClients, EksDiscovery, is_not_found
from kube_ip_tracker.eks.names import EksClusterName
from kube_ip_tracker.eks.reconcile import EKS
from kube_ip_tracker.kube.kubeconfig import api_client
from kube_ip_tracker.testing import objects
from kube_ip_tracker.testing.certs import write_self_signed
from kube_ip_tracker.testing.fake_aws import MappedUser, TokenWebhook, eks_cluster

from .conftest import REGION, Aws

CLOSED = "https://127.0.0.1:9"  # nothing listens: the kube-system label cannot be read, default ids


def name(cluster: str, region: str = REGION) -> EksClusterName:
    return EksClusterName(region, cluster)


@pytest.fixture
def ca_pem(tmp_path: Path) -> bytes:
    write_self_signed(tmp_path / "ca.crt", tmp_path / "ca.key", hosts=["127.0.0.1"])
    return (tmp_path / "ca.crt").read_bytes()


async def test_statuses_and_errors_each_name_the_cluster(aws: Aws, ca_pem: bytes) -> None:
    aws.eks.put(REGION, eks_cluster("ok", REGION, CLOSED, ca_pem))
    aws.eks.put("eu-west-1", eks_cluster("ok", "eu-west-1", "https://127.0.0.1:10", ca_pem))
    aws.eks.put(REGION, eks_cluster("creating", REGION, "", ca_pem, status="CREATING"))
    aws.eks.put(REGION, eks_cluster("denied", REGION, CLOSED, ca_pem))
    aws.eks.deny(REGION, "denied")
    bad = eks_cluster("badca", REGION, CLOSED, ca_pem)
    bad["certificateAuthority"]["data"] = "bm90IGEgY2VydA=="
    aws.eks.put(REGION, bad)
    denied_before = metrics.API_ERRORS.labels(code="AccessDeniedException")._value.get()

    discovery = EksDiscovery(AwsClients(aws.session()))
    names = [name("ok"), name("ok", "eu-west-1"), name("creating"), name("denied"), name("badca"), name("gone")]
    try:
        result = await discovery.fetch(names)
    finally:
        await discovery.close()

    assert set(result.specs) == {name("ok"), name("ok", "eu-west-1")}
    ok = result.specs[name("ok")]
    assert (ok.cluster_id, ok.server, ok.ca_pem) == ("eks_us-east-1_ok", CLOSED, ca_pem)
    assert result.specs[name("ok", "eu-west-1")].server == "https://127.0.0.1:10"  # each region's own API
    assert ok.token_provider is not None and (await ok.token_provider()).startswith("k8s-aws-v1.")
    assert result.not_running == {name("creating"): "CREATING"}
    denied, gone = result.errors[name("denied")], result.errors[name("gone")]
    assert isinstance(denied, ClientError) and "AccessDeniedException" in str(denied)
    assert "not authorized to perform: eks:DescribeCluster" in str(denied) and not is_not_found(denied)
    assert isinstance(gone, ClientError) and is_not_found(gone) and "No cluster found for name: gone." in str(gone)
    assert (
        str(result.errors[name("badca")])
        == "EKS cluster us-east-1/badca: certificateAuthority.data does not hold a PEM certificate"
    )
    assert metrics.API_ERRORS.labels(code="AccessDeniedException")._value.get() == denied_before + 1
    assert sorted(aws.eks.requests) == sorted(str(n) for n in names)  # one signed call each, region in the scope


async def test_reconciler_starts_skips_and_removes_eks_clusters(
    aws: Aws, ca_pem: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="kube_ip_tracker.eks")
    aws.eks.put(REGION, eks_cluster("a", REGION, CLOSED, ca_pem))
    aws.eks.put(REGION, eks_cluster("b", REGION, CLOSED, ca_pem, status="CREATING"))
    aws.eks.put(REGION, eks_cluster("c", REGION, CLOSED, ca_pem))
    sup = RecordingSupervisor()
    rec = Reconciler(EKS, [name("a"), name("b"), name("c")], EksDiscovery(AwsClients(aws.session())), sup)
    try:
        await rec.reconcile_once()
        assert sup.calls == [("start", "eks_us-east-1_a"), ("start", "eks_us-east-1_c")]
        assert "Fetching details for 3 EKS clusters..." in caplog.messages
        assert "EKS cluster us-east-1/b is CREATING, not ACTIVE; skipping it and retrying later" in caplog.messages
        assert await rec.wait_discovered(0.01) == []  # CREATING is an answer

        aws.eks.deny(REGION, "c")  # a failed fetch never stops a watched cluster
        aws.eks.delete(REGION, "a")  # deleted: stopped
        await rec.reconcile_once()
        assert sup.calls[2:] == [("remove", "eks_us-east-1_a")]
        assert (
            "Cluster no longer exists in EKS: eks_us-east-1_a (us-east-1/a not found). Stopping watcher."
            in caplog.messages
        )
        assert any(
            m.startswith("Fetching EKS cluster us-east-1/c failed, will retry (keeping watcher of eks_us-east-1_c)")
            and "AccessDeniedException" in m
            for m in caplog.messages
        )
        assert await rec.wait_discovered(0.01) == [name("c")]
        assert metrics.RECONCILE.clusters.labels(state="watched")._value.get() == 1
    finally:
        await rec.close()


async def test_check_command_prints_each_cluster(aws: Aws, ca_pem: bytes) -> None:
    aws.eks.put(REGION, eks_cluster("ok", REGION, CLOSED, ca_pem))
    aws.eks.put(REGION, eks_cluster("updating", REGION, CLOSED, ca_pem, status="UPDATING"))
    parser = argparse.ArgumentParser()
    flags.add_arguments(parser)
    args = parser.parse_args([f"--aws-cluster-names={REGION}/ok,{REGION}/updating,{REGION}/gone"])
    out = io.StringIO()
    assert await check.run_check(args, out=out) == 1
    lines = out.getvalue().splitlines()
    assert lines[0].split() == [
        "OK",
        "us-east-1/ok",
        "id=eks_us-east-1_ok",
        f"server={CLOSED}",
        "verified-with=cluster",
        "CA",
    ]
    assert lines[1].split() == ["NOT", "ACTIVE", "us-east-1/updating", "status=UPDATING"]
    assert lines[2].startswith(
        "ERROR        us-east-1/gone  ResourceNotFoundException: An error occurred (ResourceNotFoundException) when calling the DescribeCluster operation: No cluster found for name: gone."
    )


async def test_check_command_without_credentials(aws: Aws, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    parser = argparse.ArgumentParser()
    flags.add_arguments(parser)
    out = io.StringIO()
    assert await check.run_check(parser.parse_args([f"--aws-cluster-names={REGION}/ok"]), out=out) == 1
    assert "--aws-cluster-names is set but no AWS credentials were found" in out.getvalue()


def test_check_command_without_clusters_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert check.main([]) == 2
    assert "no EKS clusters configured (--aws-cluster-names)" in capsys.readouterr().out


RBAC = ("pods", "namespaces", "nodes")


async def grant_read(cluster, user: str) -> None:  # type: ignore[no-untyped-def]
    """A ClusterRole reading what the tracker watches, bound to ``user`` (what the access entry maps to)."""
    async with cluster.api_client() as api:
        rbac = client.RbacAuthorizationV1Api(api)
        await rbac.create_cluster_role(
            {
                "metadata": {"name": "kube-ip-tracker"},
                "rules": [{"apiGroups": [""], "resources": list(RBAC), "verbs": ["get", "list", "watch"]}],
            }
        )
        await rbac.create_cluster_role_binding(
            {
                "metadata": {"name": "kube-ip-tracker"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "kube-ip-tracker"},
                "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
            }
        )


@pytest.mark.cluster
async def test_real_api_server_accepts_eks_tokens_through_the_webhook(  # type: ignore[no-untyped-def]
    aws: Aws, cluster_factory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    webhook = TokenWebhook(aws.sts, {aws.me.arn: MappedUser("eks:kube-ip-tracker")}).start()
    try:
        (prod,) = cluster_factory(
            1, names=["prod"], authorization_mode="RBAC", extra_apiserver_args=webhook.apiserver_args(tmp_path, "prod")
        )
        await grant_read(prod, "eks:kube-ip-tracker")
        async with prod.api_client() as api:
            await objects.label_namespace(api, "kube-system", {CLUSTER_ID_LABEL: "prod-us"})
        aws.eks.put(REGION, eks_cluster("prod", REGION, prod.server, prod.ca_file))
        # "other" points at prod's API server: its tokens are signed for "other", prod's webhook refuses them.
        aws.eks.put(REGION, eks_cluster("other", REGION, prod.server, prod.ca_file))

        discovery = EksDiscovery(AwsClients(aws.session()))
        result = await discovery.fetch([name("prod"), name("other")])
        await discovery.close()
        spec = result.specs[name("prod")]
        assert spec.cluster_id == "prod-us"  # read with the EKS token: authenticated and authorised
        async with api_client(spec) as api:
            namespaces = await client.CoreV1Api(api).list_namespace()
            assert "kube-system" in {ns.metadata.name for ns in namespaces.items}
            with pytest.raises(client.ApiException) as denied:  # RBAC: only what the tracker needs
                await client.CoreV1Api(api).list_namespaced_secret("kube-system")
            assert denied.value.status == 403 and "eks:kube-ip-tracker" in str(denied.value.body)
        assert ("prod", "eks:kube-ip-tracker") in webhook.reviews

        assert result.specs[name("other")].cluster_id == "eks_us-east-1_other"
        warning = next(m for m in caplog.messages if "EKS cluster us-east-1/other" in m)
        assert "HTTP 401 reading namespace kube-system: the API server rejected the EKS token" in warning
        assert any(
            r
            == (
                "prod",
                "rejected: STS rejected the token: SignatureDoesNotMatch: The request signature we calculated does not match",
            )
            for r in webhook.reviews
        )
    finally:
        webhook.stop()
