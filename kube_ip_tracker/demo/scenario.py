"""The demo's seed scenario: clusters, namespaces, pods with their addresses, policies and the steps.

Two clusters share one flat pod network. Cluster ``cluster-N`` uses the ``N``-th /24 of the demo
subnet (``10.100.N.0/24`` by default). Every namespace carries ``cluster.clusterset.k8s.io=<cluster>``.
``kubernetes.io/metadata.name`` is not set by the demo: API servers since 1.21 (the default build)
add it, and for the 1.20 one (``KIT_KUBE_APISERVER=debian``) the evaluator treats it as implied.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

from kube_ip_tracker.agent.policy.staged import STAGED_ANNOTATION

CLUSTERS = ("cluster-1", "cluster-2")
CLUSTER_LABEL = "cluster.clusterset.k8s.io"
NAME_LABEL = "kubernetes.io/metadata.name"
WEB_PORT = 80
DEFAULT_SUBNET = "10.100.0.0/16"


@dataclass(frozen=True)
class DemoNamespace:
    cluster: str
    name: str

    @property
    def labels(self) -> dict[str, str]:
        return {CLUSTER_LABEL: self.cluster}


@dataclass(frozen=True)
class DemoPod:
    """A pod of the scenario; ``key`` names it in the demo's output (``web-c2``)."""

    key: str
    cluster: str
    namespace: str
    name: str
    labels: dict[str, str]
    host: int  # last octet of its address
    web: bool = False  # serves HTTP (and UDP echo) on WEB_PORT

    def ip(self, subnet: str) -> str:
        """Its address: host ``host`` of the cluster's /24 in ``subnet``."""
        net = ipaddress.ip_network(subnet)
        if net.version != 4 or net.prefixlen > 16:
            raise ValueError(f"demo subnet {subnet} must be an IPv4 network of /16 or larger")
        index = CLUSTERS.index(self.cluster) + 1
        return str(net.network_address + (index << 8) + self.host)

    def describe(self, subnet: str) -> str:
        return f"{self.cluster}/{self.namespace}/{self.name} ({self.ip(subnet)})"


NAMESPACES = (
    DemoNamespace("cluster-1", "demo-c1"),
    DemoNamespace("cluster-1", "demo-other"),
    DemoNamespace("cluster-2", "demo-c2"),
)
PODS = (
    DemoPod("web-c1", "cluster-1", "demo-c1", "web", {"app": "web"}, 10, web=True),
    DemoPod("client-c1", "cluster-1", "demo-c1", "client", {"app": "client"}, 20),
    DemoPod("client-other", "cluster-1", "demo-other", "client", {"app": "client"}, 30),
    DemoPod("web-c2", "cluster-2", "demo-c2", "web", {"app": "web"}, 10, web=True),
)
NODES = {"cluster-1": "c1-node-1", "cluster-2": "c2-node-1"}


def pod(key: str) -> DemoPod:
    """The scenario pod named ``key``."""
    for each in PODS:
        if each.key == key:
            return each
    raise KeyError(f"no demo pod {key!r}")


def _policy(name: str, namespace: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


DEFAULT_DENY = _policy("default-deny-ingress", "demo-c2", {"podSelector": {}, "policyTypes": ["Ingress"]})
ALLOW_FROM_C1 = _policy(
    "allow-web-from-cluster-1-demo-c1",
    "demo-c2",
    {
        "podSelector": {"matchLabels": {"app": "web"}},
        "policyTypes": ["Ingress"],
        "ingress": [
            {"from": [{"namespaceSelector": {"matchLabels": {CLUSTER_LABEL: "cluster-1", NAME_LABEL: "demo-c1"}}}]}
        ],
    },
)


# An Admin tier ClusterNetworkPolicy of cluster-2: its web pods take nothing from cluster-1's namespaces,
# whatever the namespace owners' NetworkPolicies allow (the Admin tier is evaluated first).
DENY_FROM_CLUSTER_1 = {
    "apiVersion": "policy.networking.k8s.io/v1alpha2",
    "kind": "ClusterNetworkPolicy",
    "metadata": {"name": "deny-web-from-cluster-1"},
    "spec": {
        "tier": "Admin",
        "priority": 10,
        "subject": {"pods": {"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": "web"}}}},
        "ingress": [
            {
                "name": "nothing-from-cluster-1",
                "action": "Deny",
                "from": [{"namespaces": {"matchLabels": {CLUSTER_LABEL: "cluster-1"}}}],
            }
        ],
    },
}


