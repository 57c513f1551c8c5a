"""EKS tokens made with botocore's real STS client against the local STS, checked by the local webhook."""

from __future__ import annotations

import asyncio
import base64
import urllib.parse
from pathlib import Path

import pytest
from botocore.exceptions import NoCredentialsError

from kube_ip_tracker.eks import metrics
from kube_ip_tracker.eks.token import EksTokenProvider, TokenError, make_token, sts_client
from kube_ip_tracker.testing.fake_aws import (
    ACCOUNT,
    FakePodIdentityAgent,
    FakeSts,
    MappedUser,
    TokenWebhook,
    WebIdentityRole,
)

from .conftest import REGION, Aws


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def decode(token: str) -> urllib.parse.SplitResult:
    assert token.startswith("k8s-aws-v1.")
    body = token.removeprefix("k8s-aws-v1.")
    assert "=" not in body and "+" not in body and "/" not in body  # base64url without padding
    return urllib.parse.urlsplit(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)).decode())


def test_token_is_a_presigned_get_caller_identity_for_one_cluster(aws: Aws) -> None:
    token = make_token(sts_client(aws.session(), REGION), "prod")
    url = decode(token)
    query = dict(urllib.parse.parse_qsl(url.query))
    assert f"{url.scheme}://{url.netloc}" == aws.sts.url
    assert (query["Action"], query["Version"], query["X-Amz-Expires"]) == ("GetCallerIdentity", "2011-06-15", "60")
    assert query["X-Amz-SignedHeaders"].split(";") == ["host", "x-k8s-aws-id"]
    assert (
        query["X-Amz-Credential"].startswith(f"{aws.me.access_key_id}/")
        and f"/{REGION}/sts/" in query["X-Amz-Credential"]
    )

    webhook = TokenWebhook(aws.sts, {aws.me.arn: MappedUser("eks-tracker", ["kube-ip-tracker"])})
    assert webhook.review("prod", token) == MappedUser("eks-tracker", ["kube-ip-tracker"])
    assert aws.sts.callers == [aws.me.arn]
    # The signature covers the cluster name: the same token is no good for another cluster.
    with pytest.raises(ValueError, match="STS rejected the token: SignatureDoesNotMatch"):
        webhook.review("staging", token)
    tampered = "k8s-aws-v1." + base64.urlsafe_b64encode(
        urllib.parse.urlunsplit(url).replace(aws.me.access_key_id, "AKIAUNKNOWN000000000").encode()
    ).decode().rstrip("=")
    with pytest.raises(ValueError, match="InvalidClientTokenId"):
        webhook.review("prod", tampered)
    with pytest.raises(ValueError, match="no access entry"):
        TokenWebhook(aws.sts, {}).review("prod", token)


def test_token_expires_after_the_presign_lifetime(aws: Aws) -> None:
    aws.sts.presign_lifetime = -1  # every token is already too old
    token = make_token(sts_client(aws.session(), REGION), "prod")
    with pytest.raises(ValueError, match="ExpiredToken: Request has expired"):
        TokenWebhook(aws.sts, {aws.me.arn: MappedUser("u")}).review("prod", token)


async def test_provider_refreshes_after_its_interval_and_shares_refreshes(aws: Aws) -> None:
    clock = Clock()
    provider = EksTokenProvider(sts_client(aws.session(), REGION), "prod", refresh_interval=600, now=clock)
    before = metrics.TOKEN_REFRESHES.labels(result="ok")._value.get()
    tokens = await asyncio.gather(*(provider() for _ in range(5)))
    assert len(set(tokens)) == 1  # one refresh for concurrent callers
    clock.now += 599
    assert await provider() == tokens[0]
    await asyncio.sleep(1.1)  # SigV4 dates have one-second resolution: the next token differs
    clock.now += 1
    assert await provider() != tokens[0]
    assert metrics.TOKEN_REFRESHES.labels(result="ok")._value.get() == before + 2


