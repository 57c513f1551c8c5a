"""Conformance world files: clusters (namespaces, pods, nodes, NetworkPolicies, cluster-scoped
policies) plus probes.

The format is described in the shared conformance README. Policies are validated strictly; the
informative extra fields of probes and of the file are ignored. A cluster has at most one
BaselineAdminNetworkPolicy, and not together with Baseline tier ClusterNetworkPolicies (neither API
says how they would combine).
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kube_ip_tracker.model import ContainerPort, NamespaceRecord, NodeRecord, PodRecord

from .cluster_compiled import BANP_KIND, ClusterPolicy, ClusterPolicyKey, Tier
from .cluster_parse import (
    cluster_policy_name,
    parse_admin_network_policy,
    parse_baseline_admin_network_policy,
    parse_cluster_network_policy,
)
from .compiled import CompiledPolicy
from .errors import PolicyError, join
from .evaluator import Endpoint, PolicyEngine, Verdict
from .parse import parse_network_policy, parse_protocol, policy_identity
from .selectors import expect_list, expect_object, expect_string, parse_labels

VERDICTS = ("allow", "deny")


@dataclass(frozen=True, slots=True)
class ProbeEnd:
    """A probe end: a named pod, or an address of no known pod."""

    cluster: str = ""
    namespace: str = ""
    pod: str = ""
    ip: str = ""


@dataclass(frozen=True, slots=True)
class Probe:
    """One connection to decide."""

    src: ProbeEnd
    dst: ProbeEnd
    protocol: str
    port: int | None
    expect: str | None


@dataclass(frozen=True, slots=True)
class WorldFile:
    """A parsed world file."""

    namespaces: tuple[NamespaceRecord, ...]
    pods: tuple[PodRecord, ...]
    policies: tuple[CompiledPolicy, ...]
    probes: tuple[Probe, ...]
    nodes: tuple[NodeRecord, ...] = ()
    cluster_policies: tuple[ClusterPolicy, ...] = ()

    def engine(self) -> PolicyEngine:
        """A fresh engine holding this world."""
        engine = PolicyEngine()
        for namespace in self.namespaces:
            engine.set_namespace(namespace)
        for pod in self.pods:
            engine.set_pod(pod)
        for node in self.nodes:
            engine.set_node(node)
        for policy in self.policies:
            engine.set_policy(policy)
        for cluster_policy in self.cluster_policies:
            engine.set_cluster_policy(cluster_policy)
        return engine

    def warnings(self) -> list[str]:
        """What the cluster-scoped policies carry that the agent cannot enforce, and invalid values of the
        staged annotation, one line each."""
        return [
            f"{policy.kind} {policy.cluster}/{policy.name}: {warning}"
            for policy in self.cluster_policies
            for warning in policy.warnings
        ] + [
            f"{name}: {policy.staged_problem}"
            for name, policy in [
                *((f"NetworkPolicy {p.cluster}/{p.namespace}/{p.name}", p) for p in self.policies),
                *((f"{p.kind} {p.cluster}/{p.name}", p) for p in self.cluster_policies),
            ]
            if policy.staged_problem
        ]


_CLUSTER_POLICY_LISTS = (
    ("clusterNetworkPolicies", parse_cluster_network_policy),
    ("adminNetworkPolicies", parse_admin_network_policy),
    ("baselineAdminNetworkPolicies", parse_baseline_admin_network_policy),
)


def load_world(text: str | bytes) -> WorldFile:
    """Parse and validate a world file. Raises :class:`PolicyError` naming the offending object."""
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as err:
        raise PolicyError("", f"malformed JSON: {err}") from None
    return parse_world(data)


def parse_world(data: Any) -> WorldFile:
    """Validate an already decoded world file."""
    top = expect_object(data, "")
    clusters = expect_object(top.get("clusters", {}), "clusters")
    namespaces: dict[tuple[str, str], NamespaceRecord] = {}
    pods: dict[tuple[str, str, str], PodRecord] = {}
    policies: dict[tuple[str, str, str], CompiledPolicy] = {}
    nodes: dict[tuple[str, str], NodeRecord] = {}
    cluster_policies: dict[ClusterPolicyKey, ClusterPolicy] = {}
    for cluster, content in clusters.items():
        cpath = f"clusters.{cluster}"
        if not cluster:
            raise PolicyError(cpath, "cluster id must be non-empty")
        body = expect_object(content, cpath)
        for index, item in enumerate(expect_list(body.get("namespaces"), join(cpath, "namespaces"))):
            record = _parse_namespace(item, cluster, f"{cpath}.namespaces[{index}]")
            if record.key in namespaces:
                raise PolicyError(f"{cpath}.namespaces[{index}]", f"duplicate namespace {record.name!r}")
            namespaces[record.key] = record
        for index, item in enumerate(expect_list(body.get("pods"), join(cpath, "pods"))):
            pod = _parse_pod(item, cluster, f"{cpath}.pods[{index}]")
            if pod.key in pods:
                raise PolicyError(f"{cpath}.pods[{index}]", f"duplicate pod {pod.namespace}/{pod.name}")
            pods[pod.key] = pod
        _parse_objects(body, "networkPolicies", cluster, cpath, parse_network_policy, policy_identity, policies)
        for index, item in enumerate(expect_list(body.get("nodes"), join(cpath, "nodes"))):
            node = _parse_node(item, cluster, f"{cpath}.nodes[{index}]")
            if node.key in nodes:
                raise PolicyError(f"{cpath}.nodes[{index}]", f"duplicate node {node.name!r}")
            nodes[node.key] = node
        _parse_cluster_policies(body, cluster, cpath, cluster_policies)
    probes = tuple(
        _parse_probe(item, f"probes[{index}]", pods)
        for index, item in enumerate(expect_list(top.get("probes"), "probes"))
    )
    return WorldFile(
        tuple(namespaces.values()),
        tuple(pods.values()),
        tuple(policies.values()),
        probes,
        tuple(nodes.values()),
        tuple(cluster_policies.values()),
    )


def _parse_objects(
    body: dict[str, Any],
    field: str,
    cluster: str,
    cpath: str,
    parse: Callable[[Any, str], Any],
    identity: Callable[[Any], str],
    found: dict[Any, Any],
) -> None:
    """Parse the policy objects listed under ``field`` into ``found`` (by key); errors name the object."""
    list_path = join(cpath, field)
    for index, item in enumerate(expect_list(body.get(field), list_path)):
        prefix = f"{list_path}[{index}] ({identity(item)})"
        try:
            policy = parse(item, cluster)
        except PolicyError as err:
            raise PolicyError(f"{prefix}: {err.path}" if err.path else prefix, err.message) from None
        if policy.key in found:
            kind = getattr(policy, "kind", "NetworkPolicy")
            raise PolicyError(prefix, f"duplicate {kind}")
        found[policy.key] = policy


def _parse_cluster_policies(
    body: dict[str, Any], cluster: str, cpath: str, found: dict[ClusterPolicyKey, ClusterPolicy]
) -> None:
    """The cluster block's ClusterNetworkPolicies, AdminNetworkPolicies and BaselineAdminNetworkPolicy."""
    for field, parse in _CLUSTER_POLICY_LISTS:
        _parse_objects(body, field, cluster, cpath, parse, cluster_policy_name, found)
    mine = [p for p in found.values() if p.cluster == cluster]
    if any(p.kind == BANP_KIND for p in mine) and any(p.tier is Tier.BASELINE and p.kind != BANP_KIND for p in mine):
        raise PolicyError(
            join(cpath, "baselineAdminNetworkPolicies"),
            "a BaselineAdminNetworkPolicy together with Baseline tier ClusterNetworkPolicies is not supported "
            "(neither API says how they combine)",
        )


