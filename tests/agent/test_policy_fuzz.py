"""Property tests: random policies and worlds never raise; decisions obey basic laws."""

from __future__ import annotations

import copy
import dataclasses
import ipaddress
import json
from collections.abc import Sequence
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kube_ip_tracker.agent.policy import PolicyEngine, PolicyError, Reason, parse_network_policy
from kube_ip_tracker.agent.policy.cluster_compiled import Action, ClusterPolicy, PeerKind, Tier
from kube_ip_tracker.agent.policy.cluster_parse import parse_cluster_network_policy
from kube_ip_tracker.agent.policy.worldfile import load_world
from kube_ip_tracker.model import ContainerPort, NamespaceRecord, NodeRecord, PodRecord

CLUSTERS = ("c1", "c2")
NAMESPACES = ("x", "y")
KEYS = ("app", "tier")
VALUES = ("a", "b", "c")
PORTS = (53, 80, 81, 443)
PROTOCOLS = ("TCP", "UDP", "SCTP")
CONTAINER_PORTS = (ContainerPort("http", 80, "TCP"), ContainerPort("dns", 53, "UDP"))
# CIDR -> exceptions that may be drawn with it.
CIDRS = {
    "10.0.0.0/8": ("10.1.0.0/16", "10.2.1.0/24"),
    "10.1.0.0/16": ("10.1.0.0/24", "10.1.1.2/31"),
    "10.2.1.7/24": ("10.2.1.1/32",),
    "0.0.0.0/0": ("10.2.0.0/16", "192.0.2.0/24"),
    "192.0.2.0/24": (),
    "fd00::/8": ("fd00::/16",),
}

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

labels_st = st.dictionaries(st.sampled_from(KEYS), st.sampled_from(VALUES), max_size=2)


@st.composite
def selectors(draw: st.DrawFn) -> dict[str, Any]:
    selector: dict[str, Any] = {}
    match_labels = draw(labels_st)
    if match_labels:
        selector["matchLabels"] = match_labels
    expressions = []
    for _ in range(draw(st.integers(0, 2))):
        op = draw(st.sampled_from(("In", "NotIn", "Exists", "DoesNotExist")))
        expression: dict[str, Any] = {"key": draw(st.sampled_from(KEYS)), "operator": op}
        if op in ("In", "NotIn"):
            expression["values"] = draw(st.lists(st.sampled_from(VALUES), min_size=1, max_size=2))
        expressions.append(expression)
    if expressions:
        selector["matchExpressions"] = expressions
    return selector


@st.composite
def peers(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(("pod", "ns", "both", "ip")))
    if kind == "ip":
        cidr = draw(st.sampled_from(sorted(CIDRS)))
        block: dict[str, Any] = {"cidr": cidr}
        if CIDRS[cidr] and draw(st.booleans()):
            block["except"] = draw(st.lists(st.sampled_from(CIDRS[cidr]), min_size=1, max_size=2))
        return {"ipBlock": block}
    peer: dict[str, Any] = {}
    if kind in ("pod", "both"):
        peer["podSelector"] = draw(selectors())
    if kind in ("ns", "both"):
        peer["namespaceSelector"] = draw(selectors())
    return peer


@st.composite
def ports(draw: st.DrawFn) -> dict[str, Any]:
    entry: dict[str, Any] = {}
    if draw(st.booleans()):
        entry["protocol"] = draw(st.sampled_from(PROTOCOLS))
    kind = draw(st.sampled_from(("none", "number", "range", "name")))
    if kind == "number":
        entry["port"] = draw(st.sampled_from(PORTS))
    elif kind == "range":
        low = draw(st.sampled_from(PORTS))
        entry.update(port=low, endPort=low + draw(st.integers(0, 400)))
    elif kind == "name":
        entry["port"] = draw(st.sampled_from(("http", "dns")))
    return entry


@st.composite
def rules(draw: st.DrawFn, peer_field: str) -> dict[str, Any]:
    rule: dict[str, Any] = {}
    if draw(st.booleans()):
        rule["ports"] = draw(st.lists(ports(), max_size=2))
    if draw(st.integers(0, 3)):
        rule[peer_field] = draw(st.lists(peers(), max_size=3))
    return rule


@st.composite
def policies(draw: st.DrawFn, name: str) -> tuple[str, dict[str, Any]]:
    spec: dict[str, Any] = {"podSelector": draw(selectors())}
    if draw(st.booleans()):
        spec["ingress"] = draw(st.lists(rules("from"), max_size=2))
    if draw(st.booleans()):
        spec["egress"] = draw(st.lists(rules("to"), max_size=2))
    types = draw(st.sampled_from((None, ["Ingress"], ["Egress"], ["Ingress", "Egress"])))
    if types is not None:
        spec["policyTypes"] = types
    namespace = draw(st.sampled_from(NAMESPACES))
    cluster = draw(st.sampled_from(CLUSTERS))
    return cluster, {"metadata": {"name": name, "namespace": namespace}, "spec": spec}


