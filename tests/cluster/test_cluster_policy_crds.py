"""The ClusterNetworkPolicy/AdminNetworkPolicy/BaselineAdminNetworkPolicy CRDs in a real API server.

Every cluster-scoped policy of the public conformance cases is accepted (server-side dry run) and
comes back as the agent's parser reads it; the schema refuses what the API refuses.
"""

from __future__ import annotations

import asyncio
import copy
import json
from pathlib import Path
from typing import Any

import pytest
from kubernetes_asyncio import client

from kube_ip_tracker.agent.policy.cluster_parse import parse_by_kind
from kube_ip_tracker.testing import objects
from kube_ip_tracker.testing.crds import (
    NO_CUSTOM_RESOURCES,
    delete_crds,
    install_crds,
    load_crds,
    stores_custom_resources,
)

CNP_CASES = Path(__file__).resolve().parents[2].parent / "shared" / "conformance" / "cnp"
LISTS = ("clusterNetworkPolicies", "adminNetworkPolicies", "baselineAdminNetworkPolicies")


def case_policies() -> list[dict[str, Any]]:
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for case in sorted(CNP_CASES.glob("*.json")):
        for block in json.loads(case.read_text())["clusters"].values():
            for field in LISTS:
                for obj in block.get(field) or []:
                    found[(obj["kind"], json.dumps(obj, sort_keys=True))] = obj
    return list(found.values())


def test_crds_are_structural_and_served(cluster_factory: Any) -> None:
    (cluster,) = cluster_factory(1)
    assert {crd["spec"]["names"]["kind"] for crd in load_crds()} == set(objects.CLUSTER_POLICY_KINDS)

    async def check() -> None:
        async with cluster.api_client() as api:
            crds = await client.ApiextensionsV1Api(api).list_custom_resource_definition()
            for crd in crds.items:
                conditions = {c.type: c.status for c in crd.status.conditions}
                assert conditions.get("Established") == "True", crd.metadata.name
                assert conditions.get("NonStructuralSchema") is None, crd.metadata.name

    asyncio.run(check())
    delete_crds(cluster)
    install_crds(cluster)  # installs again after a delete


@pytest.mark.skipif(not CNP_CASES.is_dir(), reason=f"conformance cases not found in {CNP_CASES}")
def test_every_case_policy_is_accepted_and_reads_back_the_same(cluster_factory: Any) -> None:
    (cluster,) = cluster_factory(1)
    if not stores_custom_resources(cluster):
        pytest.skip(NO_CUSTOM_RESOURCES)
    policies = case_policies()
    assert len(policies) > 50

    async def check() -> None:
        async with cluster.api_client() as api:
            for obj in policies:
                stored = await objects.apply_cluster_policy(api, obj, dry_run=True)
                # The server's copy (with defaults, metadata and no pruned field) compiles to the same policy.
                assert parse_by_kind(stored, "c1", strict=False) == parse_by_kind(obj, "c1"), obj["metadata"]["name"]

    asyncio.run(check())


REFUSED = [
    ("ClusterNetworkPolicy", lambda s: s.update(tier="Developer"), "spec.tier"),
    ("ClusterNetworkPolicy", lambda s: s.update(priority=1001), "spec.priority"),
    ("ClusterNetworkPolicy", lambda s: s.update(subject={}), "spec.subject"),
    ("ClusterNetworkPolicy", lambda s: s["egress"][0].update(action="Allow"), "spec.egress[0].action"),
    ("ClusterNetworkPolicy", lambda s: s["egress"][0].update(to=[]), "spec.egress[0].to"),
    ("ClusterNetworkPolicy", lambda s: s["egress"][0]["to"].append({}), "spec.egress[0].to[1]"),
    ("AdminNetworkPolicy", lambda s: s["egress"][0].update(action="Accept"), "spec.egress[0].action"),
    ("AdminNetworkPolicy", lambda s: s.pop("priority"), "spec.priority"),
]


def refused_object(kind: str, mutate: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"subject": {"namespaces": {}}, "egress": [{"action": "Deny", "to": [{"namespaces": {}}]}]}
    spec.update(priority=1)
    if kind == "ClusterNetworkPolicy":
        spec.update(tier="Admin")
    api_version = "policy.networking.k8s.io/" + objects.CLUSTER_POLICY_KINDS[kind][0]
    obj = {"apiVersion": api_version, "kind": kind, "metadata": {"name": "bad"}, "spec": copy.deepcopy(spec)}
    mutate(obj["spec"])
    return obj


def test_schema_refuses_what_the_api_refuses(cluster_factory: Any) -> None:
    (cluster,) = cluster_factory(1)
    if not stores_custom_resources(cluster):
        pytest.skip(NO_CUSTOM_RESOURCES)

    async def check() -> None:
        async with cluster.api_client() as api:
            for kind, mutate, fragment in REFUSED:
                with pytest.raises(client.ApiException) as info:
                    await objects.apply_cluster_policy(api, refused_object(kind, mutate), dry_run=True)
                assert info.value.status == 422, (kind, fragment)
                assert fragment in info.value.body, (kind, fragment, info.value.body)

    asyncio.run(check())
