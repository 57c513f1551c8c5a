"""Callers of the Tracker service authenticated by service-account tokens (``--client-auth=token``).

Every Tracker RPC (health and reflection stay open, for probes) must carry ``authorization: Bearer
TOKEN`` and ``kube-ip-tracker-cluster: ID`` metadata (see :mod:`kube_ip_tracker.client.token`). The
token is checked with the TokenReview API of that cluster (:mod:`.token_review`); a cluster the
tracker does not watch is refused. The service account it belongs to must be in the allowed set.

- no token, a malformed one, an unknown cluster, a token the API server rejects: UNAUTHENTICATED;
- a valid token of a service account that is not allowed: PERMISSION_DENIED;
- the cluster cannot be asked (API server down): UNAVAILABLE, so the caller retries.

Verified tokens are cached (keyed by a hash, never the token itself) until they expire, at most
:data:`CACHE_MAX_SECONDS`, for at most ``cache_size`` tokens. Each refusal is counted in
``kube_ip_tracker_auth_refusals_total{reason}`` and logged with the method, the cluster, the service account
when known and the reason, never with the token.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import grpc
import grpc.aio
from prometheus_client import Counter

from kube_ip_tracker.client.token import AUTHORIZATION_METADATA, CLUSTER_METADATA
from kube_ip_tracker.server.token_review import Review, ReviewFailed, UnknownCluster

log = logging.getLogger(__name__)

#: The service accounts of manifests/install.yaml: the agent and the tracker (spoke -> hub).
DEFAULT_ALLOWED_SERVICE_ACCOUNTS = ("kube-system/kube-ip-agent", "kube-system/kube-ip-tracker")
DEFAULT_CACHE_SIZE = 10_000
#: A verified token is trusted without asking again for at most this long (a deleted service account
#: or pod invalidates its tokens: the tracker notices within this time).
CACHE_MAX_SECONDS = 300.0
SERVICE_ACCOUNT_PREFIX = "system:serviceaccount:"

AUTH_REFUSALS = Counter(
    "kube_ip_tracker_auth_refusals_total",
    "Tracker RPCs refused by token authentication, by reason (missing_token, malformed_token, "
    "unknown_cluster, invalid_token, not_allowed, review_failed, internal)",
    ["reason"],
)
TOKEN_REVIEWS = Counter(
    "kube_ip_tracker_token_reviews_total",
    "TokenReviews sent to the clusters' API servers (cache misses), by result (authenticated, rejected, failed)",
    ["result"],
)


class Reviewer(Protocol):
    async def review(self, cluster: str, token: str) -> Review: ...


class Refused(Exception):
    """An RPC refused: ``code`` for the caller, ``reason`` for the metric, ``detail`` for both."""

    def __init__(self, code: grpc.StatusCode, reason: str, detail: str, who: str = "") -> None:
        super().__init__(detail)
        self.code, self.reason, self.detail, self.who = code, reason, detail, who


def parse_service_accounts(value: str | Iterable[str]) -> frozenset[str]:
    """``NAMESPACE/NAME,...`` -> the set; ValueError naming a malformed entry."""
    items = value.split(",") if isinstance(value, str) else list(value)
    out = set()
    for item in (i.strip() for i in items):
        if not item:
            continue
        ns, sep, name = item.partition("/")
        if not sep or not ns or not name or "/" in name:
            raise ValueError(f"--allowed-service-accounts: {item!r} is not NAMESPACE/NAME")
        out.add(item)
    if not out:
        raise ValueError("--allowed-service-accounts names no service account")
    return frozenset(out)


def token_expiry(token: str) -> float | None:
    """The ``exp`` claim of a JWT, read without verifying it (only used once the API server accepted it)."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, binascii.Error):
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    return float(exp) if isinstance(exp, int | float) else None


@dataclass(frozen=True)
class _Verified:
    service_account: str  # NAMESPACE/NAME, or "" for a user that is no service account
    username: str
    until: float


