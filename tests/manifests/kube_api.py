"""Talking to the real API servers of tests/manifests: the manifests' service accounts, raw requests
for any kind (built-in or custom), server-side dry runs, create-or-replace."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path

import yaml
from kubernetes_asyncio.dynamic import DynamicClient

from kube_ip_tracker.testing.clusters import LocalCluster, TokenUser

from .manifest import Obj, find, key, missing_fields

TRACKER_SA = TokenUser.service_account("kube-system", "kube-ip-tracker")
AGENT_SA = TokenUser.service_account("kube-system", "kube-ip-agent")


def kubeconfig_for(cluster: LocalCluster, user: TokenUser, path: Path) -> Path:
    """A self-contained kubeconfig (CA embedded, as docs/deploy.md asks for a Secret) authenticating as ``user``.

    Its one context is named after the cluster.
    """
    config = cluster.kubeconfig_dict(token=user.token, user=user.user.rsplit(":", 1)[-1], embed_ca=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config))
    return path


class KubeError(Exception):
    """A request the API server refused: its HTTP status and Status message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status


async def call(dyn: DynamicClient, method: str, obj: Obj, *, name: str | None = None, **params: object) -> Obj:
    """One request for the resource of ``obj`` (its kind, namespace); raises KubeError unless 2xx."""
    resource = await dyn.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
    namespace = obj.get("metadata", {}).get("namespace") if resource.namespaced else None
    body = obj if method in ("post", "put") else None
    path = resource.path(name=name, namespace=namespace)
    resp = await dyn.request(method, path, body=body, serialize=False, **params)  # raw: errors do not raise
    data = await resp.json()
    if not 200 <= resp.status <= 299:
        raise KubeError(resp.status, data.get("message", str(data)))
    return data


async def dry_run(dyn: DynamicClient, obj: Obj) -> Obj:
    """Create ``obj`` with dryRun=All and return what the API server would store."""
    return await call(dyn, "post", obj, dry_run="All")


async def dry_run_problems(dyn: DynamicClient, sourced: Sequence[tuple[str, Obj]]) -> list[str]:
    """Dry-run each (source, object); what the API server rejected or did not keep, one line each."""
    problems: list[str] = []
    for source, obj in sourced:
        try:
            stored = await dry_run(dyn, obj)
        except KubeError as exc:
            problems.append(f"{source}: {key(obj)}: rejected: {exc}")
            continue
        problems += [f"{source}: {key(obj)}: not kept by the API server: {p}" for p in missing_fields(obj, stored)]
    return problems


async def put(dyn: DynamicClient, obj: Obj) -> None:
    """Create ``obj``, or replace it when it exists (RBAC changes apply to running clients at once)."""
    try:
        await call(dyn, "post", obj)
    except KubeError as exc:
        if exc.status != 409:
            raise
        name = obj["metadata"]["name"]
        current = await call(dyn, "get", obj, name=name)
        body = copy.deepcopy(obj)
        body["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
        await call(dyn, "put", body, name=name)


async def put_objects(cluster: LocalCluster, manifest: list[Obj], which: Sequence[tuple[str, str]]) -> None:
    """Create or replace the objects ``which`` ((kind, name) pairs) of ``manifest``."""
    async with cluster.api_client() as api:
        dyn = await DynamicClient(api)
        for kind, name in which:
            await put(dyn, find(manifest, kind, name))