def staged(body: dict[str, Any]) -> dict[str, Any]:
    """``body`` annotated ``kube-ip-tracker.io/staged: "true"``: evaluated and reported, not enforced."""
    return {**body, "metadata": {**body["metadata"], "annotations": {STAGED_ANNOTATION: "true"}}}


@dataclass(frozen=True)
class PolicyChange:
    """A policy created or replaced (or, with ``delete``, deleted) in one cluster before a step: a namespaced
    NetworkPolicy, or a cluster-scoped ClusterNetworkPolicy (``kind`` tells). ``what`` words the change
    (default: created, or deleted)."""

    cluster: str
    body: dict[str, Any]
    delete: bool = False
    what: str = ""

    def describe(self) -> str:
        meta = self.body["metadata"]
        name = f"{meta['namespace']}/{meta['name']}" if meta.get("namespace") else meta["name"]
        what = self.what or ("deleted" if self.delete else "created")
        return f"{self.body.get('kind', 'NetworkPolicy')} {name} {what} in {self.cluster}"


@dataclass(frozen=True)
class Step:
    """One check: ``client`` connects to ``target`` on WEB_PORT after ``changes`` are applied."""

    key: str
    title: str
    client: str
    target: str
    reachable: bool
    changes: tuple[PolicyChange, ...] = field(default=())
    # (cluster, policy): that cluster's agent must log and count a would-deny naming the staged policy.
    would_deny: tuple[str, str] | None = None


STEPS = (
    Step("a", "a client in cluster-1 reaches web in cluster-2", "client-c1", "web-c2", True),
    Step(
        "b",
        "a default-deny-ingress policy in cluster-2 blocks it",
        "client-c1",
        "web-c2",
        False,
        (PolicyChange("cluster-2", DEFAULT_DENY),),
    ),
    Step(
        "c",
        "a policy allowing namespace demo-c1 of cluster-1 lets it through again",
        "client-c1",
        "web-c2",
        True,
        (PolicyChange("cluster-2", ALLOW_FROM_C1),),
    ),
    Step("d", "a client in another namespace of cluster-1 is still denied", "client-other", "web-c2", False),
    Step(
        "e",
        "an Admin tier ClusterNetworkPolicy in cluster-2 denying cluster-1's namespaces blocks what step c allowed",
        "client-c1",
        "web-c2",
        False,
        (PolicyChange("cluster-2", DENY_FROM_CLUSTER_1),),
    ),
    Step(
        "f",
        "deleting the ClusterNetworkPolicy lets it through again",
        "client-c1",
        "web-c2",
        True,
        (PolicyChange("cluster-2", DENY_FROM_CLUSTER_1, delete=True),),
    ),
)


# The optional steps of ``--staged`` (after step f): rolling out a cross-cluster deny in three steps,
# stage it, watch the would-deny lines and the metric, enforce it.
STAGED_STEPS = (
    Step(
        "g",
        "staged (kube-ip-tracker.io/staged), the Admin tier deny of step e changes no verdict; "
        "cluster-2's agent logs and counts a would-deny naming it",
        "client-c1",
        "web-c2",
        True,
        (PolicyChange("cluster-2", staged(DENY_FROM_CLUSTER_1), what="created as staged"),),
        would_deny=("cluster-2", "ClusterNetworkPolicy/deny-web-from-cluster-1"),
    ),
    Step(
        "h",
        "removing the annotation enforces it",
        "client-c1",
        "web-c2",
        False,
        (PolicyChange("cluster-2", DENY_FROM_CLUSTER_1, what="replaced without the staged annotation"),),
    ),
    Step(
        "i",
        "deleting it lets it through again",
        "client-c1",
        "web-c2",
        True,
        (PolicyChange("cluster-2", DENY_FROM_CLUSTER_1, delete=True),),
    ),
)
