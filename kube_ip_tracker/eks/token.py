"""EKS bearer tokens: ``k8s-aws-v1.`` + base64url (no padding) of a presigned STS ``GetCallerIdentity`` URL.

The URL is signed (SigV4, query parameters) with the tracker's AWS credentials, the ones botocore's
default chain finds: environment, IRSA web identity (``AWS_ROLE_ARN`` + ``AWS_WEB_IDENTITY_TOKEN_FILE``),
EKS Pod Identity (``AWS_CONTAINER_CREDENTIALS_FULL_URI``), instance profile. The signature covers the
header ``x-k8s-aws-id: <cluster name>``, so a token is good for one cluster only. The API server's
authenticator replays the URL to STS to learn who signed it, and accepts the token for 15 minutes
after its ``X-Amz-Date`` (``X-Amz-Expires=60`` is what ``aws eks get-token`` sends too).

:class:`EksTokenProvider` is the :data:`~kube_ip_tracker.model.TokenProvider` of one cluster: it
makes a new token once the current one is ``refresh_interval`` old, in a worker thread (refreshing
temporary credentials may call STS or the Pod Identity agent). The sources ask for the token before
each request, so running watches are never interrupted by a refresh.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import Callable
from typing import Any

import botocore.session
from botocore.client import BaseClient
from botocore.exceptions import BotoCoreError, ClientError

from kube_ip_tracker.eks import metrics

log = logging.getLogger(__name__)

TOKEN_PREFIX = "k8s-aws-v1."
K8S_AWS_ID_HEADER = "x-k8s-aws-id"
PRESIGN_EXPIRES = 60
TOKEN_LIFETIME = 900.0  # the API server accepts a token this long after it was signed
DEFAULT_REFRESH_INTERVAL = 600.0  # a token in use always has at least 5 minutes left
_PARAM = "K8sAwsId"  # not an STS parameter: moved into the request context, then into the signed header


class TokenError(RuntimeError):
    """No valid EKS token could be made (no usable AWS credentials, and the current token is too old)."""


def _take_cluster_param(params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
    if _PARAM in params:
        context["eks_cluster"] = params.pop(_PARAM)


def _sign_cluster_header(request: Any, **_: Any) -> None:
    cluster = request.context.get("eks_cluster")
    if cluster is not None:
        request.headers[K8S_AWS_ID_HEADER] = cluster


def sts_client(session: botocore.session.Session, region: str) -> BaseClient:
    """An STS client of ``region`` able to presign tokens (``AWS_ENDPOINT_URL_STS`` names another endpoint)."""
    client = session.create_client("sts", region_name=region)
    client.meta.events.register("provide-client-params.sts.GetCallerIdentity", _take_cluster_param)
    client.meta.events.register("before-sign.sts.GetCallerIdentity", _sign_cluster_header)
    return client


def make_token(sts: BaseClient, cluster_name: str) -> str:
    """A new token for EKS cluster ``cluster_name`` (blocking: may refresh the credentials)."""
    url = sts.generate_presigned_url(
        "get_caller_identity", Params={_PARAM: cluster_name}, ExpiresIn=PRESIGN_EXPIRES, HttpMethod="GET"
    )
    return TOKEN_PREFIX + base64.urlsafe_b64encode(url.encode()).decode().rstrip("=")


class EksTokenProvider:
    """Async callable returning a valid EKS token for one cluster, made anew every ``refresh_interval``.

    Concurrent callers share one refresh. When a refresh fails (credentials unavailable), the current
    token is kept while the API server still accepts it (``lifetime``); after that :class:`TokenError`.
    """

    def __init__(
        self,
        sts: BaseClient,
        cluster_name: str,
        *,
        refresh_interval: float = DEFAULT_REFRESH_INTERVAL,
        lifetime: float = TOKEN_LIFETIME,
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        self.sts = sts
        self.cluster_name = cluster_name
        self.refresh_interval = refresh_interval
        self.lifetime = lifetime
        self._now = now
        self._token = ""
        self._made_at = 0.0
        self._lock = asyncio.Lock()

    def _age(self) -> float:
        return self._now() - self._made_at

    async def __call__(self) -> str:
        """The current token, or a new one when it is ``refresh_interval`` old."""
        if self._token and self._age() < self.refresh_interval:
            return self._token
        async with self._lock:
            if self._token and self._age() < self.refresh_interval:
                return self._token
            try:
                token = await asyncio.to_thread(make_token, self.sts, self.cluster_name)
            except (BotoCoreError, ClientError) as exc:
                metrics.TOKEN_REFRESHES.labels(result="error").inc()
                if not self._token or self._age() >= self.lifetime:
                    raise TokenError(f"EKS cluster {self.cluster_name}: cannot make a token: {exc}") from exc
                log.warning(
                    "EKS cluster %s: making a new token failed, using the current one (%.0fs old) until it expires: %s",
                    self.cluster_name,
                    self._age(),
                    exc,
                )
                return self._token
            metrics.TOKEN_REFRESHES.labels(result="ok").inc()
            self._token, self._made_at = token, self._now()
            log.debug("EKS cluster %s: made a new token", self.cluster_name)
            return token
