"""Google credentials as a bearer-token source for GKE API servers.

One credentials object (application default credentials; on GKE the Workload Identity service
account) is shared by the GKE API client and every discovered cluster. :class:`GoogleTokenProvider`
is the :data:`~kube_ip_tracker.model.TokenProvider` handed to the sources: each call returns a token
that stays valid for at least ``refresh_margin`` seconds, refreshing it in a worker thread when
expiry is near. The sources ask for the token before each request
(:func:`kube_ip_tracker.kube.kubeconfig.install_token_provider`), so they pick up a new token
without restarting watches that are already open.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import threading
from collections.abc import Callable
from typing import Any

import google.auth
import google.auth.transport.requests
from google.auth import credentials as ga_credentials
from google.auth import exceptions as ga_exceptions

from kube_ip_tracker.gke import metrics

log = logging.getLogger(__name__)

CLOUD_PLATFORM_SCOPE = "https://www.googleapis.com/auth/cloud-platform"
DEFAULT_REFRESH_MARGIN = 300.0


class TokenError(RuntimeError):
    """No valid token could be obtained (the refresh failed and the current token is expired)."""


def default_credentials() -> tuple[ga_credentials.Credentials, str | None]:
    """Application default credentials with the cloud-platform scope, and the project they name (if any)."""
    creds, project = google.auth.default(scopes=[CLOUD_PLATFORM_SCOPE])
    return creds, project


def _utcnow() -> dt.datetime:
    # google-auth keeps ``expiry`` as a naive UTC datetime.
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


class GoogleTokenProvider:
    """Async callable returning a valid OAuth2 access token from shared Google credentials.

    Refreshes run in a thread (``google.auth.transport.requests``) so the event loop never blocks;
    an asyncio lock makes concurrent callers share one refresh, and a thread lock keeps this
    provider's refreshes apart from the ones the gRPC client's auth plugin makes on the same object.
    """

    def __init__(
        self,
        credentials: ga_credentials.Credentials,
        *,
        refresh_margin: float = DEFAULT_REFRESH_MARGIN,
        request_factory: Callable[[], Any] = google.auth.transport.requests.Request,
        now: Callable[[], dt.datetime] = _utcnow,
    ) -> None:
        self.credentials = credentials
        self.refresh_margin = dt.timedelta(seconds=refresh_margin)
        self._request_factory = request_factory
        self._now = now
        self._lock = asyncio.Lock()
        self._thread_lock = threading.Lock()

    def _needs_refresh(self) -> bool:
        creds = self.credentials
        if not creds.token:
            return True
        expiry = getattr(creds, "expiry", None)
        if expiry is None:
            return False  # a token without expiry (e.g. a fixed test token) never needs a refresh
        return expiry - self._now() <= self.refresh_margin

    def _expired(self) -> bool:
        expiry = getattr(self.credentials, "expiry", None)
        return not self.credentials.token or (expiry is not None and expiry <= self._now())

    def _refresh_blocking(self) -> None:
        with self._thread_lock:
            if not self._needs_refresh():  # another thread refreshed while we waited
                return
            self.credentials.refresh(self._request_factory())

    async def __call__(self) -> str:
        """Return a token valid for at least ``refresh_margin`` (or the still-valid old one if a refresh fails)."""
        if not self._needs_refresh():
            return str(self.credentials.token)
        async with self._lock:
            if self._needs_refresh():
                try:
                    await asyncio.to_thread(self._refresh_blocking)
                except ga_exceptions.GoogleAuthError as exc:
                    metrics.TOKEN_REFRESHES.labels(result="error").inc()
                    if self._expired():
                        raise TokenError(f"refreshing Google credentials failed: {exc}") from exc
                    log.warning(
                        "Refreshing Google credentials failed, using the current token until it expires: %s", exc
                    )
                    return str(self.credentials.token)
                metrics.TOKEN_REFRESHES.labels(result="ok").inc()
                expiry = getattr(self.credentials, "expiry", None)
                if expiry is not None:
                    metrics.TOKEN_EXPIRY.set(expiry.replace(tzinfo=dt.UTC).timestamp())
                log.info("Refreshed Google access token (expires %s UTC)", expiry)
            return str(self.credentials.token)
