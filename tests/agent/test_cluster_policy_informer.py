"""The cluster-scoped policy informer against a real API server: CRDs missing, installed and removed;
objects created, updated and deleted reach the evaluator's tiers; invalid ones are logged and skipped."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from prometheus_client import REGISTRY

from kube_ip_tracker.agent.cluster_policies import ClusterPolicyInformer
from kube_ip_tracker.agent.policy import PolicyEngine
from kube_ip_tracker.kube.kubeconfig import static_specs
from kube_ip_tracker.kube.reflector import InformerOptions
from kube_ip_tracker.model import NamespaceRecord, PodRecord
from kube_ip_tracker.testing import objects
from kube_ip_tracker.testing.crds import NO_CUSTOM_RESOURCES, delete_crds, install_crds, stores_custom_resources
from kube_ip_tracker.testing.polling import eventually
from kube_ip_tracker.testing.trackers import background

pytestmark = pytest.mark.cluster

FAST = InformerOptions(page_size=2, backoff_base=0.05, backoff_cap=0.5, watch_timeout=30, request_timeout=10)
KINDS = ("ClusterNetworkPolicy", "AdminNetworkPolicy", "BaselineAdminNetworkPolicy")


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def world(cluster: str) -> PolicyEngine:
    """Pods web (10.0.0.1, namespace shop, team=a) and db (10.0.0.3, namespace pci, zone=pci)."""
    engine = PolicyEngine()
    engine.set_namespace(NamespaceRecord(cluster, "shop", {"team": "a"}))
    engine.set_namespace(NamespaceRecord(cluster, "pci", {"zone": "pci"}))
    engine.set_pod(PodRecord(cluster, "shop", "web", {"app": "web"}, (), "node-1", ("10.0.0.1",)))
    engine.set_pod(PodRecord(cluster, "pci", "db", {"app": "db"}, (), "node-1", ("10.0.0.3",)))
    return engine


def allowed(engine: PolicyEngine, port: int = 5432) -> bool:
    return engine.decide("10.0.0.1", "10.0.0.3", "TCP", port).allowed


def cnp(name: str, action: str, priority: int = 10, tier: str = "Admin", **rule: Any) -> dict[str, Any]:
    """A policy on the pci namespaces' ingress from team=a namespaces."""
    return {
        "apiVersion": "policy.networking.k8s.io/v1alpha2",
        "kind": "ClusterNetworkPolicy",
        "metadata": {"name": name},
        "spec": {
            "tier": tier,
            "priority": priority,
            "subject": {"namespaces": {"matchLabels": {"zone": "pci"}}},
            "ingress": [{"action": action, "from": [{"namespaces": {"matchLabels": {"team": "a"}}}], **rule}],
        },
    }


def informer_for(cluster: Any, engine: PolicyEngine, changes: list[int] | None = None) -> ClusterPolicyInformer:
    (spec,) = static_specs([cluster.kubeconfig])
    return ClusterPolicyInformer(
        spec,
        engine,
        options=FAST,
        crd_check_interval=0.2,
        on_change=(lambda: changes.append(1)) if changes is not None else None,
    )


async def test_missing_crds_are_logged_once_then_picked_up_and_dropped(cluster_factory, caplog) -> None:  # type: ignore[no-untyped-def]
    (cluster,) = cluster_factory(1, crds=False)
    informer = informer_for(cluster, world(cluster.name))
    caplog.set_level(logging.INFO, logger="kube_ip_tracker.agent.cluster_policies")
    async with background(informer.run()) as task:
        await asyncio.wait_for(informer.wait_synced(), 30)
        assert informer.installed == dict.fromkeys(KINDS, False)
        await asyncio.sleep(1.0)  # several checks
        missing = [r for r in caplog.records if "is not installed" in r.getMessage()]
        assert len(missing) == 3, [r.getMessage() for r in missing]  # once per kind, not per check
        assert metric("kube_ip_agent_cluster_policy_crd_installed", cluster=cluster.name, kind=KINDS[0]) == 0
        await asyncio.to_thread(install_crds, cluster)
        await eventually(lambda: all(informer.installed.values()), "the informer to find the CRDs", within=30)
        assert metric("kube_ip_agent_cluster_policy_crd_installed", cluster=cluster.name, kind=KINDS[0]) == 1
        await asyncio.to_thread(delete_crds, cluster)
        await eventually(lambda: not any(informer.installed.values()), "the informer to notice the removal", within=30)
        assert not task.done()  # never fatal
    assert any("CRD was removed" in r.getMessage() for r in caplog.records)


