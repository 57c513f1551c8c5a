"""The ClusterNetworkPolicy / AdminNetworkPolicy / BaselineAdminNetworkPolicy CRDs in local clusters.

``manifests/crds/policy.networking.k8s.io.yaml`` is created through the API server (as a user would
with ``kubectl apply``) and waited for until every kind is served; the test clusters do this at
start, and tests that need a cluster without them delete them again.
"""

from __future__ import annotations

import json
import ssl
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:
    from kube_ip_tracker.testing.clusters import LocalCluster

CRD_MANIFEST = Path(__file__).resolve().parents[2] / "manifests" / "crds" / "policy.networking.k8s.io.yaml"
CRDS_PATH = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"


def load_crds(path: Path = CRD_MANIFEST) -> list[dict[str, Any]]:
    """The CRD objects of the manifest, or of every ``*.yaml`` file of a directory (in name order)."""
    files = sorted(path.glob("*.yaml")) if path.is_dir() else [path]
    return [doc for f in files for doc in yaml.safe_load_all(f.read_text()) if doc]


def _request(cluster: LocalCluster, method: str, path: str, body: Any = None) -> tuple[int, dict[str, Any]]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        cluster.server + path,
        data=data,
        method=method,
        headers={"Authorization": f"Bearer {cluster.token}", "Content-Type": "application/json"},
    )
    ctx = ssl.create_default_context(cafile=str(cluster.ca_file))
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=10) as resp:
            return resp.status, _json(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, _json(err.read())


def _json(body: bytes) -> dict[str, Any]:
    try:
        value = json.loads(body or b"{}")
    except ValueError:  # a plain-text answer, such as "404 page not found"
        return {"text": body.decode("utf-8", "replace")}
    return value if isinstance(value, dict) else {"value": value}


def served_path(crd: dict[str, Any]) -> str:
    """The collection path of a CRD's (first) version."""
    spec = crd["spec"]
    return f"/apis/{spec['group']}/{spec['versions'][0]['name']}/{spec['names']['plural']}"


def install_crds(cluster: LocalCluster, timeout: float = 30.0, path: Path = CRD_MANIFEST) -> None:
    """Create the CRDs (existing ones are kept) and wait until their kinds are served."""
    crds = load_crds(path)
    for crd in crds:
        status, answer = _request(cluster, "POST", CRDS_PATH, crd)
        if status not in (200, 201, 409):
            raise RuntimeError(f"{cluster.name}: cannot create CRD {crd['metadata']['name']}: {status} {answer}")
    deadline = time.monotonic() + timeout
    for crd in crds:
        while _request(cluster, "GET", served_path(crd) + "?limit=1")[0] != 200:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{cluster.name}: CRD {crd['metadata']['name']} not served after {timeout:.0f}s")
            time.sleep(0.1)


def delete_crds(cluster: LocalCluster, timeout: float = 30.0, path: Path = CRD_MANIFEST) -> None:
    """Delete the CRDs (and with them every object of their kinds) and wait until they are gone."""
    crds = load_crds(path)
    for crd in crds:
        _request(cluster, "DELETE", f"{CRDS_PATH}/{crd['metadata']['name']}")
    deadline = time.monotonic() + timeout
    for crd in crds:
        while _request(cluster, "GET", f"{CRDS_PATH}/{crd['metadata']['name']}")[0] != 404:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{cluster.name}: CRD {crd['metadata']['name']} not gone after {timeout:.0f}s")
            time.sleep(0.1)


def stores_custom_resources(cluster: LocalCluster) -> bool:
    """Whether the cluster's API server can take custom resource objects.

    Debian 12's kube-apiserver 1.20.2, built with Go 1.19, crashes decoding any custom resource
    (``fatal error: fault`` in json-iterator's reflect2 map iteration, which needs Go <= 1.17 at that
    version); CRDs install and empty lists work, objects do not. Newer builds store them.
    """
    status, version = _request(cluster, "GET", "/version")
    git_version = str(version.get("gitVersion", ""))
    # Debian's build reports v0.0.0-master (no version stamp).
    return status == 200 and not git_version.startswith(("v1.20.", "v0.0.0"))


NO_CUSTOM_RESOURCES = (
    "this kube-apiserver (1.20.2 built with Go 1.19) crashes on custom resource objects; "
    "run with the newer build to test ClusterNetworkPolicy objects"
)