def _required_string(obj: dict[str, Any], field: str, path: str) -> str:
    value = obj.get(field)
    if value is None or value == "":
        raise PolicyError(join(path, field), "required value")
    return expect_string(value, join(path, field))


def _parse_namespace(value: Any, cluster: str, path: str) -> NamespaceRecord:
    obj = expect_object(value, path)
    name = _required_string(obj, "name", path)
    labels = parse_labels(obj.get("labels"), join(path, "labels"))
    return NamespaceRecord(cluster=cluster, name=name, labels=labels)


def _parse_node(value: Any, cluster: str, path: str) -> NodeRecord:
    obj = expect_object(value, path)
    name = _required_string(obj, "name", path)
    labels = parse_labels(obj.get("labels"), join(path, "labels"))
    return NodeRecord(cluster=cluster, name=name, labels=labels, internal_ips=_parse_ips(obj, path))


def _parse_ips(obj: dict[str, Any], path: str) -> tuple[str, ...]:
    ips_path = join(path, "ips")
    return tuple(_parse_ip(ip, f"{ips_path}[{i}]") for i, ip in enumerate(expect_list(obj.get("ips"), ips_path)))


def _port_int(value: Any, path: str, low: int = 1) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= 65535:
        raise PolicyError(path, f"must be an integer between {low} and 65535, got {value!r}")
    return value


