"""The agent's NetworkPolicy informer against a real API server: changes reach the evaluator, an
invalid policy is reported and skipped, an expired watch (410) relists and removes what is gone."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
from typing import Any

import pytest
from kubernetes_asyncio import client
from prometheus_client import REGISTRY

from kube_ip_tracker.agent.networkpolicies import NetworkPolicyInformer
from kube_ip_tracker.agent.policy import PolicyEngine
from kube_ip_tracker.kube.kubeconfig import static_specs
from kube_ip_tracker.kube.reflector import InformerOptions
from kube_ip_tracker.model import NamespaceRecord, PodRecord
from kube_ip_tracker.testing import objects
from kube_ip_tracker.testing.clusters import LocalCluster
from kube_ip_tracker.testing.polling import eventually
from kube_ip_tracker.testing.trackers import background

pytestmark = pytest.mark.cluster

NS = "shop"
FAST = InformerOptions(page_size=2, backoff_base=0.05, backoff_cap=0.5, watch_timeout=30, request_timeout=10)


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def policy(name: str, allowed_app: str | None = None, *, namespace: str = NS) -> dict[str, Any]:
    """Ingress to app=db only from ``allowed_app`` (deny all ingress when None)."""
    spec: dict[str, Any] = {"podSelector": {"matchLabels": {"app": "db"}}, "policyTypes": ["Ingress"]}
    if allowed_app is not None:
        spec["ingress"] = [{"from": [{"podSelector": {"matchLabels": {"app": allowed_app}}}]}]
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def world(cluster: str) -> PolicyEngine:
    """An engine with pods web (10.0.0.1), api (10.0.0.2) and db (10.0.0.3) in namespace shop."""
    engine = PolicyEngine()
    engine.set_namespace(NamespaceRecord(cluster, NS, {"kubernetes.io/metadata.name": NS}))
    for index, app in enumerate(("web", "api", "db"), start=1):
        engine.set_pod(PodRecord(cluster, NS, app, {"app": app}, (), "node-1", (f"10.0.0.{index}",)))
    return engine


def allowed(engine: PolicyEngine, src: str) -> bool:
    return engine.decide(src, "10.0.0.3", "TCP", 5432).allowed


def put_in_etcd(cluster: LocalCluster, obj: dict[str, Any]) -> None:
    """Store an object straight in etcd, past the API server's validation (as a version skew could)."""
    meta = obj["metadata"]
    key = f"/registry/networkpolicies/{meta['namespace']}/{meta['name']}"
    body = {
        "key": base64.b64encode(key.encode()).decode(),
        "value": base64.b64encode(json.dumps(obj).encode()).decode(),
    }
    cluster._etcd_post("/v3/kv/put", body)


def running(informer: NetworkPolicyInformer) -> contextlib.AbstractAsyncContextManager[asyncio.Task[None]]:
    return background(informer.run())


