"""The agent's NetworkPolicy informer notices a frozen (SIGSTOPped) API server through the tracker's
liveness probe: it reports itself disconnected (attribute, metric, log), keeps enforcing the last known
policies and stays synced (readiness unaffected), reconnects, and follows changes again after the thaw."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace

import pytest
from kubernetes_asyncio import client

from kube_ip_tracker.agent.networkpolicies import NetworkPolicyInformer
from kube_ip_tracker.kube.kubeconfig import static_specs
from kube_ip_tracker.testing import objects
from kube_ip_tracker.testing.polling import eventually

from .test_networkpolicies import FAST, NS, allowed, metric, policy, running, world

pytestmark = pytest.mark.cluster

LIVENESS = replace(FAST, probe_interval=0.3, probe_timeout=0.5, probe_failures_to_reconnect=3)
LOGGER = "kube_ip_tracker.agent.networkpolicies"


def reconnects(cluster: str) -> float:
    """Connections the informer dropped because the liveness probes kept failing."""
    return metric("kube_ip_tracker_source_errors_total", cluster=cluster, kind="networkpolicies", reason="unreachable")


async def test_frozen_api_server_is_reported_policies_kept_and_reconnected_after_thaw(cluster_factory, caplog) -> None:  # type: ignore[no-untyped-def]
    (cluster,) = cluster_factory(1)
    (spec,) = static_specs([cluster.kubeconfig])
    cid = spec.cluster_id
    async with cluster.api_client() as api:
        await objects.create_namespace(api, NS)
        await client.NetworkingV1Api(api).create_namespaced_network_policy(NS, policy("db-from-web", "web"))

    engine = world(cid)
    changes: list[int] = []
    informer = NetworkPolicyInformer(spec, engine, options=LIVENESS, on_change=lambda: changes.append(1))
    caplog.set_level(logging.INFO, logger=LOGGER)
    caplog.set_level(logging.INFO, logger="kube_ip_tracker.sources.kube")
    async with running(informer) as task:
        await asyncio.wait_for(informer.wait_synced(), 30)
        assert informer.connected and metric("kube_ip_agent_networkpolicies_connected", cluster=cid) == 1
        assert allowed(engine, "10.0.0.1") and not allowed(engine, "10.0.0.2")
        reconnects_before = reconnects(cid)
        changes_before = len(changes)

        cluster.freeze_apiserver()
        try:
            await eventually(lambda: not informer.connected, "frozen API server noticed", 10)
            assert "liveness probe failed" in informer.last_error
            assert metric("kube_ip_agent_networkpolicies_connected", cluster=cid) == 0
            disconnected = [r for r in caplog.records if "informer disconnected" in r.getMessage()]
            assert disconnected and disconnected[0].levelno == logging.ERROR
            assert "enforcing the 1 last known policies" in disconnected[0].getMessage()
            # Several failures in a row: the connection is dropped and opened again (still frozen).
            await eventually(lambda: reconnects(cid) > reconnects_before, "reconnect after failed probes", 15)
            # Meanwhile the last known policies are enforced and the informer counts as synced (ready).
            assert informer.synced and metric("kube_ip_agent_networkpolicies_synced", cluster=cid) == 1
            assert allowed(engine, "10.0.0.1") and not allowed(engine, "10.0.0.2")
            assert len(changes) == changes_before and not task.done()
        finally:
            cluster.thaw_apiserver()

        await eventually(lambda: informer.connected, "connected again after the thaw", 30)
        assert metric("kube_ip_agent_networkpolicies_connected", cluster=cid) == 1
        assert any("connected again" in r.getMessage() for r in caplog.records)
        async with cluster.api_client() as api:  # changes made after the thaw arrive
            net = client.NetworkingV1Api(api)
            await net.replace_namespaced_network_policy("db-from-web", NS, policy("db-from-web", "api"))
        await eventually(lambda: allowed(engine, "10.0.0.2") and not allowed(engine, "10.0.0.1"), "update after thaw")
        assert informer.connected
