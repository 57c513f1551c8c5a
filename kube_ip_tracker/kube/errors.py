"""Errors of the Kubernetes sources and their one-line descriptions (for logs, metrics and status)."""

from __future__ import annotations

import json

import aiohttp
from kubernetes_asyncio.client.exceptions import ApiException

from kube_ip_tracker.kube.kubeconfig import KubeconfigError

# Message of an API server asked for a resourceVersion newer than it has (HTTP 504 or a watch ERROR).
TOO_LARGE = "Too large resource version"


class ResourceExpired(Exception):
    """The resourceVersion to watch from (or a list continue token) is too old: relist."""


class ConnectError(Exception):
    """Reading the kube-system namespace failed; the message says why (the cause is chained)."""


class ProbeFailed(Exception):
    """Liveness probes kept failing: reconnect."""


class WatchError(Exception):
    """A watch ERROR event other than 410."""

    def __init__(self, code: object, message: str) -> None:
        super().__init__(f"watch error {code}: {message}")
        self.code = code


def _status_message(exc: ApiException) -> str:
    body = exc.body
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    if isinstance(body, str) and body:
        try:
            decoded = json.loads(body)
        except ValueError:
            return body.strip()[:300]
        if isinstance(decoded, dict) and decoded.get("message"):
            return str(decoded["message"])
    return str(exc.reason or "")


def describe_error(exc: BaseException, what: str) -> tuple[str, str]:
    """(metric reason, human message) for an error of request ``what`` (e.g. "list pods")."""
    if isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        return describe_error(exc.exceptions[0], what)
    if isinstance(exc, ConnectError):
        cause = exc.__cause__
        return (describe_error(cause, what)[0] if cause is not None else "other"), str(exc)
    if isinstance(exc, ProbeFailed):
        return "unreachable", str(exc)
    if isinstance(exc, ResourceExpired):
        return "expired", f"{what}: resource version expired (410 Gone): {exc}"
    if isinstance(exc, ApiException):
        message = _status_message(exc)
        if exc.status == 401:
            return "unauthorized", f"{what}: unauthorized (401): the API server rejected the credentials"
        if exc.status == 403:
            return "forbidden", f"{what}: forbidden (403): {message}"
        if exc.status == 410:
            return "expired", f"{what}: resource version expired (410 Gone): {message}"
        if TOO_LARGE in message:
            # The API server is behind our resourceVersion (e.g. etcd restored from a backup): relist.
            return "expired", f"{what}: resource version not reached by the API server: {message}"
        return "api", f"{what}: API error {exc.status}: {message}"
    if isinstance(exc, WatchError):
        return ("expired" if TOO_LARGE in str(exc) else "api"), f"{what}: {exc}"
    if isinstance(exc, KubeconfigError):
        return "config", str(exc)
    if isinstance(exc, (TimeoutError, aiohttp.ServerTimeoutError)):
        return "timeout", f"{what}: timed out"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return "unreachable", f"{what}: cannot connect to {exc.host}:{exc.port}: {exc.os_error}"
    if isinstance(exc, (aiohttp.ClientError, OSError)):
        return "unreachable", f"{what}: connection failed: {type(exc).__name__}: {exc}"
    return "other", f"{what}: {type(exc).__name__}: {exc}"
