"""Token refresh against a real API server: open watches keep running, new requests use the new token."""

from __future__ import annotations

import asyncio

import pytest
from kubernetes_asyncio import client, watch

from kube_ip_tracker.gke.auth import GoogleTokenProvider
from kube_ip_tracker.kube.kubeconfig import install_token_provider
from kube_ip_tracker.testing import objects
from kube_ip_tracker.testing.fake_gke import SequenceCredentials

pytestmark = pytest.mark.cluster


async def next_event_about(seen: asyncio.Queue[str], name: str, within: float = 10.0) -> str:
    """The next watch event about namespace ``name``; events about others are skipped.

    The API server may still be creating its own namespaces (default, kube-public, ...) when the
    test lists: the watch from that list then delivers their ADDED events too, in any order.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        event = await asyncio.wait_for(seen.get(), max(0.0, deadline - loop.time()))
        if event.split(" ", 1)[1] == name:
            return event


async def test_refreshed_token_used_for_new_requests_while_watch_stays_open(cluster_factory) -> None:
    # The API server knows wi-1 and wi-2; wi-revoked is unknown to it (401).
    (cluster,) = cluster_factory(1, extra_tokens=["wi-1", "wi-2"])
    creds = SequenceCredentials(["wi-1", "wi-2", "wi-revoked"], lifetime=3600)
    provider = GoogleTokenProvider(creds, refresh_margin=60)

    def expire_soon() -> None:
        creds.expiry = creds.expiry.replace(year=creds.expiry.year - 1)  # force the next call to refresh

    cfg = client.Configuration()
    cfg.host = cluster.server
    cfg.ssl_ca_cert = str(cluster.ca_file)
    install_token_provider(cfg, provider)  # the hook the sources install for GKE clusters
    seen: asyncio.Queue[str] = asyncio.Queue()

    async with client.ApiClient(cfg) as api, cluster.api_client() as admin:
        core = client.CoreV1Api(api)
        listed = await core.list_namespace()
        assert creds.token == "wi-1"

        async def watch_namespaces() -> None:
            w = watch.Watch()
            async with w.stream(
                core.list_namespace, resource_version=listed.metadata.resource_version, timeout_seconds=60
            ) as stream:
                async for event in stream:
                    await seen.put(f"{event['type']} {event['object'].metadata.name}")

        watcher = asyncio.create_task(watch_namespaces())
        try:
            await objects.create_namespace(admin, "before-refresh")
            assert await next_event_about(seen, "before-refresh") == "ADDED before-refresh"  # the watch is open

            expire_soon()
            await core.list_namespace(limit=1)  # a new request: refreshes and carries wi-2
            assert (creds.token, creds.refreshes) == ("wi-2", 2)
            await objects.create_namespace(admin, "after-refresh")
            assert await next_event_about(seen, "after-refresh") == "ADDED after-refresh"

            # Proof that each new request carries the provider's current token: an unknown token fails...
            expire_soon()
            with pytest.raises(client.ApiException) as err:
                await core.list_namespace(limit=1)
            assert err.value.status == 401
            # ...while the watch opened with wi-1 keeps delivering events.
            await objects.create_namespace(admin, "after-revoke")
            assert await next_event_about(seen, "after-revoke") == "ADDED after-revoke"
            assert not watcher.done()
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