async def test_policies_follow_the_api_server_and_invalid_ones_are_skipped(cluster_factory, caplog) -> None:  # type: ignore[no-untyped-def]
    (cluster,) = cluster_factory(1)
    (spec,) = static_specs([cluster.kubeconfig])
    cid = spec.cluster_id
    async with cluster.api_client() as api:
        await objects.create_namespace(api, NS)
        await objects.create_namespace(api, "other")
        net = client.NetworkingV1Api(api)
        for name in ("a", "b", "c"):  # two list pages
            await net.create_namespaced_network_policy("other", policy(name, namespace="other"))
        await net.create_namespaced_network_policy(NS, policy("db-from-web", "web"))

    engine = world(cid)
    changes: list[int] = []
    informer = NetworkPolicyInformer(spec, engine, options=FAST, on_change=lambda: changes.append(1))
    assert not informer.synced
    async with running(informer), cluster.api_client() as api:
        await asyncio.wait_for(informer.wait_synced(), 30)
        assert metric("kube_ip_agent_networkpolicies_synced", cluster=cid) == 1
        assert set(informer.policies) == {("other", "a"), ("other", "b"), ("other", "c"), (NS, "db-from-web")}
        assert allowed(engine, "10.0.0.1") and not allowed(engine, "10.0.0.2")
        assert changes, "the initial list changed the engine"

        net = client.NetworkingV1Api(api)
        # Update: the allowed peer changes.
        await net.replace_namespaced_network_policy("db-from-web", NS, policy("db-from-web", "api"))
        await eventually(lambda: allowed(engine, "10.0.0.2") and not allowed(engine, "10.0.0.1"), "update applied")

        # A policy the parser rejects (a CIDR prefix of 33) is reported, counted and not enforced;
        # the agent keeps running and keeps the other policies.
        before = metric("kube_ip_agent_networkpolicy_parse_errors_total", cluster=cid)
        bad = policy("bad-cidr", "web")
        bad["spec"]["ingress"] = [{"from": [{"ipBlock": {"cidr": "10.0.0.0/33"}}]}]
        bad["metadata"].update(uid="00000000-0000-0000-0000-000000000001", creationTimestamp="2026-01-01T00:00:00Z")
        with caplog.at_level(logging.ERROR, logger="kube_ip_tracker.agent.networkpolicies"):
            put_in_etcd(cluster, bad)
            await eventually(lambda: (NS, "bad-cidr") in informer.invalid, "invalid policy reported")
        assert metric("kube_ip_agent_networkpolicy_parse_errors_total", cluster=cid) == before + 1
        assert metric("kube_ip_agent_networkpolicies_invalid", cluster=cid) == 1
        assert "10.0.0.0/33" in informer.invalid[(NS, "bad-cidr")]
        message = next(r.getMessage() for r in caplog.records if "bad-cidr" in r.getMessage())
        assert f"NetworkPolicy {NS}/bad-cidr is invalid" in message and "spec.ingress[0]" in message
        assert (NS, "bad-cidr") not in informer.policies
        assert allowed(engine, "10.0.0.2") and not task_failed(informer)

        # The API server fixes it (a valid replacement): now enforced, no longer invalid.
        await net.replace_namespaced_network_policy("bad-cidr", NS, policy("bad-cidr"))
        await eventually(lambda: (NS, "bad-cidr") in informer.policies, "fixed policy enforced")
        assert not informer.invalid and metric("kube_ip_agent_networkpolicies_invalid", cluster=cid) == 0
        await net.delete_namespaced_network_policy("bad-cidr", NS)

        # Delete: db is no longer isolated.
        await net.delete_namespaced_network_policy("db-from-web", NS)
        await eventually(lambda: allowed(engine, "10.0.0.1") and allowed(engine, "10.0.0.2"), "delete applied")
        assert set(informer.policies) == {("other", "a"), ("other", "b"), ("other", "c")}
        assert metric("kube_ip_agent_networkpolicies", cluster=cid) == 3


def task_failed(informer: NetworkPolicyInformer) -> bool:
    """The informer keeps a synced state and a resourceVersion to resume from (it did not give up)."""
    return not (informer.synced and informer.resource_version)


async def test_expired_watch_relists_and_removes_what_is_gone(cluster_factory) -> None:  # type: ignore[no-untyped-def]
    (cluster,) = cluster_factory(1, watch_cache=False)
    (spec,) = static_specs([cluster.kubeconfig])
    cid = spec.cluster_id
    async with cluster.api_client() as api:
        await objects.create_namespace(api, NS)
        net = client.NetworkingV1Api(api)
        for name in ("gone", "kept", "changed"):
            await net.create_namespaced_network_policy(NS, policy(name, "web"))

    engine = world(cid)
    informer = NetworkPolicyInformer(spec, engine, options=FAST)
    async with running(informer):
        await asyncio.wait_for(informer.wait_synced(), 30)
    assert set(informer.policies) == {(NS, "gone"), (NS, "kept"), (NS, "changed")}
    old_version = informer.resource_version

    # While the informer is stopped, the policies change and etcd forgets the history.
    async with cluster.api_client() as api:
        net = client.NetworkingV1Api(api)
        await net.delete_namespaced_network_policy("gone", NS)
        await net.replace_namespaced_network_policy("changed", NS, policy("changed", "api"))
        await net.create_namespaced_network_policy(NS, policy("new", "api"))
    cluster.compact_etcd()

    expired_before = metric("kube_ip_tracker_source_lists_total", cluster=cid, kind="networkpolicies", reason="expired")
    async with running(informer):  # resumes the watch from old_version: 410, relist, reconcile
        await eventually(lambda: set(informer.policies) == {(NS, "kept"), (NS, "changed"), (NS, "new")}, "relisted")
    assert informer.resource_version != old_version
    assert (
        metric("kube_ip_tracker_source_lists_total", cluster=cid, kind="networkpolicies", reason="expired")
        == expired_before + 1
    )
    assert allowed(engine, "10.0.0.2") and allowed(engine, "10.0.0.1")  # kept allows web, changed/new allow api
    assert [p.name for p in engine.world.policies(cid, NS)] == ["changed", "kept", "new"]