async def test_objects_reach_the_tiers_and_invalid_ones_are_skipped(cluster_factory, caplog) -> None:  # type: ignore[no-untyped-def]
    (cluster,) = cluster_factory(1)
    if not stores_custom_resources(cluster):
        pytest.skip(NO_CUSTOM_RESOURCES)
    engine = world(cluster.name)
    changes: list[int] = []
    informer = informer_for(cluster, engine, changes)
    async with cluster.api_client() as api, background(informer.run()):
        await asyncio.wait_for(informer.wait_synced(), 30)
        assert allowed(engine)
        await objects.apply_cluster_policy(api, cnp("guard", "Deny"))
        await eventually(lambda: not allowed(engine), "the Admin Deny to apply")
        assert changes
        # An update: Accept now, at a lower priority number than a second, Deny policy.
        await objects.apply_cluster_policy(api, cnp("guard", "Accept", priority=5))
        await objects.apply_cluster_policy(api, cnp("later", "Deny", priority=20))
        await eventually(lambda: allowed(engine) and len(informer.policies) == 2, "the update to apply")
        # An invalid object (the CRD has no CEL rule for range order; the parser refuses it) is skipped.
        bad = cnp("bad", "Deny", protocols=[{"tcp": {"destinationPort": {"range": {"start": 9, "end": 1}}}}])
        caplog.set_level(logging.ERROR, logger="kube_ip_tracker.agent.cluster_policies")
        await objects.apply_cluster_policy(api, bad)
        await eventually(lambda: ("ClusterNetworkPolicy", "bad") in informer.invalid, "the invalid policy to be seen")
        assert (
            "spec.ingress[0].protocols[0].tcp.destinationPort.range" in informer.invalid["ClusterNetworkPolicy", "bad"]
        )
        assert any("ClusterNetworkPolicy bad is invalid" in r.getMessage() for r in caplog.records)
        assert metric("kube_ip_agent_cluster_policies_invalid", cluster=cluster.name, kind="ClusterNetworkPolicy") == 1
        assert allowed(engine)  # the others go on
        # v1alpha1: an AdminNetworkPolicy Deny at priority 1 beats the Accept.
        anp = {
            "apiVersion": "policy.networking.k8s.io/v1alpha1",
            "kind": "AdminNetworkPolicy",
            "metadata": {"name": "anp"},
            "spec": {
                "priority": 1,
                "subject": {"namespaces": {"matchLabels": {"zone": "pci"}}},
                "ingress": [
                    {"action": "Deny", "from": [{"namespaces": {}}], "ports": [{"portNumber": {"port": 5432}}]}
                ],
            },
        }
        await objects.apply_cluster_policy(api, anp)
        await eventually(lambda: not allowed(engine), "the AdminNetworkPolicy to apply")
        assert allowed(engine, 80)
        await objects.delete_cluster_policy(api, "AdminNetworkPolicy", "anp")
        await objects.delete_cluster_policy(api, "ClusterNetworkPolicy", "guard")
        await eventually(lambda: not allowed(engine) and len(informer.policies) == 1, "the deletes to apply")
        await objects.delete_cluster_policy(api, "ClusterNetworkPolicy", "later")
        await eventually(lambda: allowed(engine), "the last delete to apply")


async def test_unenforceable_peer_is_reported_and_fails_closed(cluster_factory, caplog) -> None:  # type: ignore[no-untyped-def]
    (cluster,) = cluster_factory(1)
    if not stores_custom_resources(cluster):
        pytest.skip(NO_CUSTOM_RESOURCES)
    engine = world(cluster.name)
    informer = informer_for(cluster, engine)
    obj = {
        "apiVersion": "policy.networking.k8s.io/v1alpha2",
        "kind": "ClusterNetworkPolicy",
        "metadata": {"name": "fqdn"},
        "spec": {
            "tier": "Admin",
            "priority": 1,
            "subject": {"namespaces": {"matchLabels": {"team": "a"}}},
            "egress": [
                {"action": "Accept", "to": [{"domainNames": ["*.example.com"]}]},
                {"action": "Deny", "to": [{"namespaces": {"matchLabels": {"zone": "pci"}}}]},
            ],
        },
    }
    caplog.set_level(logging.WARNING, logger="kube_ip_tracker.agent.cluster_policies")
    async with cluster.api_client() as api, background(informer.run()):
        await asyncio.wait_for(informer.wait_synced(), 30)
        await objects.apply_cluster_policy(api, obj)
        await eventually(lambda: not allowed(engine), "the Deny after the dropped Accept to apply")
    assert metric("kube_ip_agent_cluster_policies_degraded", cluster=cluster.name, kind="ClusterNetworkPolicy") == 1
    assert any("ClusterNetworkPolicy fqdn: cannot enforce" in r.getMessage() for r in caplog.records)