class TokenAuthenticator:
    """Checks the metadata of a call: the caller's service account, or :class:`Refused`."""

    def __init__(
        self,
        reviewer: Reviewer,
        allowed: Iterable[str] = DEFAULT_ALLOWED_SERVICE_ACCOUNTS,
        *,
        cache_size: int = DEFAULT_CACHE_SIZE,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if cache_size < 1:
            raise ValueError(f"token cache size must be at least 1, got {cache_size}")
        self.reviewer = reviewer
        self.allowed = frozenset(allowed)
        self.cache_size = cache_size
        self.clock = clock
        self._cache: OrderedDict[bytes, _Verified] = OrderedDict()

    async def authenticate(self, metadata: Sequence[tuple[str, Any]]) -> str:
        """The allowed service account (NAMESPACE/NAME) that made the call; Refused otherwise."""
        values = {k.lower(): v for k, v in metadata if isinstance(v, str)}
        header = values.get(AUTHORIZATION_METADATA, "")
        if not header:
            raise Refused(grpc.StatusCode.UNAUTHENTICATED, "missing_token", "no service-account token sent")
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Refused(grpc.StatusCode.UNAUTHENTICATED, "malformed_token", "authorization is not 'Bearer TOKEN'")
        cluster = values.get(CLUSTER_METADATA, "").strip()
        if not cluster:
            raise Refused(
                grpc.StatusCode.UNAUTHENTICATED,
                "unknown_cluster",
                f"no {CLUSTER_METADATA} metadata naming the cluster that issued the token",
            )
        verified = await self._verified(cluster, token)
        if verified.service_account not in self.allowed:
            raise Refused(
                grpc.StatusCode.PERMISSION_DENIED,
                "not_allowed",
                f"{verified.username} of cluster {cluster} may not read the tracker",
                who=verified.username,
            )
        return verified.service_account

    async def _verified(self, cluster: str, token: str) -> _Verified:
        key = hashlib.sha256(f"{cluster}\0{token}".encode()).digest()
        now = self.clock()
        hit = self._cache.get(key)
        if hit is not None and hit.until > now:
            self._cache.move_to_end(key)
            return hit
        self._cache.pop(key, None)
        try:
            review = await self.reviewer.review(cluster, token)
        except UnknownCluster:
            raise Refused(
                grpc.StatusCode.UNAUTHENTICATED,
                "unknown_cluster",
                f"cluster {cluster!r} is not watched by this tracker",
            ) from None
        except ReviewFailed as e:
            TOKEN_REVIEWS.labels("failed").inc()
            raise Refused(grpc.StatusCode.UNAVAILABLE, "review_failed", f"cannot verify the token now: {e}") from None
        if not review.authenticated:
            TOKEN_REVIEWS.labels("rejected").inc()
            raise Refused(
                grpc.StatusCode.UNAUTHENTICATED,
                "invalid_token",
                f"cluster {cluster} rejected the token: {review.error}",
            )
        TOKEN_REVIEWS.labels("authenticated").inc()
        verified = _Verified(_service_account(review.username), review.username, self._until(token, now))
        self._cache[key] = verified
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return verified

    @staticmethod
    def _until(token: str, now: float) -> float:
        exp = token_expiry(token)
        return min(exp if exp is not None else now, now + CACHE_MAX_SECONDS)


def _service_account(username: str) -> str:
    """``system:serviceaccount:NS:NAME`` -> ``NS/NAME``; "" for other users."""
    if not username.startswith(SERVICE_ACCOUNT_PREFIX):
        return ""
    ns, sep, name = username[len(SERVICE_ACCOUNT_PREFIX) :].partition(":")
    return f"{ns}/{name}" if sep and ns and name else ""


class TokenAuthInterceptor(grpc.aio.ServerInterceptor):
    """Runs :class:`TokenAuthenticator` before every RPC of ``service`` (others pass: health, reflection)."""

    def __init__(self, authenticator: TokenAuthenticator, service: str) -> None:
        self.authenticator = authenticator
        self.prefix = f"/{service}/"

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or not method.startswith(self.prefix):
            return handler
        try:
            await self.authenticator.authenticate(handler_call_details.invocation_metadata or ())
        except Refused as e:
            refused = e
        except Exception:  # a bug here must refuse the call, never let it through or kill the server
            log.exception("Token authentication of %s failed unexpectedly", method)
            refused = Refused(grpc.StatusCode.INTERNAL, "internal", "token authentication failed")
        else:
            return handler
        AUTH_REFUSALS.labels(refused.reason).inc()
        log.warning("Refused %s (%s): %s", method, refused.code.name, refused.detail)
        return _refusal(handler, refused)


def _refusal(handler: grpc.RpcMethodHandler, refused: Refused) -> grpc.RpcMethodHandler:
    """A handler of the same kind as ``handler`` that ends the call with the refusal's status."""

    async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(refused.code, refused.detail)

    async def streaming(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(refused.code, refused.detail)
        yield  # pragma: no cover - abort raises

    des = handler.request_deserializer
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(streaming, request_deserializer=des)
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(unary, request_deserializer=des)
    raise TypeError(f"TokenAuthInterceptor does not guard streaming-request RPCs ({handler!r})")
