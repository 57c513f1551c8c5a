"""Ask a cluster's API server whether a service-account token is valid: the TokenReview API.

``KubeTokenReviewer(specs)`` looks the cluster id up in ``specs()`` (the clusters the tracker watches,
with the tracker's own credentials for them), and sends a ``TokenReview`` (authentication.k8s.io/v1)
with ``audiences=[kube-ip-tracker]``. It needs ``create`` on ``tokenreviews`` in that cluster.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import aiohttp
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from kube_ip_tracker.client.token import TOKEN_AUDIENCE
from kube_ip_tracker.kube.kubeconfig import api_client
from kube_ip_tracker.model import ClusterSpec

REVIEW_TIMEOUT = 10.0


class UnknownCluster(LookupError):
    """The caller named a cluster the tracker does not watch."""


class ReviewFailed(RuntimeError):
    """The cluster could not be asked (unreachable, refused the review): not the caller's fault."""


@dataclass(frozen=True)
class Review:
    """What the API server said: ``username`` when authenticated, else ``error``."""

    authenticated: bool
    username: str = ""
    error: str = ""


class KubeTokenReviewer:
    """TokenReviews in the clusters of ``specs()`` (cluster id -> how to reach its API server)."""

    def __init__(
        self,
        specs: Callable[[], Mapping[str, ClusterSpec]],
        audience: str = TOKEN_AUDIENCE,
        timeout: float = REVIEW_TIMEOUT,
    ) -> None:
        self.specs = specs
        self.audience = audience
        self.timeout = timeout

    async def review(self, cluster: str, token: str) -> Review:
        """Review ``token`` in ``cluster``: UnknownCluster, ReviewFailed, or the API server's answer."""
        spec = self.specs().get(cluster)
        if spec is None:
            raise UnknownCluster(cluster)
        body = client.V1TokenReview(spec=client.V1TokenReviewSpec(token=token, audiences=[self.audience]))
        try:
            async with asyncio.timeout(self.timeout), api_client(spec) as api:
                answer = await client.AuthenticationV1Api(api).create_token_review(body)
        except ApiException as e:
            raise ReviewFailed(f"TokenReview in cluster {cluster}: HTTP {e.status} {e.reason}") from None
        except (TimeoutError, OSError, ValueError, aiohttp.ClientError) as e:
            raise ReviewFailed(f"TokenReview in cluster {cluster}: {type(e).__name__}: {e}") from None
        status = answer.status
        if status is None or not status.authenticated:
            return Review(False, error=(status.error if status is not None else "") or "not authenticated")
        if self.audience not in (status.audiences or [self.audience]):
            return Review(False, error=f"token is not for audience {self.audience}")
        return Review(True, username=status.user.username if status.user else "")