async def test_provider_keeps_a_valid_token_when_credentials_vanish(aws: Aws, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    provider = EksTokenProvider(sts_client(aws.session(), REGION), "prod", refresh_interval=10, lifetime=900, now=clock)
    first = await provider()

    def no_credentials(*args: object, **kwargs: object) -> str:
        raise NoCredentialsError()

    monkeypatch.setattr(provider.sts, "generate_presigned_url", no_credentials)
    clock.now += 100
    assert await provider() == first  # still accepted by the API server: kept, with a warning
    clock.now += 800
    with pytest.raises(TokenError, match="EKS cluster prod: cannot make a token: Unable to locate credentials"):
        await provider()


def test_irsa_web_identity_credentials_from_the_default_chain(
    aws: Aws, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """AWS_ROLE_ARN + AWS_WEB_IDENTITY_TOKEN_FILE (what EKS injects for IRSA): botocore assumes the role at the
    local STS; tokens are signed with the temporary credentials and map to the role, as access entries do."""
    role = aws.sts.add_role(WebIdentityRole(f"arn:aws:iam::{ACCOUNT}:role/kube-ip-tracker", "projected-sa-token"))
    (tmp_path / "token").write_text("projected-sa-token")
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("AWS_ROLE_ARN", role.arn)
    monkeypatch.setenv("AWS_WEB_IDENTITY_TOKEN_FILE", str(tmp_path / "token"))
    monkeypatch.setenv("AWS_ROLE_SESSION_NAME", "tracker-pod")

    token = make_token(sts_client(aws.session(), REGION), "prod")
    (issued,) = aws.sts.issued
    assert issued.arn == f"arn:aws:sts::{ACCOUNT}:assumed-role/kube-ip-tracker/tracker-pod"
    query = dict(urllib.parse.parse_qsl(decode(token).query))
    assert query["X-Amz-Security-Token"] == issued.session_token
    assert (
        TokenWebhook(aws.sts, {role.arn: MappedUser("irsa-tracker")}).review("prod", token).username == "irsa-tracker"
    )

    (tmp_path / "token").write_text("someone-else")  # a wrong web identity token: no credentials at all
    with pytest.raises(Exception, match="AccessDenied"):
        make_token(sts_client(aws.session(), REGION), "prod")


def test_eks_pod_identity_credentials_from_the_default_chain(
    aws: Aws, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """AWS_CONTAINER_CREDENTIALS_FULL_URI + AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE (what EKS Pod Identity
    injects): botocore fetches the role's credentials from the agent; DescribeCluster and tokens use them."""
    role = f"arn:aws:iam::{ACCOUNT}:role/kube-ip-tracker"
    with FakePodIdentityAgent(aws.sts, role, "pod-sa-token") as agent:
        (tmp_path / "sa-token").write_text("pod-sa-token")
        monkeypatch.delenv("AWS_ACCESS_KEY_ID")
        monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
        monkeypatch.setenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", agent.credentials_uri)
        monkeypatch.setenv("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", str(tmp_path / "sa-token"))

        session = aws.session()
        token = make_token(sts_client(session, REGION), "prod")
        (issued,) = agent.issued
        assert dict(urllib.parse.parse_qsl(decode(token).query))["X-Amz-Security-Token"] == issued.session_token
        assert (
            TokenWebhook(aws.sts, {role: MappedUser("pod-identity")}).review("prod", token).username == "pod-identity"
        )
        with pytest.raises(Exception, match="ResourceNotFoundException"):  # signed with the same credentials
            session.create_client("eks", REGION).describe_cluster(name="prod")
        assert aws.eks.requests == [f"{REGION}/prod"]


def test_sts_rejects_an_unsigned_or_unknown_caller() -> None:
    with FakeSts() as sts:
        status, _, body = sts.handle("GET", "/?Action=GetCallerIdentity&Version=2011-06-15", {}, b"")
    assert status == 403 and b"MissingAuthenticationToken" in body