@st.composite
def worlds(draw: st.DrawFn) -> PolicyEngine:
    engine = PolicyEngine()
    for c_index, cluster in enumerate(CLUSTERS):
        for n_index, namespace in enumerate(NAMESPACES):
            engine.set_namespace(NamespaceRecord(cluster, namespace, draw(labels_st)))
            for p_index in range(draw(st.integers(0, 3))):
                engine.set_pod(
                    PodRecord(
                        cluster=cluster,
                        namespace=namespace,
                        name=f"p{p_index}",
                        labels=draw(labels_st),
                        ports=CONTAINER_PORTS,
                        node="n",
                        ips=(f"10.{c_index + 1}.{n_index}.{p_index + 1}",),
                    )
                )
    return engine


@st.composite
def policy_sets(draw: st.DrawFn, min_size: int = 0) -> list[tuple[str, dict[str, Any]]]:
    return [draw(policies(f"p{i}")) for i in range(draw(st.integers(min_size, 4)))]


def all_probes(engine: PolicyEngine) -> list[tuple[str, str, str, int]]:
    ips = [entry.primary_ip for entry in engine.world.pods()] + ["192.0.2.9"]
    return [(src, dst, proto, port) for src in ips for dst in ips for proto in ("TCP", "UDP") for port in (53, 80)]


def verdicts(engine: PolicyEngine) -> dict[tuple[str, str, str, int], bool]:
    return {probe: engine.decide(*probe).allowed for probe in all_probes(engine)}


@FUZZ
@given(engine=worlds(), specs=policy_sets())
def test_random_valid_policies_compile_and_decide(engine: PolicyEngine, specs: list[tuple[str, Any]]) -> None:
    for cluster, obj in specs:
        engine.set_policy(parse_network_policy(obj, cluster))
    for allowed in verdicts(engine).values():
        assert isinstance(allowed, bool)


@FUZZ
@given(engine=worlds())
def test_policy_less_world_allows_everything(engine: PolicyEngine) -> None:
    assert all(verdicts(engine).values())


@FUZZ
@given(engine=worlds(), specs=policy_sets(), data=st.data())
def test_adding_an_allow_rule_never_denies(engine: PolicyEngine, specs: list[tuple[str, Any]], data: Any) -> None:
    compiled = [parse_network_policy(obj, cluster) for cluster, obj in specs]
    for policy in compiled:
        engine.set_policy(policy)
    before = verdicts(engine)
    candidates = [
        (i, direction)
        for i, policy in enumerate(compiled)
        for direction, affected in (("ingress", policy.affects_ingress), ("egress", policy.affects_egress))
        if affected
    ]
    if not candidates:
        return
    index, direction = data.draw(st.sampled_from(candidates))
    cluster, obj = specs[index]
    obj = copy.deepcopy(obj)
    # Pin policyTypes: adding the first egress rule must not change which directions are isolated.
    obj["spec"]["policyTypes"] = [
        kind
        for kind, on in (("Ingress", compiled[index].affects_ingress), ("Egress", compiled[index].affects_egress))
        if on
    ]
    obj["spec"].setdefault(direction, []).append(data.draw(rules("from" if direction == "ingress" else "to")))
    engine.set_policy(parse_network_policy(obj, cluster))
    after = verdicts(engine)
    for probe, allowed in before.items():
        if allowed:
            assert after[probe], probe


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats() | st.text(max_size=12),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=12), children, max_size=3),
    max_leaves=12,
)


def replace_somewhere(obj: Any, data: Any) -> Any:
    """``obj`` with the value at a random path (the whole of it, possibly) replaced by random JSON."""
    path = data.draw(st.sampled_from(paths_of(obj)))
    junk = data.draw(json_values)
    if not path:
        return junk
    target: Any = obj
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = junk
    return obj


