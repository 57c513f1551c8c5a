"""Fixtures of the EKS tests: local STS and EKS endpoints that botocore reaches through its environment."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import botocore.session
import pytest

from kube_ip_tracker.testing.fake_aws import AwsIdentity, FakeEks, FakeSts, aws_environment

REGION = "us-east-1"


@dataclass
class Aws:
    """The local AWS side of one test, and the tracker's IAM user."""

    sts: FakeSts
    eks: FakeEks
    me: AwsIdentity

    def session(self) -> botocore.session.Session:
        """A botocore session finding the credentials and endpoints through its default chain (the environment)."""
        return botocore.session.get_session()


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[Aws]:
    with FakeSts() as sts, FakeEks(sts.keys) as eks:
        me = sts.keys.add(AwsIdentity.user("kube-ip-tracker"))
        for key, value in aws_environment(eks, sts, REGION).items():
            monkeypatch.setenv(key, value)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", me.access_key_id)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", me.secret_key)
        for key in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE"):
            monkeypatch.delenv(key, raising=False)
        yield Aws(sts, eks, me)
