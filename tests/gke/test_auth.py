"""GoogleTokenProvider: refresh near expiry, one refresh for concurrent callers, failures."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest

from kube_ip_tracker.gke.auth import GoogleTokenProvider, TokenError
from kube_ip_tracker.kube.kubeconfig import install_token_provider
from kube_ip_tracker.testing.fake_gke import SequenceCredentials


class Clock:
    """A settable naive-UTC clock for the provider."""

    def __init__(self) -> None:
        self.now = dt.datetime.now(dt.UTC).replace(tzinfo=None)

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += dt.timedelta(seconds=seconds)


def _provider(creds: SequenceCredentials, clock: Clock, margin: float = 300) -> GoogleTokenProvider:
    return GoogleTokenProvider(creds, refresh_margin=margin, request_factory=object, now=clock)


async def test_first_call_refreshes_then_token_is_reused_until_near_expiry() -> None:
    creds, clock = SequenceCredentials(["t1", "t2"], lifetime=3600), Clock()
    provider = _provider(creds, clock)
    assert await provider() == "t1"
    clock.advance(3000)  # 600 s left, margin 300: still fine
    assert await provider() == "t1"
    clock.advance(400)  # 200 s left: refresh
    assert await provider() == "t2"
    assert creds.refreshes == 2


async def test_concurrent_callers_share_one_refresh() -> None:
    creds = SequenceCredentials(["t1", "t2", "t3"])
    provider = _provider(creds, Clock())
    tokens = await asyncio.gather(*(provider() for _ in range(20)))
    assert set(tokens) == {"t1"}
    assert creds.refreshes == 1


async def test_failed_refresh_keeps_a_still_valid_token_and_fails_once_expired() -> None:
    creds, clock = SequenceCredentials(["t1"], lifetime=600), Clock()
    provider = _provider(creds, clock)
    assert await provider() == "t1"
    clock.advance(400)  # inside the margin: refresh fails (no token left), old one still valid
    assert await provider() == "t1"
    clock.advance(300)  # expired
    with pytest.raises(TokenError, match="refreshing Google credentials failed"):
        await provider()


async def test_sources_token_hook_asks_the_provider_per_request() -> None:
    from kubernetes_asyncio import client

    creds, clock = SequenceCredentials(["t1", "t2"], lifetime=600), Clock()
    provider = _provider(creds, clock)
    cfg = client.Configuration()
    install_token_provider(cfg, provider)
    assert (await cfg.auth_settings())["BearerToken"]["value"] == "Bearer t1"
    clock.advance(400)
    assert (await cfg.auth_settings())["BearerToken"]["value"] == "Bearer t2"