def paths_of(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            found += paths_of(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += paths_of(item, (*prefix, index))
    return found


@FUZZ
@given(spec=policies("fuzzed"), data=st.data())
def test_mutated_policies_compile_or_raise_policy_error(spec: tuple[str, dict[str, Any]], data: Any) -> None:
    cluster, obj = spec
    obj = replace_somewhere(obj, data)
    try:
        compiled = parse_network_policy(obj, cluster)
    except PolicyError as err:
        assert str(err)
    else:
        engine = PolicyEngine()
        engine.set_pod(PodRecord(cluster, "x", "a", {"app": "a"}, CONTAINER_PORTS, "n", ("10.1.0.1",)))
        engine.set_policy(compiled)
        engine.decide("10.1.0.1", "10.1.0.1", "TCP", 80)


@FUZZ
@given(document=json_values)
def test_random_world_files_raise_only_policy_error(document: Any) -> None:
    try:
        load_world(json.dumps(document))
    except PolicyError as err:
        assert str(err)


@FUZZ
@given(
    document=st.fixed_dictionaries(
        {
            "clusters": st.dictionaries(
                st.sampled_from(CLUSTERS),
                st.fixed_dictionaries({"namespaces": json_values, "pods": json_values, "networkPolicies": json_values}),
                max_size=2,
            ),
            "probes": json_values,
        }
    )
)
def test_structured_junk_world_files_raise_only_policy_error(document: Any) -> None:
    try:
        world = load_world(json.dumps(document))
    except PolicyError as err:
        assert str(err)
    else:
        engine = world.engine()
        assert engine.world.pod_count == len(world.pods)


@st.composite
def operations(draw: st.DrawFn) -> list[tuple[str, Any]]:
    ops: list[tuple[str, Any]] = []
    for step in range(draw(st.integers(1, 12))):
        kind = draw(st.sampled_from(("pod", "delete-pod", "namespace", "delete-namespace", "policy", "delete-policy")))
        cluster = draw(st.sampled_from(CLUSTERS))
        namespace = draw(st.sampled_from(NAMESPACES))
        index = draw(st.integers(0, 2))
        if kind == "pod":
            ip = f"10.{CLUSTERS.index(cluster) + 1}.{NAMESPACES.index(namespace)}.{index + draw(st.integers(0, 1)) + 1}"
            record = PodRecord(cluster, namespace, f"p{index}", draw(labels_st), CONTAINER_PORTS, "n", (ip,), step)
            ops.append((kind, record))
        elif kind == "delete-pod":
            ops.append((kind, (cluster, namespace, f"p{index}")))
        elif kind == "namespace":
            ops.append((kind, NamespaceRecord(cluster, namespace, draw(labels_st))))
        elif kind == "delete-namespace":
            ops.append((kind, (cluster, namespace)))
        elif kind == "policy":
            policy_cluster, obj = draw(policies(f"q{index}"))
            ops.append((kind, parse_network_policy(obj, policy_cluster)))
        else:
            ops.append((kind, (cluster, draw(st.sampled_from(NAMESPACES)), f"q{index}")))
    return ops


@FUZZ
@given(engine=worlds(), ops=operations())
def test_incremental_updates_match_a_fresh_build(engine: PolicyEngine, ops: list[tuple[str, Any]]) -> None:
    verdicts(engine)  # warm the per-pod caches before the updates
    pods = {entry.record.key: entry.record for entry in engine.world.pods()}
    namespaces = {
        (c, n): NamespaceRecord(c, n, engine.world.namespace_labels(c, n)) for c in CLUSTERS for n in NAMESPACES
    }
    policies_now: dict[tuple[str, str, str], Any] = {}
    for kind, arg in ops:
        if kind == "pod":
            engine.set_pod(arg)
            pods[arg.key] = arg
        elif kind == "delete-pod":
            engine.delete_pod(*arg)
            pods.pop(arg, None)
        elif kind == "namespace":
            engine.set_namespace(arg)
            namespaces[arg.key] = arg
        elif kind == "delete-namespace":
            engine.delete_namespace(*arg)
            namespaces.pop(arg, None)
        elif kind == "policy":
            engine.set_policy(arg)
            policies_now[arg.key] = arg
        else:
            engine.delete_policy(*arg)
            policies_now.pop(arg, None)
        verdicts(engine)  # decide between updates so stale caches would show
    fresh = PolicyEngine()
    for record in namespaces.values():
        fresh.set_namespace(record)
    for record in sorted(pods.values(), key=lambda r: r.creation_timestamp):
        fresh.set_pod(record)
    for policy in policies_now.values():
        fresh.set_policy(policy)
    assert verdicts(engine) == verdicts(fresh)


# ---- a brute-force oracle, written from the NetworkPolicy rules without indexes or caches -------


@st.composite
def world_records(draw: st.DrawFn) -> tuple[list[NamespaceRecord], list[PodRecord]]:
    namespaces, pods = [], []
    for c_index, cluster in enumerate(CLUSTERS):
        for n_index, namespace in enumerate(NAMESPACES):
            if draw(st.integers(0, 4)):  # sometimes the namespace record is missing
                namespaces.append(NamespaceRecord(cluster, namespace, draw(labels_st)))
            for p_index in range(draw(st.integers(1, 3))):
                ports = tuple(draw(st.lists(st.sampled_from((*CONTAINER_PORTS, ContainerPort("http", 81, "TCP"))))))
                ip = f"10.{c_index + 1}.{n_index}.{p_index + 1}"
                pods.append(PodRecord(cluster, namespace, f"p{p_index}", draw(labels_st), ports, "n", (ip,)))
    return namespaces, pods


def oracle(
    namespaces: list[NamespaceRecord],
    pods: list[PodRecord],
    policies_list: list[Any],
    probe: tuple[str, str, str, int],
    cluster_policies: Sequence[ClusterPolicy] = (),
    nodes: Sequence[NodeRecord] = (),
) -> bool:
    """Whether the probe is allowed, checking every policy of every cluster (no indexes): per
    direction the Admin tier, then NetworkPolicy, then the Baseline tier, then allow."""
    src_ip, dst_ip, protocol, port = probe
    src = next((record for record in pods if src_ip in record.ips), None)
    dst = next((record for record in pods if dst_ip in record.ips), None)
    ns_labels = {(n.cluster, n.name): {**n.labels, "kubernetes.io/metadata.name": n.name} for n in namespaces}

    def peer_ok(peer: Any, policy: Any, pod_rec: PodRecord | None, ip: str) -> bool:
        if peer.ip_block is not None:
            address = ipaddress.ip_address(ip)
            block = peer.ip_block
            return address in block.cidr and not any(address in excluded for excluded in block.excepts)
        if pod_rec is None:
            return False
        if peer.namespace_selector is None:
            ns_ok = pod_rec.namespace == policy.namespace
        else:
            labels = ns_labels.get(
                (pod_rec.cluster, pod_rec.namespace), {"kubernetes.io/metadata.name": pod_rec.namespace}
            )
            ns_ok = peer.namespace_selector.matches(labels)
        return ns_ok and (peer.pod_selector is None or peer.pod_selector.matches(pod_rec.labels))

    def port_ok(spec: Any) -> bool:
        if spec.protocol != protocol:
            return False
        if spec.name is not None:
            return dst is not None and any(
                cp.name == spec.name and cp.protocol == protocol and cp.port == port for cp in dst.ports
            )
        if spec.port is None:
            return True
        top = spec.end_port if spec.end_port is not None else spec.port
        return spec.port <= port <= top

    def ns_of(record: PodRecord) -> dict[str, str]:
        return ns_labels.get((record.cluster, record.namespace), {"kubernetes.io/metadata.name": record.namespace})

    def tier_peer_ok(peer: Any, pod_rec: PodRecord | None, ip: str) -> bool:
        if peer.kind is PeerKind.NETWORKS:
            return any(ipaddress.ip_address(ip) in network for network in peer.networks)
        if peer.kind is PeerKind.NODES:
            return any(ip in node.internal_ips and peer.node_selector.matches(node.labels) for node in nodes)
        if pod_rec is None:
            return False
        ns_ok = peer.namespace_selector is None or peer.namespace_selector.matches(ns_of(pod_rec))
        return ns_ok and (peer.pod_selector is None or peer.pod_selector.matches(pod_rec.labels))

    def tier_port_ok(match: Any) -> bool:
        if match.name is not None:
            return dst is not None and any(
                cp.name == match.name and cp.protocol == protocol and cp.port == port for cp in dst.ports
            )
        return match.protocol == protocol and (match.start is None or match.start <= port <= match.end)

    def tier(target: PodRecord, direction: str, tier_: Tier, peer_rec: PodRecord | None, peer_ip: str) -> bool | None:
        """True/False when a rule of the tier accepts/denies; None when none matches or one passes."""
        subjects = sorted(
            (
                p
                for p in cluster_policies
                if p.tier is tier_
                and p.cluster == target.cluster
                and p.subject.namespace_selector.matches(ns_of(target))
                and (p.subject.pod_selector is None or p.subject.pod_selector.matches(target.labels))
            ),
            key=lambda p: p.order,
        )
        for policy in subjects:
            for rule in getattr(policy, direction):
                if rule.ports and not any(tier_port_ok(m) for m in rule.ports):
                    continue
                if rule.all_peers or any(tier_peer_ok(peer, peer_rec, peer_ip) for peer in rule.peers):
                    return None if rule.action is Action.PASS else rule.action is Action.ACCEPT
        return None

    def allowed(target: PodRecord | None, direction: str, peer_rec: PodRecord | None, peer_ip: str) -> bool:
        if target is None:
            return True
        admin = tier(target, direction, Tier.ADMIN, peer_rec, peer_ip)
        if admin is not None:
            return admin
        selecting = [
            p
            for p in policies_list
            if getattr(p, f"affects_{direction}")
            and (p.cluster, p.namespace) == (target.cluster, target.namespace)
            and p.pod_selector.matches(target.labels)
        ]
        if not selecting:
            return tier(target, direction, Tier.BASELINE, peer_rec, peer_ip) is not False
        return any(
            (not rule.ports or any(port_ok(spec) for spec in rule.ports))
            and (not rule.peers or any(peer_ok(peer, p, peer_rec, peer_ip) for peer in rule.peers))
            for p in selecting
            for rule in getattr(p, direction)
        )

    return allowed(src, "egress", dst, dst_ip) and allowed(dst, "ingress", src, src_ip)


def engine_of(
    records: tuple[list[NamespaceRecord], list[PodRecord]],
    compiled: Sequence[Any],
    tiered: Sequence[ClusterPolicy] = (),
    nodes: Sequence[NodeRecord] = (),
) -> PolicyEngine:
    """An engine holding the namespaces, pods, nodes and compiled policies given."""
    engine = PolicyEngine()
    for namespace in records[0]:
        engine.set_namespace(namespace)
    for record in records[1]:
        engine.set_pod(record)
    for node in nodes:
        engine.set_node(node)
    for policy in compiled:
        engine.set_policy(policy)
    for cluster_policy in tiered:
        engine.set_cluster_policy(cluster_policy)
    return engine


def check_against_oracle(
    records: tuple[list[NamespaceRecord], list[PodRecord]],
    specs: list[tuple[str, Any]],
    tiered: Sequence[ClusterPolicy] = (),
    nodes: Sequence[NodeRecord] = (),
    extra_ips: tuple[str, ...] = ("192.0.2.9", "10.1.0.200"),
) -> None:
    """The engine's verdict equals the oracle's for every pair of pod and extra addresses."""
    namespaces, pods = records
    compiled = [parse_network_policy(obj, cluster) for cluster, obj in specs]
    engine = engine_of(records, compiled, tiered, nodes)
    ips = [ip for record in pods for ip in record.ips] + list(extra_ips)
    for src in ips:
        for dst in ips:
            for protocol, port in (("TCP", 80), ("TCP", 81), ("UDP", 53)):
                probe = (src, dst, protocol, port)
                expected = oracle(namespaces, pods, compiled, probe, tiered, nodes)
                assert engine.decide(*probe).allowed == expected, probe


@settings(FUZZ, max_examples=200)
@given(records=world_records(), specs=policy_sets(min_size=1))
def test_engine_agrees_with_brute_force_oracle(
    records: tuple[list[NamespaceRecord], list[PodRecord]], specs: list[tuple[str, Any]]
) -> None:
    check_against_oracle(records, specs)


# ---- the Admin and Baseline tiers ---------------------------------------------------------------

NODES = (
    NodeRecord("c1", "n1", {"app": "a"}, ("172.18.0.1",)),
    NodeRecord("c2", "n2", {"app": "b"}, ("172.18.0.2",)),
)


@st.composite
def tier_peers(draw: st.DrawFn, egress: bool) -> dict[str, Any]:
    kind = draw(st.sampled_from(("namespaces", "pods", "networks", "nodes") if egress else ("namespaces", "pods")))
    if kind == "namespaces":
        return {"namespaces": draw(selectors())}
    if kind == "pods":
        pods: dict[str, Any] = {"podSelector": draw(selectors())}
        if draw(st.booleans()):
            pods["namespaceSelector"] = draw(selectors())
        return {"pods": pods}
    if kind == "networks":
        return {"networks": draw(st.lists(st.sampled_from(sorted(CIDRS)), min_size=1, max_size=2, unique=True))}
    return {"nodes": draw(selectors())}


@st.composite
def tier_protocols(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(("tcp", "udp", "sctp", "named")))
    if kind == "named":
        return {"destinationNamedPort": draw(st.sampled_from(("http", "dns")))}
    if draw(st.booleans()):
        return {kind: {"destinationPort": {"number": draw(st.sampled_from(PORTS))}}}
    low = draw(st.sampled_from(PORTS))
    return {kind: {"destinationPort": {"range": {"start": low, "end": low + draw(st.integers(1, 400))}}}}


@st.composite
def tier_rules(draw: st.DrawFn, egress: bool, baseline_v1: bool = False) -> dict[str, Any]:
    rule: dict[str, Any] = {
        "action": draw(st.sampled_from(("Accept", "Deny") if baseline_v1 else ("Accept", "Deny", "Pass"))),
        "to" if egress else "from": draw(st.lists(tier_peers(egress), min_size=1, max_size=2)),
    }
    if draw(st.booleans()):
        protocols = draw(st.lists(tier_protocols(), min_size=1, max_size=2))
        peers = rule.get("to", [])
        if any("networks" in p or "nodes" in p for p in peers):
            protocols = [p for p in protocols if "destinationNamedPort" not in p]  # the API refuses that mix
        if protocols:
            rule["protocols"] = protocols
    return rule


@st.composite
def cluster_policies(draw: st.DrawFn, name: str) -> tuple[str, dict[str, Any]]:
    if draw(st.booleans()):
        subject: dict[str, Any] = {"namespaces": draw(selectors())}
    else:
        subject = {"pods": {"namespaceSelector": draw(selectors()), "podSelector": draw(selectors())}}
    spec: dict[str, Any] = {
        "tier": draw(st.sampled_from(("Admin", "Baseline"))),
        "priority": draw(st.integers(0, 3)) * 10 + int(name[1:]),  # distinct: the API leaves ties open
        "subject": subject,
    }
    if draw(st.booleans()):
        spec["ingress"] = draw(st.lists(tier_rules(egress=False), max_size=3))
    if draw(st.booleans()):
        spec["egress"] = draw(st.lists(tier_rules(egress=True), max_size=3))
    return draw(st.sampled_from(CLUSTERS)), {"metadata": {"name": name}, "spec": spec}


@st.composite
def cluster_policy_sets(draw: st.DrawFn) -> list[ClusterPolicy]:
    specs = [draw(cluster_policies(f"t{i}")) for i in range(draw(st.integers(1, 4)))]
    return [parse_cluster_network_policy(obj, cluster) for cluster, obj in specs]


@settings(FUZZ, max_examples=200)
@given(records=world_records(), specs=policy_sets(), tiered=cluster_policy_sets())
def test_tiers_agree_with_brute_force_oracle(
    records: tuple[list[NamespaceRecord], list[PodRecord]], specs: list[tuple[str, Any]], tiered: list[ClusterPolicy]
) -> None:
    check_against_oracle(records, specs, tiered, NODES, ("192.0.2.9", "172.18.0.2"))


@st.composite
def tier_operations(draw: st.DrawFn) -> list[tuple[str, Any]]:
    ops: list[tuple[str, Any]] = []
    for _ in range(draw(st.integers(1, 12))):
        kind = draw(st.sampled_from(("cnp", "delete-cnp", "namespace", "node", "delete-node", "policy")))
        index = draw(st.integers(0, 2))
        if kind == "cnp":
            cluster, obj = draw(cluster_policies(f"t{index}"))
            ops.append((kind, parse_cluster_network_policy(obj, cluster)))
        elif kind == "delete-cnp":
            ops.append((kind, (draw(st.sampled_from(CLUSTERS)), "ClusterNetworkPolicy", f"t{index}")))
        elif kind == "namespace":
            cluster, namespace = draw(st.sampled_from(CLUSTERS)), draw(st.sampled_from(NAMESPACES))
            ops.append((kind, NamespaceRecord(cluster, namespace, draw(labels_st))))
        elif kind == "node":
            ip = draw(st.sampled_from(("172.18.0.1", "172.18.0.2", "10.1.0.1")))
            ops.append((kind, NodeRecord(draw(st.sampled_from(CLUSTERS)), f"n{index}", draw(labels_st), (ip,))))
        elif kind == "delete-node":
            ops.append((kind, (draw(st.sampled_from(CLUSTERS)), f"n{index}")))
        else:
            policy_cluster, obj = draw(policies(f"q{index}"))
            ops.append((kind, parse_network_policy(obj, policy_cluster)))
    return ops


def tier_probes(engine: PolicyEngine) -> dict[tuple[str, str, str, int], bool]:
    ips = [entry.primary_ip for entry in engine.world.pods()] + ["192.0.2.9", "172.18.0.1", "172.18.0.2"]
    return {
        (src, dst, proto, port): engine.decide(src, dst, proto, port).allowed
        for src in ips
        for dst in ips
        for proto, port in (("TCP", 80), ("UDP", 53))
    }


class Held:
    """What a sequence of operations left in an engine (namespaces, nodes, policies), to build a fresh one."""

    def __init__(self, engine: PolicyEngine) -> None:
        self.namespaces = {
            (c, n): NamespaceRecord(c, n, engine.world.namespace_labels(c, n)) for c in CLUSTERS for n in NAMESPACES
        }
        self.nodes: dict[tuple[str, str], NodeRecord] = {}
        self.tiered: dict[tuple[str, str, str], ClusterPolicy] = {}
        self.policies: dict[tuple[str, str, str], Any] = {}

    def apply(self, engine: PolicyEngine, kind: str, arg: Any) -> None:
        """One operation of :func:`tier_operations` or :func:`staged_operations`, on ``engine`` and here."""
        if kind == "cnp":
            engine.set_cluster_policy(arg)
            self.tiered[arg.key] = arg
        elif kind == "delete-cnp":
            engine.delete_cluster_policy(*arg)
            self.tiered.pop(arg, None)
        elif kind == "namespace":
            engine.set_namespace(arg)
            self.namespaces[arg.key] = arg
        elif kind == "node":
            engine.set_node(arg)
            self.nodes[arg.key] = arg
        elif kind == "delete-node":
            engine.delete_node(*arg)
            self.nodes.pop(arg, None)
        elif kind == "pod":
            engine.set_pod(arg)
        elif kind == "delete-policy":
            engine.delete_policy(*arg)
            self.policies.pop(arg, None)
        else:
            engine.set_policy(arg)
            self.policies[arg.key] = arg

    def fresh(self, engine: PolicyEngine) -> PolicyEngine:
        """A new engine with what is held and ``engine``'s pods."""
        fresh = PolicyEngine()
        for record in self.namespaces.values():
            fresh.set_namespace(record)
        for entry in sorted(engine.world.pods(), key=lambda e: e.record.creation_timestamp):
            fresh.set_pod(entry.record)
        for node in self.nodes.values():
            fresh.set_node(node)
        for policy in self.policies.values():
            fresh.set_policy(policy)
        for cluster_policy in self.tiered.values():
            fresh.set_cluster_policy(cluster_policy)
        return fresh


@FUZZ
@given(engine=worlds(), ops=tier_operations())
def test_tier_updates_match_a_fresh_build(engine: PolicyEngine, ops: list[tuple[str, Any]]) -> None:
    tier_probes(engine)  # warm the per-pod caches
    held = Held(engine)
    for kind, arg in ops:
        held.apply(engine, kind, arg)
        tier_probes(engine)  # decide between updates so stale caches would show
    assert tier_probes(engine) == tier_probes(held.fresh(engine))


@FUZZ
@given(spec=cluster_policies("t1"), data=st.data(), strict=st.booleans())
def test_mutated_cluster_policies_compile_or_raise_policy_error(
    spec: tuple[str, dict[str, Any]], data: Any, strict: bool
) -> None:
    cluster, obj = spec
    obj = replace_somewhere(obj, data)
    try:
        compiled = parse_cluster_network_policy(obj, cluster, strict=strict)
    except PolicyError as err:
        assert str(err)
    else:
        engine = PolicyEngine()
        engine.set_pod(PodRecord(cluster, "x", "a", {"app": "a"}, CONTAINER_PORTS, "n", ("10.1.0.1",)))
        engine.set_cluster_policy(compiled)
        engine.decide("10.1.0.1", "10.1.0.1", "TCP", 80)


# ---- staged policies ----------------------------------------------------------------------------


def staged(policy: Any, flag: bool) -> Any:
    """``policy`` (a NetworkPolicy or cluster-scoped policy) staged when ``flag``, as the parser makes it."""
    if not flag:
        return policy
    if isinstance(policy, ClusterPolicy):

        def mark(rules: tuple[Any, ...]) -> tuple[Any, ...]:
            return tuple(dataclasses.replace(r, ref=dataclasses.replace(r.ref, staged=True)) for r in rules)

        return dataclasses.replace(policy, staged=True, ingress=mark(policy.ingress), egress=mark(policy.egress))
    return dataclasses.replace(policy, staged=True)


def staged_probes(engine: PolicyEngine, ips: Sequence[str]) -> dict[tuple[str, str, str, int], tuple[Any, Any]]:
    """Per probe (the enforced verdict's reasons, the staged verdict's reasons)."""
    result = {}
    for src in ips:
        for dst in ips:
            for protocol, port in (("TCP", 80), ("UDP", 53)):
                verdict = engine.decide(src, dst, protocol, port)
                with_staged = verdict.staged or verdict
                result[src, dst, protocol, port] = (
                    (verdict.allowed, verdict.egress, verdict.ingress),
                    (with_staged.allowed, with_staged.egress, with_staged.ingress),
                )
    return result


@settings(FUZZ, max_examples=150)
@given(
    records=world_records(),
    specs=policy_sets(min_size=1),
    tiered=cluster_policy_sets(),
    flags=st.lists(st.booleans(), min_size=8, max_size=8),
)
def test_staged_policies_never_change_a_verdict_and_decide_as_if_enforced(
    records: tuple[list[NamespaceRecord], list[PodRecord]],
    specs: list[tuple[str, Any]],
    tiered: list[ClusterPolicy],
    flags: list[bool],
) -> None:
    """Oracle: the enforced verdict is the one without the staged policies, the staged verdict the one
    with every policy enforced; where a direction's allow/deny differs, a staged policy is named."""
    namespaces, pods = records
    compiled = [parse_network_policy(obj, cluster) for cluster, obj in specs]
    nps = [staged(p, f) for p, f in zip(compiled, flags, strict=False)]
    cnps = [staged(p, f) for p, f in zip(tiered, reversed(flags), strict=False)]
    engine = engine_of(records, nps, cnps, NODES)
    enforced_np = [p for p in nps if not p.staged]
    enforced_cnp = [p for p in cnps if not p.staged]
    ips = [ip for record in pods for ip in record.ips] + ["192.0.2.9", "172.18.0.2"]
    for src in ips:
        for dst in ips:
            for protocol, port in (("TCP", 80), ("UDP", 53)):
                probe = (src, dst, protocol, port)
                verdict = engine.decide(*probe)
                assert verdict.allowed == oracle(namespaces, pods, enforced_np, probe, enforced_cnp, NODES), probe
                with_staged = verdict.staged or verdict
                assert with_staged.allowed == oracle(namespaces, pods, compiled, probe, tiered, NODES), probe
                src_end, dst_end = engine.endpoint_for_ip(src), engine.endpoint_for_ip(dst)
                assert engine.decide_staged(src_end, dst_end, protocol, port) == with_staged
                for direction in ("egress", "ingress"):
                    before, after = getattr(verdict, direction), getattr(with_staged, direction)
                    if (before is Reason.DENIED) != (after is Reason.DENIED):
                        cause = engine.staged_cause(src_end, dst_end, protocol, port, direction)
                        assert cause.rule is not None or cause.policy is not None or cause.isolating, (probe, direction)
                        assert cause.rule is None or cause.rule.staged


@st.composite
def staged_operations(draw: st.DrawFn) -> list[tuple[str, Any]]:
    """Policy and cluster-policy changes, each staged or not (so policies move between the two), and pod
    and namespace changes."""
    ops: list[tuple[str, Any]] = []
    for step in range(draw(st.integers(1, 12))):
        kind = draw(
            st.sampled_from(("policy", "policy", "delete-policy", "cnp", "cnp", "delete-cnp", "pod", "namespace"))
        )
        cluster = draw(st.sampled_from(CLUSTERS))
        namespace = draw(st.sampled_from(NAMESPACES))
        index = draw(st.integers(0, 2))
        if kind == "policy":
            policy_cluster, obj = draw(policies(f"q{index}"))
            ops.append((kind, staged(parse_network_policy(obj, policy_cluster), draw(st.booleans()))))
        elif kind == "delete-policy":
            ops.append((kind, (cluster, namespace, f"q{index}")))
        elif kind == "cnp":
            policy_cluster, obj = draw(cluster_policies(f"t{index}"))
            ops.append((kind, staged(parse_cluster_network_policy(obj, policy_cluster), draw(st.booleans()))))
        elif kind == "delete-cnp":
            ops.append((kind, (cluster, "ClusterNetworkPolicy", f"t{index}")))
        elif kind == "pod":
            ip = f"10.{CLUSTERS.index(cluster) + 1}.{NAMESPACES.index(namespace)}.{index + 1}"
            ops.append(
                (kind, PodRecord(cluster, namespace, f"p{index}", draw(labels_st), CONTAINER_PORTS, "n", (ip,), step))
            )
        else:
            ops.append((kind, NamespaceRecord(cluster, namespace, draw(labels_st))))
    return ops


@FUZZ
@given(engine=worlds(), ops=staged_operations())
def test_staged_updates_match_a_fresh_build(engine: PolicyEngine, ops: list[tuple[str, Any]]) -> None:
    """Enforced and staged verdicts after staging, unstaging and deleting policies equal a fresh engine's."""

    def ips() -> list[str]:
        return [entry.primary_ip for entry in engine.world.pods()] + ["192.0.2.9"]

    staged_probes(engine, ips())  # warm the per-pod caches
    held = Held(engine)
    for kind, arg in ops:
        held.apply(engine, kind, arg)
        staged_probes(engine, ips())  # decide between updates so stale caches would show
    fresh = held.fresh(engine)
    assert engine.staged_policies == fresh.staged_policies
    assert engine.world.policy_count == fresh.world.policy_count == len(held.policies)
    assert staged_probes(engine, ips()) == staged_probes(fresh, ips())