async def test_unreachable_api_server_is_retried_until_it_answers(cluster_factory) -> None:  # type: ignore[no-untyped-def]
    (cluster,) = cluster_factory(1)
    (spec,) = static_specs([cluster.kubeconfig])
    cluster.stop_apiserver()
    informer = NetworkPolicyInformer(spec, PolicyEngine(), options=FAST)
    before = sum(
        metric("kube_ip_tracker_source_errors_total", cluster=spec.cluster_id, kind="networkpolicies", reason=r)
        for r in ("unreachable", "timeout")
    )
    async with running(informer) as task:
        await eventually(
            lambda: (
                sum(
                    metric(
                        "kube_ip_tracker_source_errors_total", cluster=spec.cluster_id, kind="networkpolicies", reason=r
                    )
                    for r in ("unreachable", "timeout")
                )
                >= before + 2
            ),
            "errors counted while the API server is down",
        )
        assert not informer.synced and not task.done()
        cluster.start_apiserver()
        await asyncio.wait_for(informer.wait_synced(), 30)


def db_port_policy(name: str, port: int, end_port: int | None = None) -> dict[str, Any]:
    """Ingress to app=db from app=web on TCP ``port`` (through ``end_port`` when given)."""
    body = policy(name, "web")
    ports: dict[str, Any] = {"protocol": "TCP", "port": port}
    if end_port is not None:
        ports["endPort"] = end_port
    body["spec"]["ingress"][0]["ports"] = [ports]
    return body


@pytest.mark.every_apiserver
async def test_end_port_range_through_the_api_server_is_enforced_as_stored(cluster_factory) -> None:  # type: ignore[no-untyped-def]
    """endPort (1.21+, GA in 1.25) reaches the agent through the API and opens exactly the range.

    A 1.20 server does not know the field and drops it: the stored policy allows only ``port``,
    which the agent enforces as such (narrower than written, never wider).
    """
    (cluster,) = cluster_factory(1)
    (spec,) = static_specs([cluster.kubeconfig])
    keeps_end_port = cluster.apiserver_version >= (1, 21)
    async with cluster.api_client() as api:
        await objects.create_namespace(api, NS)
        net = client.NetworkingV1Api(api)
        await net.create_namespaced_network_policy(NS, db_port_policy("db-range", 5000, 5010))
        stored = await net.read_namespaced_network_policy("db-range", NS)
    assert stored.spec.ingress[0].ports[0].end_port == (5010 if keeps_end_port else None)

    engine = world(spec.cluster_id)
    informer = NetworkPolicyInformer(spec, engine, options=FAST)

    def decide(src: str, port: int, protocol: str = "TCP") -> bool:
        return engine.decide(src, "10.0.0.3", protocol, port).allowed

    async with running(informer), cluster.api_client() as api:
        await asyncio.wait_for(informer.wait_synced(), 30)
        assert decide("10.0.0.1", 5000)
        assert decide("10.0.0.1", 5005) is keeps_end_port
        assert decide("10.0.0.1", 5010) is keeps_end_port
        assert not decide("10.0.0.1", 4999) and not decide("10.0.0.1", 5011)
        assert not decide("10.0.0.1", 5005, "UDP") and not decide("10.0.0.2", 5005)

        if keeps_end_port:
            # The server validates the range as the agent's parser does: endPort below port is refused.
            net = client.NetworkingV1Api(api)
            with pytest.raises(client.ApiException) as err:
                await net.create_namespaced_network_policy(NS, db_port_policy("backwards", 6000, 5999))
            assert err.value.status == 422 and "endPort" in err.value.body
            # Narrowing the range through the API narrows what is allowed.
            await net.replace_namespaced_network_policy("db-range", NS, db_port_policy("db-range", 5000, 5004))
            await eventually(lambda: not decide("10.0.0.1", 5005) and decide("10.0.0.1", 5004), "narrowed range")