def _parse_ip(value: Any, path: str) -> str:
    text = expect_string(value, path)
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise PolicyError(path, f'invalid IP address "{text}"') from None


def _parse_pod(value: Any, cluster: str, path: str) -> PodRecord:
    obj = expect_object(value, path)
    namespace = _required_string(obj, "namespace", path)
    name = _required_string(obj, "name", path)
    labels = parse_labels(obj.get("labels"), join(path, "labels"))
    ips = _parse_ips(obj, path)
    node = expect_string(obj.get("node") or "", join(path, "node"))
    ports = []
    ports_path = join(path, "containerPorts")
    for index, item in enumerate(expect_list(obj.get("containerPorts"), ports_path)):
        item_path = f"{ports_path}[{index}]"
        port_obj = expect_object(item, item_path)
        ports.append(
            ContainerPort(
                name=expect_string(port_obj.get("name") or "", join(item_path, "name")),
                port=_port_int(port_obj.get("containerPort"), join(item_path, "containerPort")),
                protocol=parse_protocol(port_obj.get("protocol"), join(item_path, "protocol")),
            )
        )
    return PodRecord(
        cluster=cluster, namespace=namespace, name=name, labels=labels, ports=tuple(ports), node=node, ips=ips
    )


def _parse_end(value: Any, path: str, pods: dict[tuple[str, str, str], PodRecord]) -> ProbeEnd:
    obj = expect_object(value, path)
    if obj.get("ip") is not None:
        return ProbeEnd(ip=_parse_ip(obj["ip"], join(path, "ip")))
    cluster = _required_string(obj, "cluster", path)
    namespace = _required_string(obj, "namespace", path)
    pod = _required_string(obj, "pod", path)
    if (cluster, namespace, pod) not in pods:
        raise PolicyError(path, f"pod {cluster}/{namespace}/{pod} not found in the world")
    return ProbeEnd(cluster=cluster, namespace=namespace, pod=pod)


def _parse_probe(value: Any, path: str, pods: dict[tuple[str, str, str], PodRecord]) -> Probe:
    obj = expect_object(value, path)
    if "from" not in obj:
        raise PolicyError(join(path, "from"), "required value")
    if "to" not in obj:
        raise PolicyError(join(path, "to"), "required value")
    src = _parse_end(obj["from"], join(path, "from"), pods)
    dst = _parse_end(obj["to"], join(path, "to"), pods)
    port = None if obj.get("port") is None else _port_int(obj["port"], join(path, "port"), low=0)
    protocol = parse_protocol(obj.get("protocol"), join(path, "protocol"))
    expect = obj.get("expect")
    if expect is not None and expect not in VERDICTS:
        raise PolicyError(join(path, "expect"), f'must be "allow" or "deny", got {expect!r}')
    return Probe(src=src, dst=dst, protocol=protocol, port=port, expect=expect)


def probe_endpoint(engine: PolicyEngine, end: ProbeEnd) -> Endpoint:
    """The endpoint of a probe end in a world loaded into ``engine``."""
    if end.ip:
        return engine.endpoint_for_ip(end.ip)
    return engine.endpoint_for_pod(end.cluster, end.namespace, end.pod)


def decide_probe(engine: PolicyEngine, probe: Probe) -> Verdict:
    """The verdict for one probe of a world loaded into ``engine``."""
    return engine.decide_endpoints(
        probe_endpoint(engine, probe.src), probe_endpoint(engine, probe.dst), probe.protocol, probe.port
    )


def evaluate_world(world: WorldFile) -> list[str]:
    """``"allow"``/``"deny"`` for every probe of ``world``, in order."""
    engine = world.engine()
    return [str(decide_probe(engine, probe)) for probe in world.probes]
